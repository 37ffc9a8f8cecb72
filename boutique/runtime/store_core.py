"""``StoreCore``: the bucket-store node's own logic on ``HostCore``, sans I/O.

The meta group replicates the registry (range map and bucket catalog). Whenever it
applies a ``create``, every founding replica of the bucket records it as dormant
(``runtime.dormant``: its group is founded on its first touch, a request or a peer's
message, and the toucher of a request campaigns); a ``drop`` or a move closes the
bucket's group (or forgets the dormant record) where it no longer belongs. After a
restart or a snapshot the whole catalog is reconciled with the groups on disk. A bucket
leaves the registry only after its own group committed a tombstone (see
``router_flows.drop``); until then it stays hosted here.

Driven like ``HostCore`` (``on_frame``, ``tick``, ``turn``, ``submit``, ...), it decides
from inside the turn which groups this node hosts, through the core's hooks:

* ``load_groups`` (from ``open``): an empty data directory hosts nothing until the
  adapter's founding says so and calls ``open_groups``;
* ``on_applied`` of the meta group: creates, drops, moves, nodes added or removed;
* ``materialize``: the first touch of a dormant bucket or of a group not loaded yet;
* ``on_removed``: the cluster removed this node (``removed_by`` says who told it).

And it keeps the registry as applied here for the router, the mover, founding and the
admin commands (``registry_state``, ``catalog``, ``meta_members``, ``bucket_hosts``,
``fenced_but_listed``) and for STATUS (``status``).

Two adapters drive it: ``node.Node`` under trio in production (through
``store_node.StoreNode``: the data directory's lock and SQLite file, peer TLS, the mover
and founding tasks, the ``removed`` event the process waits on), and a test by hand
(``tests/runtime/test_store_core_sans_io.py``, with trio unimportable).

A node removed from the cluster (``ADMIN REMOVE-NODE``) learns it from a peer's
transport when it next dials (its removal is applied by the others, not by it), or from
the registry if it applies its own tombstone; it then logs one line and its adapter
drains and stops the process (``boutique_server.process``). The other nodes refuse it
and never admit its id again (``RegistryState.removed``).

What it must never do: import trio (or anything that does), await, or do I/O other
than through what it is given: the storage ``open_storage`` returns, the ``PeerLink``
and the clock.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from boutique.buckets import BucketMachine
from boutique.config import ClusterConfig, NodeConfig
from boutique.machine import CommandFailed, StateMachine, decode_value
from boutique.placement import NodeInfo, bucket_hosts
from boutique.raft import ConfState, Role
from boutique.registry import META_GROUP, BucketInfo, RegistryMachine, RegistryState

from .catalog_reconcile import drops_cut_short, not_ours, reconcile
from .dormant import DormantBuckets, may_sleep
from .group import GroupRuntime
from .host_core import Address, HostCore, HostSettings

__all__ = ["META_GROUP", "StoreCore"]

log = logging.getLogger("boutique.node")


class StoreCore(HostCore):
    """A node of a bucket-store cluster, driven by calls (see the module docstring)."""

    def __init__(
        self, config: ClusterConfig, me: NodeConfig, *, seed: int | None = None, **adapter: Any
    ) -> None:
        """``adapter``: the remaining arguments of the next ``__init__`` in the class
        order. For a core driven by hand that is ``HostCore``'s: ``open_storage``,
        ``clock`` and maybe ``on_work``. Under trio (``store_node.StoreNode``) it is
        ``RaftHost``'s: ``open_storage``, ``secret``, ``cluster_name``, ``listen`` and
        ``peer_tls`` (the clock and the wake-up are its own)."""
        self.config = config
        self.me = me
        self._fenced: set[str] = set()
        """Bucket groups hosted here whose tombstone is applied (see
        ``fenced_but_listed``)."""
        self.waiting_for_peers: str | None = None
        """Why this node does not serve yet (``founding.admit``), or None."""
        self.dormant = DormantBuckets()
        """Buckets whose group this node founds on first touch (see ``materialize``)."""
        self.unloaded: set[str] = set()
        """Bucket groups with rows in storage, not opened since this process started:
        opened from their storage on first touch, like a dormant bucket is founded, so
        a restart costs nothing per bucket that nobody uses (see ``materialize``)."""
        self._by_name: dict[str, set[str]] = {}
        """Bucket name -> its groups here (opened, quarantined or unloaded), so a drop
        or move closes them without looking at every group."""
        super().__init__(
            me.id,
            peers=_configured_peers(config, me.id),
            machine_for=self._machine_for,
            settings=HostSettings(
                tick_interval=config.tick_interval,
                election_ticks=config.election_ticks,
                heartbeat_ticks=config.heartbeat_ticks,
                snapshot_entries=config.snapshot_entries,
                request_timeout=config.request_timeout,
            ),
            seed=seed,
            **adapter,
        )

    def _machine_for(self, group_id: str) -> StateMachine[Any, Any, Any, Any, Any]:
        if group_id == META_GROUP:
            # Every founding node starts from the same config file, so from the same
            # range map and node table; later changes come through the log.
            founders = [
                NodeInfo(n.id, n.name, n.host, n.client_port, n.peer_port)
                for n in self.config.nodes
            ]
            return RegistryMachine(self.config.range_map, founders)
        return BucketMachine()

    # --- Groups -------------------------------------------------------------------------

    def load_groups(self) -> None:
        assert self.storage is not None
        in_config = any(n.id == self.id for n in self.config.nodes)
        alone = len(self.config.nodes) == 1
        if in_config and not alone and META_GROUP not in self.storage.groups():
            # An empty data directory: a new cluster, or this node's state was lost.
            # Nothing is hosted until ``founding.admit`` tells them apart (a node
            # alone in its config has nobody to ask: its cluster is new).
            return
        self.open_groups()

    def open_groups(self) -> None:
        """Host the meta group and every bucket group the storage or registry holds."""
        assert self.storage is not None
        meta_voters = self.config.meta_replicas
        founder = self.id in meta_voters and any(n.id == self.id for n in self.config.nodes)
        fresh = META_GROUP not in self.storage.groups()
        # Every node hosts the meta group: founders as its first voters, nodes that
        # joined later as learners (added by the mover), so each knows the catalog.
        self.open_group(
            META_GROUP,
            meta_voters,
            bootstrap_voters=founder,
            campaign=founder and fresh and meta_voters[0] == self.id,
            quiesce=False,
            track_applied=True,
        )
        # Bucket groups stay on disk until touched: opening each (and the election it
        # then holds) cost about 0.5 ms a group, 50 s for 100,000 used buckets.
        for group_id in self.storage.groups():
            if group_id != META_GROUP and group_id not in self.groups:
                self.unloaded.add(group_id)
                self._by_name.setdefault(_bucket_name(group_id), set()).add(group_id)
        # Open what the registry (as replayed so far) says we host, but close nothing:
        # the registry has not replayed its log yet, and a bucket missing from it now
        # may well exist. Groups are only ever closed by an applied drop or move.
        self._reconcile_all(close=False)

    def _open_bucket(
        self, info: BucketInfo, *, founding: bool, campaign: bool = False
    ) -> GroupRuntime:
        """Host a bucket's group. Only its founding replicas, as they materialize a
        dormant bucket, bootstrap it; any other host (a move's target, a replica of a
        moved bucket whose storage lacks it) starts empty and is brought up by the
        leader."""
        self.dormant.discard(info.group)
        return self.open_group(
            info.group,
            info.replicas,
            bootstrap_voters=founding,
            campaign=founding and campaign,
            # Bucket reads are served by the leader (forwarded there), so followers
            # need not hear of each commit at once; the next heartbeat tells them.
            announce_commit=False,
        )

    def open_group(
        self,
        group_id: str,
        voters: tuple[int, ...] = (),
        *,
        bootstrap_voters: bool = False,
        campaign: bool = False,
        quiesce: bool = True,
        track_applied: bool = False,
        announce_commit: bool = True,
    ) -> GroupRuntime:
        group = super().open_group(
            group_id,
            voters,
            bootstrap_voters=bootstrap_voters,
            campaign=campaign,
            quiesce=quiesce,
            track_applied=track_applied,
            announce_commit=announce_commit,
        )
        if group_id != META_GROUP:
            self._by_name.setdefault(_bucket_name(group_id), set()).add(group_id)
        return group

    def close_group(self, group_id: str) -> None:
        self.unloaded.discard(group_id)
        super().close_group(group_id)
        name = _bucket_name(group_id)
        local = self._by_name.get(name)
        if local is not None:
            local.discard(group_id)
            if not local:
                del self._by_name[name]

    def _host_bucket(self, info: BucketInfo) -> None:
        """Host a bucket the registry places here whose group is not open: dormant if
        the rule allows (``dormant.may_sleep``: a founding replica, the group has no
        rows here since it is neither open nor quarantined), else opened empty."""
        if info.group in self.groups or info.group in self.quarantined:
            return
        if info.group in self.unloaded:
            return  # hosted: on disk, opened on first touch
        if may_sleep(self.id, info):
            self.dormant.add(info)
        else:
            self._open_bucket(info, founding=False)

    def materialize(self, group_id: str, *, by_request: bool) -> GroupRuntime | None:
        """Found a dormant bucket's group on its first touch (see ``runtime.dormant``),
        or open an unloaded one from its storage. A request's toucher of a dormant
        bucket campaigns so the request's retry finds a leader; a peer's message means
        that peer campaigns or leads already. An unloaded group is opened as any group
        is at a restart, without a campaign: it most likely has a leader elsewhere."""
        if group_id in self.unloaded:
            self.unloaded.discard(group_id)
            log.debug("opening group %s from storage on first touch", group_id)
            return self.open_group(group_id, announce_commit=False)
        info = self.dormant.wake(group_id)
        if info is None:
            return None
        log.debug("materializing dormant group %s", group_id)
        return self._open_bucket(info, founding=True, campaign=by_request)

    # --- The registry -------------------------------------------------------------------

    def registry_state(self) -> RegistryState | None:
        """The registry as applied here (None: the meta group is not hosted)."""
        meta = self.groups.get(META_GROUP)
        return None if meta is None else meta.host.state

    def is_meta_leader(self) -> bool:
        meta = self.groups.get(META_GROUP)
        return meta is not None and meta.node.raft.role is Role.LEADER

    def meta_conf(self) -> ConfState | None:
        meta = self.groups.get(META_GROUP)
        return None if meta is None else meta.node.conf_state

    def meta_members(self) -> tuple[int, ...]:
        """Where to send registry requests: the meta group's voters as this node knows
        them (the configured founders until it has applied any)."""
        conf = self.meta_conf()
        if conf is None or not conf.voters:
            return self.config.meta_replicas
        return tuple(sorted(conf.voters))

    def bucket_hosts(self, info: BucketInfo) -> tuple[int, ...]:
        """Every node that hosts the bucket now (its replicas, then any joining)."""
        state = self.registry_state()
        if state is None:
            return info.replicas
        extra = [n for n in bucket_hosts(info, state) if n not in info.replicas]
        return (*info.replicas, *sorted(extra))

    def _update_peers(self) -> None:
        state = self.registry_state()
        peers = _configured_peers(self.config, self.id)
        if state is not None:
            peers.update(
                {n.id: (n.host, n.peer_port) for n in state.nodes.values() if n.id != self.id}
            )
            self.set_removed(frozenset(state.removed))
            if self.id in state.removed:
                self.learn_removed(self.id)  # it applied its own tombstone
        peers = {p: a for p, a in peers.items() if p not in self.removed_ids}
        if peers != self.peers:
            self.set_peers(peers)

    def on_removed(self) -> None:
        """Log the one line that says so; stopping the process is the adapter's
        (``node.Node`` sets its ``removed`` event)."""
        source = (
            "its own copy of the registry"
            if self.removed_by == self.id
            else f"node {self.removed_by}"
        )
        log.warning(
            "node %s (id %d) was removed from the cluster (told by %s): stopping; "
            "its data directory %s is kept, and this id cannot join again",
            self.me.name,
            self.id,
            source,
            self.me.data_dir,
        )

    def catalog(self) -> dict[str, BucketInfo]:
        """The bucket catalog as this node has applied it (may lag the cluster)."""
        meta = self.groups.get(META_GROUP)
        if meta is None:
            return {}
        buckets: dict[str, BucketInfo] = meta.host.state.buckets
        return buckets

    def fenced_but_listed(self) -> list[BucketInfo]:
        """Buckets whose group this node leads, that the group's tombstone fenced, but
        that the registry (as applied here) still lists: DROPs cut short between their
        two steps. Finishing them is idempotent (see ``Mover``).

        Called every mover round: it looks only at the groups that changed since the
        last call (``changed``) and the fenced ones it keeps, never at every group,
        so its cost does not grow with the number of buckets."""
        changed, self.changed = self.changed, set()
        for group_id in changed:
            group = self.groups.get(group_id)
            if group_id != META_GROUP and group is not None and _fenced(group):
                self._fenced.add(group_id)
        for group_id in list(self._fenced):
            group = self.groups.get(group_id)
            if group is None or not _fenced(group):
                self._fenced.discard(group_id)  # closed here: nothing left to finish
        # Kept while unlisted too: after a restart the registry may not have replayed
        # the bucket's create yet.
        return drops_cut_short(self._fenced, self.catalog(), self._leads)

    def _leads(self, group_id: str) -> bool:
        group = self.groups.get(group_id)
        return group is not None and group.node.raft.role is Role.LEADER

    def _reconcile_all(self, *, close: bool) -> None:
        """Host every bucket this node replicates or is receiving in a move; with
        ``close``, also stop hosting (and delete) every other bucket group.

        Closing is only safe against a registry at least as new as everything this
        node has hosted: after installing a registry snapshot, not while replaying."""
        state = self.registry_state()
        if state is None:
            return
        hosted = [*(g for g in self.groups if g != META_GROUP), *self.unloaded]
        quarantined = [g for g in self.quarantined if g != META_GROUP]
        plan = reconcile(state, self.id, hosted, quarantined, close=close, dormant=[*self.dormant])
        for info in plan.open:
            self._host_bucket(info)
        for group_id in plan.close:
            log.info("group %s is not ours any more: closing it", group_id)
            self.close_group(group_id)
        for group_id in plan.forget:
            self.dormant.discard(group_id)

    def _close_if_not_ours(self, name: str) -> None:
        """After a drop or move of bucket ``name`` was applied: close its local groups
        that the registry no longer places here."""
        state = self.registry_state()
        if state is None:
            return
        sleeping = self.dormant.of(name)
        for group_id in not_ours(state, self.id, name, () if sleeping is None else (sleeping,)):
            self.dormant.discard(group_id)
        # Only this bucket's groups (the index by name), never a scan of every group.
        for group_id in not_ours(state, self.id, name, sorted(self._by_name.get(name, ()))):
            log.info("group %s was dropped or moved away: closing it", group_id)
            self.close_group(group_id)

    def on_applied(self, group: GroupRuntime, restored: bool) -> None:
        if group.group_id != META_GROUP:
            return
        if restored:
            # A snapshot from the leader is newer than anything we applied: what it
            # does not list is gone.
            self._reconcile_all(close=True)
            self._update_peers()
            return
        # The registry state is already past the whole batch, so reconciling against
        # it mid-batch would open a bucket created later in the same batch as a
        # non-founder (empty, never bootstrapped: a group that can never elect). So
        # the creates are handled first, and one reconcile comes at the end.
        reconcile = False
        for _, data, reply in group.on_applied:
            if isinstance(reply, CommandFailed):
                continue
            command = decode_value(data)
            match command[0]:
                case "create" if reply[0] == "created":
                    info = BucketInfo.from_wire(reply[1])
                    if self.id in info.replicas:
                        self._host_bucket(info)
                case "create_many":
                    # A batch of creates (``runtime.create_batch``): each created
                    # bucket exactly as above; never a reconcile of the whole catalog.
                    for one in reply:
                        if one[0] == "created":
                            info = BucketInfo.from_wire(one[1])
                            if self.id in info.replicas:
                                self._host_bucket(info)
                case "create" | "node_started":
                    pass
                case "drop" if reply:
                    self._close_if_not_ours(command[1])
                case "set_bucket_replicas" if reply:
                    self._close_if_not_ours(command[1])
                case "add_node" | "remove_node" | "drain_node":
                    self._update_peers()
                case _:
                    reconcile = True
        if reconcile:
            self._reconcile_all(close=False)

    # --- Inspection ---------------------------------------------------------------------

    def status(self, group_limit: int | None = None) -> dict[str, Any]:
        """What STATUS shows. ``groups`` holds the first ``group_limit`` groups (all if
        None); ``group_counts`` counts them all."""
        peers = {}
        for node in self.config.nodes:
            if node.id != self.id and self.transport is not None:
                peers[node.name] = self.transport.reachable(node.id)
        return {
            "node": self.me.name,
            "id": self.id,
            "peers": peers,
            "groups": self.group_status(group_limit),
            "group_counts": {
                **self.group_counts(),
                "unloaded": len(self.unloaded),
                "dormant": len(self.dormant),
            },
            "quarantined": dict(sorted(self.quarantined.items())),
            "counters": dataclasses.asdict(self.counters),
        }


def _configured_peers(config: ClusterConfig, me: int) -> dict[int, Address]:
    """The peers the config file lists (the registry adds the nodes that joined)."""
    return {n.id: (n.host, n.peer_port) for n in config.nodes if n.id != me}


def _bucket_name(group_id: str) -> str:
    """The bucket of a group id ``b/<name>/<seq>`` (a name holds no "/")."""
    parts = group_id.split("/")
    return parts[1] if len(parts) == 3 else group_id


def _fenced(group: GroupRuntime) -> bool:
    return bool(getattr(group.host.state, "dropped", False))
