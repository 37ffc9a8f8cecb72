"""A group whose Raft core fails is quarantined; the node and its other groups carry on
(issue 14, item 5).

The failure is planted in one bucket group's ``RawNode`` (the core raising
``RuntimeError`` from its next ``ready()``, as it does for compacted entries with no
snapshot); everything around it is the real single-node server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from boutique.raft import RawNode, Ready

if TYPE_CHECKING:
    from conftest import Served

BROKEN = "entries were compacted but storage has no snapshot"


def break_core(node: RawNode) -> None:
    """From now on the core fails for this group only."""

    def ready() -> Ready:
        raise RuntimeError(BROKEN)

    node.ready = ready  # type: ignore[method-assign]


async def test_a_failing_group_is_quarantined_and_the_others_keep_serving(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    node = served.node
    assert node is not None
    conn = await served.connect()
    for line in (b"CREATE apples\n", b"CREATE hats\n", b"PUT apples k 1\n", b"PUT hats k 1\n"):
        await conn.send(line)
        await conn.expect(b"OK\r\n")
    broken = node.catalog()["apples"].group
    break_core(node.groups[broken].node)

    # The write that makes the broken group produce a Ready was proposed when the core
    # failed: its outcome is unknown, and it says so at once, with the group and why.
    with trio.fail_after(2):
        await conn.send(b"PUT apples k 2\n")
        await conn.expect(
            f"ERR TIMEOUT outcome unknown: group {broken} is quarantined: "
            f"RuntimeError: {BROKEN}\r\n".encode()
        )
    # Later requests: a clear UNAVAILABLE at once (the only replica is out of service).
    for request in (b"PUT apples k 3\n", b"GET apples k\n", b"DELETE apples k\n"):
        with trio.fail_after(2):
            await conn.send(request)
            await conn.expect(
                f"ERR UNAVAILABLE group {broken} is quarantined: RuntimeError: {BROKEN}\r\n".encode()
            )
    # Every other group, and the node, carry on.
    for request, reply in (
        (b"PUT hats k 2\n", b"OK\r\n"),
        (b"GET hats k\n", b"2\r\nOK\r\n"),
        (b"CREATE zebras\n", b"OK\r\n"),
        (b"PUT zebras k 1\n", b"OK\r\n"),
        (b"PING\n", b"PONG\r\n"),
    ):
        await conn.send(request)
        await conn.expect(reply)
    # STATUS says which group and why, and no longer lists it as a live group.
    await conn.send(b"STATUS\n")
    [status] = await conn.replies(1)
    lines = [item.decode() for item in status.items]
    assert f"quarantined {broken} RuntimeError: {BROKEN}" in lines
    assert not any(line.startswith(f"group {broken} ") for line in lines)
    # The log says it once, with the group id and the reason.
    said = [r.getMessage() for r in caplog.records if "quarantined on node" in r.getMessage()]
    assert len(said) == 1
    assert broken in said[0] and BROKEN in said[0]
