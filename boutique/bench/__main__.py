"""``python -m boutique.bench``: benchmark a boutique cluster over the line protocol.

    python -m boutique.bench load                      64 connections of PUTs, 10 s
    python -m boutique.bench load --scenario reads64   a standard scenario (see below)
    python -m boutique.bench load --connections 8 --pipeline 32 --mix put=1,get=1
    python -m boutique.bench load --target 127.0.0.1:4041,127.0.0.1:4042
    python -m boutique.bench failover --trials 10      SIGKILL a leader under writes
    python -m boutique.bench failover --netns --fault isolate   a silent partition instead
    python -m boutique.bench load --netns --delay 1 --jitter 0.5 --loss 1   a slow network
    python -m boutique.bench idle --buckets 10000      idle CPU and memory per bucket
    python -m boutique.bench all                       every standard scenario, as a table
    python -m boutique.bench echo --scenario writes64  the same load on a bare trio server
    python -m boutique.bench echo --scenario reads64 --servers 3 --loop selectors
    python -m boutique.bench bigbucket --gb 2          one 2 GB bucket: snapshot, catch-up,
                                                       restart, and the longest loop stall

Scenarios (issue 8): writes64 (64 connections, PUT 100 B), reads64 (64 connections,
GET), single (1 connection, PUT), pipelined (8 connections, depth 32, PUT). Flags given
explicitly override the scenario's.

Without --target a cluster of real node processes is started on 127.0.0.1 (3 nodes,
replication 3, durable SQLite storage) with its data in a scratch directory under
--dir (default: the current directory, since /tmp is often a RAM disk), removed
afterwards unless --keep. Every process started is ended by PID at the end, also on
errors and Ctrl-C; the last line says so.

``all`` runs the four load scenarios one after another on one cluster (buckets made and
keys written once), then failover and idle, each on a fresh cluster; it ends with a
markdown table whose rows carry the command that reproduces them.

``echo`` is the yardstick: the same clients and request lines against bare server
processes that answer every line at once as an in-memory map and do nothing else, with a
trio task per connection or one ``selectors`` loop (``boutique/bench/echo.py``);
``tools/floor.sh`` measures them with ``compare.sh``'s own load generator.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from boutique.command_line import add_version, plain
from boutique.testing.netns_cluster import NetnsCluster

from .bigbucket import run_bigbucket
from .cluster import (
    DEFAULT_ELECTION_TICKS,
    DEFAULT_TICK,
    BenchCluster,
    ClusterSpec,
    Ledger,
    machine_lines,
    parse_targets,
)
from .echo import LOOPS, echo_servers
from .failover import FAULTS, FailoverResult, run_failover
from .idle import IdleResult, run_idle
from .load import LoadOptions, LoadResult, describe_options, parse_mix, report_lines, run_load

LOOP_SUMMARY = {
    "trio": "one trio task per connection",
    "selectors": "one selectors loop over every socket",
}

DEFAULT_CLIENT_PROCS = 2
"""Two load generator processes, one per core of the 2-core machine of issue 8. Measured
there (with other work on the machine): against a server that answers at once (a C
epoll loop replying OK) one process drove about
30,000 request/reply round trips a second at 64 connections, which is near the read
bar (25,000/s), and two drove about 90,000/s; pipelined (8 x 32) one process already
read over 1,000,000 replies a second. So with two, the client stays far from being the
limit at every bar, and its CPU is printed with each result so this can be checked."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    connections: int
    pipeline: int
    mix: str
    client_procs: int
    bar: str
    meets: Callable[[LoadResult], bool]


def _p(result: LoadResult, q: float) -> float:
    value = result.percentile_ms(q)
    return float("inf") if value is None else value


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "writes64",
            "64 connections, PUT 100 B",
            64,
            1,
            "put=1",
            DEFAULT_CLIENT_PROCS,
            ">= 12,000 PUT/s, p99 < 15 ms",
            lambda r: r.throughput >= 12_000 and _p(r, 99) < 15 and not r.errors,
        ),
        Scenario(
            "reads64",
            "64 connections, GET (linearizable)",
            64,
            1,
            "get=1",
            DEFAULT_CLIENT_PROCS,
            ">= 25,000 GET/s",
            lambda r: r.throughput >= 25_000 and not r.errors,
        ),
        Scenario(
            "single",
            "1 connection, PUT 100 B",
            1,
            1,
            "put=1",
            1,
            "p50 < 1 ms",
            lambda r: _p(r, 50) < 1 and not r.errors,
        ),
        Scenario(
            "pipelined",
            "8 connections x depth 32, PUT 100 B",
            8,
            32,
            "put=1",
            DEFAULT_CLIENT_PROCS,
            ">= 40,000 PUT/s",
            lambda r: r.throughput >= 40_000 and not r.errors,
        ),
    )
}


# --- arguments -----------------------------------------------------------------------


def _cluster_args(parser: argparse.ArgumentParser, nodes: int) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument("--nodes", type=int, default=nodes, help=f"local nodes (default {nodes})")
    group.add_argument("--replication", type=int, default=3, help="replication factor (default 3)")
    group.add_argument(
        "--tick-interval",
        type=float,
        default=DEFAULT_TICK,
        help=f"seconds per Raft tick (default {DEFAULT_TICK:g}, the store's default)",
    )
    group.add_argument(
        "--election-ticks",
        type=int,
        default=DEFAULT_ELECTION_TICKS,
        help=f"election timeout in ticks (default {DEFAULT_ELECTION_TICKS})",
    )
    group.add_argument(
        "--dir",
        type=Path,
        default=Path.cwd(),
        help="where the scratch data directory is made (default: current directory)",
    )
    group.add_argument("--keep", action="store_true", help="keep the data directory and node logs")
    group.add_argument(
        "--netns",
        action="store_true",
        help="each node on a host of its own: a network namespace on a private bridge (root)",
    )
    group.add_argument(
        "--tls", action="store_true", help="mutual TLS between the nodes (needs trustme)"
    )


def _load_args(parser: argparse.ArgumentParser, *, durations: bool = True) -> None:
    group = parser.add_argument_group("load")
    group.add_argument("--connections", type=int, help="client connections (default 64)")
    group.add_argument("--pipeline", type=int, help="requests in flight per connection (default 1)")
    group.add_argument("--mix", help="op weights, e.g. put=1,get=3 (ops: put, get, delete)")
    group.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    group.add_argument("--keys", type=int, default=10_000, help="distinct keys (default 10000)")
    group.add_argument(
        "--buckets", type=int, default=8, help="buckets, over every range (default 8)"
    )
    if durations:
        group.add_argument(
            "--duration", type=float, default=10.0, help="measured seconds (default 10)"
        )
        group.add_argument(
            "--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)"
        )
    group.add_argument(
        "--client-procs",
        type=int,
        help=f"load generator processes (default {DEFAULT_CLIENT_PROCS}; 1 for a single connection)",
    )
    group.add_argument("--seed", type=int, default=1, help="seed of the request pool")
    group.add_argument(
        "--to-leaders",
        action="store_true",
        help="each connection uses only buckets its node leads (measures forwarding's cost)",
    )
    net = parser.add_argument_group("network between nodes (with --netns)")
    net.add_argument("--delay", type=float, default=0.0, help="ms added to every link, each way")
    net.add_argument("--jitter", type=float, default=0.0, help="± ms around --delay, uniform")
    net.add_argument("--loss", type=float, default=0.0, help="%% of packets between nodes lost")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m boutique.bench",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    modes = parser.add_subparsers(dest="mode", required=True)

    load = modes.add_parser("load", help="throughput and latency under a load")
    load.add_argument("--scenario", choices=sorted(SCENARIOS), help="a standard scenario")
    load.add_argument("--target", help="host:port,... of running nodes (no local cluster)")
    load.add_argument("--pids", help="pid,... of the --target nodes, in order, to read their CPU")
    _load_args(load)
    _cluster_args(load, nodes=3)

    echo = modes.add_parser(
        "echo", help="the same load against bare servers with no Raft or storage (the floor)"
    )
    echo.add_argument("--scenario", choices=sorted(SCENARIOS), help="a standard scenario")
    echo.add_argument(
        "--loop",
        choices=LOOPS,
        default="trio",
        help="trio: a task per connection, as the store's server; selectors: one loop",
    )
    echo.add_argument(
        "--servers", type=int, default=1, help="bare server processes (3 to match a cluster)"
    )
    _load_args(echo)

    failover = modes.add_parser("failover", help="time for writes to resume after a leader dies")
    failover.add_argument("--trials", type=int, default=10, help="leader kills (default 10)")
    failover.add_argument(
        "--give-up", type=float, default=10.0, help="seconds after which a trial fails (default 10)"
    )
    failover.add_argument(
        "--fault",
        choices=FAULTS,
        default="kill",
        help="kill: SIGKILL the leader; isolate: a silent partition around it (needs --netns)",
    )
    _cluster_args(failover, nodes=3)

    idle = modes.add_parser("idle", help="CPU and memory of many idle buckets")
    idle.add_argument(
        "--buckets", type=int, default=10_000, help="buckets to create (default 10000)"
    )
    idle.add_argument(
        "--seconds", type=float, default=10.0, help="measured idle seconds (default 10)"
    )
    idle.add_argument(
        "--settle",
        type=float,
        default=120.0,
        help="longest wait for the groups to go quiet (default 120 s)",
    )
    idle.add_argument(
        "--no-restart",
        action="store_true",
        help="skip timing the first node's restart at the end",
    )
    _cluster_args(idle, nodes=1)

    big = modes.add_parser(
        "bigbucket", help="one very large bucket: snapshot, follower catch-up, restart"
    )
    big.add_argument("--gb", type=float, default=2.0, help="bucket size in GiB (default 2)")
    big.add_argument("--value-mb", type=float, default=1.0, help="MiB per value (default 1)")
    big.add_argument(
        "--snapshot-every", type=int, help="snapshot_entries (default: half the values)"
    )
    big.add_argument("--dir", type=Path, default=Path.cwd(), help="where the scratch dir goes")
    big.add_argument("--keep", action="store_true", help="keep the scratch directory")

    every = modes.add_parser("all", help="every standard scenario, then a markdown table")
    every.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per load scenario"
    )
    every.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    every.add_argument("--keys", type=int, default=10_000, help="distinct keys (default 10000)")
    every.add_argument("--trials", type=int, default=10, help="failover trials (default 10)")
    every.add_argument("--idle-buckets", type=int, default=10_000, help="buckets of the idle test")
    every.add_argument("--idle-seconds", type=float, default=10.0, help="measured idle seconds")
    every.add_argument(
        "--idle-nodes", type=int, default=1, help="nodes of the idle test (default 1)"
    )
    _cluster_args(every, nodes=3)
    return parser


def load_options(args: argparse.Namespace) -> LoadOptions:
    scenario = SCENARIOS.get(args.scenario) if args.scenario else SCENARIOS["writes64"]
    assert scenario is not None

    def given(value: int | None, default: int) -> int:
        return default if value is None else value

    connections = given(args.connections, scenario.connections)
    pipeline = given(args.pipeline, scenario.pipeline)
    procs = given(args.client_procs, 1 if connections == 1 else scenario.client_procs)
    checks = {
        "--connections": connections >= 1,
        "--pipeline": pipeline >= 1,
        "--value-size": args.value_size >= 1,
        "--keys": args.keys >= 1,
        "--buckets": args.buckets >= 1,
        "--duration": args.duration > 0,
        "--warmup": args.warmup >= 0,
        "--client-procs": procs >= 1,
    }
    wrong = [flag for flag, ok in checks.items() if not ok]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: must be positive")
    return LoadOptions(
        connections=connections,
        pipeline=pipeline,
        mix=parse_mix(args.mix or scenario.mix),
        value_size=args.value_size,
        keys=args.keys,
        buckets=args.buckets,
        duration=args.duration,
        warmup=args.warmup,
        client_procs=procs,
        seed=args.seed,
        to_leaders=args.to_leaders,
    )


def cluster_spec(args: argparse.Namespace, nodes: int | None = None) -> ClusterSpec:
    return ClusterSpec(
        nodes=nodes or args.nodes,
        replication=args.replication,
        tick_interval=args.tick_interval,
        election_ticks=args.election_ticks,
        workdir_parent=args.dir,
        keep=args.keep,
        netns=args.netns,
        tls=args.tls,
    )


def shape_network(args: argparse.Namespace, cluster: BenchCluster) -> list[str]:
    """Apply --delay, --jitter and --loss between the nodes; a line saying what."""
    wanted = args.delay or args.jitter or args.loss
    if not wanted:
        return []
    local = cluster.local
    if not isinstance(local, NetnsCluster):
        raise ValueError("--delay, --jitter and --loss need --netns")
    for name in local.nodes:
        local.lab.set_delay(name, args.delay / 1000, args.jitter / 1000)
        if args.loss:
            local.lab.lose(name, args.loss / 100)
    return [
        f"network:     {args.delay:g} ± {args.jitter:g} ms each way, {args.loss:g}% packet loss"
        " between nodes (clients: direct)"
    ]


# --- modes ---------------------------------------------------------------------------


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


def mode_load(args: argparse.Namespace, ledger: Ledger) -> int:
    options = load_options(args)
    targets = parse_targets(args.target) if args.target else []
    pids = [int(p) for p in args.pids.split(",")] if args.pids else []
    title = f"scenario {args.scenario}" if args.scenario else "load"
    _print([f"boutique benchmark: {title}", *machine_lines()])
    with BenchCluster(ledger, cluster_spec(args), targets=targets, target_pids=pids) as cluster:
        _print([*cluster.describe(), *shape_network(args, cluster), describe_options(options)])
        result = run_load(cluster, options, ledger, label=args.scenario or "load")
        _print(report_lines(result))
    return 0


def mode_echo(args: argparse.Namespace, ledger: Ledger) -> int:
    options = load_options(args)
    title = f"scenario {args.scenario}" if args.scenario else "load"
    servers = "server" if args.servers == 1 else f"{args.servers} servers"
    _print(
        [
            f"boutique benchmark: {title} against {servers} with the {args.loop} loop (the floor)",
            *machine_lines(),
        ]
    )
    with echo_servers(ledger, args.servers, args.loop) as started:
        addresses = [address for address, _ in started]
        pids = [pid for _, pid in started]
        with BenchCluster(ledger, targets=addresses, target_pids=pids) as cluster:
            _print(
                [
                    f"server:      {servers} answering every line at once as an in-memory map"
                    f" ({LOOP_SUMMARY[args.loop]}; no Raft, no storage, no routing);"
                    " see boutique/bench/echo.py",
                    describe_options(options),
                ]
            )
            result = run_load(cluster, options, ledger, label=f"echo {args.scenario or 'load'}")
            _print(report_lines(result))
    return 0


def mode_failover(args: argparse.Namespace, ledger: Ledger) -> int:
    _print(["boutique benchmark: failover", *machine_lines()])
    with BenchCluster(ledger, cluster_spec(args)) as cluster:
        _print(cluster.describe())
        result = run_failover(
            cluster, args.trials, give_up=args.give_up, echo=True, fault=args.fault
        )
        _print(result.report_lines())
    return 0


def mode_idle(args: argparse.Namespace, ledger: Ledger) -> int:
    _print(["boutique benchmark: idle buckets", *machine_lines()])
    with BenchCluster(ledger, cluster_spec(args)) as cluster:
        _print(cluster.describe())
        result = run_idle(
            cluster,
            args.buckets,
            args.seconds,
            settle=args.settle,
            echo=True,
            restart=not args.no_restart,
        )
        _print(result.report_lines())
    return 0


def mode_bigbucket(args: argparse.Namespace, ledger: Ledger) -> int:
    _print(["boutique benchmark: one big bucket", *machine_lines()])
    scratch = Path(tempfile.mkdtemp(prefix="boutique-bigbucket-", dir=args.dir))
    try:
        result = run_bigbucket(
            scratch,
            ledger,
            gb=args.gb,
            value_mb=args.value_mb,
            snapshot_every=args.snapshot_every,
            say=lambda line: print(line, flush=True),
        )
        _print(result.lines())
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def mode_all(args: argparse.Namespace, ledger: Ledger) -> int:
    machine = machine_lines()
    _print(["boutique benchmark: all standard scenarios", *machine])
    loads: list[tuple[Scenario, LoadResult]] = []
    with BenchCluster(ledger, cluster_spec(args)) as cluster:
        setup = [*machine, *cluster.describe()]
        _print(cluster.describe())
        for scenario in SCENARIOS.values():
            options = LoadOptions(
                connections=scenario.connections,
                pipeline=scenario.pipeline,
                mix=parse_mix(scenario.mix),
                keys=args.keys,
                duration=args.duration,
                warmup=args.warmup,
                client_procs=scenario.client_procs,
            )
            _print(["", f"== {scenario.name}: {scenario.summary}", describe_options(options)])
            result = run_load(cluster, options, ledger, label=scenario.name)
            _print(report_lines(result))
            loads.append((scenario, result))
    _print(["", f"== failover: {args.trials} leader kills"])
    with BenchCluster(ledger, cluster_spec(args)) as cluster:
        failover = run_failover(cluster, args.trials, give_up=10.0, echo=True)
        _print(failover.report_lines())
    _print(["", f"== idle: {args.idle_buckets} buckets on {args.idle_nodes} node(s)"])
    with BenchCluster(ledger, cluster_spec(args, nodes=args.idle_nodes)) as cluster:
        _print(cluster.describe())
        idle = run_idle(cluster, args.idle_buckets, args.idle_seconds, settle=120.0, echo=True)
        _print(idle.report_lines())
    _print(["", *markdown_table(args, setup, loads, failover, idle)])
    return 0


def cluster_flags(args: argparse.Namespace, nodes: int = 3) -> str:
    """The cluster flags that differ from the defaults, to repeat in a command."""
    flags = []
    if args.nodes != nodes:
        flags.append(f"--nodes {args.nodes}")
    if args.replication != 3:
        flags.append(f"--replication {args.replication}")
    if args.tick_interval != DEFAULT_TICK:
        flags.append(f"--tick-interval {args.tick_interval:g}")
    if args.election_ticks != DEFAULT_ELECTION_TICKS:
        flags.append(f"--election-ticks {args.election_ticks}")
    return "".join(" " + f for f in flags)


def markdown_table(
    args: argparse.Namespace,
    setup: list[str],
    loads: list[tuple[Scenario, LoadResult]],
    failover: FailoverResult,
    idle: IdleResult,
) -> list[str]:
    """The README table: one row per scenario, with the command that reproduces it."""

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    def cores(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    flags = cluster_flags(args)
    keys = "" if args.keys == 10_000 else f" --keys {args.keys}"
    base = f"--duration {args.duration:g} --warmup {args.warmup:g}{keys}{flags}"
    lines = [
        "| scenario | command | ops/s | p50 ms | p99 ms | p99.9 ms | errors | node CPU"
        " | other load (cores) | bar | met |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---|---|",
    ]
    for scenario, r in loads:
        errors = sum(r.errors.values())
        cpu = " ".join(f"{v:.0f}%" if v is not None else "n/a" for v in r.node_cpu.values())
        lines.append(
            f"| {scenario.name} ({scenario.summary}) |"
            f" `python -m boutique.bench load --scenario {scenario.name} {base}` |"
            f" {r.throughput:,.0f} | {ms(r.percentile_ms(50))} | {ms(r.percentile_ms(99))} |"
            f" {ms(r.percentile_ms(99.9))} | {errors} | {cpu} | {cores(r.others)} |"
            f" {scenario.bar} | {'yes' if scenario.meets(r) else 'no'} |"
        )
    f = failover
    lines.append(
        f"| failover ({len(f.results)} SIGKILLs of a bucket leader under writes; time until"
        f" a PUT sent after the kill succeeds) |"
        f" `python -m boutique.bench failover --trials {args.trials}{flags}` |"
        f" | {ms(f.percentile_ms(50))} | {ms(f.percentile_ms(99))} |"
        f" max {ms(f.percentile_ms(100))} | {f.failed} trials gave up | | |"
        f" writes resume < 1 s (p99) | {'yes' if f.meets_bar() else 'no'} |"
    )
    i = idle
    cpu = " ".join(f"{v:.1f}%" if v is not None else "n/a" for v in i.cpu.values())
    per_bucket = " ".join(f"{v / 1000:.1f} kB" for v in i.per_bucket_bytes().values())
    idle_flags = cluster_flags(argparse.Namespace(**{**vars(args), "nodes": args.idle_nodes}), 1)
    lines.append(
        f"| idle ({i.existing} buckets on {len(i.cpu)} node(s); {per_bucket} of RSS per"
        f" bucket) | `python -m boutique.bench idle --buckets {i.buckets}"
        f" --seconds {args.idle_seconds:g}{idle_flags}` | | | | |"
        f" {sum(n for k, n in i.create_replies.items() if k != 'OK')} failed CREATEs |"
        f" {cpu} | {cores(i.others)} | idle CPU < 5% per node | {'yes' if i.meets_bar() else 'no'} |"
    )
    shown = [" ".join(line.split()) for line in setup if not line.startswith("data:")]
    lines += ["", "Setup: " + "; ".join(shown) + "."]
    return lines


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every ``finally`` runs and ends our processes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Also when started with SIGINT ignored (a background job): Ctrl-C and SIGTERM must
    # reach the ``finally`` blocks that end the nodes and load generators.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    ledger = Ledger()
    modes: dict[str, Callable[[argparse.Namespace, Ledger], int]] = {
        "load": mode_load,
        "echo": mode_echo,
        "failover": mode_failover,
        "idle": mode_idle,
        "all": mode_all,
        "bigbucket": mode_bigbucket,
    }
    started = time.monotonic()
    code = 1
    try:
        code = modes[args.mode](args, ledger)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except (ValueError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"boutique-bench: {exc}", file=sys.stderr)
        code = 1
    finally:
        print(f"{ledger.report()} (total {time.monotonic() - started:.0f} s)", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
