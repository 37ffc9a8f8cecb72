"""A simulated network for Raft messages: delay, loss, duplication, reordering, cuts.

Time is a count of simulation steps. Every decision comes from the ``random.Random``
handed in, so a run is reproducible from its seed. The network never looks inside a
message beyond its ``frm``/``to``.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from boutique.raft import Message


@dataclass(slots=True)
class LinkFaults:
    """How badly every link behaves."""

    drop: float = 0.0
    duplicate: float = 0.0
    min_delay: int = 1
    max_delay: int = 2


class SimNetwork:
    """Messages in flight, keyed by delivery time; cut links swallow messages."""

    def __init__(self, rng: random.Random, faults: LinkFaults | None = None) -> None:
        self.rng = rng
        self.faults = faults or LinkFaults()
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self._cut: set[tuple[int, int]] = set()
        self.sent = 0
        self.dropped = 0

    # --- Faults -------------------------------------------------------------------------

    def cut(self, frm: int, to: int) -> None:
        """Drop every message from ``frm`` to ``to`` (one way)."""
        self._cut.add((frm, to))

    def partition(self, *groups: set[int] | frozenset[int]) -> None:
        """Cut every link between different groups (both ways)."""
        for a in groups:
            for b in groups:
                if a is not b:
                    for x in a:
                        for y in b:
                            self._cut.add((x, y))

    def isolate(self, node: int, others: set[int] | frozenset[int]) -> None:
        for other in others:
            if other != node:
                self._cut.add((node, other))
                self._cut.add((other, node))

    def heal(self) -> None:
        self._cut.clear()

    def is_cut(self, frm: int, to: int) -> bool:
        return (frm, to) in self._cut

    @property
    def has_cuts(self) -> bool:
        return bool(self._cut)

    # --- Traffic ------------------------------------------------------------------------

    def send(self, now: int, msg: Message) -> None:
        self.sent += 1
        faults = self.faults
        if (msg.frm, msg.to) in self._cut or (faults.drop and self.rng.random() < faults.drop):
            self.dropped += 1
            return
        copies = 2 if faults.duplicate and self.rng.random() < faults.duplicate else 1
        for _ in range(copies):
            delay = self.rng.randint(faults.min_delay, faults.max_delay)
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, msg))

    def due(self, now: int) -> list[Message]:
        """Messages arriving by ``now``, in a shuffled order (reordering)."""
        arrived = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, _, msg = heapq.heappop(queue)
            # A link cut while the message was in flight loses it too.
            if (msg.frm, msg.to) in self._cut:
                self.dropped += 1
                continue
            arrived.append(msg)
        if len(arrived) > 1:
            self.rng.shuffle(arrived)
        return arrived

    def drop_to(self, node: int) -> None:
        """Forget messages in flight to a crashed node's old incarnation."""
        self._queue = [item for item in self._queue if item[2].to != node]
        heapq.heapify(self._queue)

    def in_flight(self) -> int:
        return len(self._queue)
