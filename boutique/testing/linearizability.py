"""A linearizability checker for key-value histories, in the spirit of Knossos and Porcupine.

Given what clients saw (:mod:`boutique.testing.history`), decide whether some total order
of the operations, each taking effect at one instant inside its own real-time interval,
explains every result under the model of one register per key (initially absent):
``put(k, v)`` sets ``k`` to ``v``, ``delete(k)`` makes it absent, ``get(k)`` returns it.

How:

* P-compositionality (Herlihy & Wing): a history is linearizable iff each key's
  sub-history is, so keys are checked one at a time. This is what keeps it fast.
* Per key, Wing & Gong's search with Lowe's just-in-time linearization and a cache of
  visited configurations (set of linearized operations as a bitmask, register value),
  as in Porcupine. The search is iterative: histories of thousands of operations must not
  hit Python's recursion limit.
* ``FAIL`` operations had no effect and are dropped, as are ``UNKNOWN`` reads (they
  constrain nothing). An ``UNKNOWN`` write may take effect at any instant after its
  invocation, or never. Because a write is accepted from every register value, "never"
  is the same as "after everything else", so the search succeeds as soon as every ``OK``
  operation is placed; and an ``UNKNOWN`` write whose value no read observed can be
  dropped up front (it can always be moved to the end without changing any read).
* Reads that fit are placed greedily and UNKNOWN writes get a "last chance" (see
  ``_search``), so the search branches only on the order of concurrent writes.
* When a key fails, the search also knows the latest deadline any branch reached: the
  history up to that instant is the shortest prefix that is not linearizable, so the
  explanation points at the first contradiction, not at the end of a long run.

Equal timestamps count as concurrent: an operation that completes at ``t`` is not
ordered before one invoked at ``t``. That can only hide anomalies, never invent them.

Buckets that are dropped and created again (``create``/``drop`` operations, with the
bucket as their key, and ``scope_of`` mapping each key to its bucket) extend the model:
a key's register may also hold "no bucket" (``_NO_BUCKET``). ``drop`` sets it, ``create``
turns it into absent (and leaves anything else alone: CREATE is idempotent), and an
operation answered NOT FOUND is a read of it. An ``OK`` put, delete or drop needs the
bucket to exist; an ``UNKNOWN`` one that lands while there is no bucket does nothing.
Each bucket operation is copied into the sub-history of every key of its bucket, so a
key is still checked alone: that is a necessary condition for the whole history (one
bucket's keys share its existence), so an anomaly found is a real one. An ``UNKNOWN``
drop or create stays open until the last deadline of its key, since a delayed one can
reset the key or answer a NOT FOUND long after.

This module never touches a store or a clock; it judges a finished history.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from boutique.testing.history import (
    BUCKET_KINDS,
    CREATE,
    DELETE,
    DROP,
    GET,
    KINDS,
    PUT,
    Operation,
    Outcome,
)

__all__ = ["Anomaly", "CheckResult", "check_kv_history"]

# How many linearized operations explain() shows before the point where the search stuck.
_SHOWN_PREFIX = 8


class _NoBucket:
    """The register value of a key whose bucket does not exist."""

    def __repr__(self) -> str:
        return "no bucket"


_NO_BUCKET: Final = _NoBucket()
_Value = str | None | _NoBucket


@dataclass(frozen=True)
class Anomaly:
    """Proof, for one key, that no linearization exists, in a form a person can follow."""

    key: str
    message: str
    """What went wrong, in one paragraph."""
    operations: list[Operation]
    """The key's operations invoked by the time the contradiction became certain, by
    invocation; for a read of a value never written, that read and any failed puts of it."""
    linearized: list[Operation] = field(default_factory=list)
    """The longest linearizable prefix the search found, in linearization order."""
    stuck: list[Operation] = field(default_factory=list)
    """The operations that could have taken effect right after that prefix; none of them
    leads to a linearization."""

    def explain(self) -> str:
        lines = [f"key {self.key!r}: {self.message}"]
        if self.linearized:
            shown = self.linearized[-_SHOWN_PREFIX:]
            skipped = len(self.linearized) - len(shown)
            lines.append("  longest linearizable prefix, in effect order:")
            if skipped:
                lines.append(f"    ... {skipped} earlier operations")
            lines.extend(f"    {op.describe()}" for op in shown)
        if self.stuck:
            lines.append("  could take effect next, but no choice leads to a linearization:")
            lines.extend(f"    {op.describe()}" for op in self.stuck)
        elif not self.linearized:
            lines.append("  operations:")
            lines.extend(f"    {op.describe()}" for op in self.operations)
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a whole history.

    ``ok`` means no anomaly was found. It does not mean every key was decided: keys whose
    search exceeded ``max_states`` are listed in ``timeouts`` and are neither passed nor
    failed. Use :attr:`linearizable` to demand a complete proof.
    """

    ok: bool
    anomalies: list[Anomaly]
    keys_checked: int
    operations_checked: int
    """Operations that took part in the search: ``FAIL`` ones and ``UNKNOWN`` reads are
    dropped first."""
    timeouts: list[str] = field(default_factory=list)
    """Keys the search gave up on after ``max_states`` configurations."""

    @property
    def linearizable(self) -> bool:
        """True only when every key was decided and none has an anomaly."""
        return self.ok and not self.timeouts

    def explain(self) -> str:
        if not self.ok:
            verdict = f"NOT LINEARIZABLE: {len(self.anomalies)} of {self.keys_checked} keys"
        elif self.timeouts:
            verdict = f"UNDECIDED: {len(self.timeouts)} of {self.keys_checked} keys"
        else:
            verdict = f"LINEARIZABLE: {self.keys_checked} keys"
        lines = [f"{verdict}, {self.operations_checked} operations checked"]
        lines.extend(anomaly.explain() for anomaly in self.anomalies)
        if self.timeouts:
            keys = ", ".join(repr(key) for key in self.timeouts)
            lines.append(f"search gave up (max_states exceeded) on: {keys}")
        return "\n".join(lines)


def check_kv_history(
    operations: Iterable[Operation],
    *,
    max_states: int = 2_000_000,
    scope_of: Callable[[str], str] | None = None,
) -> CheckResult:
    """Check a key-value history for linearizability, one key at a time.

    ``max_states`` bounds the configurations the search visits for any one key; a key
    that exceeds it lands in ``timeouts`` rather than passing. ``scope_of`` maps a key
    to its bucket; it is needed when the history holds ``create``/``drop`` operations
    (see the module docstring).
    Raises ``ValueError`` on a malformed operation, such as an ``OK`` one without a
    completion time, or bucket operations without ``scope_of``.
    """
    by_key: dict[str, list[Operation]] = {}
    by_bucket: dict[str, list[Operation]] = {}
    for op in operations:
        _validate(op)
        if op.kind in BUCKET_KINDS:
            by_bucket.setdefault(op.key, []).append(op)
        else:
            by_key.setdefault(op.key, []).append(op)
    if by_bucket and scope_of is None:
        raise ValueError("a history with create or drop operations needs scope_of")

    anomalies: list[Anomaly] = []
    timeouts: list[str] = []
    checked = sum(map(_takes_part, (op for ops in by_bucket.values() for op in ops)))
    scopes = {} if scope_of is None else {key: scope_of(key) for key in by_key}
    subjects = [(key, by_key[key], scopes.get(key)) for key in sorted(by_key)]
    # A bucket none of whose keys were touched is checked on its own, as a key with no
    # operations but its bucket's (two acknowledged DROPs in a row are still wrong).
    touched = set(scopes.values())
    subjects += [(b, [], b) for b in sorted(by_bucket) if b not in touched]
    for key, own_ops, bucket in subjects:
        checked += sum(map(_takes_part, own_ops))
        key_ops = own_ops + by_bucket.get(bucket, []) if bucket is not None else own_ops
        verdict = _check_key(key, key_ops, max_states)
        if isinstance(verdict, Anomaly):
            anomalies.append(verdict)
        elif verdict is _Status.TIMEOUT:
            timeouts.append(key)
    return CheckResult(
        ok=not anomalies,
        anomalies=anomalies,
        keys_checked=len(by_key),
        operations_checked=checked,
        timeouts=timeouts,
    )


def _validate(op: Operation) -> None:
    if op.kind not in KINDS:
        raise ValueError(f"unknown operation kind: {op.describe()}")
    if op.kind == PUT and op.value is None:
        raise ValueError(f"a put without a value: {op.describe()}")
    if op.outcome is Outcome.OK or op.outcome is Outcome.NOT_FOUND:
        if op.completed is None:
            raise ValueError(f"an OK operation without a completion time: {op.describe()}")
        if op.completed < op.invoked:
            raise ValueError(f"completed before it was invoked: {op.describe()}")


def _takes_part(op: Operation) -> bool:
    if op.outcome is Outcome.OK or op.outcome is Outcome.NOT_FOUND:
        return True
    if op.outcome is Outcome.FAIL:
        return False
    # UNKNOWN or still pending: only a write can matter.
    return op.kind != GET


def _is_ok(op: Operation) -> bool:
    return op.outcome is Outcome.OK


def _definite(op: Operation) -> bool:
    """Completed with a known result (an effect, or a read of "no bucket")."""
    return op.outcome is Outcome.OK or op.outcome is Outcome.NOT_FOUND


def _is_read(op: Operation) -> bool:
    """A read of the register: an OK get, or anything answered NOT FOUND."""
    return op.outcome is Outcome.NOT_FOUND or (op.kind == GET and op.outcome is Outcome.OK)


def _value_of(op: Operation) -> _Value:
    """For a read, the value it saw; for a write, the value it leaves (a create: the
    value it leaves where there was no bucket)."""
    if op.outcome is Outcome.NOT_FOUND:
        return _NO_BUCKET
    match op.kind:
        case "get":
            return op.result
        case "put":
            return op.value
        case "drop":
            return _NO_BUCKET
    return None  # delete, create


class _Status(enum.Enum):
    LINEARIZABLE = enum.auto()
    NOT_LINEARIZABLE = enum.auto()
    TIMEOUT = enum.auto()


def _check_key(key: str, key_ops: list[Operation], max_states: int) -> _Status | Anomaly:
    impossible = _impossible_read(key, key_ops)
    if impossible is not None:
        return impossible
    ops = sorted(filter(_takes_part, key_ops), key=lambda op: op.invoked)
    # Unknown reads were dropped; what is left that reads is an OK get or a NOT FOUND.
    found = _search(ops, max_states)
    if found.status is _Status.NOT_LINEARIZABLE:
        return _describe_failure(key, ops, found)
    return found.status


def _impossible_read(key: str, key_ops: list[Operation]) -> Anomaly | None:
    """A completed read of a value that no put which may have taken effect wrote needs no
    search, and deserves a plain message; reading a failed put's value is the classic case."""
    written: set[str | None] = {None}  # absent: the initial value, and what delete leaves
    written.update(op.value for op in key_ops if op.kind == PUT and _takes_part(op))
    for op in sorted(key_ops, key=lambda op: op.invoked):
        if op.kind == GET and _is_ok(op) and op.result not in written:
            failed = [w for w in key_ops if w.kind == PUT and w.value == op.result]
            what = "only a put that certainly failed wrote it" if failed else "no put ever wrote it"
            message = f"{op.describe()} read {op.result!r}, but {what}."
            return Anomaly(key, message, [op, *failed])
    return None


def _done(op: Operation) -> float:
    """The completion time of an OK operation (checked by ``_validate``)."""
    assert op.completed is not None
    return op.completed


# Kinds of events in the search's time line. At equal times calls sort first, so
# intervals that touch overlap; a write's last chance comes after every deadline at
# that instant, when the reads it could serve have all been placed.
_CALL, _DEADLINE, _LAST_CHANCE = 0, 1, 2
# The passes of the walk over one configuration's open calls.
_READS, _WANTED_WRITES, _OTHER_WRITES = 0, 1, 2


@dataclass(slots=True)
class _Found:
    status: _Status
    stuck_at: float = -math.inf
    """The latest deadline any branch of the search reached without placing its op: the
    history as seen at this instant is not linearizable, as seen at any earlier one it is."""
    culprit: Operation | None = None
    """The operation whose deadline that was."""
    prefix: list[Operation] = field(default_factory=list)
    """What that branch had placed, in order."""
    open_ops: list[Operation] = field(default_factory=list)
    """What that branch could still have placed before the deadline."""


def _search(ops: list[Operation], max_states: int) -> _Found:
    """Lowe's just-in-time linearization with Porcupine's cache, made iterative.

    Calls and deadlines form a doubly linked list in time order. Walking it from the
    head, a call may be placed now (it is "lifted" out of the list, with its deadline);
    reaching a deadline means its op was not placed in time, so the last choice is undone
    (dancing links make undoing cheap). Configurations already explored are skipped:
    (placed set, register value) determines everything that can follow.

    Two reductions keep the branching to the writes' order, where it belongs:

    * A read that fits the current value is placed at once, with no alternative tried:
      any linearization from here can be changed to place it now, because no open op
      ends before it began and reads change nothing.
    * An UNKNOWN write is worth placing only before the last read of its value, so it
      has a "last chance" event at that read's completion. Reaching it unplaced drops the
      write for good; placed-or-dropped branches then meet in the cache instead of
      doubling the search for every such write still open.
    """
    n = len(ops)
    last_read: dict[_Value, float] = {}
    last_deadline = -math.inf
    for op in ops:
        if _is_read(op):
            observed = _value_of(op)
            last_read[observed] = max(last_read.get(observed, -math.inf), _done(op))
        if _definite(op):
            last_deadline = max(last_deadline, _done(op))

    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        if _definite(op):
            events += [(op.invoked, _CALL, i), (_done(op), _DEADLINE, i)]
            continue
        # A drop or create changes whether the bucket exists, which every later
        # operation observes, not only reads of its value: open until the end. A
        # delete's value is None: read as absent.
        last = last_deadline if op.kind in BUCKET_KINDS else last_read.get(_value_of(op), -math.inf)
        if last >= op.invoked:  # otherwise no read could see it: it may as well never happen
            events += [(op.invoked, _CALL, i), (last, _LAST_CHANCE, i)]
    events.sort()

    # Register values as small ints, so a configuration packs into one int.
    value_ids: dict[_Value, int] = {None: 0, _NO_BUCKET: 1}
    for op in ops:
        value_ids.setdefault(_value_of(op), len(value_ids))
    no_bucket = value_ids[_NO_BUCKET]
    value_bits = max(1, (len(value_ids) - 1).bit_length())
    is_get = [_is_read(op) for op in ops]
    # For a write, the value it leaves; for a read, the value it must see.
    arg = [value_ids[_value_of(op)] for op in ops]
    must = [_definite(op) for op in ops]
    # An OK put, delete or drop happened in an existing bucket.
    needs_bucket = [_is_ok(op) and op.kind in (PUT, DELETE, DROP) for op in ops]
    # A create changes only "no bucket"; an unknown put or delete that lands while there
    # is no bucket does nothing.
    is_create = [op.kind == CREATE and not _is_read(op) for op in ops]
    keeps_no_bucket = [op.kind in (PUT, DELETE) and not _is_ok(op) for op in ops]

    # Node 0 is the head, node m + 1 the tail; both sentinels. The tail acts as a
    # deadline, though it is never reached while some OK op is still unplaced.
    m = len(events)
    tail = m + 1
    nxt = [*range(1, m + 2), tail]
    prv = [0, *range(m + 1)]
    node_kind = [_DEADLINE] * (m + 2)
    node_op = [-1] * (m + 2)
    node_time = [math.inf] * (m + 2)
    call_node = [0] * n
    end_node = [0] * n
    for node, (at, kind, i) in enumerate(events, start=1):
        node_kind[node], node_op[node], node_time[node] = kind, i, at
        if kind == _CALL:
            call_node[i] = node
        else:
            end_node[i] = node

    remaining = sum(1 for _, kind, _ in events if kind == _DEADLINE)
    mask = 0
    value = 0
    stack: list[int] = []  # op index, or ~index for a forced move (nothing else to try)
    saved_values: list[int] = []
    seen: set[int] = set()
    found = _Found(_Status.NOT_LINEARIZABLE)
    # Each new configuration is walked in three passes over its open calls: place every
    # read that fits; then branch on the writes most likely to be needed next (those of
    # the value wanted by the op with the earliest deadline); then on the other writes.
    # The order only steers the search: every write is tried before giving up.
    phase = _READS
    wanted = -1
    choices: list[tuple[int, int]] = []  # (phase, wanted) at each real choice on the stack
    node = nxt[0]
    while remaining:
        kind = node_kind[node]
        if kind == _CALL:
            i = node_op[node]
            if phase == _READS:
                if not (is_get[i] and arg[i] == value):
                    node = nxt[node]
                    continue
                forced, after = True, value
            elif (
                is_get[i]
                or (arg[i] == wanted) != (phase == _WANTED_WRITES)
                or (needs_bucket[i] and value == no_bucket)
            ):
                # A read that did not fit in the first pass, a write for the other pass,
                # or one that cannot happen while there is no bucket.
                node = nxt[node]
                continue
            elif is_create[i]:
                forced, after = False, 0 if value == no_bucket else value
            elif keeps_no_bucket[i] and value == no_bucket:
                forced, after = False, value
            else:
                forced, after = False, arg[i]
        elif phase != _OTHER_WRITES:
            if phase == _READS:
                phase = _WANTED_WRITES
                wanted = _wanted_value(nxt, node_kind, node_op, arg, node)
            else:
                phase = _OTHER_WRITES
            node = nxt[0]
            continue
        elif kind == _LAST_CHANCE:
            i = node_op[node]
            forced, after = True, value
        else:
            at = node_time[node]
            if at > found.stuck_at or (at == found.stuck_at and len(stack) > len(found.prefix)):
                found.stuck_at = at
                found.culprit = ops[node_op[node]] if node != tail else None
                found.prefix = [ops[j if j >= 0 else ~j] for j in stack if j >= 0 or is_get[~j]]
                found.open_ops = _open_calls(ops, nxt, node_kind, node_op, node)
            forced = True  # undo the last choice below
        if kind != _DEADLINE:
            new_mask = mask | (1 << i)
            config = (new_mask << value_bits) | after
            if config not in seen:
                seen.add(config)
                if len(seen) > max_states:
                    found.status = _Status.TIMEOUT
                    return found
                if forced:
                    stack.append(~i)
                else:
                    stack.append(i)
                    choices.append((phase, wanted))
                saved_values.append(value)
                mask, value = new_mask, after
                remaining -= must[i]
                c, e = call_node[i], end_node[i]
                nxt[prv[c]], prv[nxt[c]] = nxt[c], prv[c]
                nxt[prv[e]], prv[nxt[e]] = nxt[e], prv[e]
                phase = _READS
                node = nxt[0]
                continue
            if not forced:
                node = nxt[node]
                continue
        # Backtrack: undo forced moves up to and including the last real choice, then
        # try the next call after that choice, in the pass that made it.
        while stack:
            j = stack.pop()
            i = j if j >= 0 else ~j
            value = saved_values.pop()
            mask ^= 1 << i
            remaining += must[i]
            c, e = call_node[i], end_node[i]
            nxt[prv[e]] = prv[nxt[e]] = e
            nxt[prv[c]] = prv[nxt[c]] = c
            if j >= 0:
                phase, wanted = choices.pop()
                node = nxt[c]
                break
        else:
            return found
    found.status = _Status.LINEARIZABLE
    return found


def _wanted_value(
    nxt: list[int], node_kind: list[int], node_op: list[int], arg: list[int], node: int
) -> int:
    """The value the op with the earliest deadline after ``node`` reads or writes."""
    while node_kind[node] != _DEADLINE:
        node = nxt[node]
    return -1 if node_op[node] < 0 else arg[node_op[node]]


def _open_calls(
    ops: list[Operation], nxt: list[int], node_kind: list[int], node_op: list[int], end: int
) -> list[Operation]:
    """The ops whose calls are still in the list before node ``end``."""
    open_ops = []
    node = nxt[0]
    while node != end:
        if node_kind[node] == _CALL:
            open_ops.append(ops[node_op[node]])
        node = nxt[node]
    return open_ops


def _describe_failure(key: str, ops: list[Operation], found: _Found) -> Anomaly:
    at = found.stuck_at
    involved = [op for op in ops if op.invoked <= at]
    value: _Value = None
    for op in found.prefix:
        if _is_read(op):
            continue
        if op.kind == CREATE:
            value = None if value is _NO_BUCKET else value
        elif value is not _NO_BUCKET or op.kind == DROP:
            value = _value_of(op)
    shown = "absent" if value is None else repr(value)
    culprit = "an operation" if found.culprit is None else found.culprit.describe()
    message = (
        f"not linearizable by t={at:g}: {culprit} must have taken effect by then, but no "
        f"order of the {len(involved)} operations invoked by then fits their time "
        f"intervals and results. The longest linearizable prefix the search reached "
        f"places {len(found.prefix)} of them and leaves the value {shown}."
    )
    return Anomaly(key, message, involved, found.prefix, found.open_ops)
