"""Getting one group's requests to its leader, wherever it is, and classing the outcome.

A member proposes (or reads) locally when it leads, and otherwise forwards to the member
it believes leads; it follows leader hints and tries the other members until the
request's deadline, the way the bucket store's `runtime.router.Router` does. The caller
gets exactly one answer: the machine's reply, or an error from `errors` that says what
is known about the outcome. A write handed to a leader whose fate was not learnt ends
in `Timeout` at once: retrying it could apply it twice.

This module never touches storage or the Raft core; it only talks to the `RaftHost`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from boutique.machine import CommandFailed
from boutique.runtime.group import Applied, Outcome, Rejected, Unknown
from boutique.runtime.host import RaftHost
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

    async def route(self, request: Propose | Read, timeout: float) -> Any:
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
            if isinstance(outcome, Applied):
                self._last_good = target
                return settle(request, outcome)
            if isinstance(outcome, Unknown) and request.may_apply:
                settle(request, outcome)
            last_reason = outcome.reason
            hint = outcome.leader if isinstance(outcome, Rejected) else 0
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


def settle(request: Propose | Read, outcome: Outcome) -> Any:
    """The reply of an `Applied` outcome, or raise the error the outcome stands for."""
    match outcome:
        case Applied(CommandFailed() as failed):
            raise CommandError(failed)
        case Applied(reply):
            return reply
        case Unknown(reason):
            raise Timeout(reason, maybe_applied=request.may_apply)
        case Rejected(reason, _):
            raise Unavailable(reason)
