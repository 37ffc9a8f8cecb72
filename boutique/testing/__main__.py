"""Run simulator seeds from the command line.

The whole-cluster simulator (the default) runs complete store nodes — the shipped
host, registry, router, mover and line server — on a simulated network and disks:

    python -m boutique.testing --seeds 500                  # the scenario mix, seeds 0..499
    python -m boutique.testing --seed 17 --scenario crashes # replay one run exactly
    python -m boutique.testing --list-plants                # the planted bugs, one a line
    python -m boutique.testing --plant drop_without_fence --seeds 300

A failing run prints what broke and the one-line command that replays it; the exit
status is non-zero when any run failed. With ``--plant NAME`` one deliberately planted
bug is switched on (``store_sim.plants``) and the sweep stops at the first seed that
catches it: there, a non-zero exit means the simulator found the bug.

``--core`` runs the Raft-core simulator instead (``RawNode``s and the patterns of
``boutique.testing.patterns``), where ``--variant NAME`` swaps in a broken core.

Runs are the same for the same seed only with the same string hashing: the command
sets ``PYTHONHASHSEED=0`` for itself (re-executing once) when it is not set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from boutique.command_line import add_version, plain

from .broken import VARIANTS, Variant
from .simulation import SCENARIOS as CORE_SCENARIOS
from .simulation import run_simulation
from .store_sim.batches import BatchCount
from .store_sim.plants import PLANTS
from .store_sim.run import SCENARIOS
from .store_sim.sweep import default_jobs, sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m boutique.testing",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, help="run just this seed")
    parser.add_argument(
        "--scenario",
        action="append",
        help="limit to these scenarios (repeatable); whole cluster: "
        + ", ".join(sorted(SCENARIOS))
        + "; core: "
        + ", ".join(sorted(CORE_SCENARIOS)),
    )
    parser.add_argument("--plant", choices=sorted(PLANTS), help="switch on a planted bug")
    parser.add_argument("--list-plants", action="store_true", help="print the planted bugs")
    parser.add_argument(
        "--keep-going", action="store_true", help="with --plant: do not stop at the first catch"
    )
    parser.add_argument(
        "--jobs", type=int, default=default_jobs(), help="worker processes (default: %(default)s)"
    )
    parser.add_argument("--core", action="store_true", help="run the Raft-core simulator")
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), help="with --core: run a deliberately broken core"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print every run")
    args = parser.parse_args(argv)
    if args.list_plants:
        for name in PLANTS:
            print(name)
        return 0
    if args.core:
        return _core(args)
    if args.variant:
        parser.error("--variant needs --core (whole-cluster runs use --plant)")
    for name in args.scenario or ():
        if name not in SCENARIOS and name.removeprefix("core:") not in CORE_SCENARIOS:
            parser.error(f"unknown scenario {name!r}: one of {', '.join(sorted(SCENARIOS))}")
    return _whole(args)


def _whole(args: argparse.Namespace) -> int:
    if argv_needs_hashseed():
        return _reexec()
    plant = PLANTS.get(args.plant) if args.plant else None
    scenarios = args.scenario or (list(plant.scenarios) if plant else sorted(SCENARIOS))
    if args.seed is not None:
        seeds: range = range(args.seed, args.seed + 1)
        if args.scenario is None and plant is None:
            scenarios = sorted(SCENARIOS)
    else:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
    started = time.perf_counter()
    runs = failures = 0
    batches = BatchCount()
    stop = plant is not None and not args.keep_going
    for result in sweep(
        seeds, scenarios=scenarios, plant=args.plant, jobs=args.jobs, stop_at_first=stop
    ):
        runs += 1
        batches.merge(result.batches)
        if not result.passed:
            failures += 1
            print(result.summary())
            for event in result.events[-12:]:
                print(f"    {event}")
            print(f"  replay: {result.replay_command()}")
        elif args.verbose or args.seed is not None:
            print(result.summary())
    elapsed = time.perf_counter() - started
    print(f"{runs - failures} passed, {failures} failed ({runs} runs in {elapsed:.1f}s)")
    print(
        f"batch entries applied (on every replica): {batches.entries}, with "
        f"{batches.commands} commands (largest {batches.largest})"
    )
    if plant is not None:
        found = "found" if failures else "NOT found"
        print(f"plant {plant.name} ({plant.rule}): {found} in {runs} seeds")
    return 1 if failures else 0


def argv_needs_hashseed() -> bool:
    return os.environ.get("PYTHONHASHSEED") is None


def _reexec() -> int:
    """Run this command again with string hashing fixed, so a seed replays exactly."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    os.execve(sys.executable, [sys.executable, "-m", "boutique.testing", *sys.argv[1:]], env)
    return 1  # not reached


def _core(args: argparse.Namespace) -> int:
    variant = VARIANTS[args.variant] if args.variant else Variant()
    scenarios = args.scenario or sorted(CORE_SCENARIOS)
    seeds = (
        [args.seed]
        if args.seed is not None
        else range(args.first_seed, args.first_seed + args.seeds)
    )
    started = time.perf_counter()
    runs = failures = 0
    for scenario in scenarios:
        for seed in seeds:
            result = run_simulation(
                seed, scenario, node_class=variant.node_class, raft_class=variant.raft_class
            )
            runs += 1
            if not result.passed:
                failures += 1
                print(result.summary())
                print(f"  replay: {result.replay_command(args.variant)}")
            elif args.verbose or args.seed is not None:
                print(result.summary())
    elapsed = time.perf_counter() - started
    print(f"{runs - failures} passed, {failures} failed ({runs} runs in {elapsed:.1f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
