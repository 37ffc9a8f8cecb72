"""Raft messages to plain msgpack-ready values and back: compact, positional, strict.

A message is encoded as a list: a small integer tag naming its type, then its fields in
declaration order (``[tag, frm, to, term, ...]``). Nested values are positional too:

- an ``Entry`` is ``[term, index, type, data]`` (``type`` the ``EntryType`` int),
- a ``SnapshotMeta`` is ``[index, term, voters, learners]`` with the two ``ConfState``
  sets as sorted lists of ids,
- ``tuple[bytes, ...]`` fields (read contexts) are lists of bytes.

A batch, one frame's worth of traffic for one destination node, is a map from group id
(str) to the list of encoded messages for that group.

``decode_message`` and ``decode_batch`` read bytes that came off the network: they trust
nothing, check every type and range, and raise only ``CodecError`` whatever they are
given. Tags are part of the wire format: never renumber them, only add new ones.

This module never does I/O, never imports trio, and never uses pickle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from boutique.raft.messages import (
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    ConfState,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotChunk,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    TransferLeaderRequest,
    VoteRequest,
    VoteResponse,
)

__all__ = ["CodecError", "decode_batch", "decode_message", "encode_batch", "encode_message"]

_MAX_U64 = 2**64 - 1


class CodecError(ValueError):
    """A value that is not a well-formed encoded message or batch."""


TAGS: Mapping[type, int] = {
    VoteRequest: 1,
    VoteResponse: 2,
    AppendRequest: 3,
    AppendResponse: 4,
    Heartbeat: 5,
    HeartbeatResponse: 6,
    SnapshotChunk: 7,
    SnapshotResponse: 8,
    TimeoutNow: 9,
    ReadIndexRequest: 10,
    ReadIndexResponse: 11,
    TransferLeaderRequest: 12,
}
"""The wire tag of each message type. Append-only."""

_ENTRY_TYPES = {kind.value: kind for kind in EntryType}


# --- Field kinds ------------------------------------------------------------------------
#
# A message field's kind is read from its annotation (the core's messages module uses
# postponed annotations, so these are strings). An annotation this table does not know
# fails at import, so a new field in the core cannot be silently left off the wire.


def _is_sequence(value: object) -> bool:
    return type(value) is list or type(value) is tuple


def _nat(value: object, where: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_U64:
        raise CodecError(f"{where}: expected a non-negative int, got {type(value).__name__}")
    return value


def _bool(value: object, where: str) -> bool:
    if type(value) is not bool:
        raise CodecError(f"{where}: expected a bool, got {type(value).__name__}")
    return value


def _bytes(value: object, where: str) -> bytes:
    if type(value) is not bytes:
        raise CodecError(f"{where}: expected bytes, got {type(value).__name__}")
    return value


def _sequence(value: object, where: str, length: int | None = None) -> Sequence[object]:
    if not _is_sequence(value):
        raise CodecError(f"{where}: expected an array, got {type(value).__name__}")
    assert isinstance(value, list | tuple)
    if length is not None and len(value) != length:
        raise CodecError(f"{where}: expected {length} items, got {len(value)}")
    return value


def _encode_entry(entry: Entry) -> list[Any]:
    return [entry.term, entry.index, int(entry.type), entry.data]


def _decode_entry(value: object, where: str) -> Entry:
    term, index, kind, data = _sequence(value, where, 4)
    entry_type = _ENTRY_TYPES.get(kind) if type(kind) is int else None
    if entry_type is None:
        raise CodecError(f"{where}.type: not an EntryType")
    return Entry(
        term=_nat(term, f"{where}.term"),
        index=_nat(index, f"{where}.index"),
        data=_bytes(data, f"{where}.data"),
        type=entry_type,
    )


def _encode_entries(entries: tuple[Entry, ...]) -> list[Any]:
    return [[e.term, e.index, e.type.value, e.data] for e in entries]


def _decode_entries(value: object, where: str) -> tuple[Entry, ...]:
    # The hot path of every append: checks inlined, and an error message (which needs
    # the entry's position) only built for an entry that fails them.
    items = _sequence(value, where)
    entries = []
    types = _ENTRY_TYPES
    for item in items:
        if (type(item) is list or type(item) is tuple) and len(item) == 4:
            term, index, kind, data = item
            if (
                type(term) is int
                and type(index) is int
                and type(data) is bytes
                and 0 <= term <= _MAX_U64
                and 0 <= index <= _MAX_U64
                and type(kind) is int
                and kind in types
            ):
                entries.append(Entry(term, index, data, types[kind]))
                continue
        _decode_entry(item, f"{where}[{len(entries)}]")  # raises the precise error
        raise CodecError(f"{where}[{len(entries)}]: malformed entry")  # pragma: no cover
    return tuple(entries)


def _decode_ids(value: object, where: str) -> frozenset[int]:
    items = _sequence(value, where)
    ids = frozenset(_nat(item, where) for item in items)
    if len(ids) != len(items):
        raise CodecError(f"{where}: duplicate ids")
    return ids


def _encode_meta(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, sorted(meta.conf.voters), sorted(meta.conf.learners)]


def _decode_meta(value: object, where: str) -> SnapshotMeta:
    index, term, voters, learners = _sequence(value, where, 4)
    return SnapshotMeta(
        index=_nat(index, f"{where}.index"),
        term=_nat(term, f"{where}.term"),
        conf=ConfState(
            voters=_decode_ids(voters, f"{where}.voters"),
            learners=_decode_ids(learners, f"{where}.learners"),
        ),
    )


def _encode_contexts(contexts: tuple[bytes, ...]) -> list[bytes]:
    return list(contexts)


def _decode_contexts(value: object, where: str) -> tuple[bytes, ...]:
    items = _sequence(value, where)
    return tuple(_bytes(item, where) for item in items)


def _same(value: Any) -> Any:
    return value


_Encoder = Callable[[Any], Any]
_Decoder = Callable[[object, str], Any]

_KINDS: Mapping[str, tuple[_Encoder, _Decoder]] = {
    "int": (_same, _nat),
    "bool": (_same, _bool),
    "bytes": (_same, _bytes),
    "tuple[Entry, ...]": (_encode_entries, _decode_entries),
    "tuple[bytes, ...]": (_encode_contexts, _decode_contexts),
    "SnapshotMeta": (_encode_meta, _decode_meta),
}


@dataclasses.dataclass(frozen=True, slots=True)
class _Schema:
    cls: type
    tag: int
    names: tuple[str, ...]
    encoders: tuple[_Encoder, ...]
    decoders: tuple[_Decoder, ...]
    wheres: tuple[str, ...]
    """``Type.field`` of each field, for error messages (built once, not per message)."""
    fields: tuple[tuple[str, _Encoder], ...]
    """(name, encoder) of each field, in order."""
    int_fields: tuple[int, ...]
    """Positions of the non-negative integer fields."""
    other_fields: tuple[tuple[int, _Decoder], ...]
    """(position, decoder) of every other field."""


def _schema(cls: type, tag: int) -> _Schema:
    fields = dataclasses.fields(cls)
    kinds = []
    for f in fields:
        kind = _KINDS.get(str(f.type))
        if kind is None:
            raise TypeError(f"codec cannot encode {cls.__name__}.{f.name}: {f.type}")
        kinds.append(kind)
    return _Schema(
        cls=cls,
        tag=tag,
        names=tuple(f.name for f in fields),
        encoders=tuple(encode for encode, _ in kinds),
        decoders=tuple(decode for _, decode in kinds),
        wheres=tuple(f"{cls.__name__}.{f.name}" for f in fields),
        fields=tuple((f.name, encode) for f, (encode, _) in zip(fields, kinds, strict=True)),
        int_fields=tuple(i for i, (_, decode) in enumerate(kinds) if decode is _nat),
        other_fields=tuple(
            (i, decode) for i, (_, decode) in enumerate(kinds) if decode is not _nat
        ),
    )


if set(TAGS) != set(MESSAGE_TYPES) or len(set(TAGS.values())) != len(TAGS):
    raise TypeError("codec TAGS must give every Raft message type its own tag")

_BY_TYPE: dict[type, _Schema] = {cls: _schema(cls, tag) for cls, tag in TAGS.items()}
_BY_TAG: dict[int, _Schema] = {schema.tag: schema for schema in _BY_TYPE.values()}


# --- Public API -------------------------------------------------------------------------


def encode_message(msg: Message) -> list[Any]:
    """``[tag, field, ...]`` for a Raft message; ``TypeError`` if it is not one."""
    schema = _BY_TYPE.get(type(msg))
    if schema is None:
        raise TypeError(f"not a Raft message: {type(msg).__name__}")
    out: list[Any] = [schema.tag]
    out += [encode(getattr(msg, name)) for name, encode in schema.fields]
    return out


def decode_message(obj: object) -> Message:
    """The message ``obj`` encodes (arrays may be lists or tuples); ``CodecError`` if
    it is malformed in any way."""
    if not _is_sequence(obj):
        raise CodecError(f"message: expected an array, got {type(obj).__name__}")
    assert isinstance(obj, list | tuple)
    if not obj:
        raise CodecError("message: empty array")
    tag = obj[0]
    schema = _BY_TAG.get(tag) if type(tag) is int else None
    if schema is None:
        raise CodecError("message: unknown type tag")
    if len(obj) != len(schema.names) + 1:
        raise CodecError(
            f"{schema.cls.__name__}: expected {len(schema.names)} fields, got {len(obj) - 1}"
        )
    values = obj[1:] if type(obj) is list else list(obj[1:])
    # Integer fields (most of every message) are checked inline; the rest decoded.
    for i in schema.int_fields:
        value = values[i]
        if type(value) is not int or not 0 <= value <= _MAX_U64:
            _nat(value, schema.wheres[i])  # raises the precise error
    for i, decode in schema.other_fields:
        values[i] = decode(values[i], schema.wheres[i])
    msg: Message = schema.cls(*values)
    return msg


def encode_batch(batch: Mapping[str, Sequence[Message]]) -> dict[str, list[list[Any]]]:
    """``{group id: [encoded message, ...]}`` for one destination node."""
    return {group: [encode_message(msg) for msg in msgs] for group, msgs in batch.items()}


def decode_batch(obj: object) -> dict[str, list[Message]]:
    """Inverse of :func:`encode_batch`; ``CodecError`` if anything in it is malformed."""
    if type(obj) is not dict:
        raise CodecError(f"batch: expected a map, got {type(obj).__name__}")
    batch: dict[str, list[Message]] = {}
    for group, msgs in obj.items():
        if type(group) is not str:
            raise CodecError(f"batch: group id must be str, got {type(group).__name__}")
        batch[group] = [decode_message(msg) for msg in _sequence(msgs, "batch group")]
    return batch
