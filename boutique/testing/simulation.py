"""Seeded simulation runs: a scenario of faults, a client workload, and every check.

``run_simulation(seed, scenario)`` builds a ``SimCluster``, lets clients work while a
nemesis injects the scenario's faults, then heals everything and demands liveness: a
leader emerges and a fresh write commits on every live voter within a bounded number of
steps. Safety invariants are checked at every step; the client history is checked for
linearizability at the end. The same seed and scenario replay the same run exactly:
``python -m boutique.testing --seed S --scenario NAME``.

Most faults are single steps (a crash, a cut, a transfer) undone later; the faults in
``PATTERNS`` are multi-step sequences from ``patterns``, each run alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from boutique.raft import (
    InvalidConfChangeError,
    NotLeaderError,
    RawNode,
    Role,
)
from boutique.raft.core import Raft

from .cluster import SimCluster, SimOptions
from .invariants import InvariantViolation
from .linearizability import CheckResult, check_kv_history
from .network import LinkFaults
from .patterns import Figure8, MembershipFailover, Pattern, Usurp, propose_membership_change
from .workload import Clients

FAULTS = (
    "crash",
    "crash_leader",
    "crash_all",
    "partition",
    "isolate_leader",
    "one_way",
    "lossy_links",
    "transfer",
    "membership",
    "short_reign",
    "usurp",
    "membership_failover",
    "figure8",
)

CHAOS_FAULTS = FAULTS[: FAULTS.index("short_reign") + 1]
"""Chaos keeps the single-step faults, so its regression seeds replay as they did."""

PATTERNS: dict[str, type[Pattern]] = {
    "usurp": Usurp,
    "membership_failover": MembershipFailover,
    "figure8": Figure8,
}
"""Faults that are multi-step sequences (see ``patterns``); one runs at a time, and no
other fault starts meanwhile."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A mix of faults and the cluster shape they run against."""

    name: str
    faults: tuple[str, ...]
    options: SimOptions = field(default_factory=SimOptions)
    links: LinkFaults = field(default_factory=LinkFaults)
    fault_rate: float = 0.03
    """Chance per step that the nemesis starts a new fault."""
    steps: int = 500
    """Steps with faults before the heal."""
    bursty_clients: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("calm", (), links=LinkFaults(drop=0.01, max_delay=2), steps=300),
        Scenario(
            "lossy",
            ("lossy_links",),
            links=LinkFaults(drop=0.1, duplicate=0.05, max_delay=4),
        ),
        Scenario("partitions", ("partition", "isolate_leader", "one_way", "usurp")),
        Scenario(
            "crashes",
            ("crash", "crash_leader", "crash_all"),
            options=SimOptions(mid_ready_crash=0.002),
        ),
        Scenario(
            "snapshots",
            ("crash", "partition", "isolate_leader"),
            options=SimOptions(snapshot_every=12, snapshot_chunk_size=24),
        ),
        Scenario(
            # Without pre-vote, and with slow links, candidates often run in the same
            # term: a voter that forgets its vote across a crash would vote twice.
            "split_votes",
            ("crash", "crash_leader", "crash_all"),
            options=SimOptions(pool=5, voters=5, pre_vote=False, mid_ready_crash=0.003),
            links=LinkFaults(drop=0.02, min_delay=1, max_delay=6),
            fault_rate=0.05,
        ),
        Scenario(
            # Idle groups go quiet between bursts of work; crashes and cuts of a quiet
            # leader must be noticed by suspicion, and every request must wake them.
            "quiet",
            ("crash", "crash_leader", "isolate_leader", "partition", "transfer"),
            # Shaped like the runtime's bucket groups: one append in flight per
            # follower, and commits announced only by the next append or heartbeat.
            options=SimOptions(
                quiesce=True, snapshot_every=30, max_inflight_msgs=1, announce_commit=False
            ),
            fault_rate=0.02,
            steps=900,
            bursty_clients=True,
        ),
        Scenario("transfers", ("transfer", "crash", "lossy_links")),
        Scenario(
            "membership",
            ("membership", "crash", "partition", "membership_failover"),
            options=SimOptions(pool=5, voters=3, snapshot_every=25),
            fault_rate=0.05,
        ),
        Scenario(
            "uneven_clocks",
            ("partition", "crash_leader", "transfer"),
            options=SimOptions(varied_tick_rates=True),
        ),
        Scenario(
            # Figure 8 of the paper: leaders come and go while entries trickle one per
            # message, so an old-term entry can sit on a majority without a newer one.
            "figure8",
            ("short_reign", "isolate_leader", "partition", "crash", "figure8"),
            options=SimOptions(pool=5, voters=5, max_entries_per_msg=1, max_inflight_msgs=1),
            links=LinkFaults(drop=0.05, max_delay=4),
            fault_rate=0.08,
        ),
        Scenario(
            "chaos",
            CHAOS_FAULTS,
            options=SimOptions(
                pool=5,
                voters=5,
                snapshot_every=20,
                varied_tick_rates=True,
                mid_ready_crash=0.001,
                announce_commit=False,
            ),
            links=LinkFaults(drop=0.03, duplicate=0.03, max_delay=3),
            fault_rate=0.04,
        ),
    )
}


class LivenessFailure(AssertionError):
    """After every fault healed, the cluster did not make progress in time."""


@dataclass(slots=True)
class SimResult:
    seed: int
    scenario: str
    steps: int
    operations: int
    ok: int
    failed: int
    unknown: int
    faults: dict[str, int]
    linearizability: CheckResult
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.linearizability.linearizable

    def replay_command(self, variant: str | None = None) -> str:
        extra = f" --variant {variant}" if variant else ""
        return f"python -m boutique.testing --core --seed {self.seed} --scenario {self.scenario}{extra}"

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        line = (
            f"{verdict} seed={self.seed} scenario={self.scenario} steps={self.steps} "
            f"ops={self.operations} ok={self.ok} fail={self.failed} unknown={self.unknown} "
            f"faults: {faults}"
        )
        if self.error:
            line += f"\n  error: {self.error}"
        if not self.linearizability.linearizable:
            line += "\n" + self.linearizability.explain()
        return line


class Nemesis:
    """Starts faults at random and undoes the temporary ones after a while."""

    def __init__(self, cluster: SimCluster, scenario: Scenario, rng: random.Random) -> None:
        self.cluster = cluster
        self.scenario = scenario
        self.rng = rng
        self.undo: list[tuple[int, str, Any]] = []
        self.counts: dict[str, int] = {}
        self.short_reigns = 0
        self.last_leader: tuple[int, int] | None = None
        self.pattern: Pattern | None = None
        self.queued: str | None = None

    def step(self) -> None:
        now = self.cluster.now
        for item in [u for u in self.undo if u[0] <= now]:
            self.undo.remove(item)
            self._undo(item[1], item[2])
        if self.short_reigns:
            self._cut_reign_short()
        if self.queued is not None:
            # A pattern runs alone: it waits until every earlier fault was undone.
            if self.undo or self.short_reigns:
                return
            fault, self.queued = self.queued, None
            if self._start(fault):
                self.counts[fault] = self.counts.get(fault, 0) + 1
        if self.pattern is not None:
            self.pattern.step()
            if not self.pattern.done:
                return
            self.pattern = None
        if self.scenario.faults and self.rng.random() < self.scenario.fault_rate:
            fault = self.rng.choice(self.scenario.faults)
            if fault in PATTERNS:
                self.queued = fault
            elif self._start(fault):
                self.counts[fault] = self.counts.get(fault, 0) + 1

    def _cut_reign_short(self) -> None:
        """Crash the next new leader a few steps into its term, while what it inherited
        from earlier terms may still be half-replicated (Figure 8 of the paper)."""
        leader = self.cluster.leader()
        if leader is None:
            return
        reign = (leader.id, leader.raft.term)
        if reign != self.last_leader:
            self.last_leader = reign
            self.short_reigns -= 1
            self._later(1, 6, "crash", leader.id)

    def heal(self) -> None:
        self.short_reigns = 0
        self.queued = None
        if self.pattern is not None:
            self.pattern.stop()
            self.pattern = None
        for _, kind, arg in list(self.undo):
            if kind != "crash":
                self._undo(kind, arg)
        self.undo.clear()
        self.cluster.network.heal()
        self.cluster.network.faults = LinkFaults()
        self.cluster.mid_ready_crash = 0.0
        for node_id in self.cluster.nodes:
            self.cluster.restart(node_id)

    def _later(self, low: int, high: int, kind: str, arg: Any = None) -> None:
        self.undo.append((self.cluster.now + self.rng.randint(low, high), kind, arg))

    def _undo(self, kind: str, arg: Any) -> None:
        if kind == "crash":
            self.cluster.crash(arg)
            self._later(3, 30, "restart", [arg])
        elif kind == "restart":
            for node_id in arg:
                self.cluster.restart(node_id)
        elif kind == "heal":
            self.cluster.network.heal()
        elif kind == "links":
            self.cluster.network.faults = arg

    def _start(self, fault: str) -> bool:
        cluster = self.cluster
        ids = sorted(cluster.nodes)
        leader = cluster.leader()
        if fault == "crash":
            victim = self.rng.choice(ids)
            cluster.crash(victim)
            self._later(5, 60, "restart", [victim])
        elif fault == "crash_leader":
            if leader is None:
                return False
            cluster.crash(leader.id)
            self._later(5, 60, "restart", [leader.id])
        elif fault == "crash_all":
            for node_id in ids:
                cluster.crash(node_id)
            self._later(1, 30, "restart", ids)
        elif fault == "partition":
            if cluster.network.has_cuts:
                return False
            shuffled = ids[:]
            self.rng.shuffle(shuffled)
            cut = self.rng.randint(1, len(ids) - 1)
            cluster.network.partition(set(shuffled[:cut]), set(shuffled[cut:]))
            self._later(20, 120, "heal")
        elif fault == "isolate_leader":
            if leader is None or cluster.network.has_cuts:
                return False
            cluster.network.isolate(leader.id, set(ids))
            self._later(20, 120, "heal")
        elif fault == "one_way":
            if cluster.network.has_cuts:
                return False
            frm, to = self.rng.sample(ids, 2)
            cluster.network.cut(frm, to)
            self._later(20, 120, "heal")
        elif fault == "lossy_links":
            previous = cluster.network.faults
            cluster.network.faults = LinkFaults(
                drop=self.rng.choice((0.2, 0.4)),
                duplicate=0.1,
                max_delay=self.rng.choice((3, 6, 10)),
            )
            self._later(20, 80, "links", previous)
        elif fault == "transfer":
            if leader is None:
                return False
            target = self.rng.choice(sorted(leader.raft.conf.voters))
            try:
                leader.raft_node().transfer_leader(target)
            except (InvalidConfChangeError, NotLeaderError):
                return False
        elif fault == "short_reign":
            self.short_reigns += self.rng.randint(1, 4)
        elif fault == "membership":
            return leader is not None and propose_membership_change(leader, ids, self.rng)
        elif fault in PATTERNS:
            pattern = PATTERNS[fault](cluster, random.Random(self.rng.getrandbits(64)))
            if not pattern.start():
                return False
            self.pattern = pattern
        else:
            raise ValueError(f"unknown fault {fault!r}")
        return True


def run_simulation(
    seed: int,
    scenario: str | Scenario,
    *,
    node_class: type[RawNode] = RawNode,
    raft_class: type[Raft] = Raft,
    liveness_steps: int = 600,
) -> SimResult:
    """Run one seeded scenario to the end and report; never raises for a finding."""
    spec = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    rng = random.Random(f"{spec.name}:{seed}")
    cluster = SimCluster(
        rng.getrandbits(64), spec.options, node_class=node_class, raft_class=raft_class
    )
    cluster.network.faults = spec.links
    clients = Clients(cluster, random.Random(rng.getrandbits(64)), bursty=spec.bursty_clients)
    nemesis = Nemesis(cluster, spec, random.Random(rng.getrandbits(64)))
    error: str | None = None
    try:
        for _ in range(spec.steps):
            nemesis.step()
            clients.step()
            cluster.step()
        nemesis.heal()
        _demand_liveness(cluster, clients, liveness_steps)
    except (InvariantViolation, LivenessFailure) as exc:
        error = f"{type(exc).__name__} at step {cluster.now}: {exc}"
    ops = clients.history.operations()
    check = check_kv_history(ops)
    return SimResult(
        seed=seed,
        scenario=spec.name,
        steps=cluster.now,
        operations=len(ops),
        ok=sum(1 for op in ops if op.outcome is not None and op.outcome.name == "OK"),
        failed=sum(1 for op in ops if op.outcome is not None and op.outcome.name == "FAIL"),
        unknown=sum(1 for op in ops if op.outcome is not None and op.outcome.name == "UNKNOWN"),
        faults=dict(nemesis.counts),
        linearizability=check,
        error=error,
    )


def _demand_liveness(cluster: SimCluster, clients: Clients, budget: int) -> None:
    """With every fault healed, a leader must emerge and a probe write must commit on
    every live voter, and every client operation must resolve, within ``budget`` steps."""
    deadline = cluster.now + budget
    probe_index: int | None = None
    probe_sent = cluster.now
    patience = 5 * cluster.options.election_tick
    probe_done: list[str] = []
    probe_generation = 0

    def probe_callback_for(generation: int) -> Callable[[str, Any], None]:
        def probe_callback(status: str, detail: Any) -> None:
            # A probe given up on (stale) may still be answered later: only the
            # current probe's answer counts.
            if generation == probe_generation:
                probe_done.append(status)

        return probe_callback

    while cluster.now < deadline:
        clients.step()
        cluster.step()
        leader = cluster.leader()
        if leader is None:
            continue
        stale = probe_index is not None and not probe_done and cluster.now > probe_sent + patience
        if probe_index is None or stale or (probe_done and probe_done[-1] != "ok"):
            # A probe sent to a leader that was then deposed (or removed) may never
            # be answered there; send a fresh one to whoever leads now.
            probe_done.clear()
            probe_generation += 1
            probe_index = leader.raft.log.last_index() + 1
            probe_sent = cluster.now
            cluster.submit_write(
                leader.id,
                ("put", "probe", str(cluster.now)),
                probe_callback_for(probe_generation),
            )
            continue
        voters = leader.raft.conf.voters
        if probe_done == ["ok"] and all(
            cluster.nodes[v].up and cluster.nodes[v].host.applied_index >= probe_index
            for v in voters
        ):
            clients.enabled = False
            if clients.idle():
                return
    states = ", ".join(
        f"{sim.id}:{sim.raft.role.value}/t{sim.raft.term}/c{sim.raft.log.committed}"
        for sim in cluster.live()
    )
    raise LivenessFailure(
        f"no progress {budget} steps after healing (probe at {probe_index}: {probe_done}); "
        f"nodes {states}"
    )


__all__ = ["SCENARIOS", "LivenessFailure", "Role", "Scenario", "SimResult", "run_simulation"]
