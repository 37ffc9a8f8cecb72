"""A removed library member learns it, says so once, refuses, and the group refuses it
(issue 17, item 3): before, a removed member still ran `incr 1` through the connections
it had open, the group applied it, and its `status` still said follower.

The members talk over loopback sockets in this process, under ``MockClock``: what they
must not do "afterwards" is watched for many election timeouts of virtual time.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from boutique import HostSettings, Member, MembershipError, Removed, Unavailable
from boutique.examples import Counter, KVStore
from boutique.group.envelope import Envelope, GroupState
from boutique.machine import MachineHost, encode_value
from boutique.testing.local_cluster import free_ports

SECRET = b"library-tests-secret-0123456789"
FAST = HostSettings(tick_interval=0.02, election_ticks=10)


@asynccontextmanager
async def three() -> AsyncIterator[list[Member[Any, Any, Any, Any]]]:
    members = {n: ("127.0.0.1", p) for n, p in enumerate(free_ports(3), start=1)}
    async with AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                Member.start(Counter(), node_id=n, members=members, secret=SECRET, settings=FAST)
            )
            for n in members
        ]
        for member in started:
            await member.wait_ready()
        yield started


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def test_a_removed_member_learns_it_says_so_once_and_refuses(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.WARNING, logger="boutique.group")
    async with three() as (one, two, gone):
        assert await gone.command(("incr", 1)) == 1  # its connections are open now
        await one.remove_member(gone.node_id, timeout=10)
        await wait_for(lambda: gone.status().role == "removed")
        with pytest.raises(Removed, match="member 3 was removed from group default"):
            await gone.command(("incr", 1))
        with pytest.raises(Removed):
            await gone.query("value")
        assert issubclass(Removed, Unavailable)  # certainly not applied
        await trio.sleep(5.0)  # virtual: 25 election timeouts, for nothing
        said = [r.getMessage() for r in caplog.records if "was removed" in r.getMessage()]
        assert len(said) == 1, said
        assert said[0].startswith("member 3 of group default was removed from the group")
        assert await one.query("value") == await two.query("value") == 1
        # Its id cannot come back as if it were the same member.
        with pytest.raises(MembershipError, match="needs a new id"):
            await two.add_member(gone.node_id, gone.host.listen, timeout=5)


async def test_the_group_refuses_a_command_a_removed_member_forwards(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with three() as (one, two, gone):
        assert await gone.command(("incr", 1)) == 1
        await one.remove_member(gone.node_id, timeout=10)
        leader = one if one.status().role == "leader" else two
        await wait_for(lambda: gone.node_id in leader.host.removed_ids)
        # A forwarded write from the removed member, as it arrives in a stream it
        # opened before its removal (the leader refuses it, it never reaches the log).
        group = leader.group_id
        body = encode_value(("u", ("incr", 1)))
        leader.host.on_frame(gone.node_id, {"f": [[1, "w", group, body]]})
        await trio.sleep(5.0)  # virtual: 25 election timeouts, for nothing
        assert await one.query("value") == await two.query("value") == 1


def test_the_counter_example_exits_once_its_member_was_removed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from boutique.examples.run_counter import repl

    class RemovedMember:
        node_id = 3

        def query(self, query: str) -> int:
            raise Removed("member 3 was removed from group default")

    stdin = io.StringIO("value\nvalue\n")
    repl(RemovedMember(), stdin)  # type: ignore[arg-type]
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["error: Removed: member 3 was removed from group default; stopping"]
    assert stdin.readline() == "value\n"  # it stopped reading after the first


def test_the_envelope_keeps_tombstones_and_refuses_their_return() -> None:
    host: MachineHost[GroupState, Any, Any, Any, Any] = MachineHost(Envelope(KVStore()))
    commands: list[object] = [
        ("m", "change", 1, "leave", 4, []),
        ("m", "done", 1, "ok"),
        ("m", "change", 2, "join", 4, [[4, "h4", 7104]]),
    ]
    for index, command in enumerate(commands, start=1):
        host.apply_entry(index, encode_value(command))
    assert host.state.removed == {4}
    assert host.state.pending == []  # the join was refused, not queued
    assert host.query(("m", "result", 2)) == (
        "error: node 4 was removed from the group; a member that comes back needs a new id"
    )
    copy: MachineHost[GroupState, Any, Any, Any, Any] = MachineHost(Envelope(KVStore()))
    copy.restore(host.snapshot())
    assert copy.state.removed == {4}


async def test_a_member_that_removes_itself_returns_as_soon_as_it_knows() -> None:
    """It used to wait out the whole timeout (30 s by default): once removed, nobody
    answers its requests, so its wait for the change's result could only time out.
    Real time on purpose: under ``MockClock`` the race that lost it does not occur."""
    async with three() as members:
        (port,) = free_ports(1)
        address = ("127.0.0.1", port)
        async with Member.start(
            Counter(),
            node_id=4,
            members={4: address, 1: members[0].host.listen},
            secret=SECRET,
            join=True,
            settings=FAST,
        ) as newcomer:
            await members[1].add_member(4, address, timeout=10)
            for leaving in (members[2], newcomer):
                started = trio.current_time()
                await leaving.remove_member(leaving.node_id, timeout=20)
                assert trio.current_time() - started < 10, f"member {leaving.node_id}"
                assert leaving.status().role == "removed"
            await wait_for(lambda: members[0].status().voters == (1, 2))
