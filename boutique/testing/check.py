"""``boutique-check``: the Jepsen-style checks against a cluster you started yourself.

    boutique-check --config config/cluster.toml                  60 s, then a verdict
    boutique-check --config config/cluster.toml --seconds 300 --faults partition,transfer

Start the nodes of a config in terminals of your own (``boutique-server --config FILE
--node NAME``), then run this. Clients PUT, GET and DELETE keys of four buckets of its
own (``apples.check``, ``hats.check``, ``oranges.check``, ``zebras.check``: one per range
of the default split) through random nodes while a nemesis injects the faults it can
without owning the processes: partitions and isolated leaders through the ``FAULT``
command (when the config has ``[testing] fault_injection = true``), leader transfers,
and replica moves (``membership``, with more nodes than replicas). Kill and pause
faults are yours to make by hand meanwhile, in the nodes' terminals (Ctrl-C, Ctrl-Z).

It prints progress while it runs, then heals, checks that every bucket is served
through every node, reads every key and decides: the history must be linearizable and
no acknowledged write lost. The exit status is 0 for PASS, 1 for FAIL, 2 when it could
not run. Its buckets are dropped at the end when the run passed (``--keep-buckets``
keeps them); it refuses to start if one already exists, so your data is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from boutique.client import ClientError, NotFound
from boutique.config import ConfigError, load_config

from .external_cluster import ExternalCluster
from .jepsen import FAULTS, Jepsen, JepsenOptions, make_faults
from .longrun import run_reporting

BUCKETS = ("apples.check", "hats.check", "oranges.check", "zebras.check")
WITHOUT_PROCESSES = ("partition", "isolate_leader", "transfer", "membership")
"""The faults a check can make in a cluster whose processes it does not own."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="boutique-check",
        description="Run the Jepsen-style workload, nemesis and checks against a cluster "
        "whose nodes you started yourself, and print the verdict.",
        epilog="The faults it can make: " + ", ".join(WITHOUT_PROCESSES) + ".",
    )
    parser.add_argument("--config", type=Path, required=True, help="the running cluster's config")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long clients work")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument(
        "--faults",
        help="comma-separated, injected in turn ('none' for a calm run). Default: partition,"
        "isolate_leader and transfer with fault_injection on, else transfer",
    )
    parser.add_argument("--fault-interval", type=float, default=2.0, help="quiet seconds")
    parser.add_argument("--fault-hold", type=float, default=3.0, help="seconds per fault")
    parser.add_argument("--op-timeout", type=float, default=8.0, help="client's own timeout")
    parser.add_argument("--seed", type=int, help="for the choices of clients and nemesis")
    parser.add_argument("--progress", type=float, default=10.0, help="seconds between lines")
    parser.add_argument("--keep-buckets", action="store_true", help="do not drop them at the end")
    parser.add_argument("--quiet", action="store_true", help="do not print each fault")
    args = parser.parse_args(argv)
    for flag in ("seconds", "clients", "fault_interval", "fault_hold", "op_timeout"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be above 0")
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    return args


def choose_faults(cluster: ExternalCluster, wanted: str | None) -> tuple[str, ...]:
    """The faults asked for, or the default; ``ValueError`` for one it cannot make."""
    if wanted is None:
        if cluster.fault_injection:
            return ("partition", "isolate_leader", "transfer")
        return ("transfer",)
    names = tuple(name for name in wanted.split(",") if name and name != "none")
    for name in names:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(WITHOUT_PROCESSES)}")
        if name not in WITHOUT_PROCESSES:
            raise ValueError(
                f"{name} needs the node processes, which this check did not start; "
                "kill or pause nodes by hand meanwhile instead"
            )
        if name in ("partition", "isolate_leader") and not cluster.fault_injection:
            raise ValueError(
                f"{name} needs the FAULT command: set [testing] fault_injection = true in "
                f"{cluster.config_path} and restart the nodes"
            )
    return names


def existing_buckets(cluster: ExternalCluster) -> set[str]:
    """Which of the check's buckets exist already (asked of the first node that answers)."""
    failures = []
    for name in cluster.nodes:
        try:
            with cluster.client(name, timeout=5.0) as client:
                return set(client.buckets()) & set(BUCKETS)
        except ClientError as exc:
            failures.append(f"{name}: {exc}")
    raise ConnectionError("no node of the config answers: " + "; ".join(failures))


def drop_buckets(cluster: ExternalCluster) -> None:
    for name in cluster.nodes:
        try:
            with cluster.client(name, timeout=10.0) as client:
                for bucket in BUCKETS:
                    with contextlib.suppress(NotFound):
                        client.drop(bucket)
            return
        except ClientError:
            continue


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cluster = ExternalCluster(load_config(args.config))
        faults = choose_faults(cluster, args.faults)
        make_faults(faults)
        clash = existing_buckets(cluster)
    except (ConfigError, ValueError, ConnectionError) as exc:
        print(f"boutique-check: {exc}", file=sys.stderr)
        return 2
    if clash:
        print(
            f"boutique-check: bucket(s) {', '.join(sorted(clash))} exist already; drop them "
            "(they are a previous check's) or check another cluster",
            file=sys.stderr,
        )
        return 2
    options = JepsenOptions(
        seconds=args.seconds,
        clients=args.clients,
        buckets=BUCKETS,
        op_timeout=args.op_timeout,
        faults=faults,
        fault_interval=args.fault_interval,
        fault_hold=args.fault_hold,
        recovery_timeout=30.0,
        seed=args.seed,
    )
    nodes = ", ".join(f"{n.name} {n.host}:{n.client_port}" for n in cluster.nodes.values())
    print(f"boutique check: {args.seconds:g} s against {args.config} (seed {args.seed})")
    print(f"nodes: {nodes}")
    print(f"workload: {args.clients} clients on buckets {', '.join(BUCKETS)}")
    print(f"nemesis: {', '.join(faults) or 'none'}", flush=True)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    started = time.monotonic()
    result = trio.run(run_reporting, Jepsen(cluster, options, log=log), args.progress)
    if result is None:
        print("aborted", file=sys.stderr)
        return 130
    print()
    print(result.summary())
    print(f"wall time {time.monotonic() - started:.1f} s")
    if result.ok and not args.keep_buckets:
        drop_buckets(cluster)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
