"""The invariant checker's newer rules, fed by hand: each must pass what is allowed and
fail what it forbids (the simulator sweep only shows they never fire on the real core).
"""

from __future__ import annotations

import random

import pytest

from boutique.raft import (
    ChangeType,
    ConfChange,
    Entry,
    EntryType,
    RaftConfig,
    RawNode,
    Role,
    bootstrap,
)
from boutique.raft.core import Raft
from boutique.raft.messages import encode_conf_change
from boutique.storage import MemoryStorage
from boutique.testing.invariants import InvariantChecker, InvariantViolation


def test_read_index_at_or_above_what_was_committed_is_safe() -> None:
    checker = InvariantChecker()
    checker.observe_commit(1, 5)
    checker.observe_read_asked(b"r1")
    checker.observe_commit(2, 7)  # committed after the read was asked: may be missed
    checker.observe_read_state(1, 5, b"r1")
    checker.observe_read_state(2, 9, b"unknown context")


def test_read_index_below_what_was_committed_before_the_read_fails() -> None:
    checker = InvariantChecker()
    checker.observe_commit(2, 7)  # another node (a newer leader) committed 7
    checker.observe_read_asked(b"r1")
    with pytest.raises(InvariantViolation, match=r"read safety: node 1 .* index 6, but index 7"):
        checker.observe_read_state(1, 6, b"r1")


def _drain(node: RawNode, storage: MemoryStorage) -> None:
    while node.has_ready():
        ready = node.ready()
        storage.append(ready.entries)
        node.advance(ready)


def _leader() -> Raft:
    storage = MemoryStorage()
    hard_state, entries = bootstrap({1})
    storage.bootstrap(hard_state, entries)
    node = RawNode(RaftConfig(id=1), storage, random.Random(1))
    _drain(node, storage)  # applies the founding membership
    node.campaign()
    _drain(node, storage)
    assert node.raft.role is Role.LEADER
    return node.raft


def _change(raft: Raft, node: int) -> Entry:
    data = encode_conf_change(ConfChange.single(ChangeType.ADD_LEARNER, node))
    entry = Entry(raft.term, raft.log.last_index() + 1, data, EntryType.CONF_CHANGE)
    raft.log.append([entry])
    return entry


def test_a_membership_change_after_every_earlier_one_was_applied_is_allowed() -> None:
    raft = _leader()
    checker = InvariantChecker()
    checker.observe_leader_append(raft, [_change(raft, 2)])


def test_a_second_membership_change_in_flight_fails() -> None:
    raft = _leader()
    first = _change(raft, 2)
    second = _change(raft, 3)
    checker = InvariantChecker()
    with pytest.raises(
        InvariantViolation,
        match=f"appended change {second.index} while change {first.index} was not applied",
    ):
        checker.observe_leader_append(raft, [first, second])
