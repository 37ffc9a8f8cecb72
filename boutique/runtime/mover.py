"""The mover: carries out placement changes recorded in the registry, step by step.

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
from collections import Counter
from typing import Any

import trio

from boutique.placement import Move, moved_replicas
from boutique.raft import ChangeType, ConfChange
from boutique.registry import BucketInfo, RegistryState

from .group import Applied
from .requests import ChangeMembership, GroupLeaderView, LeaderView
from .router import Router, RoutingError
from .store_node import META_GROUP, StoreNode

log = logging.getLogger("boutique.mover")

ROUND = 0.2
"""Seconds between rounds."""
PARALLEL_BUCKETS = 8
CAUGHT_UP_SLACK = 0
"""A learner is promoted once its match index is this close to the leader's commit."""


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
        state = self.node.registry_state()
        if state is None:
            return
        await self._sync_meta_members(state)
        await self._drain_leaving_nodes(state)
        for move in list(state.moves.values()):
            await self._advance_move(move, state)

    # --- Drops cut short ---------------------------------------------------------------

    async def _finish_drops(self) -> None:
        """Take fenced buckets this node's groups lead out of the registry: a DROP whose
        tombstone committed but whose registry step never happened (its node died, its
        meta write timed out). Run by every node, for the groups it leads, since the
        meta leader may host none of them."""
        for info in self.node.fenced_but_listed():
            try:
                await self._registry("drop", info.name, info.group)
                log.info("mover: finished the drop of bucket %s (%s)", info.name, info.group)
            except RoutingError as exc:
                log.info("mover: drop of %s: will retry: %s", info.name, exc)

    # --- The meta group -----------------------------------------------------------------

    async def _sync_meta_members(self, state: RegistryState) -> None:
        """One membership change per round, until the meta group matches the registry."""
        conf = self.node.meta_conf()
        if conf is None:
            return
        members = conf.voters | conf.learners
        active = {n for n, info in state.nodes.items() if not info.leaving}
        change: ConfChange | None = None
        joiners = sorted(n for n in active if n not in members)
        gone = sorted(m for m in members if m not in state.nodes)
        leaving_voters = sorted(
            v for v in conf.voters if v in state.nodes and state.nodes[v].leaving
        )
        promotable = sorted(n for n in conf.learners if n in active)
        wanted_voters = min(len(self.node.config.meta_replicas), len(active), 5)
        if joiners:
            change = ConfChange.single(ChangeType.ADD_LEARNER, joiners[0])
        elif promotable and (
            leaving_voters or len(conf.voters - set(leaving_voters)) < wanted_voters
        ):
            change = ConfChange.single(ChangeType.ADD_VOTER, promotable[0])
        elif gone:
            change = ConfChange.single(ChangeType.REMOVE, gone[0])
        if change is None:
            return
        kind, node_id = change.changes[0]
        log.info("mover: meta group: %s node %d", kind.name.lower(), node_id)
        outcome = await self.node.change_membership(META_GROUP, change, timeout=5.0)
        if not isinstance(outcome, Applied):
            log.info("mover: meta membership change not done yet: %s", outcome)

    # --- Leaving nodes ------------------------------------------------------------------

    async def _drain_leaving_nodes(self, state: RegistryState) -> None:
        assert state.ranges is not None
        load = Counter(node for rng in state.ranges for node in rng.replicas)
        for info in [n for n in state.nodes.values() if n.leaving]:
            listed = any(info.id in rng.replicas for rng in state.ranges) or any(
                info.id in b.replicas for b in state.buckets.values()
            )
            moving = any(info.id in (m.frm, m.to) for m in state.moves.values())
            if not listed and not moving:
                # Drained: it leaves the meta group first, then the registry.
                conf = self.node.meta_conf()
                if conf is not None and info.id in conf.voters | conf.learners:
                    change = ConfChange.single(ChangeType.REMOVE, info.id)
                    await self.node.change_membership(META_GROUP, change, timeout=5.0)
                    continue
                await self._registry("remove_node", info.id)
                log.info("mover: node %s has left the cluster", info.name)
                continue
            for rng in state.ranges:
                if info.id not in rng.replicas or rng.id in state.moves:
                    continue
                candidates = [
                    n
                    for n, other in state.nodes.items()
                    if not other.leaving and n not in rng.replicas
                ]
                if not candidates:
                    log.warning("mover: no node can take range %s from %s", rng.id, info.name)
                    continue
                target = min(candidates, key=lambda n: (load[n], n))
                load[target] += 1
                await self._registry("start_move", rng.id, info.id, target)
                log.info("mover: moving range %s from %s to node %d", rng.id, info.name, target)

    # --- Moves --------------------------------------------------------------------------

    async def _advance_move(self, move: Move, state: RegistryState) -> None:
        pending = [
            info
            for info in state.buckets.values()
            if info.range_id == move.range_id and move.frm in info.replicas
        ]
        if not pending:
            await self._registry("finish_move", move.range_id)
            log.info(
                "mover: range %s moved from node %d to node %d", move.range_id, move.frm, move.to
            )
            return
        async with trio.open_nursery() as nursery:
            for info in pending[:PARALLEL_BUCKETS]:
                nursery.start_soon(self._step_bucket, info, move)

    async def _step_bucket(self, info: BucketInfo, move: Move) -> None:
        """Take the next step of moving one bucket's group from ``frm`` to ``to``."""
        hosts = tuple(dict.fromkeys((*info.replicas, move.to)))
        try:
            view = GroupLeaderView.from_wire(
                await self.router.group_request(info.group, hosts, LeaderView())
            )
            voters, learners = set(view.voters), set(view.learners)
            if view.pending_conf:
                return  # the previous change is still being applied
            if move.to not in voters | learners:
                await self._change(info, hosts, ChangeType.ADD_LEARNER, move.to)
            elif move.to in learners:
                match = view.match.get(move.to, 0)
                if match + CAUGHT_UP_SLACK >= view.commit:
                    await self._change(info, hosts, ChangeType.ADD_VOTER, move.to)
            elif move.frm in voters | learners:
                await self._change(info, hosts, ChangeType.REMOVE, move.frm)
            else:
                replicas = moved_replicas(info.replicas, move)
                await self._registry("set_bucket_replicas", info.name, info.group, replicas)
        except (RoutingError, ValueError) as exc:
            log.info("mover: bucket %s: will retry: %s", info.name, exc)

    async def _change(
        self, info: BucketInfo, hosts: tuple[int, ...], kind: ChangeType, node_id: int
    ) -> None:
        log.info("mover: bucket %s: %s node %d", info.name, kind.name.lower(), node_id)
        await self.router.group_request(info.group, hosts, ChangeMembership(kind, node_id))

    async def _registry(self, *command: Any) -> Any:
        return await self.router.registry_write(command)
