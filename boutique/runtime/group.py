"""One Raft group hosted by a node: its RawNode, storage, state machine and waiters.

``GroupRuntime`` is plain synchronous code driven by the node's event loop (see
``node.py``): the loop calls ``persist`` for every group, syncs storage once, then
``apply_and_advance``. Client requests register a ``Pending`` and are resolved when their
entry is applied (or lost), or when a read becomes safe to serve. Nothing here awaits.

Outcomes are classed the way the line protocol reports them: ``Applied`` (with the
machine's reply), ``Rejected`` (certainly not applied, e.g. not the leader) or
``Unknown`` (may or may not have been applied).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from boutique.machine import CommandFailed, MachineHost
from boutique.raft import (
    ConfChange,
    EntryType,
    InvalidConfChangeError,
    NotLeaderError,
    ProposalDroppedError,
    RawNode,
    Ready,
    Role,
)
from boutique.storage.sqlite import GroupStorage

log = logging.getLogger("boutique.group")


@dataclass(frozen=True, slots=True)
class Applied:
    """The command was applied (or the read served); ``reply`` is the machine's answer."""

    reply: Any


@dataclass(frozen=True, slots=True)
class Rejected:
    """Certainly not applied. ``leader`` hints where to retry (0: unknown)."""

    reason: str
    leader: int = 0


@dataclass(frozen=True, slots=True)
class Unknown:
    """May or may not have been applied."""

    reason: str


Outcome = Applied | Rejected | Unknown


@dataclass(slots=True)
class Pending:
    """A request waiting on the event loop.

    A task waits for it with ``wait``. Code that must not cost a task per request (the
    line server's simple commands, requests forwarded by peers) sets ``then`` instead:
    it is called once, with the outcome, from whatever resolves the request (inside the
    host loop or a transport callback), so it must not block. Such a request has no
    timeout of its own: the host resolves it ``Unknown`` once ``deadline`` passes (see
    ``RaftHost.track``).
    """

    event: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome | None = None
    abandoned: bool = False
    then: Callable[[Outcome], None] | None = None
    deadline: float = math.inf

    def resolve(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.event.set()
            if self.then is not None:
                try:
                    self.then(outcome)
                except Exception:
                    log.exception("a request's completion callback failed")

    async def wait(self, timeout: float) -> Outcome:
        with trio.move_on_after(timeout):
            await self.event.wait()
        if self.outcome is None:
            self.abandoned = True
            return Unknown("timed out waiting for the group")
        return self.outcome


@dataclass(slots=True)
class _Write:
    term: int
    pending: Pending


@dataclass(slots=True)
class _Read:
    query: Any
    pending: Pending
    index: int = -1


class GroupRuntime:
    """A group on this node. All methods run inside the node's event loop."""

    _contexts = itertools.count(1)

    def __init__(
        self,
        group_id: str,
        node: RawNode,
        storage: GroupStorage,
        host: MachineHost[Any, Any, Any, Any, Any],
        snapshot_entries: int,
    ) -> None:
        self.group_id = group_id
        self.node = node
        self.storage = storage
        self.host = host
        self.snapshot_entries = snapshot_entries
        self.writes: dict[int, _Write] = {}
        self.reads: dict[bytes, _Read] = {}
        self.on_applied: list[tuple[int, Any, Any]] = []
        """(index, command, reply) of NORMAL entries applied in the last turn, for
        owners that react to them (the meta group reconciles buckets)."""
        self.track_applied = False
        self.campaign_when_ready = False
        """Campaign as soon as this node knows it is a voter (a new group's founding
        membership is only known once its first entry is applied)."""

    # --- Requests -----------------------------------------------------------------------

    def propose(self, data: bytes, pending: Pending) -> None:
        try:
            entry = self.node.propose(data)
        except NotLeaderError as exc:
            pending.resolve(Rejected("not the leader", exc.leader))
            return
        except ProposalDroppedError as exc:
            pending.resolve(Rejected(str(exc), self.node.raft.lead))
            return
        self.writes[entry.index] = _Write(entry.term, pending)

    def change_membership(self, change: ConfChange, pending: Pending) -> None:
        """Propose a one-member change; resolved Applied(None) once it is applied."""
        try:
            entry = self.node.propose_conf_change(change)
        except NotLeaderError as exc:
            pending.resolve(Rejected("not the leader", exc.leader))
            return
        except (ProposalDroppedError, InvalidConfChangeError) as exc:
            pending.resolve(Rejected(str(exc), self.node.raft.lead))
            return
        self.writes[entry.index] = _Write(entry.term, pending)

    def read(self, query: Any, pending: Pending) -> None:
        context = next(self._contexts).to_bytes(8, "big")
        try:
            self.node.read_index(context)
        except NotLeaderError as exc:
            pending.resolve(Rejected("no leader known", exc.leader))
            return
        self.reads[context] = _Read(query, pending)

    @property
    def leader(self) -> int:
        return self.node.raft.lead

    # --- The Ready cycle ------------------------------------------------------------------

    def persist(self, ready: Ready) -> None:
        """Step 1 of the Ready contract, into storage (synced by the node afterwards)."""
        storage = self.storage
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        if ready.entries:
            storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)

    def apply_and_advance(self, ready: Ready) -> None:
        """Steps 3-5: restore/apply, serve reads, advance; then maybe snapshot."""
        host = self.host
        if ready.snapshot is not None:
            log.info(
                "group %s: installed a snapshot at index %d (%d bytes)",
                self.group_id,
                ready.snapshot.meta.index,
                len(ready.snapshot.data),
            )
            host.restore(ready.snapshot.data)
            covered = ready.snapshot.meta.index
            for index in [i for i in self.writes if i <= covered]:
                self.writes.pop(index).pending.resolve(
                    Unknown("replaced by a snapshot before it could be observed")
                )
        for entry in ready.committed_entries:
            if entry.index <= host.applied_index:
                continue
            if entry.type is EntryType.NORMAL:
                reply = host.apply_entry(entry.index, entry.data)
                if self.track_applied:
                    self.on_applied.append((entry.index, entry.data, reply))
            else:
                host.skip(entry.index)
                reply = None
            write = self.writes.pop(entry.index, None)
            if write is None:
                continue
            if write.term != entry.term:
                write.pending.resolve(Rejected("lost leadership before it committed"))
            else:
                # A CommandFailed reply is applied too: the machine refused the command
                # the same way on every replica, and the caller gets the error.
                write.pending.resolve(Applied(reply))
        for state in ready.read_states:
            read = self.reads.get(state.context)
            if read is not None:
                read.index = state.index
        self.node.advance(ready)
        if self.campaign_when_ready and self.node.raft.promotable():
            self.campaign_when_ready = False
            self.node.campaign()
        if ready.soft_state is not None and ready.soft_state.role is not Role.LEADER:
            self._fail_reads_of_old_leadership()
        self._serve_reads()
        self._maybe_snapshot()

    def _serve_reads(self) -> None:
        if not self.reads:
            return
        applied = self.host.applied_index
        for context, read in list(self.reads.items()):
            if read.pending.abandoned:
                del self.reads[context]
            elif 0 <= read.index <= applied:
                del self.reads[context]
                try:
                    answer = self.host.query(read.query)
                except Exception as exc:
                    read.pending.resolve(Applied(CommandFailed.from_exception(exc)))
                else:
                    read.pending.resolve(Applied(answer))

    def _fail_reads_of_old_leadership(self) -> None:
        for context, read in list(self.reads.items()):
            if read.index < 0:
                del self.reads[context]
                read.pending.resolve(Rejected("leadership changed", self.leader))

    def reject_reads_waiting_for_index(self, reason: str) -> None:
        """Reject the reads still waiting for the leader's read index: the request or
        its answer was in a stream that broke, and the core never asks again. A read
        has no effect, so the caller resends it (to the leader, by the hint)."""
        for context, read in list(self.reads.items()):
            if read.index < 0:
                del self.reads[context]
                read.pending.resolve(Rejected(reason, self.leader))

    def _maybe_snapshot(self) -> None:
        applied = self.host.applied_index
        if applied - self.storage.snapshot().meta.index < self.snapshot_entries:
            return
        self.storage.create_snapshot(applied, self.node.conf_state, self.host.snapshot())
        # Keep a tail of entries so a follower that is only a little behind catches up
        # from the log instead of needing the whole snapshot.
        keep = self.snapshot_entries // 4
        if applied - keep > self.storage.first_index():
            self.storage.compact(applied - keep)

    def sweep(self) -> None:
        """Forget requests whose callers gave up (called now and then)."""
        for index in [i for i, w in self.writes.items() if w.pending.abandoned]:
            del self.writes[index]
        for context in [c for c, r in self.reads.items() if r.pending.abandoned]:
            del self.reads[context]

    def close(self, reason: str) -> None:
        for write in self.writes.values():
            write.pending.resolve(Unknown(reason))
        for read in self.reads.values():
            read.pending.resolve(Rejected(reason))
        self.writes.clear()
        self.reads.clear()
