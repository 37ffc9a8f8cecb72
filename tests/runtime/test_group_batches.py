"""Writes that reach a group in one turn are proposed as one entry (issue 19).

The host queues every write of its inbox and proposes each group's as one batch entry
once the inbox is read; the entry's apply answers each write with its own reply. An
overwritten batch entry reports none of its writes applied, a watched group
(``track_applied``) keeps one entry per command, and a batch stays under
``MAX_BATCH_BYTES``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from boutique.buckets import BucketMachine
from boutique.machine import MachineHost, batch_commands, encode_batch, is_batch
from boutique.raft import Ready, Role
from boutique.raft.messages import Entry
from boutique.runtime import group as group_module
from boutique.runtime.group import Applied, GroupRuntime, Pending, Rejected
from boutique.runtime.host_core import HostCore
from boutique.runtime.requests import Propose
from boutique.storage import MemoryNodeStorage, MemoryStorage


def command(*parts: object) -> bytes:
    return MachineHost.encode_command(parts)


def leading_host(*, track_applied: bool = False) -> tuple[HostCore, GroupRuntime]:
    """Node 1 alone, leading the bucket group "b"."""
    host = HostCore(
        1,
        peers={},
        open_storage=MemoryNodeStorage,
        machine_for=lambda group: BucketMachine(),
        clock=lambda: 0.0,
    )
    host.open()
    group = host.open_group(
        "b", (1,), bootstrap_voters=True, campaign=True, track_applied=track_applied
    )
    for _ in range(20):
        host.tick()
        host.turn()
        if group.node.raft.role is Role.LEADER and group.host.applied_index >= 2:
            break
    assert group.node.raft.role is Role.LEADER
    return host, group


def submit_all(host: HostCore, commands: list[bytes]) -> list[Pending]:
    pendings = [Pending() for _ in commands]
    for data, pending in zip(commands, pendings, strict=True):
        host.submit("b", Propose(data), pending)
    host.turn()
    return pendings


def test_writes_of_one_turn_become_one_entry_answered_one_by_one() -> None:
    host, group = leading_host()
    before = group.node.raft.log.last_index()
    pendings = submit_all(
        host,
        [command("put", b"k", b"1"), command("delete", b"k"), command("delete", b"k")],
    )
    assert group.node.raft.log.last_index() == before + 1
    entry = group.storage.entries(before + 1, before + 2)[0]
    assert is_batch(entry.data) and len(batch_commands(entry.data)) == 3
    assert [p.outcome for p in pendings] == [Applied(None), Applied(True), Applied(False)]
    assert host.counters.proposals == 3


def test_a_lone_write_keeps_its_plain_entry() -> None:
    host, group = leading_host()
    before = group.node.raft.log.last_index()
    (pending,) = submit_all(host, [command("put", b"k", b"1")])
    assert pending.outcome == Applied(None)
    entry = group.storage.entries(before + 1, before + 2)[0]
    assert entry.data == command("put", b"k", b"1")


def test_a_watched_group_keeps_one_entry_per_command() -> None:
    host, group = leading_host(track_applied=True)
    before = group.node.raft.log.last_index()
    pendings = submit_all(host, [command("put", b"a", b"1"), command("put", b"b", b"2")])
    assert group.node.raft.log.last_index() == before + 2
    assert all(p.outcome == Applied(None) for p in pendings)


def test_a_batch_stays_under_its_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_module, "MAX_BATCH_BYTES", 100)
    host, group = leading_host()
    before = group.node.raft.log.last_index()
    commands = [command("put", b"k%d" % i, b"x" * 30) for i in range(5)]
    pendings = submit_all(host, commands)
    entries = group.storage.entries(before + 1, group.node.raft.log.last_index() + 1)
    assert [len(batch_commands(e.data)) if is_batch(e.data) else 1 for e in entries] == [2, 2, 1]
    assert all(p.outcome == Applied(None) for p in pendings)


class _Node:
    """Just enough of a RawNode for ``propose_queued`` and ``apply_and_advance``."""

    def __init__(self) -> None:
        self.proposed: list[Entry] = []

    def propose(self, data: bytes) -> Entry:
        entry = Entry(term=2, index=len(self.proposed) + 1, data=data)
        self.proposed.append(entry)
        return entry

    def advance(self, ready: Ready) -> None:
        pass


def batch_group() -> tuple[GroupRuntime, _Node, list[Pending]]:
    node = _Node()
    host: Any = MachineHost(BucketMachine())
    group = GroupRuntime("b", node, MemoryStorage(), host, 10_000)  # type: ignore[arg-type]
    pendings = [Pending(), Pending()]
    group.queue(command("put", b"k", b"1"), pendings[0])
    group.queue(command("delete", b"k"), pendings[1])
    group.propose_queued()
    assert len(node.proposed) == 1 and is_batch(node.proposed[0].data)
    return group, node, pendings


def test_an_overwritten_batch_entry_reports_none_of_its_writes_applied() -> None:
    """Another leader's entry at the batch's index (another term): not applied, each."""
    group, _, pendings = batch_group()
    theirs = encode_batch([command("put", b"x", b"1"), command("put", b"y", b"2")])
    group.apply_and_advance(Ready(committed_entries=[Entry(term=3, index=1, data=theirs)]))
    reason = "lost leadership before it committed"
    assert [p.outcome for p in pendings] == [Rejected(reason), Rejected(reason)]


def test_the_batch_entry_of_its_own_term_answers_each_write() -> None:
    group, node, pendings = batch_group()
    group.apply_and_advance(Ready(committed_entries=[node.proposed[0]]))
    assert [p.outcome for p in pendings] == [Applied(None), Applied(True)]


def test_writes_gather_while_every_follower_has_an_append_in_flight() -> None:
    """Proposed now, they would wait for the answer to the append in flight anyway:
    they wait in the queue instead and leave with that answer as one entry."""
    node = _Node()
    host: Any = MachineHost(BucketMachine())
    group = GroupRuntime("b", node, MemoryStorage(), host, 10_000)  # type: ignore[arg-type]
    paused = {2: True, 3: True}
    raft = SimpleNamespace(
        role=Role.LEADER,
        id=1,
        conf=SimpleNamespace(voters={1, 2, 3}),
        progress={m: SimpleNamespace(is_paused=lambda m=m: paused[m]) for m in (2, 3)},
    )
    node.raft = raft  # type: ignore[attr-defined]
    group.queue(command("put", b"k", b"1"), Pending())
    assert group.gathering()
    paused[3] = False  # one follower answered: its pipeline is free
    assert not group.gathering()
    paused[3] = True
    group.batching = False  # a watched group never waits
    assert not group.gathering()
    group.batching = True
    raft.role = Role.FOLLOWER
    assert not group.gathering()  # refused at once instead
    raft.role = Role.LEADER
    raft.conf.voters = {1}
    assert not group.gathering()  # alone: nothing to wait for


def test_the_host_keeps_gathered_writes_until_the_pipeline_frees() -> None:
    host, group = leading_host()
    gathering = [True]
    group.gathering = lambda: gathering[0]  # type: ignore[method-assign]
    before = group.node.raft.log.last_index()
    first = submit_all(host, [command("put", b"a", b"1")])
    second = submit_all(host, [command("put", b"b", b"2")])
    assert group.node.raft.log.last_index() == before  # nothing proposed yet
    assert all(p.outcome is None for p in first + second) and host.busy()
    gathering[0] = False
    host.turn()  # the turn whose inbox frees the pipeline (here: any turn)
    assert group.node.raft.log.last_index() == before + 1
    assert [p.outcome for p in first + second] == [Applied(None), Applied(None)]
