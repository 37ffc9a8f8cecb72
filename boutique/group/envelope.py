"""The envelope machine: a user's machine plus the group's own replicated bookkeeping.

A library group replicates more than the user's state. Every member must know every
other member's address, and a membership change asked for at any member must be carried
out by whichever member leads, even across a leader change. Both are kept in the log,
next to the user's commands, by wrapping the user's machine in an `Envelope`:

    ("u", command)                          a user command; reply: msgpack bytes
    ("m", "change", token, op, node, book)  queue a membership change (op "join" or
                                            "leave") and merge `book` into the
                                            address book
    ("m", "done", token, result)            the leader finished change `token`
                                            ("ok" or "error: why")
    ("m", "rejoin", leave, join, node, book) queue the removal of `node` (token
                                            `leave`) and its addition (token `join`)
                                            in one entry: a member that lost its
                                            state comes back as a new learner

Queries are `("u", query)` (answer: msgpack bytes) or `("m", "book")`,
`("m", "pending")`, `("m", "result", token)`.

User replies and answers travel as msgpack bytes: a reply is the same bytes whether it
comes from this process or from another node, and a machine that returns something
msgpack cannot encode is reported as a failed command instead of breaking the runtime.

Like every machine, this one is deterministic and never does I/O: it never touches
trio, sockets, files or the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from boutique.machine import StateMachine, WireValue, decode_value, encode_value

__all__ = ["Address", "Change", "Envelope", "GroupState"]

Address = tuple[str, int]

RESULTS_KEPT = 256
"""Finished changes whose result stays readable; older ones are forgotten (a caller
waiting that long has timed out already)."""

_SNAPSHOT_VERSION = 2
"""Version 2 adds the tombstones (`GroupState.removed`); version 1 is still read."""


@dataclass(frozen=True, slots=True)
class Change:
    """A queued membership change: `node` joins (as a learner, then a voter) or leaves."""

    token: int
    op: str
    node: int


@dataclass(slots=True)
class GroupState:
    """Everything a library group replicates."""

    user: Any
    book: dict[int, Address] = field(default_factory=dict)
    """Where each member listens, as announced by `add_member` (which also merges in
    every address the asking member knows, founders included). A removed member's
    address is kept: a member that removed itself still hears the outcome, and adding
    the id again replaces it."""
    pending: list[Change] = field(default_factory=list)
    """Changes not yet carried out, oldest first; the leader works on the first."""
    results: dict[int, str] = field(default_factory=dict)
    """Token -> "ok" or "error: ..." for the last `RESULTS_KEPT` finished changes."""
    removed: set[int] = field(default_factory=set)
    """Tombstones: members whose removal finished. Every member refuses them (no
    connection, no forwarded request) and tells them they were removed, and a join of
    such an id is refused: a member that comes back is a new member, with a new id."""


class Envelope:
    """Wraps a user's `StateMachine` so its group also replicates the member bookkeeping."""

    def __init__(self, user: StateMachine[Any, Any, Any, Any, Any]) -> None:
        self.user = user

    def initial_state(self) -> GroupState:
        return GroupState(self.user.initial_state())

    def apply(self, state: GroupState, command: Any) -> tuple[WireValue, GroupState]:
        match command:
            case ("u", user_command):
                reply, new_user = self.user.apply(state.user, user_command)
                try:
                    data = encode_value(reply)
                except (TypeError, ValueError, OverflowError):
                    # Raised before the new state is kept: the command counts as failed.
                    raise TypeError(
                        f"the machine replied with a {type(reply).__name__}, "
                        "which is not a plain msgpack value"
                    ) from None
                state.user = new_user
                return data, state
            case ("m", "change", int() as token, ("join" | "leave") as op, int() as node, book):
                addresses = parse_book(book)
                if op == "join" and node in state.removed:
                    self._record(state, token, f"error: {removed_rejoin(node)}")
                    return None, state
                if op == "leave":
                    self._cancel_joins(state, node)
                state.pending.append(Change(token, op, node))
                state.book.update(addresses)
                return None, state
            case ("m", "rejoin", int() as leave, int() as join, int() as node, book):
                addresses = parse_book(book)
                # One entry, so a retried request can never put a leave after the join.
                self._cancel_joins(state, node)
                state.pending.append(Change(leave, "leave", node))
                state.pending.append(Change(join, "join", node))
                state.book.update(addresses)
                return None, state
            case ("m", "done", int() as token, str() as result):
                for change in state.pending:
                    if change.token == token:
                        state.pending.remove(change)
                        self._record(state, token, result)
                        readmitted = any(
                            c.op == "join" and c.node == change.node for c in state.pending
                        )
                        if change.op == "leave" and result == "ok" and not readmitted:
                            # A leave with a join of the same node queued behind it is
                            # a re-admission ("rejoin"), not a removal: no tombstone.
                            state.removed.add(change.node)
                        return True, state
                return False, state  # already finished (two leaders raced): no-op
            case _:
                raise ValueError(f"not a group command: {command!r}")

    def _cancel_joins(self, state: GroupState, node: int) -> None:
        # A join that cannot finish (the new node never came up) must not block the
        # leave that undoes it: the leave supersedes it.
        for change in [c for c in state.pending if c.node == node and c.op == "join"]:
            state.pending.remove(change)
            self._record(state, change.token, "error: cancelled by a later remove")

    @staticmethod
    def _record(state: GroupState, token: int, result: str) -> None:
        state.results[token] = result
        while len(state.results) > RESULTS_KEPT:
            del state.results[next(iter(state.results))]

    def query(self, state: GroupState, query: Any) -> WireValue:
        match query:
            case ("u", user_query):
                answer = self.user.query(state.user, user_query)
                try:
                    return encode_value(answer)
                except (TypeError, ValueError, OverflowError):
                    raise TypeError(
                        f"the machine answered with a {type(answer).__name__}, "
                        "which is not a plain msgpack value"
                    ) from None
            case ("m", "book"):
                return book_to_wire(state.book)
            case ("m", "pending"):
                return [[c.token, c.op, c.node] for c in state.pending]
            case ("m", "result", int() as token):
                return state.results.get(token)
            case _:
                raise ValueError(f"not a group query: {query!r}")

    def snapshot(self, state: GroupState) -> bytes:
        return encode_value(
            [
                _SNAPSHOT_VERSION,
                book_to_wire(state.book),
                [[c.token, c.op, c.node] for c in state.pending],
                [[token, result] for token, result in state.results.items()],
                self.user.snapshot(state.user),
                sorted(state.removed),
            ]
        )

    def restore(self, data: bytes) -> GroupState:
        removed: object = ()
        match decode_value(data):
            case (1, book, pending, results, bytes() as user_data):
                pass
            case (2, book, pending, results, bytes() as user_data, removed):
                pass
            case _:
                raise ValueError("not a group snapshot")
        state = GroupState(self.user.restore(user_data), parse_book(book))
        match removed:
            case list() | tuple() if all(type(n) is int and n > 0 for n in removed):
                state.removed = set(removed)
            case _:
                raise ValueError("not a group snapshot: bad removed members")
        for item in pending:
            match item:
                case (int() as token, ("join" | "leave") as op, int() as node):
                    state.pending.append(Change(token, op, node))
                case _:
                    raise ValueError("not a group snapshot: bad pending change")
        for item in results:
            match item:
                case (int() as token, str() as result):
                    state.results[token] = result
                case _:
                    raise ValueError("not a group snapshot: bad result")
        return state


def removed_rejoin(node: int) -> str:
    """Why a removed id cannot join again."""
    return f"node {node} was removed from the group; a member that comes back needs a new id"


def book_to_wire(book: dict[int, Address]) -> list[WireValue]:
    """The address book as msgpack-ready rows `[node, host, port]`, sorted by node."""
    return [[node, host, port] for node, (host, port) in sorted(book.items())]


def parse_book(value: object) -> dict[int, Address]:
    """Inverse of `book_to_wire` (lists or tuples); `ValueError` if malformed."""
    if not isinstance(value, list | tuple):
        raise ValueError("an address book is a list of [node, host, port]")
    book: dict[int, Address] = {}
    for row in value:
        match row:
            case (int() as node, str() as host, int() as port) if node > 0 and 0 < port < 65536:
                book[node] = (host, port)
            case _:
                raise ValueError(f"not an address book row: {row!r}")
    return book
