"""The simulator's checks can fail: the randomized sweep catches each broken core.

Every variant in ``boutique.testing.broken`` breaks one rule of Raft. For each, the
same seeds the sweep runs (``test_simulation.py``: seeds 0..SEEDS-1 of the scenarios
that can expose it) must produce at least two failing runs, and each failure must be
the kind of finding that rule protects against. Two, not one: a variant caught by a
single lucky seed would slip through after any change to the scenarios' randomness.
The sweep stops at the second failure, so a well-caught variant costs a few runs.
"""

from __future__ import annotations

import os

import pytest

from boutique.testing.broken import VARIANTS
from boutique.testing.simulation import SimResult, run_simulation

SEEDS = int(os.environ.get("BOUTIQUE_SIM_SEEDS", "100"))
CAUGHT_AT_LEAST = 2

# variant -> (scenarios that can expose it, what the finding must mention)
EXPECTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "commit_old_term": (("figure8",), ("leader completeness", "state machine safety")),
    "forget_vote": (("split_votes", "crashes"), ("election safety",)),
    "truncate_on_overlap": (
        ("lossy", "chaos"),
        (
            "acknowledged",
            "state machine safety",
            "leader completeness",
            "linearizab",
            "no progress",
        ),
    ),
    "read_without_readindex": (("partitions", "calm"), ("read safety", "linearizab")),
    "read_index_without_quorum": (("partitions",), ("read safety", "linearizab")),
    "read_index_survives_term_change": (("partitions",), ("read safety", "linearizab")),
    "no_conf_change_fence": (("membership",), ("one membership change at a time",)),
}


def _failures(variant: str) -> list[SimResult]:
    broken = VARIANTS[variant]
    scenarios, _ = EXPECTED[variant]
    found: list[SimResult] = []
    for seed in range(SEEDS):
        for scenario in scenarios:
            try:
                result = run_simulation(
                    seed, scenario, node_class=broken.node_class, raft_class=broken.raft_class
                )
            except RuntimeError as exc:
                # The core's own sanity checks tripping also counts as caught.
                pytest.fail(f"variant {variant} crashed the core instead of being caught: {exc}")
            if not result.passed:
                found.append(result)
                if len(found) >= CAUGHT_AT_LEAST:
                    return found
    return found


def test_every_variant_is_expected() -> None:
    assert set(EXPECTED) == set(VARIANTS)


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_broken_variant_is_caught(variant: str) -> None:
    found = _failures(variant)
    assert len(found) >= CAUGHT_AT_LEAST, (
        f"{variant}: {len(found)} of {SEEDS} seeds caught it, need {CAUGHT_AT_LEAST}"
    )
    _, kinds = EXPECTED[variant]
    for result in found:
        finding = (result.error or "") + ("" if result.linearizability.ok else " linearizability")
        assert any(kind in finding.lower() for kind in kinds), finding
        print(f"{variant}: caught by {result.replay_command(variant)}: {finding[:200]}")
