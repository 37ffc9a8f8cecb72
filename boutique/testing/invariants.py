"""Raft's safety properties, checked incrementally while a simulation runs.

Figure 3 of the Raft paper lists what must always hold; each is checked here at the
moment it could first be broken, so a violation is reported at the step that caused it:

* Election safety: at most one leader per term (and at most one vote per voter per
  term, which is what guarantees it).
* Log matching: two logs holding an entry with the same index and term are identical
  up to it. Checked as: every ``(index, term)`` ever persisted carries the same data
  and follows the same previous term everywhere.
* Leader completeness: a committed entry is in the log of every later leader.
* State machine safety: no two nodes apply different entries at one index.
* Acknowledgements are promises: a node that told the leader of term T it stores the
  log up to index n keeps it while it stays in term T (the Ready contract's "persist
  before you acknowledge", and §5.3's "truncate only on conflict").
* Commit-index monotonicity: within one incarnation of a node, and across restarts
  relative to what it persisted, the commit index never goes back.
* Read safety (§6.4 / thesis §6.4): a read index released for a read is at least every
  index committed anywhere before the read was asked, so serving the state machine at
  that index is linearizable. Checked on the index itself, not only on the values a
  client happened to see: a stale read index is a bug even when the node applied
  past it by luck.
* One membership change at a time (thesis §4.1 and its errata): a leader appends a
  configuration change only when every earlier one in its log is applied. A new
  leader may have inherited an unapplied one, which is why it waits for an entry of
  its own term to commit; two changes in flight let two disjoint majorities form.
"""

from __future__ import annotations

from dataclasses import dataclass

from boutique.raft import NONE, Entry, EntryType, HardState, Role
from boutique.raft.core import Raft


class InvariantViolation(AssertionError):
    """A safety property of Raft does not hold."""


@dataclass(frozen=True, slots=True)
class _EntryIdentity:
    data: bytes
    type: int
    prev_term: int | None


class InvariantChecker:
    """Collects global knowledge of the run and raises on the first violation."""

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        self.votes: dict[tuple[int, int], int] = {}
        self.entries: dict[tuple[int, int], _EntryIdentity] = {}
        self.applied: dict[int, Entry] = {}
        self.commits: dict[int, int] = {}
        self.acks: dict[int, tuple[int, int]] = {}
        self.max_commit = 0
        self.read_floors: dict[bytes, int] = {}
        self.checks = 0

    def fail(self, message: str) -> None:
        raise InvariantViolation(message)

    # --- Election safety ----------------------------------------------------------------

    def observe_roles(self, rafts: list[Raft]) -> None:
        for raft in rafts:
            if raft.role is Role.LEADER:
                self.checks += 1
                holder = self.leaders.setdefault(raft.term, raft.id)
                if holder != raft.id:
                    self.fail(
                        f"election safety: nodes {holder} and {raft.id} both lead term {raft.term}"
                    )

    def observe_vote(self, voter: int, term: int, candidate: int) -> None:
        previous = self.votes.setdefault((term, voter), candidate)
        if previous != candidate:
            self.fail(
                f"election safety: node {voter} voted for {previous} and {candidate} in term {term}"
            )

    def observe_new_leader(self, raft: Raft) -> None:
        """Leader completeness: every entry known applied must be in the new leader's log."""
        log = raft.log
        first = log.first_index()
        for index, entry in self.applied.items():
            if entry.term < raft.term and index >= first:
                self.checks += 1
                if log.term_or_none(index) != entry.term:
                    self.fail(
                        f"leader completeness: leader {raft.id} of term {raft.term} lacks "
                        f"committed entry {index}/{entry.term}"
                    )

    # --- Log matching -------------------------------------------------------------------

    def observe_persisted(self, node: int, entries: list[Entry], prev_term: int | None) -> None:
        for entry in entries:
            self.checks += 1
            identity = _EntryIdentity(entry.data, int(entry.type), prev_term)
            known = self.entries.setdefault((entry.index, entry.term), identity)
            if known.data != identity.data or known.type != identity.type:
                self.fail(
                    f"log matching: node {node} holds a different entry {entry.index}/{entry.term}"
                )
            if (
                known.prev_term is not None
                and identity.prev_term is not None
                and known.prev_term != identity.prev_term
            ):
                self.fail(
                    f"log matching: node {node}'s entry {entry.index}/{entry.term} follows term "
                    f"{identity.prev_term}, elsewhere term {known.prev_term}"
                )
            prev_term = entry.term

    def observe_ack(self, node: int, term: int, index: int) -> None:
        previous = self.acks.get(node)
        if previous is None or previous[0] < term or (previous[0] == term and previous[1] < index):
            self.acks[node] = (term, index)

    def observe_log_end(self, node: int, term: int, last_index: int) -> None:
        """After a persist, the log must still hold what was acknowledged in this term."""
        self.checks += 1
        acked = self.acks.get(node)
        if acked is not None and acked[0] == term and last_index < acked[1]:
            self.fail(
                f"node {node} acknowledged index {acked[1]} in term {term} "
                f"but its log now ends at {last_index}"
            )

    # --- State machine safety -----------------------------------------------------------

    def observe_applied(self, node: int, entry: Entry, leaders: list[Raft]) -> None:
        self.checks += 1
        known = self.applied.get(entry.index)
        if known is None:
            self.applied[entry.index] = entry
            # An entry now known committed must be in every leader of a later term.
            for raft in leaders:
                if (
                    raft.term > entry.term
                    and entry.index >= raft.log.first_index()
                    and raft.log.term_or_none(entry.index) != entry.term
                ):
                    self.fail(
                        f"leader completeness: leader {raft.id} of term {raft.term} lacks "
                        f"committed entry {entry.index}/{entry.term}"
                    )
        elif known != entry:
            self.fail(
                f"state machine safety: node {node} applied {entry.index}/{entry.term} "
                f"but {entry.index}/{known.term} was applied elsewhere"
            )

    # --- Monotonicity -------------------------------------------------------------------

    def observe_commit(self, node: int, commit: int) -> None:
        previous = self.commits.get(node, 0)
        if commit < previous:
            self.fail(f"commit index of node {node} went back from {previous} to {commit}")
        self.commits[node] = commit
        self.max_commit = max(self.max_commit, commit)

    def observe_restart(self, node: int, persisted: HardState) -> None:
        """A restarted node starts from its persisted commit index, which it may lower."""
        self.commits[node] = persisted.commit

    def observe_hard_state(self, node: int, previous: HardState, new: HardState) -> None:
        self.checks += 1
        if new.term < previous.term:
            self.fail(f"node {node} persisted term {new.term} after term {previous.term}")
        if new.term == previous.term and previous.vote != NONE and new.vote != previous.vote:
            self.fail(
                f"node {node} changed its persisted vote in term {new.term} "
                f"from {previous.vote} to {new.vote}"
            )
        if new.commit < previous.commit:
            self.fail(f"node {node} persisted commit {new.commit} after {previous.commit}")

    # --- Read safety --------------------------------------------------------------------

    def observe_read_asked(self, context: bytes) -> None:
        """A client asks a linearizable read tagged ``context`` (unique per run)."""
        self.read_floors[context] = self.max_commit

    def observe_read_state(self, node: int, index: int, context: bytes) -> None:
        self.checks += 1
        floor = self.read_floors.get(context)
        if floor is not None and index < floor:
            self.fail(
                f"read safety: node {node} released read {context.hex()} at index {index}, "
                f"but index {floor} was committed before the read was asked"
            )

    # --- Membership ---------------------------------------------------------------------

    def observe_leader_append(self, raft: Raft, entries: list[Entry]) -> None:
        """``raft`` leads and is persisting ``entries`` it appended itself."""
        for entry in entries:
            if entry.type is not EntryType.CONF_CHANGE or entry.term != raft.term:
                continue
            self.checks += 1
            applied = raft.log.applied
            if entry.index - 1 <= applied:
                continue
            pending = [
                e.index
                for e in raft.log.slice(max(applied + 1, raft.log.first_index()), entry.index)
                if e.type is EntryType.CONF_CHANGE
            ]
            if pending:
                self.fail(
                    f"one membership change at a time: leader {raft.id} of term {raft.term} "
                    f"appended change {entry.index} while change {pending[0]} was not applied "
                    f"(applied {applied})"
                )
