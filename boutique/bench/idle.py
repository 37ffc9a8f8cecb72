"""Idle benchmark: what many buckets that nobody uses cost each node.

Reads every node's resident memory, creates ``buckets`` buckets with pipelined
``CREATE`` requests over many connections (a CREATE is a write to the meta group, and
one connection's CREATEs run one after another, so the connections give the
concurrency), waits until the nodes' CPU stops falling (the groups have elected their
leaders and gone quiet; bounded by ``settle``), then measures each node's CPU over
``seconds`` and its memory again. Memory per bucket is the growth of RSS divided by
the number of buckets that exist afterwards (``BUCKETS``; a CREATE that timed out may
or may not have made its bucket), so it includes the Python objects of each group, its state
machine and the SQLite page cache that came with it.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

from boutique.client import Client, ClientError

from .cluster import (
    BenchCluster,
    CpuMeter,
    bucket_names,
    fmt_mb,
    rss_bytes,
    run_pipelined,
)

CREATE_CONNECTIONS = 32
CREATE_DEPTH = 32
SETTLE_WINDOW = 1.0
"""Seconds per CPU sample while waiting for the groups to go quiet."""
QUIET_CPU = 3.0
"""A node using less than this % of a core is taken as settled at once."""


@dataclass(slots=True)
class IdleResult:
    buckets: int
    """Buckets asked for."""
    existing: int
    """Buckets the cluster lists afterwards."""
    seconds: float
    create_seconds: float
    create_replies: Counter[str]
    settle_seconds: float
    cpu: dict[str, float | None]
    rss_before: dict[str, int | None]
    rss_after: dict[str, int | None]
    busy: str = ""
    others: float | None = None
    settle_trace: list[str] = field(default_factory=list)
    quiet_sample: str = ""

    def per_bucket_bytes(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, after in self.rss_after.items():
            before = self.rss_before.get(name)
            if after is not None and before is not None and self.existing:
                out[name] = (after - before) / self.existing
        return out

    def meets_bar(self) -> bool:
        ok = self.existing >= self.buckets
        return ok and all(v is not None and v < 5.0 for v in self.cpu.values())

    def report_lines(self) -> list[str]:
        errors = {k: n for k, n in self.create_replies.items() if k != "OK"}
        rate = self.buckets / self.create_seconds if self.create_seconds > 0 else 0.0
        cpu = ", ".join(f"{n} {'n/a' if v is None else f'{v:.1f}%'}" for n, v in self.cpu.items())
        memory = ", ".join(
            f"{n} {fmt_mb(self.rss_before.get(n))} -> {fmt_mb(v)}"
            for n, v in self.rss_after.items()
        )
        per_bucket = ", ".join(f"{n} {v / 1000:.1f} kB" for n, v in self.per_bucket_bytes().items())
        return [
            f"create:      {self.buckets} buckets in {self.create_seconds:.1f} s"
            f" ({rate:,.0f} CREATE/s); errors: {errors or 'none'};"
            f" {self.existing} buckets exist afterwards",
            f"settle:      {self.settle_seconds:.0f} s until CPU stopped falling"
            f" ({'; '.join(self.settle_trace[-3:])})",
            f"quiet:       {self.quiet_sample}",
            f"idle CPU:    {cpu} (% of one core over {self.seconds:g} s)",
            f"RSS:         {memory}",
            f"per bucket:  {per_bucket}",
            self.busy,
        ]


def run_idle(
    cluster: BenchCluster,
    buckets: int,
    seconds: float,
    *,
    settle: float = 120.0,
    echo: bool = False,
) -> IdleResult:
    pids = cluster.pids()
    addresses = list(cluster.addresses.values())
    time.sleep(1.0)  # let the meta group's first election settle before the baseline
    rss_before = {name: rss_bytes(pid) for name, pid in pids.items()}

    names = bucket_names(buckets, "idle")
    lines = [b"CREATE %s\n" % name.encode() for name in names]
    began = time.monotonic()
    replies = run_pipelined(
        addresses, lines, connections=CREATE_CONNECTIONS, depth=CREATE_DEPTH, timeout=600.0
    )
    create_seconds = time.monotonic() - began
    if echo:
        print(f"  created {replies.get('OK', 0)} buckets in {create_seconds:.1f} s", flush=True)

    trace: list[str] = []
    began = time.monotonic()
    previous: dict[str, float | None] = {}
    while time.monotonic() - began < settle:
        meter = CpuMeter(pids)
        meter.start()
        time.sleep(SETTLE_WINDOW)
        now = meter.stop()
        trace.append(" ".join(f"{n} {v:.0f}%" for n, v in now.items() if v is not None))
        if _settled(previous, now):
            break
        previous = now
    settle_seconds = time.monotonic() - began
    if echo:
        print(f"  settled after {settle_seconds:.0f} s: {trace[-1] if trace else ''}", flush=True)

    meter = CpuMeter(pids)
    meter.start()
    time.sleep(seconds)
    cpu = meter.stop()
    rss_after = {name: rss_bytes(pid) for name, pid in pids.items()}
    return IdleResult(
        buckets=buckets,
        existing=_count_buckets(cluster),
        seconds=seconds,
        create_seconds=create_seconds,
        create_replies=replies,
        settle_seconds=settle_seconds,
        cpu=cpu,
        rss_before=rss_before,
        rss_after=rss_after,
        settle_trace=trace,
        busy=meter.machine_line(),
        others=meter.others,
        quiet_sample=_quiet_sample(cluster),
    )


def _settled(previous: dict[str, float | None], now: dict[str, float | None]) -> bool:
    """Every node is nearly idle, or no node's CPU fell by more than a point or 20%."""
    values = [v for v in now.values() if v is not None]
    if values and max(values) < QUIET_CPU:
        return True
    if not previous:
        return False
    for name, value in now.items():
        before = previous.get(name)
        if value is None or before is None:
            continue
        if before - value > max(1.0, 0.2 * before):
            return False
    return True


def _count_buckets(cluster: BenchCluster) -> int:
    for address in cluster.addresses.values():
        with contextlib.suppress(ClientError, OSError), Client(*address, timeout=30.0) as client:
            return len(client.buckets())
    return 0


def _quiet_sample(cluster: BenchCluster) -> str:
    """How many of the bucket groups each node lists in STATUS say ``quiet`` (STATUS
    lists only the first groups, so this is a sample)."""
    parts = []
    for node, address in cluster.addresses.items():
        quiet = listed = 0
        with contextlib.suppress(ClientError, OSError), Client(*address, timeout=5.0) as client:
            for line in client.status():
                words = line.split()
                if len(words) > 5 and words[0] == "group" and words[1].startswith("b/"):
                    listed += 1
                    quiet += words[-1] == "quiet"
        parts.append(f"{node} {quiet} of {listed}")
    return "bucket groups listed by STATUS that report quiet: " + ", ".join(parts)
