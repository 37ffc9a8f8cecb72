"""``RaftLog`` over ``MemoryStorage``, and ``MemoryStorage`` itself.

The log joins three regions: the snapshot (only its index and term remain), the stable
entries in storage, and the unstable tail not yet persisted. Most tests here build a
log that spans all three and check every lookup at and around their boundaries.
"""

from __future__ import annotations

import pytest

from boutique.raft.log import RaftLog, Unstable
from boutique.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from boutique.raft.storage import CompactedError, UnavailableError
from boutique.storage import MemoryStorage

CONF = ConfState(frozenset({1, 2, 3}))


def entries(first: int, terms: list[int], size: int = 0) -> list[Entry]:
    """Entries ``first, first+1, ...`` with the given terms (and ``size`` data bytes)."""
    return [Entry(t, first + i, bytes(size)) for i, t in enumerate(terms)]


def storage_with(terms: list[int], snapshot_index: int = 0) -> MemoryStorage:
    """A storage holding entries ``1..len(terms)``, compacted up to ``snapshot_index``."""
    storage = MemoryStorage()
    storage.append(entries(1, terms))
    if snapshot_index:
        storage.create_snapshot(snapshot_index, CONF, b"image")
        storage.compact(snapshot_index)
    return storage


def three_region_log() -> RaftLog:
    """Snapshot at 3 (term 2), stable 4..5 (terms 2, 3), unstable 6..7 (terms 3, 4)."""
    storage = storage_with([1, 1, 2, 2, 3], snapshot_index=3)
    log = RaftLog(storage)
    log.append(entries(6, [3, 4]))
    return log


def log_terms(log: RaftLog) -> list[int]:
    return [e.term for e in log.slice(log.first_index(), log.last_index() + 1)]


# --- Reading across the regions -------------------------------------------------------


def test_indices_of_a_three_region_log() -> None:
    log = three_region_log()
    assert log.first_index() == 4
    assert log.last_index() == 7
    assert log.last_term() == 4
    assert log.unstable.offset == 6
    assert log.committed == 3
    assert log.applied == 3


@pytest.mark.parametrize(
    ("index", "term"),
    [(3, 2), (4, 2), (5, 3), (6, 3), (7, 4)],
)
def test_term_lookup_in_each_region(index: int, term: int) -> None:
    log = three_region_log()
    assert log.term(index) == term
    assert log.term_or_none(index) == term
    assert log.match_term(index, term)
    assert not log.match_term(index, term + 1)


@pytest.mark.parametrize(
    ("index", "error"),
    [(1, CompactedError), (2, CompactedError), (8, UnavailableError), (50, UnavailableError)],
)
def test_term_lookup_outside_the_log(index: int, error: type[Exception]) -> None:
    log = three_region_log()
    with pytest.raises(error):
        log.term(index)
    assert log.term_or_none(index) is None
    assert not log.match_term(index, 1)


def test_term_of_index_zero_is_zero() -> None:
    log = RaftLog(MemoryStorage())
    assert log.term(0) == 0
    assert log.match_term(0, 0)
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)


def test_unstable_entries_override_the_stable_ones_they_replace() -> None:
    storage = storage_with([1, 1, 1, 1])
    log = RaftLog(storage)
    log.truncate_and_append(entries(3, [2]))
    # Index 4 is still in storage but the unstable tail superseded it.
    assert log.last_index() == 3
    assert log.term(3) == 2
    assert log.term(2) == 1
    assert log.term_or_none(4) is None
    assert log_terms(log) == [1, 1, 2]


# --- Slices ---------------------------------------------------------------------------


def test_slice_spans_storage_and_unstable() -> None:
    log = three_region_log()
    assert [(e.index, e.term) for e in log.slice(4, 8)] == [(4, 2), (5, 3), (6, 3), (7, 4)]
    assert [e.index for e in log.slice(5, 7)] == [5, 6]
    assert [e.index for e in log.slice(6, 8)] == [6, 7]
    assert [e.index for e in log.slice(4, 5)] == [4]
    assert log.slice(5, 5) == []
    assert log.slice(7, 5) == []


def test_slice_bounds() -> None:
    log = three_region_log()
    with pytest.raises(CompactedError):
        log.slice(3, 6)
    with pytest.raises(UnavailableError):
        log.slice(5, 9)


def sized_log() -> RaftLog:
    """Entries 1..3 stable, 4..6 unstable, each 10 data bytes (26 bytes by ``size()``)."""
    storage = MemoryStorage()
    storage.append(entries(1, [1, 1, 1], size=10))
    log = RaftLog(storage)
    log.append(entries(4, [1, 1, 1], size=10))
    return log


@pytest.mark.parametrize(
    ("lo", "hi", "max_size", "expected"),
    [
        (1, 7, None, [1, 2, 3, 4, 5, 6]),
        (1, 7, 1000, [1, 2, 3, 4, 5, 6]),
        # At least one entry, even when it alone exceeds the budget.
        (1, 7, 0, [1]),
        (1, 7, 25, [1]),
        (1, 7, 26, [1]),
        (1, 7, 51, [1]),
        (1, 7, 52, [1, 2]),
        # The budget ends inside the stable part.
        (1, 7, 77, [1, 2]),
        (1, 7, 78, [1, 2, 3]),
        # The budget ends inside the unstable part.
        (1, 7, 104, [1, 2, 3, 4]),
        (2, 7, 104, [2, 3, 4, 5]),
        (1, 7, 155, [1, 2, 3, 4, 5]),
        (1, 7, 156, [1, 2, 3, 4, 5, 6]),
        # Only unstable.
        (4, 7, 0, [4]),
        (4, 7, 52, [4, 5]),
        (5, 7, 52, [5, 6]),
    ],
)
def test_slice_with_size_limit(lo: int, hi: int, max_size: int | None, expected: list[int]) -> None:
    log = sized_log()
    assert log.unstable.offset == 4
    assert [e.index for e in log.slice(lo, hi, max_size)] == expected


# --- Follower appends -----------------------------------------------------------------


def base_log(commit: int = 1) -> RaftLog:
    """Stable 1..3 with terms 1, 2, 3; committed up to ``commit``."""
    log = RaftLog(storage_with([1, 2, 3]))
    log.commit_to(commit)
    return log


# (prev index, prev term, leader commit, entries as (first, terms),
#  result, log terms afterwards, commit afterwards)
MAYBE_APPEND_TABLE = [
    # The previous entry does not match: rejected, nothing changes.
    (3, 2, 3, (4, [4]), None, [1, 2, 3], 1),
    (4, 3, 3, (5, [4]), None, [1, 2, 3], 1),
    (2, 1, 3, (3, [3]), None, [1, 2, 3], 1),
    # A heartbeat-like append: commit follows the leader, bounded by what matches.
    (3, 3, 3, (4, []), 3, [1, 2, 3], 3),
    (3, 3, 2, (4, []), 3, [1, 2, 3], 2),
    (2, 2, 3, (3, []), 2, [1, 2, 3], 2),  # commit bounded by last new = 2
    (0, 0, 3, (1, []), 0, [1, 2, 3], 1),
    # New entries at the end.
    (3, 3, 3, (4, [4]), 4, [1, 2, 3, 4], 3),
    (3, 3, 4, (4, [4]), 4, [1, 2, 3, 4], 4),
    (3, 3, 5, (4, [4, 4]), 5, [1, 2, 3, 4, 4], 5),
    (3, 3, 9, (4, [4]), 4, [1, 2, 3, 4], 4),  # commit bounded by last new
    # Entries we already hold, possibly followed by new ones: nothing is truncated.
    (1, 1, 3, (2, [2, 3]), 3, [1, 2, 3], 3),
    (1, 1, 3, (2, [2, 3, 4]), 4, [1, 2, 3, 4], 3),
    (0, 0, 3, (1, [1, 2, 3]), 3, [1, 2, 3], 3),
    # A conflict truncates from the first conflicting entry.
    (2, 2, 3, (3, [4]), 3, [1, 2, 4], 3),
    (2, 2, 3, (3, [4, 4]), 4, [1, 2, 4, 4], 3),
    (1, 1, 3, (2, [4]), 2, [1, 4], 2),
    (1, 1, 1, (2, [2, 4]), 3, [1, 2, 4], 1),
]


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "commit", "new", "result", "terms_after", "commit_after"),
    MAYBE_APPEND_TABLE,
)
def test_maybe_append(
    prev_index: int,
    prev_term: int,
    commit: int,
    new: tuple[int, list[int]],
    result: int | None,
    terms_after: list[int],
    commit_after: int,
) -> None:
    log = base_log(commit=1)
    assert log.maybe_append(prev_index, prev_term, commit, tuple(entries(*new))) == result
    assert log_terms(log) == terms_after
    assert log.committed == commit_after


def test_stale_append_whose_entries_are_all_present_keeps_later_entries() -> None:
    """A delayed or duplicated AppendRequest covering a prefix of our log must not
    erase what follows it (§5.3: truncate only on a real conflict)."""
    log = RaftLog(storage_with([1, 1, 2]))
    log.append(entries(4, [2, 2]))
    assert log.last_index() == 5
    result = log.maybe_append(1, 1, 5, tuple(entries(2, [1, 2])))
    assert result == 3
    assert log.last_index() == 5
    assert log_terms(log) == [1, 1, 2, 2, 2]
    # The leader's commit is trusted only up to what the message shows to match.
    assert log.committed == 3
    # The unstable tail is untouched: still waiting to be persisted.
    assert [e.index for e in log.unstable_entries()] == [4, 5]


def test_append_conflicting_with_committed_entry_is_refused() -> None:
    log = base_log(commit=3)
    with pytest.raises(RuntimeError, match="committed"):
        log.maybe_append(1, 1, 3, tuple(entries(2, [5])))
    assert log_terms(log) == [1, 2, 3]


def test_conflict_inside_unstable_tail_truncates_it() -> None:
    log = RaftLog(storage_with([1, 1]))
    log.append(entries(3, [1, 1, 1]))
    assert log.maybe_append(3, 1, 0, tuple(entries(4, [2]))) == 4
    assert log_terms(log) == [1, 1, 1, 2]
    assert [(e.index, e.term) for e in log.unstable_entries()] == [(3, 1), (4, 2)]


def test_conflict_inside_storage_replaces_the_unstable_tail() -> None:
    log = RaftLog(storage_with([1, 1, 1, 1]))
    log.append(entries(5, [1]))
    assert log.maybe_append(2, 1, 0, tuple(entries(3, [3, 3]))) == 4
    assert log_terms(log) == [1, 1, 3, 3]
    assert log.unstable.offset == 3
    assert [(e.index, e.term) for e in log.unstable_entries()] == [(3, 3), (4, 3)]


@pytest.mark.parametrize(
    ("new", "conflict"),
    [
        ((1, []), 0),
        ((1, [1, 2, 3]), 0),
        ((2, [2, 3]), 0),
        ((3, [3]), 0),
        ((2, [2, 3, 4]), 4),  # first entry past our log
        ((4, [4, 4]), 4),
        ((1, [1, 4]), 2),  # first term mismatch
        ((3, [4, 4]), 3),
    ],
)
def test_find_conflict(new: tuple[int, list[int]], conflict: int) -> None:
    assert base_log().find_conflict(entries(*new)) == conflict


# Log terms: index 1..7 -> 1, 1, 2, 2, 2, 5, 5
@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (7, 5, (7, 5)),
        (7, 9, (7, 5)),
        (7, 4, (5, 2)),  # skip every entry of term 5
        (7, 2, (5, 2)),
        (7, 1, (2, 1)),
        (7, 0, (0, 0)),
        (4, 2, (4, 2)),
        (4, 1, (2, 1)),
        (20, 3, (5, 2)),  # beyond our log: start from the last index
        (20, 7, (7, 5)),
        (0, 3, (0, 0)),
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    log = RaftLog(storage_with([1, 1, 2, 2, 2]))
    log.append(entries(6, [5, 5]))
    assert log.find_conflict_by_term(index, term) == expected


def test_find_conflict_by_term_below_the_snapshot() -> None:
    log = RaftLog(storage_with([1, 2, 3, 4, 4], snapshot_index=3))
    assert log.find_conflict_by_term(5, 4) == (5, 4)
    assert log.find_conflict_by_term(5, 3) == (3, 3)  # the snapshot's own term answers
    # Below the snapshot the terms are gone: the leader will send a snapshot.
    assert log.find_conflict_by_term(5, 2) == (2, 0)


@pytest.mark.parametrize(
    ("last_index", "last_term", "up_to_date"),
    [
        (3, 3, True),
        (4, 3, True),
        (2, 3, False),
        (1, 4, True),
        (9, 2, False),
        (0, 0, False),
    ],
)
def test_is_up_to_date(last_index: int, last_term: int, up_to_date: bool) -> None:
    assert base_log().is_up_to_date(last_index, last_term) is up_to_date


# --- Commit and apply -----------------------------------------------------------------


def test_commit_to_never_moves_back() -> None:
    log = base_log(commit=2)
    log.commit_to(1)
    assert log.committed == 2
    log.commit_to(3)
    assert log.committed == 3


def test_commit_beyond_last_index_is_a_bug() -> None:
    log = base_log()
    with pytest.raises(RuntimeError, match="beyond last index"):
        log.commit_to(4)
    assert log.committed == 1


def test_leader_append_over_committed_entries_is_a_bug() -> None:
    log = base_log(commit=2)
    with pytest.raises(RuntimeError, match="committed"):
        log.append(entries(2, [4]))
    assert log_terms(log) == [1, 2, 3]


def test_applied_to_bounds() -> None:
    log = base_log(commit=2)
    assert log.applied == 0
    log.applied_to(2)
    assert log.applied == 2
    with pytest.raises(RuntimeError):
        log.applied_to(3)  # beyond committed
    with pytest.raises(RuntimeError):
        log.applied_to(1)  # backwards
    log.applied_to(0)  # "nothing applied" is a no-op
    assert log.applied == 2


def test_next_committed_respects_applied_and_size() -> None:
    log = sized_log()
    log.commit_to(5)
    assert log.has_next_committed()
    assert [e.index for e in log.next_committed(1000)] == [1, 2, 3, 4, 5]
    assert [e.index for e in log.next_committed(52)] == [1, 2]
    log.applied_to(2)
    assert [e.index for e in log.next_committed(0)] == [3]
    log.applied_to(5)
    assert not log.has_next_committed()
    assert log.next_committed(1000) == []


def test_log_over_a_compacted_storage_starts_committed_at_the_snapshot() -> None:
    log = RaftLog(storage_with([1, 1, 2, 2], snapshot_index=2))
    assert (log.first_index(), log.last_index()) == (3, 4)
    assert (log.committed, log.applied, log.snapshot_index) == (2, 2, 2)
    assert log.next_committed(1000) == []


# --- Snapshots ------------------------------------------------------------------------


def test_restore_from_snapshot() -> None:
    storage = storage_with([1, 1, 2])
    log = RaftLog(storage)
    log.append(entries(4, [2]))
    snapshot = Snapshot(SnapshotMeta(10, 4, CONF), b"image")
    log.restore(snapshot)
    assert (log.first_index(), log.last_index(), log.last_term()) == (11, 10, 4)
    assert log.committed == 10
    assert log.term(10) == 4
    assert log.term_or_none(9) is None
    assert log.term_or_none(3) is None  # still in storage, but behind the snapshot
    assert log.term_or_none(11) is None
    assert log.unstable_entries() == []
    assert log.unstable.snapshot is snapshot
    # Nothing is applied from the log until the snapshot is installed.
    assert not log.has_next_committed()
    # The caller installs it, then the log reads through storage again.
    storage.apply_snapshot(snapshot)
    log.unstable.stable_snapshot_to(10)
    assert log.unstable.snapshot is None
    assert (log.first_index(), log.last_index(), log.term(10)) == (11, 10, 4)
    # Entries after the snapshot append normally.
    assert log.maybe_append(10, 4, 11, tuple(entries(11, [4]))) == 11
    assert log.committed == 11


def test_stable_snapshot_to_ignores_another_snapshot() -> None:
    unstable = Unstable(1)
    unstable.restore(Snapshot(SnapshotMeta(8, 2)))
    unstable.stable_snapshot_to(7)
    assert unstable.snapshot is not None
    unstable.stable_snapshot_to(8)
    assert unstable.snapshot is None


# --- Unstable -------------------------------------------------------------------------


def test_stable_to_drops_persisted_prefix() -> None:
    unstable = Unstable(4)
    unstable.truncate_and_append(entries(4, [1, 1, 2]))
    unstable.stable_to(5, 1)
    assert unstable.offset == 6
    assert [(e.index, e.term) for e in unstable.entries] == [(6, 2)]
    unstable.stable_to(6, 2)
    assert (unstable.offset, unstable.entries) == (7, [])


def test_stable_to_ignores_entries_that_were_replaced() -> None:
    unstable = Unstable(4)
    unstable.truncate_and_append(entries(4, [1, 1, 1]))
    # Before the caller reported 4..6 persisted, 5 onwards were replaced by term 2.
    unstable.truncate_and_append(entries(5, [2]))
    unstable.stable_to(6, 1)  # 6 no longer exists
    unstable.stable_to(5, 1)  # 5 now has another term
    assert unstable.offset == 4
    assert [(e.index, e.term) for e in unstable.entries] == [(4, 1), (5, 2)]
    unstable.stable_to(4, 1)
    assert unstable.offset == 5
    assert [(e.index, e.term) for e in unstable.entries] == [(5, 2)]


def test_stable_to_ignores_indices_below_offset() -> None:
    unstable = Unstable(5)
    unstable.truncate_and_append(entries(5, [3]))
    unstable.stable_to(4, 3)
    assert (unstable.offset, len(unstable.entries)) == (5, 1)


def test_truncate_and_append_before_offset_replaces_everything() -> None:
    unstable = Unstable(6)
    unstable.truncate_and_append(entries(6, [2, 2]))
    unstable.truncate_and_append(entries(4, [3]))
    assert unstable.offset == 4
    assert [(e.index, e.term) for e in unstable.entries] == [(4, 3)]
    assert unstable.maybe_last_index() == 4


def test_unstable_term_lookup() -> None:
    unstable = Unstable(6)
    assert unstable.maybe_last_index() is None
    assert unstable.maybe_term(6) is None
    unstable.truncate_and_append(entries(6, [2, 3]))
    assert unstable.maybe_term(5) is None  # below the tail: storage answers
    assert (unstable.maybe_term(6), unstable.maybe_term(7), unstable.maybe_term(8)) == (2, 3, None)
    assert unstable.maybe_first_index() is None


# --- MemoryStorage --------------------------------------------------------------------


def test_memory_storage_starts_empty() -> None:
    storage = MemoryStorage()
    assert (storage.first_index(), storage.last_index()) == (1, 0)
    assert storage.term(0) == 0
    assert storage.initial_state() == (HardState(), ConfState())
    assert storage.snapshot() == Snapshot()
    with pytest.raises(UnavailableError):
        storage.term(1)


def test_memory_storage_append_truncates_at_the_first_new_index() -> None:
    storage = storage_with([1, 1, 1, 1, 1])
    storage.append(entries(3, [2]))
    assert storage.last_index() == 3
    assert [e.term for e in storage.entries(1, 4)] == [1, 1, 2]
    storage.append(entries(4, [2, 2]))
    assert storage.last_index() == 5
    storage.append([])
    assert storage.last_index() == 5


def test_memory_storage_refuses_a_gap() -> None:
    storage = storage_with([1, 1])
    with pytest.raises(ValueError, match="gap"):
        storage.append(entries(4, [1]))
    assert storage.last_index() == 2


def test_memory_storage_entries_and_errors() -> None:
    storage = storage_with([1, 1, 2, 2, 3], snapshot_index=2)
    assert (storage.first_index(), storage.last_index()) == (3, 5)
    assert [e.index for e in storage.entries(3, 6)] == [3, 4, 5]
    assert storage.entries(4, 4) == []
    with pytest.raises(CompactedError):
        storage.entries(2, 4)
    with pytest.raises(UnavailableError):
        storage.entries(3, 7)
    assert storage.term(2) == 1  # the snapshot index still answers
    with pytest.raises(CompactedError):
        storage.term(1)
    with pytest.raises(UnavailableError):
        storage.term(6)


@pytest.mark.parametrize(
    ("max_size", "expected"),
    [(None, [1, 2, 3]), (0, [1]), (35, [1]), (36, [1, 2]), (51, [1, 2]), (52, [1, 2, 3])],
)
def test_memory_storage_entries_size_limit(max_size: int | None, expected: list[int]) -> None:
    storage = MemoryStorage()
    storage.append([Entry(1, 1, b""), Entry(1, 2, b"xxxx"), Entry(1, 3, b"")])
    assert [e.size() for e in storage.entries(1, 4)] == [16, 20, 16]
    assert [e.index for e in storage.entries(1, 4, max_size)] == expected


def test_memory_storage_compact() -> None:
    storage = storage_with([1, 1, 2, 2, 3])
    with pytest.raises(ValueError, match="past the latest snapshot"):
        storage.compact(3)
    snapshot = storage.create_snapshot(3, CONF, b"state@3")
    assert snapshot.meta == SnapshotMeta(3, 2, CONF)
    storage.compact(3)
    assert (storage.first_index(), storage.last_index()) == (4, 5)
    assert storage.term(3) == 2
    assert [e.index for e in storage.entries(4, 6)] == [4, 5]
    # Compacting again at or below the current point is a no-op.
    storage.compact(2)
    storage.compact(3)
    assert storage.first_index() == 4
    assert storage.initial_state()[1] == CONF


def test_memory_storage_create_snapshot() -> None:
    storage = storage_with([1, 1, 2])
    first = storage.create_snapshot(2, CONF, b"a")
    assert storage.snapshot() is first
    # An older or equal index returns the snapshot already held.
    assert storage.create_snapshot(1, CONF, b"older") is first
    assert storage.create_snapshot(2, CONF, b"same") is first
    with pytest.raises(UnavailableError):
        storage.create_snapshot(4, CONF, b"future")
    later = storage.create_snapshot(3, CONF, b"b")
    assert later.meta == SnapshotMeta(3, 2, CONF)
    assert later.data == b"b"
    # Creating a snapshot does not compact by itself.
    assert storage.first_index() == 1


def test_memory_storage_apply_snapshot_replaces_the_log() -> None:
    storage = storage_with([1, 1, 2])
    snapshot = Snapshot(SnapshotMeta(10, 5, CONF), b"image")
    storage.apply_snapshot(snapshot)
    assert (storage.first_index(), storage.last_index()) == (11, 10)
    assert storage.term(10) == 5
    assert storage.snapshot() is snapshot
    assert storage.initial_state()[1] == CONF
    with pytest.raises(CompactedError):
        storage.entries(3, 4)
    # Entries covered by the snapshot are dropped on append.
    storage.append(entries(9, [5, 5, 6]))
    assert (storage.first_index(), storage.last_index()) == (11, 11)
    assert storage.term(11) == 6
    with pytest.raises(ValueError, match="older"):
        storage.apply_snapshot(Snapshot(SnapshotMeta(9, 5, CONF)))


def test_memory_storage_bootstrap_only_when_empty() -> None:
    storage = MemoryStorage()
    storage.bootstrap(HardState(1, 0, 1), entries(1, [1]))
    assert storage.hard_state == HardState(1, 0, 1)
    assert storage.last_index() == 1
    with pytest.raises(ValueError, match="not empty"):
        storage.bootstrap(HardState(1, 0, 1), entries(1, [1]))
