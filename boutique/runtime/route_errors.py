"""The errors a routed request ends with, as the wire contract classes them.

The router (``runtime.router``) raises them, its composite operations
(``runtime.router_flows``) catch and rethrow them, and the server, the admin commands
and the mover read them. They live here, apart from both, so that the flows load
without trio; ``router`` re-exports them under their old names.

This module only declares: it never does I/O and never imports trio.
"""

from __future__ import annotations

from dataclasses import dataclass

from boutique.machine import CommandFailed

from .outcomes import Rejected

__all__ = [
    "CommandRejected",
    "DeadlinePassed",
    "GroupFenced",
    "NotFound",
    "OutcomeUnknown",
    "RoutingError",
    "Unavailable",
]


@dataclass(frozen=True, slots=True)
class DeadlinePassed(Rejected):
    """How a request driven without a task (``Router.start``, ``Router.start_create``)
    ends when its deadline passed with every attempt certainly not applied: the
    request is over (``ERR UNAVAILABLE``, as the full router would say), not handed to
    the full router, whose own deadline would start then."""


class RoutingError(Exception):
    """Base class of the errors a routed request ends with."""


class NotFound(RoutingError):
    """The bucket does not exist."""


class GroupFenced(NotFound):
    """The request reached a bucket group fenced by a DROP's tombstone. Internal to the
    router: callers see ``NotFound`` (or the request goes to a newer incarnation)."""

    def __init__(self, group: str) -> None:
        super().__init__(group)
        self.group = group


class Unavailable(RoutingError):
    """The request certainly had no effect; it may be retried."""


class OutcomeUnknown(RoutingError):
    """The request may or may not have been applied."""


class CommandRejected(RoutingError):
    """The state machine refused the command; nothing changed."""

    def __init__(self, failed: CommandFailed) -> None:
        super().__init__(failed.message)
        self.failed = failed
