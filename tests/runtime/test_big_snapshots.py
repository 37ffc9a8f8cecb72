"""Large snapshots in a running host: built a piece per turn while writes go on, recorded
at the index the state was frozen at, and sent to a lagging follower in messages far
smaller than the frame limit although the snapshot is larger than it.

The hosts here run in-process on 127.0.0.1 ports the test picks; sizes are tiny
(slices of a few KiB, frames of 16 KiB) so the tests stay fast."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from boutique import buckets
from boutique.buckets import BucketMachine
from boutique.machine import MachineHost, encode_value
from boutique.runtime.group import Applied
from boutique.runtime.host import HostSettings, RaftHost
from boutique.storage.sqlite import SqliteStorage
from boutique.testing.local_cluster import free_ports

SECRET = b"s" * 32
CHUNK_ROW = 1000


def make_host(node_id: int, path: Path, ports: list[int], settings: HostSettings) -> RaftHost:
    peers = {i + 1: ("127.0.0.1", port) for i, port in enumerate(ports) if i + 1 != node_id}
    return RaftHost(
        node_id,
        secret=SECRET,
        cluster_name="big-snapshots",
        peers=peers,
        listen=("127.0.0.1", ports[node_id - 1]),
        open_storage=lambda: SqliteStorage(path, snapshot_chunk_bytes=CHUNK_ROW),
        machine_for=lambda group: BucketMachine(),
        settings=settings,
    )


async def until(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    with trio.fail_after(timeout):
        while not (result := condition()):
            await trio.sleep(0.005)
    return result


async def put(host: RaftHost, key: bytes, value: bytes) -> None:
    outcome = await host.propose("b", encode_value(("put", key, value)), 5.0)
    assert outcome == Applied(None)


async def test_writes_are_applied_while_a_big_snapshot_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buckets, "SNAPSHOT_SLICE_BYTES", 2048)
    settings = HostSettings(tick_interval=0.01, snapshot_entries=150)
    db = tmp_path / "n1.db"
    host = make_host(1, db, free_ports(1), settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        group = host.open_group("b", (1,), bootstrap_voters=True, campaign=True)
        # One entry per write: the log must reach the snapshot threshold of entries.
        group.batching = False
        await until(lambda: group.leader == 1)
        async with trio.open_nursery() as writers:
            for i in range(148):
                writers.start_soon(put, host, b"k%03d" % i, bytes([i]) * 1000)
        frozen = dict(group.host.state.items)
        base = group.host.applied_index
        # By now (or with the next write) the log reaches the snapshot threshold; the
        # build then takes one piece per turn (~75 of them), and the writes after it
        # must not wait for it.
        later = [(b"k000", b"changed"), (b"late", b"added"), (b"k001", b"changed too")]
        for key, value in later:
            await put(host, key, value)
        recorded = group.storage.snapshot().meta.index
        writes_applied_at = group.host.applied_index
        assert recorded < writes_applied_at - 2, "the snapshot stalled the writes behind it"
        await until(lambda: group.storage.snapshot().meta.index > 0)
        snapshot = group.storage.snapshot()
        assert host.counters.snapshot_pieces > 20
        nursery.cancel_scope.cancel()
    # The snapshot is the state as of its index, not of when it was finished: the
    # writes applied after that index are not in it.
    assert base <= snapshot.meta.index <= base + 1
    expected = frozen | dict(later[: snapshot.meta.index - base])
    restored: MachineHost[Any, Any, Any, Any, Any] = MachineHost(BucketMachine())
    restored.restore(snapshot.data)
    assert restored.applied_index == snapshot.meta.index
    assert dict(restored.state.items) == expected
    with sqlite3.connect(db) as conn:
        sizes = [size for (size,) in conn.execute("SELECT length(data) FROM snapshot_chunks")]
    conn.close()
    assert len(sizes) > 20 and max(sizes) <= CHUNK_ROW
    # A restart loads the chunked snapshot and the log after it.
    again = make_host(1, db, free_ports(1), settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        group = again.open_group("b", (1,))
        assert group.storage.snapshot() == snapshot
        await until(lambda: group.host.applied_index >= writes_applied_at)
        assert group.host.query(("get", b"late")) == b"added"
        assert group.host.query(("get", b"k001")) == b"changed too"
        nursery.cancel_scope.cancel()


async def test_a_lagging_follower_gets_a_snapshot_larger_than_a_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    max_frame = 16 * 1024
    settings = HostSettings(
        tick_interval=0.01,
        snapshot_entries=20,
        snapshot_chunk_size=4096,
        max_frame=max_frame,
    )
    ports = free_ports(3)
    hosts = [make_host(i, tmp_path / f"n{i}.db", ports, settings) for i in (1, 2, 3)]
    async with trio.open_nursery() as nursery:
        for host in hosts[:2]:
            await nursery.start(host.run)
        leader = hosts[0].open_group("b", (1, 2, 3), bootstrap_voters=True, campaign=True)
        hosts[1].open_group("b", (1, 2, 3), bootstrap_voters=True)
        await until(lambda: leader.leader == 1)
        for i in range(80):
            await put(hosts[0], b"k%03d" % i, bytes([i]) * 1000)
        await until(lambda: len(leader.storage.snapshot().data) > 4 * max_frame)
        assert leader.storage.first_index() > 10  # compacted: node 3 needs the snapshot
        await nursery.start(hosts[2].run)
        lagging = hosts[2].open_group("b", (1, 2, 3), bootstrap_voters=True)

        def whole_restore(self: object, data: object) -> None:
            raise AssertionError("the snapshot was decoded at the end, not as it came")

        # The follower decodes the chunks as they arrive, never the whole at install
        # (no other host here restores anything).
        monkeypatch.setattr(MachineHost, "restore", whole_restore)
        await until(lambda: lagging.storage.snapshot().meta.index > 0)
        size = len(lagging.storage.snapshot().data)
        # ... and writes them ahead as they come: one sync per chunk or so, not one
        # sync of the whole snapshot at the end.
        assert hosts[2].counters.syncs >= size // 4096
        await until(lambda: lagging.host.applied_index >= leader.host.applied_index)
        assert dict(lagging.host.state.items) == dict(leader.host.state.items)
        assert hosts[2].transport is not None
        assert (
            hosts[2].transport.stats.frames_received > len(leader.storage.snapshot().data) // 4096
        )
        nursery.cancel_scope.cancel()
