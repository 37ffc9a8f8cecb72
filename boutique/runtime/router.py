"""Request routing: any node takes any bucket command and finds where it must run.

The ``Router`` looks the bucket up in the registry, then proposes in the bucket's
group: locally when this node leads it, otherwise at the node it believes leads,
following leader hints and trying the other replicas until the request's deadline. A
read is served by this node itself when it is a replica that knows the group's leader
(a follower read: ReadIndex from the leader, the value from its own state), else routed
like a write (the decisions are ``runtime.routing``'s ``RouteAttempts``, shared with the
library, with the choice of replica by its ``ReplicaChooser``; this module is the
shell that drives them, through ``runtime.route_drivers``). The caller gets exactly one answer, classed (by
``runtime.outcomes.classify``) as the wire contract wants:

* a result — the command was applied (or the read served);
* ``Unavailable`` — certainly not applied (no leader reachable in time, no quorum);
* ``OutcomeUnknown`` — a write was handed to a leader but its fate was not learnt;
* ``NotFound`` — the bucket does not exist (decided by a linearizable registry read);
* ``CommandRejected`` — the state machine refused the command (bad input).

(These errors are declared in ``runtime.route_errors`` and re-exported here.)

The composite operations — CREATE, DROP, the catalog lookup and a key command in a
bucket, each several routed requests whose next step depends on how the last one
ended — are decided without trio by ``runtime.router_flows``: a flow yields each
request to route, and ``Router._drive`` routes it and resumes the flow with the reply
or the error. This module keeps their async API and does the routing.

Two paths cost no task: ``start`` (a key command's single attempt) and
``start_create`` (a CREATE, in one registry entry with the CREATEs around it, see
``runtime.create_batch``); what they cannot settle the caller hands to the async methods.

DROP is two steps (see ``router_flows.drop``): a tombstone committed in the bucket's own
group, after which that group answers every request with ``BucketDropped`` on every
replica, then the registry entry goes. A request that meets a fenced group is answered
``NotFound`` only once a linearizable registry read shows no newer incarnation of the
bucket; if there is one (a re-CREATE), the request goes there instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from boutique.buckets import BucketDropped
from boutique.machine import CommandFailed, MachineHost, WireValue, wire_items
from boutique.raft.messages import NONE
from boutique.registry import BucketInfo

from . import router_flows
from .create_batch import CreateBatcher
from .group import Applied, Outcome, Pending, Rejected, Unknown
from .outcomes import Done, MaybeApplied, Refused
from .requests import GroupRequest, Propose, Read, Request
from .route_drivers import route, start_route
from .route_errors import (
    CommandRejected,
    DeadlinePassed,
    GroupFenced,
    NotFound,
    OutcomeUnknown,
    RoutingError,
    Unavailable,
)
from .router_flows import Command, Flow, RouteTo
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

__all__ = [
    "Command",
    "CommandRejected",
    "DeadlinePassed",
    "GroupFenced",
    "NotFound",
    "OutcomeUnknown",
    "Router",
    "RoutingError",
    "Unavailable",
]

T = TypeVar("T")


_BUCKET_DROPPED = BucketDropped.__name__
_NO_REPLICA = "no replica answered"


def _is_fenced(failed: CommandFailed) -> bool:
    return failed.error_type == _BUCKET_DROPPED


class Router:
    """The client-facing API of a node; every method may be called from any task."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.leader_hints: dict[str, int] = {}
        self._creates: CreateBatcher | None = None
        """The CREATEs of ``start_create`` (made on first use)."""

    # --- Buckets ------------------------------------------------------------------------

    async def create(self, name: str) -> BucketInfo:
        return await self._drive(router_flows.create(self.node, name))

    async def drop(self, name: str) -> bool:
        """Fence the bucket's group with a tombstone, then take it out of the registry
        (``router_flows.drop``: the tombstone's commit is the DROP's instant)."""
        return await self._drive(router_flows.drop(self.node, name))

    async def buckets(self) -> list[str]:
        names = await self._read(META_GROUP, self._meta_replicas(), ("list",))
        return [_text(name) for name in wire_items(names)]

    async def lookup(self, name: str) -> BucketInfo:
        """The bucket's catalog entry: a local hit, else a linearizable registry read
        (``router_flows.lookup``); ``NotFound`` only after that read."""
        return await self._drive(router_flows.lookup(self.node, name))

    async def _in_bucket(self, bucket: str, body: Command, *, write: bool) -> WireValue:
        """Run a key command (``write``) or query in the bucket's group, following the
        bucket to a newer incarnation (``router_flows.in_bucket``)."""
        return await self._drive(router_flows.in_bucket(self.node, bucket, body, write=write))

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
        reading = isinstance(request, Read)
        target = self._first_target(group, info.replicas, read=reading)
        started = node.clock()

        def first(outcome: Outcome) -> None:
            # Nearly every request is settled by its first attempt: answered by the
            # leader it was sent to (or a write of unknown fate, which is never resent).
            # Only the others pay for the routing state, which then decides exactly as
            # if it had made that attempt itself.
            match outcome:
                case Applied(reply) if not (isinstance(reply, CommandFailed) and _is_fenced(reply)):
                    self._answered_by(group, target, read=reading)
                    then(outcome)
                    return
                case Unknown() if request.may_apply:
                    then(outcome)
                    return
            attempts = RouteAttempts(
                node.id,
                self._chooser(group, info.replicas, bucket, was_listed=True, first=target),
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
                    self._answered_by(group, target, read=reading)
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

    def start_create(self, name: str, then: Callable[[Outcome], None]) -> bool:
        """CREATE bucket ``name`` with no task, in one registry entry with the other
        CREATEs around it (``runtime.create_batch``). ``then`` is called once: with
        ``Applied(("created", info))``, ``Applied(CommandFailed)`` (the name was
        refused), ``Unknown`` (a CREATE whose outcome is unknown), ``DeadlinePassed``
        (certainly not created, and over), or a ``Rejected`` that the full router
        (``create``) takes over: the bucket exists (it checks that no DROP fenced
        it), or the batch was not settled before a backoff was due. Always True (it
        started): a router without this path (a test double) answers False."""
        batcher = self._creates
        if batcher is None:
            node = self.node
            batcher = self._creates = CreateBatcher(
                node,
                node.clock,
                node.config.request_timeout,
                lambda: self._chooser(
                    META_GROUP,
                    meta := self._meta_replicas(),
                    None,
                    first=self._first_target(META_GROUP, meta),
                ),
                self._meta_answered,
                self._why,
            )
        batcher.start(name, then)
        return True

    def _meta_answered(self, target: int) -> None:
        self.leader_hints[META_GROUP] = target

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
        query: WireValue,
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

    async def _drive(self, flow: Flow[T]) -> T:
        """Run a composite operation (a ``router_flows`` flow) to its answer: route each
        request it yields, resume it with the reply or throw in the routing error."""
        try:
            effect = next(flow)
            while True:
                try:
                    reply = await self._perform(effect)
                except RoutingError as error:
                    thrown = error
                else:
                    effect = flow.send(reply)
                    continue
                # Thrown in outside the except clause, so that what the flow raises is
                # not chained to this error as if it had happened while handling it.
                effect = flow.throw(thrown)
        except StopIteration as done:
            answer: T = done.value
            return answer
        finally:
            flow.close()

    async def _perform(self, effect: RouteTo) -> WireValue:
        match effect.request:
            case Read(query):
                return await self._read(effect.group, effect.replicas, query, effect.bucket)
            case Propose() as propose:
                return await self._route(effect.group, effect.replicas, propose, effect.bucket)

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
        reading = isinstance(request, Read)
        chooser = self._chooser(
            group, replicas, bucket, first=self._first_target(group, replicas, read=reading)
        )
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
                self._answered_by(group, result.target, read=reading)
                return reply

    def _chooser(
        self,
        group: str,
        replicas: tuple[int, ...],
        bucket: str | None,
        *,
        first: int,
        was_listed: bool | None = None,
    ) -> ReplicaChooser:
        """The choice of replica for one request to ``group`` (for ``bucket``, if it is
        a bucket's), starting at ``first``: see ``routing.ReplicaChooser``."""
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
            first,
            why=self._why,
            bucket=bucket,
            was_listed=catalog_group() is not None if was_listed is None else was_listed,
            catalog_group=catalog_group,
        )

    def _first_target(self, group: str, replicas: tuple[int, ...], *, read: bool = False) -> int:
        """Where a request to ``group`` goes first: a read, to this node if it can serve
        it here (``_reads_here``); else the last node that answered as the group's
        leader, else this node if it is a replica, else the first replica."""
        if read and self._reads_here(group, replicas):
            return self.node.id
        target = self.leader_hints.get(group)
        if target in replicas:
            return target
        return self.node.id if self.node.id in replicas else replicas[0]

    def _reads_here(self, group: str, replicas: tuple[int, ...]) -> bool:
        """Whether this node serves a linearizable read of ``group`` itself: it is a
        listed replica and a voter of its open copy, which knows a leader. A follower
        asks that leader for its read index (one ReadIndex round for all the reads of
        a turn) and answers from its own state once it has applied that far (thesis
        §6.4), so the read and its value cross no peer link, and the reads of a group
        are spread over its replicas instead of all landing on its leader."""
        node = self.node
        local = node.groups.get(group)
        if local is None or node.id not in replicas or node.waiting_for_peers:
            return False
        raft = local.node.raft
        return raft.lead != NONE and node.id in raft.conf.voters

    def _answered_by(self, group: str, target: int, *, read: bool) -> None:
        """Remember that ``target`` settled a write to ``group``: it is the leader the
        group's next writes try first. A read teaches nothing: any replica that knows
        a leader serves it (``_reads_here``)."""
        if not read:
            self.leader_hints[group] = target


def _bytes(value: WireValue) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes in the reply, got {type(value).__name__}")
    return value


def _text(value: WireValue) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str in the reply, got {type(value).__name__}")
    return value
