"""The line server while its node stops: commands taken on are answered, new ones are
refused as certainly not applied, and connections close gently (no reset that could
destroy a reply the client has not read yet)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
import trio.testing

if TYPE_CHECKING:  # conftest is not importable at run time; its fixtures hand these out
    from conftest import MemoryRouter, StartMemoryServer

STOPPING = b"ERR UNAVAILABLE node local is stopping\r\n"


class HoldingRouter:
    """Holds every PUT until ``release`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.release = trio.Event()
        self.held = 0

    async def put(self, bucket: str, key: bytes, value: bytes) -> None:
        self.held += 1
        await self.release.wait()
        await self.inner.put(bucket, key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_stopping_server_answers_what_it_took_on_and_refuses_the_rest(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    await memory_router.create("b")
    holder = HoldingRouter(memory_router)
    served = await start_memory_server(holder)
    conn = await served.connect()
    await conn.send(b"PUT b k 1\n")
    await trio.testing.wait_all_tasks_blocked()
    assert holder.held == 1
    served.server.stopping = True
    await conn.send(b"PUT b k 2\nPING\n")
    await trio.testing.wait_all_tasks_blocked()
    assert holder.held == 1  # the refused PUT never reached the router
    assert served.server.busy()
    holder.release.set()
    await conn.expect(b"OK\r\n" + STOPPING + STOPPING)
    assert not served.server.busy()
    assert await memory_router.get("b", b"k") == b"1"


async def test_closing_connections_sends_owed_replies_then_closes_without_reset(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter, nursery: trio.Nursery
) -> None:
    await memory_router.create("b")
    holder = HoldingRouter(memory_router)
    served = await start_memory_server(holder)
    busy, idle = await served.connect(), await served.connect()
    await busy.send(b"PUT b k 1\n")
    await idle.send(b"PING\n")
    await idle.expect(b"PONG\r\n")
    await trio.testing.wait_all_tasks_blocked()
    served.server.stopping = True
    closed = trio.Event()

    async def close() -> None:
        await served.server.close_connections(timeout=10)
        closed.set()

    nursery.start_soon(close)
    assert await idle.closed(reset_ok=False) == b""
    await trio.testing.wait_all_tasks_blocked()
    assert not closed.is_set()  # the PUT taken on is still owed its reply
    holder.release.set()
    assert await busy.closed(reset_ok=False) == b"OK\r\n"
    await idle.aclose()
    await busy.aclose()
    await closed.wait()
    assert served.server.connections == 0
    # A client connecting now is closed too, without being served.
    late = await served.connect()
    await late.send(b"PING\n")
    assert await late.closed(reset_ok=False) == b""
