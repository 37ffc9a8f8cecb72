"""The ceiling of the process model: a trio server that answers ``OK`` to every line.

``python -m boutique.bench echo --scenario writes64`` runs the very load of a scenario
(the same client processes, connections, pipelining and request lines) against one
process that does nothing but find each line's end and answer it: no parsing, no
routing, no Raft, no storage. What it reaches on a machine bounds what any one-process,
pure-Python trio node can serve there, whatever its Raft does; boutique's three nodes on
the same cores share that budget with replication.

``python -m boutique.bench.echo --port N`` runs the server alone (the benchmark starts
it that way, on a port it picks, and ends it by PID).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import trio

from boutique.testing.local_cluster import free_ports

from .cluster import Address, Ledger

_ANSWER = b"OK\r\n"


async def _answer_lines(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            lines = data.count(b"\n")
            if lines:
                await stream.send_all(_ANSWER * lines)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def serve(port: int) -> None:
    await trio.serve_tcp(_answer_lines, port, host="127.0.0.1")


@contextmanager
def echo_server(ledger: Ledger) -> Iterator[tuple[Address, int]]:
    """Start the echo server as its own process; yield its address and pid; kill it."""
    (port,) = free_ports(1)
    process = subprocess.Popen([sys.executable, "-m", "boutique.bench.echo", "--port", str(port)])
    ledger.add(process.pid, "echo server")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the echo server did not start") from None
                time.sleep(0.05)
        yield ("127.0.0.1", port), process.pid
    finally:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boutique.bench.echo")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with suppress(KeyboardInterrupt):
        trio.run(serve, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
