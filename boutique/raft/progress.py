"""What a leader knows about each follower's log, and how fast it may send to it.

A follower is in one of three modes (as in etcd-io/raft's tracker):

* PROBE: the leader does not know where the follower's log matches; it sends one
  AppendRequest and waits for the answer (or the next heartbeat) before sending more.
* REPLICATE: the logs match up to ``match``; the leader streams entries optimistically,
  advancing ``next`` as it sends, bounded by an inflight window.
* SNAPSHOT: the follower needs entries the leader has compacted; a snapshot is being
  transferred in chunks and nothing else is sent until it is installed.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from .messages import Snapshot


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A bounded FIFO of the last indices of unacknowledged AppendRequests."""

    __slots__ = ("_capacity", "_queue")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._queue: deque[int] = deque()

    def add(self, last_index: int) -> None:
        if self.full():
            raise RuntimeError("inflight window overflow")
        self._queue.append(last_index)

    def free_to(self, index: int) -> None:
        """Forget every message whose last index is at or below ``index``."""
        queue = self._queue
        while queue and queue[0] <= index:
            queue.popleft()

    def free_first(self) -> None:
        if self._queue:
            self._queue.popleft()

    def full(self) -> bool:
        return len(self._queue) >= self._capacity

    def reset(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


@dataclass(slots=True)
class SnapshotTransfer:
    """A chunked snapshot on its way to one follower."""

    snapshot: Snapshot
    acked: int = 0
    """Bytes the follower has confirmed."""
    sent: int = 0
    """Bytes sent so far (the chunk in flight ends here)."""
    idle_heartbeats: int = 0
    """Heartbeat rounds without an acknowledgement; the chunk is resent after one."""


@dataclass(slots=True)
class Progress:
    """The leader's view of one member (voter or learner)."""

    match: int
    next: int
    inflights: Inflights
    learner: bool = False
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    """In PROBE, an AppendRequest is outstanding; wait for its answer or a heartbeat."""
    recent_active: bool = False
    """Heard from since the last check-quorum round."""
    transfer: SnapshotTransfer | None = None
    sent_commit: int = 0
    """The commit index carried by the last AppendRequest sent to this member."""

    def become_probe(self) -> None:
        # After a snapshot, the follower's log starts right after it.
        if self.state is ProgressState.SNAPSHOT and self.transfer is not None:
            self.next = max(self.match + 1, self.transfer.snapshot.meta.index + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.transfer = None
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.transfer = None
        self.inflights.reset()

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflights.reset()
        self.transfer = SnapshotTransfer(snapshot)

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``; returns whether ``match`` advanced."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease(self, rejected: int, hint_index: int) -> bool:
        """A rejection of ``rejected``; moves ``next`` back. Returns False for a stale
        rejection (an answer to something sent before a newer success)."""
        if rejected == self.match and hint_index < self.match:
            # Either a reordered, stale rejection, or the follower no longer holds what
            # it acknowledged. Durable storage never loses acknowledged entries, but a
            # member without it (restarted empty, rafted_value-style) does. Probe at
            # match to find out; if even that probe is refused, the log is gone and
            # the follower is caught up again from what it really has.
            if self.state is ProgressState.REPLICATE:
                self.next = self.match + 1
                return True
            if self.state is ProgressState.PROBE and self.next == self.match + 1:
                self.match = hint_index
                self.next = hint_index + 1
                self.probe_sent = False
                return True
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint_index + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int, count: int) -> None:
        """Record an AppendRequest carrying ``count`` entries up to ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
