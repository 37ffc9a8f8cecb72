"""The faults and admin operations a whole-cluster run injects, chosen by its seed.

Every step is drawn from the run's seeded generator among the scenario's ``faults``:

* ``crash``, ``crash_torn``, ``crash_leader``, ``crash_all``: power losses (a torn one
  keeps a prefix of the unsynced writes, its last append cut short); the node restarts
  from its disk after a while;
* ``wipe``: a node's disk is replaced by an empty one; restarted, it must recognise
  that the cluster knew it and refuse to start (never vote as a new member);
* ``pause``: a node stops (SIGSTOP) and resumes later;
* ``partition``, ``one_way``, ``isolate_leader``, ``lossy``: network faults, healed
  after a while (``lossy`` drops, duplicates and slows Raft messages);
* ``transfer``, ``move``, ``split``, ``add_node``, ``remove_node``: the line protocol's
  ``ADMIN`` commands, through a random node, mid-run.

What it must never do: take down more than it restores before the run heals (every
crashed node is restarted by the heal), or act on a node through anything but the
world's operations and the line protocol.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from boutique.registry import RegistryState
from boutique.wire import request_line

from .clients import SimConnection
from .network import LinkFaults
from .world import ProcessGone, SimWorld, leader_of

LOSSY = LinkFaults(min_delay=0.0005, max_delay=0.01, drop=0.2, duplicate=0.1, slow=0.1)


@dataclass
class Nemesis:
    """What the faults act on and report to."""

    world: SimWorld
    rng: random.Random
    faults: tuple[str, ...]
    buckets: tuple[str, ...]
    """Buckets whose leaders are crashed, cut off and transferred."""
    violation: Callable[[str], None]
    next_node: int
    """The id the next added node gets."""
    wiped: set[int] = field(default_factory=set)
    """Nodes whose disk was wiped: they refuse to start, and the heal leaves them."""


async def run(run: Nemesis, until: float) -> None:
    rng = random.Random(run.rng.getrandbits(64))
    async with trio.open_nursery() as undo:
        while trio.current_time() < until:
            await trio.sleep(rng.uniform(0.2, 0.7))
            fault = rng.choice(run.faults)
            await _inject(run, rng, fault, undo)


async def _inject(run: Nemesis, rng: random.Random, fault: str, undo: trio.Nursery) -> None:
    world = run.world
    network = world.network
    up = world.up_nodes()
    everyone = sorted(world.processes)
    later = rng.uniform(0.3, 1.5)
    match fault:
        case "crash" | "crash_torn" if up:
            victim = rng.choice(up)
            world.crash(victim, torn=fault == "crash_torn")
            undo.start_soon(_restart_later, run, victim, later)
        case "crash_leader":
            bucket = rng.choice(run.buckets)
            victim_or_none = _bucket_leader(run, bucket) or leader_of(world, "meta")
            if victim_or_none is not None:
                world.crash(victim_or_none)
                undo.start_soon(_restart_later, run, victim_or_none, later)
        case "crash_all":
            for victim in up:
                world.crash(victim)
            for victim in up:
                undo.start_soon(_restart_later, run, victim, later + rng.uniform(0, 0.3))
        case "wipe" if up and not run.wiped:
            victim = rng.choice(up)
            run.wiped.add(victim)
            world.wipe(victim)
            undo.start_soon(_restart_later, run, victim, later)
        case "pause" if up:
            victim = rng.choice(up)
            world.pause(victim)
            undo.start_soon(_resume_later, run, victim, later)
        case "partition":
            side = set(rng.sample(everyone, rng.randint(1, len(everyone) // 2)))
            network.partition(side, set(everyone) - side)
            world.note(f"partition {sorted(side)} | {sorted(set(everyone) - side)}")
            undo.start_soon(_heal_later, run, later)
        case "one_way":
            a, b = rng.sample(everyone, 2)
            network.cut_links({(a, b)})
            world.note(f"cut n{a} -> n{b}")
            undo.start_soon(_heal_later, run, later)
        case "isolate_leader":
            target = _bucket_leader(run, rng.choice(run.buckets)) or leader_of(world, "meta")
            if target is not None:
                network.partition({target}, set(everyone) - {target})
                world.note(f"isolated leader n{target}")
                undo.start_soon(_heal_later, run, later)
        case "lossy":
            network.faults = LOSSY
            world.note("lossy links")
            undo.start_soon(_heal_later, run, later)
        case "transfer" if up:
            bucket = rng.choice(run.buckets)
            await _admin(
                run, rng, b"TRANSFER", bucket.encode(), f"n{rng.choice(everyone)}".encode()
            )
        case "move":
            await _move(run, rng)
        case "split":
            await _split(run, rng)
        case "add_node":
            node_id = run.next_node
            run.next_node += 1
            world.add_node(node_id)
            await world.start(node_id)
            # As ``--join`` does: ask until the cluster has registered it.
            world.nursery.start_soon(_register, run, node_id)
        case "remove_node":
            candidates = [p for p in everyone if p > 3 and not world.processes[p].removed]
            if candidates:
                await _admin(run, rng, b"REMOVE-NODE", f"n{rng.choice(candidates)}".encode())
        case _:
            pass


def _bucket_leader(run: Nemesis, bucket: str) -> int | None:
    for process in run.world.processes.values():
        node = process.node
        if node is not None:
            info = node.catalog().get(bucket)
            if info is not None:
                return leader_of(run.world, info.group)
    return None


async def _admin(run: Nemesis, rng: random.Random, *args: bytes) -> bool:
    """One ADMIN command through a random node; whether it answered OK. Any answer but
    an internal error is acceptable (a refusal, a timeout): the point is what it does
    to the cluster."""
    up = run.world.up_nodes()
    if not up:
        return False
    try:
        conn = SimConnection(run.world, rng.choice(up))
    except ProcessGone:
        return False
    try:
        with trio.move_on_after(5.0):
            reply = await conn.request(request_line(b"ADMIN", *args))
            run.world.note(f"ADMIN {b' '.join(args).decode()}: {reply.end.decode()}")
            if reply.end.startswith(b"ERR INTERNAL"):
                run.violation(f"ADMIN {b' '.join(args)!r} answered {reply.end!r}")
            return reply.end == b"OK"
    except ProcessGone:
        pass
    finally:
        await conn.aclose()
    return False


async def _register(run: Nemesis, node_id: int) -> None:
    rng = random.Random(run.rng.getrandbits(64))
    me = run.world.processes[node_id].me
    args = (
        b"ADD-NODE",
        me.name.encode(),
        str(node_id).encode(),
        me.host.encode(),
        str(me.client_port).encode(),
        str(me.peer_port).encode(),
    )
    while not await _admin(run, rng, *args):
        await trio.sleep(0.2)


async def _move(run: Nemesis, rng: random.Random) -> None:
    state = _registry(run)
    if state is None or state.ranges is None:
        return
    rng_ = rng.choice(list(state.ranges))
    others = [n for n in state.nodes if n not in rng_.replicas]
    if not others:
        return
    frm = rng.choice(rng_.replicas)
    to = rng.choice(sorted(others))
    await _admin(run, rng, b"MOVE", rng_.id.encode(), f"n{frm}".encode(), f"n{to}".encode())


async def _split(run: Nemesis, rng: random.Random) -> None:
    state = _registry(run)
    if state is None or state.ranges is None:
        return
    rng_ = rng.choice(list(state.ranges))
    at = rng.choice("bcdefgijklmnpqrstuvwxy")
    await _admin(run, rng, b"SPLIT", rng_.id.encode(), at.encode())


def _registry(run: Nemesis) -> RegistryState | None:
    for process in run.world.processes.values():
        if process.node is not None:
            state = process.node.registry_state()
            if state is not None:
                return state
    return None


async def _restart_later(run: Nemesis, node: int, delay: float) -> None:
    await trio.sleep(delay)
    await run.world.start(node)


async def _resume_later(run: Nemesis, node: int, delay: float) -> None:
    await trio.sleep(delay)
    run.world.resume(node)


async def _heal_later(run: Nemesis, delay: float) -> None:
    await trio.sleep(delay)
    run.world.heal()
    run.world.note("healed links")
