"""Planted bugs: test-only switches that break one rule of the shipped code each.

They prove that the whole-cluster simulator can fail: ``python -m boutique.testing
--plant NAME --seeds 300`` must find every one of them (a failing seed and its replay
line), and ``tests/sim/test_whole_cluster_plants.py`` runs the table. Each plant is a
context manager that patches the shipped code for the duration of one run and puts it
back; production code carries no switch for them.

========================================  ==============================================
plant                                     rule it breaks
========================================  ==============================================
``acks_before_sync``                      the host sends Raft acknowledgements and votes
                                          before the storage commit of their turn
``overwritten_proposal_applied``          a proposal whose index was overwritten by
                                          another leader's entry is reported applied
``drop_without_fence``                    DROP leaves the registry without first
                                          committing a tombstone in the bucket's log
``empty_member_votes``                    a node whose disk was wiped founds again and
                                          votes as though it never took part
``commit_old_term``                       a leader commits an entry of an earlier term
                                          by counting replicas (Raft Figure 8)
``no_conf_change_fence``                  a new leader accepts a membership change
                                          before an entry of its own term committed
``read_index_survives_term_change``       ReadIndex rounds survive a change of term
``batch_applies_first_only``              a batch entry applies only its first command,
                                          yet every command of it is answered applied
========================================  ==============================================

What it must never do: stay installed after its run, or be importable as a way to
configure a real node.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from boutique import machine
from boutique.raft import RaftConfig, RawNode
from boutique.raft.core import Raft
from boutique.runtime import founding, group, host_core, router
from boutique.runtime.group import GroupStore
from boutique.runtime.node import META_GROUP
from boutique.testing import broken


@dataclass(frozen=True, slots=True)
class Plant:
    name: str
    rule: str
    scenarios: tuple[str, ...]
    """Scenarios that exercise the rule; ``--plant`` sweeps these unless told otherwise.
    A name ``core:NAME`` is a scenario of the Raft-core simulator run with ``variant``
    (for a core rule whose breach the store's runtime hides or makes rare)."""
    install: Callable[[], contextlib.AbstractContextManager[None]]
    variant: str | None = None
    """The ``boutique.testing.broken`` variant for ``core:`` scenarios."""


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def _acks_before_sync() -> Iterator[None]:
    """The turn's storage commit is put off until after the messages that needed it
    have been handed to the transport."""
    real_sync = host_core.HostCore._sync
    real_send_all = host_core.HostCore._send_all

    def owe(self: host_core.HostCore) -> None:
        self.__dict__["_sync_owed"] = True

    def send_then_sync(self: host_core.HostCore, outgoing: Any) -> None:
        real_send_all(self, outgoing)
        if self.__dict__.pop("_sync_owed", False):
            real_sync(self)

    with (
        _patched(host_core.HostCore, "_sync", owe),
        _patched(host_core.HostCore, "_send_all", send_then_sync),
    ):
        yield


@contextlib.contextmanager
def _overwritten_proposal_applied() -> Iterator[None]:
    """A proposal is matched to the committed entry by its index alone."""
    real = group.GroupRuntime.apply_and_advance

    def by_index(self: group.GroupRuntime, ready: Any) -> Any:
        for entry in ready.committed_entries:
            write = self.writes.get(entry.index)
            if write is not None:
                write.term = entry.term
        return real(self, ready)

    with _patched(group.GroupRuntime, "apply_and_advance", by_index):
        yield


@contextlib.contextmanager
def _drop_without_fence() -> Iterator[None]:
    """DROP takes the bucket out of the registry at once: a replica cut off from the
    meta group keeps serving the old bucket."""

    async def unfenced(self: router.Router, name: str) -> bool:
        info = await self.lookup(name)
        await self._write(META_GROUP, self._meta_replicas(), ("drop", name, info.group))
        return True

    with _patched(router.Router, "drop", unfenced):
        yield


@contextlib.contextmanager
def _empty_member_votes() -> Iterator[None]:
    """A node with an empty data directory always founds (as a voter from scratch)."""

    def always_found(*args: Any, **kwargs: Any) -> founding.Decision:
        return founding.Decision.FOUND

    with _patched(founding, "decide", always_found):
        yield


@contextlib.contextmanager
def _batch_applies_first_only() -> Iterator[None]:
    """A batch entry applies its first command and answers every command of it with
    that command's reply: the others are acknowledged and never applied (the same way
    on every replica, so only the clients can tell)."""

    def first_only(
        self: machine.MachineHost[Any, Any, Any, Any, Any], index: int, data: bytes
    ) -> Any:
        commands = machine.batch_commands(data)
        return [self.apply_entry(index, commands[0])] * len(commands)

    with _patched(machine.MachineHost, "apply_batch", first_only):
        yield


def _core(variant: type[Raft]) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def install() -> Iterator[None]:
        def make_raw_node(
            self: host_core.HostCore, config: RaftConfig, storage: GroupStore, rng: random.Random
        ) -> RawNode:
            return RawNode(config, storage, rng, core=variant)

        with _patched(host_core.HostCore, "make_raw_node", make_raw_node):
            yield

    return install


PLANTS: dict[str, Plant] = {
    plant.name: plant
    for plant in (
        Plant(
            "acks_before_sync",
            "Raft acknowledgements and votes leave before the storage sync",
            ("crashes",),
            _acks_before_sync,
        ),
        Plant(
            "overwritten_proposal_applied",
            "a proposal overwritten by another leader's entry is reported applied",
            ("partitions", "crashes"),
            _overwritten_proposal_applied,
        ),
        Plant(
            "drop_without_fence",
            "DROP removes the bucket from the registry without a tombstone in its log",
            ("churn",),
            _drop_without_fence,
        ),
        Plant(
            "empty_member_votes",
            "a node that lost its disk founds again and votes",
            ("wipe",),
            _empty_member_votes,
        ),
        Plant(
            "commit_old_term",
            "a leader commits an earlier term's entry by counting replicas (Figure 8)",
            ("leaders", "core:figure8"),
            _core(broken.CommitsOldTermByCounting),
            "commit_old_term",
        ),
        Plant(
            "no_conf_change_fence",
            "a new leader accepts a membership change before its own term's entry commits",
            ("admin", "members", "core:membership"),
            _core(broken.NoConfChangeFence),
            "no_conf_change_fence",
        ),
        Plant(
            "read_index_survives_term_change",
            "ReadIndex rounds survive a change of term",
            ("partitions", "core:partitions"),
            _core(broken.ReadIndexSurvivesTermChange),
            "read_index_survives_term_change",
        ),
        Plant(
            "batch_applies_first_only",
            "a batch entry applies only its first command, yet answers every one applied",
            ("calm",),
            _batch_applies_first_only,
        ),
    )
}


@contextlib.contextmanager
def planted(name: str | None) -> Iterator[None]:
    """Install the plant ``name`` (None: nothing) for the duration of the block."""
    if name is None:
        yield
        return
    with PLANTS[name].install():
        yield
