"""A replicated FIFO queue, mirroring `QueueWithLength` from Elixir's `rafted_value` README.

There the state is an Erlang `:queue` plus its length, because `:queue.len` walks the
queue. A `collections.deque` already knows its length in O(1), so here the state is
just the deque; `len()` is the length. It is mutated in place (O(1) push and pop) and
snapshotted as a msgpack array.

Commands:
    ("push", item)   append item; reply: the new length
    ("pop",)         remove the front item; reply: that item, or None when empty
                     (ask "length" first if None items are pushed)
Queries:
    "length"         number of items
    "peek"           the front item, or None when empty
    "items"          all items, front first, as a list

It must never do I/O or read the clock: every replica must hold the same queue.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, TypeAlias

from boutique.machine import WireValue, decode_value, encode_value

if TYPE_CHECKING:
    from boutique.machine import StateMachine

__all__ = ["QueueCommand", "QueueState", "QueueWithLength"]

QueueState: TypeAlias = deque[WireValue]
QueueCommand: TypeAlias = tuple[str] | tuple[str, WireValue]


class QueueWithLength:
    """State: `QueueState`. Command: `QueueCommand`. Reply and Answer: `WireValue`."""

    def initial_state(self) -> QueueState:
        return deque()

    def apply(self, state: QueueState, command: QueueCommand) -> tuple[WireValue, QueueState]:
        match command:
            case ("push", item):
                state.append(item)
                return len(state), state
            case ("pop",):
                return (state.popleft() if state else None), state
            case _:
                raise ValueError(f"not a queue command: {command!r}")

    def query(self, state: QueueState, query: str) -> WireValue:
        if query == "length":
            return len(state)
        if query == "peek":
            return state[0] if state else None
        if query == "items":
            return list(state)
        raise ValueError(f"unknown queue query: {query!r}")

    def snapshot(self, state: QueueState) -> bytes:
        return encode_value(list(state))

    def restore(self, data: bytes) -> QueueState:
        items = decode_value(data)
        if not isinstance(items, tuple):
            raise ValueError("not a queue snapshot")
        return deque(items)


if TYPE_CHECKING:
    _conforms: StateMachine[QueueState, QueueCommand, WireValue, str, WireValue] = QueueWithLength()
