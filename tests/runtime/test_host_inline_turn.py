"""The frames a peer sends to an idle, lightly loaded host are turned by the task that read
them (``RaftHost.frame_arrived`` and ``frames_delivered``, issue 19): a follower's
acknowledgement and a leader's commit no longer wait for the loop task's next trip
through the scheduler. A loaded host keeps batching: the frame joins the loop's next
turn. A storage failure in such a turn still ends the node."""

from __future__ import annotations

import pytest
import trio

from boutique.runtime.host import INLINE_TURN_LOAD, RaftHost
from boutique.storage import MemoryNodeStorage
from boutique.storage.errors import StorageFailedError
from boutique.testing.host_doubles import RecordingTransport

FORWARD = 7
"""Id of the request forwarded in ``forwarded`` frames."""


def forwarded(*ids: int) -> dict[str, object]:
    """A peer's frame forwarding a write per id to a group this host does not have: its
    turn refuses each one and the answers go out at the end of that turn."""
    return {"f": [[i, "w", "b/hats/1", b"cmd"] for i in ids]}


def refused(*ids: int) -> tuple[int, dict[str, object]]:
    return (2, {"a": [[i, "rej", "group not hosted here", 0] for i in ids]})


def make_raft_host() -> tuple[RaftHost, RecordingTransport]:
    """Host 1 of three, storage open, the recording transport attached, never run: the
    test plays the transport (``deliver_frame``) and looks at what the loop would see."""
    host = RaftHost(
        1,
        secret=b"s" * 32,
        cluster_name="inline",
        peers={2: ("127.0.0.1", 1), 3: ("127.0.0.1", 2)},
        listen=("127.0.0.1", 0),
        open_storage=MemoryNodeStorage,
        machine_for=lambda group: pytest.fail("no group is opened here"),
    )
    host.open()
    transport = RecordingTransport()
    host.attach(transport)
    return host, transport


async def test_frames_read_together_are_turned_once_by_the_transports_task() -> None:
    host, transport = make_raft_host()
    peers = host.make_transport()  # delivers to the host; the recording one sends
    peers._deliver(2, [forwarded(FORWARD), forwarded(FORWARD + 1)])
    # One turn for the whole read (one sync for a burst of appends), taken before the
    # transport's task goes back to its socket; its answers in one frame.
    assert host.counters.turns == 1
    assert transport.frames == [refused(FORWARD, FORWARD + 1)]
    assert not host._wakeup.is_set()


async def test_a_frame_reaching_an_idle_host_is_turned_before_the_callback_returns() -> None:
    host, transport = make_raft_host()
    host.deliver_frame(2, forwarded(FORWARD))
    # The turn ran in the caller (the transport's task): answered, nothing left for
    # the loop task, which is not woken.
    assert transport.frames == [refused(FORWARD)]
    assert host.counters.turns == 1
    assert not host._inbox
    assert not host._wakeup.is_set()


async def test_a_frame_joins_the_loops_turn_when_work_is_already_posted() -> None:
    host, transport = make_raft_host()
    host.tick()  # the loop has work: it will take the next turn
    host.deliver_frame(2, forwarded(FORWARD))
    assert host.counters.turns == 0
    assert transport.frames == []
    assert len(host._inbox) == 1
    assert host._wakeup.is_set()


async def test_a_loaded_host_batches_frames_into_the_loops_turns() -> None:
    host, transport = make_raft_host()
    many = range(FORWARD, FORWARD + INLINE_TURN_LOAD + 1)
    host.deliver_frame(2, forwarded(*many))  # idle before it: turned inline
    assert transport.frames == [refused(*many)]
    # That turn handled more than INLINE_TURN_LOAD items: the next frame waits for the
    # loop, with whatever else arrives meanwhile.
    host.deliver_frame(2, forwarded(99))
    assert host.counters.turns == 1
    assert len(host._inbox) == 1
    assert host._wakeup.is_set()
    # The loop's turn handles one item: light again, so the next frame is turned inline.
    host._wakeup = trio.Event()
    host._take_turn()
    host.deliver_frame(2, forwarded(100))
    assert transport.frames == [refused(*many), refused(99), refused(100)]
    assert host.counters.turns == 3


async def test_a_storage_failure_in_an_inline_turn_ends_the_node() -> None:
    host, _ = make_raft_host()
    failure = StorageFailedError("node.db", "the disk is gone")

    def broken_turn() -> bool:
        raise failure

    host.turn = broken_turn  # type: ignore[method-assign]
    # The transport would only log what its callback raised: nothing escapes here...
    host.deliver_frame(2, forwarded(FORWARD))
    # ...and the loop task raises it, which ends the host (and the node).
    with pytest.raises(StorageFailedError) as raised:
        await host._loop()
    assert raised.value is failure


async def test_a_host_halted_while_it_holds_a_reads_work_still_wakes_its_loop() -> None:
    host, _ = make_raft_host()

    def halting_frame(peer: int, payload: object) -> None:
        host.halt()  # e.g. the owner stops the node from inside the frame's handling

    host.on_frame = halting_frame  # type: ignore[method-assign]
    host.deliver_frame(2, forwarded(FORWARD))
    # halt's "wake up and see it" is not swallowed by the hold: the loop returns.
    assert host._wakeup.is_set()
    await host._loop()
