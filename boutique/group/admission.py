"""Whether a member whose storage holds nothing of its group may found it.

A member with no record of its group (in memory after a restart, or a durable member
whose data directory is new or was wiped) cannot tell from its own storage whether this
is the group's first start or a restart after losing its state. Founding the group
again in the second case is the amnesia Raft cannot survive: the member would come back
as a voter with term 1, an empty log and no vote, and its vote could elect a leader
that lacks entries the member's previous incarnation had acknowledged. Ongaro's thesis
(§3.8, persisted state and server restarts) lets a server that lost its state come back
only with a new identity, through a membership change (chapter 4; §4.2.1: new servers
join as non-voting members and catch up first). Once the removal of the old incarnation
is committed, no configuration holds it any more, so adding the same id back is, to
Raft, adding a new server.

So before it hosts the group, such a member asks every member it knows for its own view
of the group (`RaftHost.execute_local` kind "p") and `decide`s:

- Some member's term is above 1: the group has held an election, so it exists. If that
  view lists this member as a voter, it lost its state: it must be removed and added
  again as a learner (`REJOIN`), and host the group only once the removal is committed,
  so no candidate counts its vote until the leader re-admits it. Otherwise it hosts the
  group empty and waits to be added (`JOIN`).
- Every other founder answered and none has held an election: no member can have
  voted or acknowledged anything yet (with pre-vote, the first term above 1 needs a
  majority of founders), so founding is safe (`FOUND`).
- Otherwise it cannot tell (a founder did not answer, or a joiner sees no live group):
  it waits and asks again (`WAIT`). Unsure never means voting.

This module is pure: it never does I/O, never touches trio or the Raft core.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

__all__ = ["GroupView", "Verdict", "decide", "parse_view"]


class Verdict(enum.Enum):
    FOUND = "found"
    """Bootstrap the group as one of its founding voters."""
    JOIN = "join"
    """Host the group empty, without bootstrapping; wait to be added."""
    REJOIN = "rejoin"
    """Ask to be removed and added again; host the group once the removal is done."""
    WAIT = "wait"
    """Not enough answers to decide: ask again later."""


@dataclass(frozen=True, slots=True)
class GroupView:
    """One member's own (possibly stale) view of the group."""

    term: int
    voters: frozenset[int]
    learners: frozenset[int]


def parse_view(value: object) -> GroupView | None:
    """A `RaftHost.local_view` as it arrives over the wire; None for "not hosted here".
    `ValueError` if malformed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"not a group view: {value!r}")
    term, voters, learners = value.get("term"), value.get("voters"), value.get("learners")
    if type(term) is not int or term < 0:
        raise ValueError(f"not a group view: bad term {term!r}")
    if not isinstance(voters, list | tuple) or not isinstance(learners, list | tuple):
        raise ValueError("not a group view: bad membership")
    if not all(type(n) is int for n in (*voters, *learners)):
        raise ValueError("not a group view: member ids must be ints")
    return GroupView(term, frozenset(voters), frozenset(learners))


def decide(
    me: int,
    founders: Collection[int],
    joining: bool,
    answers: Mapping[int, GroupView | None],
) -> Verdict:
    """What a member with no record of its group does, given the members that answered
    (node -> its view, None if it does not host the group; silent members are absent)."""
    elected = [view for view in answers.values() if view is not None and view.term > 1]
    if elected:
        newest = max(elected, key=lambda view: view.term)
        return Verdict.REJOIN if me in newest.voters else Verdict.JOIN
    if joining:
        # A joiner needs a group that exists; it has not seen one yet.
        return Verdict.WAIT
    if all(founder in answers for founder in founders if founder != me):
        return Verdict.FOUND
    return Verdict.WAIT
