"""The storage contract, run against ``MemoryStorage``, ``GroupStorage`` and the
power-loss disk's ``DiskGroup`` alike.

Each test drives a storage through its write side and checks the read side the Raft
core relies on (``boutique.raft.storage.LogStorage``). For ``GroupStorage`` every check
is repeated after a commit and a reopen of the file, so what the core reads after a
restart is what it read before; for ``DiskGroup`` after a commit, a power loss and a
restart from what the disk synced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from boutique.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from boutique.raft.storage import CompactedError, UnavailableError
from boutique.storage import MemoryStorage
from boutique.storage.sqlite import GroupStorage, SqliteStorage
from boutique.testing.disk import DiskGroup, PowerLossDisk, PowerLossStorage


class Storage(Protocol):
    """What both implementations offer (the read side plus the write side)."""

    @property
    def hard_state(self) -> HardState: ...
    def initial_state(self) -> tuple[HardState, ConfState]: ...
    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]: ...
    def term(self, index: int) -> int: ...
    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def snapshot(self) -> Snapshot: ...
    def append(self, entries: list[Entry]) -> None: ...
    def set_hard_state(self, hard_state: HardState) -> None: ...
    def apply_snapshot(self, snapshot: Snapshot) -> None: ...
    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot: ...
    def compact(self, index: int) -> None: ...
    def bootstrap(self, hard_state: HardState, entries: list[Entry]) -> None: ...


class Harness:
    """A storage under test and a way to see it as it would be after a restart."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._path = tmp_path / "node.db"
        self._stores: list[SqliteStorage | PowerLossStorage] = []
        self._disk = PowerLossDisk()
        self.storage: Storage = MemoryStorage() if kind == "memory" else self._open()

    def _open(self) -> GroupStorage | DiskGroup:
        if self.kind == "powerloss":
            disk_store = self._disk.open()
            self._stores.append(disk_store)
            return disk_store.group("bucket:shopping")
        store = SqliteStorage(self._path)
        self._stores.append(store)
        return store.group("bucket:shopping")

    def restarted(self) -> Storage:
        """Memory: the same object. SQLite: commit, close, reopen the file. Power-loss
        disk: commit, lose the power, restart from what was synced."""
        if self.kind == "memory":
            return self.storage
        self._stores[-1].commit()
        if self.kind == "powerloss":
            self._disk.crash()
        else:
            self._stores[-1].close()
        self.storage = self._open()
        return self.storage

    def close(self) -> None:
        for store in self._stores:
            store.close()


@pytest.fixture(params=["memory", "sqlite", "powerloss"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(request.param, tmp_path)
    try:
        yield h
    finally:
        h.close()


def both(harness: Harness, check: Callable[[Storage], None]) -> None:
    """Run ``check`` on the live storage, then on the storage after a restart."""
    check(harness.storage)
    check(harness.restarted())


def log(terms: list[int], start: int = 1) -> list[Entry]:
    return [Entry(term, start + i, f"e{start + i}".encode()) for i, term in enumerate(terms)]


def terms_of(s: Storage) -> list[int]:
    return [s.term(i) for i in range(s.first_index(), s.last_index() + 1)]


CONF = ConfState(frozenset({1, 2, 3}), frozenset({4}))


def test_empty_storage(harness: Harness) -> None:
    def check(s: Storage) -> None:
        assert s.first_index() == 1
        assert s.last_index() == 0
        assert s.term(0) == 0
        assert s.entries(1, 1) == []
        assert s.snapshot() == Snapshot()
        assert s.initial_state() == (HardState(), ConfState())
        with pytest.raises(UnavailableError):
            s.term(1)
        with pytest.raises(UnavailableError):
            s.entries(1, 2)
        with pytest.raises(CompactedError):
            s.entries(0, 1)

    both(harness, check)


def test_append_and_read(harness: Harness) -> None:
    entries = [
        *log([1, 1, 2]),
        Entry(3, 4, b"", EntryType.NOOP),
        Entry(3, 5, b"+1,+2", EntryType.CONF_CHANGE),
        Entry(3, 6, bytes(range(256))),
    ]
    harness.storage.append(entries)

    def check(s: Storage) -> None:
        assert (s.first_index(), s.last_index()) == (1, 6)
        assert terms_of(s) == [1, 1, 2, 3, 3, 3]
        assert s.entries(1, 7) == entries
        assert s.entries(2, 4) == entries[1:3]
        assert [type(e.type) for e in s.entries(1, 7)] == [EntryType] * 6
        with pytest.raises(CompactedError):
            s.entries(0, 3)
        with pytest.raises(UnavailableError):
            s.entries(5, 8)
        with pytest.raises(UnavailableError):
            s.term(7)

    both(harness, check)


def test_entries_max_size_returns_at_least_one(harness: Harness) -> None:
    harness.storage.append([Entry(1, i, b"x" * 100) for i in range(1, 6)])

    def check(s: Storage) -> None:
        assert len(s.entries(1, 6, max_size=1)) == 1
        assert len(s.entries(1, 6, max_size=2 * 116)) == 2
        assert len(s.entries(1, 6, max_size=None)) == 5

    both(harness, check)


def test_append_truncates_a_conflicting_suffix(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1, 1, 2, 2]))
    s.append(log([3, 3], start=3))
    assert terms_of(s) == [1, 1, 3, 3]

    def check(s: Storage) -> None:
        assert s.last_index() == 4
        assert terms_of(s) == [1, 1, 3, 3]
        assert s.entries(3, 5) == log([3, 3], start=3)

    both(harness, check)


def test_append_replacing_the_whole_log_and_extending(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1, 1]))
    s.append(log([2]))
    s.append(log([2, 2, 2], start=2))
    s.append(log([4], start=5))

    def check(s: Storage) -> None:
        assert terms_of(s) == [2, 2, 2, 2, 4]

    both(harness, check)


def test_append_with_a_gap_is_refused_and_changes_nothing(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1]))
    with pytest.raises(ValueError):
        s.append(log([1], start=4))

    def check(s: Storage) -> None:
        assert terms_of(s) == [1, 1]

    both(harness, check)


def test_hard_state(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 2]))
    s.set_hard_state(HardState(term=1, vote=3, commit=1))
    s.set_hard_state(HardState(term=2, vote=1, commit=2))

    def check(s: Storage) -> None:
        assert s.hard_state == HardState(term=2, vote=1, commit=2)
        assert s.initial_state()[0] == HardState(term=2, vote=1, commit=2)

    both(harness, check)


def test_create_snapshot_then_compact(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1, 2, 2, 3, 3]))
    snap = s.create_snapshot(4, CONF, b"state@4")
    assert snap == Snapshot(SnapshotMeta(4, 2, CONF), b"state@4")
    s.compact(4)

    def check(s: Storage) -> None:
        assert s.snapshot() == snap
        assert s.initial_state()[1] == CONF
        assert (s.first_index(), s.last_index()) == (5, 6)
        assert s.term(4) == 2
        assert s.entries(5, 7) == log([3, 3], start=5)
        with pytest.raises(CompactedError):
            s.term(3)
        with pytest.raises(CompactedError):
            s.entries(4, 6)

    both(harness, check)


def test_snapshot_ahead_of_compaction(harness: Harness) -> None:
    """The log base may lag the snapshot; both survive as they were."""
    s = harness.storage
    s.append(log([1, 1, 2, 2, 3, 3]))
    s.create_snapshot(5, CONF, b"state@5")
    s.compact(2)

    def check(s: Storage) -> None:
        assert s.snapshot().meta == SnapshotMeta(5, 3, CONF)
        assert (s.first_index(), s.last_index()) == (3, 6)
        assert s.term(2) == 1
        assert terms_of(s) == [2, 2, 3, 3]

    both(harness, check)


def test_snapshot_without_compaction(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1, 2]))
    s.create_snapshot(2, CONF, b"s")

    def check(s: Storage) -> None:
        assert s.snapshot() == Snapshot(SnapshotMeta(2, 1, CONF), b"s")
        assert (s.first_index(), s.last_index()) == (1, 3)

    both(harness, check)


def test_create_snapshot_rules(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1, 2]))
    first = s.create_snapshot(2, CONF, b"a")
    assert s.create_snapshot(2, CONF, b"b") is first
    assert s.create_snapshot(1, CONF, b"c") is first
    with pytest.raises(UnavailableError):
        s.create_snapshot(4, CONF, b"d")

    def check(s: Storage) -> None:
        assert s.snapshot() == first

    both(harness, check)


def test_compact_rules(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1, 2, 2]))
    with pytest.raises(ValueError):
        s.compact(2)  # no snapshot covers it
    s.create_snapshot(3, CONF, b"")
    s.compact(3)
    s.compact(2)  # already compacted: nothing happens
    s.compact(3)
    with pytest.raises(ValueError):
        s.compact(4)

    def check(s: Storage) -> None:
        assert (s.first_index(), s.last_index()) == (4, 4)
        assert s.term(3) == 2

    both(harness, check)


def test_compact_everything(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 2, 3]))
    s.create_snapshot(3, CONF, b"all")
    s.compact(3)

    def check(s: Storage) -> None:
        assert (s.first_index(), s.last_index()) == (4, 3)
        assert s.term(3) == 3
        assert s.entries(4, 4) == []

    both(harness, check)
    s = harness.storage
    s.append(log([4, 4], start=4))
    both(harness, lambda s: assert_terms(s, 4, [4, 4]))


def assert_terms(s: Storage, first: int, terms: list[int]) -> None:
    assert s.first_index() == first
    assert terms_of(s) == terms


def test_apply_snapshot_replaces_the_log(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1, 1, 1, 1]))
    snap = Snapshot(SnapshotMeta(10, 4, CONF), b"leader state")
    s.apply_snapshot(snap)

    def check(s: Storage) -> None:
        assert s.snapshot() == snap
        assert (s.first_index(), s.last_index()) == (11, 10)
        assert s.term(10) == 4
        with pytest.raises(CompactedError):
            s.term(5)
        with pytest.raises(UnavailableError):
            s.term(11)

    both(harness, check)
    s = harness.storage
    s.append(log([4, 5], start=11))
    both(harness, lambda s: assert_terms(s, 11, [4, 5]))


def test_apply_snapshot_behind_the_log_still_replaces_it(harness: Harness) -> None:
    s = harness.storage
    s.append(log([1, 1, 1, 1, 1]))
    s.apply_snapshot(Snapshot(SnapshotMeta(3, 1, CONF), b"s"))
    both(harness, lambda s: assert_terms(s, 4, []))


def test_older_snapshot_is_refused(harness: Harness) -> None:
    s = harness.storage
    s.apply_snapshot(Snapshot(SnapshotMeta(10, 4, CONF), b"new"))
    with pytest.raises(ValueError):
        s.apply_snapshot(Snapshot(SnapshotMeta(9, 4, CONF), b"old"))
    both(harness, lambda s: assert_snapshot_data(s, b"new"))


def assert_snapshot_data(s: Storage, data: bytes) -> None:
    assert s.snapshot().data == data


def test_append_drops_entries_the_snapshot_covers(harness: Harness) -> None:
    s = harness.storage
    s.apply_snapshot(Snapshot(SnapshotMeta(5, 2, CONF), b""))
    s.append(log([2, 2, 3, 3], start=4))
    s.append(log([2, 2], start=3))  # entirely covered: nothing happens

    def check(s: Storage) -> None:
        assert_terms(s, 6, [3, 3])
        assert s.entries(6, 8) == log([3, 3], start=6)

    both(harness, check)


def test_bootstrap(harness: Harness) -> None:
    s = harness.storage
    entry = Entry(1, 1, b"+1,+2,+3", EntryType.CONF_CHANGE)
    s.bootstrap(HardState(term=1, vote=0, commit=1), [entry])
    with pytest.raises(ValueError):
        s.bootstrap(HardState(term=1), [entry])

    def check(s: Storage) -> None:
        assert s.hard_state == HardState(term=1, vote=0, commit=1)
        assert s.entries(1, 2) == [entry]

    both(harness, check)


def test_a_long_history(harness: Harness) -> None:
    """Appends, overwrites, snapshots, compactions and installs, mixed."""
    s = harness.storage
    s.append(log([1] * 50))
    s.append(log([2] * 20, start=41))
    s.create_snapshot(30, CONF, b"30")
    s.compact(25)
    s.set_hard_state(HardState(2, 1, 30))
    s.append(log([3] * 10, start=61))
    s.create_snapshot(60, CONF, b"60")
    s.compact(60)
    s.apply_snapshot(Snapshot(SnapshotMeta(100, 5, CONF), b"100"))
    s.append(log([5] * 5 + [6] * 5, start=101))
    s.create_snapshot(105, CONF, b"105")
    s.compact(103)
    s.set_hard_state(HardState(6, 2, 105))

    def check(s: Storage) -> None:
        assert_terms(s, 104, [5, 5, 6, 6, 6, 6, 6])
        assert s.term(103) == 5
        assert s.snapshot() == Snapshot(SnapshotMeta(105, 5, CONF), b"105")
        assert s.hard_state == HardState(6, 2, 105)

    both(harness, check)
