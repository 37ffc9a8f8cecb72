"""The Raft state machine of one node: roles, elections, replication, reads, transfers.

``Raft`` reacts to three kinds of input — a tick, a message, a local request — by
changing its state and queueing messages. It never touches a socket, a file, a clock or
global randomness: time arrives as ``tick()``, randomness from the injected
``random.Random``, and durable state leaves through ``RawNode.ready()``.

Roles change only in the ``become_*`` methods. Section numbers in comments refer to the
Raft paper (Ongaro & Ousterhout, 2014); "thesis" is Ongaro's PhD thesis (2014).
"""

from __future__ import annotations

import enum
import random
from collections import defaultdict
from dataclasses import dataclass, field

from . import quorum
from .config import RaftConfig
from .errors import InvalidConfChangeError, NotLeaderError, ProposalDroppedError
from .log import RaftLog
from .messages import (
    NONE,
    AppendRequest,
    AppendResponse,
    ChangeType,
    Chunks,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotChunk,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    TransferLeaderRequest,
    VoteRequest,
    VoteResponse,
    decode_conf_change,
    encode_conf_change,
)
from .progress import Inflights, Progress, ProgressState
from .storage import CompactedError, LogStorage


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read request that may now be served: once the state machine has applied
    ``index``, reading it is linearizable with respect to when ``context`` was asked."""

    index: int
    context: bytes


@dataclass(slots=True)
class _Incoming:
    """A snapshot being received: its chunks so far, in order."""

    meta: SnapshotMeta
    pieces: list[bytes] = field(default_factory=list)
    received: int = 0


@dataclass(slots=True)
class _ReadRound:
    """One batch of ReadIndex requests confirmed by one heartbeat round."""

    index: int
    requests: list[tuple[bytes, int]]
    acks: set[int] = field(default_factory=set)


class Raft:
    """One node's Raft state. Drive it through ``RawNode``; tests may inspect it."""

    log_class: type[RaftLog] = RaftLog

    def __init__(self, config: RaftConfig, storage: LogStorage, rng: random.Random) -> None:
        self.id = config.id
        self.config = config
        self.rng = rng
        self.log = self.log_class(storage, config.applied)
        hard_state, conf = storage.initial_state()
        self.term = hard_state.term
        self.vote = hard_state.vote
        if hard_state.commit:
            self.log.commit_to(hard_state.commit)
        self.conf = conf
        if self.log.applied > self.log.first_index() - 1:
            # A durable state machine has applied past the snapshot: the membership
            # changes it applied there are in effect already.
            self.conf = self._replay_conf_changes(conf, self.log.applied)
        self.role = Role.FOLLOWER
        self.lead = NONE
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        # Outgoing messages: a leader's may leave at once; everyone else's depend on
        # state that must be persisted first (a vote, an acknowledged append).
        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        self.read_states: list[ReadState] = []
        self.pending_reads: list[tuple[bytes, int]] = []
        self.read_rounds: dict[int, _ReadRound] = {}
        self.next_read_round = 1
        self.incoming_snapshot: _Incoming | None = None
        self.quiesced = False
        self.append_due = False
        """A leader owes its followers an append (new entries, or a commit index they
        have not been sent): ``flush_appends`` sends one per follower, so proposals and
        acknowledgements that arrive together cost one message, not one each."""
        self.become_follower(self.term, NONE)

    def _replay_conf_changes(self, conf: ConfState, upto: int) -> ConfState:
        for entry in self.log.slice(self.log.first_index(), upto + 1):
            if entry.type is EntryType.CONF_CHANGE:
                conf = decode_conf_change(entry.data).apply_to(conf)
        return conf

    # --- Inspection ---------------------------------------------------------------------

    def promotable(self) -> bool:
        """Can this node campaign? Only voters of the applied configuration may."""
        return self.id in self.conf.voters

    def committed_in_current_term(self) -> bool:
        return self.log.term_or_none(self.log.committed) == self.term

    # --- Role changes -------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_tick + self.rng.randrange(
            self.config.election_tick
        )
        self.lead_transferee = NONE
        self.quiesced = False
        self.append_due = False
        self.votes = {}
        self.progress = {}
        # Reads that were waiting on our leadership can no longer be confirmed; their
        # callers time out and retry elsewhere.
        self.pending_reads = []
        self.read_rounds = {}

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def become_pre_candidate(self) -> None:
        # A pre-vote changes neither term nor vote (thesis §9.6): a partitioned node
        # that keeps failing pre-votes cannot inflate the cluster's term.
        if self.role is Role.LEADER:
            raise RuntimeError("a leader cannot become a pre-candidate")
        self.role = Role.PRE_CANDIDATE
        self.lead = NONE
        self.votes = {}

    def become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise RuntimeError("a leader cannot become a candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        if self.role is Role.FOLLOWER:
            raise RuntimeError("a follower cannot become leader without an election")
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        last = self.log.last_index()
        for member in self.conf.members():
            self.progress[member] = self._new_progress(member, last)
        own = self.progress.get(self.id)
        if own is not None:
            # Only what is persisted counts towards our own acknowledgement (thesis
            # §10.2.1); the unstable tail is acknowledged in ``on_persisted``.
            own.become_replicate()
            own.match = self.log.unstable.offset - 1
            own.next = last + 1
        # §5.4.2 / §8: commit an entry of our own term so that every earlier entry is
        # committed through it, and ReadIndex becomes safe.
        noop = Entry(self.term, last + 1, b"", EntryType.NOOP)
        self.log.append([noop])
        # A membership change must wait until the no-op is applied (the fix for the
        # single-server change bug on leader change, thesis §4.1 errata).
        self.pending_conf_index = noop.index
        self.broadcast_append()

    def _new_progress(self, member: int, last_index: int) -> Progress:
        return Progress(
            match=0,
            next=last_index + 1,
            inflights=Inflights(self.config.max_inflight_msgs),
            learner=member in self.conf.learners,
        )

    # --- Ticks --------------------------------------------------------------------------

    def tick(self) -> None:
        if self.quiesced:
            return  # an idle group costs nothing until it is woken
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign(transfer=False)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_recently_active():
                # §6.2 / thesis §6.2: a leader cut off from a quorum steps down, so
                # clients stop waiting on it.
                self.become_follower(self.term, NONE)
                return
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the transfer did not finish in time
                if self.id not in self.conf.voters:
                    self._hand_over()  # we are leaving: try again, maybe elsewhere
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            if self.config.quiesce and self._can_quiesce():
                self.quiesced = True
                self.broadcast_heartbeat(read_round=0, quiesce=True)
                return
            # Carry the newest unconfirmed read round, so reads whose own heartbeats
            # were lost are confirmed by the next regular round.
            self.broadcast_heartbeat(read_round=max(self.read_rounds, default=0))
            self._retry_stalled_snapshots()

    def _can_quiesce(self) -> bool:
        """Idle: everything is committed, applied and held by every member, and no
        read, transfer or snapshot is under way."""
        last = self.log.last_index()
        if self.pending_reads or self.read_rounds or self.lead_transferee != NONE:
            return False
        if self.log.committed != last or self.log.applied != last:
            return False
        return all(
            pr.match == last and pr.state is ProgressState.REPLICATE
            for pr in self.progress.values()
        )

    def wake(self) -> None:
        """Leave the quiet state. A leader resumes heartbeats at once; a follower
        resumes its election timer, still trusting its leader."""
        if not self.quiesced:
            return
        self.quiesced = False
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        if self.role is Role.LEADER:
            # Silence was agreed, not a sign of lost followers: start check-quorum afresh.
            for pr in self.progress.values():
                pr.recent_active = True
            self.broadcast_heartbeat(read_round=0)

    def suspect_leader(self) -> None:
        """The caller believes our leader's node is gone: wake, and stop honouring
        its lease so a new election can start promptly."""
        if self.role is Role.LEADER:
            return
        self.quiesced = False
        self.election_elapsed = max(self.election_elapsed, self.config.election_tick)
        # Campaign within a few ticks instead of waiting out the rest of a randomized
        # timeout of up to two election timeouts. The followers that suspect together
        # (they all saw the leader's node die) take turns by id, two ticks apart, so
        # the first one's vote requests arrive before the next one campaigns: no split
        # vote, which would cost a whole new timeout.
        others = sorted(v for v in self.conf.voters if v != self.lead)
        rank = others.index(self.id) if self.id in others else len(others)
        soon = self.config.election_tick + 1 + 2 * rank + self.rng.randrange(2)
        self.randomized_election_timeout = soon

    def _quorum_recently_active(self) -> bool:
        active = {self.id}
        for member, pr in self.progress.items():
            if pr.recent_active:
                active.add(member)
            if member != self.id:
                pr.recent_active = False
        return quorum.has_quorum(self.conf.voters, active)

    # --- Elections ----------------------------------------------------------------------

    def campaign(self, transfer: bool) -> None:
        """Start an election: a pre-vote first unless this is a leader transfer."""
        if not self.promotable():
            return
        pre_vote = self.config.pre_vote and not transfer
        if pre_vote:
            self.become_pre_candidate()
            term = self.term + 1
        else:
            self.become_candidate()
            term = self.term
        self.votes[self.id] = True
        if self._tally() is quorum.VoteResult.WON:
            self._won(pre_vote)
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for voter in sorted(self.conf.voters):
            if voter == self.id:
                continue
            self.send(
                VoteRequest(
                    self.id, voter, term, last_index, last_term, pre_vote=pre_vote, force=transfer
                )
            )

    def _tally(self) -> quorum.VoteResult:
        return quorum.vote_result(self.conf.voters, self.votes)

    def _won(self, pre_vote: bool) -> None:
        if pre_vote:
            self.campaign_after_pre_vote()
        else:
            self.become_leader()

    def campaign_after_pre_vote(self) -> None:
        self.become_candidate()
        self.votes[self.id] = True
        if self._tally() is quorum.VoteResult.WON:
            self.become_leader()
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for voter in sorted(self.conf.voters):
            if voter != self.id:
                self.send(VoteRequest(self.id, voter, self.term, last_index, last_term))

    def _handle_vote_request(self, msg: VoteRequest) -> None:
        # §5.2, §5.4.1: one vote per term, only for a log at least as up to date.
        can_vote = (
            self.vote == msg.frm
            or (self.vote == NONE and self.lead == NONE)
            or (msg.pre_vote and msg.term > self.term)
        )
        granted = can_vote and self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)
        if granted and not msg.pre_vote:
            self.election_elapsed = 0
            self.vote = msg.frm
        # A granted pre-vote answers in the term asked about, so the pre-candidate can
        # count it; a rejection carries our term so a stale candidate learns it.
        term = msg.term if granted and msg.pre_vote else self.term
        self.send(VoteResponse(self.id, msg.frm, term, granted, pre_vote=msg.pre_vote))

    def _handle_vote_response(self, msg: VoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if msg.pre_vote else Role.CANDIDATE
        if self.role is not expected or msg.frm not in self.conf.voters:
            return
        self.votes.setdefault(msg.frm, msg.granted)
        result = self._tally()
        if result is quorum.VoteResult.WON:
            self._won(msg.pre_vote)
        elif result is quorum.VoteResult.LOST:
            self.become_follower(self.term, NONE)

    # --- Messages -----------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        if self.role is Role.LEADER:
            self.msgs.append(msg)
        else:
            self.msgs_after_persist.append(msg)

    def step(self, msg: Message) -> None:
        """Handle one message from a peer."""
        if msg.term > self.term:
            if not self._accept_higher_term(msg):
                return
        elif msg.term < self.term:
            self._handle_lower_term(msg)
            return
        match msg:
            case VoteRequest():
                self._handle_vote_request(msg)
            case VoteResponse():
                self._handle_vote_response(msg)
            case _:
                if self.role is Role.LEADER:
                    self._step_leader(msg)
                else:
                    self._step_non_leader(msg)

    def _accept_higher_term(self, msg: Message) -> bool:
        """Decide how a message from a higher term affects us; False drops it."""
        if isinstance(msg, VoteRequest):
            in_lease = (
                self.config.check_quorum
                and self.lead != NONE
                and (self.quiesced or self.election_elapsed < self.config.election_tick)
            )
            if in_lease and not msg.force:
                # Thesis §4.2.3: while we hear from a leader, disruptive candidates
                # (e.g. a removed server) are ignored. A quiet group wakes, though:
                # someone is missing the leader, and heartbeats will reach it again.
                self.wake()
                return False
            if msg.pre_vote:
                return True  # a pre-vote never changes our term
        if isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
            return True  # granted pre-votes come back in the term we would campaign in
        if isinstance(msg, AppendRequest | Heartbeat | SnapshotChunk):
            self.become_follower(msg.term, msg.frm)
        else:
            self.become_follower(msg.term, NONE)
        return True

    def _handle_lower_term(self, msg: Message) -> None:
        if (self.config.check_quorum or self.config.pre_vote) and isinstance(
            msg, AppendRequest | Heartbeat
        ):
            # A stale leader keeps sending: tell it our term so it steps down. Without
            # this, a node whose term rose while partitioned would ignore the current
            # leader forever and, its pre-votes refused, never rejoin.
            self.send(AppendResponse(self.id, msg.frm, self.term, 0, reject=True))
        elif isinstance(msg, VoteRequest) and msg.pre_vote:
            self.send(VoteResponse(self.id, msg.frm, self.term, False, pre_vote=True))

    # --- Leader -------------------------------------------------------------------------

    def _step_leader(self, msg: Message) -> None:
        if self.quiesced and not isinstance(msg, HeartbeatResponse):
            self.wake()  # a follower needs something from us
        match msg:
            case AppendResponse():
                self._handle_append_response(msg)
            case HeartbeatResponse():
                self._handle_heartbeat_response(msg)
            case SnapshotResponse():
                self._handle_snapshot_response(msg)
            case ReadIndexRequest():
                if msg.frm in self.conf.members():
                    self.pending_reads.extend((ctx, msg.frm) for ctx in msg.contexts)
            case TransferLeaderRequest():
                # A peer's request must never raise out of step(): ignore bad targets.
                if msg.target in self.conf.voters:
                    self.transfer_leader(msg.target)
            case _:
                pass  # another leader's traffic in our term cannot exist (§5.2)

    def _handle_append_response(self, msg: AppendResponse) -> None:
        pr = self.progress.get(msg.frm)
        if pr is None:
            return
        pr.recent_active = True
        if msg.reject:
            hint = msg.hint_index
            if msg.hint_term > 0:
                hint, _ = self.log.find_conflict_by_term(msg.hint_index, msg.hint_term)
            if pr.maybe_decrease(msg.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self.send_append(msg.frm)
            return
        advanced = pr.maybe_update(msg.index)
        # A probe answered at the match we already knew (e.g. right after a snapshot)
        # still proves where the logs meet: switch to replicating.
        confirmed_probe = pr.state is ProgressState.PROBE and pr.match == msg.index
        if not advanced and not confirmed_probe:
            if pr.state is ProgressState.REPLICATE:
                pr.inflights.free_to(msg.index)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_to(msg.index)
        if self.maybe_commit():
            self.append_due = True
        elif self.config.announce_commit and pr.sent_commit < self.log.committed:
            self.send_append(msg.frm)
        while self.send_append(msg.frm, send_empty=False):
            pass
        if msg.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(msg.frm)

    def _handle_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        pr = self.progress.get(msg.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            # The window may be full of lost messages; free one slot so replication
            # resumes (the follower's answer will correct ``next`` if needed).
            pr.inflights.free_first()
        if pr.match < self.log.last_index():
            self.send_append(msg.frm)
        if msg.read_round:
            self._ack_read_round(msg.frm, msg.read_round)

    def maybe_commit(self) -> bool:
        """Advance the commit index to what a majority stores (§5.3, §5.4.2)."""
        match = {member: pr.match for member, pr in self.progress.items()}
        index = quorum.committed_index(self.conf.voters, match)
        if index > self.log.committed and self.may_commit_at(index):
            self.log.commit_to(index)
            return True
        return False

    def may_commit_at(self, index: int) -> bool:
        """§5.4.2: only an entry of the current term is committed by counting replicas;
        earlier entries are committed indirectly, through it."""
        return self.log.term_or_none(index) == self.term

    def broadcast_append(self) -> None:
        for member in sorted(self.progress):
            if member != self.id:
                self.send_append(member)

    def flush_appends(self) -> None:
        """Send what ``append_due`` promised: each follower gets the entries it lacks,
        or an empty append if it has not been sent the current commit index."""
        if not self.append_due:
            return
        self.append_due = False
        if self.role is not Role.LEADER:
            return
        committed = self.log.committed
        announce = self.config.announce_commit
        for member in sorted(self.progress):
            if member != self.id:
                stale = announce and self.progress[member].sent_commit < committed
                self.send_append(member, send_empty=stale)

    def send_append(self, to: int, send_empty: bool = True) -> bool:
        """Send ``to`` what it lacks (entries, or a snapshot); False if nothing was sent."""
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term_or_none(prev_index)
        try:
            if prev_term is None:
                raise CompactedError(prev_index)
            entries = self.log.slice(
                pr.next, self.log.last_index() + 1, self.config.max_size_per_msg
            )[: self.config.max_entries_per_msg]
        except CompactedError:
            return self._start_snapshot(to, pr)
        if not entries and not send_empty:
            return False
        self.send(
            AppendRequest(
                self.id, to, self.term, prev_index, prev_term, tuple(entries), self.log.committed
            )
        )
        pr.sent_commit = self.log.committed
        pr.sent_entries(entries[-1].index if entries else prev_index, len(entries))
        return True

    def broadcast_heartbeat(self, read_round: int, quiesce: bool = False) -> None:
        for member in sorted(self.progress):
            if member == self.id:
                continue
            pr = self.progress[member]
            # Never tell a follower to commit past what it is known to match.
            commit = min(pr.match, self.log.committed)
            pr.sent_commit = max(pr.sent_commit, commit)
            self.send(Heartbeat(self.id, member, self.term, commit, read_round, quiesce))

    # --- Snapshot transfer (leader side) --------------------------------------------------

    def _start_snapshot(self, to: int, pr: Progress) -> bool:
        snapshot = self.log.storage.snapshot()
        if snapshot.meta.index == 0:
            raise RuntimeError("entries were compacted but storage has no snapshot")
        pr.become_snapshot(snapshot)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        transfer = pr.transfer
        if transfer is None:
            return
        data = transfer.snapshot.data
        start = transfer.acked
        chunk = data[start : start + self.config.snapshot_chunk_size]
        done = start + len(chunk) >= len(data)
        transfer.sent = start + len(chunk)
        transfer.idle_heartbeats = 0
        self.send(SnapshotChunk(self.id, to, self.term, transfer.snapshot.meta, start, chunk, done))

    def _retry_stalled_snapshots(self) -> None:
        for member, pr in self.progress.items():
            if pr.state is ProgressState.SNAPSHOT and pr.transfer is not None:
                pr.transfer.idle_heartbeats += 1
                if pr.transfer.idle_heartbeats > 2:
                    self._send_snapshot_chunk(member, pr)

    def _handle_snapshot_response(self, msg: SnapshotResponse) -> None:
        pr = self.progress.get(msg.frm)
        if pr is None:
            return
        pr.recent_active = True
        transfer = pr.transfer
        if pr.state is not ProgressState.SNAPSHOT or transfer is None:
            return
        if msg.snapshot_index != transfer.snapshot.meta.index:
            return
        if msg.installed:
            pr.maybe_update(msg.snapshot_index)
            pr.become_probe()
            self.send_append(msg.frm)
            return
        if msg.reject:
            transfer.acked = min(msg.received, len(transfer.snapshot.data))
        elif msg.received >= transfer.sent:
            transfer.acked = msg.received
        else:
            return  # a duplicate acknowledgement of an earlier chunk
        self._send_snapshot_chunk(msg.frm, pr)

    # --- Follower, candidate ------------------------------------------------------------

    def _step_non_leader(self, msg: Message) -> None:
        match msg:
            case AppendRequest():
                self._heard_from_leader(msg.frm)
                self._handle_append(msg)
            case Heartbeat():
                self._heard_from_leader(msg.frm)
                self.quiesced = msg.quiesce
                self.log.commit_to(min(msg.commit, self.log.last_index()))
                self.send(HeartbeatResponse(self.id, msg.frm, self.term, msg.read_round))
            case SnapshotChunk():
                self._heard_from_leader(msg.frm)
                self._handle_snapshot_chunk(msg)
            case TimeoutNow():
                # Thesis §3.10: the leader handed over; campaign now, skipping pre-vote.
                if self.role is Role.FOLLOWER:
                    self.campaign(transfer=True)
            case ReadIndexResponse():
                self.read_states.extend(ReadState(msg.index, ctx) for ctx in msg.contexts)
            case _:
                pass

    def _heard_from_leader(self, leader: int) -> None:
        if self.role is not Role.FOLLOWER:
            self.become_follower(self.term, leader)  # §5.2: a leader of our term exists
        self.lead = leader
        self.election_elapsed = 0
        self.quiesced = False

    def _handle_append(self, msg: AppendRequest) -> None:
        if msg.prev_log_index < self.log.committed:
            # Already committed here; say how far we are so the leader moves on.
            self.send(AppendResponse(self.id, msg.frm, self.term, self.log.committed))
            return
        last = self.log.maybe_append(msg.prev_log_index, msg.prev_log_term, msg.commit, msg.entries)
        if last is not None:
            self.send(AppendResponse(self.id, msg.frm, self.term, last))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            msg.prev_log_index, msg.prev_log_term
        )
        self.send(
            AppendResponse(
                self.id,
                msg.frm,
                self.term,
                msg.prev_log_index,
                reject=True,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def _handle_snapshot_chunk(self, msg: SnapshotChunk) -> None:
        meta = msg.meta

        def answer(received: int, reject: bool = False, installed: bool = False) -> None:
            self.send(
                SnapshotResponse(
                    self.id, msg.frm, self.term, meta.index, received, reject, installed
                )
            )

        if meta.index <= self.log.committed or self.log.match_term(meta.index, meta.term):
            # We already hold everything the snapshot covers (§7): fast-forward instead.
            self.incoming_snapshot = None
            self.log.commit_to(min(meta.index, self.log.last_index()))
            answer(len(msg.data) + msg.offset, installed=True)
            return
        if msg.offset == 0:
            self.incoming_snapshot = _Incoming(meta)
        incoming = self.incoming_snapshot
        if incoming is None or incoming.meta != meta:
            answer(0, reject=True)
            return
        if msg.offset != incoming.received:
            answer(incoming.received, reject=msg.offset > incoming.received)
            return
        # The chunks are kept as they came, never joined: a snapshot of gigabytes
        # joined into one object would be copied whole, and held twice meanwhile.
        incoming.pieces.append(msg.data)
        incoming.received += len(msg.data)
        if not msg.done:
            answer(incoming.received)
            return
        self.incoming_snapshot = None
        self.restore(Snapshot(meta, Chunks(incoming.pieces)))
        answer(incoming.received, installed=True)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace our log and membership by an installed snapshot."""
        self.log.restore(snapshot)
        self.conf = snapshot.meta.conf

    # --- Local requests -----------------------------------------------------------------

    def propose(self, data: bytes, entry_type: EntryType = EntryType.NORMAL) -> Entry:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.lead)
        self.wake()
        if self.lead_transferee != NONE:
            raise ProposalDroppedError("leadership transfer in progress")
        limit = self.config.max_uncommitted_entries
        if limit and self.log.last_index() - self.log.committed >= limit:
            raise ProposalDroppedError("too many uncommitted entries")
        entry = Entry(self.term, self.log.last_index() + 1, data, entry_type)
        self.log.append([entry])
        self.append_due = True
        return entry

    def propose_conf_change(self, change: ConfChange) -> Entry:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.lead)
        self.validate_conf_change(change)
        if self.pending_conf_index > self.log.applied:
            raise ProposalDroppedError("a membership change is still being applied")
        entry = self.propose(encode_conf_change(change), EntryType.CONF_CHANGE)
        self.pending_conf_index = entry.index
        return entry

    def validate_conf_change(self, change: ConfChange) -> None:
        if len(change.changes) != 1:
            raise InvalidConfChangeError("change one member at a time")
        kind, node = change.changes[0]
        if node <= 0:
            raise InvalidConfChangeError(f"invalid node id {node}")
        if kind is ChangeType.ADD_VOTER and node in self.conf.voters:
            raise InvalidConfChangeError(f"node {node} is already a voter")
        if kind is ChangeType.ADD_LEARNER and node in self.conf.members():
            raise InvalidConfChangeError(f"node {node} is already a member")
        if kind is ChangeType.REMOVE:
            if node not in self.conf.members():
                raise InvalidConfChangeError(f"node {node} is not a member")
            if self.conf.voters == {node}:
                raise InvalidConfChangeError("cannot remove the last voter")

    def apply_conf_change(self, change: ConfChange) -> None:
        """Called when a committed membership change is applied (etcd's semantics: a
        configuration takes effect when applied, one change at a time)."""
        self.conf = change.apply_to(self.conf)
        if self.role is not Role.LEADER:
            return
        last = self.log.last_index()
        for member in list(self.progress):
            if member not in self.conf.members():
                del self.progress[member]
        joined = set()
        for member in self.conf.members():
            pr = self.progress.get(member)
            if pr is None:
                self.progress[member] = self._new_progress(member, last)
                joined.add(member)
            else:
                pr.learner = member in self.conf.learners
        if self.lead_transferee not in self.conf.voters:
            self.lead_transferee = NONE
        # The quorum changed: what a majority stores, and which reads are confirmed,
        # may have changed with it. New members get their first probe now.
        if self.maybe_commit():
            self.broadcast_append()
        else:
            for member in sorted(self.progress):
                if member != self.id:
                    self.send_append(member, send_empty=member in joined)
        self._release_confirmed_reads()
        if self.id not in self.conf.voters:
            self._hand_over()

    def _hand_over(self) -> None:
        """We removed ourselves. Stepping down at once could strand the others: one that
        has not yet learnt that the change committed still counts us and needs our vote.
        So hand leadership to the most caught-up remaining voter (thesis §3.10, §4.2.2),
        refusing proposals meanwhile; its forced election succeeds with or without us."""
        if not self.conf.voters:
            self.become_follower(self.term, NONE)
            return
        target = max(self.conf.voters, key=lambda v: (self.progress[v].match, -v))
        self.lead_transferee = NONE
        self.transfer_leader(target)

    def transfer_leader(self, target: int) -> None:
        if self.role is not Role.LEADER:
            if self.lead == NONE:
                raise NotLeaderError(NONE)
            self.send(TransferLeaderRequest(self.id, self.lead, self.term, target))
            return
        self.wake()
        if target == self.id or target == self.lead_transferee:
            return
        if target not in self.conf.voters:
            raise InvalidConfChangeError(f"node {target} is not a voter")
        self.lead_transferee = target
        # The transfer must finish within one election timeout or it is abandoned.
        self.election_elapsed = 0
        pr = self.progress[target]
        if pr.match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self.send_append(target)

    def _send_timeout_now(self, target: int) -> None:
        self.send(TimeoutNow(self.id, target, self.term))
        if self.id not in self.conf.voters:
            # A removed leader is done once the target holds our whole log: even if
            # this message is lost, we would vote for the target's own campaign.
            self.become_follower(self.term, NONE)

    # --- ReadIndex (§6.4, thesis §6.4) -----------------------------------------------------

    def read_index(self, context: bytes) -> None:
        if self.role is Role.LEADER or self.lead != NONE:
            self.pending_reads.append((context, self.id))
        else:
            raise NotLeaderError(NONE)

    def flush_reads(self) -> None:
        """Start one confirmation round for every read queued since the last one."""
        if not self.pending_reads:
            return
        if self.role is not Role.LEADER:
            if self.lead == NONE:
                self.pending_reads = []
                return
            contexts = tuple(ctx for ctx, _ in self.pending_reads)
            self.pending_reads = []
            self.send(ReadIndexRequest(self.id, self.lead, self.term, contexts))
            return
        if not self.committed_in_current_term():
            # Right after an election our commit index may lag what the old leader
            # committed; wait until our no-op commits (thesis §6.4 step 1).
            return
        if self.read_rounds:
            # One round in flight at a time: reads queued meanwhile share the next
            # round, started as soon as this one is confirmed. Under load that is one
            # heartbeat per follower for many reads instead of one per Ready. A round
            # whose answers are lost is confirmed by the next tick's heartbeat.
            return
        round_id = self.next_read_round
        self.next_read_round += 1
        read_round = _ReadRound(self.log.committed, self.pending_reads, {self.id})
        self.pending_reads = []
        self.read_rounds[round_id] = read_round
        if quorum.has_quorum(self.conf.voters, read_round.acks):
            self._release_confirmed_reads()
        else:
            self.broadcast_heartbeat(read_round=round_id)

    def _ack_read_round(self, member: int, round_id: int) -> None:
        read_round = self.read_rounds.get(round_id)
        if read_round is None:
            return
        read_round.acks.add(member)
        self._release_confirmed_reads()

    def _release_confirmed_reads(self) -> None:
        """A quorum acknowledging round r confirms our leadership after every earlier
        round began, so rounds up to r are all released, in order."""
        confirmed = [
            round_id
            for round_id, read_round in self.read_rounds.items()
            if quorum.has_quorum(self.conf.voters, read_round.acks)
        ]
        if not confirmed:
            return
        upto = max(confirmed)
        remote: defaultdict[int, list[bytes]] = defaultdict(list)
        for round_id in sorted(self.read_rounds):
            if round_id > upto:
                break
            read_round = self.read_rounds.pop(round_id)
            for context, origin in read_round.requests:
                if origin == self.id:
                    self.read_states.append(ReadState(read_round.index, context))
                else:
                    remote[origin].append(context)
            for origin, contexts in remote.items():
                self.send(
                    ReadIndexResponse(self.id, origin, self.term, read_round.index, tuple(contexts))
                )
                pr = self.progress.get(origin)
                if pr is not None and pr.sent_commit < read_round.index:
                    # The follower serves these reads once it applied up to the index:
                    # without ``announce_commit`` it might otherwise wait for a heartbeat.
                    self.send_append(origin)
            remote.clear()

    # --- Persistence feedback -----------------------------------------------------------

    def on_persisted(self, last_index: int, last_term: int) -> None:
        """The caller persisted entries up to ``(last_index, last_term)``."""
        self.log.unstable.stable_to(last_index, last_term)
        if self.role is Role.LEADER and self.log.match_term(last_index, last_term):
            own = self.progress.get(self.id)
            if own is not None and own.maybe_update(last_index) and self.maybe_commit():
                self.append_due = True
