"""Recording what clients saw: a history of key-value operations for linearizability checks.

A test drives a store from several clients and records, for every operation, when it was
invoked, when (and whether) it completed, and what it returned. The resulting history is
handed to :func:`boutique.testing.linearizability.check_kv_history`.

The history must be recorded with one monotonic clock for all clients (virtual trio time
is ideal). This module only records; it never judges, and it never talks to the store.

Outcomes follow Jepsen: ``OK`` took effect, ``FAIL`` certainly did not (``ERR UNAVAILABLE``
and friends), ``UNKNOWN`` may or may not have (``ERR TIMEOUT``, a dropped connection, or an
operation still pending when the test stopped). ``NOT_FOUND`` is a completed answer of its
own: the bucket did not exist at some instant of the operation, which had no effect.

Besides ``put``/``get``/``delete`` of one key, a history may hold ``create`` and ``drop`` of
a whole bucket (DROP/re-CREATE churn). Their ``key`` is the bucket itself, the *scope*
that the checker maps each key to (see ``check_kv_history``'s ``scope_of``).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BUCKET_KINDS",
    "CREATE",
    "DELETE",
    "DROP",
    "GET",
    "KINDS",
    "PUT",
    "WRITE_KINDS",
    "History",
    "Operation",
    "Outcome",
]

PUT: Final = "put"
GET: Final = "get"
DELETE: Final = "delete"
CREATE: Final = "create"
DROP: Final = "drop"
BUCKET_KINDS: Final = frozenset({CREATE, DROP})
"""Operations on a whole bucket: their ``key`` is the bucket (a scope of keys)."""
KINDS: Final = frozenset({PUT, GET, DELETE}) | BUCKET_KINDS
WRITE_KINDS: Final = frozenset({PUT, DELETE})
"""Writes of one key."""


class Outcome(enum.Enum):
    """What a client knows about whether its operation took effect."""

    OK = "ok"
    """Completed: took effect exactly once, at some instant between invocation and completion."""
    FAIL = "fail"
    """Certainly had no effect."""
    UNKNOWN = "unknown"
    """May or may not have taken effect, at any instant after invocation (Jepsen's "info")."""
    NOT_FOUND = "not found"
    """Completed without effect: the bucket did not exist at some instant between
    invocation and completion (a read of "no bucket")."""


@dataclass(slots=True)
class Operation:
    """One client operation on one key, as the client saw it."""

    client: int
    kind: str
    """``"put"``, ``"get"``, ``"delete"``, or ``"create"``/``"drop"`` of a bucket."""
    key: str
    """The key; for ``create`` and ``drop``, the bucket."""
    value: str | None
    """The value written by a put; ``None`` for get and delete."""
    invoked: float
    completed: float | None
    """Completion time; ``None`` while pending and when the outcome is ``UNKNOWN``."""
    outcome: Outcome | None
    """``None`` while pending."""
    result: str | None = None
    """For an ``OK`` get, the value read; ``None`` means the key was absent."""

    def describe(self) -> str:
        """One line for humans, e.g. ``c3 get(x) -> '1' ok [2.0, 3.5]``."""
        match self.kind:
            case "put":
                call = f"put({self.key!r}, {self.value!r})"
            case "get":
                call = f"get({self.key!r})"
                if self.outcome is Outcome.OK:
                    call += " -> absent" if self.result is None else f" -> {self.result!r}"
            case _:
                call = f"{self.kind}({self.key!r})"
        outcome = "pending" if self.outcome is None else self.outcome.value
        end = "..." if self.completed is None else f"{self.completed:g}"
        return f"c{self.client} {call} {outcome} [{self.invoked:g}, {end}]"


class History:
    """An append-only record of operations, in invocation order.

    ``invoke`` when a client sends a request, ``complete`` when it learns the outcome.
    Operations never completed are reported as ``UNKNOWN`` by :meth:`operations`.
    """

    __slots__ = ("_ops",)

    def __init__(self) -> None:
        self._ops: list[Operation] = []

    def invoke(self, client: int, kind: str, key: str, value: str | None, at: float) -> Operation:
        """Record that ``client`` sent ``kind(key[, value])`` at time ``at``; keep the result
        to pass to :meth:`complete`."""
        if kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r}; expected one of {sorted(KINDS)}")
        if (kind == PUT) != (value is not None):
            raise ValueError(f"a put needs a value and only a put has one: {kind}({value!r})")
        op = Operation(client, kind, key, value, at, None, None, None)
        self._ops.append(op)
        return op

    def complete(
        self, op: Operation, at: float, outcome: Outcome, result: str | None = None
    ) -> None:
        """Record what the client learned about ``op`` at time ``at``.

        ``result`` is the value an ``OK`` get read (``None``: absent); it is ignored
        otherwise. For ``UNKNOWN`` the completion time is not kept: such an operation may
        take effect at any later instant, whenever the client gave up on it.
        """
        if op.outcome is not None:
            raise ValueError(f"operation completed twice: {op.describe()}")
        if at < op.invoked:
            raise ValueError(f"completion at {at} precedes invocation: {op.describe()}")
        op.outcome = outcome
        op.completed = None if outcome is Outcome.UNKNOWN else at
        op.result = result if outcome is Outcome.OK and op.kind == GET else None

    def operations(self) -> list[Operation]:
        """A snapshot of all operations in invocation order; pending ones appear as copies
        with outcome ``UNKNOWN``, so the recorder may still complete the originals."""
        return [
            op if op.outcome is not None else dataclasses.replace(op, outcome=Outcome.UNKNOWN)
            for op in self._ops
        ]

    def __len__(self) -> int:
        return len(self._ops)
