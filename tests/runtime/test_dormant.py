"""The dormancy rule (``runtime.dormant``), pinned: only a founding replica of a bucket
that never moved, holding no rows of its group, may found the group on first touch.
Anything else starts empty and is caught up by the leader, as before dormancy.

The node here is the production ``Node`` on memory storage, its registry fed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boutique.config import parse_config
from boutique.machine import encode_value
from boutique.placement import NodeInfo
from boutique.raft import Message
from boutique.registry import RegistryMachine, plan_ranges
from boutique.registry_state import BucketInfo
from boutique.runtime.dormant import DormantBuckets, may_sleep
from boutique.runtime.host_core import MAX_OPENS_PER_TURN, _Step
from boutique.runtime.node import META_GROUP, Node
from boutique.storage.memory import MemoryNodeStorage
from boutique.testing.config_text import node_tables

CONFIG = """
cluster_name = "t"
secret = "a secret for this test"
replication = 3
""" + node_tables((1, 2, 3, 4))


def _node(tmp_path: Path, node_id: int = 1) -> Node:
    config = parse_config(CONFIG, base_dir=tmp_path)
    node = Node(config, config.nodes[node_id - 1])
    node.storage = MemoryNodeStorage()
    node.open_groups()
    return node


def _apply(node: Node, *commands: tuple[Any, ...]) -> None:
    """Commit ``commands`` in the meta group as one applied batch."""
    meta = node.groups[META_GROUP]
    meta.on_applied.clear()
    for command in commands:
        index = meta.host.applied_index + 1
        data = encode_value(command)
        meta.on_applied.append((index, data, meta.host.apply_entry(index, data)))
    node.on_applied(meta, False)
    meta.on_applied.clear()


def test_the_rule() -> None:
    info = BucketInfo("apples", "b/apples/1", "a-z", (1, 2, 3), 1)
    assert may_sleep(1, info) and may_sleep(3, info)
    assert not may_sleep(4, info)  # not a replica
    moved = BucketInfo("apples", "b/apples/1", "a-z", (1, 4, 3), 1, moved=True)
    assert not may_sleep(4, moved)  # the move's target: caught up by the leader
    assert not may_sleep(1, moved)  # replicas are no longer the founding members


def test_the_record_keeps_the_founding_entry() -> None:
    dormant = DormantBuckets()
    first = BucketInfo("apples", "b/apples/1", "a-z", (1, 2, 3), 1)
    dormant.add(first)
    dormant.add(BucketInfo("apples", "b/apples/1", "a-z", (1, 4, 3), 1, moved=True))
    assert dormant.wake("b/apples/1") == first
    assert dormant.wake("b/apples/1") is None and len(dormant) == 0


def test_a_move_marks_the_entry_and_the_mark_survives_wire_and_snapshot() -> None:
    nodes = [NodeInfo(i, f"n{i}", "127.0.0.1", 4000 + i, 5000 + i) for i in (1, 2, 3, 4)]
    machine = RegistryMachine(None, nodes)
    state = machine.initial_state()
    machine.apply(state, ("set_ranges", plan_ranges((), [1, 2, 3], 3).to_wire()))
    _, state = machine.apply(state, ("create", "apples"))
    info = state.buckets["apples"]
    assert not info.moved and "moved" not in info.to_wire()  # as it always was
    reply, state = machine.apply(state, ("set_bucket_replicas", "apples", info.group, (1, 2, 3)))
    assert reply is True and not state.buckets["apples"].moved  # same replicas: no move
    machine.apply(state, ("set_bucket_replicas", "apples", info.group, (1, 4, 3)))
    moved = state.buckets["apples"]
    assert moved.moved
    assert BucketInfo.from_wire(moved.to_wire()) == moved
    assert machine.restore(machine.snapshot(state)).buckets["apples"].moved


def test_a_created_bucket_is_dormant_and_founds_on_first_touch(tmp_path: Path) -> None:
    node = _node(tmp_path)
    _apply(node, ("create", "apples"))
    group = node.catalog()["apples"].group
    assert group in node.dormant and group not in node.groups
    assert node.storage is not None and group not in node.storage.groups()
    woken = node.materialize(group, by_request=False)
    assert woken is not None and woken.storage.last_index() > 0  # founded
    assert not woken.campaign_when_ready  # a peer's message woke it: that peer campaigns
    assert group not in node.dormant
    assert node.materialize(group, by_request=True) is None  # once only


def test_a_moved_bucket_without_rows_starts_empty_not_founded(tmp_path: Path) -> None:
    """Node 1 is listed as a replica of a bucket that moved, but has no rows of its
    group (its registry snapshot is from before the move took it away and back). It
    must not found the group: its members are no longer the founding ones."""
    node = _node(tmp_path)
    state = node.registry_state()
    assert state is not None
    _apply(node, ("create", "apples"))
    info = node.catalog()["apples"]
    node.dormant.discard(info.group)
    state.buckets["apples"] = BucketInfo(
        info.name, info.group, info.range_id, (1, 4, 3), info.created_seq, moved=True
    )
    node.on_applied(node.groups[META_GROUP], True)  # as after installing a snapshot
    assert info.group not in node.dormant
    group = node.groups[info.group]
    assert group.storage.last_index() == 0  # empty: the leader catches it up
    assert not group.campaign_when_ready


def test_a_restored_catalog_makes_unused_founding_buckets_dormant(tmp_path: Path) -> None:
    """After a registry snapshot (restart, or from the leader) the creates are not
    replayed: reconciling the catalog must still record them dormant, never open them
    empty (nobody would ever found such a group: it could never elect)."""
    node = _node(tmp_path, node_id=2)
    names = ("apples", "ham", "pears", "yams")
    _apply(node, *[("create", name) for name in names])
    for name in names:
        node.dormant.discard(node.catalog()[name].group)
    node.on_applied(node.groups[META_GROUP], True)
    mine = [info for info in node.catalog().values() if 2 in info.replicas]
    assert mine and len(mine) < len(names)  # four ranges over four nodes
    for info in node.catalog().values():
        assert (info.group in node.dormant) == (info in mine)
        assert info.group not in node.groups


def test_a_dropped_dormant_bucket_is_forgotten(tmp_path: Path) -> None:
    node = _node(tmp_path)
    _apply(node, ("create", "apples"))
    group = node.catalog()["apples"].group
    _apply(node, ("drop", "apples", group))
    assert group not in node.dormant and group not in node.groups
    assert node.materialize(group, by_request=True) is None


def test_a_drop_closes_every_local_group_of_the_name(tmp_path: Path) -> None:
    """Found through the node's name index, not a scan of every group: the dropped
    incarnation, and a leftover of an older one, are both closed; other buckets stay."""
    node = _node(tmp_path)
    _apply(node, ("create", "apples"), ("create", "avocados"))
    first = node.catalog()["apples"].group
    other = node.catalog()["avocados"].group
    assert node.materialize(other, by_request=False) is not None
    _apply(node, ("drop", "apples", first))
    _apply(node, ("create", "apples"))
    second = node.catalog()["apples"].group
    assert node.materialize(second, by_request=False) is not None
    node.open_group(first, (1, 2, 3), bootstrap_voters=True)  # a leftover, reopened
    _apply(node, ("drop", "apples", second))
    assert first not in node.groups and second not in node.groups
    assert other in node.groups
    assert node.storage is not None and first not in node.storage.groups()


def _restarted(tmp_path: Path, before: Node, *replayed: tuple[Any, ...]) -> Node:
    """A new process of node 1 on ``before``'s storage, its registry replaying
    ``replayed`` (here the registry's entries are applied by hand, not logged)."""
    config = parse_config(CONFIG, base_dir=tmp_path)
    node = Node(config, config.nodes[0])
    node.storage = before.storage
    node.open_groups()
    _apply(node, *replayed)
    return node


def test_a_restart_leaves_stored_groups_on_disk_until_touched(tmp_path: Path) -> None:
    """Opening every stored group at a restart cost about 0.5 ms a group (and an
    election each); now each is opened from its storage on first touch, as it was."""
    before = _node(tmp_path)
    _apply(before, ("create", "apples"), ("create", "pears"))
    used = before.catalog()["apples"].group
    group = before.materialize(used, by_request=True)
    assert group is not None
    stored_entries = group.storage.last_index()
    node = _restarted(tmp_path, before, ("create", "apples"), ("create", "pears"))
    assert used in node.unloaded and used not in node.groups and used not in node.dormant
    assert node.catalog()["pears"].group in node.dormant  # never used: still dormant
    assert node.status()["group_counts"]["unloaded"] == 1
    opened = node.materialize(used, by_request=False)  # a peer's message
    assert opened is not None and node.groups[used] is opened
    assert opened.storage.last_index() == stored_entries  # its own state, not re-founded
    assert used not in node.unloaded


def test_a_dropped_unloaded_group_is_deleted_without_being_opened(tmp_path: Path) -> None:
    before = _node(tmp_path)
    _apply(before, ("create", "apples"))
    group = before.catalog()["apples"].group
    assert before.materialize(group, by_request=True) is not None
    node = _restarted(tmp_path, before, ("create", "apples"))
    assert group in node.unloaded
    _apply(node, ("drop", "apples", group))
    assert group not in node.unloaded and group not in node.groups
    assert node.storage is not None and group not in node.storage.groups()


def test_a_turn_opens_a_bounded_number_of_groups_for_peers_messages(tmp_path: Path) -> None:
    """After a restart, peers may wake thousands of unloaded groups at once; one turn
    opening them all (about 0.5 ms each) starved the transport until peers suspected
    the node, woke more groups, and the cluster never settled (20,000 used buckets).
    A turn opens ``MAX_OPENS_PER_TURN`` at most; messages for the rest are dropped,
    as lost messages are, and their senders send them again."""
    before = _node(tmp_path)
    names = [f"b{i:03}" for i in range(MAX_OPENS_PER_TURN + 10)]
    _apply(before, *[("create", name) for name in names])
    groups = [before.catalog()[name].group for name in names]
    for group in groups:
        assert before.materialize(group, by_request=False) is not None
    node = _restarted(tmp_path, before, *[("create", name) for name in names])
    assert set(groups) <= node.unloaded
    batch: dict[str, list[Message]] = {group: [] for group in groups}
    node._handle(_Step(2, batch))
    assert len(node.unloaded) == 10
    node._handle(_Step(2, batch))  # the same turn: nothing more
    assert len(node.unloaded) == 10
    node.counters.turns += 1  # the next turn opens the rest
    node._handle(_Step(2, batch))
    assert not node.unloaded and set(groups) <= set(node.groups)
