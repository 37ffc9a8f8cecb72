"""A node whose data directory was wiped must not found the cluster's groups again
(issue 14, item 3): it refuses to start and says how to come back, and that way back
(remove it, start the machine as a new node with --join) works. A founder that starts
late for the first time still founds."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from boutique.client import ClientError
from boutique.testing.jepsen import admin
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed


def _wait(fn: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
        except (ClientError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _nodes(cluster: LocalCluster, via: str) -> dict[str, str]:
    lines = admin(cluster, via, "ADMIN NODES")
    return {line.split()[1]: line for line in lines if line.startswith("node ")}


def test_a_wiped_node_is_refused_then_comes_back_as_a_new_node(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3, snapshot_entries=40) as cluster:
        cluster.start()
        with cluster.client("n1") as client:
            client.create("apples")
            # One at a time: each write its own entry, enough for snapshots (pipelined
            # writes would share entries).
            for i in range(120):
                client.put("apples", f"k{i:03}", f"v{i}")
        cluster.stop("n3")
        shutil.rmtree(cluster.nodes["n3"].data_dir)
        cluster.start("n3", wait=False)
        process = cluster.nodes["n3"].process
        assert process is not None
        assert process.wait(timeout=60) == 3, cluster.log_tail("n3")
        log = cluster.nodes["n3"].log_path.read_text(errors="replace")
        assert "has already taken part in this cluster" in log, log[-3000:]
        assert "ADMIN REMOVE-NODE n3" in log and "--join" in log, log[-3000:]
        # The others never heard from the amnesiac, and go on.
        with cluster.client("n1") as client:
            client.put("apples", "during", "yes")

        # The way back: the machine starts as a new node, then the old one is removed
        # (a 3-node cluster keeps 3 nodes for its replicas while it drains).
        cluster.add_joiner("n4", 4)
        cluster.start("n4")
        _wait(lambda: "meta learner" in _nodes(cluster, "n1").get("n4", ""), what="n4 to join")
        assert admin(cluster, "n1", "ADMIN REMOVE-NODE n3")[-1] == "OK"
        _wait(lambda: "n3" not in _nodes(cluster, "n1"), timeout=90, what="n3 to be removed")
        cluster.forget("n3")
        n4_log = cluster.nodes["n4"].log_path.read_text(errors="replace")
        assert "installed a snapshot" in n4_log, n4_log[-3000:]
        # n4 holds the data: with n1 gone, n2 and n4 are the majority.
        cluster.stop("n1")
        with cluster.client("n4", timeout=15) as client:
            assert _wait(lambda: client.get("apples", "k119")) == "v119"
            assert client.get("apples", "during") == "yes"
            assert len(client.keys("apples")) == 121


def test_a_founder_that_starts_late_for_the_first_time_founds(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3) as cluster:
        cluster.start("n1", "n2")
        with cluster.client("n1") as client:
            _wait(lambda: client.create("pears") or True, what="a meta leader")
            client.put("pears", "a", "1")
        cluster.start("n3")
        _wait(
            lambda: "starts late for the first time" in cluster.log_tail("n3", lines=200),
            what="n3 to be told it is new",
        )
        _wait(lambda: "b/pears/1" in "\n".join(cluster.status("n3")), what="n3 to host pears")
        # n3 replicates the bucket: with n1 stopped, n2 and n3 serve it.
        with cluster.client("n3") as client:
            assert _wait(lambda: client.get("pears", "a")) == "1"
        cluster.stop("n1")
        with cluster.client("n3", timeout=15) as client:
            _wait(lambda: client.put("pears", "b", "2") or True, what="n2 and n3 to elect")
            assert client.get("pears", "b") == "2"
