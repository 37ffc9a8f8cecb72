"""A turn of the host (``HostCore.turn``) costs what it handles, not what waits (issue 19): with
100,000 groups carried over after a restart, sorting them all every turn made the
restart quadratic."""

from __future__ import annotations

from typing import NoReturn

import pytest

import boutique.runtime.host_core as host_module
from boutique.runtime.host_core import MAX_GROUPS_PER_TURN, HostCore


def make_host() -> HostCore:
    return HostCore(
        1,
        peers={},
        open_storage=lambda: pytest.fail("storage is not used here"),
        machine_for=lambda group: pytest.fail("no group is opened here"),
        clock=lambda: 0.0,
    )


def test_a_turn_takes_a_bounded_batch_of_the_carry_without_sorting_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_sorting(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a turn sorted the groups")

    monkeypatch.setattr(host_module, "sorted", no_sorting, raising=False)
    host = make_host()
    carried = {f"b/bucket{i}/1" for i in range(10 * MAX_GROUPS_PER_TURN)}
    host._carry = set(carried)
    # None of them is hosted (so the batch finds nothing to do): only the selection runs.
    turns = 0
    while host._carry:
        before = set(host._carry)
        host._turn()
        assert len(before - host._carry) == MAX_GROUPS_PER_TURN or not host._carry
        turns += 1
    assert turns == 10
