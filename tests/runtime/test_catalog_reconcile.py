"""The catalog's reconciliation as tables (``runtime.catalog_reconcile``): which bucket
groups a node opens and closes for a registry state, with no node and no trio."""

from __future__ import annotations

from boutique.registry_state import BucketInfo, Move, RangeMap, RegistryState
from boutique.runtime.catalog_reconcile import (
    Reconciliation,
    drops_cut_short,
    not_ours,
    reconcile,
)

APPLE = BucketInfo("apple", "b/apple/1", "a-l", (1, 2, 3), 1)
FIG = BucketInfo("fig", "b/fig/2", "a-l", (2, 3, 4), 2)
PEAR = BucketInfo("pear", "b/pear/3", "m-z", (2, 3, 4), 3)


def registry(*buckets: BucketInfo, moves: tuple[Move, ...] = ()) -> RegistryState:
    return RegistryState(
        ranges=RangeMap.from_splits(("m",), (1, 2, 3)),
        buckets={b.name: b for b in buckets},
        moves={m.range_id: m for m in moves},
    )


def test_a_node_opens_what_it_replicates_or_receives_and_closes_only_when_told() -> None:
    state = registry(APPLE, FIG, PEAR, moves=(Move("m-z", 4, 1),))
    # Node 1 replicates apple and receives pear (moving from 4 to 1); fig is not its.
    hosted = ["b/fig/2", "b/old/9"]
    assert reconcile(state, 1, hosted, [], close=False) == Reconciliation((APPLE, PEAR), ())
    assert reconcile(state, 1, hosted, [], close=True) == Reconciliation(
        (APPLE, PEAR), ("b/fig/2", "b/old/9")
    )


def test_a_quarantined_group_is_not_reopened_but_is_closed_when_not_ours() -> None:
    state = registry(APPLE)
    assert reconcile(state, 1, [], ["b/apple/1"], close=True) == Reconciliation((), ())
    assert reconcile(state, 1, [], ["b/fig/2"], close=True) == Reconciliation(
        (APPLE,), ("b/fig/2",)
    )


def test_a_dormant_bucket_is_hosted_already_and_forgotten_only_when_told() -> None:
    state = registry(APPLE, FIG)
    # apple is dormant here (recorded, never founded): nothing to open for it; a dormant
    # record of a bucket no longer placed here is forgotten, not closed (it has no rows).
    dormant = ["b/apple/1", "b/gone/7"]
    assert reconcile(state, 1, [], [], close=False, dormant=dormant) == Reconciliation((), ())
    assert reconcile(state, 1, [], [], close=True, dormant=dormant) == Reconciliation(
        (), (), ("b/gone/7",)
    )


def test_after_a_drop_or_move_only_that_buckets_other_groups_close() -> None:
    hosted = ["b/apple/1", "b/apple/0", "b/applesauce/5", "b/fig/2"]
    assert not_ours(registry(APPLE), 1, "apple", hosted) == ["b/apple/0"]
    assert not_ours(registry(), 1, "apple", hosted) == ["b/apple/1", "b/apple/0"]  # dropped
    moved = BucketInfo("apple", "b/apple/1", "a-l", (2, 3, 4), 1)
    assert not_ours(registry(moved), 1, "apple", hosted) == ["b/apple/1", "b/apple/0"]


def test_drops_cut_short_are_the_listed_incarnations_this_node_leads() -> None:
    catalog = {"apple": APPLE, "fig": FIG}
    fenced = ["b/apple/1", "b/fig/1", "b/pear/3", "b/fig/2"]
    # fig/1 is an older incarnation, pear is not listed (any more, or yet).
    assert drops_cut_short(fenced, catalog, lambda group: True) == [APPLE, FIG]
    assert drops_cut_short(fenced, catalog, lambda group: group != "b/fig/2") == [APPLE]
