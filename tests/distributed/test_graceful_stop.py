"""Real processes: SIGTERM (and Ctrl-C) stop a node gracefully, under load.

A stopping leader hands its groups over, answers every write it took on, refuses new
ones with ``ERR UNAVAILABLE ... is stopping``, and exits 0; writers through other
nodes never see ``ERR TIMEOUT``. A node started with SIGINT ignored (a background job)
still stops gracefully on SIGTERM.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from boutique.testing.local_cluster import LocalCluster, free_ports

pytestmark = pytest.mark.distributed

BATCH = 16


class Writer(threading.Thread):
    """Pipelined PUTs of fresh keys on one raw connection until told to stop or the
    server closes the connection; keeps every reply line by key."""

    def __init__(self, port: int, tag: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.tag = tag
        self.stop = threading.Event()
        self.replies: dict[str, str] = {}
        self.closed_by_server = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        counter = itertools.count()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            reader = sock.makefile("rb")
            while not self.stop.is_set():
                keys = [f"{self.tag}-{next(counter)}" for _ in range(BATCH)]
                try:
                    sock.sendall(b"".join(f"PUT hats {k} v{k}\n".encode() for k in keys))
                except OSError:
                    self.closed_by_server = True
                    return
                for key in keys:
                    line = reader.readline()  # a reset (lost replies) fails the test
                    if not line:
                        self.closed_by_server = True
                        return
                    self.replies[key] = line.decode().strip()


def _leader_and_other(cluster: LocalCluster) -> tuple[str, str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        leader = cluster.leader_of("b/hats/")
        if leader is not None:
            return leader, next(n for n in cluster.nodes if n != leader)
        time.sleep(0.05)
    raise AssertionError("no leader for hats")


def test_sigterm_on_the_leader_under_load_loses_no_write_and_exits_0(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3) as cluster:
        cluster.start()
        with cluster.client("n1") as client:
            client.create("hats")
            client.put("hats", "warm", "up")
        leader, other = _leader_and_other(cluster)
        through_other = [Writer(cluster.nodes[other].client_port, f"o{i}") for i in range(3)]
        # A writer on the stopping node itself: what it sent before the signal is
        # answered OK, what comes after is refused as certainly not applied.
        direct = Writer(cluster.nodes[leader].client_port, "d")
        writers = [*through_other, direct]
        for writer in writers:
            writer.start()
        time.sleep(0.7)
        process = cluster.nodes[leader].process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        time.sleep(0.7)  # writes keep flowing through the new leader
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(timeout=30)
            assert writer.error is None, writer.error
        log = cluster.nodes[leader].log_path.read_text()
        assert code == 0, log[-3000:]
        assert "stopped (SIGTERM)" in log
        for writer in through_other:
            tally = Counter(writer.replies.values())
            assert set(tally) == {"OK"}, tally.most_common(5)
        # The stopping node closed its connection gently: every reply it sent was read.
        assert direct.closed_by_server
        stopping = f"ERR UNAVAILABLE node {leader} is stopping"
        assert set(direct.replies.values()) <= {"OK", stopping}, Counter(direct.replies.values())
        # Every acknowledged write is there, read through a node that kept running.
        acknowledged = [k for w in writers for k, reply in w.replies.items() if reply == "OK"]
        assert len(acknowledged) > 100
        with cluster.client(other) as client:
            stored = dict(client.scan("hats"))
        assert all(stored.get(key) == f"v{key}" for key in acknowledged)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _single_node(tmp_path: Path, **popen: object) -> tuple[subprocess.Popen[bytes], Path]:
    (port,) = free_ports(1)
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "boutique_server",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **popen,  # type: ignore[call-overload]
        )
    return process, log_path


SIGTERM_DURING_STARTUP = """
import os, signal, sys
import boutique_server.__main__ as cli

serve = cli.serve

async def serve_after_a_sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # before the node could handle it
    return await serve(*args, **kwargs)

cli.serve = serve_after_a_sigterm
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_while_the_node_starts_still_stops_it_gracefully(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            SIGTERM_DURING_STARTUP,
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert "node local stopped (SIGTERM)" in process.stderr


def test_a_background_node_ignoring_sigint_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    # preexec_fn: SIGINT ignored, as a shell does for a job started with &
    process, log_path = _single_node(tmp_path, preexec_fn=_ignore_sigint)
    try:
        deadline = time.monotonic() + 20
        while "ready on" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # ignored, as the job asked
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_path.read_text()
        text = log_path.read_text()
        assert "node local stopped (SIGTERM)" in text
        assert "Traceback" not in text
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
