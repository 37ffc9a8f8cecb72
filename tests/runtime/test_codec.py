"""The Raft message codec: every message round-trips, and garbage raises only CodecError."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boutique.raft.messages import (
    MESSAGE_TYPES,
    AppendRequest,
    ConfState,
    Entry,
    EntryType,
    Message,
    SnapshotChunk,
    SnapshotMeta,
    TimeoutNow,
)
from boutique.runtime.codec import (
    TAGS,
    CodecError,
    decode_batch,
    decode_message,
    encode_batch,
    encode_message,
)

nats = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=1000)
ints = st.one_of(small, nats)
blobs = st.binary(max_size=64)
ids = st.frozensets(ints, max_size=5)

entries = st.builds(Entry, term=ints, index=ints, data=blobs, type=st.sampled_from(EntryType))
metas = st.builds(
    SnapshotMeta,
    index=ints,
    term=ints,
    conf=st.builds(ConfState, voters=ids, learners=ids),
)
contexts = st.lists(blobs, max_size=4).map(tuple)

# Built from the annotations, like the codec, so a field added to the core is covered.
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "int": ints,
    "bool": st.booleans(),
    "bytes": blobs,
    "tuple[Entry, ...]": st.lists(entries, max_size=5).map(tuple),
    "tuple[bytes, ...]": contexts,
    "SnapshotMeta": metas,
}
STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    cls: st.builds(cls, **{f.name: FIELD_STRATEGIES[str(f.type)] for f in dataclasses.fields(cls)})
    for cls in MESSAGE_TYPES
}
messages = st.one_of(*STRATEGIES.values())


def wire(obj: object) -> object:
    """What the peer sees after msgpack, as the frame decoder unpacks it."""
    return msgpack.unpackb(
        msgpack.packb(obj, use_bin_type=True), raw=False, strict_map_key=False, use_list=True
    )


def test_every_message_type_has_a_strategy_and_a_tag() -> None:
    assert set(STRATEGIES) == set(MESSAGE_TYPES) == set(TAGS)


def test_nested_types_have_the_fields_the_codec_knows() -> None:
    # The codec spells these positionally; a new field in the core must fail here.
    assert [f.name for f in dataclasses.fields(Entry)] == ["term", "index", "data", "type"]
    assert [f.name for f in dataclasses.fields(SnapshotMeta)] == ["index", "term", "conf"]
    assert [f.name for f in dataclasses.fields(ConfState)] == ["voters", "learners"]


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    encoded = encode_message(msg)
    assert encoded[0] == TAGS[cls]
    assert decode_message(encoded) == msg
    assert decode_message(wire(encoded)) == msg


def test_wire_format_is_positional_and_compact() -> None:
    msg = AppendRequest(
        frm=1,
        to=2,
        term=3,
        prev_log_index=4,
        prev_log_term=5,
        entries=(Entry(5, 5, b"x", EntryType.NOOP),),
        commit=4,
    )
    assert encode_message(msg) == [3, 1, 2, 3, 4, 5, [[5, 5, 1, b"x"]], 4]
    chunk = SnapshotChunk(
        1, 2, 3, SnapshotMeta(9, 2, ConfState(frozenset({3, 1}), frozenset({4}))), 0, b"", True
    )
    assert encode_message(chunk) == [7, 1, 2, 3, [9, 2, [1, 3], [4]], 0, b"", True]
    assert encode_message(TimeoutNow(1, 2, 3)) == [9, 1, 2, 3]
    assert len(msgpack.packb(encode_message(TimeoutNow(1, 2, 3)), use_bin_type=True)) == 5


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_message("hello")  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.lists(messages, max_size=4), max_size=4))
def test_batch_round_trip(batch: dict[str, list[Message]]) -> None:
    assert decode_batch(wire(encode_batch(batch))) == batch


GOOD_TIMEOUT_NOW = [9, 1, 2, 3]


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        {},
        "heartbeat",
        [99, 1, 2, 3],
        [True, 1, 2, 3],  # a bool is not a tag
        [9.0, 1, 2, 3],
        ["9", 1, 2, 3],
        [9, 1, 2],  # too few fields
        [9, 1, 2, 3, 0],  # too many
        [9, -1, 2, 3],  # negative id
        [9, 1, 2, 2**64],  # out of range
        [9, 1, 2, True],  # bool for an int
        [9, 1, 2, 3.0],
        [9, 1, b"2", 3],
        [2, 1, 2, 3, 1, False],  # int for a bool
        [3, 1, 2, 3, 4, 5, [[1, 2, 9, b""]], 4],  # unknown entry type
        [3, 1, 2, 3, 4, 5, [[1, 2, 0, "text"]], 4],  # str for bytes
        [3, 1, 2, 3, 4, 5, [[1, 2, 0]], 4],  # short entry
        [3, 1, 2, 3, 4, 5, [1], 4],
        [3, 1, 2, 3, 4, 5, {}, 4],
        [7, 1, 2, 3, [9, 2, [1, 1], []], 0, b"", True],  # duplicate voter
        [7, 1, 2, 3, [9, 2, [1], [-4]], 0, b"", True],
        [7, 1, 2, 3, [9, 2, [1]], 0, b"", True],
        [7, 1, 2, 3, [9, 2, None, []], 0, b"", True],
        [10, 1, 2, 3, [b"a", "b"]],  # str context
        [10, 1, 2, 3, b"ab"],
    ],
    ids=repr,
)
def test_malformed_messages_raise_codec_error(obj: object) -> None:
    with pytest.raises(CodecError):
        decode_message(obj)


@pytest.mark.parametrize(
    "obj", [None, [], {1: []}, {b"g": []}, {"g": None}, {"g": [GOOD_TIMEOUT_NOW, [0]]}], ids=repr
)
def test_malformed_batches_raise_codec_error(obj: object) -> None:
    with pytest.raises(CodecError):
        decode_batch(obj)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)
    assert decode_message(GOOD_TIMEOUT_NOW) == TimeoutNow(1, 2, 3)
    assert decode_message(tuple(GOOD_TIMEOUT_NOW)) == TimeoutNow(1, 2, 3)


# Anything msgpack can carry (the decoder gets lists, never tuples, from the wire, but a
# caller may hand it either).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.lists(inner, max_size=8).map(tuple),
        st.dictionaries(
            st.one_of(st.text(max_size=4), st.integers(), st.binary(max_size=4)), inner, max_size=4
        ),
    ),
    max_leaves=30,
)


@st.composite
def near_misses(draw: st.DrawFn) -> object:
    """A valid encoding with one value somewhere inside it replaced by garbage."""
    encoded: Any = encode_message(draw(messages))
    path: list[Any] = []
    node = encoded
    while isinstance(node, list) and node and draw(st.booleans()):
        i = draw(st.integers(0, len(node) - 1))
        path.append((node, i))
        node = node[i]
    if not path:
        return draw(st.one_of(garbage, st.just(encoded[:-1]), st.just([*encoded, 0])))
    parent, i = path[-1]
    parent[i] = draw(garbage)
    return encoded


@settings(max_examples=300, deadline=None)
@given(st.one_of(garbage, near_misses(), st.lists(st.integers(0, 12), min_size=1).map(list)))
def test_garbage_never_raises_anything_but_codec_error(obj: object) -> None:
    try:
        msg = decode_message(obj)
    except CodecError:
        return
    assert type(msg) in MESSAGE_TYPES
    assert decode_message(encode_message(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(garbage, st.dictionaries(st.text(max_size=4), st.lists(near_misses(), max_size=3)))
)
def test_batch_garbage_never_raises_anything_but_codec_error(obj: object) -> None:
    with contextlib.suppress(CodecError):
        decode_batch(obj)
