"""The floor of the process model: a bare line server with no Raft, no storage, no routing.

``python -m boutique.bench echo --scenario writes64`` runs the very load of a scenario
(the same client processes, connections, pipelining and request lines) against bare
servers, and ``tools/floor.sh`` runs ``compare.sh``'s own load generator against them.
A bare server answers the data commands as a one-node in-memory map would, and does
nothing else: ``PUT`` stores the value and answers ``OK``; ``GET`` answers the value last
put (an empty line if none) and ``OK``; every other line answers ``OK``. Two loops:

- ``trio``: one task per connection (``receive_some``, split the lines, ``send_all``),
  which is what boutique's server does per request before any store work;
- ``selectors``: one thread, one ``selectors`` loop over every socket, no framework: the
  least Python can do to answer a line, so the best that one event loop serving many
  client sockets could ever reach.

What they reach on a machine bounds what any pure-Python node can serve there, whatever
its Raft does; boutique's three nodes on the same cores share that budget with
replication and durability.

``python -m boutique.bench.echo --port N [--loop selectors]`` runs one server alone (the
benchmark starts them that way, on ports it picks, and ends them by PID). It listens on
127.0.0.1 only, and must never be imported by the store itself.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import trio

from boutique.testing.local_cluster import free_ports

from .cluster import Address, Ledger

LOOPS = ("trio", "selectors")
MAX_LINE = 64 * 1024
"""A connection whose buffer holds this much without a line end is closed: the bare
server's memory stays bounded in bytes like the store's."""
MAX_VALUES = 1_000_000
"""Values kept at most; beyond it the oldest key is forgotten (a GET of it answers the
empty line, as for a key never put)."""

_OK = b"OK\r\n"
_RECEIVE_BYTES = 65536


class BareMap:
    """The answers of a one-node in-memory map, with no parsing beyond splitting a line."""

    def __init__(self) -> None:
        self._values: dict[bytes, bytes] = {}

    def answer(self, buffer: bytearray) -> bytes:
        """The replies to every complete line in ``buffer``, which loses those lines."""
        end = buffer.rfind(b"\n")
        if end < 0:
            return b""
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[: end + 1]
        replies = []
        for line in lines:
            if line.startswith(b"GET "):
                value = self._values.get(line[4:].rstrip(b"\r"), b"")
                replies.append(value + b"\r\n" + _OK)
            elif line.startswith(b"PUT "):
                parts = line.rstrip(b"\r").split(b" ", 3)
                if len(parts) == 4:
                    self._remember(parts[1] + b" " + parts[2], parts[3])
                replies.append(_OK)
            else:
                replies.append(_OK)
        return b"".join(replies)

    def _remember(self, key: bytes, value: bytes) -> None:
        if key not in self._values and len(self._values) >= MAX_VALUES:
            del self._values[next(iter(self._values))]
        self._values[key] = value


def serve_trio(port: int) -> None:
    """One trio task per connection, as boutique's line server has."""
    answers = BareMap()

    async def answer_lines(stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while data := await stream.receive_some(_RECEIVE_BYTES):
                buffer += data
                replies = answers.answer(buffer)
                if replies:
                    await stream.send_all(replies)
                elif len(buffer) > MAX_LINE:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def main() -> None:
        await trio.serve_tcp(answer_lines, port, host="127.0.0.1")

    trio.run(main)


class _Client:
    __slots__ = ("received", "sock", "unsent")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()
        self.unsent = bytearray()


def serve_selectors(port: int) -> None:
    """One ``selectors`` loop over every socket in one thread: no tasks, no framework."""
    answers = BareMap()
    selector = selectors.DefaultSelector()
    listener = socket.create_server(("127.0.0.1", port), backlog=512)
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, None)

    def close(client: _Client) -> None:
        selector.unregister(client.sock)
        client.sock.close()

    def flush(client: _Client) -> None:
        try:
            sent = client.sock.send(client.unsent)
        except BlockingIOError:
            sent = 0
        except OSError:
            close(client)
            return
        del client.unsent[:sent]
        # Ask for writability only while replies wait, so a quiet socket costs no wakeups.
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.unsent else 0)
        selector.modify(client.sock, events, client)

    while True:
        for key, events in selector.select():
            if key.data is None:
                with suppress(BlockingIOError):
                    sock, _ = listener.accept()
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    selector.register(sock, selectors.EVENT_READ, _Client(sock))
                continue
            client: _Client = key.data
            if events & selectors.EVENT_WRITE:
                flush(client)
                continue
            try:
                data = client.sock.recv(_RECEIVE_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                close(client)
                continue
            client.received += data
            replies = answers.answer(client.received)
            if replies:
                client.unsent += replies
                flush(client)
            elif len(client.received) > MAX_LINE:
                close(client)


@contextmanager
def echo_servers(
    ledger: Ledger, count: int = 1, loop: str = "trio"
) -> Iterator[list[tuple[Address, int]]]:
    """Start ``count`` bare servers as processes; yield their addresses and pids; kill them."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, not {loop!r}")
    ports = free_ports(count)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            command = [sys.executable, "-m", "boutique.bench.echo", "--port", str(port)]
            process = subprocess.Popen([*command, "--loop", loop])
            ledger.add(process.pid, f"{loop} bare server")
            processes.append(process)
        for port, process in zip(ports, processes, strict=True):
            _wait_listening(port, process)
        yield [(("127.0.0.1", port), p.pid) for port, p in zip(ports, processes, strict=True)]
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("a bare server did not start") from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boutique.bench.echo")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=LOOPS, default="trio")
    args = parser.parse_args(argv)
    with suppress(KeyboardInterrupt):
        (serve_trio if args.loop == "trio" else serve_selectors)(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
