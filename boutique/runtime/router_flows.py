"""The Router's composite operations as flows: decisions with no I/O, driven by replies.

CREATE, DROP, the catalog lookup and a key command in a bucket each take several
routed requests (a registry write, a fence in the bucket's group, a linearizable
registry read), and what comes next depends on how each one ended. Each is a generator
here: it yields a ``RouteTo`` whenever it needs a request routed and gets the answer
back. The shell (``Router._drive`` in ``runtime.router``) does, for each flow:

1. ``next(flow)`` to start it; ``StopIteration`` at once means it needed no request
   (a local catalog hit).
2. Route every ``RouteTo`` the flow yields, to the replicas it names, as the router
   routes any request (deadline, leader hints, retries).
3. Resume the flow with ``flow.send(reply)`` when the request was answered, or with
   ``flow.throw(error)`` when it ended with a ``route_errors.RoutingError``
   (``NotFound``, ``GroupFenced``, ``Unavailable``, ``OutcomeUnknown``,
   ``CommandRejected``); any other error is the operation's, and the flow is closed.
4. ``StopIteration.value`` is the operation's answer; an exception out of ``next``,
   ``send`` or ``throw`` is its error.

A flow reads the node only through a ``RouterView`` (the node is one), and only when it
gets to the step that needs it: each step sees the catalog as applied at that moment,
as the async methods did.

The DROP fence's rules live here (see ``drop`` and ``in_bucket``): NOT FOUND only after
a linearizable registry read; a request that meets a fenced group follows a newer
incarnation of the bucket; a DROP whose tombstone committed answers OK even when the
registry step fails.

This module never does I/O, never awaits and never imports trio (or anything that
does): a test drives a flow with scripted replies and errors.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias, TypeVar

from boutique.machine import MachineHost, WireValue, wire_items
from boutique.registry import META_GROUP
from boutique.registry_state import BucketInfo

from .requests import Propose, Read
from .route_errors import GroupFenced, NotFound, OutcomeUnknown, Unavailable

__all__ = [
    "FENCE_RETRIES",
    "Command",
    "Flow",
    "RouteTo",
    "RouterView",
    "create",
    "drop",
    "in_bucket",
    "lookup",
    "registry_lookup",
]

T = TypeVar("T")

Command = tuple[WireValue, ...]
"""A command or query for a group's machine (``("put", key, value)``, ``("lookup", name)``)."""

FENCE_RETRIES = 3
"""How many times one request follows a bucket to a newer incarnation before giving up
(each time the bucket was dropped and created again while the request ran)."""


@dataclass(frozen=True, slots=True)
class RouteTo:
    """Route ``request`` to ``group`` (one of ``replicas``), for ``bucket`` if it is a
    bucket's group: resume the flow with the reply, or throw the routing error in."""

    group: str
    replicas: tuple[int, ...]
    request: Propose | Read
    bucket: str | None = None


Flow: TypeAlias = Generator[RouteTo, WireValue, T]
"""A composite operation: yields requests to route, is sent their replies, returns the
answer."""


class RouterView(Protocol):
    """What a flow reads of the node (``StoreNode`` is one)."""

    def catalog(self) -> Mapping[str, BucketInfo]:
        """The bucket catalog as applied here (may lag the cluster)."""
        ...

    def bucket_hosts(self, info: BucketInfo) -> tuple[int, ...]:
        """Every node that hosts the bucket now (its replicas, then any joining)."""
        ...

    def meta_members(self) -> tuple[int, ...]:
        """Where to send registry requests."""
        ...


def _write(
    group: str, replicas: tuple[int, ...], command: Command, bucket: str | None = None
) -> RouteTo:
    return RouteTo(group, replicas, Propose(MachineHost.encode_command(command)), bucket)


def _read(
    group: str, replicas: tuple[int, ...], query: Command, bucket: str | None = None
) -> RouteTo:
    return RouteTo(group, replicas, Read(query), bucket)


# --- Buckets ---------------------------------------------------------------------------


def create(view: RouterView, name: str) -> Flow[BucketInfo]:
    for _ in range(FENCE_RETRIES):
        status, wire = wire_items(
            (yield _write(META_GROUP, view.meta_members(), ("create", name))), 2
        )
        info = BucketInfo.from_wire(wire)
        if status == "created":
            return info
        # It exists; unless a DROP fenced it and was cut short before leaving the
        # registry. Then finish that DROP and create a new incarnation.
        try:
            yield _read(info.group, view.bucket_hosts(info), ("count",))
        except GroupFenced:
            yield _write(META_GROUP, view.meta_members(), ("drop", name, info.group))
            continue
        return info
    raise Unavailable(f"bucket {name} was dropped again and again while being created")


def drop(view: RouterView, name: str) -> Flow[bool]:
    """Fence the bucket's group with a tombstone, then take it out of the registry.

    The tombstone's commit is the DROP's instant: from then on no replica of the
    group answers anything but NOT FOUND, whichever nodes are cut off from the meta
    group. If the registry step does not happen (this node dies, the meta group is
    out of reach), the bucket answers NOT FOUND anyway and the next DROP or CREATE
    of the name, or the group leader's mover, finishes it."""
    info = yield from lookup(view, name)  # NOT FOUND for a bucket that does not exist
    for _ in range(FENCE_RETRIES):
        try:
            fenced_now = yield _write(
                info.group, view.bucket_hosts(info), ("tombstone",), bucket=name
            )
        except (NotFound, Unavailable):
            # Certainly not fenced. This node's catalog may have been stale (the
            # group is gone, or another incarnation is listed): ask the registry.
            newer = yield from registry_lookup(view, name)
            if newer is None:
                raise NotFound(name) from None
            if newer.group == info.group:
                raise
            info = newer
            continue
        try:
            yield _write(META_GROUP, view.meta_members(), ("drop", name, info.group))
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
        newer = yield from registry_lookup(view, name)
        if newer is None or newer.group == info.group:
            raise NotFound(name)
        info = newer
    raise Unavailable(f"bucket {name} was dropped and created again while dropping it")


def lookup(view: RouterView, name: str) -> Flow[BucketInfo]:
    """The bucket's catalog entry. A local hit is trusted (a dropped bucket's group
    is fenced, and a request that meets the fence confirms with the registry); a
    miss is confirmed by a linearizable read of the registry before ``NotFound`` is
    raised."""
    info = view.catalog().get(name)
    if info is not None:
        return info
    found = yield from registry_lookup(view, name)
    if found is None:
        raise NotFound(name)
    return found


def registry_lookup(view: RouterView, name: str) -> Flow[BucketInfo | None]:
    """The bucket's entry by a linearizable read of the registry (None: no such
    bucket)."""
    wire = yield _read(META_GROUP, view.meta_members(), ("lookup", name))
    return None if wire is None else BucketInfo.from_wire(wire)


# --- Keys ------------------------------------------------------------------------------


def in_bucket(view: RouterView, bucket: str, body: Command, *, write: bool) -> Flow[WireValue]:
    """Run a key command (``write``) or query in the bucket's group. A
    fenced group means NOT FOUND, unless the registry, read linearizably after the
    fence was seen, lists a newer incarnation: then the request goes there."""
    info = yield from lookup(view, bucket)
    for _ in range(FENCE_RETRIES):
        try:
            if write:
                return (yield _write(info.group, info.replicas, body, bucket=bucket))
            return (yield _read(info.group, info.replicas, body, bucket=bucket))
        except GroupFenced as fenced:
            newer = yield from registry_lookup(view, bucket)
            if newer is None or newer.group == fenced.group:
                raise NotFound(bucket) from None
            info = newer
        except NotFound:
            # This node's catalog lists another incarnation now: it exists unless
            # the registry says otherwise.
            newer = yield from registry_lookup(view, bucket)
            if newer is None:
                raise
            info = newer
        except Unavailable:
            # No replica served it. If this node has meanwhile applied the bucket's
            # drop, its replicas may have closed the group: ask the registry.
            if view.catalog().get(bucket) is not None:
                raise
            newer = yield from registry_lookup(view, bucket)
            if newer is None:
                raise NotFound(bucket) from None
            if newer.group == info.group:
                raise
            info = newer
    raise Unavailable(f"bucket {bucket} was dropped and created again while routing")
