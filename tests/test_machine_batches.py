"""Batch entries (issue 19): several commands in one log entry, applied one by one.

``machine.encode_batch`` packs the commands a leader gets for a group in one turn into
one entry; ``MachineHost.apply_batch`` applies them in order with a reply each, exactly
as separate entries would. Old logs hold single commands only, and none of them may
ever be read as a batch.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from boutique.buckets import BucketDropped, BucketMachine
from boutique.machine import (
    BATCH_MARK,
    CommandFailed,
    MachineHost,
    batch_commands,
    encode_batch,
    encode_value,
    is_batch,
)


def bucket_host() -> MachineHost[object, object, object, object, object]:
    return MachineHost(BucketMachine())  # type: ignore[arg-type]


def command(*parts: object) -> bytes:
    return MachineHost.encode_command(parts)


def test_a_batch_applies_each_command_in_order_with_its_own_reply() -> None:
    host = bucket_host()
    data = encode_batch(
        [
            command("put", b"k", b"1"),
            command("delete", b"k"),
            command("delete", b"k"),
            command("put", b"k", "not bytes"),  # refused by the machine, alone
            command("put", b"j", b"2"),
        ]
    )
    replies = host.apply_batch(1, data)
    assert replies[:3] == [None, True, False]
    assert isinstance(replies[3], CommandFailed) and replies[3].error_type == "TypeError"
    assert replies[4] is None
    assert host.applied_index == 1
    assert dict(host.state.items) == {b"j": b"2"}  # type: ignore[attr-defined]


def test_a_batch_gives_the_replies_and_state_of_one_entry_per_command() -> None:
    commands = [
        command("put", b"a", b"1"),
        b"\x92\xa3put",  # an undecodable command: DecodeError, like its own entry
        command("put", b"b", b"2"),
        command("delete", b"a"),
    ]
    batched, single = bucket_host(), bucket_host()
    replies = batched.apply_batch(1, encode_batch(commands))
    assert replies == [single.apply_entry(i, c) for i, c in enumerate(commands, 1)]
    assert dict(batched.state.items) == dict(single.state.items)  # type: ignore[attr-defined]


def test_commands_after_a_tombstone_in_the_same_batch_are_refused() -> None:
    """DROP's fence holds inside a batch: nothing after the tombstone is applied."""
    host = bucket_host()
    replies = host.apply_batch(
        1,
        encode_batch(
            [command("put", b"k", b"v"), command("tombstone"), command("put", b"k", b"w")]
        ),
    )
    assert replies[:2] == [None, True]
    assert replies[2] == CommandFailed(BucketDropped.__name__, "the bucket was dropped")
    assert host.state.dropped  # type: ignore[attr-defined]


def test_a_malformed_batch_is_one_decode_error_and_consumes_its_index() -> None:
    host = bucket_host()
    for index, data in enumerate(
        [BATCH_MARK, BATCH_MARK + b"\xff", BATCH_MARK + encode_value([1, 2]), b"\x90"], 1
    ):
        (reply,) = host.apply_batch(index, data)
        assert isinstance(reply, CommandFailed) and reply.error_type == "DecodeError"
        assert host.applied_index == index


def test_batch_commands_round_trips() -> None:
    commands = [command("put", b"k", b"v"), command("delete", b"k")]
    assert batch_commands(encode_batch(commands)) == commands
    assert is_batch(encode_batch(commands))


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=8,
)


@given(plain)
def test_no_single_command_is_ever_read_as_a_batch(value: object) -> None:
    """Entries written before batches existed hold one encoded command each: msgpack
    never writes the batch mark (0xc1) first, so they replay as what they are."""
    assert not is_batch(encode_value(value))
