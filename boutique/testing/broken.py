"""Deliberately broken Raft variants, to prove the simulator's checks can fail.

Each variant breaks one rule the Raft paper depends on. ``tests/sim`` runs them
through the simulator's randomized sweep and requires every one to be caught; they are
shipped in the package so a failing seed can be replayed with ``--variant NAME``.
Never use them otherwise.

The names in ``VARIANTS`` are short, snake_case and stable: other tools (replay
commands, a whole-node simulator's planted bugs) refer to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from boutique.raft import NONE, HardState, RawNode
from boutique.raft.core import Raft, ReadState
from boutique.raft.log import RaftLog
from boutique.raft.messages import Entry


class CommitsOldTermByCounting(Raft):
    """Commits any entry a majority stores, even one of an earlier term (Figure 8)."""

    def may_commit_at(self, index: int) -> bool:
        return True


class ForgetsToPersistVote(RawNode):
    """Keeps its vote only in memory: a restart in the same term may vote again."""

    def _hard_state(self) -> HardState:
        raft = self.raft
        return HardState(raft.term, NONE, raft.log.committed)

    def _hard_state_changed(self) -> bool:
        return self._hard_state() != self._prev_hard_state


class _TruncatingLog(RaftLog):
    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        keep = [e for e in entries if e.index > self.committed]
        if keep:
            # The bug: rewrite the log from the message on, dropping whatever followed
            # it, although nothing conflicted and those entries may have been acked.
            self.truncate_and_append(keep)
        self.commit_to(min(commit, last_new))
        return last_new


class TruncatesOnOverlap(Raft):
    """A follower drops the entries after an AppendRequest even with no term conflict."""

    log_class = _TruncatingLog


class ReadsWithoutReadIndex(Raft):
    """Answers a read from local state at once, without confirming leadership."""

    def read_index(self, context: bytes) -> None:
        self.read_states.append(ReadState(self.log.committed, context))


class ReadIndexWithoutQuorum(Raft):
    """A leader takes a proper read index but releases the read at once, without the
    heartbeat round that proves it still leads (thesis §6.4 step 3): a deposed leader
    that has not heard of its successor serves stale reads."""

    def flush_reads(self) -> None:
        super().flush_reads()
        for read_round in self.read_rounds.values():
            read_round.acks |= self.conf.voters
        self._release_confirmed_reads()


class NoConfChangeFence(Raft):
    """A new leader accepts a membership change before an entry of its own term has
    committed (the single-server change bug, thesis §4.1 errata): a change inherited
    unapplied from the previous leader and a new one can then both be in flight."""

    def become_leader(self) -> None:
        super().become_leader()
        self.pending_conf_index = 0


class ReadIndexSurvivesTermChange(Raft):
    """Keeps queued reads and unconfirmed read rounds across a change of role or term:
    a round begun by a deposed leader is confirmed by acknowledgements it collects when
    it leads again later, and releases a read index older than what was committed
    meanwhile."""

    def _reset(self, term: int) -> None:
        pending, rounds = self.pending_reads, self.read_rounds
        super()._reset(term)
        self.pending_reads, self.read_rounds = pending, rounds


@dataclass(frozen=True, slots=True)
class Variant:
    node_class: type[RawNode] = RawNode
    raft_class: type[Raft] = Raft


VARIANTS: dict[str, Variant] = {
    "commit_old_term": Variant(raft_class=CommitsOldTermByCounting),
    "forget_vote": Variant(node_class=ForgetsToPersistVote),
    "truncate_on_overlap": Variant(raft_class=TruncatesOnOverlap),
    "read_without_readindex": Variant(raft_class=ReadsWithoutReadIndex),
    "read_index_without_quorum": Variant(raft_class=ReadIndexWithoutQuorum),
    "no_conf_change_fence": Variant(raft_class=NoConfChangeFence),
    "read_index_survives_term_change": Variant(raft_class=ReadIndexSurvivesTermChange),
}
