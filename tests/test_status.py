"""The STATUS model: the text lines stay byte-compatible, and STATUS JSON round-trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

from boutique.status import (
    EdgeStatus,
    GroupStatus,
    NodeStatus,
    PeerEdgeStatus,
    RangeStatus,
)


def sample(groups: int = 2) -> NodeStatus:
    return NodeStatus(
        node="n1",
        id=1,
        cluster="boutique",
        clients=3,
        max_connections=1024,
        edge=EdgeStatus(0, 64, 2, 1, 0),
        peer_edge=PeerEdgeStatus(4, 5),
        loop={"turns": 10, "syncs": 2, "longest_turn_us": 700},
        peers={"n3": False, "n2": True},
        ranges=(RangeStatus("a-g", ("n1", "n2")), RangeStatus("h-z", ("n2", "7"))),
        quarantined={"b/x/3": "StorageError: disk on fire"},
        groups=tuple(
            GroupStatus(f"b/g{i}/1", "follower", "n2" if i else None, 4, 9, 8, bool(i))
            for i in range(groups)
        ),
        groups_total=groups + 5,
        groups_quiet=3,
    )


def test_text_lines_keep_their_format() -> None:
    # The lines exactly as STATUS printed them before the model existed: tests, the
    # benchmark and the check command parse them.
    assert sample().to_lines() == [
        "node n1 id 1 cluster boutique",
        "clients 3 of 1024",
        "edge unauthenticated 0 of 64 refused 2 auth-failures 1 auth-timeouts 0",
        "peer-edge handshakes-refused 4 auth-failures 5",
        "loop turns 10 syncs 2 longest-turn-us 700",
        "peer n2 up",
        "peer n3 DOWN",
        "range a-g replicas n1,n2",
        "range h-z replicas n2,7",
        "quarantined b/x/3 StorageError: disk on fire",
        "group b/g0/1 role follower leader none term 4 commit 9 applied 8",
        "group b/g1/1 role follower leader n2 term 4 commit 9 applied 8 quiet",
        "... and 5 more groups",
    ]


def test_no_peer_edge_line_before_the_transport_runs() -> None:
    lines = dataclasses.replace(sample(), peer_edge=None).to_lines()
    assert not any(line.startswith("peer-edge ") for line in lines)


def test_json_is_one_ascii_line_and_round_trips() -> None:
    status = sample()
    text = status.to_json()
    assert "\n" not in text and text.isascii() and text.startswith("{")
    assert NodeStatus.from_json(text) == status
    assert NodeStatus.from_json(text.encode()) == status
    data = json.loads(text)
    assert data["groups"][1] == {
        "id": "b/g1/1",
        "role": "follower",
        "leader": "n2",
        "term": 4,
        "commit": 9,
        "applied": 8,
        "quiet": True,
    }
    assert data["groups_total"] == 7 and data["peer_edge"]["handshakes_refused"] == 4


def test_json_from_a_newer_server_keeps_unknown_keys() -> None:
    data = json.loads(sample().to_json())
    data["future"] = {"x": 1}
    parsed = NodeStatus.from_json(json.dumps(data))
    assert parsed.extra == {"future": {"x": 1}}
    assert json.loads(parsed.to_json())["future"] == {"x": 1}


@pytest.mark.parametrize(
    "text", ["", "[]", "{}", '{"node": "n1"}', "not json", '{"node":1,"id":"x"}']
)
def test_bad_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="STATUS JSON"):
        NodeStatus.from_json(text)
