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

The CREATEs go in slices of ``SLICE`` buckets, each timed on its own, so a per-CREATE
cost that grows with the bucket count shows as falling rates slice after slice. At the
end it times ``BUCKETS`` and ``STATUS`` on every node, then kills the first node and
times its restart until it serves a write to the last bucket created (``--no-restart``
skips that). It measures; it never changes what it measures.
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
    cpu_seconds,
    fmt_mb,
    rss_bytes,
    run_pipelined,
)

SLICE = 10_000
"""Buckets per timed slice of the creation."""
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
    slices: list[tuple[int, float]] = field(default_factory=list)
    """(buckets, seconds) of each slice of the creation, in order."""
    slice_cpu: list[float] = field(default_factory=list)
    """CPU seconds all nodes used in each slice: its growth shows a per-CREATE cost
    that grows with the bucket count even on a machine busy with other work."""
    buckets_latency: dict[str, float | None] = field(default_factory=dict)
    status_latency: dict[str, float | None] = field(default_factory=dict)
    restart_seconds: float | None = None
    """From the restart of the first node until it served a write (None: not run or
    it never did)."""
    restart_tried: bool = False
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
            f"slices:      {self.slice_line()}",
            f"BUCKETS:     {_latencies(self.buckets_latency)}",
            f"STATUS:      {_latencies(self.status_latency)}",
            "restart:     "
            + (
                f"{self.restart_seconds:.1f} s"
                if self.restart_seconds is not None
                else "NEVER (gave up)"
                if self.restart_tried
                else "not run"
            )
            + " from start until the first node served a write",
            self.busy,
        ]

    def slice_line(self) -> str:
        """CREATE/s of each slice, and the last slice's rate over the first's."""
        rates = [n / s for n, s in self.slices if s > 0]
        text = ", ".join(f"{r:,.0f}" for r in rates) + " CREATE/s per slice"
        if len(rates) > 1:
            text += f" (last/first {rates[-1] / rates[0]:.2f})"
        costs = [1000 * c / n for c, (n, _) in zip(self.slice_cpu, self.slices, strict=False) if n]
        if costs:
            text += "; node CPU per CREATE " + ", ".join(f"{c:.2f}" for c in costs) + " ms"
        return text


def _latencies(values: dict[str, float | None]) -> str:
    return ", ".join(
        f"{n} {'failed' if v is None else f'{v * 1000:.0f} ms'}" for n, v in values.items()
    )


def run_idle(
    cluster: BenchCluster,
    buckets: int,
    seconds: float,
    *,
    settle: float = 120.0,
    echo: bool = False,
    restart: bool = True,
) -> IdleResult:
    pids = cluster.pids()
    addresses = list(cluster.addresses.values())
    time.sleep(1.0)  # let the meta group's first election settle before the baseline
    rss_before = {name: rss_bytes(pid) for name, pid in pids.items()}

    names = bucket_names(buckets, "idle")
    lines = [b"CREATE %s\n" % name.encode() for name in names]
    replies: Counter[str] = Counter()
    slices: list[tuple[int, float]] = []
    slice_cpu: list[float] = []
    for start in range(0, len(lines), SLICE):
        chunk = lines[start : start + SLICE]
        cpu_before = _total_cpu(pids)
        began = time.monotonic()
        replies += run_pipelined(
            addresses, chunk, connections=CREATE_CONNECTIONS, depth=CREATE_DEPTH, timeout=600.0
        )
        slices.append((len(chunk), time.monotonic() - began))
        slice_cpu.append(_total_cpu(pids) - cpu_before)
        if echo:
            print(
                f"  slice {len(slices)}: {len(chunk)} CREATEs in {slices[-1][1]:.1f} s", flush=True
            )
    create_seconds = sum(s for _, s in slices)
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
    result = IdleResult(
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
        slices=slices,
        slice_cpu=slice_cpu,
        buckets_latency=_timed(cluster, "buckets"),
        status_latency=_timed(cluster, "status"),
    )
    if restart and cluster.local is not None and names:
        result.restart_tried = True
        result.restart_seconds = _restart(cluster, names[-1])
    return result


def _total_cpu(pids: dict[str, int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids.values())


def _timed(cluster: BenchCluster, action: str) -> dict[str, float | None]:
    """Seconds each node took to answer ``action`` (None: it failed)."""
    out: dict[str, float | None] = {}
    for node, address in cluster.addresses.items():
        out[node] = None
        with contextlib.suppress(ClientError, OSError), Client(*address, timeout=60.0) as client:
            began = time.monotonic()
            getattr(client, action)()
            out[node] = time.monotonic() - began
    return out


def _restart(cluster: BenchCluster, bucket: str, limit: float = 120.0) -> float | None:
    """Kill the first node, start it again, and time until it serves a write to
    ``bucket`` (through itself, so its groups must be loaded and led somewhere)."""
    name = cluster.names[0]
    cluster.kill(name)
    began = time.monotonic()
    cluster.start(name)
    address = cluster.addresses[name]
    while time.monotonic() - began < limit:
        with contextlib.suppress(ClientError, OSError), Client(*address, timeout=5.0) as client:
            client.put(bucket, "~restart", "1")
            return time.monotonic() - began
        time.sleep(0.05)
    return None


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
