"""The host's turn is sans-I/O (issue 15): ``HostCore`` stepped by hand, outside any
trio run, with a clock of the caller's. Only the trio adapter (``RaftHost``: its loop
task, ticker and awaiting helpers) needs an event loop; a simulator steps the same turn
the production loop runs. ``test_host_core_sans_io`` proves the core never imports trio."""

from __future__ import annotations

import pytest
import trio

from boutique.examples.kvstore import KVStore
from boutique.machine import MachineHost
from boutique.raft import ChangeType
from boutique.raft.messages import Heartbeat
from boutique.runtime.codec import encode_batch
from boutique.runtime.group import Applied, Pending, Rejected, Unknown
from boutique.runtime.host_core import HostCore
from boutique.runtime.requests import (
    ChangeMembership,
    LeaderView,
    LocalView,
    Propose,
    Read,
    TransferLeader,
)
from boutique.testing.host_doubles import ManualClock, RecordingTransport, make_host


def turns(host: HostCore, clock: ManualClock, count: int = 5) -> None:
    for _ in range(count):
        clock.advance(host.settings.tick_interval)
        host.tick()  # what the adapter's ticker says
        host.turn()


def test_a_group_elects_writes_and_reads_in_turns_without_an_event_loop() -> None:
    with pytest.raises(RuntimeError):
        trio.current_time()  # this test is not inside a trio run
    clock = ManualClock()
    host = make_host(RecordingTransport(), machine_for=lambda group: KVStore(), clock=clock)
    host.open_group("kv", (1,), bootstrap_voters=True, campaign=True)
    turns(host, clock)
    write, read = Pending(), Pending()
    host.submit("kv", Propose(MachineHost.encode_command(("put", "k", "v"))), write)
    turns(host, clock)
    host.submit("kv", Read(("get", "k")), read)
    turns(host, clock)
    assert isinstance(write.outcome, Applied)
    assert read.outcome == Applied("v")


def test_tracked_requests_expire_by_the_hosts_clock() -> None:
    clock = ManualClock(100.0)
    host = make_host(RecordingTransport(), clock=clock)
    pending = Pending()
    host.track(pending)
    assert pending.deadline == 100.0 + host.settings.request_timeout
    clock.advance(host.settings.request_timeout)
    host.tick()
    host.turn()
    assert isinstance(pending.outcome, Unknown)


def test_work_posted_outside_a_turn_asks_the_driver_for_one() -> None:
    woken: list[str] = []
    transport = RecordingTransport()
    host = make_host(transport)
    host.on_work = lambda: woken.append("work")
    host.tick()
    host.submit("nowhere", Propose(b"x"), Pending())
    host.send_forward(2, "g", Read(("get", "k")), Pending())
    host.on_frame(3, {"f": [[1, "w", "nowhere", b"x"]]})
    assert woken == ["work"] * 4
    woken.clear()
    assert host.turn() is False
    # The answer to node 3 was posted inside the turn and left at its end, with the
    # request to node 2: no second wake-up for it.
    assert woken == []
    assert sorted(peer for peer, _ in transport.frames) == [2, 3]


def test_every_request_kind_runs_from_the_core_without_a_task() -> None:
    """What a peer may forward runs in turns alone, a leader transfer and a membership
    change included (``execute``): the trio adapter only waits for the outcome."""
    clock = ManualClock()
    host = make_host(RecordingTransport(), machine_for=lambda group: KVStore(), clock=clock)
    host.open_group("kv", (1,), bootstrap_voters=True, campaign=True)
    turns(host, clock)
    view, local, missing = Pending(), Pending(), Pending()
    to_self, to_stranger, change = Pending(), Pending(), Pending()
    host.execute("kv", LeaderView(), view)
    host.execute("kv", LocalView(), local)
    host.execute("absent", LocalView(), missing)
    host.execute("kv", TransferLeader(1), to_self)
    host.execute("kv", TransferLeader(9), to_stranger)
    host.execute("kv", ChangeMembership(ChangeType.ADD_LEARNER, 2), change)
    turns(host, clock)
    assert isinstance(view.outcome, Applied)
    assert local.outcome == Applied({"term": 2, "voters": [1], "learners": [], "leader": 1})
    assert missing.outcome == Applied(None)
    assert to_self.outcome == Applied(None)
    assert to_stranger.outcome == Rejected("node 9 is not a voter", 1)
    assert change.outcome == Applied(None)
    assert host.groups["kv"].node.raft.conf.learners == {2}


def test_a_forwarded_leader_transfer_is_answered_from_a_turn() -> None:
    """A peer's transfer request costs no task: it is answered when the target leads,
    or ``Unknown`` at the request's deadline."""
    clock = ManualClock()
    transport = RecordingTransport()
    host = make_host(transport, machine_for=lambda group: KVStore(), clock=clock)
    host.open_group("kv", (1, 2), bootstrap_voters=True)
    host.on_frame(2, {"r": encode_batch({"kv": [Heartbeat(frm=2, to=1, term=5, commit=0)]})})
    host.turn()
    assert host.groups["kv"].leader == 2
    transport.frames.clear()
    # Node 2 already leads; node 1 (this follower) never will, as nobody answers it.
    host.on_frame(2, {"f": [[5, "t", "kv", 2], [6, "t", "kv", 1]]})
    host.turn()
    answers = [answer for _, frame in transport.frames for answer in frame.get("a", [])]
    assert answers == [[5, "ok", None, 0]]
    transport.frames.clear()
    clock.advance(host.settings.request_timeout)
    host.tick()
    host.turn()
    answers = [answer for _, frame in transport.frames for answer in frame.get("a", [])]
    assert answers == [[6, "unk", "timed out waiting for the group", 0]]
    assert host._transfers == []  # the settled transfer is forgotten


def test_halt_settles_transfers_still_waiting() -> None:
    host = make_host(RecordingTransport(), machine_for=lambda group: KVStore())
    host.open_group("kv", (1, 2), bootstrap_voters=True)
    host.on_frame(2, {"r": encode_batch({"kv": [Heartbeat(frm=2, to=1, term=5, commit=0)]})})
    host.turn()
    waiting, refused = Pending(), Pending()
    host.execute("kv", TransferLeader(1), waiting)
    host.execute("absent", TransferLeader(1), refused)
    host.turn()
    assert refused.outcome == Rejected("group not hosted here")
    assert waiting.outcome is None
    host.halt()
    assert isinstance(waiting.outcome, Unknown)


def test_a_halted_host_takes_no_turn() -> None:
    transport = RecordingTransport()
    host = make_host(transport, machine_for=lambda group: KVStore())
    host.open_group("kv", (1,), bootstrap_voters=True, campaign=True)
    host.halt()
    host.tick()
    assert host.turn() is False
    assert host.counters.turns == 0 and host.groups["kv"].leader == 0
