"""Pipelining clients of the whole-cluster simulator, and the batch entries they cause.

Some clients of every run keep several requests in flight on one connection
(``Recorder.record_pipeline``), mostly writes to one bucket, so leaders get several
writes in one turn and propose them as one batch entry. The history holds a pipeline's
operations as concurrent ones, each completed by its own reply in request order, and
classified exactly as a single request's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest
import trio
import trio.testing

from boutique.buckets import BucketMachine
from boutique.machine import MachineHost, encode_batch
from boutique.testing.history import GET, PUT, History, Outcome
from boutique.testing.store_sim.batches import counting_batches
from boutique.testing.store_sim.clients import Recorder, Request, SimConnection
from boutique.testing.store_sim.run import SCENARIOS, run_seed
from boutique.testing.store_sim.world import ProcessGone
from boutique.wire import RawReply, request_line

BATCH_SEEDS = (0, 1)
"""Calm runs whose batch entries the pipelines must show (a seed is the same run
every time)."""


def test_pipelining_clients_make_batch_entries_larger_than_the_clients_could() -> None:
    """Without pipelines a bucket's leader gets at most one write per client at a
    time, so no batch entry holds more commands than there are clients."""
    clients = SCENARIOS["calm"].clients
    for seed in BATCH_SEEDS:
        result = run_seed(seed, "calm")
        assert result.passed, result.summary()
        assert result.batches.largest > clients, (seed, result.batches)
        assert result.batches.commands >= 2 * result.batches.entries > 0, result.batches


def test_the_batch_counter_counts_each_apply_and_uninstalls() -> None:
    real = MachineHost.__dict__["apply_batch"]
    host = MachineHost(BucketMachine())
    data = encode_batch([host.encode_command(("put", b"k", b"v"))] * 3)
    with counting_batches() as count:
        assert host.apply_batch(1, data) == [None, None, None]
    assert (count.entries, count.commands, count.largest) == (1, 3, 3)
    assert MachineHost.__dict__["apply_batch"] is real


# --- Recorder.record_pipeline against a scripted connection ------------------------------


@dataclass
class ScriptedConnection:
    """Answers a pipeline from a script: a reply, ``"hang"`` (never answers) or
    ``"break"`` (the node goes away) per request, in order."""

    script: list[RawReply | str]
    sent: list[bytes] = field(default_factory=list)
    closed: bool = False

    async def send(self, lines: bytes) -> None:
        await trio.sleep(0.01)
        self.sent.append(lines)

    async def receive(self) -> RawReply:
        await trio.sleep(0.1)
        step = self.script.pop(0)
        if step == "hang":
            await trio.sleep_forever()
        if step == "break":
            self.closed = True
            raise ProcessGone("n1 closed the connection")
        assert isinstance(step, RawReply)
        return step

    async def aclose(self) -> None:
        self.closed = True


OK = RawReply((), b"OK")


def requests(count: int) -> list[Request]:
    out = []
    for slot in range(count):
        value = f"0.{slot}"
        line = request_line(b"PUT", b"apple", b"k0", value.encode())
        out.append(Request(100 + slot, PUT, "apple/k0", value, line))
    return out


def run_pipeline(
    script: list[RawReply | str], batch: list[Request]
) -> tuple[Recorder, ScriptedConnection, bool, float]:
    history = History()
    recorder = Recorder(history, trio.current_time, op_timeout=3.0)
    conn = ScriptedConnection(script)
    outcome: dict[str, object] = {}

    async def main() -> None:
        _, keep = await recorder.record_pipeline(cast(SimConnection, conn), batch)
        outcome["keep"] = keep
        outcome["at"] = trio.current_time()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return recorder, conn, cast(bool, outcome["keep"]), cast(float, outcome["at"])


def test_a_pipeline_is_written_at_once_and_its_operations_are_concurrent() -> None:
    batch = requests(3)
    get = Request(103, GET, "apple/k0", None, request_line(b"GET", b"apple", b"k0"))
    recorder, conn, keep, _ = run_pipeline([OK, OK, OK, RawReply((b"0.2",), b"OK")], [*batch, get])
    assert conn.sent == [b"".join(r.line for r in [*batch, get])]
    ops = recorder.history.operations()
    assert keep
    assert [op.client for op in ops] == [100, 101, 102, 103]
    assert len({op.invoked for op in ops}) == 1
    # Each completes when its own reply is read, in request order.
    completed = [op.completed for op in ops]
    assert completed == sorted(completed) and len(set(completed)) == 4
    assert [op.outcome for op in ops] == [Outcome.OK] * 4
    assert ops[3].result == "0.2"


def test_replies_are_classified_as_a_single_requests_are() -> None:
    replies: list[RawReply | str] = [
        RawReply((), b"ERR UNAVAILABLE no leader"),
        RawReply((), b"ERR TIMEOUT outcome unknown"),
        RawReply((), b"NOT FOUND"),
        RawReply((), b"ERR INTERNAL oops"),
    ]
    recorder, _, keep, _ = run_pipeline(replies, requests(4))
    ops = recorder.history.operations()
    assert keep
    assert [op.outcome for op in ops] == [
        Outcome.FAIL,
        Outcome.UNKNOWN,
        Outcome.NOT_FOUND,
        Outcome.UNKNOWN,
    ]
    assert len(recorder.problems) == 1 and "ERR INTERNAL" in recorder.problems[0]


@pytest.mark.parametrize(
    ("failure", "counted"), [("hang", "client timeout"), ("break", "connection lost")]
)
def test_the_first_reply_missing_leaves_it_and_every_later_one_unknown(
    failure: str, counted: str
) -> None:
    recorder, conn, keep, at = run_pipeline([OK, failure, OK], requests(3))
    ops = recorder.history.operations()
    assert not keep and conn.closed
    assert [op.outcome for op in ops] == [Outcome.OK, Outcome.UNKNOWN, Outcome.UNKNOWN]
    assert recorder.answers[counted] == 2
    if failure == "hang":
        # The client's own timeout, from the invocation, as for a single request.
        assert at == pytest.approx(3.0)
