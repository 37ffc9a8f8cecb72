"""One Raft group hosted by a node: its RawNode, storage, state machine and waiters.

``GroupRuntime`` is plain synchronous code driven by the host's turn (see
``host_core.py``): the turn calls ``persist`` for every group, syncs storage once, then
``apply_and_advance``. Client requests register a ``Pending`` and are resolved when their
entry is applied (or lost), or when a read becomes safe to serve. Nothing here awaits,
and this module never imports trio.

Requests end with an ``Outcome`` (``runtime.outcomes``): ``Applied`` (with the
machine's reply), ``Rejected`` (certainly not applied, e.g. not the leader) or
``Unknown`` (may or may not have been applied); they are re-exported here.

Writes are proposed in batches: ``queue`` collects the commands that arrive during a
turn (and, while every follower still has an append in flight, the turns after it:
``gathering``) and ``propose_queued`` proposes them as ONE entry
(``machine.encode_batch``, up to ``MAX_BATCH_BYTES``), whose apply answers each command
separately. One entry instead of
one per command saves its per-entry work on every replica (Raft bookkeeping, the
storage row, encoding and decoding it on the peer path). Batching changes nothing a
client can observe: the commands are applied in the order they arrived, one after
another, as if each had its own entry, and if the entry is overwritten (another leader's
entry at its index) every command in it is reported not applied.

Snapshots are built a slice per turn (``SnapshotBuild``): the machine freezes its state
at the applied index when the build starts, the loop pulls one piece per turn
(``continue_snapshot``) and writes it ahead into storage, and later entries are applied
meanwhile. Only when the last piece is written is the snapshot recorded, at the index of
the freeze, and the log compacted behind it. A snapshot installed from the leader
abandons a build in progress (the state it froze is gone).

A follower receiving a snapshot does the same work as the chunks arrive
(``persist``): each chunk is written ahead into storage and fed to the machine's
restorer, so installing a large snapshot at the end costs little more than a small one.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from boutique.machine import (
    AnyMachineHost,
    CommandFailed,
    HostRestorer,
    SnapshotStream,
    WireValue,
    batch_commands,
    encode_batch,
    is_batch,
)
from boutique.raft import (
    Chunks,
    ConfChange,
    ConfState,
    EntryType,
    InvalidConfChangeError,
    LogStorage,
    NotLeaderError,
    ProposalDroppedError,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    pieces_of,
)
from boutique.raft.messages import Entry, HardState, SnapshotData

from .outcomes import Applied as Applied
from .outcomes import Outcome as Outcome
from .outcomes import Rejected as Rejected
from .outcomes import Reply as Reply
from .outcomes import Unknown as Unknown

log = logging.getLogger("boutique.group")


class GroupStore(LogStorage, Protocol):
    """What the runtime writes into a group's storage (``MemoryStorage`` and
    ``GroupStorage`` both qualify)."""

    def append(self, entries: list[Entry]) -> None: ...
    def set_hard_state(self, hard_state: HardState) -> None: ...
    def apply_snapshot(self, snapshot: Snapshot) -> None: ...
    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot: ...
    def stage_snapshot_chunk(self, index: int, piece: bytes, *, first: bool = False) -> None: ...
    def compact(self, index: int) -> None: ...
    def bootstrap(self, hard_state: HardState, entries: list[Entry]) -> None: ...


@dataclass(slots=True)
class Pending:
    """A request waiting for its outcome: resolved once, from whatever learns it first
    (a turn of the host, a transport callback, the host's expiry of old requests).

    ``then`` is called once, with the outcome, when it is resolved: code that must not
    cost a task per request (the line server's simple commands, requests forwarded by
    peers) answers from there, so it must not block. Such a request has no timeout of
    its own: the host resolves it ``Unknown`` once ``deadline`` passes (see
    ``HostCore.track``). A trio task waits for one with ``runtime.host.wait_outcome``,
    which chains its own wake-up onto ``then``; nothing here knows about event loops.
    """

    outcome: Outcome | None = None
    abandoned: bool = False
    """Whoever waited gave up: the group may forget the request."""
    then: Callable[[Outcome], None] | None = None
    deadline: float = math.inf

    def resolve(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            if self.then is not None:
                try:
                    self.then(outcome)
                except Exception:
                    log.exception("a request's completion callback failed")


@dataclass(slots=True)
class SnapshotBuild:
    """A snapshot of the state at ``index`` (membership ``conf``) being built."""

    index: int
    conf: ConfState
    stream: SnapshotStream
    pieces: list[bytes] = field(default_factory=list)
    size: int = 0


@dataclass(slots=True)
class _Receiving:
    """The snapshot a follower is receiving: chunks taken so far (written ahead and fed
    to ``restorer``; None once it refused them: the install then decodes anew)."""

    meta: SnapshotMeta
    restorer: HostRestorer | None
    taken: int = 0
    last: bytes | None = None


MAX_BATCH_BYTES = 256 * 1024
"""Command bytes one batch entry carries at most (a larger command goes alone): an
entry stays well inside one append message (``RaftConfig.max_size_per_msg``)."""


@dataclass(slots=True)
class _Write:
    """The entry proposed at some index in ``term``, and who waits for each of its
    commands (one, or a batch's in order)."""

    term: int
    pendings: list[Pending]


@dataclass(slots=True)
class _Read:
    query: WireValue
    pending: Pending
    index: int = -1


class GroupRuntime:
    """A group on this node. All methods run inside the host's turn."""

    _contexts = itertools.count(1)

    def __init__(
        self,
        group_id: str,
        node: RawNode,
        storage: GroupStore,
        host: AnyMachineHost,
        snapshot_entries: int,
    ) -> None:
        self.group_id = group_id
        self.node = node
        self.storage = storage
        self.host = host
        self.snapshot_entries = snapshot_entries
        self.writes: dict[int, _Write] = {}
        self.reads: dict[bytes, _Read] = {}
        self.on_applied: list[tuple[int, bytes, Any]] = []
        """(index, command, reply) of NORMAL entries applied in the last turn, for
        owners that react to them (the meta group reconciles buckets). Not the request
        path: the reply keeps its machine's type (e.g. the registry's tuples)."""
        self.track_applied = False
        self.campaign_when_ready = False
        """Campaign as soon as this node knows it is a voter (a new group's founding
        membership is only known once its first entry is applied)."""
        self.build: SnapshotBuild | None = None
        """The snapshot being built, one piece per turn (see ``continue_snapshot``)."""
        self._receiving: _Receiving | None = None
        self.batching = True
        """Propose queued commands as batch entries (the host turns this off for groups
        whose applied commands it watches one by one: ``track_applied``)."""
        self.queued: list[tuple[bytes, Pending]] = []
        """Commands waiting for ``propose_queued`` (the end of the host's inbox)."""

    # --- Requests -----------------------------------------------------------------------

    def propose(self, data: bytes, pending: Pending) -> None:
        self._propose(data, [pending])

    def queue(self, data: bytes, pending: Pending) -> None:
        """Propose ``data`` with the other commands queued in this turn (see the module
        docstring); ``propose_queued`` sends them."""
        self.queued.append((data, pending))

    def gathering(self) -> bool:
        """True while the queued writes should wait for more: this node leads, and
        every other voter still has an append in flight (one at a time:
        ``HostSettings.max_inflight_appends``). Entries proposed now would wait for
        that answer before leaving anyway; gathered, they leave with it as ONE entry,
        proposed in the turn whose inbox brings the answer. A single-voter group, a
        follower (whose writes are refused at once) and a group with a free pipeline
        never wait."""
        if not self.batching:
            return False
        raft = self.node.raft
        if raft.role is not Role.LEADER:
            return False
        others = [member for member in raft.conf.voters if member != raft.id]
        progress = raft.progress
        return bool(others) and all(
            member in progress and progress[member].is_paused() for member in others
        )

    def propose_queued(self) -> None:
        """Propose the queued commands, in order: as batch entries of up to
        ``MAX_BATCH_BYTES``, or one entry each without ``batching``. If the core fails
        (the host then quarantines the group), what was not proposed stays queued, and
        ``close`` answers it as certainly not applied."""
        queued = self.queued
        limit = MAX_BATCH_BYTES if self.batching else 0
        start = 0
        try:
            while start < len(queued):
                end, size = start + 1, len(queued[start][0])
                while end < len(queued) and size + len(queued[end][0]) <= limit:
                    size += len(queued[end][0])
                    end += 1
                if end - start == 1:
                    self._propose(queued[start][0], [queued[start][1]])
                else:
                    chunk = queued[start:end]
                    self._propose(encode_batch([data for data, _ in chunk]), [p for _, p in chunk])
                start = end
        finally:
            self.queued = queued[start:]

    def _propose(self, data: bytes, pendings: list[Pending]) -> None:
        try:
            entry = self.node.propose(data)
        except NotLeaderError as exc:
            for pending in pendings:
                pending.resolve(Rejected("not the leader", exc.leader))
            return
        except ProposalDroppedError as exc:
            for pending in pendings:
                pending.resolve(Rejected(str(exc), self.node.raft.lead))
            return
        self.writes[entry.index] = _Write(entry.term, pendings)

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
        self.writes[entry.index] = _Write(entry.term, [pending])

    def read(self, query: WireValue, pending: Pending) -> None:
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

    def persist(self, ready: Ready) -> bool:
        """Step 1 of the Ready contract, into storage (synced by the node afterwards).
        True if snapshot chunks were written ahead (worth a sync even if the Ready
        needs none, so they reach the file a few at a time)."""
        storage = self.storage
        wrote_ahead = self._receive(ready.snapshot)
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        if ready.entries:
            storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        return wrote_ahead

    def _receive(self, installed: Snapshot | None) -> bool:
        """Take the snapshot chunks received since the last call: write them ahead and
        feed them to a restorer. ``installed`` is the snapshot the core just completed
        (its last chunk only arrives with it)."""
        if installed is not None:
            meta, pieces = installed.meta, pieces_of(installed.data)
        else:
            incoming = self.node.raft.incoming_snapshot
            if incoming is None:
                return False
            meta, pieces = incoming.meta, tuple(incoming.pieces)
        receiving = self._receiving
        if (
            receiving is None
            or receiving.meta != meta
            or receiving.taken > len(pieces)
            or (receiving.taken and pieces[receiving.taken - 1] is not receiving.last)
        ):
            # A new transfer, or the leader started this one over.
            receiving = self._receiving = _Receiving(meta, self.host.restorer())
        new = pieces[receiving.taken :]
        for piece in new:
            self.storage.stage_snapshot_chunk(meta.index, piece, first=receiving.taken == 0)
            receiving.taken += 1
            receiving.last = piece
            if receiving.restorer is not None:
                try:
                    receiving.restorer.feed(piece)
                except ValueError:
                    receiving.restorer = None
        return bool(new)

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
            # The leader's snapshot replaces the state a build in progress froze.
            self.abandon_snapshot()
            receiving, self._receiving = self._receiving, None
            if (
                receiving is not None
                and receiving.restorer is not None
                and receiving.meta == ready.snapshot.meta
                and receiving.restorer.fed == len(ready.snapshot.data)
            ):
                # Decoded while it arrived: only the last step is left.
                receiving.restorer.finish()
            else:
                host.restore(ready.snapshot.data)
            covered = ready.snapshot.meta.index
            for index in [i for i in self.writes if i <= covered]:
                for pending in self.writes.pop(index).pendings:
                    pending.resolve(Unknown("replaced by a snapshot before it could be observed"))
        for entry in ready.committed_entries:
            if entry.index <= host.applied_index:
                continue
            if entry.type is not EntryType.NORMAL:
                host.skip(entry.index)
                replies: list[Any] = [None]
            elif is_batch(entry.data):
                replies = host.apply_batch(entry.index, entry.data)
                if self.track_applied:
                    self._watch_batch(entry.index, entry.data, replies)
            else:
                replies = [host.apply_entry(entry.index, entry.data)]
                if self.track_applied:
                    self.on_applied.append((entry.index, entry.data, replies[0]))
            write = self.writes.pop(entry.index, None)
            if write is None:
                continue
            if write.term != entry.term:
                # Another leader's entry took this index: none of ours was applied.
                for pending in write.pendings:
                    pending.resolve(Rejected("lost leadership before it committed"))
            elif len(replies) != len(write.pendings):
                # Our own entry at our term always carries one reply per command.
                for pending in write.pendings:
                    pending.resolve(Unknown("the entry's replies do not match its commands"))
            else:
                # A CommandFailed reply is applied too: the machine refused the command
                # the same way on every replica, and the caller gets the error.
                for pending, reply in zip(write.pendings, replies, strict=True):
                    pending.resolve(Applied(reply))
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

    def _watch_batch(self, index: int, data: bytes, replies: list[Any]) -> None:
        """``on_applied`` for a batch entry: each command with its own reply (nothing
        for a batch that could not be decoded: no command of it was applied)."""
        try:
            commands = batch_commands(data)
        except ValueError:
            return
        for command, reply in zip(commands, replies, strict=True):
            self.on_applied.append((index, command, reply))

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
        if self.build is not None:
            return
        applied = self.host.applied_index
        if applied - self.storage.snapshot().meta.index < self.snapshot_entries:
            return
        # The membership and the state are both taken as of ``applied``; entries
        # applied while the pieces are pulled are not in this snapshot, and stay in
        # the log (compaction waits for the snapshot to be recorded).
        self.build = SnapshotBuild(applied, self.node.conf_state, self.host.snapshot_stream())
        self.continue_snapshot()

    def continue_snapshot(self) -> None:
        """Pull the next piece of the snapshot being built and write it ahead; record
        the snapshot and compact the log once the last piece is in. The host calls
        this once per turn while ``build`` is set; each call costs one piece."""
        build = self.build
        if build is None:
            return
        piece = next(build.stream, None)
        if piece is not None:
            build.pieces.append(piece)
            build.size += len(piece)
            self.storage.stage_snapshot_chunk(build.index, piece, first=len(build.pieces) == 1)
            return
        self.build = None
        pieces = build.pieces
        data = pieces[0] if len(pieces) == 1 else Chunks(pieces)
        self.storage.create_snapshot(build.index, build.conf, data)
        log.debug(
            "group %s: took a snapshot at index %d (%d bytes, %d pieces)",
            self.group_id,
            build.index,
            build.size,
            len(pieces),
        )
        # Keep a tail of entries so a follower that is only a little behind catches up
        # from the log instead of needing the whole snapshot.
        keep = self.snapshot_entries // 4
        if build.index - keep > self.storage.first_index():
            self.storage.compact(build.index - keep)

    def abandon_snapshot(self) -> None:
        """Drop a build in progress (what it wrote ahead is dropped with the next
        snapshot recorded)."""
        if self.build is not None:
            self.build.stream.close()
            self.build = None

    def sweep(self) -> None:
        """Forget requests whose callers gave up (called now and then)."""
        for index in [i for i, w in self.writes.items() if all(p.abandoned for p in w.pendings)]:
            del self.writes[index]
        for context in [c for c, r in self.reads.items() if r.pending.abandoned]:
            del self.reads[context]

    def close(self, reason: str) -> None:
        self.abandon_snapshot()
        for write in self.writes.values():
            for pending in write.pendings:
                pending.resolve(Unknown(reason))
        # Queued commands were never proposed: certainly not applied.
        for _, pending in self.queued:
            pending.resolve(Rejected(reason))
        for read in self.reads.values():
            read.pending.resolve(Rejected(reason))
        self.writes.clear()
        self.queued.clear()
        self.reads.clear()
