"""A bucket's snapshot built a slice at a time: it is the state as of the freeze whatever
is applied between slices, it restores from its pieces as a stream, and it reads the
single-array snapshots older nodes wrote."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boutique import buckets
from boutique.buckets import BucketMachine, BucketState
from boutique.machine import MachineHost, encode_value
from boutique.raft.messages import Chunks

keys = st.binary(min_size=1, max_size=2).map(lambda b: bytes(x % 6 for x in b))
operations = st.one_of(
    st.tuples(st.just("put"), keys, st.binary(max_size=4)),
    st.tuples(st.just("delete"), keys),
)


@pytest.fixture
def tiny_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buckets, "SNAPSHOT_SLICE_BYTES", 8)
    monkeypatch.setattr(buckets, "SNAPSHOT_SLICE_KEYS", 3)


def state_of(pairs: dict[bytes, bytes]) -> BucketState:
    machine = BucketMachine()
    state = machine.initial_state()
    for key, value in pairs.items():
        machine.apply(state, ("put", key, value))
    return state


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(operations, max_size=30),
    during=st.lists(st.lists(operations, max_size=4), max_size=12),
)
def test_a_snapshot_is_the_state_at_the_freeze_whatever_is_applied_between_slices(
    tiny_slices: None, before: list[Any], during: list[list[Any]]
) -> None:
    machine = BucketMachine()
    state = machine.initial_state()
    for op in before:
        machine.apply(state, op)
    frozen = dict(state.items)
    stream = machine.snapshot_chunks(state)
    pieces = []
    batches = iter(during)
    for piece in stream:
        pieces.append(piece)
        for op in next(batches, []):
            machine.apply(state, op)
    restored = machine.restore_chunks(pieces)
    assert dict(restored.items) == frozen
    assert restored.size == sum(len(k) + len(v) for k, v in frozen.items())
    # The stream ended: the state no longer keeps frozen values.
    assert state.frozen is None
    machine.apply(state, ("put", b"\x00", b"after"))
    assert state.frozen is None


def test_a_big_state_comes_in_many_slices(tiny_slices: None) -> None:
    state = state_of({bytes([i]): b"v" * 5 for i in range(30)})
    pieces = list(BucketMachine().snapshot_chunks(state))
    assert len(pieces) >= 10
    assert dict(BucketMachine().restore_chunks(pieces).items) == dict(state.items)


def test_restore_does_not_depend_on_where_the_pieces_are_cut(tiny_slices: None) -> None:
    state = state_of({bytes([i]) * 3: bytes([i]) * i for i in range(20)})
    whole = b"".join(BucketMachine().snapshot_chunks(state))
    bytewise = [whole[i : i + 1] for i in range(len(whole))]
    assert dict(BucketMachine().restore_chunks(bytewise).items) == dict(state.items)


def test_an_old_single_array_snapshot_still_restores() -> None:
    old = msgpack.packb([b"a", b"1", b"b", b"2"], use_bin_type=True)
    restored = BucketMachine().restore_chunks([old[:3], old[3:]])
    assert dict(restored.items) == {b"a": b"1", b"b": b"2"}
    assert BucketMachine().restore(old).size == 4


@pytest.mark.parametrize(
    "pieces",
    [
        [],
        [encode_value([b"a", b"1"])[:-1]],  # cut short
        [encode_value([b"b", b"1"]), encode_value([b"a", b"2"])],  # out of order across slices
        [encode_value([b"a", b"1"]), encode_value([b"a", b"2"])],  # duplicate across slices
        [encode_value([b"a", b"1"]) + b"\xc1"],  # garbage after
        [encode_value([b"a", 1])],
    ],
)
def test_malformed_streams_are_refused(pieces: list[bytes]) -> None:
    with pytest.raises(ValueError):
        BucketMachine().restore_chunks(pieces)


def test_one_stream_at_a_time_and_closing_releases_the_freeze() -> None:
    machine = BucketMachine()
    state = state_of({b"k": b"v"})
    stream = machine.snapshot_chunks(state)
    with pytest.raises(RuntimeError):
        machine.snapshot_chunks(state)
    stream.close()
    assert state.frozen is None
    assert list(stream) == []
    assert list(machine.snapshot_chunks(state))


def test_the_host_streams_with_its_applied_index_and_restores_from_chunks(
    tiny_slices: None,
) -> None:
    host: MachineHost[Any, Any, Any, Any, Any] = MachineHost(BucketMachine())
    for i in range(1, 21):
        host.apply_entry(i, encode_value(("put", bytes([i]), b"x" * i)))
    expected = dict(host.state.items)
    stream = host.snapshot_stream()
    pieces = [next(stream)]
    host.apply_entry(21, encode_value(("delete", bytes([1]))))
    host.apply_entry(22, encode_value(("put", b"new", b"y")))
    pieces.extend(stream)
    other: MachineHost[Any, Any, Any, Any, Any] = MachineHost(BucketMachine())
    other.restore(Chunks(pieces))
    assert other.applied_index == 20
    assert dict(other.state.items) == expected
    # The whole-at-once form still restores too.
    third: MachineHost[Any, Any, Any, Any, Any] = MachineHost(BucketMachine())
    third.restore(host.snapshot())
    assert third.applied_index == 22
