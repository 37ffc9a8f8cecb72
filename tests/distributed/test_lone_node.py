"""A node of a cluster started alone, with an empty data directory, before its peers:
it says at once, to clients and once in its log, that it does not serve yet and why,
instead of letting every command wait out the request timeout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from boutique.client import Unavailable
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed


def test_a_lone_new_node_says_it_waits_for_its_peers(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3) as cluster:
        cluster.start("n1")  # answers PING; n2 and n3 are never started
        time.sleep(3.5)  # past the patience for a cluster starting up (founding.PATIENCE)
        with cluster.client("n1") as client:
            for command in (lambda: client.create("shopping"), lambda: client.get("b", "k")):
                started = time.monotonic()
                with pytest.raises(Unavailable) as caught:
                    command()
                assert time.monotonic() - started < 1.0  # not the 5 s request timeout
                assert "does not serve yet" in str(caught.value)
                assert "waiting for n2, n3" in str(caught.value)
        time.sleep(2.0)  # four more rounds of asking the peers
        log = cluster.nodes["n1"].log_path.read_text()
        assert log.count("does not serve yet") == 1, log  # said once, not every round
