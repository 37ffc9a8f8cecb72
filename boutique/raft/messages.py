"""The vocabulary of the Raft core: log entries, durable state and the messages peers exchange.

Every type here is a frozen, slotted dataclass so messages can be shared between
nodes of a simulation without copying and can never be mutated in flight. This module
must never do I/O and never encode for the wire: the transport (``boutique.runtime``)
owns serialisation, and it never uses pickle.

Node ids are positive integers; ``NONE`` (0) means "no node".
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

NONE = 0
"""The node id that means "nobody" (no vote cast, no known leader)."""


class EntryType(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """Application data for the state machine."""
    NOOP = 1
    """The empty entry a new leader appends to commit entries of earlier terms (§5.4.2)."""
    CONF_CHANGE = 2
    """A membership change, encoded by :func:`encode_conf_change`."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``(index, term)`` identifies it uniquely across the cluster."""

    term: int
    index: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    def size(self) -> int:
        """Approximate size in bytes, used for batching limits."""
        return len(self.data) + 16


@dataclass(frozen=True, slots=True)
class HardState:
    """The state a node must persist before it answers any message (Figure 2)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """A group's membership: the voters and the learners (non-voting members)."""

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def members(self) -> frozenset[int]:
        return self.voters | self.learners


class ChangeType(enum.IntEnum):
    ADD_VOTER = 0
    """Add a voter, or promote a learner to voter."""
    ADD_LEARNER = 1
    """Add a non-voting learner (it catches up before it is promoted)."""
    REMOVE = 2
    """Remove a voter or a learner."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change. User proposals change one member at a time (§4.1 of
    Ongaro's thesis); only the bootstrap entry lists several."""

    changes: tuple[tuple[ChangeType, int], ...]

    @classmethod
    def single(cls, kind: ChangeType, node: int) -> ConfChange:
        return cls(((kind, node),))

    def apply_to(self, conf: ConfState) -> ConfState:
        voters, learners = set(conf.voters), set(conf.learners)
        for kind, node in self.changes:
            if kind is ChangeType.ADD_VOTER:
                learners.discard(node)
                voters.add(node)
            elif kind is ChangeType.ADD_LEARNER:
                if node not in voters:
                    learners.add(node)
            else:
                voters.discard(node)
                learners.discard(node)
        return ConfState(frozenset(voters), frozenset(learners))


_CHANGE_CODES = {ChangeType.ADD_VOTER: "+", ChangeType.ADD_LEARNER: "~", ChangeType.REMOVE: "-"}
_CODE_CHANGES = {code: kind for kind, code in _CHANGE_CODES.items()}


def encode_conf_change(change: ConfChange) -> bytes:
    """A tiny, stable text encoding (``+1,+2,~4,-3``), so the core needs no codec."""
    return ",".join(f"{_CHANGE_CODES[kind]}{node}" for kind, node in change.changes).encode()


def decode_conf_change(data: bytes) -> ConfChange:
    """Inverse of :func:`encode_conf_change`; raises ``ValueError`` on malformed data."""
    changes = []
    for part in data.decode("ascii").split(","):
        if len(part) < 2 or part[0] not in _CODE_CHANGES:
            raise ValueError(f"malformed conf change {data!r}")
        node = int(part[1:])
        if node <= 0:
            raise ValueError(f"malformed conf change {data!r}")
        changes.append((_CODE_CHANGES[part[0]], node))
    return ConfChange(tuple(changes))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log and the membership at that point."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


class Chunks:
    """Bytes held as a sequence of pieces, never joined into one object.

    A snapshot of a large state machine may be gigabytes: joining it would copy all of
    it in one go (seconds on a busy host) and need the memory twice. ``Chunks`` offers
    what the core and the storage need of snapshot data without that: its length,
    slices (which copy only the slice), the pieces in order, and equality by content.
    It must never be mutated: the pieces are shared, not copied.
    """

    __slots__ = ("_ends", "_length", "pieces")

    def __init__(self, pieces: Iterable[bytes] = ()) -> None:
        self.pieces: tuple[bytes, ...] = tuple(p for p in pieces if p)
        ends = []
        total = 0
        for piece in self.pieces:
            total += len(piece)
            ends.append(total)
        self._ends = ends
        self._length = total

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, item: slice) -> bytes:
        start, stop, step = item.indices(self._length)
        if step != 1:
            raise ValueError("Chunks slices take no step")
        if stop <= start:
            return b""
        # The first piece ending after ``start``, then pieces until ``stop`` is covered.
        i = bisect.bisect_right(self._ends, start)
        out = []
        while start < stop:
            piece = self.pieces[i]
            begin = self._ends[i] - len(piece)
            take = piece[start - begin : stop - begin]
            out.append(take)
            start += len(take)
            i += 1
        return out[0] if len(out) == 1 else b"".join(out)

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Chunks):
            return len(other) == self._length and bytes(other) == bytes(self)
        if isinstance(other, bytes):
            return len(other) == self._length and other == bytes(self)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        return f"Chunks({len(self.pieces)} pieces, {self._length} bytes)"


SnapshotData = bytes | Chunks
"""What a snapshot's data may be: one ``bytes``, or ``Chunks`` for a large one."""


def pieces_of(data: SnapshotData) -> tuple[bytes, ...]:
    """The pieces of snapshot data in order (one for plain ``bytes``, none if empty)."""
    if isinstance(data, Chunks):
        return data.pieces
    return (data,) if data else ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine image covering the log up to ``meta.index``."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: SnapshotData = b""


# --- Messages -------------------------------------------------------------------------
#
# Every message carries the sender, the receiver and the sender's term. Dispatch is by
# type with ``match``; there is no stringly-typed "kind" field.


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """RequestVote (§5.2), or its pre-vote probe (thesis §9.6) when ``pre_vote``.

    A pre-vote carries the term the candidate *would* campaign in, without having
    incremented its own. ``force`` marks an election started by leader transfer, which
    voters grant even while they believe a leader is alive (thesis §3.10).
    """

    frm: int
    to: int
    term: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    force: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse:
    frm: int
    to: int
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """AppendEntries (§5.3): entries following ``(prev_log_index, prev_log_term)``."""

    frm: int
    to: int
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """The answer to an AppendRequest.

    On success ``index`` is the last index now known to match the leader. On rejection
    ``index`` is the rejected ``prev_log_index`` and ``(hint_index, hint_term)`` lets the
    leader skip a whole term of conflicting entries at once (fast backtracking).
    """

    frm: int
    to: int
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader liveness and commit propagation. ``read_round`` > 0 asks the follower to
    confirm leadership for that batch of ReadIndex requests; ``quiesce`` tells it the
    group is idle and the leader will stay silent until there is work."""

    frm: int
    to: int
    term: int
    commit: int
    read_round: int = 0
    quiesce: bool = False


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    frm: int
    to: int
    term: int
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One piece of InstallSnapshot (§7), sent in order; ``done`` marks the last one."""

    frm: int
    to: int
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """Acknowledges snapshot bytes received so far (``received``), or asks the leader to
    restart from ``received`` when a chunk arrived out of order (``reject``)."""

    frm: int
    to: int
    term: int
    snapshot_index: int
    received: int
    reject: bool = False
    installed: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Tells a caught-up follower to start an election at once (leader transfer)."""

    frm: int
    to: int
    term: int


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower asks the leader for a safe read index on behalf of its clients."""

    frm: int
    to: int
    term: int
    contexts: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """The leader's answer: reads with these contexts may be served once the follower has
    applied up to ``index``."""

    frm: int
    to: int
    term: int
    index: int
    contexts: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TransferLeaderRequest:
    """A follower forwards a leadership-transfer request to the leader."""

    frm: int
    to: int
    term: int
    target: int


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | SnapshotChunk
    | SnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
    | TransferLeaderRequest
)
"""Every message a Raft node sends to another."""

MESSAGE_TYPES: tuple[type, ...] = (
    VoteRequest,
    VoteResponse,
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    SnapshotChunk,
    SnapshotResponse,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
    TransferLeaderRequest,
)
