"""The rule for a store node whose data directory is empty (issue 14, item 3), as a
table, and the registry's record of started nodes it relies on."""

from __future__ import annotations

import pytest

from boutique.group.admission import GroupView
from boutique.machine import decode_value, encode_value
from boutique.registry import RegistryMachine
from boutique.runtime.founding import Decision, decide


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
