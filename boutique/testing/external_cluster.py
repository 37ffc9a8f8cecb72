"""Nodes a person started (one terminal each), seen through their cluster config.

``ExternalCluster`` gives the Jepsen harness what it needs from a cluster it did not
start: the nodes' addresses from the config, clients (with the config's password),
``STATUS``, and partitions through the ``FAULT`` command when the nodes run with
``[testing] fault_injection = true``. It owns no process, so it cannot kill, pause or
restart a node: faults of those kinds are refused, and a node that dies is reported,
not revived.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from boutique.config import ClusterConfig

from .cluster_access import NodeAccess


@dataclass(slots=True)
class ExternalNode:
    name: str
    id: int
    host: str
    client_port: int
    peer_port: int
    process: None = None
    """Never ours: the harness must not try to reap or restart it."""
    paused: bool = False
    log_path: Path | None = None

    @property
    def running(self) -> bool:
        return True  # as far as we know: the person who started it keeps it running

    @property
    def pid(self) -> int | None:
        return None


class ExternalCluster(NodeAccess):
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.config_path = Path(config.source)
        self.workdir = self.config_path.parent
        self.password = config.password
        self.fault_injection = config.fault_injection
        self.nodes: dict[str, ExternalNode] = {
            node.name: ExternalNode(node.name, node.id, node.host, node.client_port, node.peer_port)
            for node in config.nodes
        }

    def start(self, *names: str, wait: bool = True) -> None:
        """Nothing to start: the nodes are someone else's. (The harness calls this only
        for nodes it believes stopped, which never happens here.)"""

    def _not_ours(self, what: str, name: str) -> None:
        raise RuntimeError(f"cannot {what} node {name}: it was not started by this check")

    def kill(self, name: str, sig: int = 9) -> None:
        self._not_ours("kill", name)

    def pause(self, name: str) -> None:
        self._not_ours("pause", name)

    def resume(self, name: str) -> None:
        self._not_ours("resume", name)

    def log_tail(self, name: str, lines: int = 30) -> str:
        return f"(node {name} logs to the terminal it was started in)"
