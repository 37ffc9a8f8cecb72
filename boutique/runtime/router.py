"""Request routing: any node takes any bucket command and finds where it must run.

The ``Router`` looks the bucket up in the registry, then proposes (or reads) in the
bucket's group: locally when this node leads it, otherwise at the node it believes
leads, following leader hints and trying the other replicas until the request's
deadline. The caller gets exactly one answer, classed as the wire contract wants:

* a result — the command was applied (or the read served);
* ``Unavailable`` — certainly not applied (no leader reachable in time, no quorum);
* ``OutcomeUnknown`` — a write was handed to a leader but its fate was not learnt;
* ``NotFound`` — the bucket does not exist (decided by a linearizable registry read);
* ``CommandRejected`` — the state machine refused the command (bad input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from boutique.machine import CommandFailed, MachineHost
from boutique.registry import BucketInfo

from .group import Applied, Outcome, Pending, Rejected, Unknown
from .node import META_GROUP, Node


class RoutingError(Exception):
    """Base class of the errors a routed request ends with."""


class NotFound(RoutingError):
    """The bucket does not exist."""


class Unavailable(RoutingError):
    """The request certainly had no effect; it may be retried."""


class OutcomeUnknown(RoutingError):
    """The request may or may not have been applied."""


class CommandRejected(RoutingError):
    """The state machine refused the command; nothing changed."""

    def __init__(self, failed: CommandFailed) -> None:
        super().__init__(failed.message)
        self.failed = failed


class Router:
    """The client-facing API of a node; every method may be called from any task."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.leader_hints: dict[str, int] = {}

    # --- Buckets ------------------------------------------------------------------------

    async def create(self, name: str) -> BucketInfo:
        reply = await self._write(META_GROUP, self._meta_replicas(), ("create", name))
        return BucketInfo.from_wire(reply[1])

    async def drop(self, name: str) -> bool:
        await self.lookup(name)  # NOT FOUND for a bucket that does not exist
        existed = await self._write(META_GROUP, self._meta_replicas(), ("drop", name))
        return bool(existed)

    async def buckets(self) -> list[str]:
        names = await self._read(META_GROUP, self._meta_replicas(), ("list",))
        return list(names)

    async def lookup(self, name: str) -> BucketInfo:
        """The bucket's catalog entry. A local hit is trusted (buckets only disappear by
        DROP, whose group then refuses requests); a miss is confirmed by a linearizable
        read of the registry before ``NotFound`` is raised."""
        info = self.node.catalog().get(name)
        if info is not None:
            return info
        wire = await self._read(META_GROUP, self._meta_replicas(), ("lookup", name))
        if wire is None:
            raise NotFound(name)
        return BucketInfo.from_wire(wire)

    # --- Keys ---------------------------------------------------------------------------

    async def put(self, bucket: str, key: bytes, value: bytes) -> None:
        info = await self.lookup(bucket)
        await self._write(info.group, info.replicas, ("put", key, value), bucket=bucket)

    async def delete(self, bucket: str, key: bytes) -> bool:
        info = await self.lookup(bucket)
        return bool(await self._write(info.group, info.replicas, ("delete", key), bucket=bucket))

    async def get(self, bucket: str, key: bytes) -> bytes | None:
        info = await self.lookup(bucket)
        value = await self._read(info.group, info.replicas, ("get", key), bucket=bucket)
        return value if value is None else bytes(value)

    async def keys(self, bucket: str, prefix: bytes | None, limit: int | None) -> list[bytes]:
        info = await self.lookup(bucket)
        return list(
            await self._read(info.group, info.replicas, ("keys", prefix, limit), bucket=bucket)
        )

    async def scan(
        self, bucket: str, start: bytes, end: bytes | None, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        info = await self.lookup(bucket)
        pairs = await self._read(
            info.group, info.replicas, ("scan", start, end, limit), bucket=bucket
        )
        return [(bytes(k), bytes(v)) for k, v in pairs]

    # --- Without a task -----------------------------------------------------------------

    def start(self, bucket: str, command: tuple[Any, ...], then: Callable[[Outcome], None]) -> bool:
        """One attempt at a key command (``("put", key, value)``, ``("delete", key)``,
        or a ``("get", key)`` query) on a bucket this node's catalog knows, sent where
        the bucket's leader is believed to be, with no task: ``then`` is called once
        with the outcome, within ``request_timeout``. False (and nothing started) when
        the bucket is not in the local catalog; the async methods handle that, and
        every outcome but ``Applied`` (retries, leader hints, NOT FOUND).

        This is the path of nearly every request under load; the async methods cost a
        task, a cancel scope and several wake-ups each.
        """
        node = self.node
        info = node.catalog().get(bucket)
        if info is None:
            return False
        body: Any
        if command[0] == "get":
            if node.config.unsafe_local_reads:
                return False
            kind, body = "r", command
        else:
            kind, body = "w", MachineHost.encode_command(command)
        group = info.group
        target = self._first_target(group, info.replicas)

        def done(outcome: Outcome) -> None:
            if type(outcome) is Applied:
                self.leader_hints[group] = target
            then(outcome)

        pending = Pending(then=done)
        node.track(pending)
        if target == node.id:
            node.submit(group, kind, body, pending)
        else:
            node.send_forward(target, group, kind, body, pending)
        return True

    # --- Routing ------------------------------------------------------------------------

    def _meta_replicas(self) -> tuple[int, ...]:
        return self.node.meta_members()

    async def _write(
        self,
        group: str,
        replicas: tuple[int, ...],
        command: tuple[Any, ...],
        bucket: str | None = None,
    ) -> Any:
        data = MachineHost.encode_command(command)
        return await self._route(group, replicas, "w", data, bucket)

    async def registry_write(self, command: tuple[Any, ...]) -> Any:
        """Propose a registry command (placement changes) through the meta group."""
        return await self._write(META_GROUP, self._meta_replicas(), command)

    async def registry_read(self, query: tuple[Any, ...]) -> Any:
        """A linearizable registry query through the meta group."""
        return await self._read(META_GROUP, self._meta_replicas(), query)

    async def group_request(
        self, group: str, replicas: tuple[int, ...], kind: str, body: Any
    ) -> Any:
        """Route an administrative request (``execute_local`` kinds ``c``, ``s``, ``t``)
        to the group's leader, like a write."""
        return await self._route(group, replicas, kind, body, None)

    async def _read(
        self,
        group: str,
        replicas: tuple[int, ...],
        query: tuple[Any, ...],
        bucket: str | None = None,
    ) -> Any:
        local = self.node.groups.get(group)
        if self.node.config.unsafe_local_reads and group != META_GROUP and local is not None:
            # The planted bug the distributed harness must catch: a replica's local
            # state may be stale (a partitioned ex-leader, a lagging follower).
            return local.host.query(query)
        return await self._route(group, replicas, "r", query, bucket)

    async def _route(
        self, group: str, replicas: tuple[int, ...], kind: str, body: Any, bucket: str | None
    ) -> Any:
        node = self.node
        deadline = trio.current_time() + node.config.request_timeout
        target = self._first_target(group, replicas)
        backoff = 0.01
        tried: list[int] = []
        last_reason = "no replica answered"
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise Unavailable(last_reason)
            outcome: Outcome
            if target == node.id:
                outcome = await node.execute_local(group, kind, body, remaining)
            else:
                outcome = await node.forward(target, group, kind, body, remaining)
            match outcome:
                case Applied(CommandFailed() as failed):
                    raise CommandRejected(failed)
                case Applied(reply):
                    self.leader_hints[group] = target
                    return reply
                case Unknown(reason) if kind in ("w", "c"):
                    raise OutcomeUnknown(reason)
                case Unknown(reason) | Rejected(reason, 0):
                    last_reason = reason
                    tried.append(target)
                    target = self._next_replica(replicas, tried)
                    if len(tried) >= len(replicas):
                        await trio.sleep(min(backoff, max(0.0, deadline - trio.current_time())))
                        backoff = min(backoff * 2, 0.2)
                        tried.clear()
                case Rejected(reason, leader):
                    last_reason = reason
                    if leader in replicas and leader != target:
                        target = leader
                    else:
                        tried.append(target)
                        target = self._next_replica(replicas, tried)
                        await trio.sleep(min(backoff, max(0.0, deadline - trio.current_time())))
                        backoff = min(backoff * 2, 0.2)
            if bucket is not None and group != META_GROUP:
                # The bucket may have been dropped and re-created meanwhile. Only a
                # catalog entry for another group proves it: a missing entry may just
                # mean this node's registry lags the linearizable lookup that found it.
                info = self.node.catalog().get(bucket)
                if info is not None and info.group != group:
                    raise NotFound(bucket)

    def _first_target(self, group: str, replicas: tuple[int, ...]) -> int:
        """Where a request to ``group`` goes first: the last node that answered as its
        leader, else this node if it is a replica, else the first replica."""
        target = self.leader_hints.get(group)
        if target in replicas:
            return target
        return self.node.id if self.node.id in replicas else replicas[0]

    def _next_replica(self, replicas: tuple[int, ...], tried: list[int]) -> int:
        for replica in replicas:
            if replica not in tried:
                return replica
        return replicas[0]
