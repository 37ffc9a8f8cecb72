"""The bucket registry: every name in exactly one range, an idempotent catalog, group
ids never reused, range maps set once at bootstrap, and snapshots."""

from __future__ import annotations

import bisect
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boutique.machine import CommandFailed, MachineHost, encode_value
from boutique.registry import (
    DEFAULT_SPLITS,
    BucketInfo,
    Range,
    RangeMap,
    RegistryMachine,
    plan_ranges,
    range_ids,
    validate_bucket_name,
)

Host = MachineHost[Any, Any, Any, Any, Any]

FOUR = plan_ranges(DEFAULT_SPLITS, [1, 2, 3, 4], 3)


def fresh(ranges: RangeMap | None = FOUR) -> Host:
    return MachineHost(RegistryMachine(ranges))


def apply(host: Host, *commands: object) -> list[object]:
    return [host.apply_entry(host.applied_index + 1, encode_value(c)) for c in commands]


def create(host: Host, name: str) -> dict[str, Any]:
    """Create a bucket that does not exist yet; return its info."""
    [reply] = apply(host, ("create", name))
    assert isinstance(reply, tuple)
    status, info = reply
    assert status == "created"
    assert isinstance(info, dict)
    return info


# The range map


def test_default_ranges() -> None:
    assert [(r.id, r.start, r.end) for r in FOUR] == [
        ("a-g", "", "h"),
        ("h-n", "h", "o"),
        ("o-u", "o", "v"),
        ("v-z", "v", None),
    ]


@pytest.mark.parametrize(
    ("name", "range_id"),
    [
        ("", "a-g"),
        ("apples", "a-g"),
        ("gzzzz", "a-g"),
        ("Zebra", "a-g"),
        ("0day", "a-g"),
        ("!bang", "a-g"),
        ("h", "h-n"),
        ("nuts", "h-n"),
        ("o", "o-u"),
        ("shopping", "o-u"),
        ("uuu", "o-u"),
        ("v", "v-z"),
        ("zoo", "v-z"),
        ("~tilde", "v-z"),
        ("éclair", "v-z"),
        ("日本", "v-z"),
        ("\U0010ffff", "v-z"),
    ],
)
def test_range_for_examples(name: str, range_id: str) -> None:
    assert FOUR.range_for(name).id == range_id


split_lists = st.lists(st.text(min_size=1, max_size=3), max_size=5).map(
    lambda s: sorted(set(s), key=lambda x: x.encode("utf-8", "surrogatepass"))
)


@given(name=st.text(), splits=split_lists)
def test_every_name_falls_in_exactly_one_range(name: str, splits: list[str]) -> None:
    ranges = RangeMap.from_splits(splits, (1,))
    owners = [r for r in ranges if r.contains(name)]
    assert owners == [ranges.range_for(name)]
    # And it is the range the UTF-8 bytes of the name select.
    encoded = [s.encode("utf-8", "surrogatepass") for s in splits]
    index = bisect.bisect_right(encoded, name.encode("utf-8", "surrogatepass"))
    assert ranges.range_for(name) == ranges.ranges[index]


@given(name=st.text())
def test_every_name_falls_in_one_default_range(name: str) -> None:
    assert sum(r.contains(name) for r in FOUR) == 1


def test_plan_ranges_four_nodes_rf3() -> None:
    assert [(r.id, r.replicas, r.preferred_leader) for r in FOUR] == [
        ("a-g", (1, 2, 3), 1),
        ("h-n", (2, 3, 4), 2),
        ("o-u", (3, 4, 1), 3),
        ("v-z", (4, 1, 2), 4),
    ]


def test_plan_ranges_rejects_impossible() -> None:
    with pytest.raises(ValueError, match="replication"):
        plan_ranges(DEFAULT_SPLITS, [1, 2], 3)
    with pytest.raises(ValueError, match="sorted"):
        plan_ranges(["o", "h"], [1], 1)
    with pytest.raises(ValueError, match="distinct"):
        plan_ranges(["h"], [1, 1], 1)


@pytest.mark.parametrize(
    ("splits", "ids"),
    [
        ((), ("a-z",)),
        (("h", "o", "v"), ("a-g", "h-n", "o-u", "v-z")),
        (("b", "z"), ("a", "b-y", "z")),
        (("hm", "o"), ("r0", "r1", "r2")),
        (("H",), ("r0", "r1")),
    ],
)
def test_range_ids(splits: tuple[str, ...], ids: tuple[str, ...]) -> None:
    assert range_ids(splits) == ids


@pytest.mark.parametrize(
    "ranges",
    [
        [],
        [Range("x", "a", None, (1,))],  # does not start at ""
        [Range("x", "", "h", (1,))],  # does not reach the end
        [Range("x", "", "h", (1,)), Range("y", "i", None, (1,))],  # a gap
        [Range("x", "", "h", (1,)), Range("x", "h", None, (1,))],  # same id
    ],
)
def test_range_map_rejects_holes_and_overlaps(ranges: list[Range]) -> None:
    with pytest.raises(ValueError):
        RangeMap(ranges)


@pytest.mark.parametrize(
    "args",
    [
        ("", "", None, (1,)),
        ("x", "b", "a", (1,)),
        ("x", "", None, ()),
        ("x", "", None, (0,)),
        ("x", "", None, (1, 1)),
        ("x", "", None, (True,)),
        ("x", "", None, (1, 2), 3),
    ],
)
def test_range_rejects_bad_fields(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        Range(*args)


def test_range_map_wire_round_trip() -> None:
    assert RangeMap.from_wire(FOUR.to_wire()) == FOUR
    # As it arrives after msgpack: arrays are tuples.
    from boutique.machine import decode_value

    assert RangeMap.from_wire(decode_value(encode_value(FOUR.to_wire()))) == FOUR


# Bucket names


@pytest.mark.parametrize("name", ["a", "shopping", "Shop_2024.v1", "日本", "x" * 255, "a:b", '"q"'])
def test_valid_names(name: str) -> None:
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 256, "é" * 128, "a b", "a\tb", "a\nb", "a/b", "\x00", "\x7f", "a\u00a0b", "\ud800"],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError):
        validate_bucket_name(name)


@pytest.mark.parametrize("name", [None, b"bytes", 5])
def test_names_must_be_str(name: object) -> None:
    with pytest.raises(TypeError):
        validate_bucket_name(name)


# The catalog


def test_create_is_idempotent() -> None:
    host = fresh()
    first, again = apply(host, ("create", "shopping"), ("create", "shopping"))
    info = {
        "name": "shopping",
        "group": "b/shopping/1",
        "range_id": "o-u",
        "replicas": [3, 4, 1],
        "created_seq": 1,
    }
    assert first == ("created", info)
    assert again == ("exists", info)
    assert host.query(("lookup", "shopping")) == info
    assert host.query(("list",)) == ["shopping"]
    assert host.query(("count",)) == 1


def test_drop_and_create_again_gets_a_new_group() -> None:
    host = fresh()
    first = create(host, "cart")
    assert apply(host, ("drop", "cart"), ("drop", "cart")) == [True, False]
    assert host.query(("lookup", "cart")) is None
    second = create(host, "cart")
    assert first["group"] == "b/cart/1"
    assert second["group"] == "b/cart/2"


def test_list_is_sorted_by_utf8_bytes() -> None:
    host = fresh()
    names = ["zoo", "apple", "Zebra", "éclair", "~", "h", "a.b"]
    apply(host, *[("create", n) for n in names])
    assert host.query(("list",)) == sorted(names, key=lambda n: n.encode())


def test_buckets_land_in_their_range() -> None:
    host = fresh()
    for name, range_id, replicas in [
        ("Apple", "a-g", [1, 2, 3]),
        ("milk", "h-n", [2, 3, 4]),
        ("tea", "o-u", [3, 4, 1]),
        ("wine", "v-z", [4, 1, 2]),
    ]:
        info = create(host, name)
        assert (info["range_id"], info["replicas"]) == (range_id, replicas)


@pytest.mark.parametrize(
    "command",
    [
        ("create", "a b"),
        ("create", ""),
        ("create", b"bytes"),
        ("create",),
        ("drop", "a/b"),
        ("set_ranges", "nope"),
        ("set_ranges", []),
        ("set_ranges", [{"id": "x"}]),
        ("set_ranges", FOUR.to_wire(), "0"),
        ("frobnicate", "x"),
    ],
)
def test_invalid_commands_change_nothing(command: object) -> None:
    host = fresh()
    apply(host, ("create", "keep"))
    before = host.machine.snapshot(host.state)
    [reply] = apply(host, command)
    assert isinstance(reply, CommandFailed)
    assert host.machine.snapshot(host.state) == before


def test_create_before_the_ranges_are_set_fails() -> None:
    host = fresh(None)
    assert host.query(("ranges",)) is None
    assert host.query(("range_for", "x")) is None
    assert host.query(("ranges_version",)) == 0
    [reply] = apply(host, ("create", "early"))
    assert reply == CommandFailed("ValueError", "the range map is not set yet")
    assert host.query(("list",)) == []


def test_bootstrap_sets_ranges_once() -> None:
    host = fresh(None)
    other = plan_ranges(["m"], [1, 2, 3], 2)
    replies = apply(
        host,
        ("set_ranges", FOUR.to_wire(), 0),
        ("set_ranges", other.to_wire(), 0),  # a second bootstrap loses
    )
    assert replies == [("set", 1), ("stale", 1)]
    assert RangeMap.from_wire(host.query(("ranges",))) == FOUR
    assert host.query(("range_for", "milk"))["id"] == "h-n"
    # An admin replacing the map unconditionally.
    assert apply(host, ("set_ranges", other.to_wire())) == [("set", 2)]
    assert RangeMap.from_wire(host.query(("ranges",))) == other


def test_new_ranges_apply_to_new_buckets_only() -> None:
    host = fresh()
    apply(host, ("create", "milk"))
    apply(host, ("set_ranges", plan_ranges([], [1, 2, 3, 4], 1).to_wire()))
    apply(host, ("create", "mint"))
    assert host.query(("lookup", "milk"))["replicas"] == [2, 3, 4]
    assert host.query(("lookup", "mint"))["replicas"] == [1]


@pytest.mark.parametrize("query", [("lookup",), ("range_for", 5), ("nope",), ("list", "extra")])
def test_invalid_queries_raise(query: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        fresh().query(query)


def test_lookup_of_an_invalid_name_is_none() -> None:
    assert fresh().query(("lookup", "no such/bucket")) is None


# Snapshots


def test_snapshot_round_trip() -> None:
    host = fresh()
    apply(
        host,
        ("create", "a"),
        ("create", "b"),
        ("drop", "a"),
        ("create", "日本"),
        ("create", "a"),
    )
    machine = RegistryMachine()  # a replica with no initial ranges restores them all
    state = machine.restore(host.machine.snapshot(host.state))
    assert state.ranges == FOUR
    assert state.ranges_version == 1
    assert state.next_seq == 5
    assert state.buckets == host.state.buckets
    assert machine.snapshot(state) == host.machine.snapshot(host.state)
    # The restored replica keeps numbering where the original left off.
    reply, state = machine.apply(state, ("create", "c"))
    assert reply == ("created", BucketInfo("c", "b/c/5", "a-g", (1, 2, 3), 5).to_wire())


@given(
    st.lists(st.tuples(st.sampled_from(["create", "drop"]), st.sampled_from("abcxyz")), max_size=30)
)
def test_snapshot_mid_stream_behaves_the_same(commands: list[tuple[str, str]]) -> None:
    half = len(commands) // 2
    host = fresh()
    apply(host, *commands[:half])
    copy = fresh()
    copy.restore(host.snapshot())
    assert apply(host, *commands[half:]) == apply(copy, *commands[half:])
    assert host.snapshot() == copy.snapshot()


def test_unset_snapshot_round_trip() -> None:
    machine = RegistryMachine()
    state = machine.restore(machine.snapshot(machine.initial_state()))
    assert state.ranges is None
    assert state.ranges_version == 0
    assert state.next_seq == 1


def good_snapshot(**changes: object) -> bytes:
    value: dict[str, object] = {
        "format": 1,
        "ranges": FOUR.to_wire(),
        "ranges_version": 1,
        "next_seq": 2,
        "buckets": [BucketInfo("a", "b/a/1", "a-g", (1, 2, 3), 1).to_wire()],
    }
    value.update(changes)
    return encode_value(value)


def test_good_snapshot_restores() -> None:
    assert RegistryMachine().restore(good_snapshot()).next_seq == 2


def test_a_format_2_snapshot_restores_without_tombstones() -> None:
    restored = RegistryMachine().restore(good_snapshot(format=2, nodes=[], moves=[]))
    assert restored.removed == set()
    assert restored.next_seq == 2


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        encode_value([1, 2]),
        good_snapshot(format=2),
        good_snapshot(format=3, nodes=[], moves=[], removed=[0]),
        good_snapshot(format=3, nodes=[], moves=[], removed="4"),
        good_snapshot(extra=1),
        good_snapshot(next_seq=1),  # the bucket's seq is not below next_seq
        good_snapshot(ranges=None),  # version 1 but no ranges
        good_snapshot(ranges_version=-1),
        good_snapshot(buckets=[BucketInfo("a", "b/a/9", "a-g", (1,), 1).to_wire()]),
        good_snapshot(buckets=[BucketInfo("a b", "b/a b/1", "a-g", (1,), 1).to_wire()]),
        good_snapshot(
            buckets=[
                BucketInfo("a", "b/a/1", "a-g", (1,), 1).to_wire(),
                BucketInfo("a", "b/a/1", "a-g", (1,), 1).to_wire(),
            ]
        ),
    ],
)
def test_restore_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        RegistryMachine().restore(data)


# Many CREATEs in one entry (``runtime.create_batch``)


def test_create_many_answers_each_name_as_its_own_create_would() -> None:
    batched, single = fresh(), fresh()
    create(batched, "kept")
    create(single, "kept")
    names = ["apples", "bad/name", "kept", "pears", "apples", ""]
    [replies] = apply(batched, ("create_many", names))
    assert isinstance(replies, list)
    expected = [
        (r.error_type, r.message) if isinstance(r, CommandFailed) else r
        for r in apply(single, *(("create", name) for name in names))
    ]
    got = [r[1:] if r[0] == "failed" else r for r in replies]
    assert got == expected
    assert [r[0] for r in replies] == [
        "created",
        "failed",
        "exists",
        "created",
        "exists",  # the same name twice in one batch: created, then it exists
        "failed",
    ]
    # Same catalog and sequence as one create entry per name: a name that failed
    # changed nothing, and the snapshot format is the one it always was.
    machine = RegistryMachine(FOUR)
    assert machine.snapshot(batched.state) == machine.snapshot(single.state)


def test_create_many_fails_each_name_alone_when_nothing_can_be_created() -> None:
    host = fresh(None)  # no range map yet: every create fails, the entry does not
    [replies] = apply(host, ("create_many", ["apples", "pears"]))
    assert replies == [
        ("failed", "ValueError", "the range map is not set yet"),
        ("failed", "ValueError", "the range map is not set yet"),
    ]
    assert host.state.buckets == {}


def test_create_many_refuses_names_that_are_not_an_array() -> None:
    host = fresh()
    [reply] = apply(host, ("create_many", "apples"))
    assert reply == CommandFailed("TypeError", "create_many: the names must be an array")
    assert host.state.buckets == {}
