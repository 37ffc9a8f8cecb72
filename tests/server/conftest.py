"""In-process servers for the server tests, and a raw line client to talk to them.

``start_server`` starts a real single-node ``Node`` and a ``LineServer`` on an OS-chosen
port of 127.0.0.1 inside the test's nursery (cancelled when the test ends). Options
make the limits small; ``wrap_router`` lets a test watch or hold the commands the server
runs. ``start_memory_server`` puts the ``LineServer`` in front of ``MemoryRouter``, a
dict-backed stand-in with the router's error classes and no Raft, no threads and no
clock of its own, so it also runs under ``MockClock``.

``Conn`` speaks raw bytes, never the Python client, so tests see exactly what a
``telnet`` user would; a ``Served`` hands them out. Test modules cannot import this
file at run time (the test directories are not packages), so they get everything
through fixtures and import the names only for type checking.
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
import trio

from boutique.config import ClusterConfig, single_node_config
from boutique.runtime.node import Node
from boutique.runtime.router import NotFound, Router
from boutique.wire import RawReply, ReplyParser
from boutique_server.server import SEND_TIMEOUT, LineServer

READ_TIMEOUT = 10.0
"""Seconds a test waits for bytes it expects before failing (never slept)."""


class Conn:
    """A raw client connection: send bytes, expect bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def read(self, count: int, timeout: float = READ_TIMEOUT) -> bytes:
        """Exactly ``count`` bytes, or fewer if the server closes first."""
        with trio.fail_after(timeout):
            while len(self.buffer) < count and await self._fill():
                pass
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def expect(self, expected: bytes, timeout: float = READ_TIMEOUT) -> None:
        """The next bytes are exactly ``expected``."""
        got = await self.read(len(expected), timeout)
        assert got == expected

    async def read_until(self, marker: bytes, timeout: float = READ_TIMEOUT) -> bytes:
        """Everything up to and including the first ``marker``."""
        with trio.fail_after(timeout):
            while (end := self.buffer.find(marker)) < 0:
                if not await self._fill():
                    raise AssertionError(f"closed before {marker!r}: {bytes(self.buffer)[-200:]!r}")
        data = bytes(self.buffer[: end + len(marker)])
        del self.buffer[: end + len(marker)]
        return data

    async def replies(self, count: int, timeout: float = READ_TIMEOUT) -> list[RawReply]:
        """The next ``count`` framed replies."""
        parser = ReplyParser()
        parser.feed(self.buffer)
        self.buffer.clear()
        got: list[RawReply] = []
        with trio.fail_after(timeout):
            while True:
                got.extend(parser.replies())
                if len(got) >= count:
                    break
                data = await self.stream.receive_some(65536)
                if not data:
                    raise AssertionError(f"closed after {len(got)} of {count} replies")
                parser.feed(data)
        assert len(got) == count, f"more replies than asked for: {got[count:]}"
        assert parser.buffered == 0, "bytes after the last reply"
        return got

    async def closed(self, timeout: float = READ_TIMEOUT, *, reset_ok: bool = True) -> bytes:
        """Read until the server closes; what arrived before that. A reset counts as a
        close unless ``reset_ok`` is false."""
        with trio.fail_after(timeout):
            try:
                while await self._fill():
                    pass
            except trio.BrokenResourceError:
                if not reset_ok:
                    raise AssertionError(
                        f"the server reset the connection after {bytes(self.buffer)!r}"
                    ) from None
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Served:
    """A running in-process server."""

    server: LineServer
    port: int
    config: ClusterConfig
    node: Node | None
    router: Router

    async def connect(self, *, receive_buffer: int | None = None) -> Conn:
        """A new connection; ``receive_buffer`` shrinks its kernel receive buffer (set
        before connecting, so the TCP window is small from the start)."""
        if receive_buffer is None:
            return Conn(await trio.open_tcp_stream("127.0.0.1", self.port))
        sock = trio.socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await sock.connect(("127.0.0.1", self.port))
        except BaseException:
            sock.close()
            raise
        return Conn(trio.SocketStream(sock))

    async def transcript(self, request: bytes, reply_count: int) -> list[RawReply]:
        """Send ``request`` on a new connection; its first ``reply_count`` replies."""
        conn = await self.connect()
        try:
            await conn.send(request)
            return await conn.replies(reply_count)
        finally:
            await conn.aclose()


class StartServer(Protocol):
    def __call__(
        self,
        *,
        wrap_router: Callable[[Router], Router] | None = None,
        send_timeout: float = SEND_TIMEOUT,
        max_in_flight: int | None = None,
        **config: Any,
    ) -> Awaitable[Served]: ...


def _config(data_dir: Path, overrides: dict[str, Any]) -> ClusterConfig:
    config = single_node_config(port=4040, data_dir=data_dir)
    # Port 0 everywhere: the OS picks free ports, so tests never collide.
    me = dataclasses.replace(config.nodes[0], client_port=0, peer_port=0)
    return dataclasses.replace(config, nodes=(me,), **overrides)


def _line_server(
    config: ClusterConfig,
    node: Node | None,
    router: Router,
    send_timeout: float,
    max_in_flight: int | None,
) -> LineServer:
    extra: dict[str, Any] = {}
    if send_timeout != SEND_TIMEOUT:
        extra["send_timeout"] = send_timeout
    if max_in_flight is not None:
        extra["max_in_flight"] = max_in_flight
    return LineServer(config, config.nodes[0], cast(Node, node), router, **extra)


@pytest.fixture
def start_server(nursery: trio.Nursery, tmp_path: Path) -> StartServer:
    """Start a real single-node server; every call gets its own data directory."""
    numbers = itertools.count(1)

    async def start(
        *,
        wrap_router: Callable[[Router], Router] | None = None,
        send_timeout: float = SEND_TIMEOUT,
        max_in_flight: int | None = None,
        **overrides: Any,
    ) -> Served:
        config = _config(tmp_path / f"node{next(numbers)}", overrides)
        node: Node = await nursery.start(Node(config, config.nodes[0]).run)
        router = Router(node)
        if wrap_router is not None:
            router = wrap_router(router)
        server = _line_server(config, node, router, send_timeout, max_in_flight)
        port: int = await nursery.start(server.serve, 0)
        return Served(server, port, config, node, router)

    return start


@pytest.fixture
async def served(start_server: StartServer) -> Served:
    """A real single-node server with the default limits."""
    return await start_server()


# --- a router without Raft -------------------------------------------------------------


class MemoryRouter:
    """The ``Router`` API over plain dicts: same answers, same exceptions, no Raft."""

    def __init__(self) -> None:
        self.buckets_: dict[str, dict[bytes, bytes]] = {}

    def start(self, bucket: str, command: Any, then: Any) -> bool:
        return False  # no task-free path: the server uses the async methods

    def start_create(self, name: str, then: Any) -> bool:
        return False  # no task-free path: the server uses the async create

    def _bucket(self, name: str) -> dict[bytes, bytes]:
        try:
            return self.buckets_[name]
        except KeyError:
            raise NotFound(name) from None

    async def create(self, name: str) -> None:
        await trio.lowlevel.checkpoint()
        self.buckets_.setdefault(name, {})

    async def drop(self, name: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._bucket(name)
        del self.buckets_[name]
        return True

    async def buckets(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self.buckets_)

    async def put(self, bucket: str, key: bytes, value: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._bucket(bucket)[key] = value

    async def delete(self, bucket: str, key: bytes) -> bool:
        await trio.lowlevel.checkpoint()
        return self._bucket(bucket).pop(key, None) is not None

    async def get(self, bucket: str, key: bytes) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self._bucket(bucket).get(key)

    async def keys(
        self, bucket: str, prefix: bytes | None, limit: int | None, start: bytes = b""
    ) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        data = self._bucket(bucket)
        keys = sorted(k for k in data if k.startswith(prefix or b"") and k >= start)
        return keys[:limit]

    async def scan(
        self, bucket: str, start: bytes, end: bytes | None, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        await trio.lowlevel.checkpoint()
        data = self._bucket(bucket)
        keys = sorted(k for k in data if k >= start and (end is None or k < end))
        return [(k, data[k]) for k in keys[:limit]]


@pytest.fixture
def memory_router() -> MemoryRouter:
    return MemoryRouter()


class StartMemoryServer(Protocol):
    def __call__(
        self,
        router: Any = None,
        *,
        send_timeout: float = SEND_TIMEOUT,
        max_in_flight: int | None = None,
        **config: Any,
    ) -> Awaitable[Served]: ...


@pytest.fixture
def start_memory_server(nursery: trio.Nursery, tmp_path: Path) -> StartMemoryServer:
    """Start a ``LineServer`` in front of ``router`` (default: a new ``MemoryRouter``)."""

    async def start(
        router: Any = None,
        *,
        send_timeout: float = SEND_TIMEOUT,
        max_in_flight: int | None = None,
        **overrides: Any,
    ) -> Served:
        config = _config(tmp_path / "unused", overrides)
        router = MemoryRouter() if router is None else router
        server = _line_server(config, None, router, send_timeout, max_in_flight)
        port: int = await nursery.start(server.serve, 0)
        return Served(server, port, config, None, router)

    return start
