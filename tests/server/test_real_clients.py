"""The D-Boutique transcript through a real ``nc`` and a real ``telnet``, against a real
``boutique-server`` process.

The server runs as a subprocess (``LocalCluster`` with one node, ended by PID). ``nc``
is driven through pipes; ``telnet`` through a pseudo-terminal, typed at like a person
would (Enter, then Ctrl-] and ``quit``). A small recording proxy between telnet and
the server keeps the exact bytes of both directions, so the server's replies are
checked byte for byte even though the terminal reformats what it shows.

If ``nc`` or ``telnet`` is missing these tests fail, never skip: run
``tools/ensure-clients.sh`` to install them.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from boutique.testing.local_cluster import LocalCluster

TRANSCRIPT = [
    (b"GET shopping eggs", b"NOT FOUND\r\n"),
    (b"CREATE shopping", b"OK\r\n"),
    (b"PUT shopping eggs 3", b"OK\r\n"),
    (b"GET shopping eggs", b"3\r\nOK\r\n"),
    (b"DELETE shopping eggs", b"OK\r\n"),
    (b"GET shopping eggs", b"\r\nOK\r\n"),
]
"""The original D-Boutique session: request lines (without endings) and exact replies."""
ALL_REPLIES = b"".join(reply for _, reply in TRANSCRIPT)
TIMEOUT = 15.0


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"`{tool}` is not installed; these tests drive the real client. "
            "Install it with tools/ensure-clients.sh (netcat-openbsd and telnet).",
            pytrace=False,
        )
    return path


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def end_process(process: subprocess.Popen[bytes]) -> None:
    """Kill by PID if it is still running, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A real boutique-server process with one node, "n1"."""
    with LocalCluster(tmp_path / "cluster", nodes=1) as cluster:
        cluster.start()
        yield cluster


@pytest.fixture
def server_port(cluster: LocalCluster) -> int:
    return cluster.nodes["n1"].client_port


def clients_connected(cluster: LocalCluster) -> int:
    """Clients the server is serving, not counting the one asking."""
    [line] = [line for line in cluster.status("n1") if line.startswith("clients ")]
    return int(line.split()[1]) - 1


# --- nc ----------------------------------------------------------------------------------


def read_exactly(fd: int, count: int, timeout: float = TIMEOUT) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"timed out after {data!r}")
        chunk = os.read(fd, count - len(data))
        if not chunk:
            raise AssertionError(f"closed after {data!r}")
        data += chunk
    return data


def test_transcript_through_nc_line_by_line(cluster: LocalCluster, server_port: int) -> None:
    nc = require("nc")
    process = subprocess.Popen(
        [nc, "127.0.0.1", str(server_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        out = process.stdout.fileno()
        for request, reply in TRANSCRIPT:
            process.stdin.write(request + b"\n")
            process.stdin.flush()
            assert read_exactly(out, len(reply)) == reply, request
        process.stdin.write(b"QUIT\n")
        process.stdin.flush()
        assert read_exactly(out, 4) == b"OK\r\n"
        wait_for(lambda: clients_connected(cluster) == 0, "the server to close the connection")
        process.stdin.close()  # nc waits for the end of its input before it exits
        assert process.wait(timeout=TIMEOUT) == 0
        assert process.stdout.read() == b""
    finally:
        end_process(process)


def test_transcript_through_nc_all_at_once_with_crlf(server_port: int) -> None:
    nc = require("nc")
    # -C sends CRLF line endings; -N shuts the socket's sending side at end of input,
    # and the server still answers everything before it closes.
    requests = b"".join(request + b"\n" for request, _ in TRANSCRIPT)
    result = subprocess.run(
        [nc, "-C", "-N", "127.0.0.1", str(server_port)],
        input=requests,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.stdout == ALL_REPLIES
    assert result.returncode == 0, result.stderr


# --- telnet ------------------------------------------------------------------------------


class RecordingProxy:
    """Forwards one TCP connection to ``target_port`` and records both directions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.closed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.listener.settimeout(0.1)
        client = upstream = None
        try:
            while client is None:
                if self._stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            routes = {client: (upstream, self.to_server), upstream: (client, self.to_client)}
            while routes and not self._stop.is_set():
                ready, _, _ = select.select(list(routes), [], [], 0.1)
                for sock in ready:
                    other, record = routes[sock]
                    try:
                        data = sock.recv(65536)
                    except ConnectionError:
                        data = b""
                    if data:
                        record += data
                        other.sendall(data)
                    else:
                        with contextlib.suppress(OSError):
                            other.shutdown(socket.SHUT_WR)
                        del routes[sock]
        finally:
            for end in (client, upstream):
                if end is not None:
                    end.close()
            self.closed.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


class TelnetSession:
    """A real telnet client on a pseudo-terminal."""

    def __init__(self, telnet: str, port: str) -> None:
        master, slave = os.openpty()
        self.master = master
        self.screen = bytearray()
        try:
            self.process = subprocess.Popen(
                [telnet, "--", "127.0.0.1", port],  # "--": the port may start with "-"
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                env={**os.environ, "TERM": "dumb", "HOME": os.environ.get("HOME", "/")},
            )
        finally:
            os.close(slave)

    def pump(self, until: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        """Read what telnet shows until ``until()`` holds."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out waiting for {what}; screen: {bytes(self.screen)!r}"
                )
            if select.select([self.master], [], [], min(left, 0.05))[0]:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: telnet exited and the terminal is gone
                    data = b""
                if not data:
                    # The terminal closed: telnet is exiting. Reap it, then decide.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(timeout=max(left, 0.1))
                    if until():
                        return
                    raise AssertionError(f"telnet ended before {what}: {bytes(self.screen)!r}")
                self.screen += data

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        end_process(self.process)
        os.close(self.master)


def shown(screen: bytes | bytearray) -> bytes:
    """The screen without carriage returns (the terminal adds or keeps them)."""
    return bytes(screen).replace(b"\r", b"")


@pytest.mark.parametrize("negotiate", [False, True], ids=["plain", "option-negotiation"])
def test_transcript_through_telnet(server_port: int, negotiate: bool) -> None:
    telnet = require("telnet")
    proxy = RecordingProxy(server_port)
    # With a port written "-N", telnet starts the TELNET option negotiation itself
    # (IAC DO/WILL ...), as it does on port 23; the server must strip it.
    session = TelnetSession(telnet, f"-{proxy.port}" if negotiate else str(proxy.port))
    try:
        session.pump(lambda: b"Escape character is" in session.screen, "the banner")
        replies = b""
        for request, reply in TRANSCRIPT:
            session.type(request + b"\r")  # what the Enter key sends
            replies += reply
            session.pump(
                lambda: bytes(proxy.to_client) == replies,  # noqa: B023 - used at once
                f"the reply to {request!r}",
            )
            echo_and_reply = shown(request + b"\r\n" + reply)
            session.pump(
                lambda: echo_and_reply in shown(session.screen),  # noqa: B023 - used at once
                f"telnet showing the reply to {request!r}",
            )
        session.type(b"\x1d")  # Ctrl-]
        session.pump(lambda: b"telnet>" in session.screen, "the telnet prompt")
        session.type(b"quit\r")
        # Read the farewell before waiting for the exit: once telnet has exited, what
        # it printed last may still sit unread in the terminal.
        session.pump(lambda: b"Connection closed." in session.screen, "telnet's farewell")
        session.pump(lambda: session.process.poll() is not None, "telnet to exit")
        assert session.process.returncode == 0
        wait_for(proxy.closed.is_set, "the connection to close")
        # Byte for byte what the server sent telnet: the replies and nothing else.
        assert bytes(proxy.to_client) == ALL_REPLIES
        sent = bytes(proxy.to_server)
        if negotiate:
            assert sent.startswith(b"\xff"), sent[:20]  # telnet opened with IAC commands
        lines = sent[sent.index(b"GET") :] if negotiate else sent
        assert lines == b"".join(request + b"\r\n" for request, _ in TRANSCRIPT)
    finally:
        session.close()
        proxy.close()
