"""Getting one group's requests to its leader, wherever it is, and classing the outcome.

A member proposes (or reads) locally when it leads, and otherwise forwards to the member
it believes leads; it follows leader hints and tries the other members until the
request's deadline, decided by the `runtime.routing.RouteAttempts` the bucket store's
`runtime.router.Router` uses too (driven by `runtime.route_drivers.route`); only the
choice of the next member is this module's. The caller gets exactly one answer: the
machine's reply, or an error from `errors` that says what is known about the outcome
(classed by `runtime.outcomes.classify`). A write handed to a leader whose fate was not
learnt ends in `Timeout` at once: retrying it could apply it twice.

This module never touches storage or the Raft core; it only talks to the `RaftHost`.
"""

from __future__ import annotations

from collections.abc import Callable

from boutique.machine import WireValue
from boutique.runtime.host import RaftHost
from boutique.runtime.outcomes import (
    Done,
    MaybeApplied,
    NotApplied,
    Outcome,
    Refused,
    classify,
)
from boutique.runtime.requests import Propose, Read
from boutique.runtime.route_drivers import route
from boutique.runtime.routing import Answered, Next

from .errors import CommandError, NoQuorum, Timeout, Unavailable

__all__ = ["RequestRouter", "settle"]


class RequestRouter:
    """Routes the requests of one group hosted by `host`.

    `candidates()` names the members worth trying when no leader is known.
    """

    def __init__(self, host: RaftHost, group_id: str, candidates: Callable[[], set[int]]) -> None:
        self.host = host
        self.group_id = group_id
        self.candidates = candidates
        self._last_good = 0

    def leader(self) -> int:
        """Who this node believes leads, 0 if nobody."""
        group = self.host.groups.get(self.group_id)
        return group.leader if group is not None else 0

    async def route(self, request: Propose | Read, timeout: float) -> WireValue:
        """Send a write or a read to the leader; the reply, or the error the outcome
        stands for (see the module docstring)."""
        chooser = _MemberChooser(self)
        result = await route(
            self.host, self.group_id, request, timeout, chooser, "no member answered"
        )
        if not isinstance(result, Answered):
            # Expired (this chooser never gives up early).
            error = Unavailable if chooser.leader_seen else NoQuorum
            raise error(f"group {self.group_id!r} is unavailable: {result.reason}")
        match result.verdict:
            case Done(reply):
                self._last_good = result.target
                return reply
            case Refused(failed):
                self._last_good = result.target
                raise CommandError(failed)
            case MaybeApplied(reason):
                # Retrying it could apply it twice.
                raise Timeout(reason)


class _MemberChooser:
    """The library's ``runtime.routing.Chooser``: the member a refusal names as leader, else
    the one this member believes leads, else the members not asked yet in id order;
    once every one was asked, wait a little (an election may be running) and start
    over."""

    def __init__(self, router: RequestRouter) -> None:
        self.router = router
        self.tried: set[int] = set()
        self.leader_seen = False
        """Whether any attempt learnt of a leader: if none did, the group has no quorum."""

    def first(self) -> int:
        router = self.router
        return router.leader() or router._last_good or router.host.id

    def next(self, target: int, refused: NotApplied) -> Next:
        tried, hint, local = self.tried, refused.leader, self.router.leader()
        self.leader_seen = self.leader_seen or bool(hint or local)
        tried.add(target)
        if hint and hint not in tried:
            return Next(hint)
        if local and local not in tried:
            return Next(local)
        me = self.router.host.id
        following = next((n for n in sorted(self.router.candidates()) if n not in tried), me)
        if following in tried:
            tried.clear()
            return Next(following, wait=True)
        return Next(following)

    def after_attempt(self) -> None:
        return None


def settle(request: Propose | Read, outcome: Outcome) -> WireValue:
    """The reply of an `Applied` outcome, or raise the error the outcome stands for
    (classed by `runtime.outcomes.classify`, as the bucket store classes it)."""
    match classify(outcome, may_apply=request.may_apply):
        case Refused(failed):
            raise CommandError(failed)
        case Done(reply):
            return reply
        case MaybeApplied(reason):
            raise Timeout(reason)
        case NotApplied(reason, _):
            raise Unavailable(reason)
