"""Figure 8 of the Raft paper (§5.4.2), played through the simulator step by step.

A leader must not commit an entry of an earlier term by counting replicas: a later
leader may still overwrite it. The paper's exact sequence is scripted here with cuts,
crashes and explicit campaigns, and run twice: the real core must stay safe, and
``CommitsOldTermByCounting`` must be caught. (The ``figure8`` scenario's randomized
``Figure8`` pattern reaches the same corner by seed; ``test_broken_variants.py`` checks
that the sweep catches it too.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from boutique.raft import Role
from boutique.raft.core import Raft
from boutique.testing.broken import CommitsOldTermByCounting
from boutique.testing.cluster import SimCluster, SimOptions
from boutique.testing.invariants import InvariantViolation
from boutique.testing.network import LinkFaults

ALL = {1, 2, 3, 4, 5}


def _cluster(raft_class: type[Raft]) -> SimCluster:
    # Elections happen only when the script calls them; entries trickle one per
    # message so an old entry can reach a majority ahead of the new leader's no-op.
    options = SimOptions(
        pool=5,
        voters=5,
        election_tick=1000,
        pre_vote=False,
        check_quorum=False,
        max_entries_per_msg=1,
        max_inflight_msgs=1,
    )
    cluster = SimCluster(8, options, raft_class=raft_class)
    cluster.network.faults = LinkFaults(min_delay=1, max_delay=1)
    return cluster


def _until(cluster: SimCluster, condition: Callable[[], bool], limit: int = 100) -> None:
    for _ in range(limit):
        if condition():
            return
        cluster.step()
    raise AssertionError("the script did not reach its next stage")


def _elect(cluster: SimCluster, node: int) -> None:
    for _ in range(5):
        cluster.nodes[node].raft_node().campaign()
        for _ in range(10):
            cluster.step()
            if cluster.nodes[node].up and cluster.nodes[node].raft.role is Role.LEADER:
                return
    raise AssertionError(f"node {node} could not be elected")


def _play_figure8(raft_class: type[Raft]) -> None:
    cluster = _cluster(raft_class)
    replies: list[Any] = []

    def record(status: str, detail: Any) -> None:
        replies.append((status, detail))

    nodes = cluster.nodes
    # (a) S1 leads term 2 and replicates entry A (index 3) to S2 only, then crashes.
    _elect(cluster, 1)
    _until(cluster, lambda: all(nodes[n].host.applied_index >= 2 for n in ALL))
    cluster.network.partition({1, 2}, {3, 4, 5})
    cluster.submit_write(1, ("put", "x", "A"), record)
    index_a = nodes[1].raft.log.last_index()
    _until(cluster, lambda: nodes[2].storage.last_index() >= index_a)
    cluster.crash(1)
    # (b) S5 wins term 3 with S3 and S4, appends at index 3, and crashes before
    #     anything it appended leaves it.
    _elect(cluster, 5)
    cluster.network.isolate(5, ALL)
    cluster.step()
    assert nodes[5].storage.last_index() >= index_a
    cluster.crash(5)
    cluster.network.heal()
    # (c) S1 returns and wins term 4 with S2, S3, S4; it replicates A to S3 and S4.
    #     The moment it counts A as committed, it is cut off and crashes.
    cluster.restart(1)
    cluster.network.isolate(5, ALL)
    _elect(cluster, 1)
    _until(cluster, lambda: nodes[1].up and nodes[1].raft.log.committed >= index_a)
    cluster.network.heal()
    cluster.network.isolate(1, ALL)
    cluster.crash(1)
    # (d) S5 returns. If A was committed while only term-2 copies sat on S3 and S4,
    #     S5 (last term 3) wins their votes and overwrites index 3.
    cluster.restart(5)
    for _ in range(3):
        cluster.nodes[5].raft_node().campaign()
        for _ in range(30):
            cluster.step()
    cluster.network.heal()
    cluster.restart(1)
    for _ in range(100):
        cluster.step()


def test_figure8_real_core_stays_safe() -> None:
    """§5.4.2: the leader of term 4 commits A only through an entry of its own term."""
    _play_figure8(Raft)


def test_figure8_catches_commit_by_counting_old_term() -> None:
    """The broken core commits A by counting and S5 later overwrites it."""
    with pytest.raises(InvariantViolation, match=r"state machine safety|leader completeness"):
        _play_figure8(CommitsOldTermByCounting)
