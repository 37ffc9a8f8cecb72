"""The metrics of one node process: what ``GET /metrics`` shows, wired to real counts.

Counted as requests are answered (the only work on the hot path, a few dict updates
per request): ``boutique_requests_total{command,outcome}`` and the latency histogram
``boutique_request_seconds{command}``, from the moment the request line was read to
the moment its reply is ready to write. Counted by the host loop: the fsync time of
each storage commit, ``boutique_storage_sync_seconds``.

Everything else is read when scraped, from counters the server and the host already
keep: connections, the edges' refusals and auth failures, the host loop's counters,
peers, quarantined groups, and per range the groups this node holds, leads, how many
are quiet and how far their applied index lags their commit index. The per-range
figures take one pass over the catalog per scrape (``_Census``), shared by every
gauge, rather than one series per group: a node may hold 100k groups, and a series
per group would be too many for Prometheus and for the scrape.

Label values are bounded: commands and outcomes are fixed sets, ranges and peers
are few. This module never changes the node; it only reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Protocol, TypeAlias

from boutique.admission import Admission
from boutique.config import ClusterConfig
from boutique.metrics import Labels, Registry
from boutique.raft import Role
from boutique.runtime.host import HostCounters
from boutique.runtime.node import META_GROUP, Node

from . import commands as cmd
from .protocol import ProtocolError


class MeteredServer(Protocol):
    """What the metrics read of the line server (``server.LineServer`` is one; a
    protocol so that the server, which counts into the metrics, and this module do not
    import each other)."""

    node: Node
    config: ClusterConfig
    unauthenticated: Admission
    refused: int
    auth_failures: int
    auth_timeouts: int
    reply_bytes: int

    @property
    def connections(self) -> int: ...


_Read: TypeAlias = Callable[[], Iterable[tuple[Labels, float]]]

SYNC_BUCKETS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
)  # fmt: skip
"""Seconds: from a page-cache commit on a fast disk to a stalled one."""

COMMAND_NAMES: dict[type, str] = {
    cmd.Create: "create",
    cmd.Drop: "drop",
    cmd.Put: "put",
    cmd.Get: "get",
    cmd.Delete: "delete",
    cmd.Buckets: "buckets",
    cmd.Keys: "keys",
    cmd.Scan: "scan",
    cmd.Ping: "ping",
    cmd.Help: "help",
    cmd.Quit: "quit",
    cmd.Status: "status",
    cmd.Auth: "auth",
    cmd.Fault: "fault",
    cmd.Admin: "admin",
    ProtocolError: "invalid",
}
"""The ``command`` label of a request, by the type of its parsed event."""

_COUNTED = tuple(f.name for f in fields(HostCounters) if f.name != "longest_turn_us")


def outcome(reply: bytes) -> str:
    """The ``outcome`` label of a rendered reply, from its last line: ``ok`` (``OK``,
    ``PONG``), ``not_found``, ``not_implemented``, or the error code in lower case
    (``timeout``, ``unavailable``, ``syntax``, ``more``, ...)."""
    # Every reply ends in CRLF; the last line is the terminator (items come before it).
    start = reply.rfind(b"\n", 0, len(reply) - 2) + 1
    last = reply[start:-2]
    if last == b"OK" or last == b"PONG":
        return "ok"
    if last.startswith(b"ERR "):
        return last[4:].split(b" ", 1)[0].decode("ascii", "replace").lower()
    if last == b"NOT FOUND":
        return "not_found"
    if last == b"COMMAND NOT IMPLEMENTED":
        return "not_implemented"
    return "other"


@dataclass(slots=True)
class _RangeCensus:
    groups: int = 0
    leading: int = 0
    quiet: int = 0
    lag: int = 0
    term: int = 0


@dataclass(slots=True)
class _Census:
    """One pass over this node's bucket groups, for one scrape."""

    ranges: dict[str, _RangeCensus] = field(default_factory=dict)
    quiet: int = 0
    active: int = 0


class NodeMetrics:
    """The registry of one node's server; ``render`` is what the endpoint serves."""

    def __init__(self, server: MeteredServer) -> None:
        self.server = server
        node = server.node
        registry = self.registry = Registry()
        self.requests = registry.counter(
            "boutique_requests",
            "Client requests answered, by command and outcome (ok, not_found, or the error code).",
            ("command", "outcome"),
        )
        self.latency = registry.histogram(
            "boutique_request_seconds",
            "Seconds from reading a request line to its reply being ready, by command.",
            ("command",),
        )
        self.sync = registry.histogram(
            "boutique_storage_sync_seconds",
            "Seconds each storage commit (one fsync for every group) took.",
            buckets=SYNC_BUCKETS,
        )
        if node is not None:  # None: a test server with a router and no node
            node.on_sync = self.sync.observe
        self._census: _Census | None = None

        registry.gauge(
            "boutique_connections",
            "Client connections being served.",
            lambda: [((), server.connections)],
        )
        registry.gauge(
            "boutique_connections_unauthenticated",
            "Client connections that have not authenticated yet.",
            lambda: [((), server.unauthenticated.count)],
        )
        registry.read_counter(
            "boutique_connections_refused",
            "Client connections refused (too many connections).",
            lambda: [((), server.refused)],
        )
        registry.read_counter(
            "boutique_auth_failures",
            "Wrong passwords, by port: client (AUTH) or peer (cluster secret).",
            self._auth_failures,
            ("port",),
        )
        registry.read_counter(
            "boutique_auth_timeouts",
            "Client connections closed because they did not authenticate in time.",
            lambda: [((), server.auth_timeouts)],
        )
        registry.read_counter(
            "boutique_peer_handshakes_refused",
            "Peer connections refused during the handshake.",
            self._handshakes_refused,
        )
        registry.gauge(
            "boutique_reply_bytes_pending",
            "Reply bytes ready and not yet written, over all client connections.",
            lambda: [((), server.reply_bytes)],
        )
        registry.read_counter(
            "boutique_host_loop",
            "What the host loop did, by event: turns, syncs (fsyncs), proposals, reads, "
            "messages and frames to and from peers, snapshot pieces and snapshots.",
            lambda: [((name,), getattr(node.counters, name)) for name in _COUNTED],
            ("event",),
        )
        registry.gauge(
            "boutique_host_longest_turn_seconds",
            "The longest turn of the host loop since the node started.",
            lambda: [((), node.counters.longest_turn_us / 1e6)],
        )
        registry.gauge(
            "boutique_peer_up",
            "1 if the peer is reachable, else 0.",
            self._peers,
            ("peer",),
        )
        registry.gauge(
            "boutique_groups",
            "Raft groups on this node, by state: quiet (no heartbeats) or active.",
            lambda: [(("quiet",), self.census().quiet), (("active",), self.census().active)],
            ("state",),
        )
        registry.gauge(
            "boutique_groups_quarantined",
            "Groups taken out of service after their core failed (until a restart).",
            lambda: [((), len(node.quarantined))],
        )
        for name, help_text, attribute in (
            ("boutique_range_groups", "Bucket groups of the range on this node.", "groups"),
            ("boutique_range_leading", "Bucket groups of the range this node leads.", "leading"),
            ("boutique_range_quiet", "Bucket groups of the range that are quiet.", "quiet"),
            (
                "boutique_range_commit_lag",
                "Entries committed and not yet applied, summed over the range's groups.",
                "lag",
            ),
            ("boutique_range_max_term", "The highest Raft term among the range's groups.", "term"),
        ):
            registry.gauge(name, help_text, self._per_range(attribute), ("range",))
        for name, help_text in (
            ("leader", "The meta group's leader as this node knows it (node id; 0: none)."),
            ("term", "The meta group's Raft term here."),
            ("commit", "The meta group's commit index here."),
            ("applied", "The meta group's applied index here."),
        ):
            registry.gauge(f"boutique_meta_{name}", help_text, self._meta(name))

    # --- the hot path ------------------------------------------------------------------

    def answered(self, event: object, started: float, reply: bytes) -> None:
        """A request read at ``started`` (``time.perf_counter()``) has its reply."""
        took = time.perf_counter() - started
        name = COMMAND_NAMES.get(type(event), "invalid")
        self.requests.inc((name, outcome(reply)))
        self.latency.observe(took, (name,))

    # --- read when scraped -------------------------------------------------------------

    def render(self) -> str:
        """The metrics text. The per-range census is taken once, for this scrape."""
        self._census = None
        try:
            return self.registry.render()
        finally:
            self._census = None

    def census(self) -> _Census:
        if self._census is None:
            self._census = self._take_census()
        return self._census

    def _take_census(self) -> _Census:
        node = self.server.node
        census = _Census()
        for group in node.groups.values():
            if group.node.raft.quiesced:
                census.quiet += 1
            else:
                census.active += 1
        ranges = census.ranges
        for rng in self.server.config.ranges:
            ranges[rng.id] = _RangeCensus()
        for info in node.catalog().values():
            runtime = node.groups.get(info.group)
            if runtime is None:
                continue  # a bucket of a range this node does not replicate
            raft = runtime.node.raft
            entry = ranges.get(info.range_id)
            if entry is None:
                entry = ranges[info.range_id] = _RangeCensus()
            entry.groups += 1
            entry.leading += raft.role is Role.LEADER
            entry.quiet += raft.quiesced
            entry.lag += max(0, raft.log.committed - runtime.host.applied_index)
            entry.term = max(entry.term, raft.term)
        return census

    def _per_range(self, attribute: str) -> _Read:
        def read() -> list[tuple[Labels, float]]:
            return [((rid,), getattr(r, attribute)) for rid, r in self.census().ranges.items()]

        return read

    def _meta(self, what: str) -> _Read:
        def read() -> list[tuple[Labels, float]]:
            meta = self.server.node.groups.get(META_GROUP)
            if meta is None:
                return []
            raft = meta.node.raft
            value = {
                "leader": raft.lead,
                "term": raft.term,
                "commit": raft.log.committed,
                "applied": meta.host.applied_index,
            }[what]
            return [((), value)]

        return read

    def _auth_failures(self) -> list[tuple[Labels, float]]:
        rows: list[tuple[Labels, float]] = [(("client",), self.server.auth_failures)]
        transport = self.server.node.transport
        if transport is not None:
            rows.append((("peer",), transport.stats.auth_failures))
        return rows

    def _handshakes_refused(self) -> list[tuple[Labels, float]]:
        transport = self.server.node.transport
        return [] if transport is None else [((), transport.stats.handshakes_refused)]

    def _peers(self) -> list[tuple[Labels, float]]:
        node = self.server.node
        transport = node.transport
        if transport is None:
            return []
        return [
            ((peer.name,), float(transport.reachable(peer.id)))
            for peer in node.config.nodes
            if peer.id != node.id
        ]
