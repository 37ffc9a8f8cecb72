"""A ``LocalCluster`` whose nodes each run on a host of their own (a network namespace).

Same processes, same config, same controls (kill, pause, clients) as ``LocalCluster``;
what differs is the network: every node has its own address on a private bridge
(``netns.NetLab``), and ``partition``/``heal`` are iptables rules inside the hosts, so a
partition is silent (packets dropped, TCP connections hang) instead of the transport
refusing frames. Delay, jitter and loss are available through ``lab``.

Clients (tests, the Jepsen harness) stay in the root namespace and reach every node
through the bridge. ``close()`` ends the processes by PID, then removes the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .local_cluster import LocalCluster
from .netns import NetLab


class NetnsCluster(LocalCluster):
    def __init__(
        self, workdir: Path, nodes: int = 3, *, delay_proxies: bool = True, **options: Any
    ) -> None:
        names = [f"n{i}" for i in range(1, nodes + 1)]
        self.lab = NetLab(names, Path(workdir) / "net")
        # Faults are made in the network here, not by the transport's FAULT command.
        options.setdefault("fault_injection", False)
        try:
            super().__init__(
                workdir,
                nodes,
                hosts={name: self.lab.address(name) for name in names},
                launchers={name: self.lab.hosts[name].exec_prefix() for name in names},
                listen_host="0.0.0.0",  # inside its namespace: only that host's addresses
                **options,
            )
            if delay_proxies:
                self.lab.start_delay_proxies([node.peer_port for node in self.nodes.values()])
        except BaseException:
            self.lab.close()
            raise

    def partition(self, *groups: set[str] | list[str]) -> None:
        """Drop every packet between nodes of different groups, both ways."""
        self.lab.partition(*groups)

    def heal(self) -> None:
        """Remove every cut, loss and delay."""
        self.lab.heal()
        self.lab.clear_delays()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.lab.close()
