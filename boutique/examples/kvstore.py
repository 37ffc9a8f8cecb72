"""A replicated key-value map, mirroring the `KVStore` example of Elixir's `raft` package.

There a `Raft.StateMachine` keeps a map, `handle_write` sets keys and `handle_read`
gets them. Here the state is a dict mutated in place, because the Raft simulator uses
this machine as its workload and applies many thousands of commands.

Keys are str, bytes or int (so `("keys",)` has a total order: ints, then bytes, then
str). Values are any plain msgpack value. An absent key reads as None.

Commands:
    ("put", key, value)          reply: the previous value, or None
    ("delete", key)              reply: whether the key existed
    ("cas", key, expected, new)  set key to new if its value is `expected` (None matches
                                 an absent key); reply: whether it was set. Equality is
                                 msgpack's, not Python's: 1, 1.0 and True all differ.
Queries:
    ("get", key)                 the value, or None
    ("keys",)                    all keys, sorted

It must never do I/O or read the clock, and never depend on dict or set iteration
order for a reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias

from boutique.machine import WireValue, decode_value, encode_value

if TYPE_CHECKING:
    from boutique.machine import StateMachine

__all__ = ["KVCommand", "KVQuery", "KVState", "KVStore", "Key", "same_value"]

Key: TypeAlias = str | bytes | int
KVState: TypeAlias = dict[Key, WireValue]
KVCommand: TypeAlias = (
    tuple[Literal["put"], Key, WireValue]
    | tuple[Literal["delete"], Key]
    | tuple[Literal["cas"], Key, WireValue, WireValue]
)
KVQuery: TypeAlias = tuple[Literal["get"], Key] | tuple[Literal["keys"]]

_KEY_RANK = {int: 0, bytes: 1, str: 2}


class KVStore:
    """State: `KVState`. Command: `KVCommand`. Query: `KVQuery`. Reply/Answer: `WireValue`."""

    def initial_state(self) -> KVState:
        return {}

    def apply(self, state: KVState, command: KVCommand) -> tuple[WireValue, KVState]:
        match command:
            case ("put", key, value):
                _check_key(key)
                previous = state.get(key)
                state[key] = value
                return previous, state
            case ("delete", key):
                _check_key(key)
                existed = key in state
                if existed:
                    del state[key]
                return existed, state
            case ("cas", key, expected, new):
                _check_key(key)
                if not same_value(state.get(key), expected):
                    return False, state
                state[key] = new
                return True, state
            case _:
                raise ValueError(f"not a kv command: {command!r}")

    def query(self, state: KVState, query: KVQuery) -> WireValue:
        match query:
            case ("get", key):
                _check_key(key)
                return state.get(key)
            case ("keys",):
                ordered: list[Key] = sorted(state, key=_key_order)
                answer: list[WireValue] = list(ordered)
                return answer
            case _:
                raise ValueError(f"not a kv query: {query!r}")

    def snapshot(self, state: KVState) -> bytes:
        return encode_value(state)

    def restore(self, data: bytes) -> KVState:
        state = decode_value(data)
        if not isinstance(state, dict):
            raise ValueError("not a kv snapshot")
        for key in state:
            if type(key) not in _KEY_RANK:
                raise ValueError(f"kv snapshot has a {type(key).__name__} key")
        return state


def _check_key(key: object) -> None:
    if type(key) not in _KEY_RANK:
        raise TypeError(f"a key must be str, bytes or int, not {type(key).__name__}")


def _key_order(key: Key) -> tuple[int, Key]:
    return (_KEY_RANK[type(key)], key)


def same_value(a: WireValue, b: WireValue) -> bool:
    """Equality as msgpack sees it: types must match (True is not 1, 1 is not 1.0);
    a list equals a tuple with the same items (both are arrays); map order is ignored."""
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(same_value(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        typed_b = {(type(k), k): v for k, v in b.items()}
        return all(
            (type(k), k) in typed_b and same_value(v, typed_b[(type(k), k)]) for k, v in a.items()
        )
    return type(a) is type(b) and a == b


if TYPE_CHECKING:
    _conforms: StateMachine[KVState, KVCommand, WireValue, KVQuery, WireValue] = KVStore()
