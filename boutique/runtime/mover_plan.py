"""What the mover does next: its decisions as pure functions of the registry.

The mover (``runtime.mover``) is a shell: each round it reads the registry as this node
applied it and the meta group's membership, asks ``plan`` for the round's actions, and
executes them in order through the router (a failed one ends the round; the next round
plans again from the new state). Moving one bucket is a step per round, decided by
``bucket_step`` from its group leader's view. Every action is idempotent, so a plan
made from a stale registry is at worst refused or repeated.

The actions:

* ``ChangeMeta`` — one membership change of the meta group (joiners added as learners,
  then promoted while voters are wanted; nodes gone from the registry, and drained
  leaving nodes, removed);
* ``WriteRegistry`` — a registry command (``start_move`` of a leaving node's range,
  ``remove_node`` once it is drained and out of the meta group, ``finish_move`` once no
  bucket of the range lists the old replica, ``set_bucket_replicas``, ``drop``);
* ``StepBuckets`` — take the next step of moving these buckets (``bucket_step``);
* ``Warn`` — nothing can be done, and an operator should know.

This module never does I/O, never awaits and never imports trio: a test or a simulator
calls it with any registry state it likes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from boutique.machine import WireValue
from boutique.placement import moved_replicas
from boutique.raft import ChangeType, ConfChange, ConfState
from boutique.registry_state import BucketInfo, Move, RegistryState

from .requests import ChangeMembership, GroupLeaderView

__all__ = [
    "CAUGHT_UP_SLACK",
    "MAX_META_VOTERS",
    "PARALLEL_BUCKETS",
    "Action",
    "BucketStep",
    "ChangeMeta",
    "StepBuckets",
    "Warn",
    "WriteRegistry",
    "bucket_step",
    "finish_drops",
    "meta_change",
    "plan",
]

PARALLEL_BUCKETS = 8
"""Buckets of one move stepped per round."""
CAUGHT_UP_SLACK = 0
"""A learner is promoted once its match index is this close to the leader's commit."""
MAX_META_VOTERS = 5
"""The meta group never has more voters than this, however many nodes there are."""

RegistryCommand: TypeAlias = tuple[WireValue, ...]
"""A registry command, as the router proposes it (``("finish_move", range_id)``)."""


@dataclass(frozen=True, slots=True)
class ChangeMeta:
    """Change the meta group's membership by one node."""

    kind: ChangeType
    node: int

    @property
    def change(self) -> ConfChange:
        return ConfChange.single(self.kind, self.node)


@dataclass(frozen=True, slots=True)
class WriteRegistry:
    """Propose ``command`` in the registry; ``done`` says what it did, for the log."""

    command: RegistryCommand
    done: str


@dataclass(frozen=True, slots=True)
class StepBuckets:
    """Take the next step of ``move`` for each of ``buckets`` (concurrently)."""

    move: Move
    buckets: tuple[BucketInfo, ...]


@dataclass(frozen=True, slots=True)
class Warn:
    """Nothing can be done about something an operator should know of."""

    message: str


Action: TypeAlias = ChangeMeta | WriteRegistry | StepBuckets | Warn

BucketStep: TypeAlias = ChangeMembership | WriteRegistry
"""The next step of moving one bucket: a membership change in its group, or the
registry's record of its new replicas."""


def plan(state: RegistryState, conf: ConfState | None, meta_replicas: int) -> list[Action]:
    """The round's actions on the meta group's leader, in order: the meta group's
    membership (one change), then draining leaving nodes, then every move in flight.
    ``conf`` is the meta group's membership as applied here (None: not known);
    ``meta_replicas`` how many voters the configuration asks for."""
    actions: list[Action] = []
    change = meta_change(state, conf, meta_replicas) if conf is not None else None
    if change is not None:
        actions.append(change)
    actions.extend(_drain_leaving_nodes(state, conf))
    for move in list(state.moves.values()):
        actions.append(_advance_move(move, state))
    return actions


def finish_drops(fenced_but_listed: Iterable[BucketInfo]) -> list[WriteRegistry]:
    """Take fenced buckets out of the registry: DROPs whose tombstone committed but
    whose registry step never happened (run by every node, for the groups it leads)."""
    return [
        WriteRegistry(
            ("drop", info.name, info.group),
            f"finished the drop of bucket {info.name} ({info.group})",
        )
        for info in fenced_but_listed
    ]


def meta_change(state: RegistryState, conf: ConfState, meta_replicas: int) -> ChangeMeta | None:
    """One membership change of the meta group toward the registry, or None if it
    matches: every registry node a member (voters as configured, the others
    learners), nodes removed from the registry gone."""
    members = conf.voters | conf.learners
    active = {n for n, info in state.nodes.items() if not info.leaving}
    joiners = sorted(n for n in active if n not in members)
    gone = sorted(m for m in members if m not in state.nodes)
    leaving_voters = sorted(v for v in conf.voters if v in state.nodes and state.nodes[v].leaving)
    promotable = sorted(n for n in conf.learners if n in active)
    wanted_voters = min(meta_replicas, len(active), MAX_META_VOTERS)
    if joiners:
        return ChangeMeta(ChangeType.ADD_LEARNER, joiners[0])
    if promotable and (leaving_voters or len(conf.voters - set(leaving_voters)) < wanted_voters):
        return ChangeMeta(ChangeType.ADD_VOTER, promotable[0])
    if gone:
        return ChangeMeta(ChangeType.REMOVE, gone[0])
    return None


def _drain_leaving_nodes(state: RegistryState, conf: ConfState | None) -> list[Action]:
    """A leaving node's ranges each move to the least loaded active node; once nothing
    lists it any more, it leaves the meta group, then the registry."""
    assert state.ranges is not None
    load = Counter(node for rng in state.ranges for node in rng.replicas)
    members = set() if conf is None else conf.voters | conf.learners
    actions: list[Action] = []
    for info in [n for n in state.nodes.values() if n.leaving]:
        listed = any(info.id in rng.replicas for rng in state.ranges) or any(
            info.id in b.replicas for b in state.buckets.values()
        )
        moving = any(info.id in (m.frm, m.to) for m in state.moves.values())
        if not listed and not moving:
            # Drained: it leaves the meta group first, then the registry.
            if info.id in members:
                actions.append(ChangeMeta(ChangeType.REMOVE, info.id))
            else:
                actions.append(
                    WriteRegistry(
                        ("remove_node", info.id), f"node {info.name} has left the cluster"
                    )
                )
            continue
        for rng in state.ranges:
            if info.id not in rng.replicas or rng.id in state.moves:
                continue
            candidates = [
                n for n, other in state.nodes.items() if not other.leaving and n not in rng.replicas
            ]
            if not candidates:
                actions.append(Warn(f"no node can take range {rng.id} from {info.name}"))
                continue
            target = min(candidates, key=lambda n: (load[n], n))
            load[target] += 1
            actions.append(
                WriteRegistry(
                    ("start_move", rng.id, info.id, target),
                    f"moving range {rng.id} from {info.name} to node {target}",
                )
            )
    return actions


def _advance_move(move: Move, state: RegistryState) -> WriteRegistry | StepBuckets:
    """Finish ``move`` if no bucket of its range lists the old replica, else step the
    first ``PARALLEL_BUCKETS`` that still do."""
    pending = [
        info
        for info in state.buckets.values()
        if info.range_id == move.range_id and move.frm in info.replicas
    ]
    if not pending:
        return WriteRegistry(
            ("finish_move", move.range_id),
            f"range {move.range_id} moved from node {move.frm} to node {move.to}",
        )
    return StepBuckets(move, tuple(pending[:PARALLEL_BUCKETS]))


def bucket_step(info: BucketInfo, move: Move, view: GroupLeaderView) -> BucketStep | None:
    """The next step of moving bucket ``info``'s group from ``move.frm`` to
    ``move.to``, given its leader's ``view`` (None: wait for the next round): add
    ``to`` as a learner, promote it once caught up, remove ``frm``, then record the
    bucket's new replicas."""
    if view.pending_conf:
        return None  # the previous change is still being applied
    voters, learners = set(view.voters), set(view.learners)
    if move.to not in voters | learners:
        return ChangeMembership(ChangeType.ADD_LEARNER, move.to)
    if move.to in learners:
        if view.match.get(move.to, 0) + CAUGHT_UP_SLACK >= view.commit:
            return ChangeMembership(ChangeType.ADD_VOTER, move.to)
        return None
    if move.frm in voters | learners:
        return ChangeMembership(ChangeType.REMOVE, move.frm)
    replicas: tuple[WireValue, ...] = moved_replicas(info.replicas, move)
    return WriteRegistry(
        ("set_bucket_replicas", info.name, info.group, replicas),
        f"bucket {info.name} moved to nodes {replicas}",
    )
