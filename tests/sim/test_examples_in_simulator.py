"""The example machines replicated by the simulated cluster, through crashes and cuts.

Every replica must end in the same state, and that state must be explained by the
acknowledged commands plus some of the ones whose outcome was unknown.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from boutique.examples import Counter, QueueWithLength
from boutique.testing.cluster import SimCluster, SimOptions
from boutique.testing.network import LinkFaults


def _run(
    machine: Any, commands: list[tuple[Any, ...]], seed: int
) -> tuple[SimCluster, list[tuple[Any, str, Any]]]:
    cluster = SimCluster(seed, SimOptions(snapshot_every=15), machine=machine)
    cluster.network.faults = LinkFaults(drop=0.05, max_delay=3)
    rng = random.Random(seed)
    outcomes: list[tuple[Any, str, Any]] = []
    pending = list(commands)
    waiting: list[bool] = []
    for step in range(3000):
        if step % 200 == 50:
            cluster.crash(rng.choice(sorted(cluster.nodes)))
        if step % 200 == 120:
            for node in cluster.nodes:
                cluster.restart(node)
        if pending and not waiting:
            leader = cluster.leader()
            if leader is not None:
                command = pending[0]
                waiting.append(True)

                def done(status: str, detail: Any, command: Any = command) -> None:
                    waiting.clear()
                    outcomes.append((command, status, detail))
                    if status == "ok" or status == "unknown":
                        pending.remove(command)

                cluster.submit_write(leader.id, command, done)
        cluster.step()
        if not pending and step > 500:
            break
    for node in cluster.nodes:
        cluster.restart(node)
    for _ in range(300):
        cluster.step()
    return cluster, outcomes


@pytest.mark.parametrize("seed", range(5))
def test_counter_replicas_agree(seed: int) -> None:
    commands = [("incr", i) for i in range(1, 31)]
    cluster, outcomes = _run(Counter, commands, seed)
    values = {sim.host.query("value") for sim in cluster.nodes.values()}
    assert len(values) == 1, values
    (value,) = values
    acknowledged = sum(cmd[1] for cmd, status, _ in outcomes if status == "ok")
    maybe = sum(cmd[1] for cmd, status, _ in outcomes if status == "unknown")
    assert acknowledged <= value <= acknowledged + maybe
    assert any(status == "ok" for _, status, _ in outcomes)


@pytest.mark.parametrize("seed", range(5))
def test_queue_replicas_agree_and_keep_fifo_order(seed: int) -> None:
    commands: list[tuple[Any, ...]] = [("push", i) for i in range(20)] + [("pop",)] * 5
    cluster, outcomes = _run(QueueWithLength, commands, seed)
    items = {tuple(sim.host.query("items")) for sim in cluster.nodes.values()}
    assert len(items) == 1, items
    popped = [detail for cmd, status, detail in outcomes if cmd == ("pop",) and status == "ok"]
    # Whatever was popped came out in the order it was pushed.
    assert popped == sorted(popped)
    (remaining,) = items
    assert list(remaining) == sorted(remaining)
    assert {sim.host.query("length") for sim in cluster.nodes.values()} == {len(remaining)}
