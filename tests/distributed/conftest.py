"""Fixtures that start real node processes; every one is ended by PID afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from boutique.testing.local_cluster import LocalCluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "c3", nodes=3) as cluster:
        cluster.start()
        yield cluster


@pytest.fixture
def cluster4(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "c4", nodes=4) as cluster:
        cluster.start()
        yield cluster
