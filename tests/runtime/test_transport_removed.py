"""Removed nodes at the transport: refused, told so once in a signed notice, quiet.

A node the cluster removed must learn it from its peers (it does not apply its own
removal), and only from a peer that holds the cluster secret; the peers must not log a
warning per reconnect attempt about it (issue 17, item 3).
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from test_transport import Node, mesh, wait_until


def transport_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "boutique.transport" and r.levelno >= level
    ]


async def test_a_removed_node_is_told_once_and_stops_dialing(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO, logger="boutique.transport")
    told: list[int] = []
    a, b = Node(1), Node(2, on_removed=told.append)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        b.transport.send(1, "before")
        await wait_until(lambda: a.received == [(2, "before")])
        caplog.clear()  # from here on: what the removal logs

        a.transport.set_removed(frozenset({2}))
        assert not a.transport.send(2, "x")  # no longer a peer
        b.transport.send(1, "after")
        await wait_until(lambda: told == [1])
        # Many reconnect intervals (reconnect_max is 0.05 s; virtual time): b no longer
        # dials a.
        await trio.sleep(5.0)
        assert told == [1]
        assert a.received == [(2, "before")]
        assert a.transport.stats.removed_refused == 1
        assert a.transport.stats.auth_failures == 0
        assert transport_lines(caplog, logging.WARNING) == []
        said = [line for line in transport_lines(caplog, logging.INFO) if "removed" in line]
        assert sorted(said) == [
            "node 1: node 2 was removed from the cluster; told it so",
            f"node 2: peer 1 at 127.0.0.1:{a.port} says this node was removed from the cluster",
        ]
        nursery.cancel_scope.cancel()


async def test_only_a_holder_of_the_secret_can_say_a_node_was_removed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="boutique.transport")
    told: list[int] = []
    impostor = Node(1, secret=b"not the cluster secret, just a guess")
    b = Node(2, on_removed=told.append)
    async with trio.open_nursery() as nursery:
        await impostor.start(nursery)
        await b.start(nursery)
        mesh(impostor, b)
        impostor.transport.set_removed(frozenset({2}))
        b.transport.send(1, "hello?")
        await wait_until(lambda: b.transport.stats.auth_failures >= 1)
        assert told == []
        assert any(
            "removed notice with a bad MAC" in line
            for line in transport_lines(caplog, logging.WARNING)
        )
        nursery.cancel_scope.cancel()
