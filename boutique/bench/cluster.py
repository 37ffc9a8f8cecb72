"""The cluster a benchmark drives, and what the benchmark reads about its processes.

``BenchCluster`` either starts real ``boutique-server`` processes on 127.0.0.1
(``LocalCluster``, data in a scratch directory under the current directory, not /tmp,
which is often a RAM disk where fsync costs nothing) or stands for nodes that are
already running (``--target host:port,...``, optionally ``--pids`` to read their CPU).
It records every PID it starts in a ``Ledger`` so the benchmark can say, at the end,
that each one was ended.

Also here: CPU seconds and resident memory of a process (from ``/proc``), the machine
description printed with every result, and small blocking helpers that create buckets,
fill keys with pipelined requests, and read who leads a bucket from ``STATUS``.

Nothing here is imported by the store; nothing here opens a port other than
127.0.0.1 ones chosen by ``LocalCluster``, or the targets the user named.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType

from boutique.client import Client, ClientError
from boutique.config import ClusterConfig
from boutique.devcerts import write_certs
from boutique.storage.bench import cpu_model, filesystem
from boutique.testing.local_cluster import LocalCluster
from boutique.testing.netns_cluster import NetnsCluster
from boutique.wire import is_terminator

Address = tuple[str, int]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
RANGE_LETTERS = "ahov"
"""One first letter in each range of the default split (a-g, h-n, o-u, v-z)."""


def config_default(name: str) -> object:
    """The store's own default for a ``ClusterConfig`` field (so ours follow it)."""
    for f in fields(ClusterConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


DEFAULT_TICK = float(config_default("tick_interval"))  # type: ignore[arg-type]
DEFAULT_ELECTION_TICKS = int(config_default("election_ticks"))  # type: ignore[call-overload]


# --- processes ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields 14 and 15 of proc(5), counted after "pid (comm)": state is field 3.
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process in bytes (``/proc/<pid>/statm``), or None."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def machine_cpu() -> tuple[float, float] | None:
    """(busy, all) CPU seconds of the whole machine so far, summed over its cores
    (``/proc/stat``; steal time counts as busy), or None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


class CpuMeter:
    """CPU% of named processes over a window: ``start()``, later ``stop()``. Also how
    busy the whole machine was, so a result taken while something else ran shows it."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._began: dict[str, float | None] = {}
        self._machine: tuple[float, float] | None = None
        self._t0 = 0.0
        self.machine_busy: float | None = None
        """Cores' worth of CPU the whole machine used over the window."""
        self.others: float | None = None
        """Cores' worth used by processes other than ``pids`` over the window."""

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._machine = machine_cpu()
        self._began = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float | None]:
        """Percent of one core used by each process since ``start`` (None if unknown)."""
        wall = max(time.monotonic() - self._t0, 1e-9)
        result: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            began, now = self._began.get(name), cpu_seconds(pid)
            result[name] = None if began is None or now is None else 100 * (now - began) / wall
        machine = machine_cpu()
        if machine is not None and self._machine is not None:
            self.machine_busy = (machine[0] - self._machine[0]) / wall
            ours = sum(v for v in result.values() if v is not None) / 100
            self.others = max(0.0, self.machine_busy - ours)
        return result

    def machine_line(self) -> str:
        if self.machine_busy is None or self.others is None:
            return "busy:        machine CPU unknown"
        cores = len(os.sched_getaffinity(0))
        warning = ""
        if self.others > 0.1 * cores:
            warning = " -- OTHER WORK RAN ON THE MACHINE: these figures are disturbed"
        return (
            f"busy:        {self.machine_busy:.2f} of {cores} cores busy over the window;"
            f" {self.others:.2f} cores used by processes outside this benchmark{warning}"
        )


class Ledger:
    """Every process a benchmark started, so it can show each one was ended."""

    def __init__(self) -> None:
        self.started: dict[int, str] = {}

    def add(self, pid: int, what: str) -> None:
        self.started[pid] = what

    def still_running(self) -> list[int]:
        return [pid for pid in self.started if is_alive(pid)]

    def report(self) -> str:
        alive = self.still_running()
        pids = " ".join(str(p) for p in sorted(self.started))
        state = "all ended" if not alive else "STILL RUNNING: " + " ".join(map(str, alive))
        return f"processes started: {len(self.started)} ({pids}); {state}"


# --- the machine ----------------------------------------------------------------------


def git_commit() -> str:
    """The commit of the source tree this package runs from, with '+dirty' if edited."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        # --no-optional-locks: a read-only look that never rewrites the index.
        dirty = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def machine_lines() -> list[str]:
    return [
        f"machine:     {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}),"
        f" {cpu_model()}, {platform.system()} {platform.release()}",
        f"python:      {platform.python_implementation()} {platform.python_version()}",
        f"load avg:    {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min) at start",
        f"commit:      {git_commit()}",
    ]


# --- the cluster ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """How to start a local cluster (ignored when targeting running nodes)."""

    nodes: int = 3
    replication: int = 3
    tick_interval: float = DEFAULT_TICK
    election_ticks: int = DEFAULT_ELECTION_TICKS
    workdir_parent: Path = Path(".")
    keep: bool = False
    netns: bool = False
    """Each node on a host of its own (``boutique.testing.netns_cluster``; needs root)."""
    tls: bool = False
    """Mutual TLS between the nodes (development certificates made for the run)."""


class BenchCluster:
    """A started local cluster or a set of running targets. Use as a context manager."""

    def __init__(
        self,
        ledger: Ledger,
        spec: ClusterSpec | None = None,
        *,
        targets: Sequence[Address] = (),
        target_pids: Sequence[int] = (),
    ) -> None:
        self.ledger = ledger
        self.spec = spec or ClusterSpec()
        self.local: LocalCluster | None = None
        self.workdir: Path | None = None
        self.addresses: dict[str, Address] = {}
        self._target_pids: dict[str, int] = {}
        if targets:
            for i, address in enumerate(targets):
                name = f"{address[0]}:{address[1]}"
                self.addresses[name] = address
                if i < len(target_pids):
                    self._target_pids[name] = target_pids[i]

    @property
    def names(self) -> list[str]:
        return list(self.addresses)

    def __enter__(self) -> BenchCluster:
        if not self.addresses:
            self._start_local()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start_local(self) -> None:
        spec = self.spec
        parent = spec.workdir_parent.resolve()
        parent.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=".boutique-bench-", dir=parent))
        if spec.tls and spec.netns:
            raise ValueError("--tls with --netns is not supported: the certificates name 127.0.0.1")
        extra = ""
        if spec.tls:
            names = [(f"n{i}", "127.0.0.1") for i in range(1, spec.nodes + 1)]
            extra = write_certs(self.workdir / "certs", names)
        kind = NetnsCluster if spec.netns else LocalCluster
        self.local = kind(
            self.workdir,
            nodes=spec.nodes,
            replication=spec.replication,
            secret="boutique-bench-" + os.urandom(8).hex(),
            tick_interval=spec.tick_interval,
            election_ticks=spec.election_ticks,
            fault_injection=False,
            extra=extra,
        )
        self.addresses = {
            name: (node.host, node.client_port) for name, node in self.local.nodes.items()
        }
        self.start()

    def start(self, *names: str) -> None:
        """Start (or restart) local nodes and wait until each answers."""
        assert self.local is not None, "cannot start nodes of a --target cluster"
        try:
            self.local.start(*names, wait=False)
        finally:
            for name, node in self.local.nodes.items():
                if node.pid is not None:
                    self.ledger.add(node.pid, f"node {name}")
        for name in names or tuple(self.local.nodes):
            self.local.wait_ready(name)

    def kill(self, name: str) -> None:
        """SIGKILL a local node and reap it (a no-op if it is already dead)."""
        assert self.local is not None
        self.local.kill(name)

    def close(self) -> None:
        """End every node this cluster started, by PID, and remove its scratch data."""
        if self.local is not None:
            self.local.close()
        if self.workdir is not None and not self.spec.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        """PIDs of the nodes whose CPU and memory can be read (all local ones)."""
        if self.local is None:
            return dict(self._target_pids)
        return {n: node.pid for n, node in self.local.nodes.items() if node.pid is not None}

    def log_tail(self, name: str) -> str:
        return self.local.log_tail(name) if self.local is not None else "(no log: a target)"

    def describe(self) -> list[str]:
        if self.local is None:
            pids = ", ".join(f"{n} pid {p}" for n, p in self._target_pids.items()) or "unknown"
            return [
                f"cluster:     {len(self.addresses)} running nodes given by --target"
                f" ({', '.join(self.addresses)}); their pids: {pids}",
                "             replication and storage as those nodes are configured",
            ]
        spec = self.spec
        assert self.workdir is not None
        where = "each in a network namespace of its own" if spec.netns else "on loopback"
        return [
            f"cluster:     {spec.nodes} local node processes {where}, replication"
            f" {min(spec.replication, spec.nodes)}, durable SQLite storage (WAL, synchronous=FULL)"
            f" on {filesystem(self.workdir)}",
            f"raft:        tick {spec.tick_interval * 1000:g} ms, election after"
            f" {spec.election_ticks}-{2 * spec.election_ticks} ticks",
            f"data:        {self.workdir} ({filesystem(self.workdir)})",
        ]


def parse_targets(text: str) -> list[Address]:
    """``host:port,host:port`` -> addresses."""
    addresses = []
    for part in text.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected host:port, got {part!r}")
        addresses.append((host or "127.0.0.1", int(port)))
    return addresses


# --- buckets and replies --------------------------------------------------------------


def bucket_names(count: int, stem: str) -> list[str]:
    """``count`` bucket names whose first letters cycle through every default range."""
    width = len(str(max(count - 1, 0)))
    return [f"{RANGE_LETTERS[i % 4]}{stem}{i:0{width}d}" for i in range(count)]


def reply_kind(line: bytes) -> str:
    """How a terminator line is counted: ``OK``, ``ERR TIMEOUT``, ``NOT FOUND``..."""
    if line.startswith(b"ERR "):
        return " ".join(line.decode(errors="replace").split()[:2])
    return line.decode(errors="replace")


def pipelined(sock: socket.socket, lines: Sequence[bytes], depth: int) -> Counter[str]:
    """Send ``lines`` over a blocking socket with up to ``depth`` unanswered; count the
    replies by kind. Item lines (a GET's value) are skipped."""
    kinds: Counter[str] = Counter()
    sent = answered = 0
    rest = b""
    while answered < len(lines):
        if sent - answered < depth and sent < len(lines):
            batch = lines[sent : answered + depth]
            sock.sendall(b"".join(batch))
            sent += len(batch)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        parts = (rest + data).split(b"\r\n")
        rest = parts.pop()
        for line in parts:
            if is_terminator(line):
                answered += 1
                kinds[reply_kind(line)] += 1
    return kinds


def run_pipelined(
    addresses: Sequence[Address],
    lines: Sequence[bytes],
    *,
    connections: int,
    depth: int,
    timeout: float = 60.0,
) -> Counter[str]:
    """Send ``lines`` over ``connections`` sockets spread over ``addresses`` (a thread
    each; the work is waiting), ``depth`` unanswered per socket. Reply kinds counted;
    a socket that fails adds its unanswered lines as ``connection error``."""
    total: Counter[str] = Counter()
    lock = threading.Lock()
    connections = max(1, min(connections, len(lines)))

    def drive(i: int) -> None:
        mine = lines[i::connections]
        try:
            with socket.create_connection(addresses[i % len(addresses)], timeout=timeout) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                kinds = pipelined(s, mine, depth)
        except OSError:
            kinds = Counter({"connection error": len(mine)})
        with lock:
            total.update(kinds)

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return total


def retry(address: Address, what: str, timeout: float, action: str, *args: str) -> None:
    """Call ``Client.<action>(*args)`` until it succeeds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with Client(*address, timeout=min(5.0, timeout)) as client:
                getattr(client, action)(*args)
                return
        except (ClientError, OSError) as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not succeed within {timeout:g}s: {last}")


def prepare_buckets(addresses: Sequence[Address], buckets: Iterable[str], timeout: float) -> None:
    """Create the buckets and wait until each takes a write (it has a leader)."""
    names = list(buckets)
    for bucket in names:
        retry(addresses[0], f"CREATE {bucket}", timeout, "create", bucket)
    for bucket in names:
        retry(addresses[-1], f"first PUT to {bucket}", timeout, "put", bucket, "~probe", "1")


def group_leaders(addresses: dict[str, Address]) -> dict[str, str]:
    """Bucket name -> the name of the node that leads its group, from each node's STATUS
    (only buckets among the first groups STATUS lists)."""
    leaders: dict[str, str] = {}
    for name, address in addresses.items():
        with contextlib.suppress(ClientError, OSError), Client(*address, timeout=5.0) as client:
            for line in client.status():
                parts = line.split()
                if len(parts) > 5 and parts[0] == "group" and parts[1].startswith("b/"):
                    bucket = parts[1].split("/")[1]
                    if parts[3] == "leader":
                        leaders[bucket] = name
    return leaders


def group_line(address: Address, bucket: str) -> list[str] | None:
    """The words of the STATUS line for a bucket's group at one node, if listed."""
    with contextlib.suppress(ClientError, OSError), Client(*address, timeout=2.0) as client:
        for line in client.status():
            parts = line.split()
            if len(parts) > 5 and parts[0] == "group" and parts[1].startswith(f"b/{bucket}/"):
                return parts
    return None


def loop_counters(address: Address) -> dict[str, int]:
    """The host loop's counters from a node's ``STATUS`` (its ``loop`` line), or an
    empty dict if the node does not answer."""
    with contextlib.suppress(ClientError, OSError), Client(*address, timeout=2.0) as client:
        for line in client.status():
            words = line.split()
            if words and words[0] == "loop":
                return {k: int(v) for k, v in zip(words[1::2], words[2::2], strict=False)}
    return {}


def fmt_mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f} MB"


def fmt_pct(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.0f}%"
