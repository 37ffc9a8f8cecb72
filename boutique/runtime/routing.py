"""The routing decision procedure: where one request goes next, until it is settled.

Every routed request — the bucket store's ``Router`` (its composite operations and the
line server's fast path, ``Router.start``) and the library's ``RequestRouter`` — is
decided by one ``RouteAttempts``: a state machine with no I/O and no clock of its own.
The driver asks it what to do (``next_step(now)``), does it, and feeds the attempt's
``Outcome`` back (``attempted(outcome, now)``):

1. ``Submit``: run the request in this node's copy of the group;
2. ``Forward``: run it at peer ``peer``;
3. ``Wait``: every target was asked; ask again at ``until`` (backoff, doubling from
   ``FIRST_BACKOFF`` up to ``MAX_BACKOFF``, never past the deadline);
4. ``Finish``: the result — ``Answered`` (settled at a target), ``Expired`` (the
   deadline passed first: certainly not applied) or ``GaveUp`` (the chooser saw that
   waiting cannot help, or that the request's target changed under it).

Each outcome is classed by ``outcomes.classify``: the first that settles the request
ends it. Never retried: a request that may have been applied (``MaybeApplied``), or one
the machine refused (``Refused``). Which target comes next is the ``Chooser``'s: the
store tries the replicas its catalog lists (``ReplicaChooser``, here), the library the
members of its group (``group.routing``). The drivers are ``runtime.route_drivers``.

This module never does I/O, never reads a clock (time is passed in) and never imports
trio: it can be stepped by a test or a simulator by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeAlias

from .outcomes import Done, MaybeApplied, NotApplied, Outcome, Refused, classify

__all__ = [
    "FIRST_BACKOFF",
    "MAX_BACKOFF",
    "Answered",
    "Chooser",
    "Expired",
    "Finish",
    "Forward",
    "GaveUp",
    "GiveUpKind",
    "Next",
    "ReplicaChooser",
    "ReplicaView",
    "Result",
    "RouteAttempts",
    "Step",
    "Submit",
    "Wait",
]

FIRST_BACKOFF = 0.01
"""Seconds waited the first time every target was asked."""
MAX_BACKOFF = 0.2
"""The longest wait between rounds of asking every target."""


# --- Results ---------------------------------------------------------------------------


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


class GiveUpKind(Enum):
    """Why a chooser stopped before the deadline (the request certainly was not applied
    by the attempts made so far)."""

    UNAVAILABLE = "unavailable"
    """Waiting cannot help (the only replica is out of service, this node does not
    serve yet, the bucket left this node's catalog)."""
    NOT_FOUND = "not found"
    """The request's bucket was dropped and re-created elsewhere meanwhile."""


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The chooser ended the request early; ``reason`` says why."""

    kind: GiveUpKind
    reason: str


Result: TypeAlias = Answered | Expired | GaveUp


# --- Steps -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """Run the request in this node's copy of the group, for up to ``timeout`` s."""

    timeout: float


@dataclass(frozen=True, slots=True)
class Forward:
    """Run the request at ``peer``, for up to ``timeout`` s."""

    peer: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before ``until`` (then ask ``next_step`` again)."""

    until: float


@dataclass(frozen=True, slots=True)
class Finish:
    """The request is over: ``result``."""

    result: Result


Step: TypeAlias = Submit | Forward | Wait | Finish


# --- Choosers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Next:
    """Try ``target`` next; ``wait`` first (back off) if every target was asked."""

    target: int
    wait: bool = False


class Chooser(Protocol):
    """Where a request goes, attempt after attempt. Its methods may end the request
    early by answering ``GaveUp``."""

    def first(self) -> int:
        """The first target."""
        ...

    def next(self, target: int, refused: NotApplied) -> Next | GaveUp:
        """``target`` certainly did not apply the request: what comes next."""
        ...

    def after_attempt(self) -> GaveUp | None:
        """Called after every attempt that settled nothing (and after the wait)."""
        ...


# --- The state machine -----------------------------------------------------------------


class RouteAttempts:
    """One request's routing, from its first attempt to its result.

    Drive it: ``step = next_step(now)``; on ``Submit``/``Forward`` make the attempt and
    call ``attempted(outcome, now)`` with what it came to; on ``Wait`` call
    ``next_step`` again at ``until``; ``Finish`` is final (asked again, it repeats).
    Only one attempt is in flight at a time.
    """

    def __init__(
        self,
        me: int,
        chooser: Chooser,
        deadline: float,
        *,
        may_apply: bool,
        no_answer: str,
    ) -> None:
        """``me``: this node's id (the target run by ``Submit``); ``deadline``: when
        to give up; ``may_apply``: whether the request changes the group (see
        ``runtime.requests``); ``no_answer``: the reason given if no attempt could even
        be made."""
        self.me = me
        self.chooser = chooser
        self.deadline = deadline
        self.may_apply = may_apply
        self.target = chooser.first()
        self.attempts = 0
        self._backoff = FIRST_BACKOFF
        self._last_reason = no_answer
        self._wait_until: float | None = None
        self._in_flight = False
        self._result: Result | None = None

    @property
    def result(self) -> Result | None:
        """The result once the request is over, else None."""
        return self._result

    def next_step(self, now: float) -> Step:
        """What to do at ``now``."""
        if self._result is not None:
            return Finish(self._result)
        if self._in_flight:
            raise RuntimeError("an attempt is in flight: report its outcome first")
        if self._wait_until is not None:
            if now < self._wait_until:
                return Wait(self._wait_until)
            self._wait_until = None
            gave_up = self.chooser.after_attempt()
            if gave_up is not None:
                return self._finish(gave_up)
        remaining = self.deadline - now
        if remaining <= 0:
            return self._finish(Expired(self._last_reason))
        self._in_flight = True
        self.attempts += 1
        if self.target == self.me:
            return Submit(remaining)
        return Forward(self.target, remaining)

    def attempted(self, outcome: Outcome, now: float) -> Result | None:
        """The attempt asked for by the last ``next_step`` came to ``outcome`` at
        ``now``; the result if that settled the request."""
        if not self._in_flight:
            raise RuntimeError("no attempt is in flight")
        self._in_flight = False
        verdict = classify(outcome, may_apply=self.may_apply)
        if not isinstance(verdict, NotApplied):
            return self._finish(Answered(verdict, self.target)).result
        self._last_reason = verdict.reason
        chosen = self.chooser.next(self.target, verdict)
        if isinstance(chosen, GaveUp):
            return self._finish(chosen).result
        self.target = chosen.target
        if chosen.wait:
            self._wait_until = min(now + self._backoff, self.deadline)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            return None
        gave_up = self.chooser.after_attempt()
        return None if gave_up is None else self._finish(gave_up).result

    def _finish(self, result: Result) -> Finish:
        self._result = result
        return Finish(result)


# --- The store's choice of replica -----------------------------------------------------


class ReplicaView(Protocol):
    """What the store's chooser reads of its node, each time it decides."""

    @property
    def id(self) -> int: ...

    @property
    def quarantined(self) -> Mapping[str, str]: ...

    @property
    def waiting_for_peers(self) -> str | None:
        """Why this node does not serve yet, or None."""
        ...


class ReplicaChooser:
    """The store's ``Chooser``: a request goes to a group's replicas, first to
    ``first`` (the last known leader, see ``Router``), then following leader hints
    among the replicas, else to the replicas not asked yet in order; once all were,
    wait and start over. It gives up early when waiting cannot help, and — for a
    request to ``bucket`` — when the bucket changed under it: ``catalog_group()`` is
    the bucket's group in this node's catalog now (None: not listed), ``was_listed``
    whether the catalog listed the bucket when the request began."""

    def __init__(
        self,
        view: ReplicaView,
        group: str,
        replicas: tuple[int, ...],
        first: int,
        *,
        why: Callable[[str], str] = lambda reason: reason,
        bucket: str | None = None,
        was_listed: bool = False,
        catalog_group: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.view = view
        self.group = group
        self.replicas = replicas
        self._first = first
        self.why = why
        """Adds to a reason why this node does not serve yet, if it does not."""
        self.bucket = bucket
        self.was_listed = was_listed
        self.catalog_group = catalog_group
        self.tried: list[int] = []

    def first(self) -> int:
        return self._first

    def next(self, target: int, refused: NotApplied) -> Next | GaveUp:
        view, replicas, tried = self.view, self.replicas, self.tried
        reason, leader = refused.reason, refused.leader
        if leader and leader in replicas and leader != target:
            return Next(leader)
        tried.append(target)
        following = next((r for r in replicas if r not in tried), replicas[0])
        if leader:
            # A hint outside the replicas (or at the node that refused): try the next.
            return Next(following, wait=True)
        if replicas == (view.id,) and self.group in view.quarantined:
            # Its only replica took it out of service: waiting helps nobody.
            return GaveUp(GiveUpKind.UNAVAILABLE, self.why(reason))
        if len(tried) < len(replicas):
            return Next(following)
        if view.waiting_for_peers is not None:
            # Every replica refused and this node cannot help yet: say so now rather
            # than after the whole request timeout.
            return GaveUp(GiveUpKind.UNAVAILABLE, self.why(reason))
        tried.clear()
        return Next(following, wait=True)

    def after_attempt(self) -> GaveUp | None:
        bucket = self.bucket
        if bucket is None:
            return None
        # The bucket may have been dropped and re-created meanwhile. Only a catalog
        # entry for another group proves it: a missing entry may just mean this node's
        # registry lags the linearizable lookup that found it.
        group = self.catalog_group()
        if group is not None and group != self.group:
            return GaveUp(GiveUpKind.NOT_FOUND, bucket)
        if self.was_listed and group is None:
            # Dropped here since the request began: its group may be closed on every
            # replica, so waiting out the deadline would serve nothing.
            return GaveUp(GiveUpKind.UNAVAILABLE, f"bucket {bucket} left this node's catalog")
        return None
