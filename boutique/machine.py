"""The replicated state machine contract, and the host that feeds it committed entries.

Raft agrees on a log of opaque command bytes; a `StateMachine` gives them meaning. This
is the Python counterpart of Elixir's `pistis` Machine (`initial_state` /
`process_command`) and `rafted_value`'s Data (`command` / `query`): a user writes a
small class, and every replica of the group runs the same commands in the same order,
so every replica holds the same state.

`MachineHost` sits between the Raft runtime and one machine: it decodes each committed
entry, applies it in log order exactly once, turns a command the machine rejects into a
`CommandFailed` reply, and wraps snapshots with the applied index.

The contract a machine must keep (replicas diverge silently if it is broken):

1. `apply` is deterministic: its reply and new state depend only on the state and the
   command. No clocks, no randomness, no I/O, no environment, no iteration over sets of
   str/bytes (hash order varies between processes), no `id()`.
2. `apply` may mutate the state in place and return the same object. If it rejects a
   command by raising, it should do so before mutating: the host keeps the state object
   it had, so a half-applied mutation would stay. (It stays identically on every
   replica, so replicas still agree, but the machine's own invariants may not.)
3. An exception's type name and `str()` become the `CommandFailed` every replica
   reports, so messages must be deterministic too (no addresses, no timestamps).
4. `query` never changes the state. Replies and answers may share objects with the
   state: callers treat them as read-only.
5. `snapshot` captures the whole state and `restore(snapshot(s))` gives a state that
   behaves exactly like `s` for every later command. Snapshots are msgpack, never
   pickle: a snapshot arrives from another node and must not be able to run code.
6. A machine whose state may be large also implements `ChunkedSnapshots`: its
   `snapshot_chunks(state)` freezes the state as it is at the call and returns an
   iterator of pieces that the runtime pulls a few at a time, one turn of the event
   loop after another, applying later commands in between; those commands must not
   change what the iterator yields. Its `restorer()` rebuilds a state from the pieces
   pushed one at a time, without joining them.

Commands, replies, queries and answers are plain msgpack values (`WireValue`). Decoded
commands have every array as a tuple, so machines match on tuples.

An entry holds one encoded command, or a batch of them (`encode_batch`: a leader
proposes the commands that arrive for a group in one turn as one entry, so the per-entry
costs of Raft, storage and replication are paid once). `apply_batch` applies a batch's
commands one after another, exactly as if each had its own entry, and gives each its
own reply. A batch starts with `BATCH_MARK`, a byte msgpack never uses, so an entry
written before batching existed (one command) can never be read as a batch.

This module never touches trio, sockets, files or the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, Protocol, TypeAlias, TypeVar, runtime_checkable

import msgpack  # type: ignore[import-untyped]

from boutique.raft.messages import SnapshotData, pieces_of

__all__ = [
    "BATCH_MARK",
    "AnyMachine",
    "AnyMachineHost",
    "ChunkedSnapshots",
    "CommandFailed",
    "MachineHost",
    "SnapshotStream",
    "StateMachine",
    "StateRestorer",
    "WireValue",
    "batch_commands",
    "decode_value",
    "encode_batch",
    "encode_value",
    "is_batch",
    "wire_items",
]

WireValue: TypeAlias = (
    bool
    | int
    | float
    | str
    | bytes
    | list["WireValue"]
    | tuple["WireValue", ...]
    | dict["WireValue", "WireValue"]
    | None
)
"""A value msgpack round-trips: what commands, replies, queries and answers are made of."""


def wire_items(value: WireValue, length: int | None = None) -> tuple[WireValue, ...]:
    """An array reply (a list once it crossed the wire, else a tuple) as a tuple;
    `TypeError` if it is not an array (or not `length` long). For callers that know the
    shape of a machine's reply: one they cannot read is a bug, not bad input."""
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        raise TypeError(f"expected an array of {length or 'any'} items, got {value!r:.60}")
    return tuple(value)


S = TypeVar("S")
C = TypeVar("C")
R = TypeVar("R")
Q = TypeVar("Q")
A = TypeVar("A")
S_co = TypeVar("S_co", covariant=True)
C_contra = TypeVar("C_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
Q_contra = TypeVar("Q_contra", contravariant=True)
A_co = TypeVar("A_co", covariant=True)


class StateMachine(Protocol[S, C_contra, R_co, Q_contra, A_co]):
    """A deterministic machine replicated by Raft.

    Type parameters: State, Command, Reply, Query, Answer. See the module docstring
    for the rules every method must follow.
    """

    def initial_state(self) -> S:
        """The state before the first command; a fresh object on every call."""
        ...

    def apply(self, state: S, command: C_contra) -> tuple[R_co, S]:
        """Apply one committed command: return (reply to the proposer, new state).

        Deterministic. May mutate `state` and return it. Raise (before mutating) to
        reject a command; the host turns the exception into a `CommandFailed`.
        """
        ...

    def query(self, state: S, query: Q_contra) -> A_co:
        """Answer a read-only question about `state`; never mutate it."""
        ...

    def snapshot(self, state: S) -> bytes:
        """Serialize the whole state with msgpack (never pickle)."""
        ...

    def restore(self, data: bytes) -> S:
        """Rebuild a state from `snapshot` bytes; raise `ValueError` if malformed."""
        ...


@runtime_checkable
class ChunkedSnapshots(Protocol[S]):
    """What a machine with a large state adds to `StateMachine` (rule 6 above)."""

    def snapshot_chunks(self, state: S) -> SnapshotStream:
        """Freeze `state` now; the stream yields its snapshot in pieces. Later `apply`
        calls may run between pieces and must not change what is yielded."""
        ...

    def restorer(self) -> StateRestorer[S]:
        """A state rebuilt from the pieces of `snapshot_chunks` (or of `snapshot`)
        pushed in order, as they arrive."""
        ...


class StateRestorer(Protocol[S_co]):
    """Rebuilds a state from a snapshot's pieces: `feed` each in order (it may decode
    as it goes), then `finish`. Either raises `ValueError` for malformed data."""

    def feed(self, piece: bytes) -> None: ...

    def finish(self) -> S_co: ...


class SnapshotStream(Protocol):
    """The pieces of a snapshot being built. `close` abandons it early (and lets the
    state stop keeping its frozen view)."""

    def __iter__(self) -> Iterator[bytes]: ...

    def __next__(self) -> bytes: ...

    def close(self) -> None: ...


class _Pieces:
    """A `SnapshotStream` over pieces that already exist."""

    __slots__ = ("_pieces",)

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces = iter(())


def encode_value(value: object) -> bytes:
    """Encode a plain value as msgpack; raises `TypeError` for anything else."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


BATCH_MARK = b"\xc1"
"""The first byte of an entry holding a batch of commands. 0xc1 is the one byte msgpack
never uses (its "never used" code), so no encoded command starts with it: entries
written before batches existed still replay as the single commands they are."""


def encode_batch(commands: Sequence[bytes]) -> bytes:
    """The entry data for several encoded commands (``encode_command``), applied in this
    order (``MachineHost.apply_batch``)."""
    packed: bytes = msgpack.packb(list(commands), use_bin_type=True)
    return BATCH_MARK + packed


def is_batch(data: bytes) -> bool:
    """True if the entry ``data`` is a batch (``encode_batch``), not one command."""
    return data[:1] == BATCH_MARK


def batch_commands(data: bytes) -> list[bytes]:
    """The encoded commands of a batch entry, in order; `ValueError` if ``data`` is not
    a well-formed batch."""
    if not is_batch(data):
        raise ValueError("not a batch of commands")
    try:
        commands = msgpack.unpackb(data[1:], raw=False, use_list=True, ext_hook=_reject_ext)
    except _HOST_FAULTS:
        raise
    except Exception as exc:
        raise ValueError("not a batch of commands") from exc
    if type(commands) is not list or not all(type(command) is bytes for command in commands):
        raise ValueError("not a batch of commands")
    return commands


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"msgpack extension type {code} is not a plain value")


def decode_value(data: bytes) -> Any:
    """Decode exactly one msgpack value: arrays as tuples, any hashable map key.

    Raises a `ValueError` subclass (or `TypeError` for an unhashable map key) when
    `data` is not exactly one msgpack value, or holds an extension type. The one
    extension msgpack itself defines, the timestamp, decodes as `msgpack.Timestamp`
    and encodes back unchanged, so it is let through.
    """
    return msgpack.unpackb(
        data, raw=False, strict_map_key=False, use_list=False, ext_hook=_reject_ext
    )


@dataclass(frozen=True, slots=True)
class CommandFailed:
    """The reply for a committed command the machine rejected (or could not decode).

    The entry still occupies its log index and the state is left as it was. Every
    replica produces the same `CommandFailed` for the same entry.
    """

    error_type: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> CommandFailed:
        return cls(type(exc).__name__, str(exc))

    def to_wire(self) -> tuple[str, str]:
        """A msgpack-ready form. A channel that also carries ordinary replies must
        tag which is which; a bare pair could be mistaken for a reply."""
        return (self.error_type, self.message)

    @classmethod
    def from_wire(cls, value: object) -> CommandFailed:
        """Inverse of `to_wire`; accepts a list or tuple; `ValueError` otherwise."""
        match value:
            case (str() as error_type, str() as message):
                return cls(error_type, message)
            case _:
                raise ValueError(f"not a wire CommandFailed: {value!r}")


# These depend on the host (free memory, stack depth), not on the command, so turning
# them into a reply could make replicas disagree. They propagate; the replica must stop.
_HOST_FAULTS = (MemoryError, RecursionError)


class MachineHost(Generic[S, C, R, Q, A]):
    """One machine, its current state and the index of the last entry applied.

    The Raft runtime hands every committed entry to `apply_entry` (commands) or
    `skip` (no-ops, configuration changes) in log order, exactly once. Log indices
    start at 1; a fresh host has applied index 0.
    """

    __slots__ = ("_applied_index", "_machine", "_state")

    def __init__(self, machine: StateMachine[S, C, R, Q, A]) -> None:
        self._machine = machine
        self._state = machine.initial_state()
        self._applied_index = 0

    @property
    def machine(self) -> StateMachine[S, C, R, Q, A]:
        return self._machine

    @property
    def state(self) -> S:
        """The current state; read-only for callers."""
        return self._state

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @staticmethod
    def encode_command(command: object) -> bytes:
        """The entry data for proposing `command`; `TypeError` if it is not plain."""
        return encode_value(command)

    def apply_entry(self, index: int, data: bytes) -> R | CommandFailed:
        """Apply the committed command entry at `index` and return its reply.

        `index` must be exactly `applied_index + 1`, else `ValueError` (a caller bug;
        nothing changes). A command that cannot be decoded or that the machine
        rejects gives `CommandFailed`, consumes the index and keeps the state.
        `MemoryError` and `RecursionError` propagate with the index not consumed.
        """
        self._check_next(index)
        reply = self._apply_command(data)
        self._applied_index = index
        return reply

    def apply_batch(self, index: int, data: bytes) -> list[R | CommandFailed]:
        """Apply the committed entry at `index` holding a batch of commands
        (`encode_batch`): each command in order, with its own reply, exactly as
        `apply_entry` would if each had its own entry (a command the machine rejects
        gives its `CommandFailed` and the next one still runs). A batch that cannot be
        decoded gives one `CommandFailed` and consumes the index. `MemoryError` and
        `RecursionError` propagate (the replica must stop: some commands may be
        applied, and the index is not consumed)."""
        self._check_next(index)
        try:
            commands = batch_commands(data)
        except ValueError:
            self._applied_index = index
            return [CommandFailed("DecodeError", f"not a batch of commands ({len(data)} bytes)")]
        replies = [self._apply_command(command) for command in commands]
        self._applied_index = index
        return replies

    def _apply_command(self, data: bytes) -> R | CommandFailed:
        """Decode and apply one command; the machine's refusal as `CommandFailed`."""
        try:
            command = decode_value(data)
        except _HOST_FAULTS:
            raise
        except Exception:
            # A fixed message: msgpack's own wording could differ between replicas.
            return CommandFailed(
                "DecodeError", f"command is not one msgpack value ({len(data)} bytes)"
            )
        try:
            result = self._machine.apply(self._state, command)
        except _HOST_FAULTS:
            raise
        except Exception as exc:
            return CommandFailed.from_exception(exc)
        reply, self._state = result
        return reply

    def skip(self, index: int) -> None:
        """Consume a committed entry that is not a command (e.g. a leader's no-op)."""
        self._check_next(index)
        self._applied_index = index

    def query(self, query: Q) -> A:
        """Answer a read on the current state; the machine's exceptions propagate."""
        return self._machine.query(self._state, query)

    def snapshot(self) -> bytes:
        """msgpack `[applied_index, machine snapshot bytes]`, built at once."""
        return encode_value([self._applied_index, self._machine.snapshot(self._state)])

    def snapshot_stream(self) -> SnapshotStream:
        """The snapshot as of now, in pieces to pull one event-loop turn at a time
        while later entries are applied (for a `ChunkedSnapshots` machine; any other
        machine's snapshot is built at once, as one piece).

        The data is the head, msgpack `[applied_index]` (one element, where `snapshot`
        writes two), followed by the machine's pieces. `restore` reads both forms.
        """
        head = encode_value([self._applied_index])
        machine = self._machine
        if isinstance(machine, ChunkedSnapshots):
            body = machine.snapshot_chunks(self._state)
            return _Chained(head, body)
        return _Pieces((head, machine.snapshot(self._state)))

    def restore(self, data: SnapshotData) -> None:
        """Replace state and applied index with those of a `snapshot` or of a
        `snapshot_stream`'s pieces (as `bytes` or `Chunks`).

        Raises `ValueError` for a malformed envelope; the machine's `restore` errors
        propagate. On any error the host is unchanged.
        """
        restorer = self.restorer()
        for piece in pieces_of(data):
            restorer.feed(piece)
        restorer.finish()

    def restorer(self) -> HostRestorer:
        """Restore from pieces pushed as they arrive; `finish` installs the result."""
        return HostRestorer(self)

    def _install(self, state: S, index: int) -> None:
        self._state = state
        self._applied_index = index

    def _check_next(self, index: int) -> None:
        expected = self._applied_index + 1
        if index != expected:
            raise ValueError(
                f"entry {index} out of order: expected {expected} "
                f"(applied index {self._applied_index})"
            )


AnyMachine: TypeAlias = StateMachine[Any, Any, Any, Any, Any]
"""A machine of whatever state, command, reply, query and answer types: what the Raft
runtime hosts. The runtime never looks inside those values (they travel as
`WireValue`s), so a machine's types are erased here, in one place."""

AnyMachineHost: TypeAlias = MachineHost[Any, Any, Any, Any, Any]
"""The host of an `AnyMachine`."""


_STREAM_HEAD = b"\x91"
"""The first byte of a streamed snapshot: msgpack's one-element array `[index]`."""
_MAX_HEAD = 16


class _Collect:
    """The restorer of a machine without `ChunkedSnapshots`: keeps the pieces and
    restores from them joined."""

    __slots__ = ("_machine", "_pieces")

    def __init__(self, machine: StateMachine[Any, Any, Any, Any, Any]) -> None:
        self._machine = machine
        self._pieces: list[bytes] = []

    def feed(self, piece: bytes) -> None:
        self._pieces.append(piece)

    def finish(self) -> Any:
        return self._machine.restore(b"".join(self._pieces))


class HostRestorer:
    """Restores a `MachineHost` from a snapshot's pieces, fed in order as they arrive.

    A streamed snapshot (head `[index]`) goes to the machine's own restorer piece by
    piece, so a follower receiving a large snapshot decodes it while it arrives; the
    whole-at-once form (`[index, bytes]`) is kept and decoded at `finish`. `finish`
    installs the state and index in the host, or raises `ValueError` and leaves the
    host unchanged.
    """

    __slots__ = ("_body", "_head", "_host", "_index", "_whole", "fed")

    def __init__(self, host: MachineHost[Any, Any, Any, Any, Any]) -> None:
        self._host = host
        self._head = b""
        self._index: int | None = None
        self._body: StateRestorer[Any] | None = None
        self._whole: list[bytes] | None = None
        self.fed = 0
        """Bytes fed so far."""

    def feed(self, piece: bytes) -> None:
        if not piece:
            return
        self.fed += len(piece)
        if self._whole is not None:
            self._whole.append(piece)
        elif self._body is not None:
            self._body.feed(piece)
        else:
            self._feed_head(piece)

    def _feed_head(self, piece: bytes) -> None:
        head = self._head + piece
        if head[:1] != _STREAM_HEAD:
            self._whole = [head] if head else []
            self._head = b""
            return
        unpacker = msgpack.Unpacker(raw=False, use_list=False, ext_hook=_reject_ext)
        unpacker.feed(head[:_MAX_HEAD])
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            if len(head) >= _MAX_HEAD:
                raise ValueError("not a machine host snapshot: bad head") from None
            self._head = head
            return
        except Exception as exc:
            raise ValueError("not a machine host snapshot: bad head") from exc
        match value:
            case (int() as index,) if not isinstance(index, bool) and index >= 0:
                pass
            case _:
                raise ValueError("not a machine host snapshot: bad head")
        self._head = b""
        self._index = index
        machine = self._host.machine
        body: StateRestorer[Any] = (
            machine.restorer() if isinstance(machine, ChunkedSnapshots) else _Collect(machine)
        )
        self._body = body
        rest = head[unpacker.tell() :]
        if rest:
            body.feed(rest)

    def finish(self) -> None:
        host = self._host
        if self._whole is not None:
            try:
                envelope = decode_value(b"".join(self._whole))
            except Exception as exc:
                raise ValueError("not a machine host snapshot") from exc
            match envelope:
                case (int() as index, bytes() as machine_data) if (
                    not isinstance(index, bool) and index >= 0
                ):
                    pass
                case _:
                    raise ValueError("not a machine host snapshot")
            state = host.machine.restore(machine_data)
        elif self._body is not None and self._index is not None:
            index = self._index
            state = self._body.finish()
        else:
            raise ValueError("not a machine host snapshot: cut short")
        host._install(state, index)


class _Chained:
    """A `SnapshotStream`: one head piece, then another stream's pieces."""

    __slots__ = ("_body", "_head")

    def __init__(self, head: bytes, body: SnapshotStream) -> None:
        self._head: bytes | None = head
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._head is not None:
            head, self._head = self._head, None
            return head
        return next(self._body)

    def close(self) -> None:
        self._head = None
        self._body.close()
