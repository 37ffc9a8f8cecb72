"""Administrative commands without the I/O: parsing, validation and the read-only answers.

``parse`` turns an ``ADMIN <action> args...`` request into a typed command, or an
``AdminError`` that says what is wrong; ``node_id`` and ``transfer_range`` resolve
names against the registry; ``nodes``, ``ranges`` and ``moves`` are the answers to
``ADMIN NODES``/``RANGES``/``MOVES``, from the registry as this node applied it;
``registry_refusal`` says what a refused registry change means for the operator. The
shell (``runtime.admin``) does the registry writes and leader transfers.

Every refusal is an ``AdminError`` with the wire contract's code: ``SYNTAX`` for a
request that can never succeed as asked (unknown command, node or range, bad numbers,
the wrong number of arguments), ``BUSY`` for one that conflicts with a change in
progress, ``UNAVAILABLE`` when the registry cannot be reached or is not here yet,
``TIMEOUT`` when a change's outcome is unknown. Only that last one may have had an
effect.

This module never does I/O and never imports trio.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from boutique.raft import ConfState
from boutique.registry_state import BucketInfo, NodeInfo, RangeMap, RegistryState

__all__ = [
    "USAGE",
    "AddNode",
    "AdminCommand",
    "AdminError",
    "Inspect",
    "MoveRange",
    "RemoveNode",
    "Split",
    "Transfer",
    "moves",
    "node_id",
    "nodes",
    "parse",
    "ranges",
    "registry_refusal",
    "registry_view",
    "transfer_range",
]


class AdminError(Exception):
    """An admin command refused, with the wire contract's ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- Commands --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inspect:
    """``NODES``, ``RANGES`` or ``MOVES``: answered from the local registry."""

    what: str


@dataclass(frozen=True, slots=True)
class AddNode:
    info: NodeInfo


@dataclass(frozen=True, slots=True)
class RemoveNode:
    node: str


@dataclass(frozen=True, slots=True)
class MoveRange:
    range_id: str
    frm: str
    to: str


@dataclass(frozen=True, slots=True)
class Split:
    range_id: str
    at: str


@dataclass(frozen=True, slots=True)
class Transfer:
    """Lead ``target`` (a bucket name, or ``range:<id>`` for each bucket of a range)
    from node ``node``."""

    target: str
    node: str


AdminCommand: TypeAlias = Inspect | AddNode | RemoveNode | MoveRange | Split | Transfer

USAGE: dict[str, str] = {
    "NODES": "ADMIN NODES",
    "RANGES": "ADMIN RANGES",
    "MOVES": "ADMIN MOVES",
    "ADD-NODE": "ADMIN ADD-NODE name id host client_port peer_port",
    "REMOVE-NODE": "ADMIN REMOVE-NODE name",
    "MOVE": "ADMIN MOVE range from-node to-node",
    "TRANSFER": "ADMIN TRANSFER bucket|range:<id> node",
    "SPLIT": "ADMIN SPLIT range at",
}
"""Every admin command, and how it is written."""


def parse(action: str, args: tuple[str, ...]) -> AdminCommand:
    """The command ``action`` with ``args``; ``AdminError`` (SYNTAX) if it is unknown,
    has the wrong number of arguments, or a number is not a positive integer."""
    usage = USAGE.get(action)
    if usage is None:
        raise AdminError("SYNTAX", f"unknown admin command {action}")
    if len(args) != len(usage.split()) - 2:  # the words after ADMIN <action>
        raise AdminError("SYNTAX", f"usage: {usage}")
    match action, args:
        case (("NODES" | "RANGES" | "MOVES"), ()):
            return Inspect(action)
        case "ADD-NODE", (name, number, host, client_port, peer_port):
            return AddNode(
                NodeInfo(
                    _int(number, "id"),
                    name,
                    host,
                    _int(client_port, "client_port"),
                    _int(peer_port, "peer_port"),
                )
            )
        case "REMOVE-NODE", (name,):
            return RemoveNode(name)
        case "MOVE", (range_id, frm, to):
            return MoveRange(range_id, frm, to)
        case "SPLIT", (range_id, at):
            return Split(range_id, at)
        case "TRANSFER", (target, name):
            return Transfer(target, name)
    raise AssertionError(f"{action} is in USAGE but not parsed")


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise AdminError("SYNTAX", f"{what} must be an integer, got {text!r}") from None
    if value < 1:
        raise AdminError("SYNTAX", f"{what} must be positive, got {value}")
    return value


# --- Resolving names -------------------------------------------------------------------


def registry_view(state: RegistryState | None) -> RegistryState:
    """``state``, or ``AdminError`` (UNAVAILABLE) if this node has no registry yet."""
    if state is None or state.ranges is None:
        raise AdminError("UNAVAILABLE", "this node has no copy of the registry yet")
    return state


def _ranges(state: RegistryState) -> RangeMap:
    ranges = registry_view(state).ranges
    assert ranges is not None
    return ranges


def _names(state: RegistryState) -> dict[int, str]:
    return {n.id: n.name for n in state.nodes.values()}


def node_id(state: RegistryState, name: str) -> int:
    """The id of the node called ``name`` (or whose id is ``name``)."""
    for info in state.nodes.values():
        if info.name == name or str(info.id) == name:
            return info.id
    known = ", ".join(sorted(_names(state).values()))
    raise AdminError("SYNTAX", f"unknown node {name!r} (nodes: {known})")


def transfer_range(state: RegistryState, target: str) -> list[BucketInfo] | None:
    """The buckets a ``TRANSFER`` of ``range:<id>`` moves (an unknown range is an
    error); None if ``target`` names a bucket (looked up by the shell, linearizably)."""
    if not target.startswith("range:"):
        return None
    range_id = target.removeprefix("range:")
    if _ranges(state).get(range_id) is None:
        raise AdminError("SYNTAX", f"unknown range {range_id!r}")
    return [b for b in state.buckets.values() if b.range_id == range_id]


def registry_refusal(error_type: str, message: str) -> AdminError:
    """What the registry's refusal of a change (a ``CommandFailed``) means here."""
    return AdminError("BUSY" if error_type == "PlacementBusy" else "SYNTAX", message)


# --- The read-only answers -------------------------------------------------------------


def nodes(
    state: RegistryState, conf: ConfState | None, me: int, reachable: Callable[[int], bool]
) -> list[str]:
    """``ADMIN NODES``: every node, whether this node reaches it, its meta membership."""
    lines = []
    for info in sorted(state.nodes.values(), key=lambda n: n.id):
        if info.id == me:
            reach = "self"
        elif reachable(info.id):
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


def ranges(state: RegistryState) -> list[str]:
    """``ADMIN RANGES``: every range, its replicas, its buckets, its move if any."""
    names = _names(state)
    counts = Counter(info.range_id for info in state.buckets.values())
    lines = []
    for rng in _ranges(state):
        replicas = ",".join(names.get(n, str(n)) for n in rng.replicas)
        end = "" if rng.end is None else rng.end
        line = (
            f"range {rng.id} [{rng.start!r},{end!r}) replicas {replicas} buckets {counts[rng.id]}"
        )
        move = state.moves.get(rng.id)
        if move is not None:
            line += f" moving {names.get(move.frm, move.frm)}->{names.get(move.to, move.to)}"
        lines.append(line)
    return lines


def moves(state: RegistryState) -> list[str]:
    """``ADMIN MOVES``: every move in flight and how many buckets it has left."""
    names = _names(state)
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
