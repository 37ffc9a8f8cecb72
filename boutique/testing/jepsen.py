"""Jepsen-style testing of a real cluster: a client workload, a nemesis, and the checks.

``Jepsen(cluster, options).run()`` drives a ``LocalCluster`` of real node processes:

1. It creates one bucket per range (``apples``, ``hats``, ``oranges``, ``zebras``).
2. For ``options.seconds``, ``options.clients`` concurrent clients (trio tasks, each
   with at most one operation in flight) PUT, GET and DELETE a small rotating set of
   keys in every bucket through random nodes, reconnecting when a node dies. Every
   operation goes into one ``History`` with invoke and complete times from one
   monotonic clock, classed ok / fail / unknown from the reply (``maybe_applied``).
   Every PUT writes a value no other PUT writes.
   With ``options.churn_buckets``, those buckets (created before the run too) take the
   same client operations while one more task drops and re-creates them, in turn,
   every ``options.churn_interval`` seconds. For them NOT FOUND is an answer (a read
   of "no bucket"), and the checker models a DROP as setting every key of the bucket
   to "no bucket" and a CREATE as turning that into absent.
3. Meanwhile the nemesis injects one fault at a time from ``options.faults`` (kills,
   pauses, partitions, leader transfers, replica moves: see ``FAULTS``), holds it,
   heals it, and logs both instants. With ``options.fault_count`` the run is measured
   in faults instead of seconds: exactly that many, then one quiet spell
   (``options.fault_interval``) on the healed cluster, and the working phase ends.
4. Then everything is healed and the checks run: the cluster must serve every bucket
   through every node within ``options.recovery_timeout`` (recovery); every node must
   list every bucket; every key is read once more (final reads, recorded too); the
   whole history must be linearizable per key (``check_kv_history``), which makes a
   lost acknowledged write an anomaly; lost acknowledged writes are also counted
   directly, so a summary can name them.

Adding a fault: subclass ``Fault`` (``inject`` and ``heal`` run in a worker thread and
may block), then register it in ``FAULTS`` or pass instances to ``Jepsen(faults=...)``.
Faults act the way an operator or the machine would: signals to processes by PID,
``FAULT BLOCK``/``HEAL`` for the network, ``ADMIN`` commands for layout changes.

This module never edits a node's files or config and never ends a process it did not
start (``LocalCluster`` holds them by PID).
"""

from __future__ import annotations

import abc
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

import trio

from boutique.client import AsyncClient, ClientError, ConnectionLost, NotFound
from boutique.testing.external_cluster import ExternalCluster
from boutique.testing.history import (
    BUCKET_KINDS,
    CREATE,
    DELETE,
    DROP,
    GET,
    PUT,
    WRITE_KINDS,
    History,
    Operation,
    Outcome,
)
from boutique.testing.linearizability import CheckResult, check_kv_history
from boutique.testing.local_cluster import LocalCluster

Cluster = LocalCluster | ExternalCluster
"""What a run drives: node processes it started, or nodes a person started."""

__all__ = [
    "BUCKETS",
    "CHURN_BUCKETS",
    "CHURN_CLIENT",
    "FAULTS",
    "FINAL_CLIENT",
    "PROBE_CLIENT",
    "Fault",
    "FaultEvent",
    "IsolateLeader",
    "Jepsen",
    "JepsenOptions",
    "JepsenResult",
    "KillAll",
    "KillLeader",
    "KillNode",
    "LostWrite",
    "MoveReplica",
    "NemesisContext",
    "Partition",
    "PauseLeader",
    "PauseNode",
    "Route",
    "TransferLeader",
    "admin",
    "bucket_of",
    "history_key",
    "lost_acknowledged_writes",
    "make_faults",
]

BUCKETS: Final = ("apples", "hats", "oranges", "zebras")
"""One bucket in each range of the default split (a-g, h-n, o-u, v-z)."""

CHURN_BUCKETS: Final = ("pears",)
"""The bucket the churn drops and re-creates (range o-u), next to ``BUCKETS``."""

CHURN_CLIENT: Final = 900
"""Client id of the task that drops and re-creates ``options.churn_buckets``."""
FINAL_CLIENT: Final = 1000
"""Client id of the checker's own reads after the run (recovery probes, final reads)."""
PROBE_CLIENT: Final = 2000
"""First client id handed to faults that run operations of their own."""

# A summary names this many anomalies in full; ``JepsenResult.anomalies`` has them all.
_SHOWN_ANOMALIES = 12

Route = Callable[[int, str, frozenset[str]], str | None]
"""Chooses the node for one operation: ``(client, kind, cut_off) -> node name``, where
``cut_off`` is the set of nodes currently on the minority side of a partition. ``None``
means any node, picked at random."""


@dataclass(frozen=True, slots=True)
class JepsenOptions:
    """The shape of one run."""

    seconds: float = 15.0
    """How long clients work while the nemesis acts; the checks come after."""
    clients: int = 6
    buckets: tuple[str, ...] = BUCKETS
    keys_per_bucket: int = 2
    """How many keys of each bucket are in use at any time."""
    key_lifetime: float = 5.0
    """Seconds before the key set rotates to fresh keys. Short per-key histories keep
    the linearizability search cheap however long the run."""
    read_fraction: float = 0.5
    delete_fraction: float = 0.1
    think_time: float = 0.005
    """Upper bound of a random pause between one client's operations, so a few clients
    do not saturate two cores and starve the nodes they are testing."""
    op_timeout: float = 5.0
    """A client gives up on an operation after this long (outcome unknown for a write).
    Longer than the server's ``request_timeout``, so the server usually answers first."""
    switch_node: float = 0.05
    """Chance, per operation, that a client moves to another random node."""
    faults: tuple[str, ...] = ()
    """Names from ``FAULTS``, injected one at a time in turn."""
    fault_count: int | None = None
    """Inject exactly this many faults (in turn), then let clients work
    ``fault_interval`` more seconds on the healed cluster and end the working phase;
    ``seconds`` is not used. The number of faults then does not depend on how fast the
    machine is, and no time goes by after the last fault with nothing left to inject
    (a run by ``seconds`` ends only at its deadline)."""
    fault_interval: float = 1.0
    """Quiet seconds before each fault."""
    fault_hold: float = 2.0
    """Seconds each fault lasts (randomly 0.7x to 1.3x)."""
    recovery_timeout: float = 20.0
    """After the heal, every bucket must serve through every node within this."""
    max_states: int = 2_000_000
    """Per-key bound on the linearizability search (``check_kv_history``)."""
    seed: int = 0
    churn_buckets: tuple[str, ...] = ()
    """Buckets that are dropped and re-created during the run (e.g. ``CHURN_BUCKETS``);
    clients use them like the others. Their names must not be in ``buckets``."""
    churn_interval: float = 2.0
    """Seconds (randomly 0.5x to 1.5x) between two churn steps (a DROP or a CREATE)."""


# --- the nemesis ---------------------------------------------------------------------


@dataclass(slots=True)
class FaultEvent:
    """One fault as injected: its kind, whom it hit, and when (seconds since the start
    of the run; ``injected_at`` is when the nemesis began to inject it)."""

    kind: str
    targets: tuple[str, ...]
    injected_at: float
    healed_at: float | None = None
    detail: str = ""

    def describe(self) -> str:
        healed = "in effect" if self.healed_at is None else f"healed {self.healed_at:.2f}"
        targets = ",".join(self.targets) or "-"
        return f"{self.injected_at:7.2f} {self.kind:<15} {targets:<10} {healed}  {self.detail}"


class NemesisContext:
    """What a fault may use: the cluster, a seeded rng, the buckets and the history.

    ``cut_off`` holds the nodes on the minority side of a partition while one lasts;
    the workload's ``Route`` sees it.
    """

    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        buckets: Sequence[str],
        history: History,
        clock: Callable[[], float],
        op_timeout: float,
    ) -> None:
        self.cluster = cluster
        self.rng = rng
        self.buckets = tuple(buckets)
        self.history = history
        self.clock = clock
        self.op_timeout = op_timeout
        self.cut_off: frozenset[str] = frozenset()
        self._probe_ids = iter(range(PROBE_CLIENT, PROBE_CLIENT + 1_000_000))

    def nodes(self) -> list[str]:
        return list(self.cluster.nodes)

    def leader(self, bucket: str | None = None) -> tuple[str, str]:
        """``(node, why)``: the leader of ``bucket`` (a random one if None), or a random
        running node when no leader is known right now."""
        bucket = bucket or self.rng.choice(self.buckets)
        leader = self.cluster.leader_of(f"b/{bucket}/")
        if leader is not None:
            return leader, f"leader of {bucket}"
        return self.rng.choice(self.cluster.running() or self.nodes()), f"{bucket}: no leader"

    def new_client_id(self) -> int:
        return next(self._probe_ids)

    def perform(
        self, client: int, node: str, kind: str, bucket: str, key: str, value: str | None = None
    ) -> Operation:
        """Run one operation through ``node`` with a blocking client and record it, as a
        workload client would (for faults that script operations of their own)."""
        op = self.history.invoke(client, kind, history_key(bucket, key), value, self.clock())
        try:
            with self.cluster.client(node, timeout=self.op_timeout) as conn:
                match kind:
                    case "put":
                        assert value is not None
                        conn.put(bucket, key, value)
                        result = None
                    case "delete":
                        conn.delete(bucket, key)
                        result = None
                    case _:
                        result = _as_text(conn.get(bucket, key))
        except ClientError as exc:
            self.history.complete(op, self.clock(), _outcome_of(exc))
        else:
            self.history.complete(op, self.clock(), Outcome.OK, result)
        return op


class Fault(abc.ABC):
    """One kind of fault. ``inject`` and ``heal`` run in a worker thread and may block;
    a fault is injected, held, then healed before the next one starts."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        """Start the fault; return the nodes it hit and a few words about it."""

    @abc.abstractmethod
    def heal(self, ctx: NemesisContext) -> None:
        """End the fault (restart, resume, reconnect)."""


class KillNode(Fault):
    """SIGKILL one random node; restart it on heal (same data directory)."""

    kind = "kill"

    def __init__(self) -> None:
        self.victims: tuple[str, ...] = ()

    def choose(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        return (ctx.rng.choice(ctx.nodes()),), "random node"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        self.victims, why = self.choose(ctx)
        for name in self.victims:
            ctx.cluster.kill(name)
        return self.victims, f"SIGKILL ({why})"

    def heal(self, ctx: NemesisContext) -> None:
        ctx.cluster.start(*self.victims)


class KillLeader(KillNode):
    """SIGKILL the leader of a random bucket; restart it on heal."""

    kind = "kill_leader"

    def choose(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        leader, why = ctx.leader()
        return (leader,), why


class KillAll(KillNode):
    """SIGKILL every node at once; restart them all on heal."""

    kind = "kill_all"

    def choose(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        return tuple(ctx.nodes()), "all nodes"


class PauseNode(Fault):
    """SIGSTOP one random node (a long GC pause, a stalled VM); SIGCONT on heal."""

    kind = "pause"

    def __init__(self) -> None:
        self.victim = ""

    def choose(self, ctx: NemesisContext) -> tuple[str, str]:
        return ctx.rng.choice(ctx.nodes()), "random node"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        self.victim, why = self.choose(ctx)
        ctx.cluster.pause(self.victim)
        return (self.victim,), f"SIGSTOP ({why})"

    def heal(self, ctx: NemesisContext) -> None:
        ctx.cluster.resume(self.victim)


class PauseLeader(PauseNode):
    """SIGSTOP the leader of a random bucket; SIGCONT on heal."""

    kind = "pause_leader"

    def choose(self, ctx: NemesisContext) -> tuple[str, str]:
        return ctx.leader()


class Partition(Fault):
    """Cut the cluster into a random minority and majority; reconnect on heal."""

    kind = "partition"

    def choose(self, ctx: NemesisContext) -> tuple[set[str], str]:
        nodes = ctx.nodes()
        ctx.rng.shuffle(nodes)
        return set(nodes[: max(1, (len(nodes) - 1) // 2)]), "minority/majority"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        minority, why = self.choose(ctx)
        majority = set(ctx.nodes()) - minority
        ctx.cluster.partition(minority, majority)
        ctx.cut_off = frozenset(minority)
        return tuple(sorted(minority)), f"cut off from {','.join(sorted(majority))} ({why})"

    def heal(self, ctx: NemesisContext) -> None:
        ctx.cut_off = frozenset()
        ctx.cluster.heal()


class IsolateLeader(Partition):
    """Cut the leader of a random bucket off from every other node; reconnect on heal."""

    kind = "isolate_leader"

    def choose(self, ctx: NemesisContext) -> tuple[set[str], str]:
        leader, why = ctx.leader()
        return {leader}, why


def admin(cluster: Cluster, node: str, line: str, timeout: float = 30.0) -> list[str]:
    """Send an ``ADMIN ...`` line to ``node``; the reply's lines, the last being ``OK``
    or the error. Raises ``ClientError`` when the node cannot be reached."""
    return cluster.request(node, line, timeout)


class TransferLeader(Fault):
    """Hand the leadership of a random bucket to another replica (``ADMIN TRANSFER``).
    Nothing to heal: the new leader simply stays."""

    kind = "transfer"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        bucket = ctx.rng.choice(ctx.buckets)
        leader, _ = ctx.leader(bucket)
        target = ctx.rng.choice([n for n in ctx.cluster.running() if n != leader] or [leader])
        reply = admin(
            ctx.cluster, ctx.rng.choice(ctx.cluster.running()), f"ADMIN TRANSFER {bucket} {target}"
        )
        return (
            target,
        ), f"{bucket} from {leader} to {target}: {reply[-1] if reply else 'no reply'}"

    def heal(self, ctx: NemesisContext) -> None:
        pass


class MoveReplica(Fault):
    """Membership change: move one replica of a range to a node that has none
    (``ADMIN MOVE``: the new node joins each bucket group as a learner, is promoted, the
    old one is removed), wait until it is done; move it back on heal. Needs more nodes
    than replicas per range."""

    kind = "membership"
    settle_timeout: ClassVar[float] = 60.0

    def __init__(self) -> None:
        self.move: tuple[str, str, str] | None = None

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        via = ctx.rng.choice(ctx.cluster.running())
        candidates = []
        nodes = set(ctx.nodes())
        for line in admin(ctx.cluster, via, "ADMIN RANGES"):
            parts = line.split()
            if parts[:1] == ["range"] and "replicas" in parts:
                replicas = parts[parts.index("replicas") + 1].split(",")
                for spare in sorted(nodes - set(replicas)):
                    candidates += [(parts[1], frm, spare) for frm in replicas]
        if not candidates:
            raise RuntimeError("membership changes need more nodes than replicas per range")
        range_id, frm, to = self.move = ctx.rng.choice(candidates)
        self._move(ctx, range_id, frm, to)
        return (frm, to), f"range {range_id} replica moved from {frm} to {to}"

    def heal(self, ctx: NemesisContext) -> None:
        if self.move is not None:
            range_id, frm, to = self.move
            self.move = None
            self._move(ctx, range_id, to, frm)

    def _move(self, ctx: NemesisContext, range_id: str, frm: str, to: str) -> None:
        deadline = time.monotonic() + self.settle_timeout
        while True:
            reply = admin(
                ctx.cluster,
                ctx.rng.choice(ctx.cluster.running()),
                f"ADMIN MOVE {range_id} {frm} {to}",
            )
            if reply and reply[-1] == "OK":
                break
            # BUSY (another move in progress) or UNAVAILABLE (no registry leader yet).
            if time.monotonic() > deadline:
                raise RuntimeError(f"ADMIN MOVE {range_id} {frm} {to}: {reply}")
            time.sleep(0.2)
        while admin(ctx.cluster, ctx.rng.choice(ctx.cluster.running()), "ADMIN MOVES") != ["OK"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"move of {range_id} from {frm} to {to} did not finish")
            time.sleep(0.2)


FAULTS: dict[str, Callable[[], Fault]] = {
    cls.kind: cls
    for cls in (
        KillNode,
        KillLeader,
        KillAll,
        PauseNode,
        PauseLeader,
        Partition,
        IsolateLeader,
        TransferLeader,
        MoveReplica,
    )
}
"""Every fault the nemesis knows, by name. ``membership`` needs more nodes than
replicas per range (e.g. 4 nodes, replication 3)."""


def make_faults(names: Iterable[str]) -> list[Fault]:
    """Fresh fault objects for these names; ``ValueError`` names what is unknown."""
    faults = []
    for name in names:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        faults.append(FAULTS[name]())
    return faults


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LostWrite:
    """An acknowledged write that the final read of its key shows was lost."""

    write: Operation
    final_read: Operation

    def describe(self) -> str:
        return f"{self.write.describe()}, but finally {self.final_read.describe()}"


@dataclass(slots=True)
class JepsenResult:
    """Everything a run found. ``anomalies`` are safety violations, ``problems`` are
    failures to recover or serve; a correct store under this harness has neither."""

    options: JepsenOptions
    operations: list[Operation]
    faults: list[FaultEvent]
    check: CheckResult | None
    lost_writes: list[LostWrite]
    anomalies: list[str]
    problems: list[str]
    recovery_seconds: float | None
    errors: Counter[str]
    """Errors the workload clients saw, by kind (for the summary)."""
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return (
            not self.anomalies
            and not self.problems
            and self.check is not None
            and self.check.linearizable
        )

    def count(self, kind: str | None = None, outcome: Outcome | None = None) -> int:
        """Workload operations (not the checker's own) of this kind and outcome."""
        return sum(
            1
            for op in self.operations
            if op.client < FINAL_CLIENT
            and (kind is None or op.kind == kind)
            and (outcome is None or op.outcome is outcome)
        )

    def faults_by_kind(self) -> Counter[str]:
        return Counter(event.kind for event in self.faults)

    def summary(self) -> str:
        lines = []
        total = self.count()
        lines.append(
            f"operations: {total}  ok {self.count(outcome=Outcome.OK)}"
            f"  fail {self.count(outcome=Outcome.FAIL)}"
            f"  unknown {self.count(outcome=Outcome.UNKNOWN)}"
            + (
                f"  not found {self.count(outcome=Outcome.NOT_FOUND)}"
                if self.options.churn_buckets
                else ""
            )
            + ("  (interrupted)" if self.interrupted else "")
        )
        kinds = (
            (PUT, GET, DELETE, DROP, CREATE) if self.options.churn_buckets else (PUT, GET, DELETE)
        )
        for kind in kinds:
            lines.append(
                f"  {kind:<6} ok {self.count(kind, Outcome.OK):>6}"
                f"  fail {self.count(kind, Outcome.FAIL):>6}"
                f"  unknown {self.count(kind, Outcome.UNKNOWN):>6}"
                + (
                    f"  not found {self.count(kind, Outcome.NOT_FOUND):>6}"
                    if self.options.churn_buckets
                    else ""
                )
            )
        if self.errors:
            shown = ", ".join(f"{name} {n}" for name, n in self.errors.most_common())
            lines.append(f"  client errors: {shown}")
        by_kind = self.faults_by_kind()
        shown = ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items())) or "none"
        lines.append(f"faults injected: {len(self.faults)} ({shown})")
        recovery = (
            "n/a" if self.recovery_seconds is None else f"{self.recovery_seconds:.2f} s after heal"
        )
        lines.append(f"recovery: {recovery}")
        if self.check is not None:
            lines.append(f"linearizability: {self.check.explain().splitlines()[0]}")
        lines.append(f"lost acknowledged writes: {len(self.lost_writes)}")
        keys = len(self.check.anomalies) if self.check is not None else 0
        other = len(self.anomalies) - keys - len(self.lost_writes)
        lines.append(
            f"anomalies: {len(self.anomalies)} (keys not linearizable {keys}, lost "
            f"acknowledged writes {len(self.lost_writes)}, other {other})"
        )
        lines.extend(f"  - {anomaly}" for anomaly in self.anomalies[:_SHOWN_ANOMALIES])
        if len(self.anomalies) > _SHOWN_ANOMALIES:
            lines.append(f"  ... and {len(self.anomalies) - _SHOWN_ANOMALIES} more")
        if self.problems:
            lines.append(f"problems: {len(self.problems)}")
            lines.extend(f"  - {problem}" for problem in self.problems)
        lines.append("verdict: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def history_key(bucket: str, key: str) -> str:
    """The key as the checker sees it: one register per (bucket, key)."""
    return f"{bucket}/{key}"


def bucket_of(hkey: str) -> str:
    """The bucket of a ``history_key`` (the checker's ``scope_of``); a DROP or CREATE
    is recorded with the bucket itself as its key."""
    return hkey.split("/", 1)[0]


def lost_acknowledged_writes(operations: Sequence[Operation]) -> list[LostWrite]:
    """Acknowledged writes the final reads (client ``FINAL_CLIENT``) show were lost.

    The final read of a key returns a value some write produced (a PUT of that value;
    for "absent" a DELETE, a CREATE after a DROP, or the initial state; for NOT FOUND a
    DROP). An acknowledged write invoked after every possible producer of that value
    completed was certainly ordered after it, so the key should show that write or a
    later one: it was lost. An acknowledged DROP counts as a write of every key of its
    bucket (the data it removed must stay removed). An unknown producer may take
    effect at any time, so it excuses everything. This is a plain, nameable subset of
    what the linearizability check finds.
    """
    by_key: dict[str, list[Operation]] = {}
    by_bucket: dict[str, list[Operation]] = {}
    for op in operations:
        if op.kind in BUCKET_KINDS:
            by_bucket.setdefault(op.key, []).append(op)
        else:
            by_key.setdefault(op.key, []).append(op)
    lost: list[LostWrite] = []
    for hkey, own in by_key.items():
        ops = own + by_bucket.get(bucket_of(hkey), [])
        finals = [
            op
            for op in ops
            if op.client == FINAL_CLIENT
            and op.kind == GET
            and op.outcome in (Outcome.OK, Outcome.NOT_FOUND)
        ]
        if not finals:
            continue
        final = finals[-1]
        gone = final.outcome is Outcome.NOT_FOUND
        producers = [
            op
            for op in ops
            if op.outcome in (Outcome.OK, Outcome.UNKNOWN)
            and (
                (op.kind == DROP)
                if gone
                else (op.kind == PUT and op.value == final.result)
                or (final.result is None and op.kind in (DELETE, CREATE))
            )
        ]
        latest = -math.inf
        for op in producers:
            latest = max(latest, math.inf if op.completed is None else op.completed)
        lost.extend(
            LostWrite(op, final)
            for op in ops
            if (op.kind in WRITE_KINDS or op.kind == DROP)
            and op.outcome is Outcome.OK
            and op.client != FINAL_CLIENT
            and op.invoked > latest
            and op.invoked < final.invoked
        )
    # A DROP lost shows on every key of its bucket: name it once.
    unique: dict[int, LostWrite] = {}
    for found in lost:
        unique.setdefault(id(found.write), found)
    return list(unique.values())


# --- the run -------------------------------------------------------------------------


def _as_text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return repr(value)  # never equal to a value the workload wrote
    return value


def _outcome_of(exc: ClientError) -> Outcome:
    return Outcome.UNKNOWN if exc.maybe_applied else Outcome.FAIL


class Jepsen:
    """One run against a started ``LocalCluster`` (or an ``ExternalCluster``): ``run()``
    (or ``await arun()``).

    ``faults`` overrides ``options.faults`` with fault objects (custom ones welcome);
    ``route`` picks nodes for operations (default: random nodes).
    """

    def __init__(
        self,
        cluster: Cluster,
        options: JepsenOptions,
        *,
        faults: Sequence[Fault] | None = None,
        route: Route | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.options = options
        self.faults = list(faults) if faults is not None else make_faults(options.faults)
        self.route = route
        self.log = log or (lambda line: None)
        self.rng = random.Random(options.seed)
        self.history = History()
        self.events: list[FaultEvent] = []
        self.errors: Counter[str] = Counter()
        self.anomalies: list[str] = []
        self.problems: list[str] = []
        self._start = time.monotonic()
        self.ctx = NemesisContext(
            cluster,
            random.Random(self.rng.random()),
            options.buckets,
            self.history,
            self.clock,
            options.op_timeout,
        )
        self._missing_buckets: Counter[str] = Counter()
        self.recovery_seconds: float | None = None
        self.interrupted = False
        self._work_over = False
        """Set when a run by ``fault_count`` has had its faults: clients and the churn
        end after the operation they are in (never cancelled mid-operation)."""
        if options.fault_count is not None and (options.fault_count < 1 or not self.faults):
            raise ValueError("fault_count needs at least one fault to inject")

    def clock(self) -> float:
        """Seconds since the run began: the one clock for operations and faults."""
        return time.monotonic() - self._start

    def _nodes(self) -> list[str]:
        # Read afresh each time: a fault may add nodes to the cluster or retire them.
        return list(self.cluster.nodes)

    def _address(self, node: str) -> tuple[str, int]:
        found = self.cluster.nodes.get(node)
        if found is None:
            raise ConnectionLost(f"node {node} left the cluster", maybe_applied=False)
        return found.host, found.client_port

    # --- entry points ---------------------------------------------------------------

    def run(self) -> JepsenResult:
        return trio.run(self.arun)

    async def arun(self, stop: trio.Event | None = None) -> JepsenResult:
        """Run, heal, check. ``stop`` ends the working phase early (Ctrl-C in a long
        run); the checks still run on what was recorded."""
        await self._create_buckets()
        # A counted run ends when its nemesis is done (``_work_over``), not by the clock.
        counted = self.options.fault_count is not None
        until = math.inf if counted else self.clock() + self.options.seconds
        async with trio.open_nursery() as nursery:
            if stop is not None:

                async def watch() -> None:
                    await stop.wait()
                    self.interrupted = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
            async with trio.open_nursery() as work:
                for client in range(self.options.clients):
                    work.start_soon(self._client, client, until)
                work.start_soon(self._nemesis, until)
                if self.options.churn_buckets:
                    work.start_soon(self._churn, until)
            nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(self._heal_all)
        await self._recover()
        await self._final_reads()
        return await trio.to_thread.run_sync(self._judge)

    # --- setup ------------------------------------------------------------------------

    async def _create_buckets(self) -> None:
        deadline = self.clock() + self.options.recovery_timeout
        for bucket in (*self.options.buckets, *self.options.churn_buckets):
            while True:
                try:
                    node = self.rng.choice(self._nodes())
                    async with self._connect(node) as conn:
                        with trio.fail_after(self.options.op_timeout):
                            await conn.create(bucket)
                    break
                except (ClientError, trio.TooSlowError) as exc:
                    if self.clock() > deadline:
                        raise RuntimeError(f"could not create bucket {bucket}: {exc}") from exc
                    await trio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def _connect(self, node: str, timeout: float | None = None) -> AsyncIterator[AsyncClient]:
        conn = AsyncClient(*self._address(node), password=self.cluster.password)
        try:
            with trio.fail_after(timeout or self.options.op_timeout):
                await conn.connect()
            yield conn
        finally:
            await conn.aclose()

    # --- the workload ---------------------------------------------------------------

    def _keys(self) -> list[str]:
        generation = int(self.clock() / self.options.key_lifetime)
        return [f"k{generation}.{i}" for i in range(self.options.keys_per_bucket)]

    async def _client(self, client: int, until: float) -> None:
        """One client: one operation at a time until ``until``, then stop."""
        opts = self.options
        rng = random.Random(f"{opts.seed}/{client}")
        conn: AsyncClient | None = None
        node = ""
        writes = 0
        try:
            while self._working(until):
                roll = rng.random()
                kind = GET if roll < opts.read_fraction else PUT
                if kind == PUT and roll > 1 - opts.delete_fraction:
                    kind = DELETE
                bucket = rng.choice((*opts.buckets, *opts.churn_buckets))
                key = rng.choice(self._keys())
                wanted = self.route(client, kind, self.ctx.cut_off) if self.route else None
                if wanted is None and (conn is None or rng.random() < opts.switch_node):
                    wanted = rng.choice(self._nodes())
                if conn is None or (wanted is not None and wanted != node):
                    if conn is not None:
                        await conn.aclose()
                    node = wanted or rng.choice(self._nodes())
                    try:
                        conn = AsyncClient(*self._address(node), password=self.cluster.password)
                        with trio.fail_after(1.0):
                            await conn.connect()
                    except (ClientError, trio.TooSlowError):
                        # Node down: no request was sent, so nothing to record.
                        if conn is not None:
                            await conn.aclose()
                        conn = None
                        self.errors["cannot connect"] += 1
                        await trio.sleep(rng.uniform(0.02, 0.1))
                        continue
                value = None
                if kind == PUT:
                    writes += 1
                    value = f"{client}.{writes}"
                _, keep = await self._operate(conn, client, kind, bucket, key, value)
                if not keep:
                    await conn.aclose()
                    conn = None
                await trio.sleep(rng.uniform(0, opts.think_time))
        finally:
            if conn is not None:
                await conn.aclose()

    async def _operate(
        self, conn: AsyncClient, client: int, kind: str, bucket: str, key: str, value: str | None
    ) -> tuple[Operation, bool]:
        """Run and record one operation: the operation, and whether to keep the
        connection."""
        op = self.history.invoke(client, kind, history_key(bucket, key), value, self.clock())
        try:
            with trio.fail_after(self.options.op_timeout):
                match kind:
                    case "put":
                        assert value is not None
                        await conn.put(bucket, key, value)
                        result = None
                    case "delete":
                        await conn.delete(bucket, key)
                        result = None
                    case _:
                        result = _as_text(await conn.get(bucket, key))
        except trio.TooSlowError:
            # The cancelled call closed the connection; the server may still apply it.
            self.history.complete(op, self.clock(), Outcome.UNKNOWN)
            self.errors["client timeout"] += 1
            return op, False
        except NotFound:
            if bucket in self.options.churn_buckets:
                self.history.complete(op, self.clock(), Outcome.NOT_FOUND)
                return op, True
            # The buckets were created (and acknowledged) before the run and are never
            # dropped: NOT FOUND is a wrong answer, not a failure to serve.
            self.history.complete(op, self.clock(), Outcome.FAIL)
            self.errors["NOT FOUND"] += 1
            self._missing_buckets[bucket] += 1
            if self._missing_buckets[bucket] == 1:
                self.log(f"{self.clock():7.2f} NOT FOUND for existing bucket {bucket}")
            return op, True
        except ClientError as exc:
            self.history.complete(op, self.clock(), _outcome_of(exc))
            self.errors[getattr(exc, "code", "") or type(exc).__name__] += 1
            return op, not conn.closed
        self.history.complete(op, self.clock(), Outcome.OK, result)
        return op, True

    async def _churn(self, until: float) -> None:
        """DROP and re-CREATE ``options.churn_buckets`` in turn, through random nodes,
        one operation at a time, recorded like the clients' (the bucket is the key)."""
        opts = self.options
        rng = random.Random(f"{opts.seed}/churn")
        exists = dict.fromkeys(opts.churn_buckets, True)
        while self._working(until):
            await trio.sleep(opts.churn_interval * rng.uniform(0.5, 1.5))
            bucket = rng.choice(opts.churn_buckets)
            kind = DROP if exists[bucket] else CREATE
            op = self.history.invoke(CHURN_CLIENT, kind, bucket, None, self.clock())
            try:
                async with self._connect(rng.choice(self._nodes())) as conn:
                    with trio.fail_after(opts.op_timeout):
                        await (conn.drop(bucket) if kind == DROP else conn.create(bucket))
            except NotFound:
                self.history.complete(op, self.clock(), Outcome.NOT_FOUND)
                exists[bucket] = False
            except trio.TooSlowError:
                self.history.complete(op, self.clock(), Outcome.UNKNOWN)
                exists[bucket] = rng.random() < 0.5  # try either next
            except ClientError as exc:
                outcome = _outcome_of(exc)
                self.history.complete(op, self.clock(), outcome)
                self.errors[f"{kind} " + (getattr(exc, "code", "") or type(exc).__name__)] += 1
                if outcome is Outcome.UNKNOWN:
                    exists[bucket] = rng.random() < 0.5
            else:
                self.history.complete(op, self.clock(), Outcome.OK)
                exists[bucket] = kind == CREATE
                self.log(f"{self.clock():7.2f} churn: {kind} {bucket}")

    # --- the nemesis ----------------------------------------------------------------

    def _working(self, until: float) -> bool:
        return self.clock() < until and not self._work_over

    async def _nemesis(self, until: float) -> None:
        if not self.faults:
            return
        opts = self.options
        turn = 0
        while opts.fault_count is None or turn < opts.fault_count:
            await trio.sleep(opts.fault_interval)
            hold = opts.fault_hold * self.ctx.rng.uniform(0.7, 1.3)
            if self.clock() + hold > until:
                return
            fault = self.faults[turn % len(self.faults)]
            turn += 1
            await self._one_fault(fault, hold)
        # Counted run: the clients get a quiet spell on the healed cluster, as between
        # two faults, then the working phase ends.
        await trio.sleep(opts.fault_interval)
        self._work_over = True

    async def _one_fault(self, fault: Fault, hold: float) -> None:
        started = self.clock()
        try:
            targets, detail = await trio.to_thread.run_sync(fault.inject, self.ctx)
        except Exception as exc:  # a fault that could not be injected is the harness's problem
            self.problems.append(f"{self.clock():.2f} could not inject {fault.kind}: {exc!r}")
            await trio.to_thread.run_sync(self._heal_all)
            return
        event = FaultEvent(fault.kind, targets, started, None, detail)
        self.events.append(event)
        self.log("fault " + event.describe())
        try:
            # Shielded: a fault injected is always healed, even when the run is stopped.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(hold):
                    await self._wait_for_stop()
                try:
                    await trio.to_thread.run_sync(fault.heal, self.ctx)
                except Exception as exc:
                    self.problems.append(
                        f"{self.clock():.2f} healing {fault.kind} of {','.join(targets)} "
                        f"failed: {exc}"
                    )
                    await trio.to_thread.run_sync(self._heal_all)
        finally:
            event.healed_at = self.clock()
            self.log("heal  " + event.describe())

    async def _wait_for_stop(self) -> None:
        # Inside the shield the hold ends on time; a stop (Ctrl-C) cancels the outer
        # scope and the shield keeps the heal from being skipped.
        while not self.interrupted:
            await trio.sleep(0.05)

    def _heal_all(self) -> None:
        """Resume, reconnect and restart everything (blocking; runs in a thread)."""
        cluster = self.cluster
        self.ctx.cut_off = frozenset()
        for name, node in cluster.nodes.items():
            if node.paused:
                cluster.resume(name)
            if node.process is not None and node.process.poll() is not None:
                # Not killed by the nemesis (kill() forgets the process): it died alone.
                self.problems.append(
                    f"{self.clock():.2f} node {name} exited by itself with code "
                    f"{node.process.returncode}; log {node.log_path}:\n{cluster.log_tail(name)}"
                )
                node.process = None
        for name, node in cluster.nodes.items():
            if not node.running:
                try:
                    cluster.start(name)
                except (RuntimeError, TimeoutError) as exc:
                    self.problems.append(f"{self.clock():.2f} node {name} did not restart: {exc}")
        cluster.heal()

    # --- the checks -----------------------------------------------------------------

    async def _recover(self) -> None:
        """Time from the heal until every bucket takes a write and a read through every
        node (recorded, on a key of its own per bucket)."""
        healed = self.clock()
        deadline = healed + self.options.recovery_timeout
        pending = [(bucket, node) for bucket in self.options.buckets for node in self._nodes()]
        attempt = 0
        for bucket, node in pending:
            while True:
                attempt += 1
                ok = await self._checker_op(node, PUT, bucket, "recovery", f"r.{attempt}")
                ok = ok and await self._checker_op(node, GET, bucket, "recovery")
                if ok:
                    break
                if self.clock() > deadline:
                    self.problems.append(
                        f"no recovery: bucket {bucket} did not serve through {node} within "
                        f"{self.options.recovery_timeout:g} s of the heal"
                    )
                    return
                await trio.sleep(0.05)
        self.recovery_seconds = self.clock() - healed
        for node in self._nodes():
            try:
                async with self._connect(node) as conn:
                    with trio.fail_after(self.options.op_timeout):
                        listed = set(await conn.buckets())
            except (ClientError, trio.TooSlowError) as exc:
                self.problems.append(f"BUCKETS through {node} failed after recovery: {exc!r}")
                continue
            missing = sorted(set(self.options.buckets) - listed)
            if missing:
                self.anomalies.append(f"{node} does not list buckets {missing} (BUCKETS)")

    async def _final_reads(self) -> None:
        keys = sorted({op.key for op in self.history.operations() if op.kind not in BUCKET_KINDS})
        deadline = self.clock() + self.options.recovery_timeout
        nodes = self._nodes()
        for hkey in keys:
            bucket, key = hkey.split("/", 1)
            while not await self._checker_op(self.rng.choice(nodes), GET, bucket, key):
                if self.clock() > deadline:
                    self.problems.append(f"final read of {hkey} did not succeed in time")
                    return
                await trio.sleep(0.05)

    async def _checker_op(
        self, node: str, kind: str, bucket: str, key: str, value: str | None = None
    ) -> bool:
        """One recorded operation by the checker itself; True if it was OK."""
        try:
            async with self._connect(node, timeout=2.0) as conn:
                op, _ = await self._operate(conn, FINAL_CLIENT, kind, bucket, key, value)
                return op.outcome is Outcome.OK or op.outcome is Outcome.NOT_FOUND
        except (ClientError, trio.TooSlowError):
            return False

    def _judge(self) -> JepsenResult:
        operations = self.history.operations()
        check = check_kv_history(operations, max_states=self.options.max_states, scope_of=bucket_of)
        anomalies = list(self.anomalies)
        for bucket, n in sorted(self._missing_buckets.items()):
            anomalies.append(f"NOT FOUND for existing bucket {bucket} ({n} times)")
        anomalies.extend(anomaly.explain() for anomaly in check.anomalies)
        lost = lost_acknowledged_writes(operations)
        anomalies.extend(f"lost acknowledged write: {w.describe()}" for w in lost)
        problems = list(self.problems)
        if check.timeouts:
            problems.append(f"linearizability undecided for keys {check.timeouts}")
        return JepsenResult(
            self.options,
            operations,
            list(self.events),
            check,
            lost,
            anomalies,
            problems,
            self.recovery_seconds,
            Counter(self.errors),
            self.interrupted,
        )
