"""The load generator: worker processes that drive the line protocol as fast as it answers.

The parent (``run_load``) prepares buckets and keys, starts ``client_procs`` worker
processes, gives them one synchronised measuring window (CLOCK_MONOTONIC is shared by
every process on the machine) and reads the CPU of every node and worker over exactly
that window from ``/proc``.

Each worker is one thread on ``select.epoll`` with raw non-blocking sockets, so the
client costs a fraction of what it measures: requests are rendered once into a pool of
lines before the clock starts (random keys, the op mix, deterministic values), and a
reply is read by splitting the received bytes on CRLF and counting terminator lines.
Every connection keeps ``pipeline`` requests in flight: each reply that arrives is
replaced by a new request in the same write. Replies are checked (a PUT or DELETE must
be a bare ``OK``; a GET one item line, the key's value or empty, then ``OK``) and
everything else is counted by kind (``ERR TIMEOUT``, ``NOT FOUND``, ``bad reply``...).

Latency is from handing the request to the kernel to reading its reply, so with
pipelining it includes the time spent queued behind earlier requests on the connection.
Workers stop sending at the end of the window and wait a bounded time for what is still
in flight; the parent kills any worker that does not finish, by PID.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import random
import select
import signal
import socket
import time
import traceback
from array import array
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .cluster import (
    Address,
    BenchCluster,
    CpuMeter,
    Ledger,
    bucket_names,
    fmt_mb,
    fmt_pct,
    group_leaders,
    loop_counters,
    prepare_buckets,
    rss_bytes,
    run_pipelined,
)

POOL_SIZE = 16_384
"""Pre-rendered requests per worker; connections walk through it from random offsets."""
DRAIN_TIMEOUT = 10.0
"""How long a worker waits for replies still in flight after the window closes."""
READ_SIZE = 262_144
OPS = ("put", "get", "delete")

_OK = b"OK"
_ERR = b"ERR "
_OTHER_TERMINATORS = frozenset({b"NOT FOUND", b"COMMAND NOT IMPLEMENTED", b"PONG"})


# --- what to run ----------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    """``put=1,get=3`` -> weights; ops not named get 0."""
    mix = dict.fromkeys(OPS, 0.0)
    for part in text.split(","):
        op, sep, weight = part.strip().partition("=")
        op = op.strip().lower()
        if op not in mix:
            raise ValueError(f"unknown op {op!r} in --mix (known: {', '.join(OPS)})")
        mix[op] = float(weight) if sep else 1.0
        if mix[op] < 0:
            raise ValueError("--mix weights must not be negative")
    if sum(mix.values()) <= 0:
        raise ValueError("--mix needs at least one op with a positive weight")
    return mix


def format_mix(mix: dict[str, float]) -> str:
    return ",".join(f"{op}={w:g}" for op, w in mix.items() if w > 0)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    connections: int = 64
    pipeline: int = 1
    mix: dict[str, float] = field(default_factory=lambda: {"put": 1.0, "get": 0.0, "delete": 0.0})
    value_size: int = 100
    keys: int = 10_000
    buckets: int = 8
    duration: float = 10.0
    warmup: float = 2.0
    client_procs: int = 2
    populate: bool | None = None
    """Write every key once before measuring; None: when the mix reads."""
    to_leaders: bool = False
    """Each connection only uses keys of buckets its node leads (none forwarded)."""
    seed: int = 1


def key_name(k: int) -> bytes:
    return b"k%07d" % k


def value_for(k: int, size: int) -> bytes:
    """The value every PUT of key ``k`` writes: printable, so GET returns it bare."""
    stem = b"v%07d." % k
    return (stem * (size // len(stem) + 1))[:size]


def key_bucket(k: int, buckets: Sequence[str]) -> bytes:
    return buckets[k % len(buckets)].encode()


def put_line(k: int, buckets: Sequence[str], size: int) -> bytes:
    return b"PUT %s %s %s\n" % (key_bucket(k, buckets), key_name(k), value_for(k, size))


# --- the worker process ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    index: int
    addresses: list[Address]
    """One per connection."""
    pipeline: int
    buckets: list[str]
    """Every bucket; key ``k`` lives in ``buckets[k % len(buckets)]``."""
    allowed: list[tuple[int, ...]]
    """Per connection, the indexes of the buckets its keys are drawn from."""
    keys: int
    mix: dict[str, float]
    value_size: int
    seed: int


@dataclass(slots=True)
class WorkerResult:
    ok: int = 0
    missing: int = 0
    """GETs answered with the empty line of a missing key (counted in ``ok`` too)."""
    errors: Counter[str] = field(default_factory=Counter)
    latencies: bytes = b""
    """``array('d')`` of seconds, for the OK replies read inside the window."""
    total_replies: int = 0
    """Every reply read, warm-up and drain included."""


class _Conn:
    __slots__ = (
        "closed",
        "expects",
        "fd",
        "inflight",
        "item",
        "items",
        "lines",
        "out",
        "pos",
        "rest",
        "sock",
        "writing",
    )

    def __init__(
        self, sock: socket.socket, pos: int, lines: list[bytes], expects: list[bytes | None]
    ) -> None:
        self.sock = sock
        self.lines = lines
        """This connection's pool of pre-rendered requests."""
        self.expects = expects
        self.fd = sock.fileno()
        self.inflight: deque[tuple[float, bytes | None]] = deque()
        self.rest = b""
        """The start of a line whose CRLF has not arrived yet."""
        self.items = 0
        """Item lines read so far of the reply being read (a GET's value)."""
        self.item = b""
        self.out = b""
        self.pos = pos
        self.closed = False
        self.writing = False


class LoadWorker:
    """One process's connections and its epoll loop."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed * 1_000_003 + plan.index)
        self.pools: dict[tuple[int, ...], tuple[list[bytes], list[bytes | None]]] = {}
        for allowed in plan.allowed:
            if allowed not in self.pools:
                self.pools[allowed] = self._render(allowed)
        self.conns: dict[int, _Conn] = {}
        self.epoll = select.epoll()
        self.result = WorkerResult()
        self.latencies = array("d")
        self.start = self.end = math.inf

    def _render(self, allowed: tuple[int, ...]) -> tuple[list[bytes], list[bytes | None]]:
        """``POOL_SIZE`` request lines (and what each GET must read back) with random
        keys of the ``allowed`` buckets and ops drawn by the mix."""
        plan, rng = self.plan, self.rng
        ops = [op for op in OPS if plan.mix.get(op, 0) > 0]
        weights = [plan.mix[op] for op in ops]
        count = len(plan.buckets)
        # Key k is in bucket k % count: pick the bucket, then a key of it below plan.keys.
        usable = [b for b in allowed if b < plan.keys] or [0]
        lines: list[bytes] = []
        expects: list[bytes | None] = []
        for op in rng.choices(ops, weights, k=POOL_SIZE):
            b = rng.choice(usable)
            k = b + count * rng.randrange((plan.keys - b + count - 1) // count)
            bucket, key = key_bucket(k, plan.buckets), key_name(k)
            if op == "put":
                lines.append(b"PUT %s %s %s\n" % (bucket, key, value_for(k, plan.value_size)))
                expects.append(None)
            elif op == "get":
                lines.append(b"GET %s %s\n" % (bucket, key))
                expects.append(value_for(k, plan.value_size))
            else:
                lines.append(b"DELETE %s %s\n" % (bucket, key))
                expects.append(None)
        return lines, expects

    def connect(self) -> None:
        for address, allowed in zip(self.plan.addresses, self.plan.allowed, strict=True):
            sock = socket.create_connection(address, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            conn = _Conn(sock, self.rng.randrange(POOL_SIZE), *self.pools[allowed])
            self.conns[conn.fd] = conn
            self.epoll.register(conn.fd, select.EPOLLIN)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.sock.close()
        self.epoll.close()

    def run(self, start: float, end: float) -> WorkerResult:
        """Drive until ``end`` (counting from ``start``), then drain what is in flight."""
        self.start, self.end = start, end
        for conn in self.conns.values():
            self._issue(conn, self.plan.pipeline)
        drain_until = end + DRAIN_TIMEOUT
        while True:
            now = time.monotonic()
            if now >= end and not any(c.inflight for c in self.conns.values() if not c.closed):
                break
            if now >= drain_until:
                break
            wait = (end - now) if now < end else (drain_until - now)
            for fd, events in self.epoll.poll(min(wait, 0.5)):
                conn = self.conns[fd]
                if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    self._read(conn)
                if events & select.EPOLLOUT and not conn.closed:
                    self._flush(conn)
        for conn in self.conns.values():
            if conn.inflight:
                self.result.errors["no reply (drain timeout)"] += len(conn.inflight)
        self.result.latencies = self.latencies.tobytes()
        return self.result

    def _issue(self, conn: _Conn, count: int) -> None:
        if count <= 0 or conn.closed:
            return
        pos, end = conn.pos, conn.pos + count
        if end <= POOL_SIZE:
            lines, expects = conn.lines[pos:end], conn.expects[pos:end]
        else:
            wrap = end - POOL_SIZE
            lines = conn.lines[pos:] + conn.lines[:wrap]
            expects = conn.expects[pos:] + conn.expects[:wrap]
        conn.pos = end % POOL_SIZE
        conn.out += b"".join(lines)
        now = time.monotonic()
        conn.inflight.extend([(now, e) for e in expects])
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost(conn, "connection error")
            return
        conn.out = conn.out[sent:]
        if conn.out and not conn.writing:
            self.epoll.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)
            conn.writing = True
        elif not conn.out and conn.writing:
            self.epoll.modify(conn.fd, select.EPOLLIN)
            conn.writing = False

    def _lost(self, conn: _Conn, why: str) -> None:
        if not conn.closed:
            conn.closed = True
            self.result.errors[why] += max(1, len(conn.inflight))
            conn.inflight.clear()
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(conn.fd)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._lost(conn, "connection error")
            return
        if not data:
            self._lost(conn, "connection closed by server")
            return
        now = time.monotonic()
        measuring = self.start <= now < self.end
        lines = (conn.rest + data).split(b"\r\n") if conn.rest else data.split(b"\r\n")
        conn.rest = lines.pop()
        inflight = conn.inflight
        result = self.result
        latencies = self.latencies
        items, item = conn.items, conn.item
        done = 0
        try:
            for line in lines:
                if line == _OK:
                    sent_at, expect = inflight.popleft()
                    done += 1
                    if expect is None:
                        good = items == 0
                    else:
                        good = items == 1 and (item == expect or item == b"")
                        if good and item == b"" and measuring:
                            result.missing += 1
                    items = 0
                    if not good:
                        if measuring:
                            result.errors["bad reply"] += 1
                        continue
                    if measuring:
                        result.ok += 1
                        latencies.append(now - sent_at)
                elif line.startswith(_ERR) or line in _OTHER_TERMINATORS:
                    inflight.popleft()
                    done += 1
                    items = 0
                    if measuring:
                        kind = b" ".join(line.split(b" ", 2)[:2]) if line.startswith(_ERR) else line
                        result.errors[kind.decode(errors="replace")] += 1
                else:
                    items += 1
                    item = line
        except IndexError:  # a reply with no request waiting for it
            self._lost(conn, "reply to no request")
            return
        # A GET's item line may end one read and its OK start the next: keep the item.
        conn.items, conn.item = items, item
        result.total_replies += done
        if done and now < self.end:
            self._issue(conn, done)


def worker_main(plan: WorkerPlan, channel: multiprocessing.connection.Connection) -> None:
    """Entry point of a worker process: connect, say ready, run the window, report."""
    # Ctrl-C reaches the whole process group; the parent decides and kills us by PID.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker: LoadWorker | None = None
    try:
        worker = LoadWorker(plan)
        worker.connect()
        channel.send(("ready", None))
        message = channel.recv()
        if message[0] != "go":
            return
        _, start, end = message
        channel.send(("result", worker.run(start, end)))
    except EOFError:
        pass  # the parent went away
    except BaseException:
        with contextlib.suppress(OSError):
            channel.send(("error", traceback.format_exc()))
    finally:
        if worker is not None:
            worker.close()


# --- the parent -----------------------------------------------------------------------


@dataclass(slots=True)
class LoadResult:
    """What one load run measured."""

    label: str
    options: LoadOptions
    seconds: float
    ok: int
    missing: int
    errors: Counter[str]
    latencies: array[float]
    """Sorted, in seconds."""
    node_cpu: dict[str, float | None]
    client_cpu: dict[str, float | None]
    node_rss: dict[str, int | None]
    spread: list[str]
    busy: str
    """How busy the machine was, and with what else (``CpuMeter.machine_line``)."""
    others: float | None
    loop: dict[str, int] = field(default_factory=dict)
    """Host loop counters (turns, syncs, Raft messages...) summed over the nodes, for
    the measured window."""

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        """Nearest-rank percentile ``q`` (0-100) of the OK latencies, in ms."""
        n = len(self.latencies)
        if n == 0:
            return None
        rank = min(n - 1, max(0, math.ceil(q / 100 * n) - 1))
        return self.latencies[rank] * 1000


def plan_connections(
    names: Sequence[str], connections: int, procs: int
) -> tuple[list[list[str]], Counter[str]]:
    """Connection i goes to node i mod n (so every node gets its share) and to worker
    i mod procs; returns each worker's node names, one per connection."""
    per_worker: list[list[str]] = [[] for _ in range(procs)]
    per_node: Counter[str] = Counter()
    for i in range(connections):
        node = names[i % len(names)]
        per_worker[i % procs].append(node)
        per_node[node] += 1
    return per_worker, per_node


def allowed_buckets(
    node: str, leaders: dict[str, str], buckets: list[str], to_leaders: bool
) -> tuple[int, ...]:
    """The bucket indexes a connection to ``node`` uses: all, or (``to_leaders``) those
    it leads; all again if it leads none."""
    everything = tuple(range(len(buckets)))
    if not to_leaders:
        return everything
    led = tuple(i for i, b in enumerate(buckets) if leaders.get(b) == node)
    return led or everything


def describe_spread(
    per_node: Counter[str],
    per_worker: list[list[str]],
    leaders: dict[str, str],
    buckets: list[str],
    to_leaders: bool = False,
) -> list[str]:
    nodes = ", ".join(f"{name} {count}" for name, count in per_node.items())
    workers = " + ".join(str(len(w)) for w in per_worker)
    lines = [f"spread:      connections per node: {nodes}; per client process: {workers}"]
    led: Counter[str] = Counter(leaders.get(b, "?") for b in buckets)
    shown = ", ".join(f"{name} {led[name]}" for name in [*per_node, "?"] if led[name])
    total = sum(per_node.values())
    if total and buckets:
        forwarded = 0.0
        for name, count in per_node.items():
            used = allowed_buckets(name, leaders, buckets, to_leaders)
            elsewhere = sum(1 for i in used if leaders.get(buckets[i]) != name)
            forwarded += count * elsewhere / len(used) / total
        lines.append(
            f"             bucket leaders: {shown} (of {len(buckets)}); about {forwarded:.0%} of"
            " requests reach a node that does not lead their bucket and are forwarded"
        )
    return lines


def run_load(
    cluster: BenchCluster, options: LoadOptions, ledger: Ledger, label: str = "load"
) -> LoadResult:
    """Prepare buckets (and keys), run the worker processes over one window, measure."""
    buckets = bucket_names(options.buckets, "bench")
    addresses = list(cluster.addresses.values())
    prepare_buckets(addresses, buckets, timeout=30.0)
    populate = options.populate
    if populate is None:
        populate = options.mix.get("get", 0) > 0
    if populate:
        lines = [put_line(k, buckets, options.value_size) for k in range(options.keys)]
        kinds = run_pipelined(addresses, lines, connections=8, depth=64, timeout=120.0)
        if kinds["OK"] != len(lines):
            raise RuntimeError(f"filling {len(lines)} keys failed: {dict(kinds)}")
    leaders = group_leaders(cluster.addresses)
    procs = max(1, min(options.client_procs, options.connections))
    per_worker, per_node = plan_connections(cluster.names, options.connections, procs)
    spread = describe_spread(per_node, per_worker, leaders, buckets, options.to_leaders)
    for line in spread:
        print(line, flush=True)

    context = multiprocessing.get_context("spawn")
    workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
    try:
        for index, nodes in enumerate(per_worker):
            ours, theirs = context.Pipe()
            plan = WorkerPlan(
                index=index,
                addresses=[cluster.addresses[n] for n in nodes],
                pipeline=options.pipeline,
                buckets=buckets,
                allowed=[allowed_buckets(n, leaders, buckets, options.to_leaders) for n in nodes],
                keys=options.keys,
                mix=options.mix,
                value_size=options.value_size,
                seed=options.seed,
            )
            process = context.Process(
                target=worker_main, args=(plan, theirs), name=f"boutique-bench-client-{index}"
            )
            process.daemon = True
            process.start()
            theirs.close()
            assert process.pid is not None
            ledger.add(process.pid, f"client {index}")
            workers.append((process, ours))
        for _, channel in workers:
            _expect(channel, "ready", 60.0)
        start = time.monotonic() + 0.05 + options.warmup
        end = start + options.duration
        for _, channel in workers:
            channel.send(("go", start, end))
        print(
            f"running:     {len(workers)} client processes connected; warm-up"
            f" {options.warmup:g} s, then {options.duration:g} s measured",
            flush=True,
        )
        meter = CpuMeter(
            {**cluster.pids(), **{f"client{i}": p.pid for i, (p, _) in enumerate(workers)}}
        )
        _sleep_until(start)
        meter.start()
        before = _cluster_counters(cluster)
        _sleep_until(end)
        cpu = meter.stop()
        after = _cluster_counters(cluster)
        rss = {name: rss_bytes(pid) for name, pid in cluster.pids().items()}
        results = [_expect(channel, "result", DRAIN_TIMEOUT + 30.0) for _, channel in workers]
    finally:
        for process, channel in workers:
            if process.is_alive():
                process.kill()
            process.join(10)
            channel.close()

    errors: Counter[str] = Counter()
    latencies = array("d")
    ok = missing = 0
    for result in results:
        assert isinstance(result, WorkerResult)
        ok += result.ok
        missing += result.missing
        errors.update(result.errors)
        latencies.frombytes(result.latencies)
    return LoadResult(
        label=label,
        options=options,
        seconds=end - start,
        ok=ok,
        missing=missing,
        errors=errors,
        latencies=array("d", sorted(latencies)),
        node_cpu={n: cpu.get(n) for n in cluster.pids()},
        client_cpu={n: v for n, v in cpu.items() if n.startswith("client")},
        node_rss=rss,
        spread=spread,
        busy=meter.machine_line(),
        others=meter.others,
        loop={k: v - before.get(k, 0) for k, v in after.items()},
    )


def _cluster_counters(cluster: BenchCluster) -> dict[str, int]:
    """Every node's loop counters, summed."""
    total: Counter[str] = Counter()
    for address in cluster.addresses.values():
        total.update(loop_counters(address))
    return dict(total)


def _expect(channel: multiprocessing.connection.Connection, kind: str, timeout: float) -> Any:
    if not channel.poll(timeout):
        raise TimeoutError(f"a client process sent no {kind!r} within {timeout:g}s")
    try:
        message = channel.recv()
    except EOFError:
        raise RuntimeError("a client process exited without a result") from None
    if message[0] == "error":
        raise RuntimeError(f"a client process failed:\n{message[1]}")
    if message[0] != kind:
        raise RuntimeError(f"a client process sent {message[0]!r}, expected {kind!r}")
    return message[1]


def _sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def describe_options(options: LoadOptions, buckets: int | None = None) -> str:
    return (
        f"load:        {options.connections} connections, pipeline depth {options.pipeline},"
        f" mix {format_mix(options.mix)}, values {options.value_size} B,"
        f" {options.keys} keys over {buckets or options.buckets} buckets"
        f" (every range), warm-up {options.warmup:g} s, measured {options.duration:g} s,"
        f" {options.client_procs} client processes"
        + ("; each connection only to buckets its node leads" if options.to_leaders else "")
    )


def report_lines(result: LoadResult) -> list[str]:
    def ms(q: float) -> str:
        value = result.percentile_ms(q)
        return "n/a" if value is None else f"{value:.2f} ms"

    errors = ", ".join(f"{kind} {n}" for kind, n in result.errors.most_common()) or "none"
    node_cpu = ", ".join(f"{n} {fmt_pct(v)}" for n, v in result.node_cpu.items()) or "n/a"
    client_cpu = ", ".join(f"{n} {fmt_pct(v)}" for n, v in result.client_cpu.items())
    rss = ", ".join(f"{n} {fmt_mb(v)}" for n, v in result.node_rss.items()) or "n/a"
    node_total = sum(v for v in result.node_cpu.values() if v is not None) / 100
    client_total = sum(v for v in result.client_cpu.values() if v is not None) / 100
    per_op = ""
    if result.throughput > 0:
        per_op = (
            f"cost:        {1000 * node_total / result.throughput:.3f} ms of node CPU per op"
            f" (all nodes together), {1000 * client_total / result.throughput:.3f} ms of client"
            " CPU per op"
        )
    loop = result.loop
    batching = ""
    if result.ok and loop.get("turns"):
        batching = (
            f"batching:    per op (all nodes): {loop.get('syncs', 0) / result.ok:.2f} syncs,"
            f" {loop.get('messages-out', 0) / result.ok:.2f} Raft messages in"
            f" {loop.get('frames-out', 0) / result.ok:.2f} frames,"
            f" {loop.get('turns', 0) / result.ok:.2f} loop turns"
        )
    return [
        f"throughput:  {result.throughput:,.0f} ops/s ({result.ok:,} OK replies in"
        f" {result.seconds:g} s; {result.missing:,} GETs of missing keys)",
        f"latency:     p50 {ms(50)}, p99 {ms(99)}, p99.9 {ms(99.9)}, max {ms(100)}",
        f"errors:      {errors}",
        f"node CPU:    {node_cpu} (% of one core over the measured window)",
        f"node RSS:    {rss}",
        f"client CPU:  {client_cpu}",
        *([per_op] if per_op else []),
        *([batching] if batching else []),
        result.busy,
    ]
