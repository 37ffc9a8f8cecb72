"""The rule for a store node whose data directory is empty (issue 14, item 3), as a
table, and the registry's record of started nodes it relies on."""

from __future__ import annotations

import pytest

from boutique.group.admission import GroupView
from boutique.machine import decode_value, encode_value
from boutique.registry import RegistryMachine
from boutique.runtime.founding import Decision, decide
from boutique.runtime.founding_rule import (
    LOG_EVERY,
    PATIENCE,
    Admission,
    AskRegistry,
    Found,
    Refuse,
    Retry,
)


def view(term: int) -> GroupView:
    return GroupView(term, frozenset({1, 2, 3}), frozenset())


@pytest.mark.parametrize(
    ("answers", "decision"),
    [
        # A new cluster: nobody has held an election, a majority of founders answered.
        ({2: None, 3: None}, Decision.FOUND),
        ({2: view(1)}, Decision.FOUND),
        ({2: None}, Decision.FOUND),
        # Alone, this node cannot tell a new cluster from a lost state.
        ({}, Decision.WAIT),
        # Someone has held an election: the registry decides (refuse, or a late start).
        ({2: view(2)}, Decision.ASK_REGISTRY),
        ({2: None, 3: view(5)}, Decision.ASK_REGISTRY),
    ],
)
def test_the_founding_rule(answers: dict[int, GroupView | None], decision: Decision) -> None:
    assert decide(1, (1, 2, 3), answers) is decision


def test_a_node_outside_the_meta_group_needs_a_majority_of_its_founders() -> None:
    assert decide(4, (1, 2, 3), {1: None}) is Decision.WAIT
    assert decide(4, (1, 2, 3), {1: None, 2: view(1)}) is Decision.FOUND


def test_the_registry_records_started_nodes_and_keeps_them_in_snapshots() -> None:
    machine = RegistryMachine()
    state = machine.initial_state()
    reply, state = machine.apply(state, ("node_started", 3))
    assert reply is True
    reply, state = machine.apply(state, ("node_started", 3))
    assert reply is False
    assert machine.query(state, ("started",)) == [3]
    restored = machine.restore(machine.snapshot(state))
    assert restored.started == {3}
    with pytest.raises(ValueError):
        machine.apply(state, ("node_started", 0))


def test_a_snapshot_from_before_the_record_restores_with_nobody_started() -> None:
    machine = RegistryMachine()
    value = decode_value(machine.snapshot(machine.initial_state()))
    assert isinstance(value, dict)
    del value["started"]
    value["format"] = 2
    value["buckets"] = []  # a format 2 catalog: one map per bucket
    assert machine.restore(encode_value(value)).started == set()


# --- The retries around the rule (``founding_rule.Admission``) -------------------------

NAMES = {1: "a", 2: "b", 3: "c"}


def admission(me: int = 1) -> Admission:
    return Admission(me, NAMES[me], (1, 2, 3), [n for n in NAMES if n != me], NAMES, began=100.0)


def test_a_new_cluster_is_founded_at_once() -> None:
    step = admission().after_views(Decision.FOUND, [2], 100.0)
    assert step == Found(False, "no election anywhere yet: node a founds the new cluster")


def test_waiting_is_quiet_at_first_then_said_once_again_on_change_and_now_and_then() -> None:
    a = admission()
    waiting_for_b = (
        "its data directory is empty and it is waiting for b to tell whether the cluster exists"
    )
    steps = [
        (100.0 + PATIENCE - 0.1, [], Retry()),  # nodes of a new cluster start apart
        (100.0 + PATIENCE, [3], Retry(waiting_for_b, log=True)),
        (100.0 + PATIENCE + 0.5, [3], Retry(waiting_for_b, log=False)),
        (100.0 + PATIENCE + 1.0, [], Retry(waiting_for_b.replace(" b ", " b, c "), log=True)),
        (
            100.0 + PATIENCE + 1.0 + LOG_EVERY,
            [],
            Retry(waiting_for_b.replace(" b ", " b, c "), log=True),
        ),
    ]
    for now, answered, expected in steps:
        assert a.after_views(Decision.WAIT, answered, now) == expected


@pytest.mark.parametrize(
    ("me", "started", "expected"),
    [
        (1, [1, 2], Refuse()),  # it started before: its state is lost
        (1, [2, 3], Found(True, "node a starts late for the first time: it founds")),
        (3, [1], Found(True, "node c starts late for the first time: it founds")),
    ],
)
def test_an_existing_cluster_asks_the_registry(
    me: int, started: list[int], expected: object
) -> None:
    a = admission(me)
    assert a.after_views(Decision.ASK_REGISTRY, [2], 100.0) == AskRegistry()
    assert a.after_registry(started) == expected


def test_a_node_outside_the_founders_records_nothing_before_it_founds() -> None:
    outsider = Admission(4, "d", (1, 2, 3), [1, 2, 3], {**NAMES, 4: "d"}, began=0.0)
    assert outsider.after_registry([1, 2, 3]) == Found(
        False, "node d starts late for the first time: it founds"
    )
