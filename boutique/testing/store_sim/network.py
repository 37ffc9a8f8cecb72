"""The whole-cluster simulator's network: seeded delays, loss, duplicates and partitions.

``SimNetwork`` joins the simulated nodes by id; ``SimTransport`` is what a ``RaftHost``
uses instead of ``PeerTransport`` (same methods, no sockets). Every frame is encoded with
the production framing (``encode_frame``) when it leaves and decoded when it arrives, so
nodes never share an object and everything that crosses is what would cross a socket.

What the network may do to a frame, by the seeded ``random.Random`` it is given:

* the Raft part of a frame (key ``"r"``) travels alone: it is delayed by a random amount
  (so Raft messages overtake each other), lost with probability ``drop`` and delivered
  twice with probability ``duplicate``. Raft is built for that.
* the rest of a frame (forwarded requests and answers) keeps the order of the real
  transport's TCP stream: delayed, but in order per link and at most once. The request
  ids of forwarding are not idempotency keys: a duplicated request would run twice,
  which a TCP stream never does, so the simulator does not either.
* a cut link (``cut``) loses what is in flight on it and whatever is sent over it, one
  way or both; after ``suspect_after`` the receiver's host is told the peer is suspect
  and its stream broke (``on_suspect``, ``on_link_lost``), as the real transport does
  after that much silence. A crashed node's peers hear the stream break at once.
* a paused node (``pause``) is a process stopped with SIGSTOP: frames to and from it
  wait in their streams and arrive, in a burst, when it resumes; in between its peers
  suspect it (its host takes no turn meanwhile: ``world.SimNode``).

What it must never do: deliver a frame inside the sender's call, reorder the
non-Raft part of frames on one link, hand a restarted node what was in flight to its
previous incarnation, or consult anything but its own seeded ``random.Random``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import trio

from boutique.runtime.framing import FrameDecoder, encode_frame
from boutique.runtime.transport import PeerTransport

Observer = Callable[[int, int, object], None]
"""Called with (sender, receiver, payload) the instant a frame leaves its sender."""


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """How the network treats frames when nothing is cut."""

    min_delay: float = 0.0005
    max_delay: float = 0.004
    drop: float = 0.0
    """Probability that the Raft part of a frame is lost."""
    duplicate: float = 0.0
    """Probability that the Raft part of a frame arrives twice."""
    slow: float = 0.0
    """Probability that the Raft part of a frame takes up to 20 times ``max_delay``."""


CALM = LinkFaults()


class SimNetwork:
    """Who runs, which links are cut, who is paused, and every frame in flight."""

    def __init__(self, rng: random.Random, *, suspect_after: float = 0.5) -> None:
        self.rng = rng
        self.faults = CALM
        self.suspect_after = suspect_after
        self._running: dict[int, SimTransport] = {}
        self.cut: set[tuple[int, int]] = set()
        """Directed links (sender, receiver) that lose every frame."""
        self.paused: set[int] = set()
        self.on_send: list[Observer] = []
        self._seq = itertools.count()
        self._link_clock: dict[tuple[int, int], float] = {}
        """When the last in-order part sent on each link is due (keeps them in order)."""
        self.frames = 0
        self.dropped = 0

    # --- Faults -------------------------------------------------------------------------

    def cut_links(self, links: set[tuple[int, int]]) -> None:
        self.cut |= links

    def partition(self, side: set[int], others: set[int]) -> None:
        """Cut every link between ``side`` and ``others``, both ways."""
        self.cut |= {(a, b) for a in side for b in others} | {(b, a) for a in side for b in others}

    def heal(self) -> None:
        """Every link works again and every paused node resumes."""
        self.cut.clear()
        for node in list(self.paused):
            self.resume(node)
        self.faults = CALM

    def pause(self, node: int) -> None:
        self.paused.add(node)

    def resume(self, node: int) -> None:
        self.paused.discard(node)
        for transport in self._running.values():
            transport.wake()

    def running(self, node: int) -> bool:
        return node in self._running

    def link_up(self, sender: int, receiver: int) -> bool:
        return (
            sender in self._running
            and receiver in self._running
            and (sender, receiver) not in self.cut
            and sender not in self.paused
            and receiver not in self.paused
        )

    def crashed(self, node: int) -> None:
        """``node``'s process died: its peers' streams to it break now."""
        for peer, transport in self._running.items():
            if peer != node:
                transport.link_lost(node)

    # --- Frames -------------------------------------------------------------------------

    def _send(self, sender: SimTransport, receiver: int, payload: object) -> bool:
        if self._running.get(sender.node) is not sender:
            return False  # a dead incarnation says nothing
        frame = encode_frame(payload)
        for observer in self.on_send:
            observer(sender.node, receiver, payload)
        target = self._running.get(receiver)
        if target is None or (sender.node, receiver) in self.cut:
            self.dropped += 1
            return False
        if sender.node in target.removed:
            # The real transport refuses a removed node's handshake and tells it so.
            self.dropped += 1
            sender.told_removed(receiver)
            return False
        now = trio.current_time()
        faults = self.faults
        raft, rest = _split(frame)
        if raft is not None:
            copies = 1
            if self.rng.random() < faults.drop:
                copies = 0
            elif self.rng.random() < faults.duplicate:
                copies = 2
            for _ in range(copies):
                delay = self.rng.uniform(faults.min_delay, faults.max_delay)
                if self.rng.random() < faults.slow:
                    delay *= self.rng.uniform(1, 20)
                target.enqueue(now + delay, next(self._seq), sender, raft)
        if rest is not None:
            link = (sender.node, receiver)
            due = max(
                now + self.rng.uniform(faults.min_delay, faults.max_delay),
                self._link_clock.get(link, 0.0),
            )
            self._link_clock[link] = due
            target.enqueue(due, next(self._seq), sender, rest)
        self.frames += 1
        return True


def _split(frame: bytes) -> tuple[bytes | None, bytes | None]:
    """The Raft part and the in-order part of an encoded frame, each re-encoded."""
    (payload,) = FrameDecoder().feed(frame)
    if not isinstance(payload, dict) or "r" not in payload:
        return None, frame
    raft = encode_frame({"r": payload["r"]})
    rest = {key: value for key, value in payload.items() if key != "r"}
    return raft, (encode_frame(rest) if rest else None)


class SimTransport:
    """What ``RaftHost`` needs of ``PeerTransport``, over a ``SimNetwork``."""

    def __init__(
        self,
        network: SimNetwork,
        node: int,
        on_frame: Callable[[int, object], None],
        *,
        on_suspect: Callable[[int], None],
        on_link_lost: Callable[[int], None],
        on_removed: Callable[[int], None],
    ) -> None:
        self.network = network
        self.node = node
        self._on_frame = on_frame
        self._on_suspect = on_suspect
        self._on_link_lost = on_link_lost
        self._on_removed = on_removed
        self._heap: list[tuple[float, int, SimTransport, bytes]] = []
        self._wakeup = trio.Event()
        self.peers: set[int] = set()
        self.removed: frozenset[int] = frozenset()
        self._held: list[tuple[float, int, SimTransport, bytes]] = []
        """Frames from paused senders, delivered in order once they resume."""
        self._silent_since: dict[int, float] = {}
        self._suspected: set[int] = set()

    def as_peer_transport(self) -> PeerTransport:
        # Duck-typed: every method the host and the node call on a transport is here.
        return cast(PeerTransport, self)

    async def run(
        self,
        listen_host: str,
        listen_port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        network = self.network
        if self.node in network._running:
            raise RuntimeError(f"node {self.node} already runs on this network")
        network._running[self.node] = self
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_peers)
                task_status.started(listen_port)
                await self._deliver()
        finally:
            if network._running.get(self.node) is self:
                del network._running[self.node]

    def enqueue(self, due: float, seq: int, sender: SimTransport, frame: bytes) -> None:
        heapq.heappush(self._heap, (due, seq, sender, frame))
        self._wakeup.set()

    def wake(self) -> None:
        """Something was resumed: frames held back from resumed senders are due now."""
        held, self._held = self._held, []
        for item in held:
            if item[2].node in self.network.paused:
                self._held.append(item)
            else:
                heapq.heappush(self._heap, item)
        self._wakeup.set()

    async def _deliver(self) -> None:
        network = self.network
        while True:
            if not self._heap or self.node in network.paused:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            due = self._heap[0][0]
            if due > trio.current_time():
                with trio.move_on_at(due):
                    await self._wakeup.wait()
                if self._wakeup.is_set():
                    self._wakeup = trio.Event()
                continue
            _, _, sender, frame = heapq.heappop(self._heap)
            peer = sender.node
            if peer in network.paused:
                # What a stopped process wrote waits in the stream until it resumes.
                self._held.append((due, next(network._seq), sender, frame))
                continue
            if (peer, self.node) in network.cut:
                continue  # lost with the link
            for payload in FrameDecoder().feed(frame):
                self._on_frame(peer, payload)
            await trio.lowlevel.checkpoint()

    async def _watch_peers(self) -> None:
        """Tell the host about peers silent for ``suspect_after`` (once per silence)."""
        network = self.network
        interval = network.suspect_after / 5
        while True:
            await trio.sleep(interval)
            if self.node in network.paused:
                continue
            now = trio.current_time()
            for peer in sorted(self.peers):
                if network.link_up(peer, self.node):
                    self._silent_since.pop(peer, None)
                    self._suspected.discard(peer)
                    continue
                since = self._silent_since.setdefault(peer, now)
                if now - since >= network.suspect_after and peer not in self._suspected:
                    self._suspected.add(peer)
                    self._on_link_lost(peer)
                    self._on_suspect(peer)

    def link_lost(self, peer: int) -> None:
        self._on_link_lost(peer)

    def told_removed(self, by: int) -> None:
        self._on_removed(by)

    # --- What the host calls --------------------------------------------------------------

    def send(self, peer: int, payload: object, *, now: bool = False) -> bool:
        if peer in self.removed:
            return False
        return self.network._send(self, peer, payload)

    def connected(self, peer: int) -> bool:
        return self.network.link_up(self.node, peer)

    def reachable(self, peer: int) -> bool:
        return self.network.link_up(peer, self.node)

    def queued(self, peer: int) -> int:
        return 0

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        self.peers = set(peers)

    def set_removed(self, removed: frozenset[int]) -> None:
        self.removed = removed
