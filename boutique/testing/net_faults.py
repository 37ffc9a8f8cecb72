"""Nemesis faults made in the network itself, for a ``NetnsCluster``.

The Jepsen harness's ``partition`` and ``isolate_leader`` already become silent
iptables partitions on a ``NetnsCluster`` (it overrides ``partition``). These add what
only a real network has: a bridge (two sides that cannot talk but share a node), a
one-way cut, random packet loss, delay with jitter, and a black hole (a node whose
every packet vanishes, its clients' included). Each is healed by ``cluster.heal()``.

``NET_FAULTS`` names them; ``net_faults(names)`` makes fresh instances, to pass to
``Jepsen(faults=...)`` next to ``make_faults`` ones (kill, pause, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .jepsen import Fault, NemesisContext, make_faults
from .netns_cluster import NetnsCluster


def _cluster(ctx: NemesisContext) -> NetnsCluster:
    cluster = ctx.cluster
    if not isinstance(cluster, NetnsCluster):
        raise TypeError("network faults need a NetnsCluster")
    return cluster


class Bridge(Fault):
    """Two sides that cannot reach each other, and one node that reaches both."""

    kind = "net_bridge"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        nodes = ctx.nodes()
        ctx.rng.shuffle(nodes)
        bridge, rest = nodes[0], nodes[1:]
        half = len(rest) // 2
        left, right = rest[:half], rest[half:]
        lab = _cluster(ctx).lab
        for a in left:
            for b in right:
                lab.cut(a, b)
                lab.cut(b, a)
        return (bridge,), f"{','.join(left)} | {','.join(right)}, bridged by {bridge}"

    def heal(self, ctx: NemesisContext) -> None:
        _cluster(ctx).heal()


class OneWay(Fault):
    """The leader of a random bucket can still receive but nothing it sends arrives."""

    kind = "net_one_way"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        leader, why = ctx.leader()
        lab = _cluster(ctx).lab
        for other in ctx.nodes():
            if other != leader:
                lab.cut(leader, other)
        return (leader,), f"sends nothing to its peers ({why})"

    def heal(self, ctx: NemesisContext) -> None:
        _cluster(ctx).heal()


class Loss(Fault):
    """Every node loses a random 5-20% of the packets from its peers."""

    kind = "net_loss"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        share = ctx.rng.uniform(0.05, 0.2)
        for name in ctx.nodes():
            _cluster(ctx).lab.lose(name, share)
        return tuple(ctx.nodes()), f"{share:.0%} packet loss between nodes"

    def heal(self, ctx: NemesisContext) -> None:
        _cluster(ctx).heal()


class Delay(Fault):
    """Every link slows down: 5-50 ms each way, with jitter of half that."""

    kind = "net_delay"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        delay = ctx.rng.uniform(0.005, 0.05)
        for name in ctx.nodes():
            _cluster(ctx).lab.set_delay(name, delay, delay / 2)
        return tuple(ctx.nodes()), f"{delay * 1000:.0f} ± {delay * 500:.0f} ms each way"

    def heal(self, ctx: NemesisContext) -> None:
        _cluster(ctx).heal()


class BlackHole(Fault):
    """A random node's every packet vanishes, from peers and clients alike: connections
    to it hang instead of failing."""

    kind = "net_black_hole"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        victim = ctx.rng.choice(ctx.nodes())
        lab = _cluster(ctx).lab
        lab.isolate(victim)
        ctx.cut_off = frozenset({victim})
        return (victim,), "drops every packet, clients' too"

    def heal(self, ctx: NemesisContext) -> None:
        ctx.cut_off = frozenset()
        _cluster(ctx).heal()


NET_FAULTS: dict[str, Callable[[], Fault]] = {
    cls.kind: cls for cls in (Bridge, OneWay, Loss, Delay, BlackHole)
}

EVERY_FAULT = (
    "partition", "isolate_leader", "net_bridge", "net_one_way", "net_loss", "net_delay",
    "net_black_hole", "kill", "kill_leader", "pause", "pause_leader",
)  # fmt: skip
"""Every fault kind a real-network run uses: the network ones and the process ones."""


def net_faults(names: Iterable[str]) -> list[Fault]:
    """Fresh faults for these names, network ones and ``jepsen.FAULTS`` ones alike."""
    faults = []
    for name in names:
        maker = NET_FAULTS.get(name)
        faults.extend([maker()] if maker is not None else make_faults([name]))
    return faults
