"""A deterministic cluster of Raft nodes over a simulated network and clock.

Each node is the shipped host core (``HostCore``) with one group, stepped by
``SimCluster`` without trio: messages are stepped into its core one at a time, and each
Ready goes through the host's own cycle (send, persist, send what needed the persist, apply, advance), so the
simulator and every real node run one Ready driver. ``MemoryStorage`` is each node's
disk, so a simulated crash loses precisely what was never persisted. Each node hosts a state
machine (``KVStore`` unless told otherwise) through ``MachineHost``. Everything random comes from one seed; one call to
``step()`` is one unit of virtual time.

The invariant checker watches every persist (through the storage the host writes), every
Ready as it is taken (entries to apply, read indexes released) and every role change.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from boutique.examples import KVStore
from boutique.machine import CommandFailed, MachineHost, StateMachine
from boutique.raft import (
    HardState,
    RaftConfig,
    RawNode,
    Ready,
    Role,
    bootstrap,
)
from boutique.raft.core import Raft
from boutique.raft.messages import AppendResponse, Entry, Message, Snapshot, VoteResponse
from boutique.runtime.group import GroupRuntime, GroupStore, Pending
from boutique.runtime.host_core import HostCore, HostSettings
from boutique.runtime.outcomes import Applied, Outcome, Rejected, Unknown
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


NEVER = 1 << 62
"""``snapshot_entries`` for a cluster that never snapshots."""
GROUP = "g"
"""The one group every simulated node hosts."""


class _PowerCut(Exception):
    """Raised by a node's storage at its first write of a Ready chosen for a crash."""


class _ObservedLog:
    """One node's ``MemoryStorage`` as the host writes it: every persist is shown to the
    invariant checker first (and may be a crash point). Reads pass through."""

    def __init__(self, cluster: SimCluster, sim: SimNode) -> None:
        self._cluster = cluster
        self._sim = sim
        self._inner = sim.storage
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _cut(self) -> None:
        if self.armed:
            self.armed = False
            raise _PowerCut()

    def append(self, entries: list[Entry]) -> None:
        self._cut()
        if entries:
            checker, sim, storage = self._cluster.checker, self._sim, self._inner
            first = entries[0].index
            prev_term: int | None
            try:
                prev_term = storage.term(first - 1)
            except Exception:
                prev_term = None
            checker.observe_persisted(sim.id, entries, prev_term)
            if sim.raft.role is Role.LEADER:
                checker.observe_leader_append(sim.raft, entries)
            storage.append(entries)
            checker.observe_log_end(sim.id, sim.raft.term, storage.last_index())

    def set_hard_state(self, hard_state: HardState) -> None:
        self._cut()
        sim = self._sim
        self._cluster.checker.observe_hard_state(sim.id, sim.persisted, hard_state)
        self._inner.set_hard_state(hard_state)
        sim.persisted = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self._cut()
        self._inner.apply_snapshot(snapshot)


class _OneGroupStorage:
    """The ``NodeStorage`` of a simulated node: its one group, always durable."""

    def __init__(self, log: _ObservedLog) -> None:
        self.log = log

    def group(self, group_id: str) -> _ObservedLog:
        return self.log

    def groups(self) -> list[str]:
        return [GROUP]

    def drop_group(self, group_id: str) -> None:
        raise AssertionError("the simulated group is never dropped")

    def pending_writes(self) -> int:
        return 0

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


class _CoreHost(HostCore):
    """The shipped host core with one group, stepped by ``SimCluster`` (no trio): its
    Ready cycle (``_cycle``) is the one every node of boutique runs."""

    def __init__(self, cluster: SimCluster, sim: SimNode, log: _ObservedLog) -> None:
        opts = cluster.options
        super().__init__(
            sim.id,
            peers={},
            open_storage=lambda: _OneGroupStorage(log),
            machine_for=lambda group_id: cluster.machine(),
            clock=lambda: float(cluster.now),
            settings=HostSettings(
                election_ticks=opts.election_tick,
                heartbeat_ticks=opts.heartbeat_tick,
                snapshot_entries=opts.snapshot_every or NEVER,
                snapshot_chunk_size=opts.snapshot_chunk_size,
                max_inflight_appends=opts.max_inflight_msgs,
                max_entries_per_append=opts.max_entries_per_msg,
            ),
            seed=cluster.rng.getrandbits(64),
        )
        self.cluster = cluster
        self.sim = sim
        self.storage = self.open_storage()

    def make_raw_node(self, config: RaftConfig, storage: GroupStore, rng: random.Random) -> RawNode:
        opts = self.cluster.options
        config = RaftConfig(
            id=self.id,
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
        node = self.cluster.node_class(config, storage, rng, core=self.cluster.raft_class)
        take_ready, observe, node_id = node.ready, self.cluster._observe_ready, self.id

        def ready() -> Ready:
            # Every Ready is shown to the checker as it is taken, before the host acts.
            taken = take_ready()
            observe(node_id, taken)
            return taken

        node.ready = ready  # type: ignore[method-assign]
        return node

    def _send_all(self, outgoing: defaultdict[int, defaultdict[str, list[Message]]]) -> None:
        # The transport's edge: messages go to the simulated network as they are.
        for batch in outgoing.values():
            for messages in batch.values():
                for msg in messages:
                    self.cluster._send(msg)
        outgoing.clear()


@dataclass(slots=True)
class SimNode:
    """One node: its disk survives crashes; the rest is rebuilt on restart."""

    id: int
    storage: MemoryStorage
    last_host: MachineHost[Any, Any, Any, Any, Any]
    server: _CoreHost | None = None
    log: _ObservedLog | None = None
    persisted: HardState = field(default_factory=HardState)
    tick_rate: float = 1.0
    tick_credit: float = 0.0
    reads: dict[bytes, Pending] = field(default_factory=dict)
    """Reads in flight by the workload's context (the group tags them its own way)."""
    was_leader: bool = False

    @property
    def group(self) -> GroupRuntime | None:
        return None if self.server is None else self.server.groups.get(GROUP)

    @property
    def node(self) -> RawNode | None:
        group = self.group
        return None if group is None else group.node

    @property
    def host(self) -> MachineHost[Any, Any, Any, Any, Any]:
        """The state machine's host (the last incarnation's while the node is down)."""
        group = self.group
        return self.last_host if group is None else group.host

    @property
    def up(self) -> bool:
        return self.node is not None

    @property
    def raft(self) -> Raft:
        return self.raft_node().raft

    def raft_node(self) -> RawNode:
        node = self.node
        if node is None:
            raise RuntimeError(f"node {self.id} is down")
        return node


def _done_with(done: WriteDone) -> Callable[[Outcome], None]:
    """A workload callback fed by a request's outcome."""

    def then(outcome: Outcome) -> None:
        match outcome:
            case Applied(reply) if isinstance(reply, CommandFailed):
                done("fail", reply)
            case Applied(reply):
                done("ok", reply)
            case Rejected(reason):
                done("fail", reason)
            case Unknown(reason):
                done("unknown", reason)

    return then


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
        sim.log = _ObservedLog(self, sim)
        sim.persisted = sim.storage.hard_state
        sim.server = _CoreHost(self, sim, sim.log)
        group = sim.server.open_group(
            GROUP, announce_commit=self.options.announce_commit, quiesce=self.options.quiesce
        )
        sim.last_host = group.host
        sim.was_leader = False
        self.checker.observe_restart(sim.id, sim.persisted)

    def crash(self, node_id: int) -> None:
        """Power off: memory is lost, the disk (MemoryStorage) is kept."""
        sim = self.nodes[node_id]
        group = sim.group
        if group is None:
            return
        self.crashes += 1
        sim.server = None
        group.close("node crashed")
        sim.reads.clear()
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
        group = self.nodes[node_id].group
        if group is None:
            done("fail", "node down")
            return
        group.propose(MachineHost.encode_command(command), Pending(then=_done_with(done)))

    def next_read_context(self) -> bytes:
        self.read_seq += 1
        return self.read_seq.to_bytes(8, "big")

    def submit_read(
        self, node_id: int, query: tuple[Any, ...], done: WriteDone, context: bytes
    ) -> None:
        """A linearizable read through ReadIndex at ``node_id``; ``context`` names it
        for ``forget_read``."""
        sim = self.nodes[node_id]
        group = sim.group
        if group is None:
            done("fail", "node down")
            return
        pending = Pending(then=_done_with(done))
        asked = set(group.reads)
        group.read(query, pending)
        for tag in set(group.reads) - asked:
            # The read index is asked now: nothing committed later may be missed.
            self.checker.observe_read_asked(tag)
            sim.reads[context] = pending

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
                self._cycle(sim)
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

    def _cycle(self, sim: SimNode) -> None:
        """One Ready of ``sim``, through the host's own cycle: send, persist, send what
        needed the persist, apply, advance."""
        server, log = sim.server, sim.log
        assert server is not None and log is not None
        # Crash between sending the messages that may leave early and persisting:
        # nothing of this Ready is durable, and nothing that depended on it may leave.
        log.armed = bool(self.mid_ready_crash) and self.rng.random() < self.mid_ready_crash
        try:
            server._cycle({GROUP})
        except _PowerCut:
            self.crash(sim.id)
            return
        finally:
            log.armed = False
        if server.quarantined:
            # The core's own sanity checks tripped: a finding, not a fault to ride out.
            raise RuntimeError(f"node {sim.id}: {server.quarantined[GROUP]}")
        group = sim.group
        assert group is not None
        if group.build is not None:
            server._continue_snapshots()
        self.checker.observe_commit(sim.id, group.node.raft.log.committed)

    def _observe_ready(self, node_id: int, ready: Ready) -> None:
        """What a Ready shows before the host acts on it: entries about to be applied
        (state machine safety, leader completeness) and released read indexes."""
        sim = self.nodes[node_id]
        applied = sim.host.applied_index
        if ready.committed_entries:
            leaders = [s.raft for s in self.live() if s.raft.role is Role.LEADER]
            for entry in ready.committed_entries:
                if entry.index > applied:
                    self.checker.observe_applied(node_id, entry, leaders)
        for read_state in ready.read_states:
            self.checker.observe_read_state(node_id, read_state.index, read_state.context)

    def _send(self, msg: Any) -> None:
        if isinstance(msg, VoteResponse) and msg.granted and not msg.pre_vote:
            self.checker.observe_vote(msg.frm, msg.term, msg.to)
        elif isinstance(msg, AppendResponse) and not msg.reject:
            self.checker.observe_ack(msg.frm, msg.term, msg.index)
        self.network.send(self.now, msg)

    def forget_read(self, node_id: int, context: bytes) -> None:
        pending = self.nodes[node_id].reads.pop(context, None)
        if pending is not None:
            pending.abandoned = True
