"""A node process started with ``[metrics] port`` serves /metrics; scraped while a
client loads it, the counters grow (parsed with prometheus_client's parser)."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from boutique.testing.local_cluster import LocalCluster, free_ports

pytestmark = pytest.mark.distributed


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_scraped_while_load_runs(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with LocalCluster(tmp_path / "c", nodes=1, extra=f"\n[metrics]\nport = {port}") as cluster:
        cluster.start()
        puts = ("boutique_requests_total", (("command", "put"), ("outcome", "ok")))
        assert scrape(port).get(puts, 0.0) == 0
        with cluster.client("n1") as client:
            client.create("load")
        done = threading.Event()

        def load() -> None:
            try:
                with cluster.client("n1") as client:
                    for i in range(300):
                        client.put("load", f"k{i}", "v")
                        client.get("load", f"k{i}")
            finally:
                done.set()

        worker = threading.Thread(target=load)
        worker.start()
        during = []
        while not done.is_set():
            during.append(scrape(port).get(puts, 0.0))
        worker.join()
        after = scrape(port)
    assert during and during == sorted(during)
    assert after[puts] == 300
    assert after[("boutique_request_seconds_count", (("command", "get"),))] == 300
    assert after[("boutique_storage_sync_seconds_count", ())] >= 300
    assert after[("boutique_range_groups", (("range", "h-n"),))] == 1
