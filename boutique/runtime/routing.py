"""The routing loop: get one request to a group's leader, wherever it is, by a deadline.

Both the bucket store's ``Router`` and the library's ``RequestRouter`` run a request the
same way: try it at a target (locally if the target is this node, else forwarded), class
the outcome (``outcomes.classify``), and stop at the first outcome that settles it;
while it certainly was not applied, pick another target and try again, waiting a
little (doubling, up to ``MAX_BACKOFF``) whenever the chooser says everyone was asked,
until the deadline. Which target comes next, and when to give up early, differ between
the two, so that is the ``Chooser``'s: the store tries the replicas its catalog lists,
the library the members of its group.

Never retried: a request that may have been applied (``MaybeApplied``), or one the
machine refused (``Refused``). The loop returns them to the caller, which raises its own
error for each.

This module never touches storage or the Raft core, and awaits only the request and
the backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from .outcomes import Done, MaybeApplied, NotApplied, Outcome, Refused, classify
from .requests import Request

__all__ = ["Answered", "Chooser", "Expired", "RequestRunner", "route"]

FIRST_BACKOFF = 0.01
"""Seconds waited the first time every target was asked."""
MAX_BACKOFF = 0.2
"""The longest wait between rounds of asking every target."""


class RequestRunner(Protocol):
    """Runs one attempt of a request (``RaftHost`` is one)."""

    @property
    def id(self) -> int: ...

    async def execute_local(self, group_id: str, request: Request, timeout: float) -> Outcome: ...

    async def forward(
        self, peer: int, group_id: str, request: Request, timeout: float
    ) -> Outcome: ...


class Chooser(Protocol):
    """Where a request goes, attempt after attempt. Its methods may raise the caller's
    own errors to give up early (the request certainly was not applied then)."""

    def first(self) -> int:
        """The first target."""
        ...

    def next(self, target: int, refused: NotApplied) -> tuple[int, bool]:
        """``target`` certainly did not apply the request: the next target, and
        whether to wait (back off) before trying it."""
        ...

    def after_attempt(self) -> None:
        """Called after every attempt that settled nothing (and after the wait)."""
        ...


@dataclass(frozen=True, slots=True)
class Answered:
    """The request was settled at ``target``."""

    verdict: Done | Refused | MaybeApplied
    target: int


@dataclass(frozen=True, slots=True)
class Expired:
    """The deadline passed before any target settled the request: it certainly was not
    applied. ``reason`` is why the last attempt failed."""

    reason: str


async def route(
    runner: RequestRunner,
    group_id: str,
    request: Request,
    timeout: float,
    chooser: Chooser,
    no_answer: str,
) -> Answered | Expired:
    """Run ``request`` in ``group_id`` until it is settled or ``timeout`` passes;
    ``no_answer`` is the reason given if no attempt could even be made."""
    deadline = trio.current_time() + timeout
    target = chooser.first()
    backoff = FIRST_BACKOFF
    last_reason = no_answer
    while True:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            return Expired(last_reason)
        if target == runner.id:
            outcome = await runner.execute_local(group_id, request, remaining)
        else:
            outcome = await runner.forward(target, group_id, request, remaining)
        verdict = classify(outcome, may_apply=request.may_apply)
        if not isinstance(verdict, NotApplied):
            return Answered(verdict, target)
        last_reason = verdict.reason
        target, wait = chooser.next(target, verdict)
        if wait:
            await trio.sleep(min(backoff, max(0.0, deadline - trio.current_time())))
            backoff = min(backoff * 2, MAX_BACKOFF)
        chooser.after_attempt()
