"""The kinds of request a node runs against its copy of a group, as typed values.

Every request on the path from a client command (or a mover, an admin command, a
library call) to a Raft group is one of these: the router picks where it runs, the host
runs it locally (``RaftHost.execute_local``) or forwards it to a peer
(``runtime.forwarding``), and the outcome comes back as an ``Outcome``.

``may_apply`` says what an ``Unknown`` outcome means for a kind: for a request that
changes the group (a write, a membership change) the caller must be told the outcome
is unknown; any other kind had no effect worth reporting, so a lost one is resent.

This module is plain data: it never does I/O and never imports trio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeGuard

from boutique.machine import WireValue
from boutique.raft import ChangeType

__all__ = [
    "ChangeMembership",
    "GroupLeaderView",
    "GroupRequest",
    "LeaderView",
    "LocalView",
    "Propose",
    "Read",
    "Request",
    "TransferLeader",
]


@dataclass(frozen=True, slots=True)
class Propose:
    """Propose ``data`` (an encoded command) in the group: a write."""

    data: bytes
    may_apply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Read:
    """A linearizable read of ``query`` (ReadIndex at the leader)."""

    query: WireValue
    may_apply: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class ChangeMembership:
    """Add or remove ``node`` (one member at a time); only the leader takes it."""

    change: ChangeType
    node: int
    may_apply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class LeaderView:
    """The leader's view of the group: members, their match indexes, the commit index
    and whether a membership change is still being applied (what a mover needs)."""

    may_apply: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class TransferLeader:
    """Hand leadership to ``target``; answered once ``target`` leads. Asking again is
    harmless, so a lost one is resent rather than reported unknown."""

    target: int
    may_apply: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class LocalView:
    """The asked node's own, possibly stale, view of the group (term, members, leader),
    whatever its role, or None if it does not host the group: what a node that lost
    its state asks before it may found or rejoin a group."""

    may_apply: ClassVar[bool] = False


Request = Propose | Read | ChangeMembership | LeaderView | TransferLeader | LocalView
"""Every kind of request a node runs for a group, locally or for a peer."""

GroupRequest = ChangeMembership | LeaderView | TransferLeader
"""The administrative kinds (a mover's and ADMIN's), routed to the leader like writes."""


@dataclass(frozen=True, slots=True)
class GroupLeaderView:
    """The answer to ``LeaderView``: the members, each one's match index, the commit
    index, and whether a membership change is proposed but not yet applied."""

    voters: tuple[int, ...]
    learners: tuple[int, ...]
    match: Mapping[int, int]
    commit: int
    pending_conf: bool

    def to_wire(self) -> WireValue:
        """A msgpack map (member ids as strings in ``match``: the wire form peers speak)."""
        return {
            "voters": [*self.voters],
            "learners": [*self.learners],
            "match": {str(member): index for member, index in self.match.items()},
            "commit": self.commit,
            "pending_conf": self.pending_conf,
        }

    @classmethod
    def from_wire(cls, value: object) -> GroupLeaderView:
        """Inverse of ``to_wire`` (arrays as lists or tuples); ``ValueError`` if
        malformed."""
        if not isinstance(value, dict):
            raise ValueError(f"a leader view is a map, not {type(value).__name__}")
        match, commit, pending = value.get("match"), value.get("commit"), value.get("pending_conf")
        if not (isinstance(match, dict) and _is_int(commit) and type(pending) is bool):
            raise ValueError("a leader view needs match, commit and pending_conf")
        try:
            indexes = {int(member): index for member, index in match.items()}
        except (TypeError, ValueError):
            raise ValueError("a leader view's match is keyed by member ids") from None
        if not all(_is_int(index) for index in indexes.values()):
            raise ValueError("a leader view's match indexes are ints")
        return cls(
            _ids(value.get("voters")),
            _ids(value.get("learners")),
            indexes,
            commit,
            pending,
        )


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


def _ids(value: object) -> tuple[int, ...]:
    if not (isinstance(value, list | tuple) and all(_is_int(v) for v in value)):
        raise ValueError("a leader view's members are arrays of ids")
    return tuple(value)
