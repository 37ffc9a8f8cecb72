"""CREATEs in batches: many buckets created by one registry entry, and no task.

A CREATE is a registry write: a meta-group Raft entry, replicated and applied on every
node, and, from any node but the meta leader, a request forwarded to it. That work, not
the catalog entry, was most of what a CREATE cost. So the line server's CREATEs
(``Router.start_create``) queue here, and whenever fewer than ``MAX_BATCHES_IN_FLIGHT``
batches are being routed, the queue leaves as one ``("create_many", names)`` proposal
(see ``boutique.registry``), routed to the meta group like any write, by the attempts'
callbacks (``route_drivers.start_route``) from wherever an attempt ends (the host's
turn, a transport callback). Under load the queue fills while the batches in flight
are out, so a batch grows with the load, as a group commit does; a CREATE on an idle
node leaves at once, alone.

The registry answers each name on its own, and each caller is told its own ``Outcome``
(``batch_outcomes``), as ``Router.start`` tells a key command's caller:

* ``("created", info)``: ``Applied`` with that reply;
* ``("failed", type, message)``: ``Applied(CommandFailed)``: that name alone was
  refused (bad input), as its own ``create`` entry would have been;
* ``("exists", info)``: ``Rejected``: the caller hands it to the full router
  (``router_flows.create``), which checks that no DROP fenced the bucket it found;
* for the whole entry: an unknown outcome is ``Unknown`` for every name (a CREATE
  whose fate is unknown is never retried blindly); a deadline that passed with every
  attempt certainly refused is ``DeadlinePassed``; anything else that settled nothing
  (a backoff was due, the registry refused the entry as a whole) is ``Rejected``, so
  each name goes to the full router.

This module decides nothing about where a request goes (``routing.RouteAttempts``
does) and never awaits.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from functools import partial

from boutique.machine import CommandFailed, MachineHost, WireValue, wire_items
from boutique.registry import META_GROUP

from .outcomes import Applied, Done, MaybeApplied, Outcome, Refused, Rejected, Unknown
from .requests import Propose
from .route_drivers import AttemptRunner, start_route
from .route_errors import DeadlinePassed
from .routing import Answered, Chooser, Expired, GaveUp, Result, RouteAttempts

__all__ = [
    "MAX_BATCH",
    "MAX_BATCHES_IN_FLIGHT",
    "CreateBatcher",
    "batch_outcomes",
]

log = logging.getLogger("boutique.create_batch")

MAX_BATCH = 256
"""Names in one ``create_many`` entry at most (255 bytes each: under 70 kB)."""
MAX_BATCHES_IN_FLIGHT = 2
"""Batches one node routes at once: one being answered while the next is replicated."""

EXISTS = "the bucket exists: the full router checks that no DROP fenced it"

Then = Callable[[Outcome], None]


class CreateBatcher:
    """The CREATEs of one router waiting for, or in, a ``create_many`` entry.

    ``runner`` makes the attempts (the node); ``clock`` is the time they are decided
    by, ``timeout`` each batch's deadline; ``chooser()`` a fresh choice of meta
    replica for a batch; ``answered_by(target)`` is told which node settled one (a
    leader hint); ``why(reason)`` adds to the reason of a passed deadline why this
    node does not serve yet, if it does not.
    """

    def __init__(
        self,
        runner: AttemptRunner,
        clock: Callable[[], float],
        timeout: float,
        chooser: Callable[[], Chooser],
        answered_by: Callable[[int], None],
        why: Callable[[str], str],
    ) -> None:
        self._runner = runner
        self._clock = clock
        self._timeout = timeout
        self._chooser = chooser
        self._answered_by = answered_by
        self._why = why
        self._queue: deque[tuple[str, Then]] = deque()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Batches being routed now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """CREATEs waiting for a batch to leave."""
        return len(self._queue)

    def start(self, name: str, then: Then) -> None:
        """Create bucket ``name`` (a valid name); ``then`` is called once with its
        outcome (see the module docstring), possibly before this returns. It must not
        block: it runs inside the host's turn."""
        self._queue.append((name, then))
        self._send()

    def _send(self) -> None:
        queue = self._queue
        while queue and self._in_flight < MAX_BATCHES_IN_FLIGHT:
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
            names: list[WireValue] = [name for name, _ in batch]
            request = Propose(MachineHost.encode_command(("create_many", names)))
            attempts = RouteAttempts(
                self._runner.id,
                self._chooser(),
                self._clock() + self._timeout,
                may_apply=True,
                no_answer="no replica answered",
            )
            # Counted before it starts: it may be settled before start_route returns.
            self._in_flight += 1
            start_route(
                self._runner,
                META_GROUP,
                request,
                attempts,
                self._clock,
                partial(self._settled, batch),
            )

    def _settled(self, batch: list[tuple[str, Then]], result: Result | None, _: Outcome) -> None:
        self._in_flight -= 1
        if isinstance(result, Answered) and isinstance(result.verdict, Done | Refused):
            self._answered_by(result.target)
        if isinstance(result, Expired):
            result = Expired(self._why(result.reason))
        for (name, then), outcome in zip(batch, batch_outcomes(len(batch), result), strict=True):
            try:
                then(outcome)
            except Exception:
                # One caller's failure must not cost the others their answers.
                log.exception("the completion of CREATE %s failed", name)
        self._send()


def batch_outcomes(count: int, result: Result | None) -> list[Outcome]:
    """What each of the ``count`` CREATEs of a batch is told, in order, when routing
    its ``create_many`` entry ended with ``result`` (None: not settled before a
    backoff was due). See the module docstring."""
    match result:
        case Answered(Done(reply)):
            try:
                replies = wire_items(reply, count)
            except TypeError:
                return [Unknown("the registry's reply to a batch could not be read")] * count
            return [_one(reply) for reply in replies]
        case Answered(MaybeApplied(reason)):
            return [Unknown(reason)] * count
        case Answered(Refused(failed)):
            return [Rejected(f"the registry refused a batch of creates: {failed.message}")] * count
        case Expired(reason):
            return [DeadlinePassed(reason)] * count
        case GaveUp(_, reason):
            return [Rejected(reason)] * count
        case _:  # None: not settled before a backoff was due
            return [Rejected("every meta replica was asked: a backoff is due")] * count


def _one(reply: WireValue) -> Outcome:
    """One name's outcome from its part of a ``create_many`` reply."""
    items = tuple(reply) if isinstance(reply, list | tuple) else ()
    match items:
        case ("created", _):
            return Applied(items)
        case ("exists", _):
            return Rejected(EXISTS)
        case ("failed", str() as error_type, str() as message):
            return Applied(CommandFailed(error_type, message))
    # Applied, but nothing says how: as good as a write whose fate is unknown.
    return Unknown(f"an unreadable reply to a create: {reply!r:.60}")
