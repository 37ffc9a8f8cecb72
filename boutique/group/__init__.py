"""Replicate your own state machine: the consensus library's public face.

`Member` (trio) and `BlockingMember` (plain code) start one member of a group that
replicates a user's `boutique.machine.StateMachine` with Raft. Commands and
linearizable queries work from any member; members can be added, removed, and handed
leadership. `boutique/__init__.py` re-exports everything here.

Inside: `member` (the trio API), `blocking` (the same from a background thread),
`envelope` (the user's machine plus the group's replicated address book and queued
membership changes), `routing` (getting requests to the leader), `duties` (what a
member does in the background), `errors`.

Nothing here is used by the bucket store: the store and the library share the runtime,
not this package.
"""

from .blocking import BlockingMember
from .errors import (
    CommandError,
    GroupError,
    MembershipError,
    NoQuorum,
    NotLeader,
    Removed,
    Timeout,
    Unavailable,
)
from .member import Member, MemberStatus

__all__ = [
    "BlockingMember",
    "CommandError",
    "GroupError",
    "Member",
    "MemberStatus",
    "MembershipError",
    "NoQuorum",
    "NotLeader",
    "Removed",
    "Timeout",
    "Unavailable",
]
