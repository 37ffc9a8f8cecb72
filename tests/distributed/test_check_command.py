"""``boutique-check`` against nodes it did not start (here a ``LocalCluster`` stands in
for the four terminals of a person), run as the command a person types."""

from __future__ import annotations

import subprocess
import sys

import pytest

from boutique.testing.check import BUCKETS
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed

CHECK = [sys.executable, "-m", "boutique.testing.check"]


def test_a_check_of_a_running_cluster_prints_progress_and_passes(cluster3: LocalCluster) -> None:
    done = subprocess.run(
        [*CHECK, "--config", str(cluster3.config_path), "--seconds", "8", "--progress", "2",
         "--fault-interval", "1", "--fault-hold", "1.5", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "nemesis: partition, isolate_leader, transfer" in out
    assert out.count("] operations ") >= 2, out  # progress lines while it ran
    assert "fault " in out and "heal " in out
    assert "verdict: PASS" in out
    with cluster3.client("n1") as client:
        assert not set(client.buckets()) & set(BUCKETS)  # dropped after a pass
    assert all(node.running for node in cluster3.nodes.values())  # never touched them


def test_a_check_never_touches_buckets_that_exist(cluster3: LocalCluster) -> None:
    with cluster3.client("n2") as client:
        client.create("hats.check")
        client.put("hats.check", "mine", "keep me")
    done = subprocess.run(
        [*CHECK, "--config", str(cluster3.config_path), "--seconds", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "hats.check exist already" in done.stderr
    with cluster3.client("n3") as client:
        assert client.get("hats.check", "mine") == "keep me"


@pytest.mark.parametrize(
    ("faults", "message"),
    [("kill", "needs the node processes"), ("frob", "unknown fault 'frob'")],
)
def test_faults_a_check_cannot_make_are_refused(
    cluster3: LocalCluster, faults: str, message: str
) -> None:
    done = subprocess.run(
        [*CHECK, "--config", str(cluster3.config_path), "--faults", faults],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
