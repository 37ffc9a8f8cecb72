"""The peer transport says when a stream breaks, and when a frame certainly never left
(issue 14, item 6): the host settles what it waited for through that stream at once."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import trio

from boutique.runtime.transport import PeerTransport, _Outbound, _peer_closed

SECRET = b"correct horse battery staple 1234"
FAST: dict[str, Any] = {
    "heartbeat_interval": 0.02,
    "suspect_after": 0.15,
    "io_timeout": 0.4,
    "reconnect_min": 0.01,
    "reconnect_max": 0.05,
}


async def wait_until(predicate: object, timeout: float = 1.5) -> None:
    assert callable(predicate)
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


def pair(lost: list[int]) -> tuple[PeerTransport, PeerTransport]:
    a = PeerTransport(1, SECRET, "t", {}, lambda p, f: None, on_link_lost=lost.append, **FAST)
    b = PeerTransport(2, SECRET, "t", {}, lambda p, f: None, **FAST)
    return a, b


async def test_on_link_lost_is_called_when_a_peer_goes_away() -> None:
    lost: list[int] = []
    a, b = pair(lost)
    b_scope = trio.CancelScope()

    async def run_b(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with b_scope:
            await b.run("127.0.0.1", 0, task_status=task_status)

    async with trio.open_nursery() as nursery:
        port_a = await nursery.start(a.run, "127.0.0.1", 0)
        port_b = await nursery.start(run_b)
        a.set_peers({2: ("127.0.0.1", port_b)})
        b.set_peers({1: ("127.0.0.1", port_a)})
        await wait_until(lambda: a.connected(2) and a.reachable(2))
        assert lost == []
        b_scope.cancel()  # node 2 stops: the streams both ways break
        await wait_until(lambda: lost.count(2) >= 2)
        nursery.cancel_scope.cancel()


async def test_a_direct_write_that_fails_reports_the_frame_unsent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = pair([])
    async with trio.open_nursery() as nursery:
        port_a = await nursery.start(a.run, "127.0.0.1", 0)
        port_b = await nursery.start(b.run, "127.0.0.1", 0)
        a.set_peers({2: ("127.0.0.1", port_b)})
        b.set_peers({1: ("127.0.0.1", port_a)})
        await wait_until(lambda: a.connected(2))
        assert a.send(2, {"x": 1}, now=True)

        def broken_pipe(fd: int, data: bytes) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        # The peer closed the stream while we were stopped: the write fails, so
        # nothing of the frame left and its requests can be resent.
        monkeypatch.setattr(os, "write", broken_pipe)
        sent = a.send(2, {"x": 2}, now=True)
        monkeypatch.undo()
        assert not sent
        nursery.cancel_scope.cancel()


def test_a_connection_the_peer_closed_is_seen_before_writing_into_it() -> None:
    """After a pause, the host loop may write before the session's watcher has run: a
    write into a connection the peer closed would "succeed" and be lost."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        out = _Outbound(2, ("127.0.0.1", 1))
        out.probe = ours
        assert not _peer_closed(out)
        theirs.close()
        assert _peer_closed(out)
