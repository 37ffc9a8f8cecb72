"""Failover benchmark: how long writes to a bucket stop when its leader is SIGKILLed.

Each trial finds the node leading the bucket's group, starts a steady stream of PUTs
to the bucket through the other nodes (one request every ``INTERVAL`` seconds, each
to a new key, round-robin over several connections per survivor, so one request stuck
behind the dead leader never holds up the next), waits until writes succeed, then
sends SIGKILL to the leader's process. The recovery time is from just before the kill
to the first OK reply of a PUT *sent after* the kill: a request the old leader had
already committed cannot make a failover look faster than it was. The killed node is
restarted, and the next trial waits until every node sees a leader again.

Only local clusters: the benchmark must own the processes it kills. Every loop here is
bounded in time (``give_up`` per trial) and in requests in flight per connection.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from boutique.testing.netns_cluster import NetnsCluster

from .cluster import Address, BenchCluster, group_line, prepare_buckets, reply_kind

INTERVAL = 0.002
"""Seconds between two PUTs of the writer (so the recovery time resolves to ~2 ms)."""
CONNECTIONS_PER_NODE = 4
MAX_IN_FLIGHT = 64
"""Per connection; a connection with this many unanswered PUTs is skipped."""
STEADY_SECONDS = 0.3
BUCKET = "afailover"


@dataclass(slots=True)
class Trial:
    killed: str
    term: str
    recovery: float | None
    """Seconds from the kill to the first OK of a PUT sent after it; None: gave up."""
    first_ok_any: float | None
    """Seconds from the kill to the first OK of any PUT (may predate the kill)."""
    errors: Counter[str] = field(default_factory=Counter)
    sent_after_kill: int = 0


@dataclass(slots=True)
class FailoverResult:
    trials: int
    results: list[Trial]
    give_up: float

    @property
    def failed(self) -> int:
        return sum(1 for t in self.results if t.recovery is None)

    def percentile_ms(self, q: float) -> float | None:
        """Nearest-rank percentile of recovery times in ms; a failed trial counts as
        infinitely long, so it is never hidden by the percentile."""
        times = sorted(math.inf if t.recovery is None else t.recovery for t in self.results)
        if not times:
            return None
        rank = min(len(times) - 1, max(0, math.ceil(q / 100 * len(times)) - 1))
        return times[rank] * 1000

    def meets_bar(self) -> bool:
        p99 = self.percentile_ms(99)
        return p99 is not None and p99 < 1000 and len(self.results) == self.trials

    def report_lines(self) -> list[str]:
        def ms(q: float) -> str:
            value = self.percentile_ms(q)
            return "n/a" if value is None else f"{value:.0f} ms"

        errors: Counter[str] = Counter()
        for trial in self.results:
            errors.update(trial.errors)
        shown = ", ".join(f"{k} {n}" for k, n in errors.most_common()) or "none"
        return [
            f"failover:    {len(self.results)} trials, {self.failed} gave up after"
            f" {self.give_up:g} s; writes resumed after p50 {ms(50)}, p99 {ms(99)},"
            f" max {ms(100)}",
            f"             error replies to PUTs sent after the kills: {shown}",
        ]


class _Writer:
    """A steady stream of PUTs to one bucket over connections to the survivors."""

    def __init__(self, addresses: list[Address], bucket: str, trial: int) -> None:
        self.bucket = bucket.encode()
        self.prefix = b"t%d-" % trial
        self.epoll = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.inflight: dict[int, deque[float]] = {}
        self.rest: dict[int, bytes] = {}
        self.order: list[int] = []
        for address in addresses:
            for _ in range(CONNECTIONS_PER_NODE):
                sock = socket.create_connection(address, timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                fd = sock.fileno()
                self.socks[fd], self.inflight[fd], self.rest[fd] = sock, deque(), b""
                self.order.append(fd)
                self.epoll.register(fd, select.EPOLLIN)
        self.seq = 0
        self.next_send = time.monotonic()
        self.kill_at = math.inf
        self.ok = 0
        self.first_ok_after: float | None = None
        self.first_ok_any: float | None = None
        self.errors: Counter[str] = Counter()
        self.sent_after_kill = 0

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.epoll.close()

    def run(self, until: Callable[[], bool], deadline: float) -> None:
        while not until() and time.monotonic() < deadline and self.socks:
            now = time.monotonic()
            if now >= self.next_send:
                self._send(now)
                self.next_send = max(self.next_send + INTERVAL, now - INTERVAL)
            timeout = max(0.0, min(self.next_send, deadline) - time.monotonic())
            for fd, _ in self.epoll.poll(timeout):
                self._read(fd)

    def _send(self, now: float) -> None:
        for _ in range(len(self.order)):
            fd = self.order[self.seq % len(self.order)]
            self.seq += 1
            if fd in self.socks and len(self.inflight[fd]) < MAX_IN_FLIGHT:
                line = b"PUT %s %s%d 1\n" % (self.bucket, self.prefix, self.seq)
                try:
                    self.socks[fd].send(line)  # a few bytes: fits any socket buffer
                except OSError:
                    self._drop(fd)
                    continue
                self.inflight[fd].append(now)
                if now >= self.kill_at:
                    self.sent_after_kill += 1
                return

    def _drop(self, fd: int) -> None:
        self.epoll.unregister(fd)
        self.socks.pop(fd).close()
        self.errors["connection lost"] += 1

    def _read(self, fd: int) -> None:
        try:
            data = self.socks[fd].recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        now = time.monotonic()
        lines = (self.rest[fd] + data).split(b"\r\n")
        self.rest[fd] = lines.pop()
        for line in lines:
            if not self.inflight[fd]:  # a reply to nothing: the stream is out of step
                self._drop(fd)
                return
            sent_at = self.inflight[fd].popleft()
            kind = reply_kind(line)
            if kind != "OK":
                if sent_at >= self.kill_at:
                    self.errors[kind] += 1
                continue
            self.ok += 1
            if now >= self.kill_at and self.first_ok_any is None:
                self.first_ok_any = now - self.kill_at
            if sent_at >= self.kill_at and self.first_ok_after is None:
                self.first_ok_after = now - self.kill_at


def _agreed_leader(cluster: BenchCluster, bucket: str, timeout: float) -> tuple[str, str]:
    """Wait until every node names the same leader of the bucket's group (so the node
    restarted by the last trial has caught up); its name and term."""
    deadline = time.monotonic() + timeout
    while (leader := _leader(cluster, bucket)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no leader of {bucket} agreed by every node within {timeout:g}s")
        time.sleep(0.05)
    return leader


def _leader(cluster: BenchCluster, bucket: str) -> tuple[str, str] | None:
    """(leader name, term) when every node's STATUS agrees on a leader, else None."""
    seen = set()
    term = ""
    for name, address in cluster.addresses.items():
        parts = group_line(address, bucket)
        if parts is None or parts[5] == "none":
            return None
        seen.add(parts[5])
        if parts[3] == "leader" and parts[5] == name:
            term = parts[7]
    if len(seen) != 1 or not term:
        return None
    return seen.pop(), term


FAULTS = ("kill", "isolate")
"""``kill``: SIGKILL the leader's process. ``isolate``: a silent partition around it
(every packet to and from its peers dropped; a ``NetnsCluster`` only)."""


def run_failover(
    cluster: BenchCluster,
    trials: int,
    *,
    give_up: float = 10.0,
    echo: bool = False,
    fault: str = "kill",
) -> FailoverResult:
    """``trials`` leader kills (or isolations) of one bucket's group; the cluster must
    be local (and in network namespaces, to isolate)."""
    if cluster.local is None:
        raise ValueError("failover needs a cluster the benchmark started (no --target)")
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if fault == "isolate" and not isinstance(cluster.local, NetnsCluster):
        raise ValueError("isolating a node needs a cluster in network namespaces (--netns)")
    prepare_buckets(list(cluster.addresses.values()), [BUCKET], timeout=30.0)
    result = FailoverResult(trials, [], give_up)
    for number in range(1, trials + 1):
        victim, term = _agreed_leader(cluster, BUCKET, 30.0)
        trial = _one_trial(cluster, number, victim, term, give_up, fault)
        result.results.append(trial)
        if echo:
            took = "gave up" if trial.recovery is None else f"{trial.recovery * 1000:.0f} ms"
            any_ok = (
                ""
                if trial.first_ok_any is None
                else f" (first OK of any PUT: {trial.first_ok_any * 1000:.0f} ms)"
            )
            errors = ", ".join(f"{k} {n}" for k, n in trial.errors.items()) or "no errors"
            done = "killed" if fault == "kill" else "isolated"
            print(
                f"  trial {number}: {done} {victim} (leader, term {term}); writes resumed"
                f" after {took}{any_ok}; {trial.sent_after_kill} PUTs sent after the kill,"
                f" {errors}",
                flush=True,
            )
        if fault == "kill":
            cluster.kill(victim)
            cluster.start(victim)
        else:
            cluster.local.heal()
    return result


def _one_trial(
    cluster: BenchCluster, number: int, victim: str, term: str, give_up: float, fault: str
) -> Trial:
    assert cluster.local is not None
    survivors = [a for name, a in cluster.addresses.items() if name != victim]
    writer = _Writer(survivors, BUCKET, number)
    try:
        began = time.monotonic()
        writer.run(
            lambda: writer.ok >= 10 and time.monotonic() - began >= STEADY_SECONDS,
            began + give_up,
        )
        if writer.ok < 10:
            raise TimeoutError(f"trial {number}: writes did not succeed before the kill")
        pid = cluster.local.nodes[victim].pid
        assert pid is not None
        writer.kill_at = time.monotonic()
        if fault == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            others = [name for name in cluster.local.nodes if name != victim]
            cluster.local.partition([victim], others)
        writer.run(lambda: writer.first_ok_after is not None, writer.kill_at + give_up)
        return Trial(
            victim,
            term,
            writer.first_ok_after,
            writer.first_ok_any,
            writer.errors,
            writer.sent_after_kill,
        )
    finally:
        writer.close()
