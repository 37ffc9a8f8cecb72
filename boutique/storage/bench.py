"""Storage benchmark: ``python -m boutique.storage.bench [--help]``.

Prints how many entries per second ``SqliteStorage`` appends and syncs at batch sizes
1, 10 and 100 (one fsync per commit), the same with 100 groups sharing each commit
(group commit), and how long reopening a node whose log holds 1,000,000 entries takes,
with the process's memory after it. The setup (machine, file system, entry size, SQLite
version, synchronous mode) is printed first, since fsync speed depends on all of them.

It writes only inside a scratch directory it creates (by default under the current
directory, not /tmp, which is often a RAM disk where fsync costs nothing) and removes it
afterwards. It must never be imported by the store itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from boutique.raft.messages import ConfState, Entry, EntryType, HardState

from .sqlite import INSERT_ENTRY, SET_HARD_STATE, GroupStorage, SqliteStorage

CONF = ConfState(frozenset({1, 2, 3}))
COMPACT_EVERY = 10_000
"""Snapshot and compact each group's log this often, as a running node would."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boutique.storage.bench", description=__doc__)
    parser.add_argument(
        "--dir", type=Path, default=Path.cwd(), help="where to make the scratch directory"
    )
    parser.add_argument("--entry-size", type=int, default=128, help="bytes of data per entry")
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent at each batch size")
    parser.add_argument(
        "--log-entries",
        type=int,
        default=1_000_000,
        help="log size for the reopen test (0: skip it)",
    )
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix=".boutique-bench-", dir=args.dir))
    try:
        print_setup(scratch, args.entry_size)
        data = os.urandom(args.entry_size)
        print("\nappend + commit, 1 group (one transaction and one fsync per commit):")
        for batch in (1, 10, 100):
            append_bench(scratch / f"batch{batch}.db", data, batch, 1, args.seconds)
        print("\ngroup commit, 100 groups x 1 entry per commit:")
        append_bench(scratch / "groups.db", data, 1, 100, args.seconds)
        if args.log_entries > 0:
            print(f"\nreopen a node whose log holds {args.log_entries:,} entries (1 group):")
            reopen_bench(scratch / "big.db", data, args.log_entries)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def print_setup(scratch: Path, entry_size: int) -> None:
    probe = sqlite3.connect(":memory:")
    page_size = probe.execute("PRAGMA page_size").fetchone()[0]
    probe.close()
    print("boutique storage benchmark")
    print(f"  machine:    {platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}")
    print(f"  python:     {platform.python_implementation()} {platform.python_version()}")
    print(
        f"  sqlite:     {sqlite3.sqlite_version}, journal WAL, synchronous=FULL, page {page_size} B"
    )
    print(f"  directory:  {scratch} ({filesystem(scratch)})")
    print(f"  entry:      {entry_size} B of data (+ index, term, type columns)")


def append_bench(path: Path, data: bytes, batch: int, group_count: int, seconds: float) -> None:
    """Append ``batch`` entries to each of ``group_count`` groups, set their hard states,
    commit; repeat for ``seconds``. Logs are snapshotted and compacted as they grow."""
    with SqliteStorage(path) as store:
        groups = [store.group(f"bucket:{i}") for i in range(group_count)]
        commits = 0
        latencies: list[float] = []
        start = time.perf_counter()
        while True:
            began = time.perf_counter()
            for g in groups:
                append_batch(g, data, batch)
            store.commit()
            ended = time.perf_counter()
            latencies.append(ended - began)
            commits += 1
            if ended - start >= seconds and commits >= 10:
                break
        elapsed = time.perf_counter() - start
    entries = commits * batch * group_count
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1000
    label = f"batch {batch:>3}" if group_count == 1 else f"{group_count} groups"
    print(
        f"  {label}: {entries / elapsed:>9,.0f} entries/s  {commits / elapsed:>6,.0f} commits/s"
        f"  commit p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


def append_batch(group: GroupStorage, data: bytes, batch: int) -> None:
    first = group.last_index() + 1
    group.append([Entry(1, i, data) for i in range(first, first + batch)])
    last = first + batch - 1
    group.set_hard_state(HardState(1, 1, last))
    if last - group.snapshot().meta.index >= COMPACT_EVERY:
        group.create_snapshot(last, CONF, data)
        group.compact(last)


def reopen_bench(path: Path, data: bytes, count: int) -> None:
    started = time.perf_counter()
    with SqliteStorage(path) as store:
        group = store.group("bucket:big")
        group.append([Entry(1, 1, data)])
        store.commit()
    conn = sqlite3.connect(path, isolation_level=None)
    gid = conn.execute("SELECT gid FROM groups WHERE name = 'bucket:big'").fetchone()[0]
    conn.execute("BEGIN")
    conn.executemany(INSERT_ENTRY, rows(gid, data, 2, count))
    conn.execute(SET_HARD_STATE, (1, 1, count, gid))
    conn.execute("COMMIT")
    conn.close()
    generated = time.perf_counter() - started
    size = path.stat().st_size
    print(
        f"  generate:   {generated:.1f} s (executemany in one transaction), file {size / 1e6:.0f} MB"
    )

    conn = sqlite3.connect(path)
    began = time.perf_counter()
    conn.execute("PRAGMA quick_check").fetchall()
    quick_check = time.perf_counter() - began
    conn.close()

    rss_before = current_rss()
    began = time.perf_counter()
    store = SqliteStorage(path)
    reopened = time.perf_counter() - began
    rss_after = current_rss()
    group = store.group("bucket:big")
    assert group.last_index() == count and group.hard_state.commit == count
    print(f"  reopen:     {reopened:.2f} s (PRAGMA quick_check alone: {quick_check:.2f} s)")
    print(
        f"  memory:     RSS {mb(rss_before)} before, {mb(rss_after)} after reopen"
        f" (peak {mb(peak_rss())}); {(rss_after - rss_before) / count:.0f} B per entry"
    )
    store.close()


def rows(
    gid: int, data: bytes, first: int, last: int
) -> Iterator[tuple[int, int, int, int, bytes]]:
    normal = int(EntryType.NORMAL)
    for index in range(first, last + 1):
        yield gid, index, 1, normal, data


def current_rss() -> int:
    """Resident memory of this process in bytes (Linux), else the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def filesystem(path: Path) -> str:
    """File system type and device holding ``path``, from /proc/mounts (Linux)."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return "file system unknown"
    resolved = str(path.resolve())
    best = ("", "unknown", "unknown")
    for device, mount_point, fs_type, *_ in mounts:
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[0]):
            best = (mount_point, fs_type, device)
    return f"{best[1]} on {best[2]}, mounted at {best[0]}"


if __name__ == "__main__":
    sys.exit(main())
