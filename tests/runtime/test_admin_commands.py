"""Admin commands without I/O (``runtime.admin_commands``): every malformed request gets
a clear ``AdminError`` with its code, names resolve against the registry, and the
read-only answers read the registry as given. Plus the shell's use of them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from boutique.raft import ConfState
from boutique.registry_state import BucketInfo, Move, NodeInfo, RangeMap, RegistryState
from boutique.runtime.admin import Admin
from boutique.runtime.admin_commands import (
    AddNode,
    AdminCommand,
    AdminError,
    Inspect,
    MoveRange,
    RemoveNode,
    Split,
    Transfer,
    moves,
    node_id,
    nodes,
    parse,
    ranges,
    registry_refusal,
    registry_view,
    transfer_range,
)

N4 = NodeInfo(4, "d", "10.0.0.4", 7004, 8004)


@pytest.mark.parametrize(
    ("action", "args", "expected"),
    [
        ("NODES", (), Inspect("NODES")),
        ("RANGES", (), Inspect("RANGES")),
        ("MOVES", (), Inspect("MOVES")),
        ("ADD-NODE", ("d", "4", "10.0.0.4", "7004", "8004"), AddNode(N4)),
        ("REMOVE-NODE", ("b",), RemoveNode("b")),
        ("MOVE", ("a-l", "a", "d"), MoveRange("a-l", "a", "d")),
        ("SPLIT", ("a-l", "f"), Split("a-l", "f")),
        ("TRANSFER", ("range:a-l", "b"), Transfer("range:a-l", "b")),
    ],
)
def test_every_command_parses(action: str, args: tuple[str, ...], expected: AdminCommand) -> None:
    assert parse(action, args) == expected


@pytest.mark.parametrize(
    ("action", "args", "message"),
    [
        ("FROB", (), "unknown admin command FROB"),
        ("NODES", ("x",), "usage: ADMIN NODES"),
        ("MOVE", ("a-l", "a"), "usage: ADMIN MOVE range from-node to-node"),
        (
            "ADD-NODE",
            ("d", "4", "h", "7004"),
            "usage: ADMIN ADD-NODE name id host client_port peer_port",
        ),
        ("ADD-NODE", ("d", "four", "h", "1", "2"), "id must be an integer, got 'four'"),
        ("ADD-NODE", ("d", "4", "h", "0", "2"), "client_port must be positive, got 0"),
        ("ADD-NODE", ("d", "4", "h", "1", "-2"), "peer_port must be positive, got -2"),
        ("TRANSFER", ("b",), "usage: ADMIN TRANSFER bucket|range:<id> node"),
    ],
)
def test_a_malformed_command_is_a_clear_syntax_error(
    action: str, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(AdminError) as refused:
        parse(action, args)
    assert (refused.value.code, refused.value.message) == ("SYNTAX", message)


def registry() -> RegistryState:
    names = {1: "a", 2: "b", 3: "c", 4: "d"}
    return RegistryState(
        ranges=RangeMap.from_splits(("m",), (1, 2, 3)),
        nodes={n: NodeInfo(n, name, "h", 7000 + n, 8000 + n, n == 3) for n, name in names.items()},
        buckets={
            "apple": BucketInfo("apple", "bucket/apple/1", "a-l", (1, 2, 3), 1),
            "fig": BucketInfo("fig", "bucket/fig/2", "a-l", (1, 2, 4), 2),
            "pear": BucketInfo("pear", "bucket/pear/3", "m-z", (1, 2, 3), 3),
        },
        moves={"a-l": Move("a-l", 3, 4)},
    )


def test_names_resolve_against_the_registry() -> None:
    state = registry()
    assert (node_id(state, "b"), node_id(state, "4")) == (2, 4)
    with pytest.raises(AdminError, match=r"unknown node 'e' \(nodes: a, b, c, d\)"):
        node_id(state, "e")
    assert [b.name for b in transfer_range(state, "range:a-l") or []] == ["apple", "fig"]
    assert transfer_range(state, "apple") is None  # a bucket: looked up linearizably
    with pytest.raises(AdminError, match="unknown range 'q-z'"):
        transfer_range(state, "range:q-z")


def test_no_registry_here_yet_is_unavailable() -> None:
    with pytest.raises(AdminError) as refused:
        registry_view(None)
    assert refused.value.code == "UNAVAILABLE"
    assert registry_view(registry()) is not None


def test_a_refused_registry_change_is_busy_only_when_it_conflicts() -> None:
    assert registry_refusal("PlacementBusy", "moving").code == "BUSY"
    assert registry_refusal("ValueError", "no such range").code == "SYNTAX"


def test_the_read_only_answers() -> None:
    state = registry()
    meta = ConfState(frozenset({1, 2, 3}), frozenset({4}))
    assert nodes(state, meta, 1, lambda peer: peer == 2) == [
        "node a id 1 h client 7001 peer 8001 self meta voter",
        "node b id 2 h client 7002 peer 8002 up meta voter",
        "node c id 3 h client 7003 peer 8003 DOWN meta voter LEAVING",
        "node d id 4 h client 7004 peer 8004 DOWN meta learner",
    ]
    assert ranges(state) == [
        "range a-l ['','m') replicas a,b,c buckets 2 moving c->d",
        "range m-z ['m','') replicas a,b,c buckets 1",
    ]
    assert moves(state) == ["move a-l c -> d: 1 buckets to go"]


@dataclass
class NoRegistryNode:
    """A node that has not applied the registry yet; nothing else is used."""

    def registry_state(self) -> RegistryState | None:
        return None


async def test_the_shell_refuses_bad_input_before_doing_anything() -> None:
    admin = Admin(NoRegistryNode(), router=None)  # type: ignore[arg-type]
    with pytest.raises(AdminError) as refused:
        await admin.execute("MOVE", ("a-l", "a"))  # was a ValueError from unpacking
    assert (refused.value.code, refused.value.message) == (
        "SYNTAX",
        "usage: ADMIN MOVE range from-node to-node",
    )
    with pytest.raises(AdminError) as refused:
        await admin.execute("RANGES", ())
    assert refused.value.code == "UNAVAILABLE"
