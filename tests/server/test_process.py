"""The node process's stop: the first signal drains, a second one cuts the drain short;
the one log line of a stop says what the drain achieved."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from boutique.config import NodeConfig
from boutique.runtime.drain import DrainReport
from boutique_server import process
from boutique_server.process import Stopped, stopped_line

ME = NodeConfig("a-g", 1, "127.0.0.1", 4041, 5041, Path("data"))


def _fakes() -> tuple[Any, Any]:
    node = SimpleNamespace(me=ME, config=SimpleNamespace(request_timeout=5.0), removed=trio.Event())
    server = SimpleNamespace(stopping=False, removed=False, busy=lambda: False)
    return node, server


async def test_the_first_signal_drains_and_refuses_new_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report = DrainReport(led=2, still_leading=0, unsettled=False, seconds=0.1)

    async def drain(host: Any, **kwargs: Any) -> DrainReport:
        assert server.stopping  # new commands are refused before anything else
        return report

    monkeypatch.setattr(process, "drain", drain)
    node, server = _fakes()
    send, receive = trio.open_memory_channel[int](2)
    await send.send(signal.SIGTERM)
    stopped = await process._drain_on_signal(receive, node, server)
    assert stopped == Stopped("SIGTERM", report)


async def test_a_removed_node_drains_says_why_and_lingers_for_its_clients(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    report = DrainReport(led=0, still_leading=0, unsettled=False, seconds=0.0)

    async def drain(host: Any, **kwargs: Any) -> DrainReport:
        # Clients are refused, and told why, before anything else.
        assert server.stopping and server.removed
        return report

    monkeypatch.setattr(process, "drain", drain)
    node, server = _fakes()
    _, receive = trio.open_memory_channel[int](2)  # no signal comes
    node.removed.set()
    began = trio.current_time()
    stopped = await process._drain_on_signal(receive, node, server)
    assert stopped == Stopped("removed", report, removed=True)
    # Its connected clients get the removed reply for a while, not a bare close.
    assert trio.current_time() - began >= process.REMOVED_NOTICE
    assert stopped_line(ME, stopped).startswith("node a-g stopped (removed from the cluster): ")


async def test_a_second_signal_cuts_the_drain_short(monkeypatch: pytest.MonkeyPatch) -> None:
    draining = trio.Event()

    async def drain(host: Any, **kwargs: Any) -> DrainReport:
        draining.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(process, "drain", drain)
    node, server = _fakes()
    send, receive = trio.open_memory_channel[int](2)
    result: list[Stopped] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                result.append(await process._drain_on_signal(receive, node, server))

            nursery.start_soon(run)
            await send.send(signal.SIGINT)
            await draining.wait()
            await send.send(signal.SIGINT)
    assert result == [Stopped("SIGINT", None)]


def test_the_stop_line_says_what_the_drain_achieved() -> None:
    clean = Stopped("SIGTERM", DrainReport(led=3, still_leading=0, unsettled=False, seconds=0.08))
    assert stopped_line(ME, clean) == (
        "node a-g stopped (SIGTERM): left the lead of 3 of the 3 groups it led, every "
        "request taken on was answered, storage closed, in 0.08s"
    )
    late = Stopped("SIGINT", DrainReport(led=3, still_leading=1, unsettled=True, seconds=8.0))
    assert "left the lead of 2 of the 3 groups" in stopped_line(ME, late)
    assert "some requests had no outcome in time" in stopped_line(ME, late)
    assert "drain cut short" in stopped_line(ME, Stopped("SIGTERM", None))
