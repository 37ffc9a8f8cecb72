"""Run simulator seeds from the command line.

    python -m boutique.testing --seeds 5000                 # every scenario, seeds 0..4999
    python -m boutique.testing --seed 17 --scenario chaos   # replay one run exactly
    python -m boutique.testing --seeds 100 --scenario figure8 --variant commit_old_term

A failing run prints the one-line command that replays it. ``--variant NAME`` runs a
deliberately broken core from ``boutique.testing.broken`` instead of the real one (to
replay how a check catches it, or to measure how many seeds it takes); with a variant,
failing runs are the expected outcome.
"""

from __future__ import annotations

import argparse
import sys
import time

from boutique.command_line import add_version, plain

from .broken import VARIANTS, Variant
from .simulation import SCENARIOS, run_simulation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m boutique.testing",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds per scenario")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, help="run just this seed")
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        action="append",
        help="limit to these scenarios (repeatable)",
    )
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), help="run a deliberately broken core"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print every run")
    args = parser.parse_args(argv)
    variant = VARIANTS[args.variant] if args.variant else Variant()
    scenarios = args.scenario or sorted(SCENARIOS)
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
