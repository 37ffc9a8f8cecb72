"""The bucket catalog in a registry snapshot, in columns (snapshot format 5).

A cluster may hold 100,000 buckets, and the registry is snapshotted every few thousand
entries and restored at every restart, so the catalog's snapshot form must be cheap to
build and read. Format 4 wrote one map of five keys per bucket; this writes four
arrays — the names (sorted), their sequence numbers, and for each an index into a
small table of placements (range id, replicas, moved) — since nearly every bucket
shares its placement with thousands of others. Building it makes no object per bucket
beyond two list slots; msgpack packs arrays of str and int in C. The group id is not
written: it is ``bucket_group_id(name, seq)`` by definition. Restoring shares one
replicas tuple per placement, so a restored catalog also takes less memory.

Every field is checked on the way in (a snapshot may come from a peer or a damaged
disk): ``ValueError`` names what is wrong. This module does no I/O and never depends on
hash order (names are sorted; placements are numbered in the order first met).
"""

from __future__ import annotations

from collections.abc import Mapping

from boutique.registry_state import (
    BucketInfo,
    Wire,
    as_str,
    bucket_group_id,
    check_node_id,
    validate_bucket_name,
    wire_fields,
)

__all__ = ["catalog_from_wire", "catalog_to_wire"]

_KEYS = frozenset({"names", "seqs", "where", "places"})

_Place = tuple[str, tuple[int, ...], bool]


def catalog_to_wire(buckets: Mapping[str, BucketInfo]) -> Wire:
    names = sorted(buckets)
    seqs: list[int] = []
    where: list[int] = []
    places: dict[_Place, int] = {}
    for name in names:
        info = buckets[name]
        seqs.append(info.created_seq)
        place = (info.range_id, info.replicas, info.moved)
        index = places.get(place)
        if index is None:
            index = places[place] = len(places)
        where.append(index)
    return {
        "names": list(names),
        "seqs": list(seqs),
        "where": list(where),
        "places": [[range_id, list(replicas), moved] for range_id, replicas, moved in places],
    }


def catalog_from_wire(value: object, next_seq: int) -> dict[str, BucketInfo]:
    """Inverse of ``catalog_to_wire``; every bucket's sequence number is below
    ``next_seq`` (the registry's counter)."""
    fields = wire_fields(value, _KEYS, "registry snapshot: buckets")
    names = _array(fields["names"], "names")
    seqs = _array(fields["seqs"], "seqs")
    where = _array(fields["where"], "where")
    places = [_place(raw) for raw in _array(fields["places"], "places")]
    if not len(names) == len(seqs) == len(where):
        raise ValueError("registry snapshot: buckets: names, seqs and where differ in length")
    buckets: dict[str, BucketInfo] = {}
    for name, seq, index in zip(names, seqs, where, strict=True):
        try:
            name = validate_bucket_name(name)
        except TypeError as exc:
            raise ValueError(f"registry snapshot: {exc}") from None
        if type(seq) is not int or seq < 1:
            raise ValueError(f"registry snapshot: bucket {name!r}: seq must be a positive int")
        if seq >= next_seq:
            raise ValueError(f"registry snapshot: bucket {name!r} is from the future")
        if type(index) is not int or not 0 <= index < len(places):
            raise ValueError(f"registry snapshot: bucket {name!r}: no placement {index!r}")
        if name in buckets:
            raise ValueError(f"registry snapshot: bucket {name!r} appears twice")
        range_id, replicas, moved = places[index]
        buckets[name] = BucketInfo(name, bucket_group_id(name, seq), range_id, replicas, seq, moved)
    return buckets


def _array(value: object, key: str) -> list[object] | tuple[object, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"registry snapshot: buckets: {key} must be an array")
    return value


def _place(value: object) -> _Place:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError("registry snapshot: a placement must be [range_id, replicas, moved]")
    range_id, replicas, moved = value
    if not isinstance(replicas, list | tuple) or not replicas:
        raise ValueError("registry snapshot: a placement's replicas must be a non-empty array")
    if type(moved) is not bool:
        raise ValueError("registry snapshot: a placement's moved must be a bool")
    nodes = tuple(check_node_id(node, "registry snapshot: replica") for node in replicas)
    return as_str(range_id, "registry snapshot: range_id"), nodes, moved
