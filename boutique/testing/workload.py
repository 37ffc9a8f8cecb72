"""Simulated clients: put/get/delete against the cluster, every operation recorded.

Each client has at most one operation in flight (like a Jepsen client process). Writes
go through ``propose``, reads through ReadIndex, both sent to the node the client
believes leads, or to a random node to exercise forwarding-free follower reads and
"not the leader" answers. Outcomes are classed as the line protocol will class them:
``ok``, ``fail`` (certainly not applied) or ``unknown`` (crash, timeout).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from boutique.raft import NotLeaderError

from .cluster import SimCluster
from .history import History, Operation, Outcome


@dataclass(slots=True)
class _InFlight:
    op: Operation
    deadline: int
    node: int
    context: bytes | None = None


class Clients:
    """A fixed set of clients working a small key space, so operations contend."""

    def __init__(
        self,
        cluster: SimCluster,
        rng: random.Random,
        *,
        count: int = 4,
        keys: int = 3,
        timeout: int = 60,
        rate: float = 0.3,
        bursty: bool = False,
    ) -> None:
        self.cluster = cluster
        self.rng = rng
        self.history = History()
        self.keys = [f"k{i}" for i in range(keys)]
        self.timeout = timeout
        self.rate = rate
        self.count = count
        self.in_flight: dict[int, _InFlight] = {}
        self.leader_hint: dict[int, int] = {}
        self.issued = 0
        self._clock = 0
        self.enabled = True
        self.bursty = bursty
        """Alternate busy and silent stretches, so idle groups go quiet in between."""

    def clock(self) -> float:
        # One event counter gives every invocation and completion a distinct instant,
        # so real-time order in the history is exactly the order things happened.
        self._clock += 1
        return float(self._clock)

    def step(self) -> None:
        now = self.cluster.now
        for client, flight in list(self.in_flight.items()):
            if now >= flight.deadline:
                self._finish(client, "unknown", "timed out")
                if flight.context is not None:
                    self.cluster.forget_read(flight.node, flight.context)
        if not self.enabled:
            return
        if self.bursty and (now // 150) % 2 == 1:
            return
        for client in range(self.count):
            if client not in self.in_flight and self.rng.random() < self.rate:
                self._issue(client)

    def idle(self) -> bool:
        return not self.in_flight

    def _target(self, client: int) -> int:
        hint = self.leader_hint.get(client)
        if hint and self.rng.random() < 0.7:
            return hint
        return self.rng.choice(sorted(self.cluster.nodes))

    def _issue(self, client: int) -> None:
        self.issued += 1
        key = self.rng.choice(self.keys)
        roll = self.rng.random()
        node = self._target(client)
        deadline = self.cluster.now + self.timeout
        if roll < 0.45:
            value = f"{client}.{self.issued}"
            op = self.history.invoke(client, "put", key, value, self.clock())
            self.in_flight[client] = _InFlight(op, deadline, node)
            self.cluster.submit_write(node, ("put", key, value), self._callback(client))
        elif roll < 0.6:
            op = self.history.invoke(client, "delete", key, None, self.clock())
            self.in_flight[client] = _InFlight(op, deadline, node)
            self.cluster.submit_write(node, ("delete", key), self._callback(client))
        else:
            op = self.history.invoke(client, "get", key, None, self.clock())
            flight = _InFlight(op, deadline, node)
            self.in_flight[client] = flight
            flight.context = self.cluster.next_read_context()
            self.cluster.submit_read(node, ("get", key), self._callback(client), flight.context)

    def _callback(self, client: int) -> Any:
        flight = self.in_flight[client]

        def done(status: str, detail: Any) -> None:
            # A late answer for an operation that already timed out is ignored.
            if self.in_flight.get(client) is flight:
                if isinstance(detail, NotLeaderError) and detail.leader:
                    self.leader_hint[client] = detail.leader
                self._finish(client, status, detail)

        return done

    def _finish(self, client: int, status: str, detail: Any) -> None:
        flight = self.in_flight.pop(client)
        at = self.clock()
        if status == "ok":
            result = detail if flight.op.kind == "get" else None
            self.history.complete(flight.op, at, Outcome.OK, result)
            self.leader_hint[client] = flight.node
        elif status == "fail":
            self.history.complete(flight.op, at, Outcome.FAIL)
        else:
            self.history.complete(flight.op, at, Outcome.UNKNOWN)
