"""boutique: a strongly consistent, sharded key-value store and the Raft library under it.

The store is run with `boutique-server` and spoken to with telnet. This package's
public API is the library: replicate your own state machine across processes or hosts,
as Elixir users do with `pistis`, `raft` or `rafted_value` on `ra`::

    import boutique
    from boutique.examples import Counter

    members = {1: ("127.0.0.1", 7101), 2: ("127.0.0.1", 7102), 3: ("127.0.0.1", 7103)}
    async with boutique.Member.start(
        Counter(), node_id=1, members=members, secret=b"a long random secret"
    ) as member:
        await member.command(("incr", 1))     # from any member: forwarded to the leader
        await member.query("value")           # linearizable

- Define a machine: a class with `initial_state`, `apply`, `query`, `snapshot`,
  `restore` (`StateMachine`; examples in `boutique.examples`).
- Run a member: `Member` (trio) or `BlockingMember` (plain code), in memory or durable
  (`data_dir`); found a group or `join` one.
- Errors say what is known: `Unavailable`/`NoQuorum` (not applied), `Timeout`
  (maybe applied), `CommandError` (the machine raised, on every replica alike),
  `NotLeader` (only with `forward=False`), `MembershipError`, `Removed` (this member
  was removed from its group).

Names are imported on first use, so `import boutique.raft` (the sans-I/O core) does
not pull in trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from boutique.group import (
        BlockingMember,
        CommandError,
        GroupError,
        Member,
        MembershipError,
        MemberStatus,
        NoQuorum,
        NotLeader,
        Removed,
        Timeout,
        Unavailable,
    )
    from boutique.machine import CommandFailed, StateMachine, WireValue
    from boutique.runtime.host import HostSettings

__all__ = [
    "BlockingMember",
    "CommandError",
    "CommandFailed",
    "GroupError",
    "HostSettings",
    "Member",
    "MemberStatus",
    "MembershipError",
    "NoQuorum",
    "NotLeader",
    "Removed",
    "StateMachine",
    "Timeout",
    "Unavailable",
    "WireValue",
]

_HOME = {
    "CommandFailed": "boutique.machine",
    "StateMachine": "boutique.machine",
    "WireValue": "boutique.machine",
    "HostSettings": "boutique.runtime.host",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'boutique' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME.get(name, "boutique.group")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
