"""Request routing: any node takes any bucket command and finds where it must run.

The ``Router`` looks the bucket up in the registry, then proposes (or reads) in the
bucket's group: locally when this node leads it, otherwise at the node it believes
leads, following leader hints and trying the other replicas until the request's
deadline (the decisions are ``runtime.routing``'s ``RouteAttempts``, shared with the
library, with the choice of replica by its ``ReplicaChooser``; this module is the
shell that drives them, through ``runtime.route_drivers``). The caller gets exactly one answer, classed (by
``runtime.outcomes.classify``) as the wire contract wants:

* a result — the command was applied (or the read served);
* ``Unavailable`` — certainly not applied (no leader reachable in time, no quorum);
* ``OutcomeUnknown`` — a write was handed to a leader but its fate was not learnt;
* ``NotFound`` — the bucket does not exist (decided by a linearizable registry read);
* ``CommandRejected`` — the state machine refused the command (bad input).

DROP is two steps (see ``Router.drop``): a tombstone committed in the bucket's own
group, after which that group answers every request with ``BucketDropped`` on every
replica, then the registry entry goes. A request that meets a fenced group is answered
``NotFound`` only once a linearizable registry read shows no newer incarnation of the
bucket; if there is one (a re-CREATE), the request goes there instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from boutique.buckets import BucketDropped
from boutique.machine import CommandFailed, MachineHost, WireValue, wire_items
from boutique.registry import BucketInfo

from .group import Applied, Outcome, Pending, Rejected, Unknown
from .outcomes import Done, MaybeApplied, Refused
from .requests import GroupRequest, Propose, Read, Request
from .route_drivers import route, start_route
from .routing import (
    Answered,
    Expired,
    Forward,
    GaveUp,
    GiveUpKind,
    ReplicaChooser,
    Result,
    RouteAttempts,
    Submit,
)
from .store_node import META_GROUP
from .store_node import StoreNode as Node

Command = tuple[WireValue, ...]
"""A command or query for a group's machine (``("put", key, value)``, ``("lookup", name)``)."""


class RoutingError(Exception):
    """Base class of the errors a routed request ends with."""


class NotFound(RoutingError):
    """The bucket does not exist."""


class GroupFenced(NotFound):
    """The request reached a bucket group fenced by a DROP's tombstone. Internal to the
    router: callers see ``NotFound`` (or the request goes to a newer incarnation)."""

    def __init__(self, group: str) -> None:
        super().__init__(group)
        self.group = group


@dataclass(frozen=True, slots=True)
class DeadlinePassed(Rejected):
    """How ``Router.start`` ends a request whose deadline passed with every attempt
    certainly not applied: the request is over (``ERR UNAVAILABLE``, as the full router
    would say), not handed to the full router, whose own deadline would start then."""


_BUCKET_DROPPED = BucketDropped.__name__
_NO_REPLICA = "no replica answered"
_FENCE_RETRIES = 3
"""How many times one request follows a bucket to a newer incarnation before giving up
(each time the bucket was dropped and created again while the request ran)."""


def _is_fenced(failed: CommandFailed) -> bool:
    return failed.error_type == _BUCKET_DROPPED


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
        for _ in range(_FENCE_RETRIES):
            status, wire = wire_items(
                await self._write(META_GROUP, self._meta_replicas(), ("create", name)), 2
            )
            info = BucketInfo.from_wire(wire)
            if status == "created":
                return info
            # It exists; unless a DROP fenced it and was cut short before leaving the
            # registry. Then finish that DROP and create a new incarnation.
            try:
                await self._read(info.group, self.node.bucket_hosts(info), ("count",))
            except GroupFenced:
                await self._write(META_GROUP, self._meta_replicas(), ("drop", name, info.group))
                continue
            return info
        raise Unavailable(f"bucket {name} was dropped again and again while being created")

    async def drop(self, name: str) -> bool:
        """Fence the bucket's group with a tombstone, then take it out of the registry.

        The tombstone's commit is the DROP's instant: from then on no replica of the
        group answers anything but NOT FOUND, whichever nodes are cut off from the meta
        group. If the registry step does not happen (this node dies, the meta group is
        out of reach), the bucket answers NOT FOUND anyway and the next DROP or CREATE
        of the name, or the group leader's mover, finishes it."""
        info = await self.lookup(name)  # NOT FOUND for a bucket that does not exist
        for _ in range(_FENCE_RETRIES):
            try:
                fenced_now = await self._write(
                    info.group, self.node.bucket_hosts(info), ("tombstone",), bucket=name
                )
            except (NotFound, Unavailable):
                # Certainly not fenced. This node's catalog may have been stale (the
                # group is gone, or another incarnation is listed): ask the registry.
                newer = await self._registry_lookup(name)
                if newer is None:
                    raise NotFound(name) from None
                if newer.group == info.group:
                    raise
                info = newer
                continue
            try:
                await self._write(META_GROUP, self._meta_replicas(), ("drop", name, info.group))
            except (Unavailable, OutcomeUnknown):
                if fenced_now:
                    # The tombstone committed: that was the DROP's instant, so it took
                    # effect whatever becomes of this clean-up (the mover, or the next
                    # DROP or CREATE, finishes it). UNAVAILABLE would say "certainly
                    # not applied" of a bucket that is gone.
                    return True
                raise
            if fenced_now:
                return True
            # Another DROP fenced this incarnation first; the bucket may exist again.
            newer = await self._registry_lookup(name)
            if newer is None or newer.group == info.group:
                raise NotFound(name)
            info = newer
        raise Unavailable(f"bucket {name} was dropped and created again while dropping it")

    async def buckets(self) -> list[str]:
        names = await self._read(META_GROUP, self._meta_replicas(), ("list",))
        return [_text(name) for name in wire_items(names)]

    async def lookup(self, name: str) -> BucketInfo:
        """The bucket's catalog entry. A local hit is trusted (a dropped bucket's group
        is fenced, and a request that meets the fence confirms with the registry); a
        miss is confirmed by a linearizable read of the registry before ``NotFound`` is
        raised."""
        info = self.node.catalog().get(name)
        if info is not None:
            return info
        found = await self._registry_lookup(name)
        if found is None:
            raise NotFound(name)
        return found

    async def _registry_lookup(self, name: str) -> BucketInfo | None:
        wire = await self._read(META_GROUP, self._meta_replicas(), ("lookup", name))
        return None if wire is None else BucketInfo.from_wire(wire)

    async def _in_bucket(self, bucket: str, body: Command, *, write: bool) -> WireValue:
        """Run a key command (``write``) or query in the bucket's group. A
        fenced group means NOT FOUND, unless the registry, read linearizably after the
        fence was seen, lists a newer incarnation: then the request goes there."""
        info = await self.lookup(bucket)
        for _ in range(_FENCE_RETRIES):
            try:
                if write:
                    return await self._write(info.group, info.replicas, body, bucket=bucket)
                return await self._read(info.group, info.replicas, body, bucket=bucket)
            except GroupFenced as fenced:
                newer = await self._registry_lookup(bucket)
                if newer is None or newer.group == fenced.group:
                    raise NotFound(bucket) from None
                info = newer
            except NotFound:
                # This node's catalog lists another incarnation now: it exists unless
                # the registry says otherwise.
                newer = await self._registry_lookup(bucket)
                if newer is None:
                    raise
                info = newer
            except Unavailable:
                # No replica served it. If this node has meanwhile applied the bucket's
                # drop, its replicas may have closed the group: ask the registry.
                if self.node.catalog().get(bucket) is not None:
                    raise
                newer = await self._registry_lookup(bucket)
                if newer is None:
                    raise NotFound(bucket) from None
                if newer.group == info.group:
                    raise
                info = newer
        raise Unavailable(f"bucket {bucket} was dropped and created again while routing")

    # --- Keys ---------------------------------------------------------------------------

    async def put(self, bucket: str, key: bytes, value: bytes) -> None:
        await self._in_bucket(bucket, ("put", key, value), write=True)

    async def delete(self, bucket: str, key: bytes) -> bool:
        return bool(await self._in_bucket(bucket, ("delete", key), write=True))

    async def get(self, bucket: str, key: bytes) -> bytes | None:
        value = await self._in_bucket(bucket, ("get", key), write=False)
        return value if value is None else _bytes(value)

    async def keys(
        self, bucket: str, prefix: bytes | None, limit: int | None, start: bytes = b""
    ) -> list[bytes]:
        # The three-part query when there is no start: what every node understands.
        query = ("keys", prefix, limit, start) if start else ("keys", prefix, limit)
        return [_bytes(k) for k in wire_items(await self._in_bucket(bucket, query, write=False))]

    async def scan(
        self, bucket: str, start: bytes, end: bytes | None, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        pairs = await self._in_bucket(bucket, ("scan", start, end, limit), write=False)
        return [
            (_bytes(k), _bytes(v)) for k, v in (wire_items(pair, 2) for pair in wire_items(pairs))
        ]

    # --- Without a task -----------------------------------------------------------------

    def start(self, bucket: str, command: Command, then: Callable[[Outcome], None]) -> bool:
        """A key command (``("put", key, value)``, ``("delete", key)``, or a
        ``("get", key)`` query) on a bucket this node's catalog knows, routed with no
        task: the same decisions as the async methods (``routing.RouteAttempts``),
        driven by the attempts' callbacks (``route_drivers.start_route``). ``then`` is
        called once with the outcome that settled it (``Applied``, or a write's
        ``Unknown``), or ``DeadlinePassed`` (the request is over: every attempt until
        the deadline was refused), or with a ``Rejected`` when it was not settled
        before a backoff was due (every replica asked) or the bucket's group was found
        fenced or changed: the async methods then take it over (retries with backoff,
        NOT FOUND, a newer incarnation). False (and nothing started) when the
        bucket is not in the local catalog. Each attempt ends within
        ``request_timeout`` and none starts after that much time has passed.

        This is the path of nearly every request under load; the async methods cost a
        task, a cancel scope and several wake-ups each.
        """
        node = self.node
        info = node.catalog().get(bucket)
        if info is None:
            return False
        request: Propose | Read
        if command[0] == "get":
            if node.config.unsafe_local_reads:
                return False
            request = Read(command)
        else:
            request = Propose(MachineHost.encode_command(command))
        group = info.group
        target = self._first_target(group, info.replicas)
        started = node.clock()

        def first(outcome: Outcome) -> None:
            # Nearly every request is settled by its first attempt: answered by the
            # leader it was sent to (or a write of unknown fate, which is never resent).
            # Only the others pay for the routing state, which then decides exactly as
            # if it had made that attempt itself.
            match outcome:
                case Applied(reply) if not (isinstance(reply, CommandFailed) and _is_fenced(reply)):
                    self.leader_hints[group] = target
                    then(outcome)
                    return
                case Unknown() if request.may_apply:
                    then(outcome)
                    return
            attempts = RouteAttempts(
                node.id,
                self._chooser(group, info.replicas, bucket, was_listed=True),
                started + node.config.request_timeout,
                may_apply=request.may_apply,
                no_answer=_NO_REPLICA,
            )
            made = attempts.next_step(started)
            assert isinstance(made, Submit if target == node.id else Forward), made
            attempts.attempted(outcome, node.clock())
            start_route(node, group, request, attempts, node.clock, settled, outcome)

        def settled(result: Result | None, last: Outcome) -> None:
            match result:
                case Answered(Refused(failed)) if _is_fenced(failed):
                    # Not settled here: the full router checks for a newer incarnation.
                    then(Rejected("the bucket's group was dropped"))
                case Answered(Done() | Refused(), target):
                    self.leader_hints[group] = target
                    then(last)
                case Answered(MaybeApplied()):
                    then(last)
                case Expired(reason):
                    # Over: handing it to the full router would start a second deadline.
                    then(DeadlinePassed(self._why(reason)))
                case GaveUp(_, reason):
                    then(Rejected(reason))
                case None:
                    # Every replica was asked: the backoff is a task's (the full router).
                    then(last)

        pending = Pending(then=first)
        node.track(pending)
        if target == node.id:
            node.submit(group, request, pending)
        else:
            node.send_forward(target, group, request, pending)
        return True

    # --- Routing ------------------------------------------------------------------------

    def _meta_replicas(self) -> tuple[int, ...]:
        return self.node.meta_members()

    async def _write(
        self,
        group: str,
        replicas: tuple[int, ...],
        command: Command,
        bucket: str | None = None,
    ) -> WireValue:
        data = MachineHost.encode_command(command)
        return await self._route(group, replicas, Propose(data), bucket)

    async def registry_write(self, command: Command) -> WireValue:
        """Propose a registry command (placement changes) through the meta group."""
        return await self._write(META_GROUP, self._meta_replicas(), command)

    async def registry_read(self, query: Command) -> WireValue:
        """A linearizable registry query through the meta group."""
        return await self._read(META_GROUP, self._meta_replicas(), query)

    async def group_request(
        self, group: str, replicas: tuple[int, ...], request: GroupRequest
    ) -> WireValue:
        """Route an administrative request (a membership change, the leader's view, a
        leadership transfer) to the group's leader, like a write."""
        return await self._route(group, replicas, request, None)

    async def _read(
        self,
        group: str,
        replicas: tuple[int, ...],
        query: Command,
        bucket: str | None = None,
    ) -> WireValue:
        local = self.node.groups.get(group)
        if self.node.config.unsafe_local_reads and group != META_GROUP and local is not None:
            # The planted bug the distributed harness must catch: a replica's local
            # state may be stale (a partitioned ex-leader, a lagging follower).
            try:
                answer: WireValue = local.host.query(query)
            except BucketDropped:
                raise GroupFenced(group) from None
            return answer
        return await self._route(group, replicas, Read(query), bucket)

    def _why(self, reason: str) -> str:
        """``reason``, and why this node does not serve yet if it is still waiting."""
        waiting = self.node.waiting_for_peers
        return (
            reason
            if waiting is None
            else f"{reason} (node {self.node.me.name} does not serve yet: {waiting})"
        )

    async def _route(
        self, group: str, replicas: tuple[int, ...], request: Request, bucket: str | None
    ) -> WireValue:
        node = self.node
        chooser = self._chooser(group, replicas, bucket)
        result = await route(
            node, group, request, node.config.request_timeout, chooser, _NO_REPLICA
        )
        match result:
            case Expired(reason):
                raise Unavailable(self._why(reason))
            case GaveUp(GiveUpKind.NOT_FOUND, reason):
                raise NotFound(reason)
            case GaveUp(_, reason):
                raise Unavailable(reason)
        match result.verdict:
            case Refused(failed):
                raise GroupFenced(group) if _is_fenced(failed) else CommandRejected(failed)
            case MaybeApplied(reason):
                raise OutcomeUnknown(reason)
            case Done(reply):
                self.leader_hints[group] = result.target
                return reply

    def _chooser(
        self,
        group: str,
        replicas: tuple[int, ...],
        bucket: str | None,
        *,
        was_listed: bool | None = None,
    ) -> ReplicaChooser:
        """The choice of replica for one request to ``group`` (for ``bucket``, if it is
        a bucket's): see ``routing.ReplicaChooser``."""
        node = self.node
        if group == META_GROUP:
            bucket = None

        def catalog_group() -> str | None:
            info = node.catalog().get(bucket) if bucket is not None else None
            return None if info is None else info.group

        return ReplicaChooser(
            node,
            group,
            replicas,
            self._first_target(group, replicas),
            why=self._why,
            bucket=bucket,
            was_listed=catalog_group() is not None if was_listed is None else was_listed,
            catalog_group=catalog_group,
        )

    def _first_target(self, group: str, replicas: tuple[int, ...]) -> int:
        """Where a request to ``group`` goes first: the last node that answered as its
        leader, else this node if it is a replica, else the first replica."""
        target = self.leader_hints.get(group)
        if target in replicas:
            return target
        return self.node.id if self.node.id in replicas else replicas[0]


def _bytes(value: WireValue) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes in the reply, got {type(value).__name__}")
    return value


def _text(value: WireValue) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str in the reply, got {type(value).__name__}")
    return value
