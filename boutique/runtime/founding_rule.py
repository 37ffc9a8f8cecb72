"""Whether a node whose data directory is empty may found: the rule and its retries.

``decide`` is the rule (see ``runtime.founding`` for why it is needed and what it
cannot see); ``Admission`` is the loop around it as a state machine: the shell
(``founding.admit``) asks the peers for their views of the meta group, tells
``after_views`` what the rule decided, and does what it answers — found, ask the
registry (then tell ``after_registry`` what it said), or wait ``RETRY`` seconds and ask
again, saying why the node does not serve once waiting is no longer normal.

This module never does I/O, never reads a clock (time is passed in) and never imports
trio.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

__all__ = [
    "LOG_EVERY",
    "PATIENCE",
    "RETRY",
    "Admission",
    "AskRegistry",
    "Decision",
    "Found",
    "MetaView",
    "Refuse",
    "Retry",
    "Step",
    "decide",
]

RETRY = 0.5
"""Seconds between two rounds of questions."""
LOG_EVERY = 10.0
"""Seconds between two log lines saying the same thing while the node waits."""
PATIENCE = 3.0
"""Seconds of waiting for peers that are normal at a cluster's first start; after that
the node says (in its log, and to clients at once) that it does not serve yet."""


class MetaView(Protocol):
    """A peer's view of the meta group (``group.admission.GroupView``), as the rule
    reads it."""

    @property
    def term(self) -> int: ...


class Decision(enum.Enum):
    FOUND = "found"
    """The cluster is new: found it."""
    ASK_REGISTRY = "ask the registry"
    """The cluster exists: whether this node may found depends on the registry."""
    WAIT = "wait"


def decide(me: int, founders: Collection[int], answers: Mapping[int, MetaView | None]) -> Decision:
    """What a node with an empty data directory does, given the meta group's views
    from the peers that answered (None: the peer hosts no meta group yet)."""
    if any(view is not None and view.term > 1 for view in answers.values()):
        return Decision.ASK_REGISTRY
    heard = {me, *answers} & set(founders)
    if len(heard) * 2 > len(founders):
        return Decision.FOUND
    return Decision.WAIT


@dataclass(frozen=True, slots=True)
class Found:
    """Found now; first record in the registry that this node started, if
    ``record_started`` (a founder starting late: so a wipe from now on is recognised)."""

    record_started: bool
    message: str


@dataclass(frozen=True, slots=True)
class AskRegistry:
    """Read which nodes have started (``("started",)``) and tell ``after_registry``."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """This node has started before: its state is lost, it must not found."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Ask again in ``RETRY`` seconds. ``waiting_for_peers``: why the node does not
    serve, to show from now on (None: leave it as it is); ``log``: say so in the log
    (once, again when it changes, and every ``LOG_EVERY`` seconds)."""

    waiting_for_peers: str | None = None
    log: bool = False


Step: TypeAlias = Found | AskRegistry | Refuse | Retry


class Admission:
    """The admission of node ``me`` (called ``name``; ``names``: every node of the
    config by id), which asks ``peers`` and needs a majority of ``founders``; it began
    at ``began``."""

    def __init__(
        self,
        me: int,
        name: str,
        founders: Collection[int],
        peers: Collection[int],
        names: Mapping[int, str],
        began: float,
    ) -> None:
        self.me = me
        self.name = name
        self.founders = frozenset(founders)
        self.peers = sorted(peers)
        self.names = names
        self.began = began
        self._last_silent: list[int] | None = None
        self._next_log = 0.0

    def after_views(self, decision: Decision, answered: Collection[int], now: float) -> Step:
        """The rule decided ``decision`` from the views of the peers in ``answered``."""
        if decision is Decision.FOUND:
            return Found(
                False, f"no election anywhere yet: node {self.name} founds the new cluster"
            )
        if decision is Decision.ASK_REGISTRY:
            return AskRegistry()
        if now - self.began < PATIENCE:
            # Nodes of a new cluster start seconds apart: a short wait is normal and
            # worth neither a log line nor turning clients away early.
            return Retry()
        silent = sorted(set(self.peers) - set(answered))
        names = ", ".join(self.names[n] for n in silent if n in self.names)
        waiting = (
            f"its data directory is empty and it is waiting for {names} to tell "
            "whether the cluster exists"
        )
        log = silent != self._last_silent or now >= self._next_log
        if log:
            self._last_silent, self._next_log = silent, now + LOG_EVERY
        return Retry(waiting, log)

    def after_registry(self, started: Collection[object]) -> Found | Refuse:
        """The registry lists ``started`` as the nodes that have started."""
        if self.me in started:
            return Refuse()
        return Found(
            self.me in self.founders,
            f"node {self.name} starts late for the first time: it founds",
        )
