"""A batch of registry entries applied in one turn: a bucket created in it is founded
(bootstrapped) here on its first touch, whatever else the batch holds.

The registry state is already past the whole batch when the node looks at it; once,
an entry before the create in the same batch (a `node_started` record, common at a
cluster's birth) reconciled the catalog first and opened the new bucket as a
non-founder: an empty group with no members, which could never elect, so the bucket
answered `ERR UNAVAILABLE not the leader` forever.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from boutique.config import parse_config
from boutique.machine import encode_value
from boutique.runtime.group import GroupRuntime
from boutique.runtime.node import META_GROUP, Node
from boutique.storage.memory import MemoryNodeStorage
from boutique.testing.config_text import node_tables

CONFIG = """
cluster_name = "t"
secret = "a secret for this test"
replication = 3
splits = ["h", "o", "v"]
""" + node_tables((1, 2, 3))


def started_node(tmp_path: Path) -> tuple[Node, GroupRuntime]:
    """Node 1 on memory storage with its groups open, and its meta group."""
    config = parse_config(CONFIG, base_dir=tmp_path)
    node = Node(config, config.nodes[0])
    node.storage = MemoryNodeStorage()
    node.open_groups()
    return node, node.groups[META_GROUP]


def test_a_bucket_created_in_a_batch_after_a_node_started_record_is_founded(
    tmp_path: Path,
) -> None:
    node, meta = started_node(tmp_path)
    batch = [("node_started", 2), ("create", "apples")]
    meta.on_applied.clear()
    first = meta.host.applied_index + 1
    for index, command in enumerate(batch, start=first):
        data = encode_value(command)
        meta.on_applied.append((index, data, meta.host.apply_entry(index, data)))
    node.on_applied(meta, False)
    group_id = node.catalog()["apples"].group
    # Dormant (founded on first touch), not opened empty as a non-founder.
    assert group_id in node.dormant and group_id not in node.groups
    bucket = node.materialize(group_id, by_request=True)
    assert bucket is not None and node.groups[group_id] is bucket
    # Founded: its log starts with the founding membership (a non-founder's is empty
    # until a leader fills it, and this group has no other way to get a leader).
    assert bucket.storage.last_index() > 0
    assert bucket.campaign_when_ready  # a request touched it: it campaigns


def test_buckets_created_by_one_create_many_entry_are_hosted_without_a_full_reconcile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, meta = started_node(tmp_path)

    def full_reconcile(*, close: bool) -> None:
        raise AssertionError("a batch of creates reconciled the whole catalog")

    # A reconcile looks at every bucket: at 100,000 buckets, per batch, it would be
    # the per-CREATE cost that grows with the bucket count.
    monkeypatch.setattr(node, "_reconcile_all", full_reconcile)
    meta.on_applied.clear()
    index = meta.host.applied_index + 1
    data = encode_value(("create_many", ["apples", "bad/name", "pears", "apples"]))
    meta.on_applied.append((index, data, meta.host.apply_entry(index, data)))
    node.on_applied(meta, False)
    catalog = node.catalog()
    assert sorted(catalog) == ["apples", "pears"]
    for name in ("apples", "pears"):
        group_id = catalog[name].group
        # Every node replicates every range here: dormant, founded on first touch.
        assert group_id in node.dormant and group_id not in node.groups
