"""``SqliteStorage``: many groups in one file, group commit, reopen, corruption, bounds.

The contract every storage keeps is in ``test_storage_contract.py``; the crash test with
real processes is in ``test_crash_durability.py``. This file covers what only the
durable storage promises.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from boutique.raft.config import RaftConfig
from boutique.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from boutique.raft.rawnode import RawNode, bootstrap
from boutique.storage.errors import (
    DataFileError,
    StorageClosedError,
    StorageCorruptError,
    StorageFailedError,
    StorageOpenError,
)
from boutique.storage.sqlite import GroupStorage, SqliteStorage

CONF = ConfState(frozenset({1, 2, 3}))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "node.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStorage]:
    s = SqliteStorage(db)
    try:
        yield s
    finally:
        s.close()


def log(terms: list[int], start: int = 1, data: bytes = b"") -> list[Entry]:
    return [Entry(t, start + i, data or f"e{start + i}".encode()) for i, t in enumerate(terms)]


def image(g: GroupStorage) -> tuple[object, ...]:
    """Everything the core can read of a group, for comparing two of them."""
    first, last = g.first_index(), g.last_index()
    return (
        g.hard_state,
        g.initial_state(),
        g.snapshot(),
        first,
        last,
        g.term(first - 1),
        g.entries(first, last + 1),
    )


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def fill_three_groups(store: SqliteStorage) -> None:
    meta = store.group("meta")
    meta.bootstrap(HardState(1, 0, 1), [Entry(1, 1, b"+1,+2,+3", EntryType.CONF_CHANGE)])
    meta.append(log([1, 1, 2], start=2))
    meta.set_hard_state(HardState(2, 1, 3))
    shop = store.group("bucket:shopping")
    shop.append(log([1] * 20))
    shop.create_snapshot(15, CONF, b"shop@15")
    shop.compact(12)
    shop.set_hard_state(HardState(1, 2, 18))
    pets = store.group("bucket:pets \N{DOG}")
    pets.apply_snapshot(Snapshot(SnapshotMeta(40, 3, CONF), b"\x00pets\xff"))
    pets.append(log([3, 4], start=41, data=b"\x00\x01 binary \r\n"))
    pets.set_hard_state(HardState(4, 3, 41))


# --- Reopen -------------------------------------------------------------------------------


def test_reopen_restores_every_group_identically(db: Path) -> None:
    with SqliteStorage(db) as store:
        fill_three_groups(store)
        before = {name: image(store.group(name)) for name in store.groups()}
        store.commit()
    with SqliteStorage(db) as again:
        assert again.groups() == sorted(before)
        assert {name: image(again.group(name)) for name in again.groups()} == before


def test_uncommitted_writes_are_not_on_disk(db: Path) -> None:
    with SqliteStorage(db) as store:
        g = store.group("bucket:a")
        g.append(log([1, 1, 1]))
        g.set_hard_state(HardState(1, 1, 2))
        store.commit()
        g.append(log([2, 2], start=3))
        g.set_hard_state(HardState(2, 2, 3))
        store.group("bucket:b").append(log([1]))
        # A second connection sees only what was committed: a crash now keeps just that.
        with SqliteStorage(db) as crashed:
            assert crashed.groups() == ["bucket:a"]
            ga = crashed.group("bucket:a")
            assert ga.entries(1, 4) == log([1, 1, 1])
            assert ga.hard_state == HardState(1, 1, 2)
        store.commit()
    with SqliteStorage(db) as later:
        assert later.groups() == ["bucket:a", "bucket:b"]
        assert [e.term for e in later.group("bucket:a").entries(1, 5)] == [1, 1, 2, 2]


def test_close_discards_uncommitted_writes(db: Path) -> None:
    store = SqliteStorage(db)
    store.group("g").append(log([1]))
    store.commit()
    store.group("g").append(log([1], start=2))
    assert store.pending_writes() > 0
    store.close()
    store.close()  # closing twice is harmless
    with SqliteStorage(db) as again:
        assert again.group("g").last_index() == 1


def test_a_group_without_writes_is_not_persisted(store: SqliteStorage, db: Path) -> None:
    store.group("idle")
    assert store.groups() == []
    store.commit()
    with SqliteStorage(db) as again:
        assert again.groups() == []


def test_bad_group_ids(store: SqliteStorage) -> None:
    with pytest.raises(ValueError):
        store.group("")


def test_missing_data_directory_is_created(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "c" / "node.db"
    with SqliteStorage(db) as store:
        assert store.path == db
    assert db.is_file()
    assert not db.with_name("node.db.init").exists()


def test_file_settings(store: SqliteStorage) -> None:
    conn = store._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# --- Group commit -------------------------------------------------------------------------


def test_commit_is_one_transaction_for_all_groups(store: SqliteStorage) -> None:
    statements: list[str] = []
    assert store._conn is not None
    store._conn.set_trace_callback(statements.append)
    for i in range(10):
        g = store.group(f"bucket:{i}")
        g.append(log([1, 1]))
        g.set_hard_state(HardState(1, 1, 0))
    store.commit()
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 1
    statements.clear()
    store.commit()  # nothing pending: no transaction, no sync
    assert statements == []
    assert store.pending_writes() == 0


def test_commit_from_a_worker_thread(store: SqliteStorage, db: Path) -> None:
    store.group("g").append(log([1, 2, 3]))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            store.commit()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert errors == []
    with SqliteStorage(db) as again:
        assert again.group("g").last_index() == 3


def test_writes_made_while_a_worker_thread_commits_are_not_lost(
    store: SqliteStorage, db: Path
) -> None:
    """The runtime may sync in a worker thread while its event loop keeps writing:
    each write lands whole in one commit or the next, never in none."""
    groups = [store.group(f"bucket:{i}") for i in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def committer() -> None:
        try:
            while not stop.is_set():
                store.commit()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=committer)
    worker.start()
    try:
        for index in range(1, 1501):
            for g in groups:
                if index % 10 == 0:
                    g.append(log([2, 2], start=index - 1))  # overwrite a suffix
                else:
                    g.append(log([2 if index % 10 == 9 else 1], start=index))
                g.set_hard_state(HardState(2, 1, index))
    finally:
        stop.set()
        worker.join()
    assert errors == []
    store.commit()
    with SqliteStorage(db) as again:
        for g in groups:
            assert image(again.group(g.group_id)) == image(g)


def test_a_failed_commit_stops_the_storage(store: SqliteStorage, db: Path) -> None:
    g = store.group("g")
    g.append(log([1]))
    store.commit()
    g.append(log([1, 1], start=2))
    g.set_hard_state(HardState(1, 1, 1))
    # Another writer takes a row this batch inserts: the commit fails as a whole.
    with raw(db) as other:
        gid = other.execute("SELECT gid FROM groups WHERE name = 'g'").fetchone()[0]
        other.execute("INSERT INTO entries VALUES (?, 3, 9, 0, x'')", (gid,))
    with pytest.raises(StorageFailedError, match=r"node\.db"):
        store.commit()
    with pytest.raises(StorageFailedError):
        g.append(log([1], start=4))
    with pytest.raises(StorageFailedError):
        store.commit()
    with raw(db) as other:
        assert other.execute("SELECT idx FROM entries ORDER BY idx").fetchall() == [(1,), (3,)]
        assert other.execute("SELECT term, vote FROM groups").fetchone() == (0, 0)


def test_writes_after_close_are_refused(db: Path) -> None:
    store = SqliteStorage(db)
    g = store.group("g")
    store.close()
    with pytest.raises(StorageClosedError):
        g.append(log([1]))
    with pytest.raises(StorageClosedError):
        store.commit()
    assert g.last_index() == 0  # reads of the image still answer


# --- Dropping groups ----------------------------------------------------------------------


def test_drop_group(store: SqliteStorage, db: Path) -> None:
    fill_three_groups(store)
    store.commit()
    dropped = store.group("bucket:shopping")
    store.drop_group("bucket:shopping")
    store.drop_group("never existed")
    assert store.groups() == ["bucket:pets \N{DOG}", "meta"]
    with pytest.raises(StorageClosedError, match="dropped"):
        dropped.append(log([1], start=21))
    with SqliteStorage(db) as before_commit:
        assert "bucket:shopping" in before_commit.groups()
    store.commit()
    with SqliteStorage(db) as after:
        assert after.groups() == ["bucket:pets \N{DOG}", "meta"]
    with raw(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 1


def test_drop_and_recreate_in_one_batch(store: SqliteStorage, db: Path) -> None:
    store.group("bucket:x").append(log([1, 1, 1]))
    store.commit()
    store.drop_group("bucket:x")
    fresh = store.group("bucket:x")
    assert fresh.last_index() == 0
    fresh.append(log([5]))
    store.commit()
    with SqliteStorage(db) as again:
        assert again.group("bucket:x").entries(1, 2) == log([5])


# --- Unreadable files ---------------------------------------------------------------------


def make_store(db: Path, entries: int = 2000) -> None:
    with SqliteStorage(db) as store:
        g = store.group("bucket:a")
        g.append(log([1] * entries, data=b"v" * 100))
        store.commit()


def assert_refused(db: Path, error: type[DataFileError], match: str | None = None) -> None:
    with pytest.raises(error, match=match) as info:
        SqliteStorage(db)
    assert str(db) in str(info.value)


def test_random_bytes_are_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(64 * 1024))
    assert_refused(db, StorageCorruptError)
    assert len(db.read_bytes()) == 64 * 1024  # left as it was


def test_a_text_file_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_text("hello\n" * 1000)
    assert_refused(db, StorageCorruptError)


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("whole_pages", [False, True])
def test_a_truncated_file_is_refused(db: Path, keep: float, whole_pages: bool) -> None:
    make_store(db)
    data = db.read_bytes()
    assert len(data) > 100_000
    size = int(len(data) * keep)
    if whole_pages:
        size = min(size - size % 4096, len(data) - 4096)
    db.write_bytes(data[:size])
    assert_refused(db, StorageCorruptError)


def test_an_empty_file_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.touch()
    assert_refused(db, StorageCorruptError, "empty")


def test_damaged_pages_are_refused(db: Path) -> None:
    make_store(db)
    data = bytearray(db.read_bytes())
    for offset in range(3 * 4096, len(data) - 4096, 4096):
        data[offset : offset + 64] = os.urandom(64)
    db.write_bytes(bytes(data))
    assert_refused(db, StorageCorruptError)


def test_wrong_schema_version_is_refused(db: Path) -> None:
    make_store(db, entries=10)
    with raw(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    assert_refused(db, StorageCorruptError, "schema version '99'")


def test_another_applications_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with raw(db) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        conn.execute("INSERT INTO accounts VALUES (1, 'alice')")
    assert_refused(db, StorageCorruptError, "not a boutique data file")


def test_a_hole_in_a_log_is_refused(db: Path) -> None:
    make_store(db, entries=10)
    with raw(db) as conn:
        conn.execute("DELETE FROM entries WHERE idx = 5")
    assert_refused(db, StorageCorruptError, "holes")


def test_an_unknown_entry_type_is_refused(db: Path) -> None:
    make_store(db, entries=10)
    with raw(db) as conn:
        conn.execute("UPDATE entries SET type = 7 WHERE idx = 5")
    assert_refused(db, StorageCorruptError, "entry type")


def test_entries_of_no_group_are_refused(db: Path) -> None:
    make_store(db, entries=10)
    with raw(db) as conn:
        conn.execute("INSERT INTO entries VALUES (999, 1, 1, 0, x'')")
    assert_refused(db, StorageCorruptError, "no known group")


def test_a_missing_file_with_its_wal_left_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.with_name("node.db-wal").write_bytes(b"x" * 4096)
    assert_refused(db, StorageCorruptError, "write-ahead log")
    assert not db.exists()


def test_a_data_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(StorageOpenError, match="data") as info:
        SqliteStorage(tmp_path / "data" / "node.db")
    assert "cannot create the data directory" in str(info.value)


def test_a_data_file_that_is_a_directory_is_refused(db: Path) -> None:
    db.mkdir(parents=True)
    assert_refused(db, StorageOpenError, "directory")


# --- Sizes --------------------------------------------------------------------------------


def test_large_and_empty_values_round_trip(store: SqliteStorage, db: Path) -> None:
    big = os.urandom(1 << 20)
    g = store.group("g")
    g.append([Entry(1, 1, big), Entry(1, 2, b""), Entry(1, 3, b"\x00")])
    g.create_snapshot(2, CONF, big)
    store.commit()
    with SqliteStorage(db) as again:
        h = again.group("g")
        assert [e.data for e in h.entries(1, 4)] == [big, b"", b"\x00"]
        assert h.snapshot().data == big


def disk_bytes(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_sustained_writes_stay_bounded(store: SqliteStorage, db: Path) -> None:
    """Appends in 4 groups with a snapshot and compaction every 500 entries: the rows
    and the bytes on disk (database + WAL) stop growing once compaction kicks in, while
    three times the bound goes through."""
    groups = [store.group(f"bucket:{i}") for i in range(4)]
    value = b"v" * 1000
    sizes: list[int] = []
    appended = 0
    for commit in range(1, 2001):
        for g in groups:
            first = g.last_index() + 1
            g.append([Entry(1, i, value) for i in range(first, first + 5)])
            g.set_hard_state(HardState(1, 1, first + 4))
            appended += 5 * len(value)
            if first + 4 - g.snapshot().meta.index >= 500:
                g.create_snapshot(first + 4, CONF, value * 50)
                g.compact(first - 100)
        store.commit()
        if commit % 100 == 0:
            sizes.append(disk_bytes(db))
    with raw(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert rows <= 4 * 605
    assert sum(g.last_index() - g.first_index() + 1 for g in groups) == rows
    bound = 12 * 1024 * 1024
    assert max(sizes) < bound, sizes
    assert appended > 3 * bound
    # No growth trend: the second half of the run peaks no higher than the first.
    assert max(sizes[10:]) <= max(sizes[2:10]) * 1.1, sizes


# --- Under a Raft node --------------------------------------------------------------------


def drive(node: RawNode, group: GroupStorage, store: SqliteStorage, applied: list[bytes]) -> None:
    """Carry out Readys the way the runtime does: persist, commit (sync), apply, advance."""
    while node.has_ready():
        ready = node.ready()
        if ready.snapshot is not None:
            group.apply_snapshot(ready.snapshot)
        group.append(ready.entries)
        if ready.hard_state is not None:
            group.set_hard_state(ready.hard_state)
        store.commit()
        applied.extend(e.data for e in ready.committed_entries if e.type is EntryType.NORMAL)
        node.advance(ready)


def test_a_raft_node_restarts_from_the_file(db: Path) -> None:
    """One node's group: elect, propose, snapshot and compact, restart from the file:
    the snapshot is loaded and only the tail after it is replayed."""
    store = SqliteStorage(db)
    group = store.group("bucket:x")
    group.bootstrap(*bootstrap({1}))
    store.commit()
    node = RawNode(RaftConfig(id=1), group, random.Random(1))
    applied: list[bytes] = []
    drive(node, group, store, applied)  # applies the founding membership
    node.campaign()
    drive(node, group, store, applied)
    for i in range(30):
        node.propose(f"put {i}".encode())
        drive(node, group, store, applied)
        if i == 19:
            status = node.status()
            group.create_snapshot(status.applied, node.conf_state, b"\n".join(applied))
            group.compact(status.applied - 5)
            store.commit()
    assert applied == [f"put {i}".encode() for i in range(30)]
    before = node.status()
    store.close()

    with SqliteStorage(db) as again:
        group = again.group("bucket:x")
        snapshot = group.snapshot()
        assert snapshot.data.split(b"\n") == applied[:20]
        assert group.hard_state.commit == before.commit
        node = RawNode(RaftConfig(id=1, applied=snapshot.meta.index), group, random.Random(2))
        replayed: list[bytes] = []
        drive(node, group, again, replayed)
        node.campaign()
        drive(node, group, again, replayed)
        assert replayed == applied[20:]
        assert node.status().last_index > before.last_index  # the new leader's no-op
        assert node.status().term > before.term
