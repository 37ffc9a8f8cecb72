"""The harness must catch a broken store: a planted stale-read bug is reported.

With ``[testing] unsafe_local_reads = true`` every replica answers GET from its own
state without ReadIndex. The nemesis isolates the leader of ``hats``; while the cut
lasts, clients write through the majority and read through the isolated old leader.
To make the anomaly certain rather than likely, the fault itself scripts the classic
sequence on a key of its own: a value acknowledged before the cut, a new value
acknowledged by the majority during it, then a read through the isolated node. A
linearizable store must refuse that read (the node cannot confirm it leads); the broken
one returns the old value, and the checker must say so.

The same scenario against the correct store is the control: no anomaly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from boutique.testing.history import GET, PUT, Operation, Outcome
from boutique.testing.jepsen import (
    IsolateLeader,
    Jepsen,
    JepsenOptions,
    JepsenResult,
    NemesisContext,
    history_key,
)
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed

BUCKET = "hats"
PROBE_KEY = "probe"


class IsolateLeaderThenReadThroughIt(IsolateLeader):
    """Isolate the leader of ``hats``, acknowledge a write through the majority, then
    read the same key through the isolated node (all recorded in the history)."""

    def __init__(self) -> None:
        self.target = ""
        self.reads: list[Operation] = []
        self.writes_during_cut: list[Operation] = []

    def choose(self, ctx: NemesisContext) -> tuple[set[str], str]:
        return {self.target}, f"leader of {BUCKET}"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        deadline = time.monotonic() + 10
        while (leader := ctx.cluster.leader_of(f"b/{BUCKET}/")) is None:
            assert time.monotonic() < deadline, f"no leader for {BUCKET}"
            time.sleep(0.05)
        self.target = leader
        client = ctx.new_client_id()
        n = len(self.reads)
        # Acknowledged by the leader, so applied in its state, before the cut.
        before = self._until_ok(ctx, client, leader, PUT, f"before-cut.{n}")
        assert before.outcome is Outcome.OK, before.describe()
        targets, detail = super().inject(ctx)
        majority = sorted(set(ctx.nodes()) - {leader})
        during = self._until_ok(ctx, client, majority[0], PUT, f"during-cut.{n}")
        self.writes_during_cut.append(during)
        self.reads.append(ctx.perform(client, leader, GET, BUCKET, PROBE_KEY))
        return targets, detail + "; probed a read through it"

    @staticmethod
    def _until_ok(ctx: NemesisContext, client: int, node: str, kind: str, value: str) -> Operation:
        deadline = time.monotonic() + 15
        attempt = 0
        while True:
            attempt += 1
            op = ctx.perform(client, node, kind, BUCKET, PROBE_KEY, f"{value}.{attempt}")
            if op.outcome is Outcome.OK or time.monotonic() > deadline:
                return op
            time.sleep(0.05)


def run_scenario(
    workdir: Path, *, unsafe: bool
) -> tuple[JepsenResult, IsolateLeaderThenReadThroughIt]:
    fault = IsolateLeaderThenReadThroughIt()
    options = JepsenOptions(
        seconds=8.0,
        buckets=("apples", BUCKET),
        fault_interval=1.0,
        fault_hold=2.5,
        op_timeout=4.0,
        seed=11,
    )
    lines: list[str] = []
    with LocalCluster(workdir, nodes=3, request_timeout=2.0, unsafe_local_reads=unsafe) as cluster:
        cluster.start()
        names = list(cluster.nodes)

        def route(client: int, kind: str, cut_off: frozenset[str]) -> str | None:
            """While a node is cut off, odd clients read through it; the rest of the
            traffic goes to the majority, where writes can be acknowledged."""
            if not cut_off:
                return None
            if kind == GET and client % 2:
                return min(cut_off)
            majority = [name for name in names if name not in cut_off]
            return majority[client % len(majority)]

        result = Jepsen(cluster, options, faults=[fault], route=route, log=lines.append).run()
    print("\n".join(lines))
    print(result.summary())
    return result, fault


def test_stale_reads_from_an_isolated_leader_are_reported(tmp_path: Path) -> None:
    result, fault = run_scenario(tmp_path / "cluster", unsafe=True)
    report = result.summary()
    assert fault.reads, f"the nemesis never isolated the leader\n{report}"
    served = [op for op in fault.reads if op.outcome is Outcome.OK]
    assert served, (
        "the planted fault is not in effect: the isolated old leader refused every probe "
        f"read ({[op.describe() for op in fault.reads]}), as a correct store does. "
        "Is [testing] unsafe_local_reads wired into the node's read path?\n" + report
    )
    probe = history_key(BUCKET, PROBE_KEY)
    assert result.check is not None
    assert not result.ok, f"the harness missed the stale read\n{report}"
    assert probe in {anomaly.key for anomaly in result.check.anomalies}, report
    for read, write in zip(fault.reads, fault.writes_during_cut, strict=True):
        if read.outcome is Outcome.OK:
            assert write.outcome is Outcome.OK and write.completed is not None
            assert read.invoked > write.completed and read.result != write.value, report


def test_the_same_scenario_on_a_correct_store_is_clean(tmp_path: Path) -> None:
    result, fault = run_scenario(tmp_path / "cluster", unsafe=False)
    report = result.summary()
    assert fault.reads, f"the nemesis never isolated the leader\n{report}"
    assert all(write.outcome is Outcome.OK for write in fault.writes_during_cut), report
    # The isolated node cannot confirm it leads, so it must not answer from its state.
    assert all(read.outcome is not Outcome.OK for read in fault.reads), report
    assert result.ok, report
