"""The typed request kinds: which ones may have been applied when their outcome is
unknown, and the leader's view a mover reads (a peer's answer, so read strictly)."""

from __future__ import annotations

import pytest

from boutique.machine import WireValue, wire_items
from boutique.raft import ChangeType
from boutique.runtime.framing import FrameDecoder, encode_frame
from boutique.runtime.requests import (
    ChangeMembership,
    GroupLeaderView,
    LeaderView,
    LocalView,
    Propose,
    Read,
    Request,
    TransferLeader,
)


@pytest.mark.parametrize(
    ("request_", "may_apply"),
    [
        (Propose(b"x"), True),
        (ChangeMembership(ChangeType.REMOVE, 2), True),
        (Read(("get", b"k")), False),
        (LeaderView(), False),
        (TransferLeader(2), False),
        (LocalView(), False),
    ],
)
def test_only_writes_and_membership_changes_may_have_been_applied(
    request_: Request, may_apply: bool
) -> None:
    assert request_.may_apply is may_apply


VIEW = GroupLeaderView(
    voters=(1, 2, 3), learners=(4,), match={1: 9, 2: 9, 3: 7, 4: 2}, commit=9, pending_conf=False
)


def test_the_leader_view_round_trips_in_the_wire_form_peers_speak() -> None:
    (wire,) = FrameDecoder().feed(encode_frame(VIEW.to_wire()))
    assert wire == {
        "voters": [1, 2, 3],
        "learners": [4],
        "match": {"1": 9, "2": 9, "3": 7, "4": 2},
        "commit": 9,
        "pending_conf": False,
    }
    assert GroupLeaderView.from_wire(wire) == VIEW


def _view_with(**fields: object) -> dict[str, object]:
    wire = VIEW.to_wire()
    assert isinstance(wire, dict)
    return {**{str(k): v for k, v in wire.items()}, **fields}


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [1, 2, 3],
        _view_with(voters=None),
        _view_with(voters=[1, "2"]),
        _view_with(learners=[-1]),
        _view_with(match=[["1", 9]]),
        _view_with(match={"one": 9}),
        _view_with(match={"1": "9"}),
        _view_with(commit=None),
        _view_with(commit=-1),
        _view_with(pending_conf=0),
    ],
)
def test_a_malformed_leader_view_is_a_value_error(wire: object) -> None:
    with pytest.raises(ValueError):
        GroupLeaderView.from_wire(wire)


@pytest.mark.parametrize(
    ("value", "length", "expected"),
    [
        ([1, "a"], None, (1, "a")),
        ((1, "a"), 2, (1, "a")),
        ([], None, ()),
        ([1], 2, None),
        ("ab", None, None),
        (b"ab", None, None),
        ({"a": 1}, None, None),
        (None, None, None),
    ],
)
def test_wire_items_takes_arrays_only(
    value: WireValue, length: int | None, expected: tuple[WireValue, ...] | None
) -> None:
    if expected is None:
        with pytest.raises(TypeError):
            wire_items(value, length)
    else:
        assert wire_items(value, length) == expected
