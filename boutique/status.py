"""What STATUS reports about one node, as typed data, and its two renderings.

The server takes one ``NodeStatus`` snapshot per STATUS request and renders it either
as the text lines people and tools have always read (``to_lines``: byte-compatible
with the lines before this model existed, since tests and scripts parse them) or as
one line of JSON (``to_json``) for ``STATUS JSON``. The client reads that line back
with ``NodeStatus.from_json``, so both ends share this one definition.

Only the first ``GROUP_LIMIT`` groups are listed (a node may hold 100k); the counts
(``groups_total``, ``groups_quiet``) cover them all. Quarantined groups are always
listed: an operator must see them.

This module does no I/O and imports nothing from the server or the runtime.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

GROUP_LIMIT = 50
"""Groups listed one by one in a STATUS reply, text or JSON."""


@dataclass(frozen=True, slots=True)
class EdgeStatus:
    """The client port's admission counters."""

    unauthenticated: int
    max_unauthenticated: int
    refused: int
    auth_failures: int
    auth_timeouts: int


@dataclass(frozen=True, slots=True)
class PeerEdgeStatus:
    """The peer port's refusals: handshakes turned away, wrong cluster secrets."""

    handshakes_refused: int
    auth_failures: int


@dataclass(frozen=True, slots=True)
class RangeStatus:
    id: str
    replicas: tuple[str, ...]
    """Node names (or ids, for nodes the configuration does not name)."""


@dataclass(frozen=True, slots=True)
class GroupStatus:
    id: str
    role: str
    leader: str | None
    """The leader's node name; None when no leader is known."""
    term: int
    commit: int
    applied: int
    quiet: bool


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    id: int
    cluster: str
    clients: int
    max_connections: int
    edge: EdgeStatus
    peer_edge: PeerEdgeStatus | None
    """None before the peer transport started."""
    loop: dict[str, int]
    """The host loop's counters (``HostCounters``), by field name."""
    peers: dict[str, bool]
    """Peer node name -> reachable."""
    ranges: tuple[RangeStatus, ...]
    quarantined: dict[str, str]
    """Group id -> why it was taken out of service."""
    groups: tuple[GroupStatus, ...]
    """At most ``GROUP_LIMIT`` of them."""
    groups_total: int
    groups_quiet: int = 0
    group_counts: dict[str, int] = field(default_factory=dict)
    """Every group counted (``total``, one count per role, ``quiet``): one pass, so a
    node with 100,000 groups still answers at once."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of a newer server's JSON this client does not know (kept, not dropped)."""

    def to_lines(self) -> list[str]:
        """The STATUS text reply, line by line (without the final ``OK``)."""
        lines = [f"node {self.node} id {self.id} cluster {self.cluster}"]
        lines.append(f"clients {self.clients} of {self.max_connections}")
        edge = self.edge
        lines.append(
            f"edge unauthenticated {edge.unauthenticated} of {edge.max_unauthenticated}"
            f" refused {edge.refused} auth-failures {edge.auth_failures}"
            f" auth-timeouts {edge.auth_timeouts}"
        )
        if self.peer_edge is not None:
            lines.append(
                f"peer-edge handshakes-refused {self.peer_edge.handshakes_refused}"
                f" auth-failures {self.peer_edge.auth_failures}"
            )
        counters = " ".join(f"{k.replace('_', '-')} {v}" for k, v in self.loop.items())
        lines.append(f"loop {counters}")
        for peer, up in sorted(self.peers.items()):
            lines.append(f"peer {peer} {'up' if up else 'DOWN'}")
        for rng in self.ranges:
            lines.append(f"range {rng.id} replicas {','.join(rng.replicas)}")
        for group_id, reason in self.quarantined.items():
            lines.append(f"quarantined {group_id} {reason}")
        for g in self.groups:
            lines.append(
                f"group {g.id} role {g.role} leader {g.leader or 'none'} term {g.term} "
                f"commit {g.commit} applied {g.applied}{' quiet' if g.quiet else ''}"
            )
        if self.groups_total > len(self.groups):
            lines.append(f"... and {self.groups_total - len(self.groups)} more groups")
        if self.group_counts:
            lines.append("groups " + " ".join(f"{k} {v}" for k, v in self.group_counts.items()))
        return lines

    def to_json(self) -> str:
        """The ``STATUS JSON`` reply: one line, ASCII only (so it travels bare)."""
        data = asdict(self)
        data.update(data.pop("extra"))
        return json.dumps(data, ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeStatus:
        """Parse a ``STATUS JSON`` line; ``ValueError`` if it is not one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            known = {name for name in cls.__dataclass_fields__ if name != "extra"}
            peer_edge = data.get("peer_edge")
            return cls(
                node=str(data["node"]),
                id=int(data["id"]),
                cluster=str(data["cluster"]),
                clients=int(data["clients"]),
                max_connections=int(data["max_connections"]),
                edge=EdgeStatus(**data["edge"]),
                peer_edge=None if peer_edge is None else PeerEdgeStatus(**peer_edge),
                loop={str(k): int(v) for k, v in data["loop"].items()},
                peers={str(k): bool(v) for k, v in data["peers"].items()},
                ranges=tuple(
                    RangeStatus(str(r["id"]), tuple(r["replicas"])) for r in data["ranges"]
                ),
                quarantined={str(k): str(v) for k, v in data["quarantined"].items()},
                groups=tuple(GroupStatus(**g) for g in data["groups"]),
                groups_total=int(data["groups_total"]),
                groups_quiet=int(data.get("groups_quiet", 0)),
                group_counts={
                    str(k): int(v) for k, v in dict(data.get("group_counts", {})).items()
                },
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a STATUS JSON reply: {exc}") from None
