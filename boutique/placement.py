"""Online changes to where data lives: nodes joining and leaving, moves, range splits.

These are the registry's commands beyond create/drop. Each function validates its
command fully before it mutates the ``RegistryState`` (a refused command changes
nothing, and refuses identically on every replica), and none of them does I/O.

The plan a move follows, driven by the meta leader (``runtime/mover.py``):

1. ``("start_move", range_id, frm, to)`` records the move. From then on buckets created
   in the range get the post-move replicas, and node ``to`` hosts every bucket of the
   range that still lists ``frm`` (empty, waiting to be added).
2. For each such bucket, its group adds ``to`` as a learner, lets it catch up (from a
   snapshot if needed), promotes it, removes ``frm``, and then the registry records
   ``("set_bucket_replicas", name, group, replicas)``.
3. ``("finish_move", range_id)`` swaps ``frm`` for ``to`` in the range itself, refused
   while any bucket of the range still lists ``frm``: the range map changes in one
   step, when every bucket has moved.

A node leaves with ``("drain_node", id)``: the mover moves each of its ranges to another
node, and ``("remove_node", id)`` is only accepted once nothing lists it any more. A
removed id is kept as a tombstone (``RegistryState.removed``) and never admitted again:
a node that comes back after its removal joins as a new node, with a new id.
"""

from __future__ import annotations

from typing import Any

from boutique.registry_state import (
    BucketInfo,
    Move,
    NodeInfo,
    Range,
    RangeMap,
    RegistryState,
)

__all__ = [
    "Move",
    "NodeInfo",
    "PlacementBusy",
    "add_node",
    "bucket_hosts",
    "drain_node",
    "finish_move",
    "moved_replicas",
    "placement_for",
    "placement_for_range",
    "remove_node",
    "set_bucket_replicas",
    "span_name",
    "split_range",
    "start_move",
]


class PlacementBusy(ValueError):
    """The change conflicts with one still in progress (e.g. the range is moving);
    it may succeed later."""


def moved_replicas(replicas: tuple[int, ...], move: Move) -> tuple[int, ...]:
    """``replicas`` with ``move.frm`` replaced by ``move.to`` (same position, so a
    preferred leader stays first)."""
    return tuple(move.to if node == move.frm else node for node in replicas)


def placement_for(state: RegistryState, name: str) -> Range:
    """Where a bucket created now goes: its range, with any pending move applied."""
    assert state.ranges is not None
    where = state.ranges.range_for(name)
    move = state.moves.get(where.id)
    if move is None:
        return where

    replicas = moved_replicas(where.replicas, move)
    leader = move.to if where.preferred_leader == move.frm else where.preferred_leader
    return Range(where.id, where.start, where.end, replicas, leader)


# --- Commands ----------------------------------------------------------------------------


def add_node(state: RegistryState, wire: object) -> tuple[str, list[Any]]:
    info = NodeInfo.from_wire(wire)
    if info.leaving:
        raise ValueError("a node cannot join as leaving")
    if info.id in state.removed:
        raise ValueError(
            f"node id {info.id} was removed from the cluster; a node that joins again "
            "needs a new id (and an empty data directory)"
        )
    known = state.nodes.get(info.id)
    if known is not None:
        if (known.name, known.host, known.client_port, known.peer_port) != (
            info.name,
            info.host,
            info.client_port,
            info.peer_port,
        ):
            raise ValueError(f"node id {info.id} is already {known.name} at another address")
        return ("exists", known.to_wire())
    for other in state.nodes.values():
        if other.name == info.name:
            raise ValueError(f"node name {info.name!r} is already taken by node {other.id}")
        if (other.host, other.peer_port) == (info.host, info.peer_port) or (
            other.host,
            other.client_port,
        ) == (info.host, info.client_port):
            raise ValueError(f"address already used by node {other.name}")
    state.nodes[info.id] = info
    return ("added", info.to_wire())


def drain_node(state: RegistryState, node_id: object) -> bool:
    """Mark a node as leaving; the mover then moves its replicas away."""
    info = _known_node(state, node_id)
    if info.leaving:
        return False
    active = [n for n in state.nodes.values() if not n.leaving and n.id != info.id]
    if not active:
        raise ValueError("cannot remove the last node")
    assert state.ranges is not None
    for rng in state.ranges:
        if info.id in rng.replicas and len(active) < len(rng.replicas):
            raise ValueError(
                f"range {rng.id} needs {len(rng.replicas)} replicas; without "
                f"{info.name} only {len(active)} nodes remain"
            )
    state.nodes[info.id] = NodeInfo(
        info.id, info.name, info.host, info.client_port, info.peer_port, True
    )
    return True


def remove_node(state: RegistryState, node_id: object) -> bool:
    info = _known_node(state, node_id)
    assert state.ranges is not None
    for rng in state.ranges:
        if info.id in rng.replicas:
            raise ValueError(f"node {info.name} still replicates range {rng.id}")
    for bucket in state.buckets.values():
        if info.id in bucket.replicas:
            raise ValueError(f"node {info.name} still replicates bucket {bucket.name}")
    for move in state.moves.values():
        if info.id in (move.frm, move.to):
            raise ValueError(f"node {info.name} takes part in the move of range {move.range_id}")
    del state.nodes[info.id]
    state.removed.add(info.id)
    return True


def start_move(state: RegistryState, range_id: object, frm: object, to: object) -> list[Any]:
    rng = _known_range(state, range_id)
    source = _known_node(state, frm)
    target = _known_node(state, to)
    if rng.id in state.moves:
        move = state.moves[rng.id]
        raise PlacementBusy(f"range {rng.id} is already moving ({move.frm} -> {move.to})")
    if source.id not in rng.replicas:
        raise ValueError(f"node {source.name} does not replicate range {rng.id}")
    if target.id in rng.replicas:
        raise ValueError(f"node {target.name} already replicates range {rng.id}")
    if target.leaving:
        raise ValueError(f"node {target.name} is leaving the cluster")
    move = Move(rng.id, source.id, target.id)
    state.moves[rng.id] = move
    return move.to_wire()


def set_bucket_replicas(
    state: RegistryState, name: object, group: object, replicas: object
) -> bool:
    """Record where a bucket's group now lives; False if the bucket was dropped or
    re-created meanwhile (the group id no longer matches)."""
    if type(name) is not str or type(group) is not str:
        raise ValueError("set_bucket_replicas needs a bucket name and a group id")
    info = state.buckets.get(name)
    if info is None or info.group != group:
        return False
    nodes = _replica_tuple(replicas)
    for node in nodes:
        _known_node(state, node)

    moved = info.moved or nodes != info.replicas
    state.buckets[name] = BucketInfo(
        info.name, info.group, info.range_id, nodes, info.created_seq, moved
    )
    return True


def finish_move(state: RegistryState, range_id: object) -> bool:
    rng = _known_range(state, range_id)
    move = state.moves.get(rng.id)
    if move is None:
        return False
    for bucket in state.buckets.values():
        if bucket.range_id == rng.id and move.frm in bucket.replicas:
            raise ValueError(f"bucket {bucket.name} of range {rng.id} has not moved yet")
    _replace_range(state, placement_for_range(rng, move))
    del state.moves[rng.id]
    return True


def placement_for_range(rng: Range, move: Move) -> Range:

    leader = move.to if rng.preferred_leader == move.frm else rng.preferred_leader
    return Range(rng.id, rng.start, rng.end, moved_replicas(rng.replicas, move), leader)


def split_range(state: RegistryState, range_id: object, at: object) -> list[str]:
    """Cut a range in two at ``at``; both halves keep the replicas. Buckets are
    relabelled to the half their name falls in. Returns the two new range ids."""

    rng = _known_range(state, range_id)
    if type(at) is not str or not at:
        raise ValueError("the split point must be a non-empty string")
    if not (rng.start < at and (rng.end is None or at < rng.end)):
        raise ValueError(f"{at!r} is not inside range {rng.id}")
    if rng.id in state.moves:
        raise PlacementBusy(f"range {rng.id} is moving; split it when the move is done")
    assert state.ranges is not None
    lower_id, upper_id = span_name(rng.start, at), span_name(at, rng.end)
    taken = {r.id for r in state.ranges if r.id != rng.id}
    if lower_id in taken or upper_id in taken or lower_id == upper_id:
        lower_id, upper_id = f"{rng.id}<{at}", f"{rng.id}>={at}"
    lower = Range(lower_id, rng.start, at, rng.replicas, rng.preferred_leader)
    upper = Range(upper_id, at, rng.end, rng.replicas, rng.preferred_leader)
    ranges: list[Range] = []
    for existing in state.ranges:
        ranges.extend((lower, upper) if existing.id == rng.id else (existing,))
    state.ranges = RangeMap(ranges)
    state.ranges_version += 1
    for name, info in list(state.buckets.items()):
        if info.range_id == rng.id:
            new_id = lower_id if name < at else upper_id
            state.buckets[name] = BucketInfo(
                info.name, info.group, new_id, info.replicas, info.created_seq, info.moved
            )
    return [lower_id, upper_id]


def span_name(start: str, end: str | None) -> str:
    """A readable id for names in ``[start, end)``: "a-g" style for letter bounds."""
    letters = (start == "" or (len(start) == 1 and "a" <= start <= "z")) and (
        end is None or (len(end) == 1 and "b" <= end <= "z")
    )
    if letters:
        low = start or "a"
        high = "z" if end is None else chr(ord(end) - 1)
        return low if low == high else f"{low}-{high}"
    return f"[{start!r},{'' if end is None else repr(end)})"


# --- Helpers ------------------------------------------------------------------------------


def _known_node(state: RegistryState, node_id: object) -> NodeInfo:
    if type(node_id) is not int:
        raise ValueError(f"a node id must be an int, got {node_id!r}")
    info = state.nodes.get(node_id)
    if info is None:
        raise ValueError(f"unknown node {node_id}")
    return info


def _known_range(state: RegistryState, range_id: object) -> Range:
    if state.ranges is None:
        raise ValueError("the range map is not set yet")
    if type(range_id) is not str:
        raise ValueError(f"a range id must be a string, got {range_id!r}")
    rng = state.ranges.get(range_id)
    if rng is None:
        known = ", ".join(r.id for r in state.ranges)
        raise ValueError(f"unknown range {range_id!r} (ranges: {known})")
    return rng


def _replace_range(state: RegistryState, new: Range) -> None:

    assert state.ranges is not None
    state.ranges = RangeMap(new if r.id == new.id else r for r in state.ranges)
    state.ranges_version += 1


def _replica_tuple(value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("replicas must be a non-empty array of node ids")
    nodes = tuple(value)
    if any(type(n) is not int or n < 1 for n in nodes) or len(set(nodes)) != len(nodes):
        raise ValueError(f"invalid replicas {value!r}")
    return nodes


def bucket_hosts(info: BucketInfo, state: RegistryState) -> set[int]:
    """Nodes that should host the bucket's group now: its replicas, plus the target of
    a pending move of its range while the bucket still lists the move's source."""
    hosts = set(info.replicas)
    move = state.moves.get(info.range_id)
    if move is not None and move.frm in info.replicas:
        hosts.add(move.to)
    return hosts
