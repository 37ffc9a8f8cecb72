"""The registry's state and the values it holds: ranges, the range map, bucket infos,
cluster members and pending moves, with their wire forms and validation.

Its own module so that the registry machine (``boutique.registry``) and the online
changes it applies (``boutique.placement``) both import these types without importing
each other. Every value is validated on construction or in ``from_wire``: a malformed
one raises ``ValueError`` and is never half built.

This module never does I/O, reads the clock or depends on hash order; it imports
nothing of the project but ``boutique.machine``'s wire value type.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeAlias

from boutique.machine import WireValue

__all__ = [
    "MAX_NAME_BYTES",
    "BucketInfo",
    "Move",
    "NodeInfo",
    "Range",
    "RangeMap",
    "RegistryState",
    "Wire",
    "as_array",
    "as_str",
    "bucket_group_id",
    "check_node_id",
    "check_splits",
    "range_ids",
    "short_repr",
    "validate_bucket_name",
    "wire_fields",
]

MAX_NAME_BYTES = 255

Wire: TypeAlias = dict[str, WireValue]
"""The msgpack-ready form of a `Range` or a `BucketInfo`."""


_SLASH_OR_SPACE = re.compile(r"[/\s]")
"""Its whitespace class matches exactly the characters ``str.isspace`` accepts."""


def validate_bucket_name(name: object) -> str:
    """Return `name` if it is a valid bucket name, else raise `TypeError`/`ValueError`.

    Valid: a str of 1 to 255 bytes in UTF-8, only printable characters, no whitespace
    and no "/". Names are case-sensitive and compared as given (no normalization).
    """
    if type(name) is not str:
        raise TypeError(f"a bucket name must be a str, not {type(name).__name__}")
    try:
        size = len(name) if name.isascii() else len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"bucket name {short_repr(name)} is not valid UTF-8") from None
    if not 1 <= size <= MAX_NAME_BYTES:
        raise ValueError(f"a bucket name must be 1 to {MAX_NAME_BYTES} bytes in UTF-8, got {size}")
    # The same rule as the loop below, checked in C: a registry snapshot of 100,000
    # names runs this 100,000 times. The loop finds the culprit for the message.
    if name.isprintable() and _SLASH_OR_SPACE.search(name) is None:
        return name
    for char in name:
        if char == "/" or char.isspace() or not char.isprintable():
            raise ValueError(f"bucket name {short_repr(name)} holds {char!r}, which is not allowed")
    return name


def bucket_group_id(name: str, seq: int) -> str:
    """The Raft group id of the bucket `name` created with sequence number `seq`."""
    return f"b/{name}/{seq}"


def range_ids(splits: Sequence[str]) -> tuple[str, ...]:
    """Names for the ranges cut by `splits`: letter spans like "a-g", "h-n" when every
    split is one letter from "b" to "z", else "r0", "r1", ..."""
    if all(len(s) == 1 and "b" <= s <= "z" for s in splits):
        lows = ["a", *splits]
        highs = [chr(ord(s) - 1) for s in splits] + ["z"]
        return tuple(lo if lo == hi else f"{lo}-{hi}" for lo, hi in zip(lows, highs, strict=True))
    return tuple(f"r{i}" for i in range(len(splits) + 1))


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A cluster member as the registry knows it: how to reach it, and whether it is
    being drained before removal."""

    id: int
    name: str
    host: str
    client_port: int
    peer_port: int
    leaving: bool = False

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.host, self.client_port, self.peer_port, self.leaving]

    @classmethod
    def from_wire(cls, value: object) -> NodeInfo:
        if not isinstance(value, list | tuple) or len(value) != 6:
            raise ValueError("node info must be [id, name, host, client_port, peer_port, leaving]")
        node_id, name, host, client_port, peer_port, leaving = value
        if type(node_id) is not int or node_id < 1:
            raise ValueError(f"node id must be a positive int, got {node_id!r}")
        if type(name) is not str or not name or len(name) > 64 or not name.isprintable():
            raise ValueError(f"invalid node name {name!r}")
        if type(host) is not str or not host:
            raise ValueError(f"invalid host {host!r}")
        for port in (client_port, peer_port):
            if type(port) is not int or not 1 <= port <= 65535:
                raise ValueError(f"invalid port {port!r}")
        if type(leaving) is not bool:
            raise ValueError("leaving must be a bool")
        return cls(node_id, name, host, client_port, peer_port, leaving)


@dataclass(frozen=True, slots=True)
class Move:
    """Replace replica ``frm`` by ``to`` in every bucket of range ``range_id``."""

    range_id: str
    frm: int
    to: int

    def to_wire(self) -> list[Any]:
        return [self.range_id, self.frm, self.to]

    @classmethod
    def from_wire(cls, value: object) -> Move:
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise ValueError("a move must be [range_id, frm, to]")
        range_id, frm, to = value
        if type(range_id) is not str or type(frm) is not int or type(to) is not int:
            raise ValueError(f"malformed move {value!r}")
        return cls(range_id, frm, to)


@dataclass(frozen=True, slots=True)
class Range:
    """Bucket names from `start` (inclusive) to `end` (exclusive; None: no end), and
    the nodes that replicate the buckets created in it. Validated on construction."""

    id: str
    start: str
    end: str | None
    replicas: tuple[int, ...]
    preferred_leader: int | None = None

    def __post_init__(self) -> None:
        if type(self.id) is not str or not self.id:
            raise ValueError(f"a range id must be a non-empty str, got {self.id!r}")
        if type(self.start) is not str:
            raise ValueError(f"range {self.id}: start must be a str")
        if self.end is not None and (type(self.end) is not str or self.end <= self.start):
            raise ValueError(f"range {self.id}: end must be None or a str after start")
        if type(self.replicas) is not tuple or not self.replicas:
            raise ValueError(f"range {self.id}: replicas must be a non-empty tuple of node ids")
        for node in self.replicas:
            check_node_id(node, f"range {self.id}: replica")
        if len(set(self.replicas)) != len(self.replicas):
            raise ValueError(f"range {self.id}: replicas repeat a node")
        if self.preferred_leader is None:
            return
        check_node_id(self.preferred_leader, f"range {self.id}: preferred leader")
        if self.preferred_leader not in self.replicas:
            raise ValueError(f"range {self.id}: preferred leader is not one of its replicas")

    def contains(self, name: str) -> bool:
        return self.start <= name and (self.end is None or name < self.end)

    def to_wire(self) -> Wire:
        return {
            "id": self.id,
            "start": self.start,
            "end": self.end,
            "replicas": list(self.replicas),
            "preferred_leader": self.preferred_leader,
        }

    @classmethod
    def from_wire(cls, value: object) -> Range:
        """Inverse of `to_wire` (lists or tuples); `ValueError` if malformed."""
        fields = wire_fields(value, _RANGE_KEYS, "range")
        replicas = fields["replicas"]
        if not isinstance(replicas, list | tuple):
            raise ValueError("range: replicas must be an array")
        leader = fields["preferred_leader"]
        return cls(
            as_str(fields["id"], "range: id"),
            as_str(fields["start"], "range: start"),
            None if fields["end"] is None else as_str(fields["end"], "range: end"),
            tuple(check_node_id(node, "range: replica") for node in replicas),
            None if leader is None else check_node_id(leader, "range: preferred_leader"),
        )


_RANGE_KEYS = frozenset({"id", "start", "end", "replicas", "preferred_leader"})


class RangeMap:
    """Ranges that cover every name exactly once, in order: the first starts at "",
    each ends where the next starts, the last has no end. Immutable."""

    __slots__ = ("_by_id", "_ranges", "_starts")

    def __init__(self, ranges: Iterable[Range]) -> None:
        ordered = tuple(ranges)
        if not ordered:
            raise ValueError("a range map needs at least one range")
        if ordered[0].start != "":
            raise ValueError(f'the first range ({ordered[0].id}) must start at ""')
        for before, after in pairwise(ordered):
            if before.end != after.start:
                raise ValueError(
                    f"range {before.id} must end where range {after.id} starts "
                    f"({before.end!r} != {after.start!r})"
                )
        if ordered[-1].end is not None:
            raise ValueError(f"the last range ({ordered[-1].id}) must have no end")
        by_id = {r.id: r for r in ordered}
        if len(by_id) != len(ordered):
            raise ValueError("range ids must be distinct")
        self._ranges = ordered
        self._starts = [r.start for r in ordered]
        self._by_id = by_id

    @classmethod
    def from_splits(
        cls, splits: Sequence[str], replicas: tuple[int, ...], preferred_leader: int | None = None
    ) -> RangeMap:
        """Ranges cut at `splits`, all on the same replicas (e.g. a single node)."""
        check_splits(splits)
        starts = ["", *splits]
        ends: list[str | None] = [*splits, None]
        return cls(
            Range(range_id, start, end, replicas, preferred_leader)
            for range_id, start, end in zip(range_ids(splits), starts, ends, strict=True)
        )

    @property
    def ranges(self) -> tuple[Range, ...]:
        return self._ranges

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._starts[1:])

    def range_for(self, name: str) -> Range:
        """The one range `name` falls in. Total over all strings."""
        # str order is code point order, which is UTF-8 byte order.
        return self._ranges[bisect.bisect_right(self._starts, name) - 1]

    def get(self, range_id: str) -> Range | None:
        return self._by_id.get(range_id)

    def __iter__(self) -> Iterator[Range]:
        return iter(self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeMap):
            return NotImplemented
        return self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash(self._ranges)

    def __repr__(self) -> str:
        return f"RangeMap({list(self._ranges)!r})"

    def to_wire(self) -> list[Wire]:
        return [r.to_wire() for r in self._ranges]

    @classmethod
    def from_wire(cls, value: object) -> RangeMap:
        """Inverse of `to_wire`; `ValueError` if malformed or not a valid map."""
        if not isinstance(value, list | tuple):
            raise ValueError("a range map must be an array of ranges")
        return cls(Range.from_wire(item) for item in value)


@dataclass(frozen=True, slots=True)
class BucketInfo:
    """What the catalog knows about one bucket: its Raft group and where it lives."""

    name: str
    group: str
    range_id: str
    replicas: tuple[int, ...]
    created_seq: int
    moved: bool = False
    """True once a move changed ``replicas`` (``set_bucket_replicas``): they are no
    longer the group's founding members, so no replica may start the group from its
    founding state (see ``runtime.dormant``)."""

    def to_wire(self) -> Wire:
        wire: Wire = {
            "name": self.name,
            "group": self.group,
            "range_id": self.range_id,
            "replicas": list(self.replicas),
            "created_seq": self.created_seq,
        }
        if self.moved:
            # Only when set: an unmoved bucket's entry is what it always was.
            wire["moved"] = True
        return wire

    @classmethod
    def from_wire(cls, value: object) -> BucketInfo:
        """Inverse of `to_wire` (lists or tuples); `ValueError` if malformed."""
        moved = isinstance(value, dict) and value.get("moved") is True
        fields = wire_fields(value, _MOVED_INFO_KEYS if moved else _INFO_KEYS, "bucket info")
        try:
            name = validate_bucket_name(fields["name"])
        except TypeError as exc:
            raise ValueError(f"bucket info: {exc}") from None
        seq = fields["created_seq"]
        if type(seq) is not int or seq < 1:
            raise ValueError("bucket info: created_seq must be a positive int")
        group = as_str(fields["group"], "bucket info: group")
        if group != bucket_group_id(name, seq):
            raise ValueError(f"bucket info: group {group!r} does not match {name!r} and {seq}")
        replicas = fields["replicas"]
        if not isinstance(replicas, list | tuple) or not replicas:
            raise ValueError("bucket info: replicas must be a non-empty array")
        return cls(
            name,
            group,
            as_str(fields["range_id"], "bucket info: range_id"),
            tuple(check_node_id(node, "bucket info: replica") for node in replicas),
            seq,
            moved,
        )


_INFO_KEYS = frozenset({"name", "group", "range_id", "replicas", "created_seq"})
_MOVED_INFO_KEYS = _INFO_KEYS | {"moved"}


class RegistryState:
    """The registry's replicated state. Change it only through `RegistryMachine.apply`.

    `ranges` is None until the first `set_ranges` (unless the machine was built with
    initial ranges). `next_seq` is the sequence number the next created bucket gets.
    """

    __slots__ = (
        "buckets",
        "moves",
        "next_seq",
        "nodes",
        "ranges",
        "ranges_version",
        "removed",
        "started",
    )

    def __init__(
        self,
        ranges: RangeMap | None = None,
        ranges_version: int = 0,
        buckets: dict[str, BucketInfo] | None = None,
        next_seq: int = 1,
        nodes: dict[int, NodeInfo] | None = None,
        moves: dict[str, Move] | None = None,
        started: set[int] | None = None,
        removed: set[int] | None = None,
    ) -> None:
        self.ranges = ranges
        self.ranges_version = ranges_version
        self.buckets: dict[str, BucketInfo] = {} if buckets is None else buckets
        self.next_seq = next_seq
        self.nodes: dict[int, NodeInfo] = {} if nodes is None else nodes
        """Cluster members and their addresses (see `boutique.placement`)."""
        self.moves: dict[str, Move] = {} if moves is None else moves
        """Pending replica moves, by range id."""
        self.started: set[int] = set() if started is None else started
        """Nodes that have started with their storage (never forgotten, even once a
        node is removed: its id may not found anything again)."""
        self.removed: set[int] = set() if removed is None else removed
        """Tombstones: ids of nodes that were removed. Such an id is never admitted
        again (a node that comes back is a new node with a new id), and peers tell a
        node with such an id that it was removed (see ``runtime/transport.py``)."""

    def __repr__(self) -> str:
        return (
            f"RegistryState(ranges_version={self.ranges_version}, "
            f"buckets={len(self.buckets)}, next_seq={self.next_seq})"
        )


def as_array(value: object, what: str) -> list[object] | tuple[object, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be an array")
    return value


def wire_fields(value: object, keys: frozenset[str], what: str) -> Mapping[object, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a map")
    if value.keys() != keys:
        missing = sorted(keys - value.keys())
        extra = sorted(repr(k) for k in value.keys() - keys)
        raise ValueError(f"{what}: missing keys {missing}, unexpected keys {extra}")
    return value


def as_str(value: object, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} must be a str")
    return value


def check_node_id(value: object, what: str) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{what} must be a positive int node id, got {short_repr(value)}")
    return value


def check_splits(splits: Sequence[str]) -> None:
    for i, split in enumerate(splits):
        if type(split) is not str or not split:
            raise ValueError(f"split point {i} must be a non-empty str")
        if i and split <= splits[i - 1]:
            raise ValueError(
                f"split points must be sorted and distinct: {splits[i - 1]!r} then {split!r}"
            )


def short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
