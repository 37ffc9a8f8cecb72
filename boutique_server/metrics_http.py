"""The metrics endpoint: ``GET /metrics`` over HTTP/1.1, answered from trio.

A Prometheus server (or ``curl``) fetches the store's metrics here, in the text format
``boutique.metrics.Registry.render`` produces. The server reads one request of at most
``MAX_REQUEST`` bytes within ``REQUEST_TIMEOUT`` seconds, answers it and closes the
connection; at most ``MAX_CONNECTIONS`` are served at once, the rest are turned away
with 503. ``GET /`` says where the metrics are; every other path is a 404 and every
other method a 405.

It only reads counters: nothing sent here can change the store, and nothing is
authenticated, so it is off unless ``[metrics] port`` is set, and listens on
``[metrics] host`` (127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("boutique.metrics")

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def answer(request_head: bytes, render: Callable[[], str]) -> bytes:
    """The whole HTTP response to one request head (the bytes up to the blank line)."""
    first = request_head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = first.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response("400 Bad Request", b"bad request line\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response("405 Method Not Allowed", b"only GET\n")
    if target == b"/metrics":
        response = _response("200 OK", render().encode("utf-8"), CONTENT_TYPE)
    elif target == b"/":
        response = _response("200 OK", b"boutique metrics are at /metrics\n")
    else:
        return _response("404 Not Found", b"not found; the metrics are at /metrics\n")
    if method == b"HEAD":
        return response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return response


class MetricsServer:
    """Serves ``render()`` on one port. Start it with ``await nursery.start(server.run)``."""

    def __init__(self, render: Callable[[], str], host: str, port: int) -> None:
        self.render = render
        self.host = host
        self.port = port
        self._slots = trio.Semaphore(MAX_CONNECTIONS)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics port {self.host}:{self.port} cannot be opened: {exc.strerror}"
            ) from exc
        port = listeners[0].socket.getsockname()[1]
        log.info("metrics served on http://%s:%d/metrics", self.host, port)
        async with trio.open_nursery() as nursery:
            task_status.started(port)
            await trio.serve_listeners(self._serve, listeners, handler_nursery=nursery)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                await self._send(stream, _response("503 Service Unavailable", b"busy\n"))
                return
            try:
                head = await self._read_head(stream)
                if head is not None:
                    await self._send(stream, answer(head, self.render))
            finally:
                self._slots.release()

    @staticmethod
    async def _read_head(stream: trio.SocketStream) -> bytes | None:
        data = b""
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in data and b"\n\n" not in data:
                if len(data) > MAX_REQUEST:
                    await MetricsServer._send(
                        stream, _response("431 Request Header Fields Too Large", b"too long\n")
                    )
                    await MetricsServer._linger(stream)
                    return None
                try:
                    chunk = await stream.receive_some(4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not chunk:
                    return None
                data += chunk
            return data
        return None

    @staticmethod
    async def _linger(stream: trio.SocketStream) -> None:
        """Close the sending side, then read (and drop) a bounded amount of what the
        client is still sending, so closing does not reset the connection before the
        client has read the error."""
        with trio.move_on_after(1.0):
            try:
                await stream.send_eof()
                dropped = 0
                while dropped < 16 * MAX_REQUEST and (chunk := await stream.receive_some(4096)):
                    dropped += len(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    @staticmethod
    async def _send(stream: trio.SocketStream, data: bytes) -> None:
        with trio.move_on_after(REQUEST_TIMEOUT):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(data)
