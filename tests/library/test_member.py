"""The trio library API with whole groups in one process: members on loopback ports.

Commands and queries from any member, errors a caller can act on, membership growing
and shrinking, leadership transfer, and restarts of in-memory and durable members.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from boutique import (
    CommandError,
    HostSettings,
    Member,
    MembershipError,
    NoQuorum,
    NotLeader,
    Timeout,
    Unavailable,
)
from boutique.examples import Counter, KVStore, QueueWithLength
from boutique.group.envelope import Envelope, GroupState, book_to_wire
from boutique.machine import CommandFailed, MachineHost, encode_value
from boutique.testing.local_cluster import free_ports

SECRET = b"library-tests-secret-0123456789"
FAST = HostSettings(tick_interval=0.02, election_ticks=10)

Address = tuple[str, int]


def addresses(count: int) -> dict[int, Address]:
    return {node: ("127.0.0.1", port) for node, port in enumerate(free_ports(count), start=1)}


@asynccontextmanager
async def group(
    count: int = 3,
    machine: Callable[[], Any] = Counter,
    *,
    data_dirs: Path | None = None,
    settings: HostSettings = FAST,
) -> AsyncIterator[list[Member[Any, Any, Any, Any]]]:
    members = addresses(count)
    async with AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                Member.start(
                    machine(),
                    node_id=node,
                    members=members,
                    secret=SECRET,
                    data_dir=data_dirs / str(node) if data_dirs else None,
                    settings=settings,
                )
            )
            for node in members
        ]
        for member in started:
            await member.wait_ready()
        yield started


def leader_of(members: list[Member[Any, Any, Any, Any]]) -> Member[Any, Any, Any, Any]:
    for member in members:
        if member.status().role == "leader":
            return member
    raise AssertionError("no leader")


async def test_commands_and_queries_work_from_every_member() -> None:
    async with group() as members:
        for step, member in enumerate(members, start=1):
            assert await member.command(("incr", step)) == sum(range(1, step + 1))
        for member in members:
            assert await member.query("value") == 6
        leaders = {member.leader() for member in members}
        assert len(leaders) == 1 and leaders != {None}


async def test_replies_come_back_the_same_from_leader_and_follower() -> None:
    """Replies are msgpack-decoded alike wherever they were served (arrays as tuples)."""
    async with group(machine=QueueWithLength) as members:
        leader = leader_of(members)
        follower = next(m for m in members if m is not leader)
        assert await leader.command(("push", ["a", 1])) == 1
        assert await follower.command(("push", ["b", 2])) == 2
        assert await leader.query("items") == (("a", 1), ("b", 2))
        assert await follower.query("items") == (("a", 1), ("b", 2))
        assert await follower.command(("pop",)) == ("a", 1)


async def test_a_machine_that_raises_gives_command_error_and_the_group_stays_healthy() -> None:
    async with group() as members:
        leader = leader_of(members)
        follower = next(m for m in members if m is not leader)
        await follower.command(("set", 2**63 - 1))
        for member in (leader, follower):
            with pytest.raises(CommandError) as caught:
                await member.command(("incr", 1))
            assert caught.value.error_type == "OverflowError"
            assert "64-bit" in caught.value.message
            assert caught.value.failed == CommandFailed(
                "OverflowError", "counter incr 1 would leave the 64-bit range"
            )
        with pytest.raises(CommandError, match="unknown counter query"):
            await follower.query("nonsense")
        # The refused commands were committed (every replica refused them alike) and
        # changed nothing; the group keeps taking commands.
        assert await follower.command(("decr", 1)) == 2**63 - 2
        with trio.fail_after(5):
            while {m.status().applied_index for m in members} != {leader.status().commit_index}:
                await trio.sleep(0.02)
        assert {m.local_query("value") for m in members} == {2**63 - 2}


async def test_a_reply_that_is_not_plain_is_refused_not_fatal() -> None:
    class SetReplies(Counter):
        def apply(self, state: int, command: tuple[str, int]) -> tuple[Any, int]:
            reply, state = super().apply(state, command)
            return ({reply} if command[0] == "set" else reply), state

    async with group(machine=SetReplies) as members:
        with pytest.raises(CommandError) as caught:
            await members[1].command(("set", 5))
        assert caught.value.error_type == "TypeError"
        assert await members[2].command(("incr", 1)) == 1  # the refused set kept nothing


async def test_commands_must_be_plain_values() -> None:
    async with group(count=1) as (member,):
        with pytest.raises(TypeError):
            await member.command({"a", "set"})


async def test_without_forwarding_a_follower_says_who_leads() -> None:
    async with group() as members:
        leader = leader_of(members)
        follower = next(m for m in members if m is not leader)
        with pytest.raises(NotLeader) as caught:
            await follower.command(("incr", 1), forward=False)
        assert caught.value.leader_hint == leader.node_id
        assert await leader.command(("incr", 1), forward=False) == 1


async def test_without_a_quorum_commands_are_certainly_not_applied() -> None:
    members = addresses(3)
    async with Member.start(
        Counter(), node_id=1, members=members, secret=SECRET, settings=FAST
    ) as lonely:
        with pytest.raises(NoQuorum) as caught:
            await lonely.command(("incr", 1), timeout=0.5)
        assert isinstance(caught.value, Unavailable)
        assert caught.value.maybe_applied is False
        with pytest.raises(Unavailable):
            await lonely.query("value", timeout=0.3)
        with pytest.raises(Timeout) as not_ready:
            await lonely.wait_ready(timeout=0.2)
        assert not_ready.value.maybe_applied is False


async def test_a_leader_that_lost_its_followers_gives_an_unknown_outcome() -> None:
    """The leader appended the command, so whether it ever commits is unknown."""
    async with group() as members:
        leader = leader_of(members)
        for member in members:
            if member is not leader:
                member.host.transport.blocked.add(leader.node_id)  # type: ignore[union-attr]
        leader.host.transport.blocked.update(  # type: ignore[union-attr]
            m.node_id for m in members if m is not leader
        )
        with pytest.raises(Timeout) as caught:
            await leader.command(("incr", 1), timeout=0.3, forward=False)
        assert caught.value.maybe_applied is True


async def test_grow_to_four_then_shrink_back_to_three(tmp_path: Path) -> None:
    async with group(machine=KVStore) as members:
        await members[0].command(("put", "k", "before"))
        (new_address,) = addresses(1).values()
        seed = {1: members[0].host.listen}
        # The new member knows only member 1, and is added at member 2: the address book
        # reaches everyone, and the joiner learns the others from its seed.
        async with Member.start(
            KVStore(),
            node_id=4,
            members={4: new_address, **seed},
            secret=SECRET,
            join=True,
            settings=FAST,
        ) as newcomer:
            await members[1].add_member(4, new_address, timeout=10)
            for member in [*members, newcomer]:
                assert member.status().voters == (1, 2, 3, 4)
                assert member.addresses()[4] == new_address
            assert await newcomer.query(("get", "k")) == "before"
            await newcomer.command(("put", "k", "four"))
            # Three of four must agree now: stop one old member, the rest go on.
            await members[2].remove_member(3, timeout=10)
            for member in (members[0], members[1], newcomer):
                assert member.status().voters == (1, 2, 4)
            assert await members[0].command(("put", "k", "after")) == "four"
            await newcomer.remove_member(4, timeout=10)
            assert members[0].status().voters == (1, 2)
            assert await members[1].query(("get", "k")) == "after"


async def test_removing_the_leader_hands_over() -> None:
    async with group() as members:
        leader = leader_of(members)
        other = next(m for m in members if m is not leader)
        await other.remove_member(leader.node_id, timeout=10)
        rest = [m for m in members if m is not leader]
        for member in rest:
            assert leader.node_id not in member.status().voters
        assert await rest[0].command(("incr", 3)) == 3
        assert leader_of(rest).node_id != leader.node_id


async def test_removing_the_last_voter_is_refused() -> None:
    async with group(count=1) as (member,):
        with pytest.raises(MembershipError, match="last voter"):
            await member.remove_member(1, timeout=5)
        assert await member.command(("incr", 1)) == 1


async def test_an_add_that_times_out_continues_and_remove_cancels_it() -> None:
    async with group() as members:
        (absent,) = addresses(1).values()
        with pytest.raises(Timeout) as caught:
            await members[0].add_member(9, absent, timeout=0.5)
        assert caught.value.maybe_applied
        assert 9 in members[0].status().learners  # waiting for node 9 to show up
        await members[0].remove_member(9, timeout=5)
        assert members[0].status().learners == ()
        assert await members[1].command(("incr", 1)) == 1


async def test_transfer_leadership_to_each_member() -> None:
    async with group() as members:
        for target in (2, 3, 1):
            await members[0].transfer_leadership(target)
            assert members[0].leader() == target
            assert await members[target - 1].command(("incr", 1), forward=False) >= 1
        with pytest.raises(MembershipError):
            await members[0].transfer_leadership(7)


async def test_an_in_memory_member_restarts_empty_and_catches_up_from_peers() -> None:
    # Small snapshots: the restarted member is sent a snapshot, not the whole log.
    settings = HostSettings(tick_interval=0.02, election_ticks=10, snapshot_entries=20)
    members = addresses(3)

    def start(node: int) -> Any:
        return Member.start(
            Counter(), node_id=node, members=members, secret=SECRET, settings=settings
        )

    async with start(1) as one, start(2) as two:
        async with start(3) as three:
            await three.wait_ready()
            await three.command(("incr", 1))
        for _ in range(50):
            await one.command(("incr", 1))
        compacted = one.host.groups["default"].storage.first_index()
        assert compacted > 2, "the log should have been compacted into a snapshot"
        async with start(3) as three:
            await three.wait_ready()
            assert await three.query("value") == 51
            with trio.fail_after(5):
                while three.local_query("value") != 51:
                    await trio.sleep(0.02)
        assert await two.query("value") == 51


async def test_an_in_memory_leader_restarts_and_catches_up_without_a_snapshot() -> None:
    """The leader that outlives the restart remembers what the member had acknowledged;
    the member must be replicated again from its empty log all the same."""
    members = addresses(3)

    def start(node: int) -> Any:
        return Member.start(Counter(), node_id=node, members=members, secret=SECRET, settings=FAST)

    async with start(2) as two, start(3) as three:
        async with start(1) as one:
            await one.wait_ready()
            await one.transfer_leadership(1)
            for _ in range(5):
                await one.command(("incr", 1))
        # Member 1 handed leadership over as it stopped; the new leader stays.
        assert two.leader() in (2, 3)
        await three.command(("incr", 1))
        async with start(1) as one:
            # It lost its state: it hosts the group only once re-admitted.
            await one.wait_ready()
            with trio.fail_after(10):
                while one.local_query("value") != 6:
                    await trio.sleep(0.02)
            assert await one.query("value") == 6


async def test_a_durable_group_restarts_with_its_state(tmp_path: Path) -> None:
    members = addresses(3)

    def start(node: int, data_dir: Path | None) -> Any:
        return Member.start(
            KVStore(),
            node_id=node,
            members=members,
            secret=SECRET,
            data_dir=data_dir,
            settings=FAST,
        )

    async with AsyncExitStack() as stack:
        group_members = [
            await stack.enter_async_context(start(n, tmp_path / f"m{n}")) for n in members
        ]
        await group_members[0].wait_ready()
        for i in range(10):
            await group_members[i % 3].command(("put", f"k{i}", i))
    # Every member stopped. Durable members come back with their log and state.
    async with AsyncExitStack() as stack:
        group_members = [
            await stack.enter_async_context(start(n, tmp_path / f"m{n}")) for n in members
        ]
        for member in group_members:
            await member.wait_ready()
        assert await group_members[2].query(("keys",)) == tuple(f"k{i}" for i in range(10))
        assert await group_members[1].query(("get", "k7")) == 7
    # In memory, the same restart would find nothing; alone, it does not even found a
    # new, empty group: it cannot tell that from losing its state.
    async with start(1, None) as forgetful:
        with pytest.raises(Unavailable):
            forgetful.local_query(("keys",))


async def test_an_error_in_the_async_with_body_reaches_the_caller_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with group(count=1):
            raise KeyError("from the body")


# --- The envelope: the group's own replicated bookkeeping (pure, no network) ----------


def test_the_envelope_replicates_changes_and_addresses_and_snapshots_them() -> None:
    host: MachineHost[GroupState, Any, Any, Any, Any] = MachineHost(Envelope(KVStore()))
    commands: list[object] = [
        ("u", ("put", "k", 1)),
        ("m", "change", 7, "join", 4, book_to_wire({4: ("h4", 7104), 1: ("h1", 7101)})),
        ("m", "change", 8, "leave", 4, []),  # supersedes the join that never finished
        ("m", "done", 8, "ok"),
        ("m", "done", 8, "ok"),  # a second leader's late "done" changes nothing
        ("m", "frobnicate"),
        ("u", ("put", 1.5, "no float keys")),
    ]
    replies = [host.apply_entry(i, encode_value(c)) for i, c in enumerate(commands, start=1)]
    assert replies[0] == encode_value(None)  # user replies travel as msgpack bytes
    assert replies[3:5] == [True, False]
    assert isinstance(replies[5], CommandFailed) and replies[5].error_type == "ValueError"
    assert isinstance(replies[6], CommandFailed) and replies[6].error_type == "TypeError"
    state = host.state
    assert state.pending == []
    assert state.results == {7: "error: cancelled by a later remove", 8: "ok"}
    assert state.book == {1: ("h1", 7101), 4: ("h4", 7104)}  # kept: see GroupState.book
    assert host.query(("m", "result", 7)) == "error: cancelled by a later remove"

    copy: MachineHost[GroupState, Any, Any, Any, Any] = MachineHost(Envelope(KVStore()))
    copy.restore(host.snapshot())
    assert (copy.state.book, copy.state.results, copy.state.user) == (
        state.book,
        state.results,
        state.user,
    )
    assert copy.applied_index == len(commands)
