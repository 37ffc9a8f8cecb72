"""Talking to the nodes of a cluster over the line protocol, whoever started them.

``NodeAccess`` is what the Jepsen harness, the benchmarks and the tests need from a
cluster besides starting and stopping processes: a client per node, each node's
``STATUS``, which node leads a group, raw request lines, and partitions made with the
``FAULT`` command (nodes run with ``[testing] fault_injection = true``). ``LocalCluster``
(processes this machine started), ``NetnsCluster`` (the same in network namespaces,
partitioning with iptables instead) and ``ExternalCluster`` (nodes a person started)
share it.

It only ever connects to the addresses its nodes list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Protocol

from boutique.client import Client


class NodeAddress(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def client_port(self) -> int: ...
    @property
    def running(self) -> bool: ...
    @property
    def paused(self) -> bool: ...


class NodeAccess:
    """Line-protocol access to ``self.nodes`` (set by the subclass)."""

    nodes: Mapping[str, NodeAddress]
    password: str | None = None
    """Sent with AUTH by every client made here (None: the nodes ask for none)."""

    def client(self, name: str, timeout: float = 10.0) -> Client:
        node = self.nodes[name]
        return Client(node.host, node.client_port, timeout=timeout, password=self.password)

    def running(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.running and not node.paused]

    def status(self, name: str) -> list[str]:
        with self.client(name, timeout=5.0) as client:
            return client.status()

    def leader_of(self, group_prefix: str) -> str | None:
        """The node that reports itself leader of a group whose id starts with
        ``group_prefix`` (e.g. ``"b/shopping/"`` or ``"meta"``)."""
        for name in self.running():
            with contextlib.suppress(Exception):  # a node dying mid-query
                for line in self.status(name):
                    parts = line.split()
                    if (
                        len(parts) > 3
                        and parts[0] == "group"
                        and parts[1].startswith(group_prefix)
                        and parts[3] == "leader"
                    ):
                        return name
        return None

    def command(self, name: str, line: str, timeout: float = 5.0) -> str:
        """Send one raw request line; return the first line of its reply (for FAULT)."""
        with self.client(name, timeout=timeout) as client:
            reply = client.send_line(line.encode())
        first = reply.items[0] if reply.items else reply.end
        return first.decode(errors="replace")

    def request(self, name: str, line: str, timeout: float = 30.0) -> list[str]:
        """Send one raw request line; every line of its reply, the terminator last."""
        with self.client(name, timeout=timeout) as client:
            reply = client.send_line(line.encode())
        return [part.decode(errors="replace") for part in (*reply.items, reply.end)]

    def partition(self, *groups: set[str] | list[str]) -> None:
        """Cut every link between nodes of different groups, both ways (in each node's
        transport, as a firewall would). Nodes in no group keep all their links."""
        members = [set(g) for g in groups]
        for group in members:
            others = set().union(*(g for g in members if g is not group))
            for name in group:
                if self.nodes[name].running and others:
                    self.command(name, "FAULT BLOCK " + " ".join(sorted(others)))

    def heal(self) -> None:
        for name in self.running():
            with contextlib.suppress(OSError, ConnectionError):
                self.command(name, "FAULT HEAL")
