"""The mover's decisions as tables (``runtime.mover_plan``), from registry states built
by hand: the meta group's membership, draining a leaving node, a move bucket by bucket,
DROPs cut short. No node, no router, no trio."""

from __future__ import annotations

import pytest

from boutique.raft import ChangeType, ConfState
from boutique.registry_state import BucketInfo, Move, NodeInfo, Range, RangeMap, RegistryState
from boutique.runtime.mover_plan import (
    PARALLEL_BUCKETS,
    ChangeMeta,
    StepBuckets,
    Warn,
    WriteRegistry,
    bucket_step,
    finish_drops,
    meta_change,
    plan,
)
from boutique.runtime.requests import ChangeMembership, GroupLeaderView

ADD_LEARNER, ADD_VOTER, REMOVE = ChangeType.ADD_LEARNER, ChangeType.ADD_VOTER, ChangeType.REMOVE


def node(n: int, *, leaving: bool = False) -> NodeInfo:
    return NodeInfo(n, f"n{n}", "127.0.0.1", 7000 + n, 8000 + n, leaving)


def state(
    nodes: dict[int, bool],
    ranges: dict[str, tuple[int, ...]] | None = None,
    buckets: tuple[BucketInfo, ...] = (),
    moves: tuple[Move, ...] = (),
) -> RegistryState:
    """Nodes (id -> leaving), ranges "a-l" and "m-z" (on 1, 2, 3 unless given)."""
    spans = {"a-l": ("", "m"), "m-z": ("m", None)}
    replicas = ranges or {"a-l": (1, 2, 3), "m-z": (1, 2, 3)}
    return RegistryState(
        ranges=RangeMap(Range(rid, *spans[rid], reps) for rid, reps in replicas.items()),
        nodes={n: node(n, leaving=leaving) for n, leaving in nodes.items()},
        buckets={b.name: b for b in buckets},
        moves={m.range_id: m for m in moves},
    )


def conf(voters: set[int], learners: set[int] | None = None) -> ConfState:
    return ConfState(frozenset(voters), frozenset(learners or set()))


def bucket(name: str, replicas: tuple[int, ...] = (1, 2, 3), range_id: str = "a-l") -> BucketInfo:
    return BucketInfo(name, f"bucket/{name}/1", range_id, replicas, 1)


THREE = {1: False, 2: False, 3: False}


@pytest.mark.parametrize(
    ("nodes", "membership", "wanted", "expected"),
    [
        pytest.param(THREE, conf({1, 2, 3}), 3, None, id="in-line"),
        pytest.param(
            {**THREE, 4: False}, conf({1, 2, 3}), 3, ChangeMeta(ADD_LEARNER, 4), id="a-joiner"
        ),
        pytest.param(
            {**THREE, 4: False, 5: False},
            conf({1, 2, 3}, {4}),
            3,
            ChangeMeta(ADD_LEARNER, 5),
            id="joiners-first-one-at-a-time",
        ),
        pytest.param(THREE, conf({1, 2}, {3}), 3, ChangeMeta(ADD_VOTER, 3), id="voters-wanted"),
        pytest.param(
            {**THREE, 4: False}, conf({1, 2, 3}, {4}), 3, None, id="enough-voters-the-rest-learn"
        ),
        pytest.param(
            {1: False, 2: False, 3: True, 4: False},
            conf({1, 2, 3}, {4}),
            3,
            ChangeMeta(ADD_VOTER, 4),
            id="a-leaving-voter-is-replaced",
        ),
        pytest.param(
            {1: False, 2: False}, conf({1, 2, 3}), 3, ChangeMeta(REMOVE, 3), id="gone-is-removed"
        ),
        pytest.param(
            {n: False for n in range(1, 8)},
            conf({1, 2, 3, 4, 5}, {6, 7}),
            7,
            None,
            id="never-more-than-five-voters",
        ),
    ],
)
def test_the_meta_group_follows_the_registry_one_change_at_a_time(
    nodes: dict[int, bool], membership: ConfState, wanted: int, expected: ChangeMeta | None
) -> None:
    assert meta_change(state(nodes), membership, wanted) == expected


def test_a_leaving_nodes_ranges_move_to_the_least_loaded_nodes() -> None:
    registry = state({1: False, 2: False, 3: True, 4: False, 5: False})
    assert plan(registry, conf({1, 2, 4, 5}, {3}), 3) == [
        WriteRegistry(("start_move", "a-l", 3, 4), "moving range a-l from n3 to node 4"),
        WriteRegistry(("start_move", "m-z", 3, 5), "moving range m-z from n3 to node 5"),
    ]


def test_a_range_already_moving_is_left_to_its_move() -> None:
    move = Move("a-l", 3, 4)
    registry = state({1: False, 2: False, 3: True, 4: False}, moves=(move,))
    assert plan(registry, conf({1, 2, 4}), 3) == [
        WriteRegistry(("start_move", "m-z", 3, 4), "moving range m-z from n3 to node 4"),
        WriteRegistry(("finish_move", "a-l"), "range a-l moved from node 3 to node 4"),
    ]


def test_no_node_can_take_a_range_from_a_leaving_node() -> None:
    registry = state({1: False, 2: False, 3: True})
    assert plan(registry, conf({1, 2}), 3) == [
        Warn("no node can take range a-l from n3"),
        Warn("no node can take range m-z from n3"),
    ]


def test_a_drained_node_leaves_the_meta_group_then_the_registry() -> None:
    ranges = {"a-l": (1, 2, 4), "m-z": (1, 2, 4)}
    registry = state({1: False, 2: False, 3: True, 4: False}, ranges)
    assert plan(registry, conf({1, 2, 4}, {3}), 3) == [ChangeMeta(REMOVE, 3)]
    assert plan(registry, conf({1, 2, 4}), 3) == [
        WriteRegistry(("remove_node", 3), "node n3 has left the cluster")
    ]
    # Still listed by a bucket, or part of a move: not drained yet.
    listed = state({1: False, 2: False, 3: True, 4: False}, ranges, (bucket("b", (1, 2, 3)),))
    assert plan(listed, conf({1, 2, 4}), 3) == []


def test_a_move_steps_its_buckets_a_batch_at_a_time_then_finishes() -> None:
    move = Move("a-l", 3, 4)
    many = tuple(bucket(f"b{i}") for i in range(PARALLEL_BUCKETS + 2))
    moved = bucket("done", (1, 2, 4))
    other = bucket("zz", range_id="m-z")
    registry = state({**THREE, 4: False}, buckets=(moved, *many, other), moves=(move,))
    assert plan(registry, conf({1, 2, 3, 4}), 4) == [StepBuckets(move, many[:PARALLEL_BUCKETS])]
    finished = state({**THREE, 4: False}, buckets=(moved, other), moves=(move,))
    assert plan(finished, conf({1, 2, 3, 4}), 4) == [
        WriteRegistry(("finish_move", "a-l"), "range a-l moved from node 3 to node 4")
    ]


def view(
    voters: tuple[int, ...],
    learners: tuple[int, ...] = (),
    match: int = 10,
    commit: int = 10,
    pending: bool = False,
) -> GroupLeaderView:
    return GroupLeaderView(voters, learners, {4: match}, commit, pending)


MOVE = Move("a-l", 3, 4)
B = bucket("b")


@pytest.mark.parametrize(
    ("leader_view", "expected"),
    [
        pytest.param(view((1, 2, 3)), ChangeMembership(ADD_LEARNER, 4), id="add-a-learner"),
        pytest.param(view((1, 2, 3), (4,), match=7), None, id="wait-until-caught-up"),
        pytest.param(view((1, 2, 3), (4,)), ChangeMembership(ADD_VOTER, 4), id="promote-it"),
        pytest.param(view((1, 2, 3, 4)), ChangeMembership(REMOVE, 3), id="remove-the-old"),
        pytest.param(
            view((1, 2, 4)),
            WriteRegistry(
                ("set_bucket_replicas", "b", B.group, (1, 2, 4)),
                "bucket b moved to nodes (1, 2, 4)",
            ),
            id="record-the-new-replicas-in-place",
        ),
        pytest.param(view((1, 2, 3), pending=True), None, id="a-change-is-being-applied"),
    ],
)
def test_one_bucket_moves_one_step_at_a_time(
    leader_view: GroupLeaderView, expected: ChangeMembership | WriteRegistry | None
) -> None:
    assert bucket_step(B, MOVE, leader_view) == expected


def test_drops_cut_short_leave_the_registry() -> None:
    assert finish_drops([B]) == [
        WriteRegistry(("drop", "b", B.group), f"finished the drop of bucket b ({B.group})")
    ]
