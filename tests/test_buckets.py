"""The bucket machine: a model test against a dict, ordered reads and their bounds,
snapshots, and rejected commands that leave the state as it was."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boutique.buckets import BucketMachine, BucketState, prefix_end
from boutique.machine import CommandFailed, MachineHost, encode_value

Host = MachineHost[Any, Any, Any, Any, Any]

# Short keys from a tiny alphabet so puts, deletes, prefixes and bounds collide often.
keys = st.binary(max_size=3).map(lambda b: bytes(x % 4 for x in b)) | st.sampled_from(
    [b"", b"\xff", b"\xff\xff", b"\x00"]
)
values = st.binary(max_size=5)
limits = st.none() | st.integers(min_value=0, max_value=6)

operations = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("delete"), keys),
)


def fresh() -> Host:
    return MachineHost(BucketMachine())


def load(host: Host, commands: list[tuple[Any, ...]]) -> list[object]:
    start = host.applied_index + 1
    return [host.apply_entry(i, encode_value(command)) for i, command in enumerate(commands, start)]


def model_size(model: dict[bytes, bytes]) -> int:
    return sum(len(k) + len(v) for k, v in model.items())


@settings(max_examples=300)
@given(
    ops=st.lists(operations, max_size=60),
    probes=st.lists(st.tuples(keys, st.none() | keys, limits), min_size=1, max_size=8),
)
def test_model(
    ops: list[tuple[Any, ...]], probes: list[tuple[bytes, bytes | None, int | None]]
) -> None:
    host = fresh()
    model: dict[bytes, bytes] = {}
    for op in ops:
        [reply] = load(host, [op])
        if op[0] == "put":
            model[op[1]] = op[2]
            assert reply is None
        else:
            assert reply is (op[1] in model)
            model.pop(op[1], None)
        assert host.query(("stats",)) == {"keys": len(model), "bytes": model_size(model)}

    ordered = sorted(model)
    assert host.query(("count",)) == len(model)
    assert host.query(("keys", None, None)) == ordered
    for key in ordered:
        assert host.query(("get", key)) == model[key]
    for start, end, limit in probes:
        assert host.query(("get", start)) == model.get(start)
        expected = [(k, model[k]) for k in ordered if k >= start and (end is None or k < end)]
        assert host.query(("scan", start, end, limit)) == expected[:limit]
        with_prefix = [k for k in ordered if k.startswith(start)]
        assert host.query(("keys", start, limit)) == with_prefix[:limit]


def test_scan_bounds() -> None:
    host = fresh()
    load(host, [("put", k, k.upper()) for k in [b"a", b"b", b"c", b"d"]])
    assert host.query(("scan", b"b", b"d", None)) == [(b"b", b"B"), (b"c", b"C")]
    assert host.query(("scan", b"b", None, None)) == [(b"b", b"B"), (b"c", b"C"), (b"d", b"D")]
    assert host.query(("scan", b"", None, 2)) == [(b"a", b"A"), (b"b", b"B")]
    assert host.query(("scan", b"bb", b"cc", None)) == [(b"c", b"C")]
    assert host.query(("scan", b"c", b"c", None)) == []
    assert host.query(("scan", b"d", b"a", None)) == []
    assert host.query(("scan", b"a", None, 0)) == []
    assert host.query(("scan", b"e", None, None)) == []


def test_keys_prefix_bounds() -> None:
    host = fresh()
    stored = [b"", b"a", b"ab", b"abc", b"ac", b"b", b"a\xff", b"a\xff\xff", b"b\x00"]
    load(host, [("put", k, b"") for k in stored])
    assert host.query(("keys", b"a", None)) == [b"a", b"ab", b"abc", b"ac", b"a\xff", b"a\xff\xff"]
    assert host.query(("keys", b"a\xff", None)) == [b"a\xff", b"a\xff\xff"]
    assert host.query(("keys", b"ab", 1)) == [b"ab"]
    assert host.query(("keys", b"", None)) == sorted(stored)
    assert host.query(("keys", None, 3)) == [b"", b"a", b"ab"]
    assert host.query(("keys", b"z", None)) == []
    # A start: where the next page of a KEYS reply begins (last key + \x00).
    assert host.query(("keys", b"a", None, b"abc\x00")) == [b"ac", b"a\xff", b"a\xff\xff"]
    assert host.query(("keys", b"a", 2, b"a\xff")) == [b"a\xff", b"a\xff\xff"]
    assert host.query(("keys", None, 2, b"b")) == [b"b", b"b\x00"]
    assert host.query(("keys", b"ab", None, b"")) == [b"ab", b"abc"]
    assert host.query(("keys", b"b", None, b"a")) == [b"b", b"b\x00"]  # start before prefix


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"", None), (b"a", b"b"), (b"a\xff", b"b"), (b"\xff\xff", None), (b"ab\x00", b"ab\x01")],
)
def test_prefix_end(prefix: bytes, end: bytes | None) -> None:
    assert prefix_end(prefix) == end


def test_empty_values_and_keys_are_stored() -> None:
    host = fresh()
    assert load(host, [("put", b"", b""), ("put", b"k", b"")]) == [None, None]
    assert host.query(("get", b"")) == b""
    assert host.query(("get", b"k")) == b""
    assert host.query(("stats",)) == {"keys": 2, "bytes": 1}
    assert load(host, [("delete", b"k"), ("delete", b"k")]) == [True, False]
    assert host.query(("stats",)) == {"keys": 1, "bytes": 0}


def test_overwrite_adjusts_size() -> None:
    host = fresh()
    load(host, [("put", b"key", b"12345"), ("put", b"key", b"1")])
    assert host.query(("stats",)) == {"keys": 1, "bytes": 4}


@pytest.mark.parametrize(
    "command",
    [
        ("put", "text key", b"v"),
        ("put", b"k", "text value"),
        ("put", b"k", 5),
        ("put", b"k", None),
        ("put", b"k"),
        ("put", b"k", b"v", b"extra"),
        ("delete", "k"),
        ("delete",),
        ("get", b"k"),
        ("scan", b"", None, None),
        ("truncate",),
        "put",
        42,
        {"put": b"k"},
    ],
)
def test_invalid_commands_change_nothing(command: object) -> None:
    host = fresh()
    load(host, [("put", b"a", b"1"), ("put", b"b", b"22")])
    before = host.machine.snapshot(host.state)
    [reply] = load(host, [command])  # type: ignore[list-item]
    assert isinstance(reply, CommandFailed)
    assert reply.error_type in {"TypeError", "ValueError"}
    assert host.applied_index == 3
    assert host.machine.snapshot(host.state) == before
    assert host.query(("scan", b"", None, None)) == [(b"a", b"1"), (b"b", b"22")]
    assert host.query(("stats",)) == {"keys": 2, "bytes": 5}


@pytest.mark.parametrize(
    "query",
    [
        ("get", "k"),
        ("keys", "a", None),
        ("keys", None, -1),
        ("keys", None, True),
        ("keys", None, 1.5),
        ("scan", None, None, None),
        ("scan", b"", "z", None),
        ("scan", b"", None, -2),
        ("count", 1),
        ("nope",),
    ],
)
def test_invalid_queries_raise(query: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        fresh().query(query)


def test_error_messages_are_bounded() -> None:
    host = fresh()
    [reply] = load(host, [("put", b"k", b"v" * 100_000, "extra")])
    assert isinstance(reply, CommandFailed)
    assert len(reply.message) < 200


@given(st.dictionaries(keys, values, max_size=40))
def test_snapshot_round_trip(model: dict[bytes, bytes]) -> None:
    machine = BucketMachine()
    host = fresh()
    load(host, [("put", k, v) for k, v in model.items()])
    state = machine.restore(machine.snapshot(host.state))
    assert list(state.items.items()) == sorted(model.items())
    assert state.size == model_size(model)
    assert machine.snapshot(state) == machine.snapshot(host.state)
    # The restored state behaves the same for later commands.
    _, state = machine.apply(state, ("put", b"new", b"value"))
    assert machine.query(state, ("stats",)) == {
        "keys": len(model | {b"new": b"value"}),
        "bytes": model_size(model | {b"new": b"value"}),
    }


def test_snapshot_through_the_host() -> None:
    host = fresh()
    load(host, [("put", b"x", b"1"), ("put", b"y", b"2"), ("delete", b"x")])
    other = fresh()
    other.restore(host.snapshot())
    assert other.applied_index == 3
    assert other.query(("scan", b"", None, None)) == [(b"y", b"2")]


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never valid msgpack
        encode_value({"a": 1}),
        encode_value([b"k"]),  # odd length
        encode_value([b"k", "v"]),
        encode_value(["k", b"v"]),
        encode_value([b"b", b"1", b"a", b"2"]),  # out of order
        encode_value([b"a", b"1", b"a", b"2"]),  # duplicate
    ],
)
def test_restore_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        BucketMachine().restore(data)


def test_state_repr_is_small() -> None:
    state = BucketState()
    assert repr(state) == "BucketState(keys=0, size=0)"
