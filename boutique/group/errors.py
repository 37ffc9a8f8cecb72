"""The errors a library call ends with, classed by what the caller can do next.

Every error says what is known about the outcome of the request:

* `Unavailable` (and its kind `NoQuorum`): certainly not applied; retry later.
* `Timeout`: the outcome is unknown (`maybe_applied` is True for commands); retry only
  if the command is safe to apply twice, or make it so (e.g. carry a request id the
  machine remembers).
* `CommandError`: the machine refused the command by raising. It was committed and
  refused the same way on every replica; the state is unchanged and the group healthy.
* `NotLeader`: only where the caller asked not to be forwarded (`forward=False`);
  `leader_hint` says where to go.

This module never imports trio: the blocking API raises the same classes.
"""

from __future__ import annotations

from boutique.machine import CommandFailed

__all__ = [
    "CommandError",
    "GroupError",
    "MembershipError",
    "NoQuorum",
    "NotLeader",
    "Removed",
    "Timeout",
    "Unavailable",
]


class GroupError(Exception):
    """Base class of every error a group member raises for a request."""


class NotLeader(GroupError):
    """This member does not lead the group, and the request was not to be forwarded.

    `leader_hint` is the member this one believes leads, or None if it knows of none.
    Certainly not applied.
    """

    def __init__(self, leader_hint: int | None) -> None:
        where = f"node {leader_hint} leads" if leader_hint else "no leader is known"
        super().__init__(f"this member is not the leader ({where})")
        self.leader_hint = leader_hint


class Unavailable(GroupError):
    """The request certainly had no effect: no leader could take it in time."""

    maybe_applied = False


class Removed(Unavailable):
    """This member was removed from its group: it serves nothing any more, and its
    process should be stopped. Certainly not applied."""


class NoQuorum(Unavailable):
    """No leader was known the whole time: a majority of the voters may be down or
    cut off. Certainly not applied."""


class Timeout(GroupError):
    """The request was handed to a leader but its fate was not learnt in time.

    For a command, `maybe_applied` is True: it may have been applied, or may still be.
    """

    def __init__(self, message: str, *, maybe_applied: bool = True) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class CommandError(GroupError):
    """The state machine raised for this command (or query). The same error happened on
    every replica; the state is as it was and the group keeps working.

    `failed` is the `CommandFailed` the replicas agreed on; `error_type` is the name of
    the exception the machine raised, `message` its text.
    """

    def __init__(self, failed: CommandFailed) -> None:
        super().__init__(f"{failed.error_type}: {failed.message}")
        self.failed = failed

    @property
    def error_type(self) -> str:
        return self.failed.error_type

    @property
    def message(self) -> str:
        return self.failed.message


class MembershipError(GroupError):
    """A membership change the group refused (e.g. removing the last voter).
    Nothing changed."""
