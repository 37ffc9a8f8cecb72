"""Complete store nodes, the shipped code, in one deterministic trio run.

A ``SimWorld`` runs N ``SimNode``s — the production ``Node`` (host, registry, buckets,
router, mover, founding) with a ``Router`` and a ``LineServer`` in front of it — on a
``SimNetwork`` and one ``PowerLossDisk`` each. Only three things differ from a real
node: the transport (``SimTransport``), the storage (the power-loss disk instead of
SQLite under a locked directory) and the clock (``trio.testing.MockClock``: virtual
seconds, jumped whenever every task waits). The world crashes nodes (power loss:
unsynced writes are gone), restarts them, wipes their disks, pauses them and adds new
ones, and clients talk to a node's ``LineServer.execute`` as a connection would.

Determinism: trio's scheduler is made deterministic (``deterministic_trio``) and seeded,
the clock is virtual, the network and every choice draw from seeded generators, and
string hashing is fixed by the command line (``PYTHONHASHSEED``). So a seed replays the
same run, event for event.

What it must never do: give a node anything but its own disk and transport, let a
crashed incarnation keep running, or read the wall clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from boutique.config import ClusterConfig, NodeConfig, parse_config
from boutique.raft import Role
from boutique.raft.core import Raft
from boutique.runtime.founding import ClusterExistsError
from boutique.runtime.group import GroupRuntime
from boutique.runtime.node import Node
from boutique.runtime.router import Router
from boutique.runtime.transport import PeerTransport
from boutique.testing.disk import PowerLossDisk, PowerLost
from boutique.testing.invariants import InvariantChecker, InvariantViolation
from boutique_server.server import LineServer

from .network import SimNetwork, SimTransport
from .observed import ObservedStorage

SECRET = "simulated-cluster-secret-0123456789"


@contextlib.contextmanager
def deterministic_trio(seed: int) -> Iterator[None]:
    """Make trio's scheduler pick among runnable tasks by ``seed`` alone.

    trio shuffles each batch of runnable tasks; with this switch (the one trio's
    Hypothesis plugin flips) it first sorts them by creation order, then shuffles
    with its module generator, which is seeded here."""
    from trio._core import _run

    was = _run._ALLOW_DETERMINISTIC_SCHEDULING
    state = _run._r.getstate()
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(seed)
    try:
        yield
    finally:
        _run._ALLOW_DETERMINISTIC_SCHEDULING = was  # type: ignore[misc]
        _run._r.setstate(state)


def reset_process_globals() -> None:
    """Counters that live for a whole process (one per real node) start over, so two
    runs of one seed in one process send the same bytes."""
    GroupRuntime._contexts = itertools.count(1)


@contextlib.contextmanager
def quiet_logs(level: int = logging.CRITICAL) -> Iterator[None]:
    """A simulation logs thousands of expected failures; keep them out of the way."""
    logger = logging.getLogger("boutique")
    was = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(was)


def cluster_config(
    nodes: int, *, replication: int = 3, tick_interval: float = 0.05, snapshot_entries: int = 64
) -> ClusterConfig:
    """The config file of a simulated cluster, parsed by the production parser."""
    lines = [
        'cluster_name = "sim"',
        f'secret = "{SECRET}"',
        f"replication = {replication}",
        'data_dir = "/nonexistent/boutique-sim"',
        "[raft]",
        f"tick_interval = {tick_interval}",
        f"snapshot_entries = {snapshot_entries}",
        "[server]",
        "request_timeout = 2.0",
    ]
    for node in range(1, nodes + 1):
        lines += [
            "[[node]]",
            f'name = "n{node}"',
            f"id = {node}",
            'host = "10.0.0.1"',
            f"client_port = {4000 + node}",
            f"peer_port = {5000 + node}",
        ]
    return parse_config("\n".join(lines) + "\n", "<simulated cluster>")


def joining_node(node_id: int) -> NodeConfig:
    """A node that is not in the config file: it joins with ``ADMIN ADD-NODE``."""
    return NodeConfig(
        f"n{node_id}",
        node_id,
        "10.0.0.1",
        4000 + node_id,
        5000 + node_id,
        Path(f"/nonexistent/boutique-sim/n{node_id}"),
    )


@dataclass(frozen=True, slots=True)
class Knobs:
    """Tuning a run draws from its seed (FoundationDB calls this "buggify"): small
    appends, more appends in flight, frequent snapshots open windows that the
    defaults make rare."""

    max_entries_per_append: int = 256
    max_inflight_appends: int = 1
    snapshot_entries: int = 64

    @classmethod
    def draw(cls, rng: random.Random) -> Knobs:
        return cls(
            max_entries_per_append=rng.choice((1, 2, 256)),
            max_inflight_appends=rng.choice((1, 1, 4)),
            snapshot_entries=rng.choice((8, 64, 10_000)),
        )


class SimNode(Node):
    """The production ``Node`` on a simulated disk and network."""

    def __init__(
        self,
        config: ClusterConfig,
        me: NodeConfig,
        *,
        disk: PowerLossDisk,
        network: SimNetwork,
        seed: int,
        knobs: Knobs = Knobs(),
        checkers: dict[str, InvariantChecker] | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.disk = disk
        self.network = network
        self.checkers = {} if checkers is None else checkers
        """Each group's invariant checker, shared by every node of the world."""
        self.report = report or _raise
        self._paused_carry: set[str] = set()
        self._paused_building: set[str] = set()
        super().__init__(config, me, seed=seed)
        self.settings = dataclasses.replace(
            self.settings,
            max_entries_per_append=knobs.max_entries_per_append,
            max_inflight_appends=knobs.max_inflight_appends,
            snapshot_entries=knobs.snapshot_entries,
        )

    def _open_storage(self) -> ObservedStorage:  # type: ignore[override]
        return ObservedStorage(self.disk.open(), self.id, self.checkers, self._raft_of, self.report)

    def _turn(self) -> None:
        """A paused process (SIGSTOP) takes no turn: what arrives, ticks included,
        waits in the inbox until it resumes. The work carried between turns is set
        aside meanwhile, so the loop sleeps instead of spinning on it."""
        if self.id in self.network.paused:
            self._paused_carry |= self._carry
            self._paused_building |= self._building
            self._carry, self._building = set(), set()
            return
        if self._paused_carry or self._paused_building:
            self._carry |= self._paused_carry
            self._building |= self._paused_building
            self._paused_carry, self._paused_building = set(), set()
        super()._turn()

    def resume(self) -> None:
        self._wakeup.set()

    def _raft_of(self, group_id: str) -> Raft | None:
        group = self.groups.get(group_id)
        return None if group is None else group.node.raft

    def make_transport(self) -> PeerTransport:
        transport = SimTransport(
            self.network,
            self.id,
            self.deliver_frame,
            on_suspect=self.on_suspect,
            on_link_lost=self.on_link_lost,
            on_removed=self.learn_removed,
        )
        transport.set_peers(self.peers)
        return transport.as_peer_transport()


def _raise(violation: str) -> None:
    raise InvariantViolation(violation)


class ProcessGone(Exception):
    """The node a client talked to crashed, was wiped or stopped: its connection broke."""


@dataclass
class NodeProcess:
    """One node id's life in the world: its disk survives its incarnations."""

    me: NodeConfig
    disk: PowerLossDisk = field(default_factory=PowerLossDisk)
    node: SimNode | None = None
    server: LineServer | None = None
    incarnation: int = 0
    scope: trio.CancelScope | None = None
    nursery: trio.Nursery | None = None
    removed: bool = False
    """The cluster removed this node and it stopped (it is never started again)."""
    refused: bool = False
    """It would not start: its disk was wiped in a cluster that knew it."""
    failure: BaseException | None = None
    """An unexpected exception that ended an incarnation (a bug, reported by the run)."""

    @property
    def id(self) -> int:
        return self.me.id

    @property
    def up(self) -> bool:
        return self.server is not None


class SimWorld:
    """The nodes, their network and disks, and the operations a nemesis performs."""

    def __init__(
        self,
        config: ClusterConfig,
        rng: random.Random,
        *,
        nursery: trio.Nursery,
        knobs: Knobs = Knobs(),
    ) -> None:
        self.config = config
        self.knobs = knobs
        self.rng = rng
        self.network = SimNetwork(random.Random(rng.getrandbits(64)))
        self.nursery = nursery
        self.processes: dict[int, NodeProcess] = {
            node.id: NodeProcess(node) for node in config.nodes
        }
        self.events: list[str] = []
        """What happened, with virtual times: printed for a failing seed."""
        self.checkers: dict[str, InvariantChecker] = {}
        self.violations: list[str] = []
        """Invariants broken at a node's write (see ``observed``)."""

    def note(self, text: str) -> None:
        self.events.append(f"{trio.current_time():8.3f} {text}")

    # --- Lifecycle ----------------------------------------------------------------------

    async def start(self, node_id: int) -> None:
        process = self.processes[node_id]
        if process.up or process.removed or process.refused:
            return
        process.incarnation += 1
        seed = self.rng.getrandbits(64)
        await self.nursery.start(self._run, process, seed)
        self.note(f"n{node_id} started (incarnation {process.incarnation})")

    async def _run(
        self, process: NodeProcess, seed: int, *, task_status: trio.TaskStatus[None]
    ) -> None:
        node = SimNode(
            self.config,
            process.me,
            disk=process.disk,
            network=self.network,
            seed=seed,
            knobs=self.knobs,
            checkers=self.checkers,
            report=self.violations.append,
        )
        started = False
        try:
            with trio.CancelScope() as scope:
                process.scope = scope
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    process.node = node
                    process.nursery = nursery
                    process.server = LineServer(self.config, process.me, node, Router(node))
                    # What ``LineServer.serve`` starts besides its listeners: the task
                    # that answers what the host loop settled.
                    nursery.start_soon(process.server.answer_settled)
                    started = True
                    task_status.started()
                    await node.removed.wait()
                    process.removed = True
                    process.server = process.nursery = None  # no new connections
                    self.note(f"n{process.id} was removed from the cluster: it stops")
                    nursery.cancel_scope.cancel()
        except BaseException as exc:  # recorded by _ended; this incarnation is over
            self._ended(process, exc)
        finally:
            if process.node is node:
                process.node = process.server = process.scope = process.nursery = None
            if not started:
                task_status.started()

    def _ended(self, process: NodeProcess, exc: BaseException) -> None:
        """Sort out why an incarnation ended: the power (expected), a refusal to start
        (``ClusterExistsError`` after a wipe: expected, the node stays down), or a bug."""
        group = exc if isinstance(exc, BaseExceptionGroup) else BaseExceptionGroup("", [exc])
        expected: tuple[type[BaseException], ...] = (PowerLost, trio.Cancelled)
        refused = group.subgroup(lambda e: isinstance(e, ClusterExistsError))
        if refused is not None:
            process.refused = True
            self.note(f"n{process.id} refused to start: {describe_failure(refused)}")
            expected = (*expected, ClusterExistsError)
        # A group is never "expected" itself: only its leaves are judged.
        rest = group.subgroup(lambda e: not isinstance(e, (BaseExceptionGroup, *expected)))
        if rest is not None:
            process.failure = rest
            self.note(f"n{process.id} failed: {describe_failure(rest)}")

    def crash(self, node_id: int, *, torn: bool = False) -> None:
        """Power loss: what the node did not sync is gone (torn: a prefix of it stays)."""
        process = self.processes[node_id]
        if not process.up or process.scope is None:
            return
        tear = random.Random(self.rng.getrandbits(64)) if torn else None
        process.disk.crash(tear)
        process.scope.cancel()
        process.node = process.server = process.scope = process.nursery = None
        self.network.crashed(node_id)
        self.note(f"n{node_id} crashed{' (torn write)' if torn else ''}")

    def wipe(self, node_id: int) -> None:
        """The node's disk is replaced by an empty one (it must not vote as before)."""
        self.crash(node_id)
        self.processes[node_id].disk = PowerLossDisk()
        self.note(f"n{node_id} lost its disk")

    def pause(self, node_id: int) -> None:
        if self.processes[node_id].up:
            self.network.pause(node_id)
            self.note(f"n{node_id} paused")

    def resume(self, node_id: int) -> None:
        self.network.resume(node_id)
        node = self.processes[node_id].node
        if node is not None:
            node.resume()
        self.note(f"n{node_id} resumed")

    def heal(self) -> None:
        """Every link works again and every paused node resumes."""
        for node_id in sorted(self.network.paused):
            self.resume(node_id)
        self.network.heal()

    def add_node(self, node_id: int) -> NodeProcess:
        process = self.processes[node_id] = NodeProcess(joining_node(node_id))
        return process

    def up_nodes(self) -> list[int]:
        return [p.id for p in self.processes.values() if p.up and p.id not in self.network.paused]


def leader_of(world: SimWorld, group_id: str) -> int | None:
    """The node that leads ``group_id`` in the highest term, if any runs."""
    best: tuple[int, int] | None = None
    for process in world.processes.values():
        node = process.node
        if node is None:
            continue
        group = node.groups.get(group_id)
        if group is not None and group.node.raft.role is Role.LEADER:
            term = group.node.raft.term
            if best is None or term > best[0]:
                best = (term, process.id)
    return None if best is None else best[1]


def describe_failure(exc: BaseException) -> str:
    lines: list[str] = []
    for line in _flatten(exc):
        lines.append(line)
    return "; ".join(lines)


def _flatten(exc: BaseException) -> Iterator[str]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _flatten(inner)
    else:
        yield f"{type(exc).__name__}: {exc}"


__all__ = [
    "NodeProcess",
    "ProcessGone",
    "SimNode",
    "SimWorld",
    "cluster_config",
    "deterministic_trio",
    "joining_node",
    "quiet_logs",
]
