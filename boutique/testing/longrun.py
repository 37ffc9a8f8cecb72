"""The long run: the Jepsen-style harness against a local cluster for as long as asked.

    python -m boutique.testing.longrun --seconds 600 --nodes 3
    python -m boutique.testing.longrun --seconds 60 --faults kill_leader,isolate_leader
    python -m boutique.testing.longrun --seconds 30 --unsafe-local-reads   # must FAIL
    python -m boutique.testing.longrun --seconds 300 --churn 2   # DROP/re-CREATE churn

It starts ``--nodes`` real ``boutique-server`` processes on free loopback ports (data
under ``--workdir``, a temporary directory by default), prints the setup, lets clients
work while the nemesis injects faults, prints progress now and then, and stops by
itself after ``--seconds``. Then it heals the cluster, runs every check and prints the
summary: operations, ok / fail / unknown counts, faults injected by kind, recovery time,
anomalies found and acknowledged writes lost. The exit status is 0 when the run passed,
1 when it found anomalies or the cluster did not recover.

Ctrl-C (or SIGTERM) stops the work early and still heals, checks and prints the
summary; a second one aborts (once any restart under way has finished). Either way
every node process this command started is ended, by PID, before it exits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from boutique.testing.history import Outcome
from boutique.testing.jepsen import (
    BUCKETS,
    CHURN_BUCKETS,
    FAULTS,
    Jepsen,
    JepsenOptions,
    JepsenResult,
    make_faults,
)
from boutique.testing.local_cluster import LocalCluster


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m boutique.testing.longrun",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="how long clients work")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--replication", type=int, default=3)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--keys-per-bucket", type=int, default=2)
    parser.add_argument(
        "--key-lifetime", type=float, default=5.0, help="seconds before fresh keys are used"
    )
    parser.add_argument(
        "--faults",
        help=f"comma-separated, injected in turn, from: {', '.join(FAULTS)} ('none' for a "
        "calm run). Default: all of them; membership only with more nodes than replicas",
    )
    parser.add_argument("--fault-interval", type=float, default=2.0, help="quiet seconds")
    parser.add_argument("--fault-hold", type=float, default=3.0, help="seconds per fault")
    parser.add_argument("--op-timeout", type=float, default=5.0)
    parser.add_argument("--request-timeout", type=float, default=2.0, help="server side")
    parser.add_argument("--tick-interval", type=float, default=0.02)
    parser.add_argument("--recovery-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, help="for the choices of clients and nemesis")
    parser.add_argument("--workdir", type=Path, help="data and logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir")
    parser.add_argument(
        "--unsafe-local-reads",
        action="store_true",
        help="plant the stale-read bug in the nodes, to see the harness catch it",
    )
    parser.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"drop and re-create bucket(s) {', '.join(CHURN_BUCKETS)} every ~SECONDS while "
        "clients use them (0: no churn)",
    )
    parser.add_argument("--progress", type=float, default=30.0, help="seconds between lines")
    parser.add_argument("--quiet", action="store_true", help="do not log each fault")
    args = parser.parse_args(argv)
    if args.faults is None:
        # Moving a replica needs a node that does not hold the range already.
        spare = args.nodes > args.replication
        args.faults = ",".join(f for f in FAULTS if spare or f != "membership")
    faults = tuple(f for f in args.faults.split(",") if f and f != "none")
    try:
        make_faults(faults)
    except ValueError as exc:
        parser.error(str(exc))
    args.fault_names = faults
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    return args


def setup_lines(cluster: LocalCluster, options: JepsenOptions, args: argparse.Namespace) -> str:
    lines = [
        f"boutique long run: {options.seconds:g} s, seed {options.seed}",
        f"workdir {cluster.workdir} (config {cluster.config_path})",
        f"cluster: {len(cluster.nodes)} nodes, replication {args.replication}, "
        f"tick {args.tick_interval:g} s, request timeout {args.request_timeout:g} s"
        + (", PLANTED BUG unsafe_local_reads" if args.unsafe_local_reads else ""),
    ]
    for name, node in cluster.nodes.items():
        lines.append(
            f"  {name}: client 127.0.0.1:{node.client_port} peer 127.0.0.1:{node.peer_port} "
            f"pid {node.pid} log {node.log_path}"
        )
    lines.append(
        f"workload: {options.clients} clients, buckets {', '.join(options.buckets)}, "
        f"{options.keys_per_bucket} keys each rotating every {options.key_lifetime:g} s, "
        f"reads {options.read_fraction:.0%} deletes {options.delete_fraction:.0%}, "
        f"op timeout {options.op_timeout:g} s"
        + (
            f"; churn: DROP/CREATE {', '.join(options.churn_buckets)} every "
            f"~{options.churn_interval:g} s"
            if options.churn_buckets
            else ""
        )
    )
    lines.append(
        f"nemesis: {', '.join(options.faults) or 'none'}; a fault every "
        f"~{options.fault_interval + options.fault_hold:g} s, held ~{options.fault_hold:g} s"
    )
    return "\n".join(lines)


async def report_progress(jepsen: Jepsen, every: float) -> None:
    while True:
        await trio.sleep(every)
        ops = jepsen.history.operations()
        outcomes = {o: sum(1 for op in ops if op.outcome is o) for o in Outcome}
        print(
            f"[{jepsen.clock():7.1f} s] operations {len(ops)}: ok {outcomes[Outcome.OK]} "
            f"fail {outcomes[Outcome.FAIL]} unknown {outcomes[Outcome.UNKNOWN]}; "
            f"faults {len(jepsen.events)}",
            flush=True,
        )


async def run_reporting(jepsen: Jepsen, progress: float) -> JepsenResult | None:
    """The run, with the first SIGINT/SIGTERM as "stop and check" and the second as
    "abort" (None)."""
    stop = trio.Event()
    result: JepsenResult | None = None
    async with trio.open_nursery() as nursery:

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for _ in received:
                    if stop.is_set():
                        nursery.cancel_scope.cancel()
                        return
                    print("stopping: healing and checking (again to abort)", flush=True)
                    stop.set()

        async def work() -> None:
            nonlocal result
            result = await jepsen.arun(stop)
            nursery.cancel_scope.cancel()

        nursery.start_soon(signals)
        if progress > 0:
            nursery.start_soon(report_progress, jepsen, progress)
        nursery.start_soon(work)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = JepsenOptions(
        seconds=args.seconds,
        clients=args.clients,
        buckets=BUCKETS,
        keys_per_bucket=args.keys_per_bucket,
        key_lifetime=args.key_lifetime,
        op_timeout=args.op_timeout,
        faults=args.fault_names,
        fault_interval=args.fault_interval,
        fault_hold=args.fault_hold,
        recovery_timeout=args.recovery_timeout,
        seed=args.seed,
        churn_buckets=CHURN_BUCKETS if args.churn > 0 else (),
        churn_interval=args.churn or 2.0,
    )
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="boutique-longrun-")) if temporary else args.workdir
    started = time.monotonic()
    try:
        with LocalCluster(
            workdir,
            nodes=args.nodes,
            replication=args.replication,
            tick_interval=args.tick_interval,
            request_timeout=args.request_timeout,
            unsafe_local_reads=args.unsafe_local_reads,
        ) as cluster:
            cluster.start()
            print(setup_lines(cluster, options, args), flush=True)
            log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
            jepsen = Jepsen(cluster, options, log=log)
            result = trio.run(run_reporting, jepsen, args.progress)
    except KeyboardInterrupt:  # before the run began, or while it was setting up
        result = None
    if result is None:
        print(f"aborted; every node process was ended; logs in {workdir}", file=sys.stderr)
        return 130
    print()
    print(result.summary())
    print(f"wall time {time.monotonic() - started:.1f} s")
    if result.ok and temporary and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"node logs and data kept in {workdir}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
