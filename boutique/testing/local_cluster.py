"""Real node processes on this machine, for distributed tests and benchmarks.

``LocalCluster`` writes a cluster config with ports it picked itself (all on
127.0.0.1), starts one ``boutique-server`` process per node with its own data
directory, and waits until each answers ``PING``. It kills, pauses and resumes nodes
by PID, and ``close()`` (also on exceptions, through ``with``) ends every process it
started, so a failing test never leaves a node behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from boutique.client import ClientError

from .cluster_access import NodeAccess


def free_ports(count: int) -> list[int]:
    """Ports the OS says are free now on 127.0.0.1 (held open together, so distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(slots=True)
class LocalNode:
    name: str
    id: int
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    joins: bool = False
    """Not in the config file: started with ``--join`` and its own identity."""
    host: str = "127.0.0.1"
    """Its address, for peers and for clients."""
    launcher: list[str] = field(default_factory=list)
    """Put before the command that starts it (e.g. ``ip netns exec NS``)."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster(NodeAccess):
    """A cluster of real processes. Use as a context manager."""

    def __init__(
        self,
        workdir: Path,
        nodes: int = 3,
        *,
        replication: int = 3,
        secret: str = "local-cluster-test-secret",
        splits: tuple[str, ...] = ("h", "o", "v"),
        tick_interval: float = 0.02,
        election_ticks: int = 10,
        snapshot_entries: int = 10_000,
        request_timeout: float = 5.0,
        max_line: int | None = None,
        fault_injection: bool = True,
        unsafe_local_reads: bool = False,
        extra: str = "",
        hosts: dict[str, str] | None = None,
        launchers: dict[str, list[str]] | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        """``hosts`` gives nodes (``n1``, ``n2``, ...) addresses other than 127.0.0.1,
        ``launchers`` a command prefix each (both for nodes in network namespaces, see
        ``netns_cluster``); ``listen_host`` is where nodes take clients."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.secret = secret
        ports = free_ports(2 * nodes)
        names = [f"n{i}" for i in range(1, nodes + 1)]
        self.nodes: dict[str, LocalNode] = {}
        for i, name in enumerate(names):
            self.nodes[name] = LocalNode(
                name,
                i + 1,
                ports[2 * i],
                ports[2 * i + 1],
                self.workdir / "data" / name,
                self.workdir / f"{name}.log",
                host=(hosts or {}).get(name, "127.0.0.1"),
                launcher=list((launchers or {}).get(name, [])),
            )
        self.config_path = self.workdir / "cluster.toml"
        lines = [
            'cluster_name = "test"',
            f'secret = "{secret}"',
            f"replication = {min(replication, nodes)}",
            "splits = [" + ", ".join(f'"{s}"' for s in splits) + "]",
            f'data_dir = "{self.workdir / "data"}"',
            "",
            "[raft]",
            f"tick_interval = {tick_interval}",
            f"election_ticks = {election_ticks}",
            f"snapshot_entries = {snapshot_entries}",
            "",
            "[server]",
            f"request_timeout = {request_timeout}",
            f'listen_host = "{listen_host}"',
            *([f"max_line = {max_line}"] if max_line is not None else []),
            "",
            "[testing]",
            f"fault_injection = {str(fault_injection).lower()}",
            f"unsafe_local_reads = {str(unsafe_local_reads).lower()}",
            extra,
        ]
        for node in self.nodes.values():
            lines += [
                "",
                "[[node]]",
                f'name = "{node.name}"',
                f"id = {node.id}",
                f'host = "{node.host}"',
                f"client_port = {node.client_port}",
                f"peer_port = {node.peer_port}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    # --- Lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, *names: str, wait: bool = True, env: dict[str, str] | None = None) -> None:
        """Start the named nodes (all if none), then wait until each answers."""
        chosen = names or tuple(self.nodes)
        for name in chosen:
            node = self.nodes[name]
            if node.running:
                continue
            node.extra_env = dict(env or {})
            if node.joins:
                identity = [
                    "--join",
                    "--name",
                    name,
                    "--id",
                    str(node.id),
                    "--port",
                    str(node.client_port),
                    "--peer-port",
                    str(node.peer_port),
                    "--data-dir",
                    str(node.data_dir),
                ]
            else:
                identity = ["--node", name]
            log = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                node.process = subprocess.Popen(
                    [
                        *node.launcher,
                        sys.executable,
                        "-m",
                        "boutique_server",
                        "--config",
                        str(self.config_path),
                        *identity,
                        "--log-level",
                        os.environ.get("BOUTIQUE_TEST_LOG", "INFO"),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **node.extra_env},
                    start_new_session=True,
                )
            finally:
                log.close()
            node.paused = False
        if wait:
            for name in chosen:
                self.wait_ready(name)

    def add_joiner(self, name: str, node_id: int) -> LocalNode:
        """Describe a node that is not in the config: started with ``start(name)``, it
        joins the running cluster (``boutique-server --join``)."""
        client_port, peer_port = free_ports(2)
        node = LocalNode(
            name,
            node_id,
            client_port,
            peer_port,
            self.workdir / "data" / name,
            self.workdir / f"{name}.log",
            joins=True,
        )
        self.nodes[name] = node
        return node

    def forget(self, name: str) -> None:
        """Stop a node for good (it left the cluster) and stop tracking it."""
        self.stop(name)
        del self.nodes[name]

    def wait_ready(self, name: str, timeout: float = 20.0) -> None:
        node = self.nodes[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.running:
                raise RuntimeError(f"node {name} exited:\n{self.log_tail(name)}")
            with (
                contextlib.suppress(OSError, ClientError),
                self.client(name, timeout=1.0) as client,
            ):
                client.ping()
                return
            time.sleep(0.05)
        raise TimeoutError(f"node {name} did not answer within {timeout}s:\n{self.log_tail(name)}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to the node's process and reap it."""
        node = self.nodes[name]
        if node.process is None:
            return
        if node.paused:
            self.resume(name)
        if node.process.poll() is None:
            os.kill(node.process.pid, sig)
            node.process.wait(timeout=10)
        node.process = None

    def stop(self, name: str, timeout: float = 15.0) -> None:
        """A graceful stop (SIGTERM: the node drains), then SIGKILL if it takes longer
        than ``timeout``."""
        node = self.nodes[name]
        if node.process is None:
            return
        if node.paused:
            self.resume(name)
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        node.process = None

    def pause(self, name: str) -> None:
        node = self.nodes[name]
        if node.running and not node.paused:
            os.kill(node.pid or 0, signal.SIGSTOP)
            node.paused = True

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        if node.running and node.paused:
            os.kill(node.pid or 0, signal.SIGCONT)
            node.paused = False

    def close(self) -> None:
        """End every process this cluster started, by PID, whatever state it is in."""
        for name in self.nodes:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)

    # --- Clients and inspection -----------------------------------------------------------

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.nodes[name].log_path
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def pids(self) -> Iterator[int]:
        for node in self.nodes.values():
            if node.pid is not None:
                yield node.pid
