"""Real processes: a node taken out with ``ADMIN REMOVE-NODE`` learns it and leaves.

Issue 17, item 3: a removed node kept running, logged warnings several times a second,
answered clients ``ERR UNAVAILABLE node 1 is unreachable``, and every other node logged
"unknown node id 5" every second. Now it says once that it was removed, refuses its
clients with a clear error while it drains, and exits with code 5; the others stay
quiet about it, and its id cannot join again.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from boutique.testing.jepsen import admin
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed

EXIT_REMOVED = 5
REMOVED_REPLY = "ERR UNAVAILABLE node e was removed from the cluster"


class Pinger(threading.Thread):
    """Pipelined PINGs on one connection until the server closes it; keeps the
    distinct replies."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.replies: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                reader = sock.makefile("rb")
                while not self.stop.is_set():
                    sock.sendall(b"PING\n" * 8)
                    for _ in range(8):
                        line = reader.readline()
                        if not line:
                            return
                        self.replies.add(line.decode().strip())
        except OSError:
            return


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def listed(cluster: LocalCluster, via: str) -> dict[str, str]:
    lines = admin(cluster, via, "ADMIN NODES")
    return {line.split()[1]: line for line in lines if line.startswith("node ")}


def test_a_removed_node_says_so_once_refuses_clients_and_exits(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=4) as cluster:
        cluster.start()
        e = cluster.add_joiner("e", 5)
        cluster.start("e")
        wait_for(
            lambda: "meta learner" in listed(cluster, "n1").get("e", ""),
            timeout=30,
            what="e to join and follow the registry",
        )
        pinger = Pinger(e.client_port)
        pinger.start()
        assert admin(cluster, "n1", "ADMIN REMOVE-NODE e")[-1] == "OK"
        began = time.monotonic()
        assert e.process is not None
        try:
            code = e.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"e did not exit:\n{cluster.log_tail('e')}") from None
        took = time.monotonic() - began
        pinger.stop.set()
        pinger.join(timeout=10)
        e_log = e.log_path.read_text(errors="replace")
        assert code == EXIT_REMOVED, e_log[-3000:]
        assert took < 20, f"e took {took:.1f}s to leave"
        said = [line for line in e_log.splitlines() if "node e (id 5) was removed" in line]
        assert len(said) == 1, said
        assert "stopped (removed from the cluster)" in e_log
        # Its clients were told why, not that some other node is unreachable.
        assert REMOVED_REPLY in pinger.replies, pinger.replies
        assert not any("unreachable" in reply for reply in pinger.replies), pinger.replies

        # The others stay quiet about node 5 (before: "unknown node id 5" every second).
        sizes = {name: cluster.nodes[name].log_path.stat().st_size for name in ("n1", "n2")}
        time.sleep(3)
        for name, size in sizes.items():
            with cluster.nodes[name].log_path.open("rb") as log:
                log.seek(size)
                fresh = log.read().decode(errors="replace").splitlines()
            about_e = [line for line in fresh if "node id 5" in line or "peer 5 " in line]
            assert about_e == [], (name, about_e)
        assert "e" not in listed(cluster, "n2")

        # The same id cannot come back as if it were the same node.
        refused = admin(
            cluster, "n2", f"ADMIN ADD-NODE e 5 127.0.0.1 {e.client_port} {e.peer_port}"
        )
        assert refused[-1].startswith("ERR SYNTAX node id 5 was removed"), refused
        cluster.forget("e")
