"""An in-process network for ``RaftHost``s: several hosts in one trio run, no sockets.

``LoopbackNetwork`` joins hosts by node id. ``LoopbackHost`` is a ``RaftHost`` whose
transport is a ``LoopbackTransport`` on such a network; everything else (storage, the
loop, the Ready cycle) is the real host. A frame is handed to the receiver's
``deliver_frame`` by a task of the receiver, in order per link, as a real connection
does (that task may take the frame's turn, as a real connection's does): never from
inside the sender's turn. Observers (``on_send``) see every frame at the
instant it leaves its sender, which is where a promise (a vote, an acknowledgement, an
answer) becomes visible to the world. Links can be cut; a frame over a cut link or to a
node that is not running is dropped.

What it must never do: deliver a frame inside the sender's call, reorder frames on one
link, or hand a restarted node what was in flight to its previous incarnation (frames
already on their way FROM a node that crashed still arrive, as on a real network).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import trio

from boutique.runtime.host import RaftHost
from boutique.runtime.transport import PeerTransport

Observer = Callable[[int, int, object], None]
"""Called with (sender, receiver, payload) when a frame leaves."""


class LoopbackNetwork:
    """Who is running, which links are cut, and who watches the frames."""

    def __init__(self) -> None:
        self._running: dict[int, LoopbackTransport] = {}
        self.cut: set[tuple[int, int]] = set()
        """Directed links (sender, receiver) that drop every frame."""
        self.on_send: list[Observer] = []
        self.frames = 0
        self.dropped = 0

    def transport(self, node: int, on_frame: Callable[[int, object], None]) -> LoopbackTransport:
        return LoopbackTransport(self, node, on_frame)

    def isolate(self, node: int, peers: list[int]) -> None:
        """Cut every link to and from ``node``."""
        for peer in peers:
            if peer != node:
                self.cut |= {(node, peer), (peer, node)}

    def heal(self) -> None:
        self.cut.clear()

    def running(self, node: int) -> bool:
        return node in self._running

    def _link_up(self, sender: int, receiver: int) -> bool:
        return receiver in self._running and (sender, receiver) not in self.cut

    def _send(self, sender: LoopbackTransport, receiver: int, payload: object) -> bool:
        if self._running.get(sender.node) is not sender:
            return False  # a dead incarnation says nothing
        for observer in self.on_send:
            observer(sender.node, receiver, payload)
        target = self._running.get(receiver)
        if target is None or (sender.node, receiver) in self.cut:
            self.dropped += 1
            return False
        self.frames += 1
        target._inbox.send_nowait((sender.node, payload))
        return True


class LoopbackTransport:
    """What ``RaftHost`` needs of ``PeerTransport``, over a ``LoopbackNetwork``."""

    def __init__(
        self, network: LoopbackNetwork, node: int, on_frame: Callable[[int, object], None]
    ) -> None:
        self.network = network
        self.node = node
        self._on_frame = on_frame
        self._inbox, self._received = trio.open_memory_channel[tuple[int, object]](math.inf)

    async def run(
        self,
        listen_host: str,
        listen_port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        network = self.network
        if node_running := network._running.get(self.node):
            raise RuntimeError(f"node {self.node} already runs on this network ({node_running})")
        network._running[self.node] = self
        try:
            task_status.started(listen_port)
            async for sender, payload in self._received:
                self._on_frame(sender, payload)
        finally:
            # What was in flight to this incarnation dies with it.
            if network._running.get(self.node) is self:
                del network._running[self.node]

    def send(self, peer: int, payload: object, *, now: bool = False) -> bool:
        return self.network._send(self, peer, payload)

    def connected(self, peer: int) -> bool:
        return self.network._link_up(self.node, peer)

    def reachable(self, peer: int) -> bool:
        return self.network._link_up(peer, self.node)

    def set_peers(self, peers: dict[int, Any]) -> None:
        """Membership is whoever runs on the network: nothing to connect."""

    def set_removed(self, removed: frozenset[int]) -> None:
        """Removal is not simulated here: the host refuses removed nodes' requests."""


class LoopbackHost(RaftHost):
    """A real ``RaftHost`` whose peers are on a ``LoopbackNetwork``. ``kwargs`` as for
    ``RaftHost``; ``secret``, ``cluster_name``, ``peers`` and ``listen`` mean nothing
    here and get defaults."""

    def __init__(self, node_id: int, network: LoopbackNetwork, **kwargs: Any) -> None:
        kwargs.setdefault("secret", b"loopback" * 4)
        kwargs.setdefault("cluster_name", "loopback")
        kwargs.setdefault("peers", {})
        kwargs.setdefault("listen", ("127.0.0.1", 0))
        super().__init__(node_id, **kwargs)
        self.network = network

    def make_transport(self) -> PeerTransport:
        # Duck-typed: LoopbackTransport has every method the host calls on a transport.
        return cast(PeerTransport, self.network.transport(self.id, self.deliver_frame))
