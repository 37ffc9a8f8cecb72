"""Changing a live cluster under client load: join, move, transfer, split, remove.

Clients keep working through the Jepsen harness (every history checked for
linearizability, acknowledged writes must survive) while "faults" that are really
administrative changes run: growing a 3-node cluster to 5 and shrinking it back,
leader transfers, range splits. Each change is made the way an operator would, with
ADMIN commands over the line protocol.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import pytest

from boutique.testing.jepsen import Fault, Jepsen, JepsenOptions, NemesisContext, admin
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def nodes_listed(cluster: LocalCluster, via: str) -> dict[str, str]:
    lines = admin(cluster, via, "ADMIN NODES")
    return {line.split()[1]: line for line in lines if line.startswith("node ")}


def ranges_listed(cluster: LocalCluster, via: str) -> dict[str, str]:
    lines = admin(cluster, via, "ADMIN RANGES")
    return {line.split()[1]: line for line in lines if line.startswith("range ")}


class GrowAndShrink(Fault):
    """Two nodes join and take over replicas; then they are drained and removed. A
    removed id never joins again, so every round brings two new nodes (n4 and n5, then
    n6 and n7, ...)."""

    kind: ClassVar[str] = "grow-and-shrink"

    def __init__(self) -> None:
        self.round = 0
        self.joined: tuple[str, str] = ("", "")

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        cluster = ctx.cluster
        first = 4 + 2 * self.round
        self.round += 1
        a, b = self.joined = (f"n{first}", f"n{first + 1}")
        for name, node_id in ((a, first), (b, first + 1)):
            cluster.add_joiner(name, node_id)
            cluster.start(name)
        wait_for(lambda: {a, b} <= nodes_listed(cluster, "n1").keys(), what="the joiners")
        wait_for(
            lambda: all("meta learner" in nodes_listed(cluster, "n1")[n] for n in (a, b)),
            what="the joiners to follow the registry",
        )
        assert admin(cluster, "n1", f"ADMIN MOVE a-g n2 {a}")[-1] == "OK"
        assert admin(cluster, "n2", f"ADMIN MOVE o-u n3 {b}")[-1] == "OK"
        assert admin(cluster, "n3", f"ADMIN MOVE v-z n1 {a}")[-1] == "OK"
        wait_for(lambda: admin(cluster, "n1", "ADMIN MOVES") == ["OK"], what="the moves")
        ranges = ranges_listed(cluster, "n1")
        assert a in ranges["a-g"] and b in ranges["o-u"], ranges
        return (a, b), f"{a} and {b} joined and took a-g, o-u, v-z replicas"

    def heal(self, ctx: NemesisContext) -> None:
        cluster = ctx.cluster
        a, b = self.joined
        assert admin(cluster, "n1", f"ADMIN REMOVE-NODE {a}")[-1] == "OK"
        assert admin(cluster, "n1", f"ADMIN REMOVE-NODE {b}")[-1] == "OK"
        wait_for(
            lambda: not {a, b} & nodes_listed(cluster, "n1").keys(),
            timeout=90,
            what=f"{a} and {b} to be drained and removed",
        )
        for name in (a, b):
            cluster.forget(name)  # it exits by itself (code 5) once told it was removed


class TransferLeaders(Fault):
    """Hand a range's buckets to another replica."""

    kind: ClassVar[str] = "transfer"

    def inject(self, ctx: NemesisContext) -> tuple[tuple[str, ...], str]:
        target = ctx.rng.choice(["n1", "n2", "n3"])
        rng = ctx.rng.choice(["a-g", "h-n", "o-u", "v-z"])
        reply = admin(
            ctx.cluster, ctx.rng.choice(["n1", "n2", "n3"]), f"ADMIN TRANSFER range:{rng} {target}"
        )
        return (target,), f"range {rng} to {target}: {reply[-1]}"

    def heal(self, ctx: NemesisContext) -> None:
        pass


def _run(cluster: LocalCluster, faults: list[Fault], seconds: float) -> None:
    options = JepsenOptions(seconds=seconds, clients=4, fault_interval=1.0, fault_hold=1.0)
    result = Jepsen(cluster, options, faults=faults).run()
    print(result.summary())
    assert result.ok, result.summary()
    assert result.count(outcome=None) > 50


def test_grow_to_five_and_shrink_back_under_load(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3, snapshot_entries=200) as cluster:
        cluster.start()
        _run(cluster, [GrowAndShrink()], seconds=8)
        # Back to the three founders, every range on them.
        ranges = ranges_listed(cluster, "n2")
        assert all("n4" not in line and "n5" not in line for line in ranges.values()), ranges
        assert set(nodes_listed(cluster, "n3")) == {"n1", "n2", "n3"}


def test_leader_transfers_under_load(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3) as cluster:
        cluster.start()
        _run(cluster, [TransferLeaders()], seconds=8)


def test_transfer_split_and_clear_errors(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3) as cluster:
        cluster.start()
        with cluster.client("n1") as client:
            client.create("apples")
            client.put("apples", "k", "v")
        # At once on another node, whose registry may not have applied the CREATE yet:
        # a miss in its catalog is checked against the registry, not taken as final.
        assert admin(cluster, "n2", "ADMIN TRANSFER apples n3")[-1] == "OK"
        wait_for(lambda: cluster.leader_of("b/apples/") == "n3", what="n3 to lead apples")
        # Splitting a range: new buckets land in the new halves.
        reply = admin(cluster, "n1", "ADMIN SPLIT h-n k")
        assert reply == ["range h-n is now h-j and k-n", "OK"], reply
        with cluster.client("n3") as client:
            client.create("kiwis")
            client.put("kiwis", "k", "v")
            assert client.get("kiwis", "k") == "v"
        assert "buckets 1" in ranges_listed(cluster, "n1")["k-n"]
        # Impossible requests are refused with a reason, and change nothing.
        assert admin(cluster, "n1", "ADMIN REMOVE-NODE n9")[-1].startswith(
            "ERR SYNTAX unknown node"
        )
        assert admin(cluster, "n1", "ADMIN MOVE a-g n1 n2")[-1].startswith("ERR SYNTAX")
        assert "only 2 nodes remain" in admin(cluster, "n1", "ADMIN REMOVE-NODE n3")[-1]
        assert admin(cluster, "n1", "ADMIN SPLIT a-g zz")[-1].startswith("ERR SYNTAX")
        assert admin(cluster, "n1", "ADMIN FROB")[-1].startswith("ERR SYNTAX unknown admin")
        assert admin(cluster, "n2", "ADMIN TRANSFER figs n1")[-1] == (
            "ERR SYNTAX unknown bucket 'figs'"
        )
        assert set(nodes_listed(cluster, "n1")) == {"n1", "n2", "n3"}
