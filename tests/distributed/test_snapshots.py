"""Snapshots in a real cluster: a lagging replica is caught up by a snapshot, and a
node's data file stays bounded under sustained writes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from boutique.client import ClientError
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed


def test_lagging_replica_catches_up_from_a_snapshot(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3, snapshot_entries=40) as cluster:
        cluster.start()
        with cluster.client("n1") as client:
            client.create("apples")
            client.put("apples", "first", "1")
        leader = _wait(lambda: cluster.leader_of("b/apples/"))
        lagging, other = [n for n in cluster.nodes if n != leader]
        cluster.stop(lagging)
        # One at a time: each write its own entry (pipelined writes would share entries,
        # too few to pass the snapshot threshold many times over).
        with cluster.client(leader) as client:
            for i in range(400):
                client.put("apples", f"k{i:04}", f"v{i}")
        cluster.start(lagging)
        # The lagging replica's log ends far behind the others' compacted logs: only a
        # snapshot can bring it up.
        _wait(lambda: "group b/apples/1: installed a snapshot" in _log(cluster, lagging))
        # Now serve from the caught-up replica with the old leader gone.
        cluster.stop(leader)
        with cluster.client(lagging) as client:
            keys = _wait(lambda: client.keys("apples"))
            assert len(keys) == 401
            assert client.get("apples", "k0399") == "v399"
        del other


def _log(cluster: LocalCluster, node: str) -> str:
    return cluster.nodes[node].log_path.read_text(errors="replace")


def _wait(fn: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
        except ClientError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_log_and_data_file_stay_bounded(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=1, snapshot_entries=200) as cluster:
        cluster.start()
        db = cluster.nodes["n1"].data_dir / "raft.db"
        with cluster.client("n1") as client:
            client.create("apples")
            sizes = []
            for round_ in range(6):
                with client.pipeline() as pipe:
                    for i in range(1000):
                        pipe.put("apples", f"k{i % 50}", "x" * 200)
                wal = db.with_name("raft.db-wal")
                sizes.append(db.stat().st_size + (wal.stat().st_size if wal.exists() else 0))
                del round_
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM entries").fetchone()
        # 6,000 writes, but the log is compacted behind snapshots every 200 entries.
        assert rows < 600, rows
        # The file stops growing: the last rounds are no bigger than the early ones.
        assert max(sizes[3:]) <= max(sizes[:3]) * 1.5 + 1_000_000, sizes
