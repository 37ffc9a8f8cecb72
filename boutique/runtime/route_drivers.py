"""The two drivers of ``routing.RouteAttempts``: they make the attempts it asks for.

* ``route`` — for a task (the store's composite operations, the mover, admin commands,
  the library): a loop that asks for the next step, awaits the attempt (or the
  backoff), and feeds the outcome back.
* ``start_route`` — without a task (the line server's fast path, ``Router.start``):
  every attempt is a ``Pending`` whose ``then`` feeds the outcome back and starts the
  next attempt, from whatever resolved it. It makes no timers: at the first ``Wait`` it
  stops and hands the request back unsettled, for a task to carry on.

Neither decides anything: where to go next, what ends a request and what its result
is are ``RouteAttempts``' alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from .group import Pending
from .outcomes import Outcome, Rejected
from .requests import Propose, Read, Request
from .routing import Chooser, Finish, Forward, Result, RouteAttempts, Submit, Wait

__all__ = ["AttemptRunner", "RequestRunner", "Settled", "route", "start_route"]


class RequestRunner(Protocol):
    """Runs one attempt of a request for a task (``RaftHost`` is one)."""

    @property
    def id(self) -> int: ...

    async def execute_local(self, group_id: str, request: Request, timeout: float) -> Outcome: ...

    async def forward(
        self, peer: int, group_id: str, request: Request, timeout: float
    ) -> Outcome: ...


class AttemptRunner(Protocol):
    """Starts one attempt of a request with no task (``RaftHost`` is one): the
    ``Pending`` is resolved later, from the host's loop or a transport callback, or at
    once."""

    @property
    def id(self) -> int: ...

    def submit(self, group_id: str, request: Propose | Read, pending: Pending) -> None: ...

    def send_forward(
        self, peer: int, group_id: str, request: Request, pending: Pending
    ) -> None: ...

    def track(self, pending: Pending) -> None: ...


async def route(
    runner: RequestRunner,
    group_id: str,
    request: Request,
    timeout: float,
    chooser: Chooser,
    no_answer: str,
) -> Result:
    """Run ``request`` in ``group_id`` until it is settled, ``timeout`` passes or the
    chooser gives up; ``no_answer`` is the reason given if no attempt could be made."""
    attempts = RouteAttempts(
        runner.id,
        chooser,
        trio.current_time() + timeout,
        may_apply=request.may_apply,
        no_answer=no_answer,
    )
    while True:
        match attempts.next_step(trio.current_time()):
            case Finish(result):
                return result
            case Wait(until):
                await trio.sleep_until(until)
            case Submit(remaining):
                outcome = await runner.execute_local(group_id, request, remaining)
                attempts.attempted(outcome, trio.current_time())
            case Forward(peer, remaining):
                outcome = await runner.forward(peer, group_id, request, remaining)
                attempts.attempted(outcome, trio.current_time())


Settled = Callable[[Result | None, Outcome], None]
"""Told how a request driven without a task ended: its result, or None if it stopped
unsettled at a wait; and the last attempt's outcome."""


def start_route(
    runner: AttemptRunner,
    group_id: str,
    request: Propose | Read,
    attempts: RouteAttempts,
    clock: Callable[[], float],
    settled: Settled,
    last_outcome: Outcome | None = None,
) -> None:
    """Drive ``attempts`` for ``request`` with no task; ``settled`` is called exactly
    once (possibly before this returns). ``clock`` is the time ``attempts`` are
    decided by (the host's, the one its tracked requests expire by). Every attempt is
    ``track``ed, so each ends within the host's request timeout. ``last_outcome``: the
    outcome of an attempt the caller made itself and already fed to ``attempts``."""
    last: list[Outcome] = [last_outcome or Rejected("no attempt could be made in time")]

    def step() -> None:
        match attempts.next_step(clock()):
            case Finish(result):
                settled(result, last[0])
            case Wait():
                settled(None, last[0])
            case Submit():
                runner.submit(group_id, request, _attempt())
            case Forward(peer):
                runner.send_forward(peer, group_id, request, _attempt())

    def _attempt() -> Pending:
        pending = Pending(then=outcome_of_attempt)
        runner.track(pending)
        return pending

    def outcome_of_attempt(outcome: Outcome) -> None:
        last[:] = [outcome]
        attempts.attempted(outcome, clock())
        step()

    step()
