"""The mover: carries out placement changes recorded in the registry, step by step.

This is the shell: what to do is decided by ``runtime.mover_plan`` (pure functions of
the registry and the meta group's membership); this module executes its actions
through the router and sleeps between rounds. It must never decide anything itself.

It runs on every node but acts only on the meta group's leader. Each round it reads
the registry as that leader has applied it and takes the next step of every change in
flight; every step is idempotent and everything it needs to resume is in Raft groups,
so a mover that dies (or a leader that changes) mid-move simply continues next round:

* on every node (leader of the meta group or not): a bucket group this node leads that
  is fenced by a DROP's tombstone but still in the registry leaves the registry;

* every registry node is a member of the meta group (voters as configured, the others
  learners), and nodes removed from the registry leave it;
* a leaving node's ranges are each moved to another active node, and once nothing
  lists it any more it leaves the meta group and the registry;
* for a move ``frm -> to`` of a range, each bucket still listing ``frm``: add ``to`` as
  a learner, wait until it has caught up, promote it, remove ``frm``, then record the
  bucket's new replicas; when none is left, finish the move (see ``boutique.placement``).
"""

from __future__ import annotations

import logging

import trio

from boutique.registry import BucketInfo
from boutique.registry_state import Move

from .group import Applied
from .mover_plan import (
    ChangeMeta,
    StepBuckets,
    Warn,
    WriteRegistry,
    bucket_step,
    finish_drops,
    plan,
)
from .requests import ChangeMembership, GroupLeaderView, LeaderView
from .router import Router, RoutingError
from .store_node import META_GROUP, StoreNode

log = logging.getLogger("boutique.mover")

ROUND = 0.2
"""Seconds between rounds."""
META_CHANGE_TIMEOUT = 5.0
"""Seconds a meta group membership change may take before the next round tries again."""


class Mover:
    def __init__(self, node: StoreNode, router: Router) -> None:
        self.node = node
        self.router = router
        self.rounds = 0

    async def run(self) -> None:
        while True:
            await trio.sleep(ROUND)
            await self._finish_drops()
            if not self.node.is_meta_leader():
                continue
            self.rounds += 1
            try:
                await self.step()
            except RoutingError as exc:
                log.info("mover: will retry: %s", exc)
            except ValueError as exc:
                log.warning("mover: a registry change was refused: %s", exc)

    async def step(self) -> None:
        """One round on the meta group's leader: the plan's actions, in order (the
        first that fails ends the round)."""
        state = self.node.registry_state()
        if state is None:
            return
        node = self.node
        for action in plan(state, node.meta_conf(), len(node.config.meta_replicas)):
            match action:
                case ChangeMeta(kind, node_id):
                    log.info("mover: meta group: %s node %d", kind.name.lower(), node_id)
                    outcome = await node.change_membership(
                        META_GROUP, action.change, timeout=META_CHANGE_TIMEOUT
                    )
                    if not isinstance(outcome, Applied):
                        log.info("mover: meta membership change not done yet: %s", outcome)
                case WriteRegistry():
                    await self._registry(action)
                case Warn(message):
                    log.warning("mover: %s", message)
                case StepBuckets(move, buckets):
                    async with trio.open_nursery() as nursery:
                        for info in buckets:
                            nursery.start_soon(self._step_bucket, info, move)

    async def _finish_drops(self) -> None:
        """DROPs cut short, in the groups this node leads (see ``finish_drops``). Run by
        every node, since the meta leader may host none of them."""
        for write in finish_drops(self.node.fenced_but_listed()):
            try:
                await self._registry(write)
            except RoutingError as exc:
                log.info("mover: %s: will retry: %s", " ".join(map(str, write.command[:2])), exc)

    async def _step_bucket(self, info: BucketInfo, move: Move) -> None:
        """Take the next step of moving one bucket's group (see ``bucket_step``)."""
        hosts = tuple(dict.fromkeys((*info.replicas, move.to)))
        try:
            view = GroupLeaderView.from_wire(
                await self.router.group_request(info.group, hosts, LeaderView())
            )
            match bucket_step(info, move, view):
                case ChangeMembership(kind, node_id) as change:
                    log.info("mover: bucket %s: %s node %d", info.name, kind.name.lower(), node_id)
                    await self.router.group_request(info.group, hosts, change)
                case WriteRegistry() as write:
                    await self._registry(write)
                case None:
                    pass
        except (RoutingError, ValueError) as exc:
            log.info("mover: bucket %s: will retry: %s", info.name, exc)

    async def _registry(self, write: WriteRegistry) -> None:
        await self.router.registry_write(write.command)
        log.info("mover: %s", write.done)
