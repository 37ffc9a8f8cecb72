"""The leader's per-follower bookkeeping: the inflight window and the PROBE /
REPLICATE / SNAPSHOT modes of ``boutique.raft.progress``."""

from __future__ import annotations

import pytest

from boutique.raft.messages import Snapshot, SnapshotMeta
from boutique.raft.progress import Inflights, Progress, ProgressState


def make_progress(
    match: int = 0, next_: int = 1, state: ProgressState = ProgressState.PROBE, window: int = 4
) -> Progress:
    pr = Progress(match=match, next=next_, inflights=Inflights(window))
    if state is ProgressState.REPLICATE:
        pr.become_replicate()
        pr.next = next_
    elif state is ProgressState.SNAPSHOT:
        pr.become_snapshot(Snapshot(SnapshotMeta(index=next_ - 1, term=1)))
    return pr


# --- Inflights ------------------------------------------------------------------------


def test_inflights_add_until_full() -> None:
    inflights = Inflights(3)
    assert not inflights.full()
    assert len(inflights) == 0
    inflights.add(5)
    inflights.add(7)
    assert not inflights.full()
    inflights.add(9)
    assert inflights.full()
    assert len(inflights) == 3


def test_inflights_overflow_raises() -> None:
    inflights = Inflights(2)
    inflights.add(1)
    inflights.add(2)
    with pytest.raises(RuntimeError, match="overflow"):
        inflights.add(3)
    assert len(inflights) == 2


@pytest.mark.parametrize(
    ("free_to", "left"),
    [
        (0, 5),  # below everything: nothing freed
        (2, 5),
        (3, 4),  # exactly the first
        (4, 4),  # between two: frees only what is at or below
        (7, 2),
        (11, 1),
        (13, 0),
        (100, 0),
    ],
)
def test_inflights_free_to(free_to: int, left: int) -> None:
    inflights = Inflights(5)
    for last in (3, 5, 7, 11, 13):
        inflights.add(last)
    assert inflights.full()
    inflights.free_to(free_to)
    assert len(inflights) == left
    assert inflights.full() is (left == 5)


def test_inflights_free_to_then_add_reuses_room() -> None:
    inflights = Inflights(2)
    inflights.add(4)
    inflights.add(8)
    inflights.free_to(4)
    assert len(inflights) == 1
    inflights.add(12)
    assert inflights.full()
    inflights.free_to(11)
    assert len(inflights) == 1
    inflights.free_to(12)
    assert len(inflights) == 0


def test_inflights_free_first() -> None:
    inflights = Inflights(3)
    inflights.add(2)
    inflights.add(4)
    inflights.add(6)
    inflights.free_first()
    assert len(inflights) == 2
    # The oldest (2) was freed: freeing up to 3 now frees nothing more.
    inflights.free_to(3)
    assert len(inflights) == 2
    inflights.free_to(4)
    assert len(inflights) == 1


def test_inflights_free_first_on_empty_is_harmless() -> None:
    inflights = Inflights(1)
    inflights.free_first()
    assert len(inflights) == 0
    inflights.add(1)
    assert inflights.full()


def test_inflights_reset() -> None:
    inflights = Inflights(2)
    inflights.add(1)
    inflights.add(2)
    inflights.reset()
    assert len(inflights) == 0
    assert not inflights.full()


# --- PROBE ----------------------------------------------------------------------------


def test_probe_pauses_after_one_send_and_unpauses_on_update() -> None:
    pr = make_progress(match=0, next_=5)
    assert pr.state is ProgressState.PROBE
    assert not pr.is_paused()
    pr.sent_entries(last_index=6, count=2)
    assert pr.is_paused()
    # PROBE does not advance ``next`` optimistically.
    assert pr.next == 5
    assert pr.maybe_update(6)
    assert not pr.is_paused()
    assert (pr.match, pr.next) == (6, 7)


def test_probe_empty_send_also_pauses() -> None:
    pr = make_progress(match=2, next_=3)
    pr.sent_entries(last_index=2, count=0)
    assert pr.is_paused()
    assert len(pr.inflights) == 0


def test_probe_rejection_unpauses() -> None:
    pr = make_progress(match=0, next_=10)
    pr.sent_entries(last_index=12, count=3)
    assert pr.is_paused()
    assert pr.maybe_decrease(rejected=9, hint_index=5)
    assert not pr.is_paused()
    assert pr.next == 6


def test_probe_stale_update_does_not_unpause() -> None:
    pr = make_progress(match=5, next_=6)
    pr.sent_entries(last_index=7, count=2)
    assert not pr.maybe_update(4)
    assert pr.is_paused()
    assert (pr.match, pr.next) == (5, 6)


# (match, next, rejected, hint, accepted, next afterwards)
PROBE_DECREASE_TABLE = [
    # The rejection answers our probe (next-1 == rejected): jump to the hint.
    (0, 10, 9, 9, True, 9),
    (0, 10, 9, 4, True, 5),
    (0, 10, 9, 0, True, 1),
    # A hint beyond the rejection is clamped to the rejection.
    (0, 10, 9, 20, True, 9),
    # Never go back to or below what is known to match.
    (5, 10, 9, 2, True, 6),
    (8, 10, 9, 0, True, 9),
    # Stale: answers a probe for an index other than next-1.
    (0, 10, 8, 3, False, 10),
    (0, 10, 10, 3, False, 10),
    (0, 10, 3, 1, False, 10),
]


@pytest.mark.parametrize(
    ("match", "next_", "rejected", "hint", "accepted", "next_after"), PROBE_DECREASE_TABLE
)
def test_probe_maybe_decrease(
    match: int, next_: int, rejected: int, hint: int, accepted: bool, next_after: int
) -> None:
    pr = make_progress(match=match, next_=next_)
    pr.probe_sent = True
    assert pr.maybe_decrease(rejected, hint) is accepted
    assert pr.next == next_after
    assert pr.match == match
    # A stale rejection must not unpause the probe; a real one must.
    assert pr.probe_sent is (not accepted)


# --- REPLICATE ------------------------------------------------------------------------


def test_become_replicate_starts_after_match() -> None:
    pr = make_progress(match=7, next_=3)
    pr.probe_sent = True
    pr.become_replicate()
    assert pr.state is ProgressState.REPLICATE
    assert (pr.match, pr.next) == (7, 8)
    assert not pr.is_paused()


def test_replicate_streams_until_window_is_full() -> None:
    pr = make_progress(match=5, next_=6, state=ProgressState.REPLICATE, window=3)
    pr.sent_entries(last_index=7, count=2)
    assert pr.next == 8
    pr.sent_entries(last_index=9, count=2)
    assert pr.next == 10
    assert not pr.is_paused()
    pr.sent_entries(last_index=10, count=1)
    assert pr.next == 11
    assert pr.is_paused()
    assert len(pr.inflights) == 3
    # An acknowledgement frees the window up to the acknowledged index.
    assert pr.maybe_update(7)
    pr.inflights.free_to(7)
    assert not pr.is_paused()
    assert len(pr.inflights) == 2
    assert (pr.match, pr.next) == (7, 11)


def test_replicate_empty_send_uses_no_window_slot() -> None:
    pr = make_progress(match=5, next_=6, state=ProgressState.REPLICATE, window=1)
    pr.sent_entries(last_index=5, count=0)
    assert len(pr.inflights) == 0
    assert pr.next == 6
    assert not pr.is_paused()


# (match, next, rejected, accepted, next afterwards)
REPLICATE_DECREASE_TABLE = [
    # A rejection below match answers something older than a success: stale.
    (5, 9, 3, False, 9),
    # At match with a lower hint: stale, or a follower that lost its log; probe.
    (5, 9, 5, True, 6),
    # A real rejection rewinds to just after match (the hint is not trusted here).
    (5, 9, 6, True, 6),
    (5, 9, 8, True, 6),
    (0, 9, 8, True, 1),
]


@pytest.mark.parametrize(
    ("match", "next_", "rejected", "accepted", "next_after"), REPLICATE_DECREASE_TABLE
)
def test_replicate_maybe_decrease(
    match: int, next_: int, rejected: int, accepted: bool, next_after: int
) -> None:
    pr = make_progress(match=match, next_=next_, state=ProgressState.REPLICATE)
    assert pr.maybe_decrease(rejected, hint_index=1) is accepted
    assert pr.next == next_after
    assert pr.match == match


# --- maybe_update ---------------------------------------------------------------------


# (match, next, acknowledged, updated, match afterwards, next afterwards)
UPDATE_TABLE = [
    (3, 5, 2, False, 3, 5),  # stale ack
    (3, 5, 3, False, 3, 5),  # duplicate ack
    (3, 5, 4, True, 4, 5),
    (3, 5, 6, True, 6, 7),  # beyond next: next follows
    (0, 1, 10, True, 10, 11),
    (3, 9, 4, True, 4, 9),  # optimistic next is kept
]


@pytest.mark.parametrize(
    ("match", "next_", "ack", "updated", "match_after", "next_after"), UPDATE_TABLE
)
def test_maybe_update(
    match: int, next_: int, ack: int, updated: bool, match_after: int, next_after: int
) -> None:
    pr = make_progress(match=match, next_=next_, state=ProgressState.REPLICATE)
    assert pr.maybe_update(ack) is updated
    assert (pr.match, pr.next) == (match_after, next_after)


# --- SNAPSHOT -------------------------------------------------------------------------


def test_snapshot_state_is_always_paused() -> None:
    pr = make_progress(match=3, next_=4, state=ProgressState.REPLICATE)
    pr.inflights.add(4)
    pr.become_snapshot(Snapshot(SnapshotMeta(index=20, term=3), b"image"))
    assert pr.state is ProgressState.SNAPSHOT
    assert pr.is_paused()
    assert len(pr.inflights) == 0
    assert pr.transfer is not None
    assert pr.transfer.snapshot.meta.index == 20
    assert (pr.transfer.acked, pr.transfer.sent) == (0, 0)
    # Sending does nothing to a snapshot transfer's bookkeeping.
    pr.sent_entries(last_index=25, count=5)
    assert pr.is_paused()
    assert len(pr.inflights) == 0


def test_probe_after_snapshot_starts_after_the_snapshot() -> None:
    pr = make_progress(match=3, next_=4)
    pr.become_snapshot(Snapshot(SnapshotMeta(index=20, term=3)))
    pr.become_probe()
    assert pr.state is ProgressState.PROBE
    assert pr.next == 21
    assert pr.transfer is None
    assert not pr.is_paused()


def test_probe_after_snapshot_keeps_a_higher_match() -> None:
    pr = make_progress(match=3, next_=4)
    pr.become_snapshot(Snapshot(SnapshotMeta(index=20, term=3)))
    assert pr.maybe_update(25)
    pr.become_probe()
    assert (pr.match, pr.next) == (25, 26)


def test_become_probe_from_replicate_rewinds_to_match() -> None:
    pr = make_progress(match=4, next_=5, state=ProgressState.REPLICATE)
    pr.sent_entries(last_index=9, count=5)
    pr.sent_entries(last_index=12, count=3)
    assert pr.next == 13
    pr.become_probe()
    assert pr.state is ProgressState.PROBE
    assert pr.next == 5
    assert len(pr.inflights) == 0
    assert not pr.is_paused()


def test_replicate_after_probe_reset_window() -> None:
    pr = make_progress(match=0, next_=1, state=ProgressState.REPLICATE, window=2)
    pr.sent_entries(1, 1)
    pr.sent_entries(2, 1)
    assert pr.is_paused()
    pr.become_probe()
    pr.become_replicate()
    assert not pr.is_paused()
    assert len(pr.inflights) == 0
