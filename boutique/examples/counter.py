"""A replicated integer counter, mirroring the counter machine in Elixir's `pistis` README.

There a `Pistis.Machine` starts from `initial_state` 0 and `process_command` adds to it.
Here the state is a plain int kept inside the signed 64-bit range, so every value fits
a msgpack integer; a command that would leave the range is rejected and changes nothing.

Commands (reply is the new value):
    ("incr", n)   add n
    ("decr", n)   subtract n
    ("set", n)    replace the value with n
Query:
    "value"       the current value

It must never do I/O or read the clock: every replica must compute the same value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from boutique.machine import decode_value, encode_value

if TYPE_CHECKING:
    from boutique.machine import StateMachine

__all__ = ["Counter", "CounterCommand"]

CounterCommand: TypeAlias = tuple[str, int]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Counter:
    """State: int. Command: `CounterCommand`. Reply: int. Query: str. Answer: int."""

    def initial_state(self) -> int:
        return 0

    def apply(self, state: int, command: CounterCommand) -> tuple[int, int]:
        match command:
            case (str() as op, int() as n) if not isinstance(n, bool):
                pass
            case _:
                raise ValueError(f"not a counter command: {command!r}")
        if op == "incr":
            value = state + n
        elif op == "decr":
            value = state - n
        elif op == "set":
            value = n
        else:
            raise ValueError(f"unknown counter operation: {op!r}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise OverflowError(f"counter {op} {n} would leave the 64-bit range")
        return value, value

    def query(self, state: int, query: str) -> int:
        if query == "value":
            return state
        raise ValueError(f"unknown counter query: {query!r}")

    def snapshot(self, state: int) -> bytes:
        return encode_value(state)

    def restore(self, data: bytes) -> int:
        value = decode_value(data)
        if type(value) is not int:
            raise ValueError("not a counter snapshot")
        return value


if TYPE_CHECKING:
    _conforms: StateMachine[int, CounterCommand, int, str, int] = Counter()
