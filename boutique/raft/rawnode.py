"""``RawNode``: the caller-driven face of the Raft core, and the ``Ready`` contract.

The caller owns time, disk and network. It feeds the node ``tick()`` at a steady rate,
``step(message)`` for every message from a peer, and local requests (``propose``,
``read_index``, ``transfer_leader``, ``propose_conf_change``). Then, whenever
``has_ready()`` is true, it takes a ``Ready`` and carries out, in this order:

1. **Persist** ``ready.snapshot`` (if any), then ``ready.entries`` (an append that first
   drops any stored entries at or after ``entries[0].index``), then ``ready.hard_state``
   (if any) — atomically and durably (fsync) when ``ready.must_sync``.
2. **Send** ``ready.messages`` — these may go out before or during step 1 — and, only
   once step 1 is durable, ``ready.persisted_messages`` (votes and acknowledgements
   that promise what was just persisted).
3. **Restore** the state machine from ``ready.snapshot`` if one came, then **apply**
   ``ready.committed_entries`` in order, exactly once each. ``NOOP`` entries carry
   nothing; ``CONF_CHANGE`` entries are applied to the membership by ``advance``.
4. **Serve** each of ``ready.read_states`` once the state machine has applied up to
   its ``index``.
5. Call ``advance(ready)``.

No other call may be made on the node between ``ready()`` and ``advance()``. A crash
anywhere in this sequence is safe: whatever was not persisted was never promised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .config import RaftConfig
from .core import Raft, ReadState, Role
from .messages import (
    ChangeType,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
    decode_conf_change,
    encode_conf_change,
)
from .storage import LogStorage


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting: who leads, and what this node is."""

    lead: int
    role: Role


@dataclass(slots=True)
class Ready:
    """Everything the caller must do now; see the module docstring for the order."""

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    persisted_messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    soft_state: SoftState | None = None
    must_sync: bool = False
    """Whether step 1 needs an fsync: new entries, a snapshot, or a new term or vote.
    A hard state that only moved the commit index may be written lazily."""


@dataclass(frozen=True, slots=True)
class Status:
    """A point-in-time summary of a node, for operators and tests."""

    id: int
    term: int
    vote: int
    commit: int
    applied: int
    lead: int
    role: Role
    conf: ConfState
    last_index: int
    match: dict[int, int]


def bootstrap(voters: set[int] | frozenset[int]) -> tuple[HardState, list[Entry]]:
    """The identical first log entry every founding member of a group starts with.

    The initial membership is a committed CONF_CHANGE at index 1, so a member added
    later learns the founding voters from the log like every other change.
    """
    if not voters or min(voters) <= 0:
        raise ValueError("a group needs at least one voter with a positive id")
    change = ConfChange(tuple((ChangeType.ADD_VOTER, v) for v in sorted(voters)))
    entry = Entry(1, 1, encode_conf_change(change), EntryType.CONF_CHANGE)
    return HardState(term=1, vote=0, commit=1), [entry]


class RawNode:
    """A Raft node that does nothing by itself: the caller drives every step."""

    def __init__(
        self,
        config: RaftConfig,
        storage: LogStorage,
        rng: random.Random,
        core: type[Raft] = Raft,
    ) -> None:
        # ``core`` lets tests run deliberately broken variants through the simulator.
        self.raft = core(config, storage, rng)
        self._prev_hard_state = self._hard_state()
        self._prev_soft_state = self._soft_state()
        self._in_ready = False

    # --- Input --------------------------------------------------------------------------

    def tick(self) -> None:
        self._check_not_in_ready()
        self.raft.tick()

    def step(self, message: Message) -> None:
        self._check_not_in_ready()
        if message.to != self.raft.id:
            raise ValueError(f"message for node {message.to} stepped into node {self.raft.id}")
        self.raft.step(message)

    def campaign(self) -> None:
        """Start an election now (a pre-vote first when enabled)."""
        self._check_not_in_ready()
        if self.raft.role is not Role.LEADER:
            self.raft.campaign(transfer=False)

    def propose(self, data: bytes) -> Entry:
        """Append ``data`` to the log; returns the entry, whose ``(index, term)`` tells
        the caller when it is applied (a different entry at that index means it was
        lost). Raises ``NotLeaderError`` or ``ProposalDroppedError``."""
        self._check_not_in_ready()
        return self.raft.propose(data)

    def propose_conf_change(self, change: ConfChange) -> Entry:
        """Propose a one-member change. Raises ``InvalidConfChangeError`` for an
        impossible change, ``ProposalDroppedError`` while another is in progress."""
        self._check_not_in_ready()
        return self.raft.propose_conf_change(change)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; a ``ReadState`` with ``context`` appears in
        a later ``Ready`` (or never, if leadership is lost: the caller times out)."""
        self._check_not_in_ready()
        self.raft.read_index(context)

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to ``target`` (forwarded to the leader from a follower)."""
        self._check_not_in_ready()
        self.raft.transfer_leader(target)

    def wake(self) -> None:
        """Wake a quiet group (see ``RaftConfig.quiesce``) without doubting its leader."""
        self._check_not_in_ready()
        self.raft.wake()

    def suspect_leader(self) -> None:
        """Tell a follower its leader's node seems gone (e.g. the transport lost it):
        it wakes and may campaign. Harmless if the leader is in fact alive."""
        self._check_not_in_ready()
        self.raft.suspect_leader()

    @property
    def quiesced(self) -> bool:
        """True while the group is quiet: ``tick()`` does nothing, so the caller may
        stop calling it until the node is woken (by a message or a request)."""
        return self.raft.quiesced

    # --- Output -------------------------------------------------------------------------

    def has_ready(self) -> bool:
        raft = self.raft
        if raft.pending_reads:
            raft.flush_reads()
        if raft.append_due:
            raft.flush_appends()
        if (
            raft.msgs
            or raft.msgs_after_persist
            or raft.read_states
            or raft.log.unstable.entries
            or raft.log.unstable.snapshot is not None
            or raft.log.has_next_committed()
        ):
            return True
        soft = self._prev_soft_state
        return self._hard_state_changed() or raft.lead != soft.lead or raft.role is not soft.role

    def _hard_state_changed(self) -> bool:
        # Compared field by field: this runs for every active group on every tick.
        raft, hard = self.raft, self._prev_hard_state
        return raft.term != hard.term or raft.vote != hard.vote or raft.log.committed != hard.commit

    def ready(self) -> Ready:
        self._check_not_in_ready()
        raft = self.raft
        raft.flush_reads()
        raft.flush_appends()
        ready = Ready(
            entries=raft.log.unstable_entries(),
            snapshot=raft.log.unstable.snapshot,
            messages=raft.msgs,
            persisted_messages=raft.msgs_after_persist,
            committed_entries=raft.log.next_committed(raft.config.max_committed_size_per_ready),
            read_states=raft.read_states,
        )
        raft.msgs, raft.msgs_after_persist, raft.read_states = [], [], []
        hard_state = self._hard_state()
        if hard_state != self._prev_hard_state:
            ready.hard_state = hard_state
        previous = self._prev_hard_state
        ready.must_sync = (
            bool(ready.entries)
            or ready.snapshot is not None
            or (hard_state.term, hard_state.vote) != (previous.term, previous.vote)
        )
        soft_state = self._soft_state()
        if soft_state != self._prev_soft_state:
            ready.soft_state = soft_state
        self._in_ready = True
        return ready

    def advance(self, ready: Ready) -> None:
        """The caller has carried out ``ready``; see the module docstring."""
        if not self._in_ready:
            raise RuntimeError("advance() without a matching ready()")
        self._in_ready = False
        raft = self.raft
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        if ready.soft_state is not None:
            self._prev_soft_state = ready.soft_state
        if ready.snapshot is not None:
            raft.log.unstable.stable_snapshot_to(ready.snapshot.meta.index)
            raft.log.applied = max(raft.log.applied, ready.snapshot.meta.index)
        if ready.entries:
            last = ready.entries[-1]
            raft.on_persisted(last.index, last.term)
        for entry in ready.committed_entries:
            if entry.type is EntryType.CONF_CHANGE:
                raft.apply_conf_change(decode_conf_change(entry.data))
        if ready.committed_entries:
            raft.log.applied_to(ready.committed_entries[-1].index)

    # --- Inspection ---------------------------------------------------------------------

    def status(self) -> Status:
        raft = self.raft
        return Status(
            id=raft.id,
            term=raft.term,
            vote=raft.vote,
            commit=raft.log.committed,
            applied=raft.log.applied,
            lead=raft.lead,
            role=raft.role,
            conf=raft.conf,
            last_index=raft.log.last_index(),
            match={member: pr.match for member, pr in raft.progress.items()},
        )

    @property
    def conf_state(self) -> ConfState:
        """The applied membership; store it with any snapshot taken now."""
        return self.raft.conf

    @property
    def applied(self) -> int:
        return self.raft.log.applied

    def _hard_state(self) -> HardState:
        raft = self.raft
        return HardState(raft.term, raft.vote, raft.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.raft.lead, self.raft.role)

    def _check_not_in_ready(self) -> None:
        if self._in_ready:
            raise RuntimeError("call advance() before using the node again")
