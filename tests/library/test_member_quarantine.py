"""A library member whose group's core failed says so (issue 14, item 5)."""

from __future__ import annotations

import pytest
import trio

from boutique import HostSettings, Member, Timeout, Unavailable
from boutique.examples import Counter
from boutique.raft import Ready
from boutique.testing.local_cluster import free_ports

BROKEN = "entries were compacted but storage has no snapshot"


async def test_a_quarantined_member_says_why() -> None:
    [port] = free_ports(1)
    async with Member.start(
        Counter(),
        node_id=1,
        members={1: ("127.0.0.1", port)},
        secret=b"library-tests-secret-0123456789",
        settings=HostSettings(tick_interval=0.02, election_ticks=10),
    ) as member:
        await member.wait_ready()
        assert await member.command(("incr", 1)) == 1
        node = member.host.groups[member.group_id].node

        def ready() -> Ready:
            raise RuntimeError(BROKEN)

        node.ready = ready  # type: ignore[method-assign]
        # The write that meets the broken core was proposed: its outcome is unknown.
        with trio.fail_after(5), pytest.raises(Timeout, match="is quarantined"):
            await member.command(("incr", 1))
        with pytest.raises(Unavailable, match=f"is quarantined: RuntimeError: {BROKEN}"):
            member.status()
