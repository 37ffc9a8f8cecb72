"""Online placement changes in the registry: nodes, moves, splits (boutique.placement)."""

from __future__ import annotations

from typing import Any

import pytest

from boutique.placement import NodeInfo, span_name
from boutique.registry import RegistryMachine, RegistryState, plan_ranges

NODES = [NodeInfo(i, f"n{i}", "127.0.0.1", 4000 + i, 5000 + i) for i in (1, 2, 3)]


def _registry() -> tuple[RegistryMachine, RegistryState]:
    machine = RegistryMachine(plan_ranges(("h", "o", "v"), [1, 2, 3], 3), NODES)
    return machine, machine.initial_state()


def _apply(machine: RegistryMachine, state: RegistryState, *command: Any) -> Any:
    reply, _ = machine.apply(state, command)
    return reply


def _refused(machine: RegistryMachine, state: RegistryState, *command: Any) -> str:
    before = machine.snapshot(state)
    with pytest.raises(ValueError) as info:
        machine.apply(state, command)
    assert machine.snapshot(state) == before, "a refused command changed the state"
    return str(info.value)


def test_add_node_is_idempotent_and_checks_conflicts() -> None:
    machine, state = _registry()
    n4 = NodeInfo(4, "n4", "127.0.0.1", 4004, 5004)
    assert _apply(machine, state, "add_node", n4.to_wire())[0] == "added"
    assert _apply(machine, state, "add_node", n4.to_wire())[0] == "exists"
    assert "taken" in _refused(
        machine, state, "add_node", NodeInfo(5, "n4", "127.0.0.1", 4005, 5005).to_wire()
    )
    assert "address" in _refused(
        machine, state, "add_node", NodeInfo(5, "n5", "127.0.0.1", 4004, 5099).to_wire()
    )
    assert "another address" in _refused(
        machine, state, "add_node", NodeInfo(4, "n4", "127.0.0.1", 4999, 5004).to_wire()
    )
    assert [w[1] for w in machine.query(state, ("nodes",))] == ["n1", "n2", "n3", "n4"]


def test_a_move_redirects_new_buckets_and_finishes_atomically() -> None:
    machine, state = _registry()
    _apply(machine, state, "add_node", NodeInfo(4, "n4", "127.0.0.1", 4004, 5004).to_wire())
    _apply(machine, state, "create", "apples")  # range a-g on (1, 2, 3)
    assert _apply(machine, state, "start_move", "a-g", 2, 4) == ["a-g", 2, 4]
    assert "already moving" in _refused(machine, state, "start_move", "a-g", 3, 4)
    # Created during the move: already on the new replicas.
    _, info = _apply(machine, state, "create", "avocados")
    assert tuple(info["replicas"]) == (1, 4, 3)
    # The range cannot finish while "apples" still lists node 2.
    assert "has not moved" in _refused(machine, state, "finish_move", "a-g")
    group = state.buckets["apples"].group
    assert _apply(machine, state, "set_bucket_replicas", "apples", group, (1, 4, 3)) is True
    assert _apply(machine, state, "finish_move", "a-g") is True
    assert state.ranges is not None
    assert state.ranges.get("a-g").replicas == (1, 4, 3)  # type: ignore[union-attr]
    assert state.moves == {}


def test_impossible_requests_are_refused_with_a_reason() -> None:
    machine, state = _registry()
    assert "unknown node" in _refused(machine, state, "start_move", "a-g", 1, 9)
    assert "unknown range" in _refused(machine, state, "start_move", "x-y", 1, 2)
    assert "already replicates" in _refused(machine, state, "start_move", "a-g", 1, 2)
    # Three ranges of three replicas on three nodes: nobody can leave.
    assert "only 2 nodes remain" in _refused(machine, state, "drain_node", 3)
    assert "still replicates" in _refused(machine, state, "remove_node", 3)


def test_drain_then_remove() -> None:
    machine, state = _registry()
    _apply(machine, state, "add_node", NodeInfo(4, "n4", "127.0.0.1", 4004, 5004).to_wire())
    assert _apply(machine, state, "drain_node", 4) is True
    assert state.nodes[4].leaving
    assert "leaving" in _refused(machine, state, "start_move", "a-g", 1, 4)
    assert _apply(machine, state, "remove_node", 4) is True
    assert 4 not in state.nodes


def test_a_removed_id_is_tombstoned_and_never_admitted_again() -> None:
    machine, state = _registry()
    n4 = NodeInfo(4, "n4", "127.0.0.1", 4004, 5004)
    _apply(machine, state, "add_node", n4.to_wire())
    _apply(machine, state, "drain_node", 4)
    _apply(machine, state, "remove_node", 4)
    assert state.removed == {4}
    assert machine.query(state, ("removed",)) == [4]
    # The same node coming back (same id, same addresses), or another one reusing the
    # id, is a new node: it needs a new id.
    assert "was removed" in _refused(machine, state, "add_node", n4.to_wire())
    other = NodeInfo(4, "n9", "127.0.0.1", 4009, 5009)
    assert "needs a new id" in _refused(machine, state, "add_node", other.to_wire())
    # The tombstone survives a snapshot, so a node that catches up from one knows it.
    restored = machine.restore(machine.snapshot(state))
    assert restored.removed == {4}
    assert "was removed" in _refused(machine, restored, "add_node", n4.to_wire())
    # The same machine under a new id is welcome.
    again = NodeInfo(5, "n4", "127.0.0.1", 4004, 5004)
    assert _apply(machine, state, "add_node", again.to_wire())[0] == "added"


def test_split_relabels_buckets_and_keeps_every_name_in_one_range() -> None:
    machine, state = _registry()
    for name in ("apples", "figs", "grapes"):
        _apply(machine, state, "create", name)
    assert _apply(machine, state, "split_range", "a-g", "f") == ["a-e", "f-g"]
    assert state.buckets["apples"].range_id == "a-e"
    assert state.buckets["figs"].range_id == "f-g"
    assert state.ranges is not None
    assert [r.id for r in state.ranges] == ["a-e", "f-g", "h-n", "o-u", "v-z"]
    assert state.ranges.range_for("Zebra").id == "a-e"
    assert "not inside" in _refused(machine, state, "split_range", "h-n", "a")
    restored = machine.restore(machine.snapshot(state))
    assert machine.snapshot(restored) == machine.snapshot(state)


@pytest.mark.parametrize(
    ("start", "end", "name"),
    [
        ("", "h", "a-g"),
        ("h", "o", "h-n"),
        ("v", None, "v-z"),
        ("f", "g", "f"),
        ("ab", "c", "['ab','c')"),
    ],
)
def test_span_names(start: str, end: str | None, name: str) -> None:
    assert span_name(start, end) == name
