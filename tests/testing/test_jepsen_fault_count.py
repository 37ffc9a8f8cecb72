"""A Jepsen run measured in faults (``JepsenOptions.fault_count``), without processes:
no clients, no buckets, a cluster with no nodes, and a fault that only records its
calls, and short real waits (faults run in worker threads, which a ``MockClock`` would
jump past). The nemesis injects and heals exactly that many faults, then the working
phase ends after one quiet spell instead of waiting for ``seconds``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from boutique.testing.jepsen import Fault, Jepsen, JepsenOptions, NemesisContext
from boutique.testing.local_cluster import LocalCluster

INTERVAL = 0.05
HOLD = 0.1


class Recorded(Fault):
    kind = "recorded"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        self.calls.append("inject")
        return (), "recorded"

    def heal(self, ctx: NemesisContext) -> None:
        self.calls.append("heal")


def nodeless(tmp_path: Path) -> LocalCluster:
    cluster = LocalCluster(tmp_path, nodes=1)
    cluster.nodes.clear()  # nothing to start, heal or read through
    return cluster


async def test_a_counted_run_injects_exactly_its_faults_then_ends(tmp_path: Path) -> None:
    fault = Recorded()
    options = JepsenOptions(
        seconds=10_000.0,  # not used by a counted run: it ends after its faults
        clients=0,
        buckets=(),
        fault_count=3,
        fault_interval=INTERVAL,
        fault_hold=HOLD,
    )
    started = trio.current_time()
    with trio.fail_after(20):  # a run that waits for ``seconds`` fails here
        result = await Jepsen(nodeless(tmp_path), options, faults=[fault]).arun()
    elapsed = trio.current_time() - started
    assert fault.calls == ["inject", "heal"] * 3
    assert len(result.faults) == 3
    assert all(event.healed_at is not None for event in result.faults)
    # At least four quiet spells (before each fault, and after the last) and three
    # holds of 0.7x to 1.3x went by.
    assert elapsed >= 4 * INTERVAL + 3 * 0.7 * HOLD
    assert result.ok, result.summary()


def test_a_counted_run_needs_a_fault(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fault_count needs at least one fault"):
        Jepsen(nodeless(tmp_path), JepsenOptions(fault_count=2))
    with pytest.raises(ValueError, match="fault_count needs at least one fault"):
        Jepsen(nodeless(tmp_path), JepsenOptions(faults=("kill",), fault_count=0))
