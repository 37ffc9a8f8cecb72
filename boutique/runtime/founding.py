"""Whether a node whose data directory is empty may found the cluster's groups.

A node of the config file bootstraps the meta group (and, as it replays the catalog,
its bucket groups) as a founding voter when its storage holds nothing. That is right
on the cluster's first start and fatal after its data directory was wiped or replaced:
the node would come back as a voter with term 1, an empty log and no vote (amnesia),
and could elect a leader that lacks what its previous incarnation acknowledged. Like
etcd, which refuses to bootstrap a member the existing cluster already knows, a node
with an empty data directory first asks (`admit`):

1. Every peer of the config is asked for its own view of the meta group
   (``execute_local`` kind "p"). A term above 1 means the cluster has held an
   election: it exists. The node then asks the registry (a linearizable read through
   the meta leader) whether it has started before. If so, its state is lost and it
   refuses to start (`ClusterExistsError`, which says how to bring it back). If not,
   it is a founder starting late for the first time: it records that it started
   (``("node_started", id)``) before it hosts anything, then founds.
2. No election anywhere, and a majority of the meta group's founders (this node
   included) answered: the cluster is new; the node founds it.
3. Otherwise it cannot tell yet: it hosts nothing, so it neither votes nor
   acknowledges, and asks again.

Every node records in the registry that it started, and the meta leader records every
node that acknowledged meta entries (`record_started`), so a later wipe is recognised.
What this cannot see (README, "A node that lost its data directory"): a node of a new
cluster wiped within a few ticks of its first vote, before its record was committed; a
wiped node that reaches only nodes that never started while every node holding the
data is unreachable; a node that joined with ``--join`` (not checked).

This module decides and asks; it never opens storage and only reads the Raft core.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Mapping

import trio

from boutique.group.admission import GroupView, parse_view
from boutique.machine import CommandFailed, wire_items
from boutique.raft import Role
from boutique.storage.errors import DataFileError

from .group import Applied
from .requests import LocalView
from .router import Router
from .store_node import META_GROUP, StoreNode

log = logging.getLogger("boutique.founding")

__all__ = ["ClusterExistsError", "Decision", "admit", "decide", "record_started"]

RETRY = 0.5
"""Seconds between two rounds of questions."""
LOG_EVERY = 10.0
"""Seconds between two log lines saying the same thing while the node waits."""
PATIENCE = 3.0
"""Seconds of waiting for peers that are normal at a cluster's first start; after that
the node says (in its log, and to clients at once) that it does not serve yet."""


class ClusterExistsError(DataFileError):
    """The data directory is empty, yet the cluster already counts this node: it lost
    its state and must not found anything. The message says how to bring it back."""


class Decision(enum.Enum):
    FOUND = "found"
    """The cluster is new: found it."""
    ASK_REGISTRY = "ask the registry"
    """The cluster exists: whether this node may found depends on the registry."""
    WAIT = "wait"


def decide(me: int, founders: Collection[int], answers: Mapping[int, GroupView | None]) -> Decision:
    """What a node with an empty data directory does, given the meta group's views
    from the peers that answered (None: the peer hosts no meta group yet)."""
    if any(view is not None and view.term > 1 for view in answers.values()):
        return Decision.ASK_REGISTRY
    heard = {me, *answers} & set(founders)
    if len(heard) * 2 > len(founders):
        return Decision.FOUND
    return Decision.WAIT


def refusal(node: StoreNode) -> ClusterExistsError:
    me = node.me
    return ClusterExistsError(
        me.data_dir,
        f"the data directory is empty, but node {me.name} (id {me.id}) has already taken "
        "part in this cluster: its state is lost, and founding again could undo "
        "acknowledged writes. To bring the machine back: ADMIN REMOVE-NODE "
        f"{me.name} at a running node (first start a replacement if too few nodes "
        "would remain), then start this machine as a new node with an empty data "
        "directory: boutique-server --config ... --join --name NEW --id NEW "
        "--port ... --peer-port ... (it catches up by snapshot)",
    )


async def admit(node: StoreNode, router: Router) -> None:
    """Return once this node may found; raise `ClusterExistsError` if it must not.
    Meanwhile ``node.waiting_for_peers`` says why the node does not serve."""
    founders = node.config.meta_replicas
    peers = sorted(n.id for n in node.config.nodes if n.id != node.id)
    try:
        await _admit(node, router, founders, peers)
    finally:
        node.waiting_for_peers = None


async def _admit(
    node: StoreNode, router: Router, founders: tuple[int, ...], peers: list[int]
) -> None:
    last_silent: list[int] | None = None
    next_log = 0.0
    began = trio.current_time()
    while True:
        answers = await _ask_views(node, peers, META_GROUP)
        decision = decide(node.id, founders, answers)
        if decision is Decision.FOUND:
            log.info("no election anywhere yet: node %s founds the new cluster", node.me.name)
            return
        if decision is Decision.ASK_REGISTRY:
            try:
                started = wire_items(await router.registry_read(("started",)))
                if node.id in started:
                    raise refusal(node)
                if node.id in founders:
                    # A late first start: recorded before this node votes or
                    # acknowledges, so a wipe from now on is recognised. (Other nodes
                    # record it once their meta group is on disk: `record_started`.)
                    await router.registry_write(("node_started", node.id))
                log.info("node %s starts late for the first time: it founds", node.me.name)
                return
            except ClusterExistsError:
                raise
            except Exception as exc:
                log.info("cannot ask the registry whether this node is new yet: %s", exc)
        else:
            silent = sorted(set(peers) - set(answers))
            now = trio.current_time()
            if now - began < PATIENCE:
                # Nodes of a new cluster start seconds apart: a short wait is normal
                # and worth neither a log line nor turning clients away early.
                await trio.sleep(RETRY)
                continue
            names = ", ".join(n.name for n in node.config.nodes if n.id in silent)
            node.waiting_for_peers = (
                f"its data directory is empty and it is waiting for {names} to tell "
                "whether the cluster exists"
            )
            if silent != last_silent or now >= next_log:
                # Said once, again when it changes, and every LOG_EVERY seconds.
                log.info(
                    "node %s does not serve yet: %s (it votes for nothing meanwhile)",
                    node.me.name,
                    node.waiting_for_peers,
                )
                last_silent, next_log = silent, now + LOG_EVERY
        await trio.sleep(RETRY)


async def record_started(node: StoreNode, router: Router) -> None:
    """Keep the registry's record of started nodes up to date; runs until cancelled.

    Every node records itself once its meta group is on disk (a node restarted before
    that finds its data directory empty again, and must be told it is new, not
    refused). The meta leader also records every node that has acknowledged meta
    entries (which it did only after persisting them): at a cluster's birth that
    happens within a few ticks of a founder's first vote or acknowledgement, closing
    most of the window in which a wiped founder would not be recognised."""
    while True:
        await trio.sleep(node.settings.tick_interval * 2)
        state = node.registry_state()
        meta = node.groups.get(META_GROUP)
        if state is None or meta is None:
            continue
        wanted: set[int] = set()
        assert node.storage is not None
        if node.id not in state.started and META_GROUP in node.storage.groups():
            wanted.add(node.id)
        raft = meta.node.raft
        if raft.role is Role.LEADER:
            wanted.update(n for n, pr in raft.progress.items() if pr.match > 0)
        for started in sorted(wanted - state.started):
            try:
                await router.registry_write(("node_started", started))
            except Exception as exc:
                log.debug("could not record that node %d started yet: %s", started, exc)
                await trio.sleep(RETRY)
                break


async def _ask_views(
    node: StoreNode, peers: list[int], group_id: str
) -> dict[int, GroupView | None]:
    answers: dict[int, GroupView | None] = {}
    timeout = max(node.settings.tick_interval * node.settings.election_ticks, 0.5)

    async def ask(peer: int) -> None:
        outcome = await node.forward(peer, group_id, LocalView(), timeout)
        if isinstance(outcome, Applied) and not isinstance(outcome.reply, CommandFailed):
            try:
                answers[peer] = parse_view(outcome.reply)
            except ValueError as exc:
                log.warning("node %d sent a bad view of group %s: %s", peer, group_id, exc)

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(ask, peer)
    return answers
