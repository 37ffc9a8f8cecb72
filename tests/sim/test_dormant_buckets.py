"""Dormant buckets (``runtime.dormant``) on the shipped node, in the simulator.

A CREATE only records the bucket on its founding replicas: no group, no storage rows,
no election. The first request, or the first Raft message from a replica that
materialized it, founds the group; a DROP of a never-used bucket still commits its
tombstone in the bucket's own log; a restart (with or without a registry snapshot
covering the creates) leaves unused buckets dormant and used ones on disk, opened
from their storage on first touch. Each test runs a 3-node cluster on a virtual clock (``trio.testing.MockClock``).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from boutique.runtime.group import GroupRuntime
from boutique.runtime.node import META_GROUP, Node
from boutique.testing.store_sim.clients import SimConnection
from boutique.testing.store_sim.world import Knobs, SimWorld, cluster_config
from boutique.wire import RawReply, request_line

NODES = (1, 2, 3)


def run_world(
    body: Callable[[SimWorld], Awaitable[None]], *, snapshot_entries: int = 10_000
) -> None:
    async def main() -> None:
        config = cluster_config(3, snapshot_entries=snapshot_entries)
        async with trio.open_nursery() as nursery:
            knobs = Knobs(snapshot_entries=snapshot_entries)
            world = SimWorld(config, random.Random(7), nursery=nursery, knobs=knobs)
            for node_id in NODES:
                await world.start(node_id)
            await body(world)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def node(world: SimWorld, node_id: int) -> Node:
    found = world.processes[node_id].node
    assert found is not None, f"n{node_id} is down"
    return found


async def ask(world: SimWorld, node_id: int, *words: bytes) -> RawReply:
    """One request through ``node_id``, retried while the cluster is still electing."""
    for _ in range(100):
        conn = SimConnection(world, node_id)
        reply = await conn.request(request_line(words[0], *words[1:]))
        await conn.aclose()
        if not reply.end.startswith(b"ERR UNAVAILABLE"):
            return reply
        await trio.sleep(0.2)
    raise AssertionError(f"{words!r} never answered")


async def create(world: SimWorld, name: str) -> str:
    reply = await ask(world, 1, b"CREATE", name.encode())
    assert reply.end == b"OK", reply
    await until(lambda: all(name in node(world, n).catalog() for n in NODES))
    return node(world, 1).catalog()[name].group


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    with trio.fail_after(within):
        while not condition():
            await trio.sleep(0.05)


def is_dormant(world: SimWorld, node_id: int, group_id: str) -> bool:
    n = node(world, node_id)
    assert n.storage is not None
    return group_id in n.dormant and group_id not in n.groups and group_id not in n.storage.groups()


def test_a_created_bucket_is_dormant_on_every_replica() -> None:
    async def body(world: SimWorld) -> None:
        group = await create(world, "apples")
        await trio.sleep(2.0)  # well past an election timeout: nobody founds it
        assert all(is_dormant(world, n, group) for n in NODES)
        status = node(world, 2).status(group_limit=10)
        assert status["group_counts"]["dormant"] == 1

    run_world(body)


def test_the_first_request_materializes_it_and_peers_follow_by_message() -> None:
    async def body(world: SimWorld) -> None:
        group = await create(world, "apples")
        requested: list[int] = []
        for n in NODES:
            original = node(world, n).materialize

            def spy(
                group_id: str, *, by_request: bool, n: int = n, original: Any = original
            ) -> Any:
                if by_request:
                    requested.append(n)
                return original(group_id, by_request=by_request)

            node(world, n).materialize = spy  # type: ignore[method-assign]
        assert (await ask(world, 2, b"PUT", b"apples", b"k", b"v")).end == b"OK"
        reply = await ask(world, 3, b"GET", b"apples", b"k")
        assert reply.items == (b"v",) and reply.end == b"OK"
        await until(lambda: all(group in node(world, n).groups for n in NODES))
        # Founded from the bootstrap state: every replica agrees on one leader and term.
        leaders = {node(world, n).groups[group].node.raft.lead for n in NODES}
        assert len(leaders) == 1 and 0 not in leaders
        # Node 2 was asked first; whoever was not asked at all woke by a message.
        assert requested and requested[0] == 2
        assert set(NODES) - set(requested), "some replica must have woken by a message"
        assert not any(group in node(world, n).dormant for n in NODES)

    run_world(body)


def test_a_drop_of_a_dormant_bucket_commits_its_fence_in_the_bucket_log() -> None:
    fenced_when_closed: dict[int, bool] = {}

    async def body(world: SimWorld) -> None:
        group = await create(world, "pears")
        assert all(is_dormant(world, n, group) for n in NODES)
        for n in NODES:
            target = node(world, n)
            close = target.close_group

            def spy(group_id: str, n: int = n, target: Node = target, close: Any = close) -> None:
                if group_id == group:
                    runtime: GroupRuntime | None = target.groups.get(group_id)
                    fenced_when_closed[n] = runtime is not None and bool(
                        getattr(runtime.host.state, "dropped", False)
                    )
                close(group_id)

            target.close_group = spy  # type: ignore[method-assign]
        assert (await ask(world, 3, b"DROP", b"pears")).end == b"OK"
        assert (await ask(world, 1, b"GET", b"pears", b"k")).end == b"NOT FOUND"
        await until(lambda: not any(group in node(world, n).groups for n in NODES))
        assert not any(group in node(world, n).dormant for n in NODES)

    run_world(body)
    # The tombstone was committed in the bucket's own group before the registry step:
    # the replica that served it closed a fenced group.
    assert any(fenced_when_closed.values()), fenced_when_closed


@pytest.mark.parametrize("snapshot_entries", [10_000, 8])
def test_a_restart_keeps_unused_buckets_dormant_and_used_ones_stored(
    snapshot_entries: int,
) -> None:
    """With 8, registry snapshots cover the creates: the restart finds the buckets by
    reconciling the catalog, not by replaying their ``create`` entries."""

    async def body(world: SimWorld) -> None:
        used = await create(world, "used")
        assert (await ask(world, 1, b"PUT", b"used", b"k", b"v1")).end == b"OK"
        unused = [await create(world, f"idle{i}") for i in range(12)]
        await until(lambda: all(used in node(world, n).groups for n in NODES))
        term_before = node(world, 1).groups[used].node.raft.term
        await trio.sleep(1.0)  # let the writes be synced everywhere
        world.crash(1)
        await world.start(1)
        restarted = node(world, 1)
        await until(lambda: all(g in restarted.dormant for g in unused))
        # Materialized before: left on disk until touched (nothing per bucket at the
        # restart), never dormant, never re-founded.
        assert used in restarted.unloaded and used not in restarted.dormant
        assert used not in restarted.groups
        assert all(is_dormant(world, 1, g) for g in unused)
        # And it serves: the used bucket keeps its data, an unused one wakes up.
        reply = await ask(world, 1, b"GET", b"used", b"k")
        assert reply.items == (b"v1",)
        # Opened from its storage on that touch: its term and vote as they were.
        assert used in restarted.groups and used not in restarted.unloaded
        assert restarted.groups[used].node.raft.term >= term_before
        assert (await ask(world, 1, b"PUT", b"idle3", b"k", b"v")).end == b"OK"
        assert META_GROUP in restarted.groups

    run_world(body, snapshot_entries=snapshot_entries)
