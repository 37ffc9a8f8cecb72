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

The rule and its retries are ``founding_rule``'s (pure); this module asks the peers and
the registry and sleeps between rounds. It never opens storage and only reads the Raft
core.
"""

from __future__ import annotations

import logging

import trio

from boutique.group.admission import GroupView, parse_view
from boutique.machine import CommandFailed, wire_items
from boutique.raft import Role
from boutique.storage.errors import DataFileError

from .founding_rule import (
    RETRY,
    Admission,
    AskRegistry,
    Decision,
    Found,
    Refuse,
    Retry,
    Step,
    decide,
)
from .group import Applied
from .requests import LocalView
from .router import Router
from .store_node import META_GROUP, StoreNode

log = logging.getLogger("boutique.founding")

__all__ = ["ClusterExistsError", "Decision", "admit", "decide", "record_started"]


class ClusterExistsError(DataFileError):
    """The data directory is empty, yet the cluster already counts this node: it lost
    its state and must not found anything. The message says how to bring it back."""


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
    names = {n.id: n.name for n in node.config.nodes}
    admission = Admission(node.id, node.me.name, founders, peers, names, trio.current_time())
    while True:
        answers = await _ask_views(node, peers, META_GROUP)
        step: Step = admission.after_views(
            decide(node.id, founders, answers), answers, trio.current_time()
        )
        if isinstance(step, AskRegistry):
            try:
                step = admission.after_registry(
                    wire_items(await router.registry_read(("started",)))
                )
                if isinstance(step, Found) and step.record_started:
                    # Recorded before this node votes or acknowledges. (Other nodes
                    # record it once their meta group is on disk: `record_started`.)
                    await router.registry_write(("node_started", node.id))
            except Exception as exc:
                log.info("cannot ask the registry whether this node is new yet: %s", exc)
                step = Retry()
        match step:
            case Found(_, message):
                log.info("%s", message)
                return
            case Refuse():
                raise refusal(node)
            case Retry(waiting, say):
                if waiting is not None:
                    node.waiting_for_peers = waiting
                if say:
                    log.info(
                        "node %s does not serve yet: %s (it votes for nothing meanwhile)",
                        node.me.name,
                        waiting,
                    )
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
