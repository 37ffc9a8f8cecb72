"""Idle groups go quiet, and wake for work or when their leader is gone.

A node hosting thousands of buckets can only idle cheaply if idle groups send nothing
and need no ticks. These tests drive a simulated group through quiet periods.
"""

from __future__ import annotations

from typing import Any

from boutique.raft import Role
from boutique.testing.cluster import SimCluster, SimOptions


def _quiet_cluster(seed: int = 1) -> SimCluster:
    cluster = SimCluster(seed, SimOptions(quiesce=True))
    for _ in range(200):
        cluster.step()
    return cluster


def _leader(cluster: SimCluster) -> Any:
    leader = cluster.leader()
    assert leader is not None
    return leader


def test_idle_group_sends_nothing() -> None:
    cluster = _quiet_cluster()
    assert all(sim.raft.quiesced for sim in cluster.nodes.values())
    sent = cluster.network.sent
    for _ in range(500):
        cluster.step()
    assert cluster.network.sent == sent


def test_proposal_wakes_the_group_and_commits() -> None:
    cluster = _quiet_cluster()
    leader = _leader(cluster)
    replies: list[tuple[str, Any]] = []
    cluster.submit_write(leader.id, ("put", "k", "v"), lambda s, d: replies.append((s, d)))
    for _ in range(20):
        cluster.step()
    assert replies == [("ok", None)]
    assert all(sim.host.query(("get", "k")) == "v" for sim in cluster.nodes.values())
    for _ in range(100):
        cluster.step()
    assert all(sim.raft.quiesced for sim in cluster.nodes.values()), "quiet again once idle"


def test_read_at_quiet_follower_is_served() -> None:
    cluster = _quiet_cluster()
    follower = next(s for s in cluster.nodes.values() if s.raft.role is Role.FOLLOWER)
    replies: list[tuple[str, Any]] = []
    context = cluster.next_read_context()
    cluster.submit_read(follower.id, ("get", "k"), lambda s, d: replies.append((s, d)), context)
    for _ in range(20):
        cluster.step()
    assert replies == [("ok", None)]


def test_quiet_leader_crash_is_noticed_by_suspicion() -> None:
    cluster = _quiet_cluster()
    old = _leader(cluster)
    cluster.crash(old.id)
    for _ in range(60):
        cluster.step()
    new = _leader(cluster)
    assert new.id != old.id
    assert new.raft.term > old.persisted.term


def test_without_suspicion_a_quiet_group_would_never_notice() -> None:
    """The check above can fail: with suspicion disabled, nobody campaigns."""
    cluster = _quiet_cluster()
    old = _leader(cluster)
    cluster._suspect_lost_leaders = lambda: None  # type: ignore[method-assign]
    cluster.crash(old.id)
    for _ in range(300):
        cluster.step()
    assert cluster.leader() is None
