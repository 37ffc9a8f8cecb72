"""Administrative commands: inspect and change the cluster's layout while it serves.

``Admin`` is the shell of the line protocol's ``ADMIN ...`` commands: the parsing, the
validation, the read-only answers and what every refusal means are
``runtime.admin_commands``' (pure); this module reads the node's registry for them,
and does the registry changes (which the mover then carries out, see ``mover.py``)
and the leader transfers. Every refusal is an ``AdminError`` with the wire contract's
code (see ``admin_commands``); it must never answer anything but ``TIMEOUT`` for a
change that may have been made.
"""

from __future__ import annotations

from boutique.machine import WireValue, wire_items
from boutique.registry import RegistryState

from .admin_commands import (
    AddNode,
    AdminError,
    Inspect,
    MoveRange,
    RemoveNode,
    Split,
    Transfer,
    moves,
    node_id,
    nodes,
    parse,
    ranges,
    registry_refusal,
    registry_view,
    transfer_range,
)
from .requests import TransferLeader
from .router import CommandRejected, NotFound, OutcomeUnknown, Router, Unavailable
from .store_node import StoreNode

__all__ = ["Admin", "AdminError"]


class Admin:
    def __init__(self, node: StoreNode, router: Router) -> None:
        self.node = node
        self.router = router

    async def execute(self, action: str, args: tuple[str, ...]) -> list[str]:
        """Run one admin command; the lines to show (empty: just ``OK``)."""
        match parse(action, args):
            case Inspect("NODES"):
                return self.nodes()
            case Inspect("RANGES"):
                return ranges(self._state())
            case Inspect(_):
                return moves(self._state())
            case AddNode(info):
                reply = wire_items(await self._registry("add_node", info.to_wire()))
                known = "already known" if reply[0] == "exists" else "added"
                return [f"node {info.name} {known}"]
            case RemoveNode(name):
                await self._registry("drain_node", node_id(self._state(), name))
                return [f"node {name} is leaving: its replicas move away, then it is removed"]
            case MoveRange(range_id, frm, to):
                state = self._state()
                await self._registry(
                    "start_move", range_id, node_id(state, frm), node_id(state, to)
                )
                return [f"range {range_id} is moving from {frm} to {to}"]
            case Split(range_id, at):
                halves = wire_items(await self._registry("split_range", range_id, at))
                return [f"range {range_id} is now {' and '.join(map(str, halves))}"]
            case Transfer(target, name):
                return await self.transfer(target, node_id(self._state(), name))

    # --- Inspection ---------------------------------------------------------------------

    def _state(self) -> RegistryState:
        return registry_view(self.node.registry_state())

    def nodes(self) -> list[str]:
        transport = self.node.transport

        def reachable(peer: int) -> bool:
            return transport is not None and transport.reachable(peer)

        return nodes(self._state(), self.node.meta_conf(), self.node.id, reachable)

    # --- Changes ------------------------------------------------------------------------

    async def transfer(self, target: str, node: int) -> list[str]:
        buckets = transfer_range(self._state(), target)
        if buckets is None:
            # Not the local catalog alone: this node's registry may not have applied a
            # CREATE another node just answered. ``lookup`` confirms a miss with a
            # linearizable read of the registry.
            try:
                buckets = [await self.router.lookup(target)]
            except NotFound:
                raise AdminError("SYNTAX", f"unknown bucket {target!r}") from None
            except (Unavailable, OutcomeUnknown) as exc:
                raise AdminError("UNAVAILABLE", f"registry unreachable: {exc}") from None
        moved = 0
        for info in buckets:
            hosts = self.node.bucket_hosts(info)
            if node not in hosts:
                raise AdminError("SYNTAX", f"node {node} does not replicate bucket {info.name}")
            try:
                await self.router.group_request(info.group, hosts, TransferLeader(node))
            except (Unavailable, OutcomeUnknown) as exc:
                raise AdminError("UNAVAILABLE", f"bucket {info.name}: {exc}") from None
            moved += 1
        return [f"{moved} bucket(s) now led by node {node}"]

    async def _registry(self, *command: WireValue) -> WireValue:
        try:
            return await self.router.registry_write(command)
        except CommandRejected as exc:
            raise registry_refusal(exc.failed.error_type, exc.failed.message) from None
        except Unavailable as exc:
            raise AdminError("UNAVAILABLE", f"registry unreachable: {exc}") from None
        except OutcomeUnknown as exc:
            raise AdminError("TIMEOUT", f"outcome unknown: {exc}") from None
