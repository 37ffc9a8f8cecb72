"""The fence of DROP in the bucket machine (issue 14.1): once its tombstone is applied a
bucket refuses every command and query on every replica, keeps refusing after a
snapshot, and a re-created bucket of the same name is a new group; the registry's
guarded drop only removes the incarnation that was fenced."""

from __future__ import annotations

from typing import Any

import pytest

from boutique.buckets import BucketDropped, BucketMachine, BucketState
from boutique.machine import CommandFailed, MachineHost, encode_value
from boutique.registry import RangeMap, RegistryMachine

Host = MachineHost[Any, Any, Any, Any, Any]


def load(host: Host, *commands: tuple[Any, ...]) -> list[Any]:
    start = host.applied_index + 1
    return [host.apply_entry(i, encode_value(c)) for i, c in enumerate(commands, start)]


def test_a_tombstone_forgets_every_key_and_fences_once() -> None:
    host: Host = MachineHost(BucketMachine())
    replies = load(host, ("put", b"k", b"v"), ("tombstone",), ("tombstone",))
    assert replies == [None, True, False]
    assert host.state.dropped
    assert len(host.state) == 0 and host.state.size == 0


@pytest.mark.parametrize("command", [("put", b"k", b"v"), ("delete", b"k")])
def test_a_tombstoned_bucket_refuses_every_command_on_every_replica(
    command: tuple[Any, ...],
) -> None:
    replicas: list[Host] = [MachineHost(BucketMachine()) for _ in range(3)]
    for host in replicas:
        load(host, ("put", b"k", b"old"), ("tombstone",))
        (reply,) = load(host, command)
        assert reply == CommandFailed(BucketDropped.__name__, "the bucket was dropped")
        assert host.state.dropped and len(host.state) == 0


@pytest.mark.parametrize(
    "query", [("get", b"k"), ("keys", None, None), ("scan", b"", None, None), ("count",)]
)
def test_a_tombstoned_bucket_refuses_every_query(query: tuple[Any, ...]) -> None:
    host: Host = MachineHost(BucketMachine())
    load(host, ("put", b"k", b"v"), ("tombstone",))
    with pytest.raises(BucketDropped):
        host.query(query)


def test_the_tombstone_survives_a_snapshot() -> None:
    host: Host = MachineHost(BucketMachine())
    load(host, ("put", b"k", b"v"), ("tombstone",))
    follower: Host = MachineHost(BucketMachine())
    follower.restore(host.snapshot())
    assert follower.state.dropped
    (reply,) = load(follower, ("put", b"k", b"v2"))
    assert isinstance(reply, CommandFailed) and reply.error_type == "BucketDropped"
    # A live bucket's snapshot is still the flat list, and restores live.
    live = BucketMachine().restore(BucketMachine().snapshot(BucketState()))
    assert not live.dropped


def test_the_registry_drops_only_the_fenced_incarnation() -> None:
    registry: Host = MachineHost(RegistryMachine(RangeMap.from_splits(("h",), (1, 2, 3))))
    (created,) = load(registry, ("create", "pears"))
    old_group = created[1]["group"]
    assert load(registry, ("drop", "pears", "b/pears/99")) == [False]  # not this one
    assert load(registry, ("drop", "pears", old_group)) == [True]
    (again,) = load(registry, ("create", "pears"))
    assert again[1]["group"] != old_group  # a new incarnation, a new group
    # A late second step of the old DROP (a retry, the mover) leaves it alone.
    assert load(registry, ("drop", "pears", old_group)) == [False]
    assert registry.query(("lookup", "pears")) == again[1]
