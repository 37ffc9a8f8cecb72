"""Getting one group's requests to its leader, wherever it is, and classing the outcome.

A member proposes (or reads) locally when it leads, and otherwise forwards to the member
it believes leads; it follows leader hints and tries the other members until the
request's deadline, the way the bucket store's `runtime.router.Router` does. The caller
gets exactly one answer: the machine's reply, or an error from `errors` that says what
is known about the outcome (classed by `runtime.outcomes.classify`). A write handed to a leader whose fate was not learnt ends
in `Timeout` at once: retrying it could apply it twice.

This module never touches storage or the Raft core; it only talks to the `RaftHost`.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

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
        me = self.host.id
        deadline = trio.current_time() + timeout
        target = self.leader() or self._last_good or me
        backoff = 0.01
        tried: set[int] = set()
        leader_seen = False
        last_reason = "no member answered"
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                error = Unavailable if leader_seen else NoQuorum
                raise error(f"group {self.group_id!r} is unavailable: {last_reason}")
            outcome: Outcome
            if target == me:
                outcome = await self.host.execute_local(self.group_id, request, remaining)
            else:
                outcome = await self.host.forward(target, self.group_id, request, remaining)
            match classify(outcome, may_apply=request.may_apply):
                case Done(reply):
                    self._last_good = target
                    return reply
                case Refused(failed):
                    self._last_good = target
                    raise CommandError(failed)
                case MaybeApplied(reason):
                    # Retrying it could apply it twice.
                    raise Timeout(reason)
                case NotApplied(reason, hint):
                    last_reason = reason
            local = self.leader()
            leader_seen = leader_seen or bool(hint or local)
            tried.add(target)
            if hint and hint not in tried:
                target = hint
            elif local and local not in tried:
                target = local
            else:
                target = next((n for n in sorted(self.candidates()) if n not in tried), me)
                if target in tried:
                    # Everyone was asked: wait a little (an election may be running).
                    tried.clear()
                    await trio.sleep(min(backoff, max(0.0, deadline - trio.current_time())))
                    backoff = min(backoff * 2, 0.2)


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
