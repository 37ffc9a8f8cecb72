"""A deterministic cluster of Raft nodes over a simulated network and clock.

``SimCluster`` plays the caller of every ``RawNode`` exactly as the Ready contract says
(persist, send, apply, advance), with ``MemoryStorage`` as each node's disk, so a
simulated crash loses precisely what was never persisted. Each node hosts a state
machine (``KVStore`` unless told otherwise) through ``MachineHost``. Everything random comes from one seed; one call to
``step()`` is one unit of virtual time.

The invariant checker watches every persist, apply and role change.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from boutique.examples import KVStore
from boutique.machine import CommandFailed, MachineHost, StateMachine
from boutique.raft import (
    EntryType,
    HardState,
    RaftConfig,
    RawNode,
    Ready,
    Role,
    bootstrap,
)
from boutique.raft.core import Raft
from boutique.raft.messages import AppendResponse, VoteResponse
from boutique.storage import MemoryStorage

from .invariants import InvariantChecker
from .network import SimNetwork

WriteDone = Callable[[str, Any], None]
"""Called with ("ok", reply) / ("fail", reason) / ("unknown", reason)."""


@dataclass(slots=True)
class SimOptions:
    """The shape of a simulated cluster."""

    pool: int = 3
    """Node ids 1..pool exist; ids beyond ``voters`` start empty, ready to be added."""
    voters: int = 3
    election_tick: int = 10
    heartbeat_tick: int = 2
    max_entries_per_msg: int = 4
    max_inflight_msgs: int = 4
    announce_commit: bool = True
    """False: followers learn commits from the next append or heartbeat (as bucket
    groups do in the runtime)."""
    snapshot_every: int = 0
    """Snapshot and compact a node's log each time this many entries were applied since
    its last snapshot (0: never)."""
    snapshot_chunk_size: int = 64
    pre_vote: bool = True
    check_quorum: bool = True
    varied_tick_rates: bool = False
    quiesce: bool = False
    """Let idle groups go quiet; followers of a leader that crashed or was cut off
    are woken the way the runtime's transport does: by suspicion."""
    mid_ready_crash: float = 0.0
    """Chance, per Ready of a node, to crash it after sending the messages that may
    leave early but before anything is persisted."""


@dataclass(slots=True)
class _PendingWrite:
    term: int
    done: WriteDone


@dataclass(slots=True)
class _ReadWaiter:
    query: tuple[Any, ...]
    done: WriteDone


@dataclass(slots=True)
class SimNode:
    """One node: its disk survives crashes; the rest is rebuilt on restart."""

    id: int
    storage: MemoryStorage
    host: MachineHost[Any, Any, Any, Any, Any]
    node: RawNode | None = None
    persisted: HardState = field(default_factory=HardState)
    tick_rate: float = 1.0
    tick_credit: float = 0.0
    writes: dict[int, _PendingWrite] = field(default_factory=dict)
    reads: dict[bytes, _ReadWaiter] = field(default_factory=dict)
    ready_reads: list[tuple[int, bytes]] = field(default_factory=list)
    was_leader: bool = False

    @property
    def up(self) -> bool:
        return self.node is not None

    @property
    def raft(self) -> Raft:
        return self.raft_node().raft

    def raft_node(self) -> RawNode:
        if self.node is None:
            raise RuntimeError(f"node {self.id} is down")
        return self.node


class SimCluster:
    """N nodes, a network, a clock and the invariant checker."""

    def __init__(
        self,
        seed: int,
        options: SimOptions | None = None,
        *,
        node_class: type[RawNode] = RawNode,
        raft_class: type[Raft] = Raft,
        machine: Callable[[], StateMachine[Any, Any, Any, Any, Any]] = KVStore,
    ) -> None:
        self.seed = seed
        self.machine = machine
        self.options = options or SimOptions()
        self.rng = random.Random(seed)
        self.network = SimNetwork(random.Random(self.rng.getrandbits(64)))
        self.checker = InvariantChecker()
        self.node_class = node_class
        self.raft_class = raft_class
        self.now = 0
        self.read_seq = 0
        self.crashes = 0
        self.mid_ready_crash = self.options.mid_ready_crash
        self.nodes: dict[int, SimNode] = {}
        founders = set(range(1, self.options.voters + 1))
        for node_id in range(1, self.options.pool + 1):
            storage = MemoryStorage()
            if node_id in founders:
                hard_state, entries = bootstrap(founders)
                storage.bootstrap(hard_state, entries)
            sim = SimNode(node_id, storage, MachineHost(machine()))
            if self.options.varied_tick_rates:
                sim.tick_rate = self.rng.choice((1.0, 1.0, 0.8, 0.6))
            self.nodes[node_id] = sim
            self._start(sim)

    # --- Lifecycle ----------------------------------------------------------------------

    def _start(self, sim: SimNode) -> None:
        opts = self.options
        snapshot = sim.storage.snapshot()
        sim.host = MachineHost(self.machine())
        if snapshot.meta.index:
            sim.host.restore(snapshot.data)
        config = RaftConfig(
            id=sim.id,
            election_tick=opts.election_tick,
            heartbeat_tick=opts.heartbeat_tick,
            max_entries_per_msg=opts.max_entries_per_msg,
            max_inflight_msgs=opts.max_inflight_msgs,
            announce_commit=opts.announce_commit,
            max_size_per_msg=1 << 12,
            snapshot_chunk_size=opts.snapshot_chunk_size,
            pre_vote=opts.pre_vote,
            check_quorum=opts.check_quorum,
            quiesce=opts.quiesce,
        )
        node_rng = random.Random(self.rng.getrandbits(64))
        sim.node = self.node_class(config, sim.storage, node_rng, core=self.raft_class)
        sim.persisted = sim.storage.hard_state
        sim.was_leader = False
        self.checker.observe_restart(sim.id, sim.persisted)

    def crash(self, node_id: int) -> None:
        """Power off: memory is lost, the disk (MemoryStorage) is kept."""
        sim = self.nodes[node_id]
        if not sim.up:
            return
        self.crashes += 1
        sim.node = None
        for pending in sim.writes.values():
            pending.done("unknown", "node crashed")
        sim.writes.clear()
        for waiter in sim.reads.values():
            waiter.done("unknown", "node crashed")
        sim.reads.clear()
        sim.ready_reads.clear()
        self.network.drop_to(node_id)

    def restart(self, node_id: int) -> None:
        sim = self.nodes[node_id]
        if not sim.up:
            self._start(sim)

    # --- Queries ------------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [sim for sim in self.nodes.values() if sim.up]

    def leader(self) -> SimNode | None:
        """The live leader of the highest term, if any."""
        best: SimNode | None = None
        for sim in self.live():
            if sim.raft.role is Role.LEADER and (best is None or sim.raft.term > best.raft.term):
                best = sim
        return best

    def voters(self) -> frozenset[int]:
        leader = self.leader()
        if leader is not None:
            return leader.raft.conf.voters
        confs = [sim.raft.conf.voters for sim in self.live() if sim.raft.conf.voters]
        return max(confs, key=len) if confs else frozenset()

    # --- Client requests ----------------------------------------------------------------

    def submit_write(self, node_id: int, command: tuple[Any, ...], done: WriteDone) -> None:
        """Propose ``command`` at ``node_id``; ``done`` is called exactly once."""
        sim = self.nodes[node_id]
        if not sim.up:
            done("fail", "node down")
            return
        try:
            entry = sim.raft_node().propose(MachineHost.encode_command(command))
        except Exception as exc:  # NotLeaderError, ProposalDroppedError
            done("fail", exc)
            return
        sim.writes[entry.index] = _PendingWrite(entry.term, done)

    def next_read_context(self) -> bytes:
        self.read_seq += 1
        return self.read_seq.to_bytes(8, "big")

    def submit_read(
        self, node_id: int, query: tuple[Any, ...], done: WriteDone, context: bytes
    ) -> None:
        """A linearizable read through ReadIndex at ``node_id``, tagged ``context``."""
        sim = self.nodes[node_id]
        if not sim.up:
            done("fail", "node down")
            return
        self.checker.observe_read_asked(context)
        try:
            sim.raft_node().read_index(context)
        except Exception as exc:  # NotLeaderError
            done("fail", exc)
            return
        sim.reads[context] = _ReadWaiter(query, done)

    # --- The loop -----------------------------------------------------------------------

    def step(self) -> None:
        """One unit of virtual time: ticks, deliveries, then every node's Ready."""
        self.now += 1
        for sim in self.live():
            sim.tick_credit += sim.tick_rate
            while sim.tick_credit >= 1.0 and sim.node is not None:
                sim.tick_credit -= 1.0
                sim.node.tick()
        if self.options.quiesce:
            self._suspect_lost_leaders()
        for msg in self.network.due(self.now):
            target = self.nodes.get(msg.to)
            if target is not None and target.node is not None:
                target.node.step(msg)
        self.process_ready()

    def _suspect_lost_leaders(self) -> None:
        """What the runtime's transport does: a quiet follower whose leader's node is
        down or unreachable is told so, and may campaign."""
        for sim in self.live():
            raft = sim.raft
            if raft.quiesced and raft.role is not Role.LEADER:
                lead = self.nodes.get(raft.lead)
                if lead is None or not lead.up or self.network.is_cut(raft.lead, sim.id):
                    sim.raft_node().suspect_leader()

    def process_ready(self) -> None:
        for sim in list(self.nodes.values()):
            rounds = 0
            while sim.node is not None and sim.node.has_ready():
                rounds += 1
                if rounds > 100:
                    raise RuntimeError(f"node {sim.id} produced Ready forever")
                self._handle_ready(sim, sim.node.ready())
        rafts = [sim.raft for sim in self.live()]
        self.checker.observe_roles(rafts)
        for raft in rafts:
            if raft.role is Role.CANDIDATE:
                self.checker.observe_vote(raft.id, raft.term, raft.id)
        for sim in self.live():
            is_leader = sim.raft.role is Role.LEADER
            if is_leader and not sim.was_leader:
                self.checker.observe_new_leader(sim.raft)
            sim.was_leader = is_leader

    def _handle_ready(self, sim: SimNode, ready: Ready) -> None:
        node = sim.node
        assert node is not None
        for msg in ready.messages:
            self._send(msg)
        if self.mid_ready_crash and self.rng.random() < self.mid_ready_crash:
            # Crash between sending the early messages and persisting: nothing of this
            # Ready is durable, and nothing that depended on it may have left.
            self.crash(sim.id)
            return
        self._persist(sim, ready)
        for msg in ready.persisted_messages:
            self._send(msg)
        if ready.snapshot is not None:
            sim.host.restore(ready.snapshot.data)
            for index in [i for i in sim.writes if i <= ready.snapshot.meta.index]:
                sim.writes.pop(index).done("unknown", "covered by an installed snapshot")
        self._apply(sim, ready)
        for read_state in ready.read_states:
            self.checker.observe_read_state(sim.id, read_state.index, read_state.context)
            sim.ready_reads.append((read_state.index, read_state.context))
        node.advance(ready)
        self.checker.observe_commit(sim.id, node.raft.log.committed)
        self._serve_reads(sim)
        self._maybe_snapshot(sim)

    def _send(self, msg: Any) -> None:
        if isinstance(msg, VoteResponse) and msg.granted and not msg.pre_vote:
            self.checker.observe_vote(msg.frm, msg.term, msg.to)
        elif isinstance(msg, AppendResponse) and not msg.reject:
            self.checker.observe_ack(msg.frm, msg.term, msg.index)
        self.network.send(self.now, msg)

    def _persist(self, sim: SimNode, ready: Ready) -> None:
        storage = sim.storage
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        if ready.entries:
            first = ready.entries[0].index
            prev_term: int | None
            try:
                prev_term = storage.term(first - 1)
            except Exception:
                prev_term = None
            self.checker.observe_persisted(sim.id, ready.entries, prev_term)
            if sim.raft.role is Role.LEADER:
                self.checker.observe_leader_append(sim.raft, ready.entries)
            storage.append(ready.entries)
            term = ready.hard_state.term if ready.hard_state is not None else sim.persisted.term
            self.checker.observe_log_end(sim.id, term, storage.last_index())
        if ready.hard_state is not None:
            self.checker.observe_hard_state(sim.id, sim.persisted, ready.hard_state)
            storage.set_hard_state(ready.hard_state)
            sim.persisted = ready.hard_state

    def _apply(self, sim: SimNode, ready: Ready) -> None:
        leaders = [s.raft for s in self.live() if s.raft.role is Role.LEADER]
        for entry in ready.committed_entries:
            if entry.index <= sim.host.applied_index:
                continue
            self.checker.observe_applied(sim.id, entry, leaders)
            if entry.type is EntryType.NORMAL:
                reply = sim.host.apply_entry(entry.index, entry.data)
            else:
                sim.host.skip(entry.index)
                reply = None
            pending = sim.writes.pop(entry.index, None)
            if pending is None:
                continue
            if pending.term != entry.term:
                pending.done("fail", "overwritten by another leader's entry")
            elif isinstance(reply, CommandFailed):
                pending.done("fail", reply)
            else:
                pending.done("ok", reply)

    def _serve_reads(self, sim: SimNode) -> None:
        if not sim.ready_reads:
            return
        applied = sim.host.applied_index
        waiting = []
        for index, context in sim.ready_reads:
            waiter = sim.reads.get(context)
            if waiter is None:
                continue
            if index <= applied:
                del sim.reads[context]
                waiter.done("ok", sim.host.query(waiter.query))
            else:
                waiting.append((index, context))
        sim.ready_reads = waiting

    def _maybe_snapshot(self, sim: SimNode) -> None:
        every = self.options.snapshot_every
        if not every or sim.node is None:
            return
        applied = sim.host.applied_index
        if applied - sim.storage.snapshot().meta.index >= every:
            sim.storage.create_snapshot(applied, sim.node.conf_state, sim.host.snapshot())
            sim.storage.compact(applied)

    def forget_read(self, node_id: int, context: bytes) -> None:
        self.nodes[node_id].reads.pop(context, None)
