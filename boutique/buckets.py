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
    ("keys", prefix, limit, start)   the same, from the first key >= start
    ("scan", start, end, limit)      [key, value] pairs with start <= key < end (end
                                     None: to the last key), in order
    ("count",)                       the number of keys
    ("stats",)                       {"keys": number of keys, "bytes": key + value bytes}

Snapshots stream (see `ChunkedSnapshots` in `boutique.machine`): a snapshot is a
sequence of msgpack arrays, each a flat [key1, value1, key2, value2, ...] of a few MiB,
keys strictly increasing across the whole sequence (one array, as older nodes wrote,
is such a sequence too). `snapshot_chunks` freezes the state at the call without
copying it: until the stream ends, `apply` records the old value of each key it first
changes (copy-on-write), and the stream reads every other key from the live map. So a
multi-GB bucket is serialized a slice per event-loop turn while writes go on.
A dropped bucket's snapshot is the one map {"tombstone": true}.

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

from collections.abc import Iterable, Iterator
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias

import msgpack  # type: ignore[import-untyped]
from sortedcontainers import SortedDict  # type: ignore[import-untyped]

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
    | tuple[Literal["keys"], bytes | None, int | None, bytes]
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

    __slots__ = ("dropped", "frozen", "items", "size")

    def __init__(self, items: Any = None, size: int = 0, *, dropped: bool = False) -> None:
        self.items: Any = SortedDict() if items is None else items
        self.size = size
        self.dropped = dropped
        self.frozen: Any = None
        """While a snapshot stream is open: a `SortedDict` of each key changed since
        the freeze -> its value then (None: the key did not exist)."""

    def remember(self, key: bytes) -> None:
        """Before changing `key`: keep its frozen value if a snapshot is being built."""
        frozen = self.frozen
        if frozen is not None and key not in frozen:
            frozen[key] = self.items.get(key)

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
            # The keys are gone with the bucket; a fenced group holds nothing. A snapshot
            # being built keeps reading the old state object, frozen as it was.
            return True, BucketState(dropped=True)
        if state.dropped:
            raise BucketDropped("the bucket was dropped")
        match command:
            case ("put", key, value):
                _check_bytes("key", key)
                _check_bytes("value", value)
                state.remember(key)
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
                state.remember(key)
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
            case ("keys", prefix, limit, *rest):
                if prefix is not None:
                    _check_bytes("prefix", prefix)
                _check_limit(limit)
                start = rest[0] if len(rest) == 1 else b""
                _check_bytes("start", start)
                if len(rest) > 1:
                    raise ValueError(f"not a bucket query: {_short(query)}")
                keys: Iterator[bytes]
                low = max(prefix or b"", start)
                if prefix:
                    keys = items.irange(low, prefix_end(prefix), inclusive=(True, False))
                elif start:
                    keys = items.irange(low, None, inclusive=(True, False))
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
        return self.restore_chunks((data,))

    def snapshot_chunks(self, state: BucketState) -> BucketSnapshotStream:
        """The state as of now, in pieces of about `SNAPSHOT_SLICE_BYTES` (see the
        module docstring). One stream at a time per state."""
        return BucketSnapshotStream(state)

    def restore_chunks(self, pieces: Iterable[bytes]) -> BucketState:
        """Rebuild from a snapshot's pieces, decoding as they come: the memory needed
        beyond the new state is about one piece, whatever the bucket's size."""
        restorer = self.restorer()
        for piece in pieces:
            restorer.feed(piece)
        return restorer.finish()

    def restorer(self) -> BucketRestorer:
        """A state rebuilt from pieces pushed one at a time (a follower feeds it the
        chunks of a snapshot as they arrive, so installing it costs little at the end)."""
        return BucketRestorer()


class BucketRestorer:
    """Builds a `BucketState` from the pieces of a snapshot, in order, as they come.

    Each `feed` decodes the whole msgpack values the pieces so far complete and inserts
    their keys; `finish` checks nothing is left over and hands the state out. Any
    malformation raises `ValueError` (then the restorer is of no further use)."""

    __slots__ = ("_dropped", "_fed", "_items", "_previous", "_seen", "_size", "_unpacker")

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            use_list=False,
            ext_hook=_reject_ext,
            max_buffer_size=_MAX_UNPACK_BUFFER,
        )
        self._items: Any = SortedDict()
        self._size = 0
        self._previous: bytes | None = None
        self._seen = False
        self._fed = 0
        self._dropped = False

    def feed(self, piece: bytes) -> None:
        self._unpacker.feed(piece)
        self._fed += len(piece)
        items = self._items
        try:
            for flat in self._unpacker:
                if flat == _TOMBSTONE_SNAPSHOT and not self._seen:
                    self._seen = self._dropped = True
                    continue
                if self._dropped:
                    raise ValueError("bucket snapshot: data after the tombstone")
                self._seen = True
                if not isinstance(flat, tuple) or len(flat) % 2:
                    raise ValueError(
                        "not a bucket snapshot: expected flat lists of key, value pairs"
                    )
                previous = self._previous
                for i in range(0, len(flat), 2):
                    key, value = flat[i], flat[i + 1]
                    if type(key) is not bytes or type(value) is not bytes:
                        raise ValueError(f"bucket snapshot: item {len(items)} is not a bytes pair")
                    # Snapshots are written in key order; insisting on it also rules out
                    # duplicates.
                    if previous is not None and key <= previous:
                        raise ValueError(f"bucket snapshot: keys out of order at item {len(items)}")
                    previous = key
                    items[key] = value
                    self._size += len(key) + len(value)
                self._previous = previous
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError("not a bucket snapshot: undecodable") from exc

    def finish(self) -> BucketState:
        if not self._seen or self._unpacker.tell() != self._fed:
            raise ValueError("not a bucket snapshot: undecodable")
        if self._dropped:
            return BucketState(dropped=True)
        return BucketState(self._items, self._size)


SNAPSHOT_SLICE_BYTES = 4 * 1024 * 1024
"""About how much of a bucket one piece of its snapshot holds (one piece per turn)."""
SNAPSHOT_SLICE_KEYS = 50_000
"""At most this many keys in one piece, so a bucket of tiny keys costs short turns too."""
_MAX_UNPACK_BUFFER = 2**31 - 1
"""Older snapshots are one array, up to SQLite's 1 GB blob limit: decode it whole."""


class BucketSnapshotStream:
    """A bucket's snapshot as of its creation, a slice at a time (a `SnapshotStream`).

    Between slices `apply` may change the state: the state keeps the frozen value of
    every key changed since (``BucketState.frozen``), and each slice merges the live
    keys in its range with those. Reading live keys by range (``irange`` after the
    last key served) stays correct whatever was inserted or deleted meanwhile.
    """

    __slots__ = ("_done", "_last", "_state", "_tombstone", "_undo")

    def __init__(self, state: BucketState) -> None:
        if state.frozen is not None:
            raise RuntimeError("a snapshot of this bucket is already being built")
        self._state = state
        self._tombstone = state.dropped
        self._undo: Any = SortedDict()
        state.frozen = self._undo
        self._last: bytes | None = None
        self._done = False

    def __iter__(self) -> BucketSnapshotStream:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        if self._tombstone:
            self.close()
            tombstone: bytes = msgpack.packb(_TOMBSTONE_SNAPSHOT, use_bin_type=True)
            return tombstone
        items = self._state.items
        undo = self._undo
        last = self._last
        live: Iterator[bytes] = (
            iter(items) if last is None else items.irange(last, None, inclusive=(False, False))
        )
        keys: list[bytes] = []
        budget = SNAPSHOT_SLICE_BYTES
        exhausted = True
        for key in live:
            keys.append(key)
            budget -= len(key) + len(items[key])
            if budget <= 0 or len(keys) >= SNAPSHOT_SLICE_KEYS:
                exhausted = False
                break
        bound = None if exhausted else keys[-1]
        # Keys changed since the freeze that lie in this slice's range: deleted ones
        # are not among the live keys, and changed ones need their old value.
        changed = list(undo.irange(last, bound, inclusive=(last is None, True)))
        if changed:
            keys = sorted(set(keys).union(changed))
        flat: list[bytes] = []
        for key in keys:
            value = undo[key] if key in undo else items[key]
            if value is not None:
                flat.append(key)
                flat.append(value)
        if exhausted:
            self.close()
        else:
            self._last = bound
        packed: bytes = msgpack.packb(flat, use_bin_type=True)
        return packed

    def close(self) -> None:
        """Stop; the state stops keeping frozen values."""
        self._done = True
        if self._state.frozen is self._undo:
            self._state.frozen = None


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"msgpack extension type {code} in a bucket snapshot")


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
