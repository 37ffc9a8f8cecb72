"""Deliberately broken Raft variants, to prove the simulator's checks can fail.

Each variant breaks one rule the Raft paper depends on. ``tests/sim`` runs them
through the simulator and requires every one to be caught; they are shipped in the
package so a failing seed can be replayed with ``--variant``. Never use them otherwise.
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


@dataclass(frozen=True, slots=True)
class Variant:
    node_class: type[RawNode] = RawNode
    raft_class: type[Raft] = Raft


VARIANTS: dict[str, Variant] = {
    "commit-old-term": Variant(raft_class=CommitsOldTermByCounting),
    "forget-vote": Variant(node_class=ForgetsToPersistVote),
    "truncate-on-overlap": Variant(raft_class=TruncatesOnOverlap),
    "read-without-readindex": Variant(raft_class=ReadsWithoutReadIndex),
}
