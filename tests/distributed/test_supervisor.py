"""Real processes: ``boutique-server --all`` keeps the other nodes serving when one
dies, says which and how, restarts it, and stops every node gracefully on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boutique.client import ClientError
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed


def _wait_for(predicate, what: str, log: Path, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _child_pids(log: Path) -> dict[str, int]:
    """The latest PID of every node, from the supervisor's 'started' lines."""
    return {
        name: int(pid)
        for name, pid in re.findall(r"node (\S+) started \(pid (\d+)\)", log.read_text())
    }


def _answers(cluster: LocalCluster, name: str) -> bool:
    with contextlib.suppress(OSError, ClientError), cluster.client(name, timeout=1.0) as client:
        client.ping()
        return True
    return False


def test_all_survives_a_killed_node_restarts_it_and_stops_gracefully(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", nodes=3)
    log = tmp_path / "all.log"
    with open(log, "wb") as out:
        supervisor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "boutique_server",
                "--config",
                str(cluster.config_path),
                "--all",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    pids: dict[str, int] = {}
    try:
        _wait_for(lambda: all(_answers(cluster, n) for n in cluster.nodes), "all serving", log)
        pids = _child_pids(log)
        victim = "n2"
        os.kill(pids[victim], signal.SIGKILL)
        _wait_for(
            lambda: (
                re.search(
                    rf"node {victim} \(pid {pids[victim]}\) was killed by SIGKILL", log.read_text()
                )
                is not None
            ),
            "the death report",
            log,
        )
        assert supervisor.poll() is None, log.read_text()
        # The others kept serving (a minority is down), and can still write.
        with cluster.client("n1") as client:
            client.create("hats")
            client.put("hats", "k", "v")
        _wait_for(lambda: _child_pids(log)[victim] != pids[victim], "the restart", log)
        pids = _child_pids(log)
        _wait_for(lambda: _answers(cluster, victim), "the restarted node serving", log)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "SIGTERM received: stopping every node" in text
        for name in cluster.nodes:
            assert f"node {name} stopped (SIGTERM)" in text
            assert f"node {name} (pid {pids[name]}) exited with code 0" in text
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.wait()
        for pid in {*pids.values(), *_child_pids(log).values()}:
            _kill_if_ours(pid, str(cluster.config_path))


def _kill_if_ours(pid: int, marker: str) -> None:
    """Kill a node the supervisor left behind, by PID, unless the PID now belongs to
    some other process (it may have been reused since the node exited)."""
    with contextlib.suppress(OSError):
        if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
