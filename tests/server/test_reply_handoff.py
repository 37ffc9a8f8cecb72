"""Replies to task-free commands are made and written by the line server, not by the
host loop: the outcome callback (run inside ``RaftHost``'s turn) only records the
outcome and queues the connection; after the turn, the server's answering task formats
every connection's ready replies and writes each connection's in one go."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

import boutique_server.server as server_module
from boutique.runtime.group import Applied, Outcome, Rejected
from boutique_server.connection_state import Answer

if TYPE_CHECKING:  # conftest is not importable at run time; its fixtures hand these out
    from conftest import MemoryRouter, Served, StartMemoryServer


class LaterRouter:
    """Takes every PUT, GET and CREATE on the task-free path and keeps its callback, so the
    test plays the host loop and decides when (and with what) each one settles."""

    def __init__(self, inner: MemoryRouter) -> None:
        self.inner = inner
        self.waiting: list[tuple[tuple[Any, ...], Callable[[Outcome], None]]] = []

    def start(self, bucket: str, command: tuple[Any, ...], then: Callable[[Outcome], None]) -> bool:
        self.waiting.append((command, then))
        return True

    def start_create(self, name: str, then: Callable[[Outcome], None]) -> bool:
        self.waiting.append((("create", name), then))
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def later_server(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> tuple[LaterRouter, Served]:
    """A server over a ``LaterRouter``, with bucket "b" created."""
    await memory_router.create("b")
    router = LaterRouter(memory_router)
    return router, await start_memory_server(router)


@pytest.fixture
def writes_in_the_loop(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[bool]]:
    """``os.write`` calls made while the test says it is inside the host loop's turn
    (set ``in_loop[0]``), by their sizes."""
    made: list[int] = []
    in_loop = [False]
    write = os.write

    def watched(fd: int, data: Any) -> int:
        if in_loop[0]:
            made.append(len(data))
        return write(fd, data)

    monkeypatch.setattr(os, "write", watched)
    return made, in_loop


async def test_the_loops_callback_only_records_and_the_connection_writes(
    start_memory_server: StartMemoryServer,
    memory_router: MemoryRouter,
    writes_in_the_loop: tuple[list[int], list[bool]],
) -> None:
    router, served = await later_server(start_memory_server, memory_router)
    conn = await served.connect()
    await conn.send(b"PUT b k1 v\nDELETE b k2\nPUT b k3 v\n")
    await trio.testing.wait_all_tasks_blocked()
    [connection] = served.server.live
    assert [command[0] for command, _ in router.waiting] == ["put", "delete", "put"]

    made, in_loop = writes_in_the_loop
    in_loop[0] = True
    for _, then in router.waiting:
        then(Applied(None))
    in_loop[0] = False
    # Recorded, not answered: no reply was written, formatted or counted in the turn.
    assert made == []
    assert [slot.state for slot in connection.replies] == [Answer.SETTLED] * 3
    assert served.server.served == 0
    await conn.expect(b"OK\r\n" * 3)
    assert served.server.served == 3


async def test_an_attempt_that_settles_nothing_goes_to_the_full_router_from_the_connection(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    await memory_router.create("b")
    await memory_router.put("b", b"k", b"old")
    router = LaterRouter(memory_router)
    served = await start_memory_server(router)
    conn = await served.connect()
    await conn.send(b"GET b k\n")
    await trio.testing.wait_all_tasks_blocked()
    [(_, then)] = router.waiting
    then(Rejected("not the leader"))
    await conn.expect(b"old\r\nOK\r\n")  # the full router's answer


async def test_an_outcome_for_a_connection_that_is_gone_is_dropped(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    router, served = await later_server(start_memory_server, memory_router)
    conn = await served.connect()
    await conn.send(b"PUT b k v\n")
    await trio.testing.wait_all_tasks_blocked()
    [connection] = served.server.live
    conn.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await conn.aclose()  # a reset: nobody left to answer
    with trio.fail_after(5):
        while not connection.state.over:
            await trio.sleep(0.001)
    assert connection.state.over
    [(_, then)] = router.waiting
    then(Applied(None))
    assert served.server.served == 0 and served.server.reply_bytes == 0


async def test_a_create_holds_up_only_the_commands_on_its_own_bucket(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    await memory_router.create("other")
    router = LaterRouter(memory_router)
    served = await start_memory_server(router)
    conn = await served.connect()
    await conn.send(b"CREATE x\nCREATE y\nPUT other k v\nPUT x k v\n")
    await trio.testing.wait_all_tasks_blocked()
    # CREATE y waits for no CREATE of another bucket, nor does a PUT to another bucket;
    # the PUT to x waits (in a task) until CREATE x is answered.
    assert [command for command, _ in router.waiting] == [
        ("create", "x"),
        ("create", "y"),
        ("put", b"k", b"v"),
    ]
    for command, then in router.waiting:
        if command[0] == "create":
            await memory_router.create(command[1])
            then(Applied(("created", {})))
        else:
            then(Applied(None))
    await conn.expect(b"OK\r\n" * 4)
    assert await memory_router.get("x", b"k") == b"v"


async def test_one_task_answers_every_connection_that_settled_in_a_turn(
    start_memory_server: StartMemoryServer,
    memory_router: MemoryRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Outcomes for three connections recorded in one turn wake no writer: the server's
    # answering task makes all three replies after the turn (one wake-up, not three).
    router, served = await later_server(start_memory_server, memory_router)
    conns = [await served.connect() for _ in range(3)]
    for i, conn in enumerate(conns):
        await conn.send(b"PUT b k%d v\n" % i)
    await trio.testing.wait_all_tasks_blocked()
    woken: list[str] = []

    class Recorded:
        """Stands in for a writer's wake-up event: records each ``set``."""

        def __init__(self, source: str) -> None:
            self.source = source

        def set(self) -> None:
            woken.append(self.source)

    for connection in served.server.live:
        monkeypatch.setattr(connection, "_writer_wanted", Recorded(connection.source))
    for _, then in router.waiting:
        then(Applied(None))
    assert woken == []
    for conn in conns:
        await conn.expect(b"OK\r\n")
    assert served.server.served == 3


async def test_a_failure_answering_one_connection_closes_only_that_one(
    start_memory_server: StartMemoryServer,
    memory_router: MemoryRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router, served = await later_server(start_memory_server, memory_router)
    doomed, other = await served.connect(), await served.connect()
    await doomed.send(b"PUT b k1 v\n")
    await trio.testing.wait_all_tasks_blocked()
    [(_, then)] = router.waiting

    def broken(command: object, outcome: object) -> bytes:
        raise RuntimeError("a bug formatting a reply")

    with monkeypatch.context() as patch:
        patch.setattr(server_module, "_settled_reply", broken)
        then(Applied(None))
        await trio.testing.wait_all_tasks_blocked()
    assert await doomed.closed() == b""
    # The server's answering task lives on: the other connection is still answered.
    await other.send(b"PUT b k2 v\n")
    await trio.testing.wait_all_tasks_blocked()
    router.waiting[-1][1](Applied(None))
    await other.expect(b"OK\r\n")
