"""RaftHost quarantines a group whose core fails, and still stops on a storage failure
of the whole node (issue 14, item 5).

Hosts here are in-process, single-node groups over ``MemoryNodeStorage``, under
``MockClock``; failures are planted in one group's ``RawNode`` or in the storage.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from boutique.examples.counter import Counter
from boutique.machine import MachineHost
from boutique.raft import Message, Role
from boutique.raft.messages import Entry, Heartbeat
from boutique.runtime.codec import encode_batch
from boutique.runtime.group import Applied, Pending, Rejected, Unknown
from boutique.runtime.host import RaftHost
from boutique.runtime.host_core import _Propose, _Read
from boutique.storage import MemoryNodeStorage
from boutique.storage.errors import StorageFailedError

CONFLICT = "entry 3 conflicts with committed entry (commit 3)"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make_host(storage: MemoryNodeStorage) -> RaftHost:
    return RaftHost(
        1,
        secret=b"s" * 32,
        cluster_name="test",
        peers={},
        listen=("127.0.0.1", 0),
        open_storage=lambda: storage,
        machine_for=lambda group: Counter(),
    )


def incr(n: int) -> bytes:
    return MachineHost.encode_command(("incr", n))


async def start(nursery: trio.Nursery, storage: MemoryNodeStorage) -> RaftHost:
    host: RaftHost = await nursery.start(make_host(storage).run)
    for group_id in ("g1", "g2"):
        host.open_group(group_id, (1,), bootstrap_voters=True, campaign=True)
    with trio.fail_after(5):
        while any(host.groups[g].node.raft.role is not Role.LEADER for g in ("g1", "g2")):
            await trio.sleep(0.01)
    for group_id in ("g1", "g2"):
        assert await host.propose(group_id, incr(1), 5) == Applied(1)
    return host


async def test_a_core_failure_in_step_quarantines_that_group_only(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        host = await start(nursery, MemoryNodeStorage())
        broken = host.groups["g1"].node

        def step(msg: Message) -> None:
            raise RuntimeError(CONFLICT)

        broken.step = step  # type: ignore[method-assign, assignment]
        write, read = Pending(), Pending()
        # A write and a read wait in the group when a peer's message breaks it.
        host._post(_Propose("g1", incr(5), write))
        host._post(_Read("g1", "value", read))
        heartbeat = Heartbeat(frm=2, to=1, term=99, commit=0)
        host.on_frame(2, {"r": encode_batch({"g1": [heartbeat]})})
        await trio.testing.wait_all_tasks_blocked()
        reason = f"group g1 is quarantined: RuntimeError: {CONFLICT}"
        # The write waited for the end of the inbox to be proposed with the group's
        # other writes (one entry per batch), so it never was: certainly not applied.
        # The read had no effect: rejected.
        assert write.outcome == Rejected(reason)
        assert read.outcome == Rejected(reason)
        assert host.quarantined == {"g1": f"RuntimeError: {CONFLICT}"}
        assert "g1" not in host.groups and "g1" not in host.active
        assert await host.propose("g1", incr(1), 5) == Rejected(reason)
        assert await host.read("g1", "value", 5) == Rejected(reason)
        # The other group and the loop carry on.
        assert await host.propose("g2", incr(2), 5) == Applied(3)
        assert await host.read("g2", "value", 5) == Applied(3)
        logged = [r for r in caplog.records if "quarantined" in r.getMessage()]
        assert len(logged) == 1 and "g1" in logged[0].getMessage()
        nursery.cancel_scope.cancel()


class FailingStorage(MemoryNodeStorage):
    """Its commit (the one fsync for every group) fails once ``failing`` is set."""

    failing = False

    def pending_writes(self) -> int:
        return 1  # as if every write waited for the sync, like SqliteStorage's

    def commit(self) -> None:
        if self.failing:
            raise StorageFailedError("/data/node.db", "disk I/O error")
        super().commit()


@pytest.mark.parametrize("where", ["commit", "group write"])
async def test_a_storage_failure_still_stops_the_node(
    clock: trio.testing.MockClock, where: str
) -> None:
    """The data file failing is no one group's problem: hiding it behind a quarantine
    would keep serving from memory what the disk no longer holds."""
    storage = FailingStorage()
    with pytest.raises(BaseExceptionGroup) as stopped:
        async with trio.open_nursery() as nursery:
            host = await start(nursery, storage)
            if where == "commit":
                storage.failing = True
            else:

                def append(entries: Sequence[Entry]) -> None:
                    raise StorageFailedError("/data/node.db", "disk I/O error")

                host.groups["g2"].storage.append = append  # type: ignore[method-assign]
            # The write was in the failed commit: unknown, and the host ends.
            assert await host.propose("g2", incr(1), 5) == Unknown("node shutting down")
            await trio.sleep_forever()
    assert stopped.group_contains(StorageFailedError)
    assert host.quarantined == {}
