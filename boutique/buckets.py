"""The state machine of one bucket: an ordered map from key bytes to value bytes.

Every bucket is its own Raft group and every replica of the group runs a
`BucketMachine`. The keys live in a `sortedcontainers.SortedDict`, so ordered reads
(`keys` with a prefix, `scan` over a range) cost O(log n + answer size), and the
machine keeps a running count of the bytes held so `stats` is O(1).

Commands (the runtime proposes them; replies go back to the proposer):
    ("put", key, value)              store value under key; reply None
    ("delete", key)                  remove key; reply whether it existed
    ("tombstone",)                   fence the bucket for good (the first step of DROP):
                                     forget every key; reply whether this entry fenced
                                     it (False: it already was)
Queries (answered on one replica's state, after a ReadIndex for linearizability):
    ("get", key)                     the value, or None
    ("keys", prefix, limit)          keys starting with prefix (None: all), in order
    ("scan", start, end, limit)      [key, value] pairs with start <= key < end (end
                                     None: to the last key), in order
    ("count",)                       the number of keys
    ("stats",)                       {"keys": number of keys, "bytes": key + value bytes}

A tombstoned bucket refuses every later command and query with `BucketDropped`, on
every replica, forever: its group's own log decides that the bucket is gone, so no
majority of the group can accept a write after a DROP, whatever the registry (a
different group, with a different majority) says at that moment. The tombstone
survives snapshots.

Keys and values are `bytes` (an empty key or value is allowed); a limit is None
(unlimited) or an int >= 0. A malformed command raises `TypeError` or `ValueError`
before anything changes, so the host turns it into the same `CommandFailed` on every
replica and the state is untouched.

This module never does I/O, reads the clock or depends on hash order: replicas must
compute the same replies and the same state.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import msgpack  # type: ignore[import-untyped]
from sortedcontainers import SortedDict  # type: ignore[import-untyped]

from boutique.machine import decode_value

if TYPE_CHECKING:
    from boutique.machine import StateMachine

__all__ = [
    "BucketAnswer",
    "BucketCommand",
    "BucketDropped",
    "BucketMachine",
    "BucketQuery",
    "BucketReply",
    "BucketState",
    "prefix_end",
]

BucketCommand: TypeAlias = (
    tuple[Literal["put"], bytes, bytes]
    | tuple[Literal["delete"], bytes]
    | tuple[Literal["tombstone"]]
)
BucketReply: TypeAlias = bool | None
BucketQuery: TypeAlias = (
    tuple[Literal["get"], bytes]
    | tuple[Literal["keys"], bytes | None, int | None]
    | tuple[Literal["scan"], bytes, bytes | None, int | None]
    | tuple[Literal["count"]]
    | tuple[Literal["stats"]]
)
BucketAnswer: TypeAlias = (
    bytes | int | list[bytes] | list[tuple[bytes, bytes]] | dict[str, int] | None
)

_REPR_LIMIT = 80
_TOMBSTONE_SNAPSHOT = {"tombstone": True}


class BucketDropped(LookupError):
    """A command or query reached a bucket whose group was fenced by DROP.

    Its type name is what the runtime sees in the `CommandFailed` of every replica
    (`BucketDropped.__name__`) and turns into NOT FOUND."""


class BucketState:
    """The keys of one bucket in order, and the bytes they hold (keys + values).

    `items` is a `SortedDict[bytes, bytes]`; read it freely, but change it only
    through `BucketMachine.apply` so `size` stays right. `dropped` is True once the
    bucket's tombstone is applied; it never goes back to False.
    """

    __slots__ = ("dropped", "items", "size")

    def __init__(self, items: Any = None, size: int = 0, *, dropped: bool = False) -> None:
        self.items: Any = SortedDict() if items is None else items
        self.size = size
        self.dropped = dropped

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        if self.dropped:
            return "BucketState(dropped)"
        return f"BucketState(keys={len(self.items)}, size={self.size})"


class BucketMachine:
    """State: `BucketState`. Command: `BucketCommand` -> `BucketReply`.
    Query: `BucketQuery` -> `BucketAnswer`. See the module docstring."""

    def initial_state(self) -> BucketState:
        return BucketState()

    def apply(self, state: BucketState, command: BucketCommand) -> tuple[BucketReply, BucketState]:
        if command == ("tombstone",):
            if state.dropped:
                return False, state
            # The keys are gone with the bucket; a fenced group holds nothing.
            return True, BucketState(dropped=True)
        if state.dropped:
            raise BucketDropped("the bucket was dropped")
        match command:
            case ("put", key, value):
                _check_bytes("key", key)
                _check_bytes("value", value)
                items = state.items
                previous: bytes | None = items.get(key)
                if previous is None:
                    state.size += len(key) + len(value)
                else:
                    state.size += len(value) - len(previous)
                items[key] = value
                return None, state
            case ("delete", key):
                _check_bytes("key", key)
                removed: bytes | None = state.items.pop(key, None)
                if removed is None:
                    return False, state
                state.size -= len(key) + len(removed)
                return True, state
            case _:
                raise ValueError(f"not a bucket command: {_short(command)}")

    def query(self, state: BucketState, query: BucketQuery) -> BucketAnswer:
        if state.dropped:
            raise BucketDropped("the bucket was dropped")
        items = state.items
        match query:
            case ("get", key):
                _check_bytes("key", key)
                found: bytes | None = items.get(key)
                return found
            case ("keys", prefix, limit):
                if prefix is not None:
                    _check_bytes("prefix", prefix)
                _check_limit(limit)
                keys: Iterator[bytes]
                if prefix:
                    keys = items.irange(prefix, prefix_end(prefix), inclusive=(True, False))
                else:
                    keys = iter(items)
                return list(islice(keys, limit))
            case ("scan", start, end, limit):
                _check_bytes("start", start)
                if end is not None:
                    _check_bytes("end", end)
                _check_limit(limit)
                if end is not None and end <= start:
                    return []
                scanned: Iterator[bytes] = items.irange(start, end, inclusive=(True, False))
                return [(key, items[key]) for key in islice(scanned, limit)]
            case ("count",):
                return len(items)
            case ("stats",):
                return {"keys": len(items), "bytes": state.size}
            case _:
                raise ValueError(f"not a bucket query: {_short(query)}")

    def snapshot(self, state: BucketState) -> bytes:
        """msgpack of the flat list [key1, value1, key2, value2, ...] in key order, or
        of the map {"tombstone": true} for a dropped bucket."""
        if state.dropped:
            tombstone: bytes = msgpack.packb(_TOMBSTONE_SNAPSHOT, use_bin_type=True)
            return tombstone
        flat = list(chain.from_iterable(state.items.items()))
        packed: bytes = msgpack.packb(flat, use_bin_type=True)
        return packed

    def restore(self, data: bytes) -> BucketState:
        try:
            flat = decode_value(data)
        except Exception as exc:
            raise ValueError("not a bucket snapshot: undecodable") from exc
        if flat == _TOMBSTONE_SNAPSHOT:
            return BucketState(dropped=True)
        if not isinstance(flat, tuple) or len(flat) % 2:
            raise ValueError("not a bucket snapshot: expected a flat list of key, value pairs")
        size = 0
        previous: bytes | None = None
        for i in range(0, len(flat), 2):
            key, value = flat[i], flat[i + 1]
            if type(key) is not bytes or type(value) is not bytes:
                raise ValueError(f"bucket snapshot: item {i // 2} is not a bytes pair")
            # Snapshots are written in key order; insisting on it also rules out duplicates.
            if previous is not None and key <= previous:
                raise ValueError(f"bucket snapshot: keys out of order at item {i // 2}")
            previous = key
            size += len(key) + len(value)
        items = SortedDict(zip(flat[0::2], flat[1::2], strict=True))
        return BucketState(items, size)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix`, or None when
    there is none (the prefix is empty or all 0xff bytes)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _check_bytes(what: str, value: object) -> None:
    if type(value) is not bytes:
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _check_limit(limit: object) -> None:
    if limit is None:
        return
    if type(limit) is not int:
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def _short(value: object) -> str:
    """A bounded repr for error messages: a bad command may carry a huge value."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


if TYPE_CHECKING:
    _conforms: StateMachine[BucketState, BucketCommand, BucketReply, BucketQuery, BucketAnswer] = (
        BucketMachine()
    )
