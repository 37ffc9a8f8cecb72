"""The promise checker: each rule flags a promise made before it was synced, and only then.

Node 1's disk has synced term 2 (vote for 1) and entries 1-3; entries 4-5 and the vote
of term 3 for node 2 are written but not synced.
"""

from __future__ import annotations

import pytest

from boutique.raft.messages import (
    AppendRequest,
    AppendResponse,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    Message,
    Snapshot,
    SnapshotMeta,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
)
from boutique.runtime.codec import encode_batch
from boutique.testing.disk import PowerLossDisk, PowerLossStorage
from boutique.testing.durability import PromiseChecker


@pytest.fixture
def disks() -> dict[int, PowerLossDisk]:
    return {n: PowerLossDisk() for n in (1, 2, 3)}


@pytest.fixture
def stores(disks: dict[int, PowerLossDisk]) -> dict[int, PowerLossStorage]:
    stores = {n: disk.open() for n, disk in disks.items()}
    g = stores[1].group("g")
    g.append([Entry(1, 1), Entry(2, 2), Entry(2, 3)])
    g.set_hard_state(HardState(2, 1, 2))
    stores[1].commit()
    g.append([Entry(3, 4), Entry(3, 5)])
    g.set_hard_state(HardState(3, 2, 3))
    for node in (2, 3):
        stores[node].group("g").append([Entry(1, 1), Entry(2, 2)])
        stores[node].commit()
    return stores


@pytest.fixture
def checker(disks: dict[int, PowerLossDisk], stores: dict[int, PowerLossStorage]) -> PromiseChecker:
    return PromiseChecker(disks)


def send(checker: PromiseChecker, msg: Message) -> list[str]:
    checker.violations.clear()
    checker.on_send(msg.frm, msg.to, {"r": encode_batch({"g": [msg]})})
    return checker.violations


def test_a_vote_needs_its_term_and_vote_synced(checker: PromiseChecker) -> None:
    assert send(checker, VoteResponse(1, 2, 3, granted=True))  # term 3 is not synced
    assert not send(checker, VoteResponse(1, 2, 2, granted=False))
    assert not send(checker, VoteResponse(1, 2, 3, granted=True, pre_vote=True))
    assert not send(checker, VoteResponse(1, 3, 1, granted=True))  # a later term is synced
    assert send(checker, VoteResponse(1, 3, 2, granted=True))  # synced vote is for 1
    assert checker.checked["vote"] == 3


def test_a_vote_request_needs_the_candidates_own_vote_synced(checker: PromiseChecker) -> None:
    assert not send(checker, VoteRequest(1, 2, 2, 3, 2))
    assert send(checker, VoteRequest(1, 2, 4, 5, 3))
    assert not send(checker, VoteRequest(1, 2, 4, 5, 3, pre_vote=True))


def test_an_ack_needs_the_log_synced_up_to_its_index(checker: PromiseChecker) -> None:
    assert not send(checker, AppendResponse(1, 2, 3, index=3))
    assert send(checker, AppendResponse(1, 2, 3, index=4))
    assert not send(checker, AppendResponse(1, 2, 3, index=5, reject=True))
    assert not send(checker, AppendResponse(2, 1, 3, index=0))


def test_an_ack_needs_the_synced_entry_to_have_the_written_term(
    checker: PromiseChecker, stores: dict[int, PowerLossStorage]
) -> None:
    assert not send(checker, AppendResponse(2, 1, 3, index=2))
    stores[2].group("g").append([Entry(3, 2)])  # replaces entry 2 of term 2, unsynced
    assert send(checker, AppendResponse(2, 1, 3, index=2))


def test_a_snapshot_reported_installed_must_be_synced(
    checker: PromiseChecker, stores: dict[int, PowerLossStorage]
) -> None:
    store = stores[3]
    snapshot = Snapshot(SnapshotMeta(7, 3, ConfState(frozenset({1, 2, 3}))), b"state")
    store.group("g").apply_snapshot(snapshot)
    installed = SnapshotResponse(3, 1, 3, snapshot_index=7, received=5, installed=True)
    assert send(checker, installed)
    store.commit()
    assert not send(checker, installed)
    assert not send(checker, AppendResponse(3, 1, 3, index=6))  # the snapshot covers it


def test_a_snapshot_the_synced_log_already_covers_may_be_reported_installed(
    checker: PromiseChecker, stores: dict[int, PowerLossStorage]
) -> None:
    """A follower holding every entry a snapshot covers answers "installed" without
    storing it (Raft §7: it fast-forwards). That is a promise about its log: kept if
    the log is synced up to the snapshot's index, broken if it is not. (Found by the
    whole-cluster simulator, seed 474 of the mix, which the old rule failed.)"""
    assert not send(
        checker, SnapshotResponse(1, 2, 3, snapshot_index=3, received=5, installed=True)
    )
    assert send(checker, SnapshotResponse(1, 2, 3, snapshot_index=5, received=5, installed=True))


def test_one_leader_and_one_vote_per_term(checker: PromiseChecker) -> None:
    assert not send(checker, AppendRequest(1, 2, 2, 1, 1, (), 1))
    assert not send(checker, Heartbeat(1, 3, 2, 1))
    assert send(checker, Heartbeat(2, 3, 2, 1))
    assert not send(checker, VoteResponse(1, 1, 2, granted=True))
    assert any("voted for 1 and 2" in v for v in send(checker, VoteResponse(1, 2, 2, True)))


def test_a_client_ok_needs_the_entry_synced_on_a_majority(checker: PromiseChecker) -> None:
    checker.check_reply("g", 2, 2, [1, 2, 3])
    assert checker.violations == []
    checker.check_reply("g", 3, 2, [1, 2, 3])  # synced on node 1 only
    assert len(checker.violations) == 1
    checker.check_reply("g", 2, 1, [1, 2, 3])  # wrong term everywhere
    assert len(checker.violations) == 2
    assert checker.checked["reply"] == 3
