"""Tunables of one Raft node. Pure data: validated here, read by the core."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """How one node of a group behaves. Times are in ticks: the caller decides how long
    a tick is (the runtime uses real time, the simulator virtual time)."""

    id: int
    election_tick: int = 10
    """A follower that hears nothing from a leader for a random time in
    ``[election_tick, 2 * election_tick)`` ticks campaigns."""
    heartbeat_tick: int = 1
    """A leader sends heartbeats every ``heartbeat_tick`` ticks."""
    max_size_per_msg: int = 1 << 20
    """Byte budget of the entries in one AppendRequest (at least one entry is sent)."""
    max_entries_per_msg: int = 256
    max_inflight_msgs: int = 64
    """Pipelining window: unacknowledged AppendRequests per follower in replicate mode.
    A small window trades pipelining for batching: proposals made while the window is
    full wait for an acknowledgement and then travel together in one message."""
    announce_commit: bool = True
    """Send a follower an empty AppendRequest when only the commit index moved. When
    False it learns the new commit index from the next append or heartbeat instead (at
    most ``heartbeat_tick`` later), which saves a message and its answer per follower
    per write; the leader still commits and answers clients at once."""
    max_committed_size_per_ready: int = 8 << 20
    """Byte budget of the committed entries handed out by one ``Ready``."""
    max_uncommitted_entries: int = 0
    """Refuse proposals while this many entries are uncommitted (0 = unlimited)."""
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_chunk_size: int = 1 << 20
    applied: int = 0
    """The index the caller's state machine has already applied (after a restart it is
    the snapshot's index unless the machine is itself durable)."""
    quiesce: bool = False
    """Let a group with nothing to do go quiet: once every member has the whole log,
    the leader sends a last heartbeat marked ``quiesce`` and stops; followers stop
    their election timers. Any request, or ``RawNode.suspect_leader`` when the caller
    believes the leader's node is gone, wakes the group."""

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be a positive integer")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be positive")
        if self.max_entries_per_msg <= 0:
            raise ValueError("max_entries_per_msg must be positive")
        if self.snapshot_chunk_size <= 0:
            raise ValueError("snapshot_chunk_size must be positive")
