"""The example machines: every command and query, rejections, and snapshot/restore
mid-stream giving the same replies and state as an uninterrupted replica."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boutique.examples import Counter, KVStore, QueueWithLength
from boutique.examples.counter import INT64_MAX, INT64_MIN
from boutique.examples.kvstore import same_value
from boutique.machine import CommandFailed, MachineHost, decode_value, encode_value


def run(
    machine: Any, commands: list[object]
) -> tuple[MachineHost[Any, Any, Any, Any, Any], list[object]]:
    """Apply commands through a host, as Raft would: encoded, in order from index 1."""
    host: MachineHost[Any, Any, Any, Any, Any] = MachineHost(machine)
    replies = [
        host.apply_entry(i, MachineHost.encode_command(c)) for i, c in enumerate(commands, start=1)
    ]
    return host, replies


# Counter


def test_counter_commands_and_query() -> None:
    host, replies = run(
        Counter(), [("incr", 5), ("decr", 2), ("incr", 10), ("set", -4), ("decr", 1)]
    )
    assert replies == [5, 3, 13, -4, -5]
    assert host.query("value") == -5


def test_counter_starts_at_zero() -> None:
    assert MachineHost(Counter()).query("value") == 0


@pytest.mark.parametrize(
    "command",
    [
        ("incr",),
        ("incr", 1, 2),
        ("incr", 1.5),
        ("incr", True),
        ("incr", "1"),
        ("mul", 2),
        "incr",
        3,
    ],
)
def test_counter_rejects_bad_commands_without_change(command: object) -> None:
    host, replies = run(Counter(), [("set", 7), command])
    assert isinstance(replies[1], CommandFailed)
    assert host.state == 7
    assert host.applied_index == 2


@pytest.mark.parametrize(
    "commands",
    [
        [("set", INT64_MAX), ("incr", 1)],
        [("set", INT64_MIN), ("decr", 1)],
        [("set", INT64_MIN), ("incr", INT64_MIN)],
    ],
)
def test_counter_stays_in_int64(commands: list[object]) -> None:
    host, replies = run(Counter(), commands)
    failed = replies[-1]
    assert isinstance(failed, CommandFailed)
    assert failed.error_type == "OverflowError"
    assert host.state == replies[0]
    decode_value(host.snapshot())


def test_counter_rejects_unknown_query() -> None:
    with pytest.raises(ValueError):
        MachineHost(Counter()).query("total")


@pytest.mark.parametrize(
    "data", [encode_value("7"), encode_value(True), encode_value(1.0), b"\xc1"]
)
def test_counter_restore_rejects_non_int(data: bytes) -> None:
    with pytest.raises(ValueError):
        Counter().restore(data)


# QueueWithLength


def test_queue_push_pop_and_queries() -> None:
    host, replies = run(
        QueueWithLength(),
        [("push", "a"), ("push", b"b"), ("push", [1, {"x": None}]), ("pop",)],
    )
    assert replies == [1, 2, 3, "a"]
    assert host.query("length") == 2
    assert host.query("peek") == b"b"
    assert host.query("items") == [b"b", (1, {"x": None})]


def test_queue_on_empty() -> None:
    host, replies = run(QueueWithLength(), [("pop",), ("push", None), ("pop",), ("pop",)])
    assert replies == [None, 1, None, None]
    assert host.query("length") == 0
    assert host.query("peek") is None
    assert host.query("items") == []


@pytest.mark.parametrize("command", [("push",), ("push", 1, 2), ("pop", 1), ("shift",), "pop"])
def test_queue_rejects_bad_commands_without_change(command: object) -> None:
    host, replies = run(QueueWithLength(), [("push", 1), command])
    assert isinstance(replies[1], CommandFailed)
    assert host.state == deque([1])


def test_queue_rejects_unknown_query() -> None:
    with pytest.raises(ValueError):
        MachineHost(QueueWithLength()).query("size")


def test_queue_restore_rejects_non_array() -> None:
    with pytest.raises(ValueError):
        QueueWithLength().restore(encode_value({"a": 1}))


# KVStore


def test_kv_put_get_delete() -> None:
    host, replies = run(
        KVStore(),
        [("put", "a", 1), ("put", "a", 2), ("put", b"b", [1, 2]), ("delete", "a"), ("delete", "a")],
    )
    assert replies == [None, 1, None, True, False]
    assert host.query(("get", "a")) is None
    assert host.query(("get", b"b")) == (1, 2)
    assert host.query(("get", "b")) is None  # str and bytes keys are distinct


def test_kv_cas() -> None:
    host, replies = run(
        KVStore(),
        [
            ("cas", "k", None, "first"),  # None matches an absent key
            ("cas", "k", None, "again"),
            ("cas", "k", "first", 1),
            ("cas", "k", True, 2),  # True is not 1
            ("cas", "k", 1.0, 2),  # nor is 1.0
            ("cas", "k", 1, (1, 2)),
            ("cas", "k", [1, 2], "list matches array"),
        ],
    )
    assert replies == [True, False, True, False, False, True, True]
    assert host.query(("get", "k")) == "list matches array"


def test_kv_keys_sorted_across_key_types() -> None:
    host, _ = run(
        KVStore(),
        [("put", k, 0) for k in ["b", "a", b"z", b"a", 10, -3, "c"]] + [("delete", "c")],
    )
    assert host.query(("keys",)) == [-3, 10, b"a", b"z", "a", "b"]
    assert MachineHost(KVStore()).query(("keys",)) == []


@pytest.mark.parametrize(
    "command",
    [
        ("put", 1.5, 0),
        ("put", None, 0),
        ("put", True, 0),
        ("put", [1], 0),
        ("delete", (1,)),
        ("cas", None, None, 1),
        ("put", "k"),
        ("get", "k"),
        ("frob",),
        "put",
    ],
)
def test_kv_rejects_bad_commands_without_change(command: object) -> None:
    host, replies = run(KVStore(), [("put", "k", "v"), command])
    assert isinstance(replies[1], CommandFailed)
    assert host.state == {"k": "v"}


@pytest.mark.parametrize("query", [("get",), ("get", 1.5), ("keys", "a"), ("put", "k", 1), "keys"])
def test_kv_rejects_bad_queries(query: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        host: MachineHost[Any, Any, Any, Any, Any] = MachineHost(KVStore())
        host.query(query)


def test_kv_restore_rejects_bad_snapshots() -> None:
    with pytest.raises(ValueError):
        KVStore().restore(encode_value([1, 2]))
    with pytest.raises(ValueError):
        KVStore().restore(encode_value({1.5: 1}))


def test_same_value() -> None:
    assert same_value({"a": [1, {b"x": None}]}, {"a": (1, {b"x": None})})
    assert same_value({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not same_value({1: "x"}, {True: "x"})
    assert not same_value({"a": 1}, {"a": 1, "b": 2})
    assert not same_value((1, 2), (1, 2, 3))
    assert not same_value(b"a", "a")
    assert not same_value(0, False)
    assert not same_value(None, 0)


# Snapshot mid-stream == uninterrupted

plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
plain_values = st.recursive(
    plain_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
junk_commands = st.tuples(st.sampled_from(["nope", "pop", "push", "put"])) | plain_scalars

amounts = st.integers(-100, 100) | st.integers(INT64_MIN, INT64_MAX)
counter_commands = st.tuples(st.sampled_from(["incr", "decr", "set"]), amounts) | junk_commands
queue_commands = st.tuples(st.just("push"), plain_values) | st.just(("pop",)) | junk_commands
keys = st.sampled_from(["a", "b", "c", b"a", 1, 2])
small_values = st.sampled_from([None, 0, 1, True, 1.0, "x", b"x", (1, 2)])
kv_commands = (
    st.tuples(st.just("put"), keys, small_values | plain_values)
    | st.tuples(st.just("delete"), keys)
    | st.tuples(st.just("cas"), keys, small_values, small_values)
    | st.tuples(st.just("put"), st.just(1.5), small_values)
    | junk_commands
)

MACHINES: dict[str, tuple[Callable[[], Any], st.SearchStrategy[object]]] = {
    "counter": (Counter, counter_commands),
    "queue": (QueueWithLength, queue_commands),
    "kv": (KVStore, kv_commands),
}


@pytest.mark.parametrize("name", sorted(MACHINES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_snapshot_midway_matches_uninterrupted(name: str, data: st.DataObject) -> None:
    make_machine, command_strategy = MACHINES[name]
    commands = data.draw(st.lists(command_strategy, max_size=40), label="commands")
    split = data.draw(st.integers(0, len(commands)), label="split")

    whole, whole_replies = run(make_machine(), commands)

    first, first_replies = run(make_machine(), commands[:split])
    resumed: MachineHost[Any, Any, Any, Any, Any] = MachineHost(make_machine())
    resumed.restore(first.snapshot())
    assert resumed.applied_index == split
    rest_replies = [
        resumed.apply_entry(i, MachineHost.encode_command(c))
        for i, c in enumerate(commands[split:], start=split + 1)
    ]

    assert first_replies + rest_replies == whole_replies
    assert resumed.state == whole.state
    assert resumed.applied_index == whole.applied_index == len(commands)
    assert resumed.snapshot() == whole.snapshot()
