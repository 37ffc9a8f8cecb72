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
    ("create_many", names)           a list with one reply per name, in order: what
                                     ("create", name) would answer after the names
                                     before it, or ("failed", error type, message)
                                     where that would fail. One entry for many
                                     CREATEs (``runtime.create_batch``): each
                                     succeeds or fails on its own, and a name given
                                     twice is "created" then "exists"
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

The state and the values it holds (`Range`, `RangeMap`, `BucketInfo`, `RegistryState`,
`NodeInfo`, `Move`) live in `boutique.registry_state`, which `boutique.placement` imports
too; they are re-exported here.

This module never does I/O, reads the clock or depends on hash order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias

from boutique import placement
from boutique.catalog_codec import catalog_from_wire, catalog_to_wire
from boutique.machine import decode_value, encode_value
from boutique.registry_state import (
    MAX_NAME_BYTES,
    BucketInfo,
    Move,
    NodeInfo,
    Range,
    RangeMap,
    RegistryState,
    Wire,
    as_array,
    bucket_group_id,
    check_node_id,
    check_splits,
    range_ids,
    short_repr,
    validate_bucket_name,
    wire_fields,
)

if TYPE_CHECKING:
    from boutique.machine import StateMachine

__all__ = [
    "DEFAULT_SPLITS",
    "MAX_NAME_BYTES",
    "META_GROUP",
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

META_GROUP = "meta"
"""The Raft group that replicates the registry (the nodes run this machine in it)."""

DEFAULT_SPLITS: tuple[str, ...] = ("h", "o", "v")
"""Four ranges: "a-g" (everything below "h"), "h-n", "o-u", "v-z" (from "v" up)."""

RegistryCommand: TypeAlias = tuple[object, ...]
"""("create", name), ("create_many", names), ("drop", name[, group]), ("set_ranges",
ranges[, version]), and the online changes of `boutique.placement`: ("add_node", info),
("drain_node", id), ("remove_node", id), ("start_move", range, frm, to),
("set_bucket_replicas", name, group, replicas), ("finish_move", range), ("split_range",
range, at), ("node_started", id)."""
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

_SNAPSHOT_FORMAT = 5
"""5: the catalog in columns (``boutique.catalog_codec``); 4 wrote a map per bucket and
is still read."""


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
    check_splits(splits)
    ids = range_ids(splits)
    starts = ["", *splits]
    ends: list[str | None] = [*splits, None]
    ranges = []
    for i, (range_id, start, end) in enumerate(zip(ids, starts, ends, strict=True)):
        replicas = tuple(node_ids[(i + j) % n] for j in range(replication))
        ranges.append(Range(range_id, start, end, replicas, replicas[0]))
    return RangeMap(ranges)


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
            case ("create_many", raw_names):
                return self._create_many(state, raw_names), state
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
                node = check_node_id(node_id, "node_started")
                if node in state.started:
                    return False, state
                state.started.add(node)
                return True, state
            case _:
                raise ValueError(f"not a registry command: {short_repr(command)}")

    def _create_many(self, state: RegistryState, raw_names: object) -> list[RegistryReply]:
        """One ``create`` per name, each answered on its own: a name that cannot be
        created fails alone (``create`` raises before it changes anything), with the
        error type and message its own ``create`` entry would have given."""
        if not isinstance(raw_names, tuple | list):
            raise TypeError("create_many: the names must be an array")
        replies: list[RegistryReply] = []
        for raw_name in raw_names:
            try:
                reply, state = self.apply(state, ("create", raw_name))
            except (TypeError, ValueError) as exc:
                reply = ("failed", type(exc).__name__, str(exc))
            replies.append(reply)
        return replies

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
                raise ValueError(f"not a registry query: {short_repr(query)}")

    def snapshot(self, state: RegistryState) -> bytes:
        return encode_value(
            {
                "format": _SNAPSHOT_FORMAT,
                "ranges": None if state.ranges is None else state.ranges.to_wire(),
                "ranges_version": state.ranges_version,
                "next_seq": state.next_seq,
                "buckets": catalog_to_wire(state.buckets),
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
            value = {"started": [], "removed": [], **value, "format": 4}
        per_bucket_maps = isinstance(value, dict) and value.get("format") == 4
        if per_bucket_maps:
            assert isinstance(value, dict)
            value = {**value, "format": _SNAPSHOT_FORMAT}
        fields = wire_fields(value, _SNAPSHOT_KEYS, "registry snapshot")
        nodes = {}
        for wire in as_array(fields["nodes"], "registry snapshot: nodes"):
            info_ = NodeInfo.from_wire(wire)
            nodes[info_.id] = info_
        moves = {}
        for wire in as_array(fields["moves"], "registry snapshot: moves"):
            move = Move.from_wire(wire)
            moves[move.range_id] = move
        if type(fields["format"]) is not int or fields["format"] != _SNAPSHOT_FORMAT:
            raise ValueError(f"registry snapshot: unknown format {fields['format']!r}")
        started = {
            check_node_id(node, "registry snapshot: started")
            for node in as_array(fields["started"], "registry snapshot: started")
        }
        removed = {
            check_node_id(node, "registry snapshot: removed")
            for node in as_array(fields["removed"], "registry snapshot: removed")
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
        if per_bucket_maps:
            buckets = _maps_to_catalog(fields["buckets"], next_seq)
        else:
            buckets = catalog_from_wire(fields["buckets"], next_seq)
        return RegistryState(ranges, version, buckets, next_seq, nodes, moves, started, removed)


def _maps_to_catalog(wires: object, next_seq: int) -> dict[str, BucketInfo]:
    """The catalog of a format 4 snapshot: one ``BucketInfo.to_wire`` map per bucket."""
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
    return buckets


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


if TYPE_CHECKING:
    _conforms: StateMachine[
        RegistryState, RegistryCommand, RegistryReply, RegistryQuery, RegistryAnswer
    ] = RegistryMachine()
