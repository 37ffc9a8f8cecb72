"""A member that lost its state must not vote until it is re-admitted (issue 14, item 2).

In-process groups on loopback ports, cut apart with the transport's `blocked` sets; and
the admission rule itself as a table.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from boutique import HostSettings, Member, Timeout, Unavailable
from boutique.examples import Counter
from boutique.group.admission import GroupView, Verdict, decide, parse_view
from boutique.testing.local_cluster import free_ports

SECRET = b"library-tests-secret-0123456789"
FAST = HostSettings(tick_interval=0.02, election_ticks=10)


def _cut(member: Member[Any, Any, Any, Any], *peers: int) -> None:
    assert member.host.transport is not None
    member.host.transport.blocked.update(peers)


def _heal(member: Member[Any, Any, Any, Any]) -> None:
    assert member.host.transport is not None
    member.host.transport.blocked.clear()


async def test_an_amnesiac_member_does_not_elect_a_stale_leader() -> None:
    """Member 1 leads and commits with member 2 while member 3 is cut off; member 2
    restarts in memory while member 1 is cut off. Member 2 must not hand its vote to
    stale member 3 (which would answer reads without the write): it waits until a
    leader that has the write re-admits it."""
    members = {n: ("127.0.0.1", p) for n, p in enumerate(free_ports(3), start=1)}

    def start(node: int) -> Any:
        return Member.start(Counter(), node_id=node, members=members, secret=SECRET, settings=FAST)

    async with start(1) as one, start(3) as three:
        async with start(2) as two:
            await two.wait_ready()
            await one.transfer_leadership(1)
            _cut(three, 1, 2)
            _cut(one, 3)
            _cut(two, 3)
            assert await one.command(("incr", 5)) == 5
            _cut(one, 2)
            _cut(two, 1)
        # Member 2 forgot everything; member 1 (which has the write) is cut off.
        async with start(2) as two:
            _cut(two, 1)
            _heal(three)
            _cut(three, 1)
            with pytest.raises(Unavailable):
                await three.query("value", timeout=10 * FAST.tick_interval * FAST.election_ticks)
            for member in (one, two, three):
                _heal(member)
            await two.wait_ready(timeout=20)
            assert await two.query("value") == 5
            assert await three.query("value") == 5
            with trio.fail_after(20):
                while two.status().voters != (1, 2, 3):
                    await trio.sleep(0.05)


async def test_founders_wait_for_every_founder_before_founding() -> None:
    """Two founders of three cannot tell a first start from a restart of members that
    lost their state, so they found nothing until the third answers."""
    members = {n: ("127.0.0.1", p) for n, p in enumerate(free_ports(3), start=1)}

    def start(node: int) -> Any:
        return Member.start(Counter(), node_id=node, members=members, secret=SECRET, settings=FAST)

    async with start(1) as one, start(2) as two:
        with pytest.raises(Unavailable):
            await one.command(("incr", 1), timeout=0.5)
        assert "default" not in one.host.groups and "default" not in two.host.groups
        async with start(3) as three:
            await three.wait_ready()
            assert await two.command(("incr", 2)) == 2
            assert three.status().voters == (1, 2, 3)


def view(term: int, voters: set[int], learners: set[int] | None = None) -> GroupView:
    return GroupView(term, frozenset(voters), frozenset(learners or set()))


@pytest.mark.parametrize(
    ("joining", "answers", "verdict"),
    [
        # First start: every other founder answered, none has held an election.
        (False, {2: None, 3: None}, Verdict.FOUND),
        (False, {2: view(1, {1, 2, 3}), 3: None}, Verdict.FOUND),
        # A founder is silent: it may be the one that holds the data.
        (False, {2: None}, Verdict.WAIT),
        (False, {2: view(1, {1, 2, 3})}, Verdict.WAIT),
        (False, {}, Verdict.WAIT),
        # The group has held an election and lists this member as a voter: it lost
        # its state, even if another founder has not heard of the group yet.
        (False, {2: view(7, {1, 2, 3})}, Verdict.REJOIN),
        (False, {2: view(7, {1, 2, 3}), 3: None}, Verdict.REJOIN),
        (True, {2: view(4, {1, 2})}, Verdict.REJOIN),
        # The newest view decides: a stale one still listing this member is outvoted.
        (False, {2: view(3, {1, 2, 3}), 3: view(9, {2, 3})}, Verdict.JOIN),
        # A removed founder, or a joiner not yet a voter, waits to be added.
        (False, {2: view(5, {2, 3})}, Verdict.JOIN),
        (True, {2: view(5, {2, 3}, {1})}, Verdict.JOIN),
        # A joiner needs a group that exists.
        (True, {2: None, 3: view(1, {2, 3})}, Verdict.WAIT),
    ],
)
def test_the_admission_rule(
    joining: bool, answers: dict[int, GroupView | None], verdict: Verdict
) -> None:
    assert decide(1, {1, 2, 3}, joining, answers) is verdict


def test_views_from_the_wire_are_checked() -> None:
    assert parse_view(None) is None
    assert parse_view({"term": 3, "voters": [1, 2], "learners": [], "leader": 1}) == view(3, {1, 2})
    for bad in ([1], {"term": -1, "voters": [], "learners": []}, {"term": 2, "voters": "x"}):
        with pytest.raises(ValueError):
            parse_view(bad)


async def test_a_learner_that_never_comes_up_does_not_hold_back_other_changes() -> None:
    """A joiner whose only seed is a member being re-admitted waits for that member;
    so a learner still catching up must not block the changes queued after it."""
    members = {n: ("127.0.0.1", p) for n, p in enumerate(free_ports(4), start=1)}
    absent = members.pop(4)

    def start(node: int) -> Any:
        return Member.start(Counter(), node_id=node, members=members, secret=SECRET, settings=FAST)

    async with start(1) as one, start(2) as two, start(3) as three:
        await one.wait_ready()
        with pytest.raises(Timeout):
            await one.add_member(4, absent, timeout=0.5)
        assert 4 in one.status().learners
        await two.remove_member(3, timeout=5)
        assert one.status().voters == (1, 2)
        del three
