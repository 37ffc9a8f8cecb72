"""`BlockingMember`: the library from plain, non-async code (each member runs its own
trio loop on a background thread)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from boutique import BlockingMember, CommandError, HostSettings, NotLeader, Unavailable
from boutique.examples import Counter, KVStore
from boutique.testing.local_cluster import free_ports

SECRET = "blocking-tests-secret-0123456789"
FAST = HostSettings(tick_interval=0.02, election_ticks=10)


@pytest.fixture
def trio_of_members() -> Iterator[list[BlockingMember[Any, Any, Any, Any]]]:
    members = {n: ("127.0.0.1", p) for n, p in enumerate(free_ports(3), start=1)}
    with ExitStack() as stack:
        started = [
            stack.enter_context(
                BlockingMember.start(
                    KVStore(), node_id=n, members=members, secret=SECRET, settings=FAST
                )
            )
            for n in members
        ]
        for member in started:
            member.wait_ready()
        yield started


def test_commands_queries_and_leader_without_async(
    trio_of_members: list[BlockingMember[Any, Any, Any, Any]],
) -> None:
    one, two, three = trio_of_members
    assert one.command(("put", "milk", 2)) is None
    assert two.command(("put", "milk", 3)) == 2
    assert three.query(("get", "milk")) == 3
    assert three.query(("keys",)) == ("milk",)
    leader = one.leader()
    assert leader in (1, 2, 3)
    assert {m.leader() for m in trio_of_members} == {leader}
    assert trio_of_members[leader - 1].status().role == "leader"


def test_the_same_errors_as_the_async_api(
    trio_of_members: list[BlockingMember[Any, Any, Any, Any]],
) -> None:
    one, two, _ = trio_of_members
    with pytest.raises(CommandError) as caught:
        one.command(("put", 1.5, "a float is no key"))
    assert caught.value.error_type == "TypeError"
    leader = one.leader()
    follower = next(m for m in trio_of_members if m.node_id != leader)
    with pytest.raises(NotLeader) as not_leader:
        follower.command(("put", "k", 1), forward=False)
    assert not_leader.value.leader_hint == leader
    assert two.command(("put", "k", 1)) is None  # still healthy


def test_membership_and_transfer_without_async(
    trio_of_members: list[BlockingMember[Any, Any, Any, Any]],
) -> None:
    one, two, three = trio_of_members
    one.transfer_leadership(3)
    assert one.leader() == 3
    (port,) = free_ports(1)
    with BlockingMember.start(
        KVStore(),
        node_id=4,
        members={4: ("127.0.0.1", port), 1: ("127.0.0.1", one.status().addresses[1][1])},
        secret=SECRET,
        join=True,
        settings=FAST,
    ) as four:
        two.add_member(4, ("127.0.0.1", port))
        assert four.status().voters == (1, 2, 3, 4)
        four.command(("put", "from", 4))
        four.remove_member(4)
        assert three.query(("get", "from")) == 4
        assert three.status().voters == (1, 2, 3)


def test_close_is_idempotent_and_a_closed_member_is_unavailable() -> None:
    (port,) = free_ports(1)
    member = BlockingMember.start(
        Counter(), node_id=1, members={1: ("127.0.0.1", port)}, secret=SECRET, settings=FAST
    )
    assert member.command(("incr", 2)) == 2  # a group of one is its own majority
    assert member.local_query("value") == 2
    member.close()
    member.close()
    with pytest.raises(Unavailable):
        member.command(("incr", 1))
    with pytest.raises(Unavailable):
        member.leader()


def test_a_member_that_cannot_start_raises_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            BlockingMember.start(
                Counter(), node_id=1, members={1: ("127.0.0.1", port)}, secret=SECRET
            )
