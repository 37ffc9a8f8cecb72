"""One seeded run of whole store nodes: workload, nemesis, heal, and every check.

``run_seed(seed, scenario)`` starts a cluster of complete nodes (``world``), creates
buckets, lets clients work through random nodes while the scenario's nemesis crashes,
restarts, wipes, pauses and cuts nodes and runs admin operations, then heals everything
and checks:

* Raft's promises at every frame (``PromiseChecker``: no vote or acknowledgement leaves
  before it is synced; at most one leader per term per group);
* committed entries agree: no two nodes ever hold different entries at an index they
  both consider committed (checked every ``AGREEMENT_EVERY`` virtual seconds);
* liveness after the heal: every bucket takes a write and a read, and a new bucket can
  be created, within ``LIVENESS_TIMEOUT``;
* the registry agrees on every node after the heal, and every node hosts exactly the
  bucket groups its registry places on it (and quarantined none);
* the client history is linearizable (``check_kv_history``) and no acknowledged write
  is lost (``lost_acknowledged_writes``);
* no node failed with an unexpected exception, and no well-formed command got an
  answer the wire contract does not allow.

The same seed and scenario replay the same run: the result's ``digest`` covers every
frame sent (time, endpoints, bytes) and every nemesis step.

What it must never do: read the wall clock or an unseeded generator, or pass a run
whose history was not checked.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import traceback
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import trio
import trio.testing

from boutique.raft import Role
from boutique.registry import RegistryState
from boutique.runtime.node import META_GROUP
from boutique.testing.disk import PowerLossDisk
from boutique.testing.durability import PromiseChecker
from boutique.testing.history import CREATE, DELETE, DROP, GET, PUT, History
from boutique.testing.jepsen import FINAL_CLIENT, bucket_of, history_key, lost_acknowledged_writes
from boutique.testing.linearizability import check_kv_history
from boutique.wire import request_line

from . import nemesis
from .batches import BatchCount, counting_batches
from .clients import Recorder, Request, SimConnection
from .nemesis import Nemesis
from .world import (
    Knobs,
    ProcessGone,
    SimWorld,
    cluster_config,
    deterministic_trio,
    quiet_logs,
    reset_process_globals,
)

KEYS = ("k0", "k1", "k2", "k3")
BUCKETS = ("apple", "mango")
"""Created before the clients start, never dropped (ranges a-g and h-n)."""
CHURN_BUCKET = "pears"
"""Dropped and created again by the churn client (range o-u)."""
OP_TIMEOUT = 3.0
PIPELINE_DEPTH = 6
"""A pipelining client keeps 2 to this many requests in flight on its connection."""
PIPELINE_SHARE = 0.5
"""Share of a pipelining client's rounds that are pipelines (the rest: one request)."""
PIPELINE_CLIENT = 100
"""Slot ``s`` > 0 of client ``c``'s pipelines is logical client ``PIPELINE_CLIENT *
(c + 1) + s`` of the history (slot 0 is ``c`` itself): each slot's operations follow
one another, as one client's do."""
AGREEMENT_EVERY = 0.05
LIVENESS_TIMEOUT = 30.0
SETTLE_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """A kind of run: how many nodes, which faults, how long."""

    name: str
    nodes: int = 3
    faults: tuple[str, ...] = ()
    duration: float = 5.0
    """Virtual seconds of client work (and faults)."""
    clients: int = 3
    churn: bool = False
    """A client drops and re-creates ``CHURN_BUCKET`` throughout."""
    replication: int = 3


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("calm"),
        Scenario("crashes", faults=("crash", "crash", "crash_torn", "crash_leader", "crash_all")),
        Scenario(
            "partitions",
            faults=("partition", "one_way", "isolate_leader", "lossy", "pause"),
        ),
        Scenario("churn", faults=("crash", "isolate_leader", "partition"), churn=True),
        Scenario("admin", nodes=5, faults=("transfer", "move", "split", "crash", "partition")),
        Scenario("members", nodes=4, faults=("add_node", "remove_node", "crash", "transfer")),
        Scenario("wipe", faults=("wipe", "crash", "partition")),
        Scenario(
            "leaders",
            nodes=5,
            replication=5,
            faults=("crash_leader", "isolate_leader", "one_way", "crash", "partition"),
        ),
        Scenario(
            "mix",
            nodes=5,
            faults=(
                "crash",
                "crash_torn",
                "crash_leader",
                "partition",
                "one_way",
                "isolate_leader",
                "lossy",
                "pause",
                "transfer",
                "move",
                "split",
            ),
            churn=True,
        ),
    )
}


def scenario_for(seed: int) -> str:
    """The scenario a seed of the mixed sweep runs."""
    names = sorted(SCENARIOS)
    return names[seed % len(names)]


@dataclass
class RunResult:
    seed: int
    scenario: str
    plant: str | None
    violations: list[str] = field(default_factory=list)
    operations: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    digest: str = ""
    virtual_seconds: float = 0.0
    replay: str | None = None
    """The replay command when it is not the whole-cluster one (a core run)."""
    batches: BatchCount = field(default_factory=BatchCount)
    """Batch entries applied (on every replica), and the commands in them."""

    @property
    def passed(self) -> bool:
        return not self.violations

    def replay_command(self) -> str:
        if self.replay is not None:
            return self.replay
        plant = f" --plant {self.plant}" if self.plant else ""
        return (
            f"PYTHONHASHSEED=0 python -m boutique.testing --seed {self.seed} "
            f"--scenario {self.scenario}{plant}"
        )

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        head = (
            f"seed {self.seed} {self.scenario}: {verdict} ({self.operations} operations, "
            f"{self.batches.entries} batch entries applied with {self.batches.commands} "
            f"commands, {self.virtual_seconds:.1f} virtual s, digest {self.digest[:12]})"
        )
        return "\n".join([head, *(f"  {v}" for v in self.violations[:5])])


class _Disks(Mapping[int, PowerLossDisk]):
    """Each node's current disk (a wipe replaces it), for the promise checker."""

    def __init__(self, world: SimWorld) -> None:
        self.world = world

    def __getitem__(self, node: int) -> PowerLossDisk:
        return self.world.processes[node].disk

    def __iter__(self) -> Iterator[int]:
        return iter(self.world.processes)

    def __len__(self) -> int:
        return len(self.world.processes)


def run_seed(seed: int, scenario: str, *, plant: str | None = None) -> RunResult:
    """Run one seed of ``scenario`` (optionally with a planted bug) and check it."""
    from .plants import planted

    result = RunResult(seed, scenario, plant)
    reset_process_globals()
    with deterministic_trio(seed), quiet_logs(), planted(plant), counting_batches() as batches:
        result.batches = batches
        try:
            trio.run(
                _Run(seed, SCENARIOS[scenario], result).main,
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
        except Exception as exc:  # the harness itself broke: a failing seed all the same
            trace = traceback.format_exception(exc)
            result.violations.append(f"the simulation itself failed: {exc!r}")
            result.events.extend(line.rstrip() for line in trace[-8:])
    return result


class _Run:
    def __init__(self, seed: int, scenario: Scenario, result: RunResult) -> None:
        self.seed = seed
        self.scenario = scenario
        self.result = result
        self.rng = random.Random(f"whole/{seed}/{scenario.name}")
        self.history = History()
        self.recorder = Recorder(self.history, trio.current_time, OP_TIMEOUT)
        self.committed: dict[tuple[str, int], tuple[int, int]] = {}
        self.checked_to: dict[tuple[int, str], int] = {}
        self.leaders_seen: set[tuple[str, int, int]] = set()
        self.digest = hashlib.sha256()

    def violation(self, text: str) -> None:
        if text not in self.result.violations:
            self.result.violations.append(text)

    async def main(self) -> None:
        config = cluster_config(self.scenario.nodes, replication=self.scenario.replication)
        knobs = Knobs.draw(self.rng)
        async with trio.open_nursery() as nursery:
            self.world = world = SimWorld(config, self.rng, nursery=nursery, knobs=knobs)
            world.note(f"{knobs}")
            self.nemesis = Nemesis(
                world,
                random.Random(self.rng.getrandbits(64)),
                self.scenario.faults,
                BUCKETS,
                self.violation,
                next_node=self.scenario.nodes + 1,
            )
            self.promises = PromiseChecker(_Disks(world))
            world.network.on_send.append(self.promises.on_send)
            world.network.on_send.append(self._digest_frame)
            for node in config.nodes:
                await world.start(node.id)
            nursery.start_soon(self._check_agreement_forever)
            try:
                await self._scenario()
            finally:
                self.result.virtual_seconds = trio.current_time()
                nursery.cancel_scope.cancel()
        self._final_checks()

    def _digest_frame(self, sender: int, receiver: int, payload: object) -> None:
        self.digest.update(f"{trio.current_time():.9f} {sender}>{receiver} {payload!r}\n".encode())

    # --- The run ------------------------------------------------------------------------

    async def _scenario(self) -> None:
        world = self.world
        for bucket in (*BUCKETS, CHURN_BUCKET):
            if not await self._until_ok(CREATE, bucket, request_line(b"CREATE", bucket.encode())):
                self.violation(f"setup: CREATE {bucket} never succeeded on a calm cluster")
                return
        until = trio.current_time() + self.scenario.duration
        pipelined = self._pipelined_clients()
        world.note(f"pipelining clients: {sorted(pipelined)}")
        async with trio.open_nursery() as work:
            for client in range(self.scenario.clients):
                work.start_soon(self._client, client, until, client in pipelined)
            if self.scenario.churn:
                work.start_soon(self._churn, until)
            if self.scenario.faults:
                work.start_soon(self._nemesis, until)
        await self._heal()
        if await self._liveness():
            await self._settle_and_compare()
            await self._final_reads()
        for process in world.processes.values():
            if process.failure is not None:
                self.violation(f"n{process.id} failed: {process.failure!r}")

    async def _until_ok(
        self, kind: str, key: str, line: bytes, within: float = 30.0, value: str | None = None
    ) -> bool:
        """Repeat a bucket operation through random nodes until it answers OK."""
        deadline = trio.current_time() + within
        while trio.current_time() < deadline:
            up = self.world.up_nodes()
            if up:
                try:
                    conn = SimConnection(self.world, self.rng.choice(up))
                except ProcessGone:
                    continue
                op, _ = await self.recorder.record(conn, FINAL_CLIENT - 1, kind, key, value, line)
                await conn.aclose()
                if op.outcome is not None and op.outcome.value == "ok":
                    return True
            await trio.sleep(0.2)
        return False

    def _connect(self) -> SimConnection | None:
        up = self.world.up_nodes()
        if not up:
            return None
        try:
            return SimConnection(self.world, self.rng.choice(up))
        except ProcessGone:
            return None

    def _pipelined_clients(self) -> set[int]:
        """Which clients pipeline in this run: at least one, and never all (so every
        run has clients of both kinds). Drawn from a generator of their own, so the
        rest of the run draws what it drew before pipelining existed."""
        clients = self.scenario.clients
        if clients < 2:
            return set()
        rng = random.Random(f"pipelined/{self.seed}/{self.scenario.name}")
        return set(rng.sample(range(clients), rng.randint(1, clients - 1)))

    async def _client(self, client: int, until: float, pipelines: bool = False) -> None:
        """One client: one request at a time, or with ``pipelines``, a pipeline of
        requests in ``PIPELINE_SHARE`` of its rounds."""
        rng = random.Random(self.rng.getrandbits(64))
        conn: SimConnection | None = None
        writes = itertools.count(1)
        while trio.current_time() < until:
            if conn is None or conn.closed or rng.random() < 0.1:
                if conn is not None:
                    await conn.aclose()
                conn = self._connect()
                if conn is None:
                    await trio.sleep(0.1)
                    continue
            if pipelines and rng.random() < PIPELINE_SHARE:
                requests = self._pipeline(client, rng, writes)
                keep = (await self.recorder.record_pipeline(conn, requests))[1]
            else:
                keep = await self._request(conn, client, rng, writes)
            if not keep:
                conn = None
            await trio.sleep(rng.uniform(0, 0.05))
        if conn is not None:
            await conn.aclose()

    async def _request(
        self, conn: SimConnection, client: int, rng: random.Random, writes: Iterator[int]
    ) -> bool:
        """One request of a client, alone on its connection; whether the connection
        may be used again."""
        bucket = rng.choice(self._buckets())
        key = rng.choice(KEYS)
        hkey = history_key(bucket, key)
        roll = rng.random()
        if 0.35 <= roll < 0.42:
            return await self.recorder.scan(
                conn,
                client,
                [history_key(bucket, k) for k in KEYS],
                request_line(b"SCAN", bucket.encode(), b"", b""),
            )
        value = None
        if roll < 0.35:
            kind, line = GET, request_line(b"GET", bucket.encode(), key.encode())
        elif roll < 0.5:
            kind, line = DELETE, request_line(b"DELETE", bucket.encode(), key.encode())
        else:
            value = f"{client}.{next(writes)}"
            kind = PUT
            line = request_line(b"PUT", bucket.encode(), key.encode(), value.encode())
        return (await self.recorder.record(conn, client, kind, hkey, value, line))[1]

    def _buckets(self) -> tuple[str, ...]:
        return (*BUCKETS, CHURN_BUCKET) if self.scenario.churn else BUCKETS

    def _pipeline(self, client: int, rng: random.Random, writes: Iterator[int]) -> list[Request]:
        """2 to ``PIPELINE_DEPTH`` requests, mostly writes to one bucket, so its leader
        gets several writes in one turn (one batch entry). A read goes last or in the
        middle: the server makes it wait for the writes before it on the connection."""
        bucket = rng.choice(self._buckets())
        requests = []
        for slot in range(rng.randint(2, PIPELINE_DEPTH)):
            logical = client if slot == 0 else PIPELINE_CLIENT * (client + 1) + slot
            target = bucket if rng.random() < 0.9 else rng.choice(self._buckets())
            key = rng.choice(KEYS)
            hkey = history_key(target, key)
            roll = rng.random()
            if roll < 0.15:
                line = request_line(b"GET", target.encode(), key.encode())
                requests.append(Request(logical, GET, hkey, None, line))
            elif roll < 0.25:
                line = request_line(b"DELETE", target.encode(), key.encode())
                requests.append(Request(logical, DELETE, hkey, None, line))
            else:
                value = f"{client}.{next(writes)}"
                line = request_line(b"PUT", target.encode(), key.encode(), value.encode())
                requests.append(Request(logical, PUT, hkey, value, line))
        return requests

    async def _churn(self, until: float) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        exists = True
        while trio.current_time() < until:
            await trio.sleep(rng.uniform(0.3, 1.0))
            conn = self._connect()
            if conn is None:
                continue
            kind = DROP if exists else CREATE
            op, _ = await self.recorder.record(
                conn,
                FINAL_CLIENT - 2,
                kind,
                CHURN_BUCKET,
                None,
                request_line(kind.upper().encode(), CHURN_BUCKET.encode()),
            )
            await conn.aclose()
            if op.outcome is not None and op.outcome.value == "ok":
                exists = not exists

    # --- The nemesis --------------------------------------------------------------------

    async def _nemesis(self, until: float) -> None:
        await nemesis.run(self.nemesis, until)

    async def _heal(self) -> None:
        world = self.world
        world.heal()
        world.note("healed the network")
        for process in list(world.processes.values()):
            if not process.up and not process.removed and process.id not in self.nemesis.wiped:
                await world.start(process.id)

    # --- Checks -------------------------------------------------------------------------

    async def _check_agreement_forever(self) -> None:
        while True:
            await trio.sleep(AGREEMENT_EVERY)
            self._check_agreement()

    def _check_agreement(self) -> None:
        """Entries at or below a node's persisted commit index are committed: two nodes
        must never hold different ones at the same index (state machine safety)."""
        for process in self.world.processes.values():
            if not process.up:
                continue
            for group_id in process.disk.synced_groups():
                storage = process.disk.written(group_id)
                if storage is None:
                    continue
                commit = min(storage.hard_state.commit, storage.last_index())
                start = max(
                    self.checked_to.get((process.id, group_id), 0), storage.first_index() - 1
                )
                for index in range(start + 1, commit + 1):
                    entry = storage.entries(index, index + 1)[0]
                    seen = (entry.term, zlib.crc32(entry.data))
                    first = self.committed.setdefault((group_id, index), seen)
                    if first != seen:
                        self.violation(
                            f"state machine safety: group {group_id} index {index} is committed "
                            f"as term {first[0]} somewhere and as term {entry.term} on n{process.id}"
                        )
                self.checked_to[(process.id, group_id)] = max(start, commit)
            self._check_new_leaders(process.id)

    def _check_new_leaders(self, node_id: int) -> None:
        """Leader completeness: a node that became leader holds every entry known to
        be committed (checked once per group, node and term)."""
        node = self.world.processes[node_id].node
        if node is None:
            return
        for group_id, group in node.groups.items():
            raft = group.node.raft
            if raft.role is not Role.LEADER or (group_id, node_id, raft.term) in self.leaders_seen:
                continue
            self.leaders_seen.add((group_id, node_id, raft.term))
            log = raft.log
            for (committed_group, index), (term, _) in self.committed.items():
                if committed_group != group_id or index < log.first_index():
                    continue
                if log.term_or_none(index) != term:
                    self.violation(
                        f"leader completeness: n{node_id} leads term {raft.term} of group "
                        f"{group_id} without committed entry {index}/{term}"
                    )

    async def _liveness(self) -> bool:
        """After the heal, every bucket takes a write and a read, and a new one can be
        created, through some node."""
        for bucket in BUCKETS:
            value = f"live.{bucket}"
            line = request_line(b"PUT", bucket.encode(), b"k0", value.encode())
            if not await self._until_ok(
                PUT, history_key(bucket, "k0"), line, LIVENESS_TIMEOUT, value
            ):
                self.violation(
                    f"liveness: PUT to {bucket} did not succeed {LIVENESS_TIMEOUT}s after the heal"
                )
                return False
        fresh = f"zz{self.seed}"
        if not await self._until_ok(
            CREATE, fresh, request_line(b"CREATE", fresh.encode()), LIVENESS_TIMEOUT
        ):
            self.violation(f"liveness: CREATE {fresh} did not succeed after the heal")
            return False
        return True

    async def _settle_and_compare(self) -> None:
        """Wait until every running member applied the same registry and no range is
        moving, then compare what each holds and hosts."""
        deadline = trio.current_time() + SETTLE_TIMEOUT
        while True:
            states = self._registries()
            if (
                states
                and len({_catalog(s) for s in states.values()}) == 1
                and not any(s.moves for s in states.values())
                and self._hosting_agrees(states)
            ):
                return
            if trio.current_time() > deadline:
                break
            await trio.sleep(0.2)
        states = self._registries()
        catalogs = {node: _catalog(s) for node, s in states.items()}
        if len(set(catalogs.values())) > 1:
            self.violation(f"registry disagreement after the heal: {catalogs}")
        self._hosting_agrees(states, report=True)

    def _registries(self) -> dict[int, RegistryState]:
        """The registry of every running node the cluster counts as a member (a node
        whose ADD-NODE never went through, or that was removed, is not compared)."""
        states = {}
        for process in self.world.processes.values():
            if process.node is not None and not process.removed:
                state = process.node.registry_state()
                if state is not None:
                    states[process.id] = state
        newest = max(states, key=lambda n: _meta_commit(self.world, n), default=None)
        if newest is None:
            return {}
        members = set(states[newest].nodes) - set(states[newest].removed)
        return {n: s for n, s in states.items() if n in members}

    def _hosting_agrees(self, states: dict[int, RegistryState], *, report: bool = False) -> bool:
        agrees = True
        for node_id in states:
            node = self.world.processes[node_id].node
            assert node is not None
            if node.quarantined:
                agrees = False
                if report:
                    self.violation(f"n{node_id} quarantined groups: {node.quarantined}")
            wanted = {
                info.group for info in node.catalog().values() if node_id in node.bucket_hosts(info)
            }
            # Dormant and unloaded buckets are hosted too: opened on first touch.
            hosted = {g for g in (*node.groups, *node.dormant, *node.unloaded) if g != META_GROUP}
            if wanted != hosted:
                agrees = False
                if report:
                    self.violation(
                        f"catalog disagreement on n{node_id}: hosts {sorted(hosted - wanted)} "
                        f"it should not, misses {sorted(wanted - hosted)}"
                    )
        return agrees

    async def _final_reads(self) -> None:
        buckets = (*BUCKETS, CHURN_BUCKET) if self.scenario.churn else BUCKETS
        for bucket in buckets:
            for key in KEYS:
                line = request_line(b"GET", bucket.encode(), key.encode())
                for _ in range(20):
                    conn = self._connect()
                    if conn is None:
                        break
                    op, _ = await self.recorder.record(
                        conn, FINAL_CLIENT, GET, history_key(bucket, key), None, line
                    )
                    await conn.aclose()
                    if op.outcome is not None and op.outcome.value in ("ok", "not found"):
                        break

    def _final_checks(self) -> None:
        result = self.result
        self._check_agreement()
        for violation in self.world.violations[:5]:
            self.violation(violation)
        result.violations.extend(v for v in self.promises.violations if v not in result.violations)
        result.violations.extend(f"client saw: {p}" for p in self.recorder.problems[:5])
        operations = self.history.operations()
        result.operations = len(operations)
        check = check_kv_history(operations, scope_of=bucket_of)
        if not check.ok:
            result.violations.append("not linearizable: " + check.explain()[:2000])
        for lost in lost_acknowledged_writes(operations)[:3]:
            result.violations.append(f"lost acknowledged write: {lost}")
        result.answers = dict(sorted(self.recorder.answers.items()))
        result.events = self.world.events
        for event in self.world.events:
            self.digest.update(event.encode())
        result.digest = self.digest.hexdigest()


def _meta_commit(world: SimWorld, node_id: int) -> int:
    node = world.processes[node_id].node
    meta = None if node is None else node.groups.get(META_GROUP)
    return -1 if meta is None else meta.node.raft.log.committed


def _catalog(state: RegistryState) -> str:
    buckets = sorted((b.name, b.group, b.replicas) for b in state.buckets.values())
    ranges = sorted((r.id, r.start, r.end or "", r.replicas) for r in (state.ranges or ()))
    return repr((buckets, ranges, sorted(state.removed)))


__all__ = [
    "SCENARIOS",
    "RunResult",
    "Scenario",
    "run_seed",
    "scenario_for",
]
