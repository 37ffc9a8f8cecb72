"""What became of a request in a group, and the one place that says what that means
for the caller.

A group resolves every request with an ``Outcome``: ``Applied`` (with the machine's
reply), ``Rejected`` (certainly not applied, e.g. not the leader) or ``Unknown`` (may or
may not have been applied). What the caller is told depends also on the kind of request:
an ``Unknown`` read had no effect, an ``Unknown`` write may have. ``classify`` turns the
two into the caller's answer class, and the store's router, the library's routing and
the line server all answer from it:

* ``Done`` — applied (or the read served): the reply;
* ``Refused`` — committed, and the machine refused it the same way on every replica
  (a ``CommandFailed``): nothing changed, the caller's input was bad;
* ``MaybeApplied`` — a write whose fate was not learnt: never retried blindly;
* ``NotApplied`` — certainly had no effect: retry, at ``leader`` if it is known.

This module is plain data and one pure function: no I/O, no trio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from boutique.machine import CommandFailed, WireValue

__all__ = [
    "Applied",
    "Done",
    "MaybeApplied",
    "NotApplied",
    "Outcome",
    "Refused",
    "Rejected",
    "Reply",
    "Unknown",
    "Verdict",
    "classify",
]

Reply: TypeAlias = WireValue | CommandFailed
"""What an applied request answers: the machine's reply or answer (or the view asked
for), or the ``CommandFailed`` every replica agreed on when the machine refused it."""


# --- What the group says ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """The command was applied (or the read served); ``reply`` is the machine's answer."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Rejected:
    """Certainly not applied. ``leader`` hints where to retry (0: unknown)."""

    reason: str
    leader: int = 0


@dataclass(frozen=True, slots=True)
class Unknown:
    """May or may not have been applied."""

    reason: str


Outcome = Applied | Rejected | Unknown


# --- What the caller is told -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """Applied, or the read served: ``reply`` is the machine's answer."""

    reply: WireValue


@dataclass(frozen=True, slots=True)
class Refused:
    """The machine refused the command (or query) the same way on every replica; the
    state is unchanged."""

    failed: CommandFailed


@dataclass(frozen=True, slots=True)
class MaybeApplied:
    """A request that changes the group was handed on, and its fate was not learnt."""

    reason: str


@dataclass(frozen=True, slots=True)
class NotApplied:
    """Certainly no effect; retry (at ``leader`` if not 0)."""

    reason: str
    leader: int = 0


Verdict = Done | Refused | MaybeApplied | NotApplied


def classify(outcome: Outcome, *, may_apply: bool) -> Verdict:
    """The caller's answer class for ``outcome`` of a request that changes the group
    (``may_apply``: a write, a membership change) or not (a read, a view, a transfer:
    see ``runtime.requests``)."""
    match outcome:
        case Applied(reply):
            if isinstance(reply, CommandFailed):
                return Refused(reply)
            return Done(reply)
        case Unknown(reason):
            # A request without effect is as good as refused: resending it is safe.
            return MaybeApplied(reason) if may_apply else NotApplied(reason)
        case Rejected(reason, leader):
            return NotApplied(reason, leader)
