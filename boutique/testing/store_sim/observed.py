"""Raft's invariants, checked at every write a simulated node makes to its disk.

``ObservedStorage`` sits between a simulated node and its ``PowerLossStorage``: every
append and hard-state write of every group is reported to that group's
``InvariantChecker`` (shared by all nodes) before it reaches the disk, so a violation is
found at the write that commits it, not at the end of the run:

* log matching: an ``(index, term)`` persisted anywhere always carries the same entry
  and follows the same previous term;
* a node's persisted term never goes back, its vote never changes within a term, its
  persisted commit index never goes back;
* one membership change at a time: a leader persists a change of its own term only
  when every earlier change in its log is applied.

Violations are handed to ``report``; the write goes ahead (the run goes on, so the
end-of-run checks still speak). Reads pass straight through.

What it must never do: change what is written, or write anything itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from boutique.raft import Role
from boutique.raft.core import Raft
from boutique.raft.messages import Entry, HardState
from boutique.testing.disk import DiskGroup, PowerLossStorage
from boutique.testing.invariants import InvariantChecker, InvariantViolation

Report = Callable[[str], None]


class ObservedStorage:
    """A node's storage whose group writes are checked first (a ``NodeStorage``)."""

    def __init__(
        self,
        storage: PowerLossStorage,
        node_id: int,
        checkers: dict[str, InvariantChecker],
        raft_of: Callable[[str], Raft | None],
        report: Report,
    ) -> None:
        self._storage = storage
        self._node_id = node_id
        self._checkers = checkers
        self._raft_of = raft_of
        self._report = report

    def group(self, group_id: str) -> ObservedGroup:
        checker = self._checkers.setdefault(group_id, InvariantChecker())
        return ObservedGroup(
            self._storage.group(group_id),
            group_id,
            self._node_id,
            checker,
            self._raft_of,
            self._report,
        )

    def groups(self) -> list[str]:
        return self._storage.groups()

    def drop_group(self, group_id: str) -> None:
        self._storage.drop_group(group_id)

    def pending_writes(self) -> int:
        return self._storage.pending_writes()

    def commit(self) -> None:
        self._storage.commit()

    def close(self) -> None:
        self._storage.close()


class ObservedGroup:
    """One group's storage on an ``ObservedStorage``."""

    def __init__(
        self,
        inner: DiskGroup,
        group_id: str,
        node_id: int,
        checker: InvariantChecker,
        raft_of: Callable[[str], Raft | None],
        report: Report,
    ) -> None:
        self._inner = inner
        self._group_id = group_id
        self._node_id = node_id
        self._checker = checker
        self._raft_of = raft_of
        self._report = report

    def __getattr__(self, name: str) -> Any:
        # Reads and the writes nothing is checked on go straight to the disk.
        return getattr(self._inner, name)

    def _check(self, check: Callable[[], None]) -> None:
        try:
            check()
        except InvariantViolation as exc:
            self._report(f"group {self._group_id}: {exc}")

    def append(self, entries: list[Entry]) -> None:
        if entries:
            inner = self._inner
            first = entries[0].index
            prev_term = (
                inner.term(first - 1)
                if inner.first_index() - 1 <= first - 1 <= inner.last_index()
                else None
            )
            self._check(lambda: self._checker.observe_persisted(self._node_id, entries, prev_term))
            raft = self._raft_of(self._group_id)
            if raft is not None and raft.role is Role.LEADER:
                self._check(lambda: self._checker.observe_leader_append(raft, entries))
        self._inner.append(entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        previous = self._inner.hard_state
        self._check(lambda: self._checker.observe_hard_state(self._node_id, previous, hard_state))
        self._inner.set_hard_state(hard_state)
