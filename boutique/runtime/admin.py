"""Administrative commands: inspect and change the cluster's layout while it serves.

``Admin`` turns the line protocol's ``ADMIN ...`` commands into registry changes (which
the mover then carries out, see ``mover.py``) and leader transfers. Every refusal is an
``AdminError`` with the wire contract's code: ``SYNTAX`` for a request that can never
succeed as asked (unknown node or range, removing a replica the range needs),
``BUSY`` for one that conflicts with a change in progress, ``UNAVAILABLE`` when the
registry cannot be reached. None of them had any effect.
"""

from __future__ import annotations

from collections import Counter

from boutique.machine import WireValue, wire_items
from boutique.placement import NodeInfo
from boutique.registry import RangeMap, RegistryState

from .requests import TransferLeader
from .router import CommandRejected, NotFound, OutcomeUnknown, Router, Unavailable
from .store_node import StoreNode


class AdminError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Admin:
    def __init__(self, node: StoreNode, router: Router) -> None:
        self.node = node
        self.router = router

    async def execute(self, action: str, args: tuple[str, ...]) -> list[str]:
        """Run one admin command; the lines to show (empty: just ``OK``)."""
        match action:
            case "NODES":
                return self.nodes()
            case "RANGES":
                return self.ranges()
            case "MOVES":
                return self.moves()
            case "ADD-NODE":
                name, node_id, host, client_port, peer_port = args
                info = NodeInfo(
                    _int(node_id, "id"),
                    name,
                    host,
                    _int(client_port, "client_port"),
                    _int(peer_port, "peer_port"),
                )
                reply = wire_items(await self._registry("add_node", info.to_wire()))
                return [f"node {name} {'already known' if reply[0] == 'exists' else 'added'}"]
            case "REMOVE-NODE":
                (name,) = args
                await self._registry("drain_node", self._node_id(name))
                return [f"node {name} is leaving: its replicas move away, then it is removed"]
            case "MOVE":
                range_id, frm, to = args
                await self._registry("start_move", range_id, self._node_id(frm), self._node_id(to))
                return [f"range {range_id} is moving from {frm} to {to}"]
            case "SPLIT":
                range_id, at = args
                halves = wire_items(await self._registry("split_range", range_id, at))
                return [f"range {range_id} is now {' and '.join(map(str, halves))}"]
            case "TRANSFER":
                target, name = args
                return await self.transfer(target, self._node_id(name))
        raise AdminError("SYNTAX", f"unknown admin command {action}")

    # --- Inspection ---------------------------------------------------------------------

    def _state(self) -> RegistryState:
        state = self.node.registry_state()
        if state is None or state.ranges is None:
            raise AdminError("UNAVAILABLE", "this node has no copy of the registry yet")
        return state

    def _ranges(self) -> RangeMap:
        ranges = self._state().ranges
        assert ranges is not None
        return ranges

    def _names(self) -> dict[int, str]:
        return {n.id: n.name for n in self._state().nodes.values()}

    def nodes(self) -> list[str]:
        state = self._state()
        conf = self.node.meta_conf()
        transport = self.node.transport
        lines = []
        for info in sorted(state.nodes.values(), key=lambda n: n.id):
            if info.id == self.node.id:
                reach = "self"
            elif transport is not None and transport.reachable(info.id):
                reach = "up"
            else:
                reach = "DOWN"
            meta = "-"
            if conf is not None:
                meta = (
                    "voter"
                    if info.id in conf.voters
                    else "learner"
                    if info.id in conf.learners
                    else "-"
                )
            lines.append(
                f"node {info.name} id {info.id} {info.host} client {info.client_port} "
                f"peer {info.peer_port} {reach} meta {meta}{' LEAVING' if info.leaving else ''}"
            )
        return lines

    def ranges(self) -> list[str]:
        state = self._state()
        names = self._names()
        counts = Counter(info.range_id for info in state.buckets.values())
        lines = []
        for rng in self._ranges():
            replicas = ",".join(names.get(n, str(n)) for n in rng.replicas)
            end = "" if rng.end is None else rng.end
            line = f"range {rng.id} [{rng.start!r},{end!r}) replicas {replicas} buckets {counts[rng.id]}"
            move = state.moves.get(rng.id)
            if move is not None:
                line += f" moving {names.get(move.frm, move.frm)}->{names.get(move.to, move.to)}"
            lines.append(line)
        return lines

    def moves(self) -> list[str]:
        state = self._state()
        names = self._names()
        lines = []
        for move in state.moves.values():
            left = sum(
                1
                for info in state.buckets.values()
                if info.range_id == move.range_id and move.frm in info.replicas
            )
            lines.append(
                f"move {move.range_id} {names.get(move.frm, move.frm)} -> "
                f"{names.get(move.to, move.to)}: {left} buckets to go"
            )
        return lines

    # --- Changes ------------------------------------------------------------------------

    async def transfer(self, target: str, node_id: int) -> list[str]:
        state = self._state()
        if target.startswith("range:"):
            range_id = target.removeprefix("range:")
            if self._ranges().get(range_id) is None:
                raise AdminError("SYNTAX", f"unknown range {range_id!r}")
            buckets = [b for b in state.buckets.values() if b.range_id == range_id]
        else:
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
            if node_id not in hosts:
                raise AdminError("SYNTAX", f"node {node_id} does not replicate bucket {info.name}")
            try:
                await self.router.group_request(info.group, hosts, TransferLeader(node_id))
            except (Unavailable, OutcomeUnknown) as exc:
                raise AdminError("UNAVAILABLE", f"bucket {info.name}: {exc}") from None
            moved += 1
        return [f"{moved} bucket(s) now led by node {node_id}"]

    async def _registry(self, *command: WireValue) -> WireValue:
        try:
            return await self.router.registry_write(command)
        except CommandRejected as exc:
            code = "BUSY" if exc.failed.error_type == "PlacementBusy" else "SYNTAX"
            raise AdminError(code, exc.failed.message) from None
        except Unavailable as exc:
            raise AdminError("UNAVAILABLE", f"registry unreachable: {exc}") from None
        except OutcomeUnknown as exc:
            raise AdminError("TIMEOUT", f"outcome unknown: {exc}") from None

    def _node_id(self, name: str) -> int:
        for info in self._state().nodes.values():
            if info.name == name or str(info.id) == name:
                return info.id
        known = ", ".join(sorted(self._names().values()))
        raise AdminError("SYNTAX", f"unknown node {name!r} (nodes: {known})")


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise AdminError("SYNTAX", f"{what} must be an integer, got {text!r}") from None
    if value < 1:
        raise AdminError("SYNTAX", f"{what} must be positive, got {value}")
    return value
