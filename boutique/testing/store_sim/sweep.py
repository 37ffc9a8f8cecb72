"""Sweeps of whole-cluster seeds: many runs, in parallel processes, with one verdict.

``sweep(seeds, ...)`` runs each seed (its scenario picked round-robin from the given
ones, so a sweep covers the mix) and returns the results; with ``stop_at_first`` it
stops at the first failing seed, which is how a planted bug is hunted. ``jobs`` > 1
spreads seeds over worker processes; results come back in seed order, so the output
of a sweep does not depend on how many workers ran it.

What it must never do: report a sweep as passed when a run failed or did not finish.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from boutique.testing.broken import VARIANTS, Variant
from boutique.testing.simulation import run_simulation

from .plants import PLANTS
from .run import SCENARIOS, RunResult, run_seed

REPLAY_HASHSEED = "0"
"""String hashing of every simulated run (sets of strings are iterated in hash order)."""
CORE = "core:"
"""Prefix of a scenario of the Raft-core simulator in a sweep."""


def pick_scenario(seed: int, scenarios: Sequence[str]) -> str:
    return scenarios[seed % len(scenarios)]


def _run(job: tuple[int, str, str | None]) -> RunResult:
    seed, scenario, plant = job
    if scenario.startswith(CORE):
        return _run_core(seed, scenario, plant)
    return run_seed(seed, scenario, plant=plant)


def _run_core(seed: int, scenario: str, plant: str | None) -> RunResult:
    """A seed of the Raft-core simulator, with the plant's broken core if any."""
    variant_name = PLANTS[plant].variant if plant else None
    variant = VARIANTS[variant_name] if variant_name else Variant()
    core = run_simulation(
        seed,
        scenario.removeprefix(CORE),
        node_class=variant.node_class,
        raft_class=variant.raft_class,
    )
    result = RunResult(seed, scenario, plant, operations=core.operations)
    result.replay = core.replay_command(variant_name)
    if not core.passed:
        result.violations.append(core.summary())
    return result


def sweep(
    seeds: Iterable[int],
    *,
    scenarios: Sequence[str] | None = None,
    plant: str | None = None,
    jobs: int = 1,
    stop_at_first: bool = False,
) -> Iterator[RunResult]:
    """Run ``seeds``; yields each result in seed order."""
    names = list(scenarios or sorted(SCENARIOS))
    work = [(seed, pick_scenario(seed, names), plant) for seed in seeds]
    if jobs <= 1 and hashing_is_fixed():
        for job in work:
            result = _run(job)
            yield result
            if stop_at_first and not result.passed:
                return
        return
    # Workers start fresh (spawn): no trio state or patched module is inherited, and
    # string hashing is fixed in them, so a seed runs as its replay line runs it.
    context = multiprocessing.get_context("spawn")
    with (
        _fixed_hashing_for_children(),
        ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool,
    ):
        # Bounded look-ahead: enough to keep every worker busy, few to throw away
        # when a planted bug is found early.
        pending = []
        queue = iter(work)
        for job in queue:
            pending.append(pool.submit(_run, job))
            if len(pending) >= 2 * jobs:
                break
        while pending:
            result = pending.pop(0).result()
            yield result
            if stop_at_first and not result.passed:
                for future in pending:
                    future.cancel()
                return
            job_next = next(queue, None)
            if job_next is not None:
                pending.append(pool.submit(_run, job_next))


def hashing_is_fixed() -> bool:
    """Whether this process hashes strings as a replay line's process does."""
    return os.environ.get("PYTHONHASHSEED") == REPLAY_HASHSEED


@contextlib.contextmanager
def _fixed_hashing_for_children() -> Iterator[None]:
    was = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = REPLAY_HASHSEED
    try:
        yield
    finally:
        if was is None:
            del os.environ["PYTHONHASHSEED"]
        else:
            os.environ["PYTHONHASHSEED"] = was


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))
