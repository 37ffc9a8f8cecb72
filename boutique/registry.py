"""The bucket registry: which range a bucket name falls in, and which buckets exist.

The registry is itself a replicated state machine, run by the meta Raft group. Its
state is the range map (split points over bucket names -> ranges -> replica nodes), the
bucket catalog (name -> `BucketInfo`: the bucket's Raft group id and replicas) and a
sequence counter. `CREATE` and `DROP` go through it; every node applies the same
catalog changes in the same order and creates or removes its local bucket groups.

Names are ordered as UTF-8 bytes. For Python `str` that is the same order as comparing
the strings themselves (UTF-8 preserves code point order), so `RangeMap.range_for`
compares `str` directly and is total: every string, even one that is not a valid
bucket name, falls in exactly one range. The first range starts at "" (so it holds
uppercase, digits and punctuation) and the last has no end (so it holds "~" and all
non-ASCII names).

A bucket's group id is `b/<name>/<seq>`, with `seq` taken from the registry's counter
when the bucket is created, so a bucket dropped and created again under the same name
gets a new group and never sees the old group's log.

Leaving the registry is the second step of a DROP. The first is a tombstone committed
in the bucket's own group: this registry is replicated by the meta group, whose
majority is a different set of nodes from the bucket group's, so dropping the entry
here alone fences nothing (a bucket-group majority cut off from the meta majority
would go on accepting writes that vanish once it hears of the drop).

Commands (reply in parentheses):
    ("create", name)                 ("created", info) or ("exists", info); idempotent
    ("drop", name)                   (whether it existed); replayed from old logs only
    ("drop", name, group)            (whether it existed as `group`): a DROP proposes
                                     this after `group` committed its tombstone (see
                                     `boutique.buckets`), so it never removes a newer
                                     incarnation that was not fenced
    ("set_ranges", ranges)           ("set", new ranges version)
    ("set_ranges", ranges, version)  the same if the ranges version is `version`, else
                                     ("stale", current version): a bootstrap proposes
                                     version 0 so only the first proposal wins
    ("node_started", id)             (True if newly recorded) node `id` has started with
                                     its storage; a node whose storage is later found
                                     empty must not found anything again (see
                                     `boutique.runtime.founding`)
Queries:
    ("lookup", name)                 info or None
    ("list",)                        all bucket names, sorted
    ("count",)                       the number of buckets
    ("ranges",)                      the range map's wire form, or None if not set yet
    ("range_for", name)              the wire form of the range `name` falls in, or None
    ("ranges_version",)              how many times the range map was set (0: never)
    ("started",)                     the ids recorded by "node_started", sorted

Changing a range map replaces where *new* buckets go; each existing bucket keeps the
replicas recorded in its `BucketInfo` until something moves it. Online changes (split a
range, move a range's replicas, then its buckets' replicas) are meant to be new
commands next to `set_ranges` in `RegistryMachine.apply`, each bumping the ranges
version; they are not implemented yet.

This module never does I/O, reads the clock or depends on hash order.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Literal, TypeAlias

from boutique import placement
from boutique.machine import WireValue, decode_value, encode_value
from boutique.placement import Move, NodeInfo

if TYPE_CHECKING:
    from boutique.machine import StateMachine

__all__ = [
    "DEFAULT_SPLITS",
    "MAX_NAME_BYTES",
    "BucketInfo",
    "Range",
    "RangeMap",
    "RegistryAnswer",
    "RegistryCommand",
    "RegistryMachine",
    "RegistryQuery",
    "RegistryReply",
    "RegistryState",
    "Wire",
    "bucket_group_id",
    "plan_ranges",
    "range_ids",
    "validate_bucket_name",
]

DEFAULT_SPLITS: tuple[str, ...] = ("h", "o", "v")
"""Four ranges: "a-g" (everything below "h"), "h-n", "o-u", "v-z" (from "v" up)."""

MAX_NAME_BYTES = 255

Wire: TypeAlias = dict[str, WireValue]
"""The msgpack-ready form of a `Range` or a `BucketInfo`."""

RegistryCommand: TypeAlias = tuple[object, ...]
"""("create", name), ("drop", name[, group]), ("set_ranges", ranges[, version]), and the online
changes of `boutique.placement`: ("add_node", info), ("drain_node", id),
("remove_node", id), ("start_move", range, frm, to), ("set_bucket_replicas", name,
group, replicas), ("finish_move", range), ("split_range", range, at), ("node_started",
id)."""
RegistryReply: TypeAlias = object
RegistryQuery: TypeAlias = (
    tuple[Literal["lookup"], str]
    | tuple[Literal["list"]]
    | tuple[Literal["count"]]
    | tuple[Literal["ranges"]]
    | tuple[Literal["range_for"], str]
    | tuple[Literal["ranges_version"]]
    | tuple[Literal["nodes"]]
    | tuple[Literal["moves"]]
    | tuple[Literal["started"]]
    | tuple[Literal["removed"]]
)
RegistryAnswer: TypeAlias = (
    Wire | list[Wire] | list[str] | list[list[object]] | list[int] | int | None
)

_SNAPSHOT_FORMAT = 4


def validate_bucket_name(name: object) -> str:
    """Return `name` if it is a valid bucket name, else raise `TypeError`/`ValueError`.

    Valid: a str of 1 to 255 bytes in UTF-8, only printable characters, no whitespace
    and no "/". Names are case-sensitive and compared as given (no normalization).
    """
    if type(name) is not str:
        raise TypeError(f"a bucket name must be a str, not {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"bucket name {_short(name)} is not valid UTF-8") from None
    if not 1 <= size <= MAX_NAME_BYTES:
        raise ValueError(f"a bucket name must be 1 to {MAX_NAME_BYTES} bytes in UTF-8, got {size}")
    for char in name:
        if char == "/" or char.isspace() or not char.isprintable():
            raise ValueError(f"bucket name {_short(name)} holds {char!r}, which is not allowed")
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


def plan_ranges(splits: Sequence[str], node_ids: Sequence[int], replication: int) -> RangeMap:
    """The initial range map for a cluster: range i is led by node i mod n and
    replicated on it and the nodes after it in `node_ids` order (wrapping around),
    `replication` nodes in all. Deterministic; `ValueError` for impossible inputs."""
    n = len(node_ids)
    if n == 0:
        raise ValueError("at least one node is needed")
    if len(set(node_ids)) != n:
        raise ValueError("node ids must be distinct")
    if not 1 <= replication <= n:
        raise ValueError(f"replication must be 1 to {n} (the number of nodes), got {replication}")
    _check_splits(splits)
    ids = range_ids(splits)
    starts = ["", *splits]
    ends: list[str | None] = [*splits, None]
    ranges = []
    for i, (range_id, start, end) in enumerate(zip(ids, starts, ends, strict=True)):
        replicas = tuple(node_ids[(i + j) % n] for j in range(replication))
        ranges.append(Range(range_id, start, end, replicas, replicas[0]))
    return RangeMap(ranges)


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
            _check_node_id(node, f"range {self.id}: replica")
        if len(set(self.replicas)) != len(self.replicas):
            raise ValueError(f"range {self.id}: replicas repeat a node")
        if self.preferred_leader is None:
            return
        _check_node_id(self.preferred_leader, f"range {self.id}: preferred leader")
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
        fields = _fields(value, _RANGE_KEYS, "range")
        replicas = fields["replicas"]
        if not isinstance(replicas, list | tuple):
            raise ValueError("range: replicas must be an array")
        leader = fields["preferred_leader"]
        return cls(
            _as_str(fields["id"], "range: id"),
            _as_str(fields["start"], "range: start"),
            None if fields["end"] is None else _as_str(fields["end"], "range: end"),
            tuple(_check_node_id(node, "range: replica") for node in replicas),
            None if leader is None else _check_node_id(leader, "range: preferred_leader"),
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
        _check_splits(splits)
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

    def to_wire(self) -> Wire:
        return {
            "name": self.name,
            "group": self.group,
            "range_id": self.range_id,
            "replicas": list(self.replicas),
            "created_seq": self.created_seq,
        }

    @classmethod
    def from_wire(cls, value: object) -> BucketInfo:
        """Inverse of `to_wire` (lists or tuples); `ValueError` if malformed."""
        fields = _fields(value, _INFO_KEYS, "bucket info")
        try:
            name = validate_bucket_name(fields["name"])
        except TypeError as exc:
            raise ValueError(f"bucket info: {exc}") from None
        seq = fields["created_seq"]
        if type(seq) is not int or seq < 1:
            raise ValueError("bucket info: created_seq must be a positive int")
        group = _as_str(fields["group"], "bucket info: group")
        if group != bucket_group_id(name, seq):
            raise ValueError(f"bucket info: group {group!r} does not match {name!r} and {seq}")
        replicas = fields["replicas"]
        if not isinstance(replicas, list | tuple) or not replicas:
            raise ValueError("bucket info: replicas must be a non-empty array")
        return cls(
            name,
            group,
            _as_str(fields["range_id"], "bucket info: range_id"),
            tuple(_check_node_id(node, "bucket info: replica") for node in replicas),
            seq,
        )


_INFO_KEYS = frozenset({"name", "group", "range_id", "replicas", "created_seq"})


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


class RegistryMachine:
    """State: `RegistryState`. Command: `RegistryCommand` -> `RegistryReply`.
    Query: `RegistryQuery` -> `RegistryAnswer`. See the module docstring.

    `initial_ranges` is the range map a fresh state starts with. Pass it only when
    every replica is certain to pass the same map (tests, a single node); a cluster
    should start with None and commit its map with `("set_ranges", wire, 0)`, so the
    map lives in the replicated log rather than in each node's config file.
    """

    __slots__ = ("_initial_nodes", "_initial_ranges")

    def __init__(
        self, initial_ranges: RangeMap | None = None, initial_nodes: Iterable[NodeInfo] = ()
    ) -> None:
        self._initial_ranges = initial_ranges
        self._initial_nodes = tuple(initial_nodes)

    def initial_state(self) -> RegistryState:
        nodes = {info.id: info for info in self._initial_nodes}
        if self._initial_ranges is None:
            return RegistryState(nodes=nodes)
        return RegistryState(self._initial_ranges, ranges_version=1, nodes=nodes)

    def apply(
        self, state: RegistryState, command: RegistryCommand
    ) -> tuple[RegistryReply, RegistryState]:
        match command:
            case ("create", raw_name):
                name = validate_bucket_name(raw_name)
                existing = state.buckets.get(name)
                if existing is not None:
                    return ("exists", existing.to_wire()), state
                if state.ranges is None:
                    raise ValueError("the range map is not set yet")
                where = placement.placement_for(state, name)
                seq = state.next_seq
                info = BucketInfo(name, bucket_group_id(name, seq), where.id, where.replicas, seq)
                state.buckets[name] = info
                state.next_seq = seq + 1
                return ("created", info.to_wire()), state
            case ("drop", raw_name):
                name = validate_bucket_name(raw_name)
                return state.buckets.pop(name, None) is not None, state
            case ("drop", raw_name, group):
                name = validate_bucket_name(raw_name)
                if type(group) is not str:
                    raise TypeError("drop: the group must be a str")
                current = state.buckets.get(name)
                if current is None or current.group != group:
                    return False, state
                del state.buckets[name]
                return True, state
            case ("set_ranges", wire):
                ranges = RangeMap.from_wire(wire)
                state.ranges = ranges
                state.ranges_version += 1
                return ("set", state.ranges_version), state
            case ("set_ranges", wire, expected):
                ranges = RangeMap.from_wire(wire)
                if type(expected) is not int:
                    raise TypeError("set_ranges: the expected version must be an int")
                if expected != state.ranges_version:
                    return ("stale", state.ranges_version), state
                state.ranges = ranges
                state.ranges_version += 1
                return ("set", state.ranges_version), state
            # Online changes: see boutique.placement (each validates before mutating).
            case ("add_node", wire):
                return placement.add_node(state, wire), state
            case ("drain_node", node_id):
                return placement.drain_node(state, node_id), state
            case ("remove_node", node_id):
                return placement.remove_node(state, node_id), state
            case ("start_move", range_id, frm, to):
                return placement.start_move(state, range_id, frm, to), state
            case ("set_bucket_replicas", name, group, replicas):
                return placement.set_bucket_replicas(state, name, group, replicas), state
            case ("finish_move", range_id):
                return placement.finish_move(state, range_id), state
            case ("split_range", range_id, at):
                return placement.split_range(state, range_id, at), state
            case ("node_started", node_id):
                node = _check_node_id(node_id, "node_started")
                if node in state.started:
                    return False, state
                state.started.add(node)
                return True, state
            case _:
                raise ValueError(f"not a registry command: {_short(command)}")

    def query(self, state: RegistryState, query: RegistryQuery) -> RegistryAnswer:
        match query:
            case ("lookup", name):
                info = state.buckets.get(name) if type(name) is str else None
                return None if info is None else info.to_wire()
            case ("list",):
                return sorted(state.buckets)
            case ("count",):
                return len(state.buckets)
            case ("ranges",):
                return None if state.ranges is None else state.ranges.to_wire()
            case ("range_for", name):
                if type(name) is not str:
                    raise TypeError(f"range_for needs a str, not {type(name).__name__}")
                return None if state.ranges is None else state.ranges.range_for(name).to_wire()
            case ("ranges_version",):
                return state.ranges_version
            case ("nodes",):
                return [state.nodes[n].to_wire() for n in sorted(state.nodes)]
            case ("moves",):
                return [state.moves[r].to_wire() for r in sorted(state.moves)]
            case ("started",):
                return sorted(state.started)
            case ("removed",):
                return sorted(state.removed)
            case _:
                raise ValueError(f"not a registry query: {_short(query)}")

    def snapshot(self, state: RegistryState) -> bytes:
        return encode_value(
            {
                "format": _SNAPSHOT_FORMAT,
                "ranges": None if state.ranges is None else state.ranges.to_wire(),
                "ranges_version": state.ranges_version,
                "next_seq": state.next_seq,
                "buckets": [state.buckets[name].to_wire() for name in sorted(state.buckets)],
                "nodes": [state.nodes[n].to_wire() for n in sorted(state.nodes)],
                "moves": [state.moves[r].to_wire() for r in sorted(state.moves)],
                "started": sorted(state.started),
                "removed": sorted(state.removed),
            }
        )

    def restore(self, data: bytes) -> RegistryState:
        try:
            value = decode_value(data)
        except Exception as exc:
            raise ValueError("not a registry snapshot: undecodable") from exc
        if isinstance(value, dict) and value.get("format") == 1:
            # Format 1 predates the node table and moves.
            value = {**value, "format": 2, "nodes": [], "moves": []}
        if isinstance(value, dict) and value.get("format") == 2:
            # Format 2 predates the record of started nodes and the tombstones of
            # removed nodes; format 3 held one of the two (never both).
            value = {**value, "format": 3}
        if isinstance(value, dict) and value.get("format") == 3:
            value = {
                "started": [],
                "removed": [],
                **value,
                "format": _SNAPSHOT_FORMAT,
            }
        fields = _fields(value, _SNAPSHOT_KEYS, "registry snapshot")
        nodes = {}
        for wire in _as_array(fields["nodes"], "registry snapshot: nodes"):
            info_ = NodeInfo.from_wire(wire)
            nodes[info_.id] = info_
        moves = {}
        for wire in _as_array(fields["moves"], "registry snapshot: moves"):
            move = Move.from_wire(wire)
            moves[move.range_id] = move
        if type(fields["format"]) is not int or fields["format"] != _SNAPSHOT_FORMAT:
            raise ValueError(f"registry snapshot: unknown format {fields['format']!r}")
        started = {
            _check_node_id(node, "registry snapshot: started")
            for node in _as_array(fields["started"], "registry snapshot: started")
        }
        removed = {
            _check_node_id(node, "registry snapshot: removed")
            for node in _as_array(fields["removed"], "registry snapshot: removed")
        }
        ranges = None if fields["ranges"] is None else RangeMap.from_wire(fields["ranges"])
        version = fields["ranges_version"]
        next_seq = fields["next_seq"]
        if type(version) is not int or version < 0:
            raise ValueError("registry snapshot: ranges_version must be an int >= 0")
        if type(next_seq) is not int or next_seq < 1:
            raise ValueError("registry snapshot: next_seq must be a positive int")
        if (ranges is None) != (version == 0):
            raise ValueError("registry snapshot: ranges and ranges_version disagree")
        wires = fields["buckets"]
        if not isinstance(wires, list | tuple):
            raise ValueError("registry snapshot: buckets must be an array")
        buckets: dict[str, BucketInfo] = {}
        for wire in wires:
            info = BucketInfo.from_wire(wire)
            if info.name in buckets:
                raise ValueError(f"registry snapshot: bucket {info.name!r} appears twice")
            if info.created_seq >= next_seq:
                raise ValueError(f"registry snapshot: bucket {info.name!r} is from the future")
            buckets[info.name] = info
        return RegistryState(ranges, version, buckets, next_seq, nodes, moves, started, removed)


_SNAPSHOT_KEYS = frozenset(
    {
        "format",
        "ranges",
        "ranges_version",
        "next_seq",
        "buckets",
        "nodes",
        "moves",
        "started",
        "removed",
    }
)


def _as_array(value: object, what: str) -> list[object] | tuple[object, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be an array")
    return value


def _fields(value: object, keys: frozenset[str], what: str) -> Mapping[object, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a map")
    if value.keys() != keys:
        missing = sorted(keys - value.keys())
        extra = sorted(repr(k) for k in value.keys() - keys)
        raise ValueError(f"{what}: missing keys {missing}, unexpected keys {extra}")
    return value


def _as_str(value: object, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} must be a str")
    return value


def _check_node_id(value: object, what: str) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{what} must be a positive int node id, got {_short(value)}")
    return value


def _check_splits(splits: Sequence[str]) -> None:
    for i, split in enumerate(splits):
        if type(split) is not str or not split:
            raise ValueError(f"split point {i} must be a non-empty str")
        if i and split <= splits[i - 1]:
            raise ValueError(
                f"split points must be sorted and distinct: {splits[i - 1]!r} then {split!r}"
            )


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


if TYPE_CHECKING:
    _conforms: StateMachine[
        RegistryState, RegistryCommand, RegistryReply, RegistryQuery, RegistryAnswer
    ] = RegistryMachine()
