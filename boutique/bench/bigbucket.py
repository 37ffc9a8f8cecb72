"""``python -m boutique.bench bigbucket --gb 2``: one very large bucket on real nodes.

What it does, on a local cluster of 3 real node processes (replication 3, SQLite):

1. creates one bucket and stops one of its followers, which will lag;
2. fills the bucket to ``--gb`` GB with ``--value-mb`` MiB values (large values go fast)
   through the leader, which takes snapshots of the whole bucket as the log grows
   (every ``--snapshot-every`` entries; by default one at half the fill, one at the
   end), built a piece per turn;
3. waits for the snapshot of the full bucket, then starts the lagging follower, whose
   log ends far behind the leader's compacted log: it catches up from the snapshot,
   sent in InstallSnapshot chunks;
4. restarts the leader's node, which loads the chunked snapshot from its data file.

It reports the time of each step, each node's resident memory, and each node's longest
loop turn (``STATUS``'s ``longest-turn-us``, which includes building snapshot pieces,
storage syncs and installing a snapshot): the longest the node stalled its work.

Nothing here is imported by the store. Every process started is ended by PID at the
end, also on errors (the last line of ``python -m boutique.bench`` says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from boutique.client import Client, ClientError
from boutique.testing.local_cluster import LocalCluster

from .cluster import Ledger, fmt_mb, loop_counters, rss_bytes

BUCKET = "big"
MiB = 1024 * 1024
T = TypeVar("T")


@dataclass
class BigBucketResult:
    gb: float
    value_mb: float
    puts: int
    steps: list[tuple[str, float]] = field(default_factory=list)
    """(what, seconds) in order."""
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    """node -> {what: value} observed at the end of each step."""

    def lines(self) -> list[str]:
        out = [
            f"bigbucket: {self.puts} values of {self.value_mb:g} MiB"
            f" = {self.puts * self.value_mb / 1024:.2f} GiB in one bucket"
        ]
        out += [f"  {what:<48} {seconds:8.1f} s" for what, seconds in self.steps]
        for name, seen in self.nodes.items():
            out.append(f"  node {name}: " + ", ".join(f"{k} {v}" for k, v in seen.items()))
        return out


def run_bigbucket(
    workdir: Path,
    ledger: Ledger,
    *,
    gb: float,
    value_mb: float = 1.0,
    snapshot_every: int | None = None,
    say: Callable[[str], None] = print,
) -> BigBucketResult:
    value_bytes = int(value_mb * MiB)
    puts = max(1, int(gb * 1024 / value_mb))
    every = snapshot_every or max(10, puts // 2)
    result = BigBucketResult(gb, value_mb, puts)
    value = b"v" * value_bytes
    with LocalCluster(
        workdir,
        nodes=3,
        snapshot_entries=every,
        request_timeout=120.0,
        max_line=value_bytes + 4096,
    ) as cluster:
        cluster.start()
        for name, node in cluster.nodes.items():
            if node.pid is not None:
                ledger.add(node.pid, f"node {name}")
        with cluster.client("n1", timeout=120.0) as client:
            client.create(BUCKET)
        leader: str = _wait(lambda: cluster.leader_of(f"b/{BUCKET}/"), 30.0) or ""
        lagging = next(n for n in cluster.nodes if n != leader)
        cluster.stop(lagging)
        say(f"leader {leader}; {lagging} stopped (it will lag); filling {puts} values")

        started = time.monotonic()
        with cluster.client(leader, timeout=120.0) as client:
            batch = max(1, 4 * MiB // value_bytes)
            for first in range(0, puts, batch):
                with client.pipeline() as pipe:
                    for i in range(first, min(puts, first + batch)):
                        pipe.put(BUCKET, f"k{i:07}", value)
                if first and first % (batch * 64) == 0:
                    say(f"  {first * value_mb / 1024:.2f} GiB")
        result.steps.append((f"fill {puts * value_mb / 1024:.2f} GiB", time.monotonic() - started))

        started = time.monotonic()
        wanted = puts // every
        _wait(lambda: _counter(cluster, leader, "snapshots-taken") >= wanted, 1800.0)
        result.steps.append(
            ("last snapshot recorded (after the fill ended)", time.monotonic() - started)
        )
        _observe(result, cluster, "after fill+snapshot")

        started = time.monotonic()
        cluster.start(lagging, wait=False)
        ledger.add(cluster.nodes[lagging].pid or 0, f"node {lagging}")
        cluster.wait_ready(lagging, timeout=600.0)
        target = _applied(cluster, leader)
        _wait(lambda: _applied(cluster, lagging) >= target, 1800.0)
        result.steps.append(
            (f"lagging {lagging} caught up (snapshot install)", time.monotonic() - started)
        )
        _observe(result, cluster, "after catch-up")

        started = time.monotonic()
        cluster.stop(leader)
        cluster.start(leader, wait=False)
        ledger.add(cluster.nodes[leader].pid or 0, f"node {leader}")
        cluster.wait_ready(leader, timeout=1800.0)
        result.steps.append((f"restart of {leader} until it answers", time.monotonic() - started))
        _wait(lambda: _applied(cluster, leader) >= target, 1800.0)
        result.steps.append(
            (f"restart of {leader} until it has the bucket", time.monotonic() - started)
        )
        with cluster.client(leader, timeout=120.0) as client:
            last = _wait(lambda: client.get(BUCKET, f"k{puts - 1:07}"), 120.0)
            assert last is not None and len(last) == value_bytes
        _observe(result, cluster, "after restart")
    return result


def _observe(result: BigBucketResult, cluster: LocalCluster, when: str) -> None:
    for name, node in cluster.nodes.items():
        seen = result.nodes.setdefault(name, {})
        counters = loop_counters(("127.0.0.1", node.client_port))
        rss = rss_bytes(node.pid) if node.pid is not None else None
        turn = counters.get("longest-turn-us")
        seen[f"[{when}] longest turn"] = "n/a" if turn is None else f"{turn / 1000:.0f} ms"
        seen[f"[{when}] rss"] = fmt_mb(rss)


def _counter(cluster: LocalCluster, name: str, key: str) -> int:
    return loop_counters(("127.0.0.1", cluster.nodes[name].client_port)).get(key, 0)


def _applied(cluster: LocalCluster, name: str) -> int:
    try:
        with Client("127.0.0.1", cluster.nodes[name].client_port, timeout=10.0) as client:
            for line in client.status():
                words = line.split()
                if len(words) > 11 and words[0] == "group" and words[1].startswith(f"b/{BUCKET}/"):
                    return int(words[11])
    except (ClientError, OSError):
        pass
    return -1


def _wait(fn: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except (ClientError, OSError):
            pass
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout:.0f} s")
        time.sleep(0.2)
