"""Nothing is promised before it is synced: checks against power-loss disks.

``PromiseChecker`` watches the frames of a ``LoopbackNetwork`` and the client replies
of hosts that run on ``PowerLossDisk``s. At the instant a frame leaves node n, every
promise in it must already be in n's synced image, i.e. survive a power loss now:

* a granted vote (not a pre-vote) for c in term t: the synced hard state is of a later
  term, or of term t with the vote for c (a crash must not let n vote twice in t);
* a vote request of candidate n in term t: likewise, with the vote for itself;
* an append acknowledgement up to index i: the synced log holds i with the term the
  node's written log has there, or a synced snapshot covers i;
* a snapshot reported installed at i: the synced snapshot is at i or later.

And when a client is told its write was applied at (index, term), a majority of the
group's voters hold (index, term) in their synced logs. On top, election safety is
checked from the frames: one vote per voter per term, one leader per term.

Violations are collected, not raised: they happen inside a host's loop, where an
exception would only look like a crash of that host. It must never change what it
watches (it reads the disks' synced images only).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from boutique.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    Message,
    SnapshotChunk,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
)
from boutique.runtime.codec import CodecError, decode_batch
from boutique.storage.memory import MemoryStorage

from .disk import PowerLossDisk
from .invariants import InvariantChecker, InvariantViolation


def holds(storage: MemoryStorage | None, index: int, term: int | None) -> bool:
    """Whether ``storage`` keeps entry ``(index, term)``, any term if ``term`` is None
    (a snapshot covering ``index`` counts: only committed entries are snapshotted)."""
    if index == 0:
        return True
    if storage is None:
        return False
    if index <= storage.snapshot().meta.index:
        return True
    if not storage.first_index() <= index <= storage.last_index():
        return False
    return term is None or storage.term(index) == term


def term_at(storage: MemoryStorage | None, index: int) -> int | None:
    """The term of ``index`` in ``storage``; None if it is not there or compacted."""
    if storage is None or not storage.first_index() - 1 <= index <= storage.last_index():
        return None
    return storage.term(index)


class PromiseChecker:
    """Checks promises against the synced images of ``disks`` (node id -> disk)."""

    def __init__(self, disks: Mapping[int, PowerLossDisk]) -> None:
        self.disks = disks
        self.violations: list[str] = []
        self.checked: Counter[str] = Counter()
        """Promises checked, by kind: a test asserts it saw some of each."""
        self._invariants: dict[str, InvariantChecker] = {}
        self._leaders: dict[tuple[str, int], int] = {}

    # --- Frames -------------------------------------------------------------------------

    def on_send(self, sender: int, receiver: int, payload: object) -> None:
        """A ``LoopbackNetwork`` observer: check the Raft messages of a frame leaving."""
        if not isinstance(payload, dict) or "r" not in payload:
            return
        try:
            batch = decode_batch(payload["r"])
        except CodecError as exc:
            self.violations.append(f"node {sender} sent an undecodable batch: {exc}")
            return
        for group_id, messages in batch.items():
            for msg in messages:
                self._check_message(sender, group_id, msg)

    def _check_message(self, node: int, group_id: str, msg: Message) -> None:
        synced = self.disks[node].synced(group_id)
        where = f"node {node}, group {group_id}"
        match msg:
            case VoteResponse(granted=True, pre_vote=False):
                self._check_vote(where, synced, msg.term, msg.to, "a vote")
                self._observe_vote(group_id, node, msg.term, msg.to)
            case VoteRequest(pre_vote=False):
                self._check_vote(where, synced, msg.term, node, "a vote request")
                self._observe_vote(group_id, node, msg.term, node)
            case AppendResponse(reject=False, index=index):
                self.checked["ack"] += 1
                term = term_at(self.disks[node].written(group_id), index)
                if not holds(synced, index, term):
                    self.violations.append(
                        f"{where}: acknowledged index {index} (term {term}) of term "
                        f"{msg.term} before it was synced"
                    )
            case SnapshotResponse(installed=True, snapshot_index=index):
                self.checked["snapshot"] += 1
                # Installed, or already covered by the log (the follower fast-forwards
                # without storing it): either way what it covers must be synced.
                covered = synced is not None and (
                    synced.snapshot().meta.index >= index
                    or holds(synced, index, term_at(self.disks[node].written(group_id), index))
                )
                if not covered:
                    self.violations.append(
                        f"{where}: reported snapshot {index} installed before it was synced"
                    )
            case AppendRequest() | Heartbeat() | SnapshotChunk():
                leader = self._leaders.setdefault((group_id, msg.term), node)
                if leader != node:
                    self.violations.append(
                        f"election safety: nodes {leader} and {node} both lead term "
                        f"{msg.term} of group {group_id}"
                    )

    def _check_vote(
        self, where: str, synced: MemoryStorage | None, term: int, candidate: int, what: str
    ) -> None:
        self.checked["vote"] += 1
        hs = synced.hard_state if synced is not None else None
        if hs is None or not (hs.term > term or (hs.term == term and hs.vote == candidate)):
            self.violations.append(
                f"{where}: sent {what} for {candidate} in term {term} while the synced "
                f"hard state is {hs}"
            )

    def _observe_vote(self, group_id: str, voter: int, term: int, candidate: int) -> None:
        checker = self._invariants.setdefault(group_id, InvariantChecker())
        try:
            checker.observe_vote(voter, term, candidate)
        except InvariantViolation as exc:
            self.violations.append(f"group {group_id}: {exc}")

    # --- Client replies -----------------------------------------------------------------

    def check_reply(self, group_id: str, index: int, term: int, voters: Iterable[int]) -> None:
        """A client is being told its write at ``(index, term)`` was applied: a majority
        of ``voters`` must hold it in their synced logs."""
        self.checked["reply"] += 1
        voters = sorted(voters)
        synced = [
            v
            for v in voters
            if v in self.disks and holds(self.disks[v].synced(group_id), index, term)
        ]
        if len(synced) <= len(voters) // 2:
            self.violations.append(
                f"group {group_id}: a client was told entry {index} (term {term}) was "
                f"applied while only nodes {synced} of {voters} had it synced"
            )
