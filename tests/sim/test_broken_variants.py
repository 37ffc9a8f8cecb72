"""The simulator's checks can fail: each deliberately broken core is caught.

Every variant in ``boutique.testing.broken`` breaks one rule of Raft. For each, a sweep
over the scenarios that can expose it must produce at least one failing run, and the
failure must be the kind of finding that rule protects against. Committing an old-term
entry by counting needs the precise sequence of Figure 8, which ``test_figure8.py``
scripts through the same simulator.
"""

from __future__ import annotations

import pytest

from boutique.testing.broken import VARIANTS
from boutique.testing.simulation import SimResult, run_simulation

# variant -> (scenarios that can expose it, what the finding must mention)
EXPECTED = {
    "forget-vote": (("split_votes", "crashes"), ("election safety",)),
    "truncate-on-overlap": (
        ("lossy", "chaos"),
        (
            "acknowledged",
            "state machine safety",
            "leader completeness",
            "linearizab",
            "no progress",
        ),
    ),
    "read-without-readindex": (("partitions", "calm"), ("linearizab",)),
}

MAX_SEEDS = 100


def _first_failure(variant: str) -> SimResult | None:
    broken = VARIANTS[variant]
    scenarios, _ = EXPECTED[variant]
    for seed in range(MAX_SEEDS):
        for scenario in scenarios:
            try:
                result = run_simulation(
                    seed, scenario, node_class=broken.node_class, raft_class=broken.raft_class
                )
            except RuntimeError as exc:
                # The core's own sanity checks tripping also counts as caught.
                pytest.fail(f"variant {variant} crashed the core instead of being caught: {exc}")
            if not result.passed:
                return result
    return None


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_broken_variant_is_caught(variant: str) -> None:
    result = _first_failure(variant)
    assert result is not None, f"{variant}: no seed out of {MAX_SEEDS} caught it"
    finding = (result.error or "") + ("" if result.linearizability.ok else " linearizability")
    _, kinds = EXPECTED[variant]
    assert any(kind in finding.lower() for kind in kinds), finding
    print(f"{variant}: caught by {result.replay_command(variant)}: {finding[:200]}")
