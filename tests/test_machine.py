"""MachineHost: log order, failed commands, undecodable entries, snapshots, wire helpers."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
import pytest

from boutique.machine import CommandFailed, MachineHost, decode_value, encode_value

Command = tuple[object, ...]


class Ledger:
    """A functional test machine: the state is a tuple of amounts, never mutated."""

    def initial_state(self) -> tuple[int, ...]:
        return ()

    def apply(self, state: tuple[int, ...], command: Command) -> tuple[object, tuple[int, ...]]:
        match command:
            case ("add", int() as n):
                return len(state) + 1, (*state, n)
            case ("boom", str() as why):
                raise RuntimeError(f"boom: {why}")
            case ("oom",):
                raise MemoryError
            case _:
                raise ValueError(f"bad ledger command {command!r}")

    def query(self, state: tuple[int, ...], query: str) -> int:
        if query == "sum":
            return sum(state)
        raise ValueError(query)

    def snapshot(self, state: tuple[int, ...]) -> bytes:
        return encode_value(list(state))

    def restore(self, data: bytes) -> tuple[int, ...]:
        value = decode_value(data)
        if not isinstance(value, tuple):
            raise ValueError("not a ledger snapshot")
        return value


class Mutating:
    """Mutates in place after validating, like KVStore."""

    def initial_state(self) -> dict[str, int]:
        return {}

    def apply(self, state: dict[str, int], command: Command) -> tuple[object, dict[str, int]]:
        match command:
            case ("set", str() as k, int() as v):
                state[k] = v
                return None, state
            case _:
                raise KeyError(command)

    def query(self, state: dict[str, int], query: str) -> int | None:
        return state.get(query)

    def snapshot(self, state: dict[str, int]) -> bytes:
        return encode_value(state)

    def restore(self, data: bytes) -> dict[str, int]:
        value = decode_value(data)
        assert isinstance(value, dict)
        return value


def enc(command: object) -> bytes:
    return MachineHost.encode_command(command)


def ledger_host() -> MachineHost[tuple[int, ...], Command, object, str, int]:
    return MachineHost(Ledger())


def test_fresh_host_has_initial_state_and_index_zero() -> None:
    host = ledger_host()
    assert host.applied_index == 0
    assert host.state == ()
    assert host.query("sum") == 0


def test_apply_entries_in_order() -> None:
    host = ledger_host()
    assert host.apply_entry(1, enc(("add", 5))) == 1
    assert host.apply_entry(2, enc(("add", 7))) == 2
    assert host.applied_index == 2
    assert host.state == (5, 7)
    assert host.query("sum") == 12


@pytest.mark.parametrize("index", [0, 1, 2, 4, 10, -1])
def test_out_of_order_index_raises_and_changes_nothing(index: int) -> None:
    host = ledger_host()
    host.apply_entry(1, enc(("add", 1)))
    host.apply_entry(2, enc(("add", 2)))
    with pytest.raises(ValueError, match="out of order"):
        host.apply_entry(index, enc(("add", 100)))
    with pytest.raises(ValueError, match="out of order"):
        host.skip(index)
    assert host.applied_index == 2
    assert host.state == (1, 2)


def test_first_entry_must_be_index_one() -> None:
    host = ledger_host()
    with pytest.raises(ValueError):
        host.apply_entry(2, enc(("add", 1)))
    assert host.applied_index == 0


def test_skip_advances_over_non_command_entries() -> None:
    host = ledger_host()
    host.skip(1)
    assert host.applied_index == 1
    assert host.apply_entry(2, enc(("add", 3))) == 1
    host.skip(3)
    host.skip(4)
    assert host.apply_entry(5, enc(("add", 4))) == 2
    assert host.applied_index == 5
    assert host.state == (3, 4)


def test_raising_machine_gives_command_failed_and_keeps_state() -> None:
    host = ledger_host()
    host.apply_entry(1, enc(("add", 1)))
    before = host.state
    result = host.apply_entry(2, enc(("boom", "no funds")))
    assert result == CommandFailed("RuntimeError", "boom: no funds")
    assert host.state is before
    # The failed command still consumed its log index.
    assert host.applied_index == 2
    assert host.apply_entry(3, enc(("add", 2))) == 2


def test_command_failed_is_identical_on_every_replica() -> None:
    entries = [enc(("add", 1)), enc(("boom", "x")), enc(("nope",)), b"\xc1", enc(("add", 2))]
    a, b = ledger_host(), ledger_host()
    replies_a = [a.apply_entry(i, data) for i, data in enumerate(entries, start=1)]
    replies_b = [b.apply_entry(i, data) for i, data in enumerate(entries, start=1)]
    assert replies_a == replies_b
    assert replies_a[1] == CommandFailed("RuntimeError", "boom: x")
    assert isinstance(replies_a[2], CommandFailed)
    assert replies_a[2].error_type == "ValueError"
    assert a.snapshot() == b.snapshot()


def test_mutating_machine_that_validates_first_keeps_state_on_failure() -> None:
    host: MachineHost[dict[str, int], Command, object, str, int | None] = MachineHost(Mutating())
    host.apply_entry(1, enc(("set", "a", 1)))
    before = dict(host.state)
    result = host.apply_entry(2, enc(("set", "b", "not an int")))
    assert isinstance(result, CommandFailed)
    assert result.error_type == "KeyError"
    assert host.state == before


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # array of two, one present
        enc(("add", 1)) + b"\x00",  # trailing bytes
        b"\xa2\xff\xfe",  # str that is not UTF-8
        msgpack.packb(msgpack.ExtType(5, b"x")),
        b"\x81\x80\x01",  # map with a map key (unhashable)
    ],
)
def test_undecodable_command_gives_decode_error(data: bytes) -> None:
    host = ledger_host()
    result = host.apply_entry(1, data)
    assert isinstance(result, CommandFailed)
    assert result.error_type == "DecodeError"
    assert host.applied_index == 1
    assert host.state == ()


def test_decoded_arrays_are_tuples() -> None:
    host = ledger_host()
    assert host.apply_entry(1, msgpack.packb(["add", 4])) == 1


def test_host_fault_propagates_without_consuming_index() -> None:
    host = ledger_host()
    with pytest.raises(MemoryError):
        host.apply_entry(1, enc(("oom",)))
    assert host.applied_index == 0
    assert host.state == ()


def test_encode_command_rejects_non_plain_values() -> None:
    with pytest.raises(TypeError):
        MachineHost.encode_command({1, 2})


def test_query_errors_propagate() -> None:
    with pytest.raises(ValueError):
        ledger_host().query("nope")


def test_snapshot_restore_round_trip_includes_applied_index() -> None:
    host = ledger_host()
    host.apply_entry(1, enc(("add", 2)))
    host.skip(2)
    host.apply_entry(3, enc(("add", 3)))
    data = host.snapshot()
    assert decode_value(data) == (3, Ledger().snapshot((2, 3)))

    other = ledger_host()
    other.restore(data)
    assert other.applied_index == 3
    assert other.state == (2, 3)
    assert other.snapshot() == data
    with pytest.raises(ValueError):
        other.apply_entry(3, enc(("add", 1)))
    assert other.apply_entry(4, enc(("add", 1))) == 3


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        encode_value(7),
        encode_value([1]),
        encode_value([1, b"x", 2]),
        encode_value(["1", encode_value([])]),
        encode_value([-1, encode_value([])]),
        encode_value([True, encode_value([])]),
        encode_value([1, "not bytes"]),
    ],
)
def test_restore_rejects_malformed_envelope_and_changes_nothing(data: bytes) -> None:
    host = ledger_host()
    host.apply_entry(1, enc(("add", 9)))
    with pytest.raises(ValueError):
        host.restore(data)
    assert host.applied_index == 1
    assert host.state == (9,)


def test_restore_keeps_host_when_machine_rejects_snapshot() -> None:
    host = ledger_host()
    host.apply_entry(1, enc(("add", 9)))
    with pytest.raises(ValueError, match="ledger"):
        host.restore(encode_value([5, encode_value("not a tuple")]))
    assert host.applied_index == 1
    assert host.state == (9,)


def test_command_failed_wire_round_trip() -> None:
    failed = CommandFailed("ValueError", "bad things")
    assert failed.to_wire() == ("ValueError", "bad things")
    assert CommandFailed.from_wire(decode_value(encode_value(failed.to_wire()))) == failed
    assert CommandFailed.from_wire(["ValueError", "bad things"]) == failed


@pytest.mark.parametrize("value", [None, "x", ("a",), ("a", "b", "c"), (1, "b"), ("a", b"b")])
def test_command_failed_from_wire_rejects_other_shapes(value: object) -> None:
    with pytest.raises(ValueError):
        CommandFailed.from_wire(value)


def test_command_failed_is_frozen() -> None:
    failed = CommandFailed("E", "m")
    with pytest.raises(AttributeError):
        failed.message = "other"  # type: ignore[misc]
