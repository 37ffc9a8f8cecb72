"""Jepsen-style runs against real node processes: clients work while a nemesis attacks.

One test per kind of fault (and one with all of them), each a short run of the harness
in ``boutique.testing.jepsen``: the whole history must be linearizable, no acknowledged
write may be lost, the cluster must serve every bucket through every node soon after
the heal, the nemesis must really have injected its faults, and clients must have got
real work done. A failing run prints the harness summary and the fault log.

``membership`` (moving a range's replica with ``ADMIN MOVE``, which adds a learner,
promotes it and removes the old voter) needs a node that does not hold the range, so
its test runs four nodes with three replicas per range.

The last two tests are the smallest reproductions of what the kill nemeses found: a
node that restarts must come back with the acknowledged writes it held, whether every
node crashed or just one while its peers could not re-sync it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from boutique.client import ClientError
from boutique.testing.history import CREATE, DELETE, DROP, GET, PUT, History, Outcome
from boutique.testing.jepsen import (
    CHURN_BUCKETS,
    FAULTS,
    FINAL_CLIENT,
    Jepsen,
    JepsenOptions,
    JepsenResult,
    lost_acknowledged_writes,
    make_faults,
)
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed

# Below this many acknowledged operations a run proves little; a healthy 3-node cluster
# on two busy cores does several hundred per second between faults.
MIN_OK_OPERATIONS = 150
RECOVERY_BOUND = 10.0


def run_jepsen(workdir: Path, options: JepsenOptions, nodes: int = 3) -> JepsenResult:
    started = time.monotonic()
    lines: list[str] = []
    with LocalCluster(workdir, nodes=nodes, request_timeout=2.0) as cluster:
        cluster.start()
        result = Jepsen(cluster, options, log=lines.append).run()
    print("\n".join(lines))
    print(result.summary())
    print(f"wall time {time.monotonic() - started:.1f} s")
    return result


def assert_healthy(result: JepsenResult, faults: tuple[str, ...]) -> None:
    report = result.summary() + "\nfaults:\n" + "\n".join(e.describe() for e in result.faults)
    assert not result.anomalies, report
    assert not result.problems, report
    assert result.check is not None and result.check.linearizable, report
    assert not result.lost_writes, report
    assert result.recovery_seconds is not None and result.recovery_seconds < RECOVERY_BOUND, report
    assert len(result.faults) == result.options.fault_count, report
    injected = result.faults_by_kind()
    for kind in faults:
        assert injected[kind] >= 1, f"the nemesis never injected {kind}\n{report}"
    assert all(event.healed_at is not None for event in result.faults), report
    assert result.count(outcome=Outcome.OK) >= MIN_OK_OPERATIONS, report
    assert result.count(PUT, Outcome.OK) >= 20, report
    assert result.count(GET, Outcome.OK) >= 20, report


# Each run is measured in faults (``fault_count``): as many as its former fixed run
# length (10 s, 12 s, 28 s) fitted on two cores, so a slow machine no longer gets fewer
# and a run no longer idles after its last fault. Where nodes stay up, 0.4 s of quiet
# before each fault (as in the every-fault run) is well past an election (0.2 s) after
# a heal; after a kill the restarted nodes need the longer quiet spell to get the
# workload its operations (MIN_OK_OPERATIONS).
@pytest.mark.parametrize(
    ("faults", "count", "quiet"),
    [
        (("kill",), 3, 0.8),
        (("kill_leader",), 3, 0.8),
        (("kill_all",), 3, 0.8),
        (("pause", "pause_leader"), 3, 0.4),
        (("partition",), 4, 0.4),
        (("isolate_leader",), 3, 0.4),
        (("transfer",), 4, 0.4),
    ],
    ids=lambda case: "+".join(case) if isinstance(case, tuple) else str(case),
)
def test_nemesis_kind(tmp_path: Path, faults: tuple[str, ...], count: int, quiet: float) -> None:
    options = JepsenOptions(
        faults=faults,
        fault_count=count,
        fault_interval=quiet,
        fault_hold=1.6,
        op_timeout=4.0,
        seed=sum(map(ord, "".join(faults))),
    )
    assert_healthy(run_jepsen(tmp_path / "cluster", options), faults)


def test_nemesis_membership(tmp_path: Path) -> None:
    faults = ("membership",)
    options = JepsenOptions(
        faults=faults, fault_count=3, fault_interval=0.4, fault_hold=1.5, op_timeout=4.0, seed=5
    )
    assert_healthy(run_jepsen(tmp_path / "cluster", options, nodes=4), faults)


def test_nemesis_every_fault_in_turn(tmp_path: Path) -> None:
    faults = tuple(FAULTS)
    options = JepsenOptions(
        # Nine kinds in turn, then kill, kill_leader, kill_all again.
        faults=faults,
        fault_count=12,
        fault_interval=0.4,
        fault_hold=1.2,
        op_timeout=4.0,
        seed=7,
    )
    assert_healthy(run_jepsen(tmp_path / "cluster", options, nodes=4), faults)


def test_unknown_faults_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        make_faults(["meteor"])


def test_lost_acknowledged_writes_are_named() -> None:
    """The direct count of lost writes, on a hand-made history (no processes)."""
    history = History()
    for t, (client, kind, value, outcome) in enumerate(
        [
            (1, PUT, "a", Outcome.OK),  # superseded by b: not lost
            (2, PUT, "b", Outcome.OK),  # the final read shows b: not lost
            (3, PUT, "c", Outcome.FAIL),  # failed: may not appear
            (4, DELETE, None, Outcome.UNKNOWN),  # may not appear either
        ]
    ):
        op = history.invoke(client, kind, "k", value, 2.0 * t)
        history.complete(op, 2.0 * t + 1, outcome)
    late = history.invoke(5, PUT, "k", "d", 10.0)  # acknowledged after b completed
    history.complete(late, 11.0, Outcome.OK)
    final = history.invoke(FINAL_CLIENT, GET, "k", None, 20.0)
    history.complete(final, 21.0, Outcome.OK, "b")
    lost = lost_acknowledged_writes(history.operations())
    assert [w.write.value for w in lost] == ["d"]
    assert "put('k', 'd') ok" in lost[0].describe()


def test_acknowledged_writes_survive_sigkill_of_every_node(tmp_path: Path) -> None:
    """The smallest form of what ``kill_all`` checks: acknowledged writes, every node
    SIGKILLed, every node restarted on its own data directory, the writes still there."""
    with LocalCluster(tmp_path / "cluster", nodes=3) as cluster:
        cluster.start()
        with cluster.client("n1") as client:
            client.create("hats")
            for i in range(5):
                client.put("hats", f"k{i}", f"v{i}")
        for name in cluster.nodes:
            cluster.kill(name)
        cluster.start()
        deadline = time.monotonic() + RECOVERY_BOUND
        while True:
            try:
                with cluster.client("n2") as client:
                    values = [client.get("hats", f"k{i}") for i in range(5)]
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert values == [f"v{i}" for i in range(5)], (
            f"acknowledged writes lost after restart: {values}\n{cluster.log_tail('n2')}"
        )


def test_one_crash_cannot_lose_an_acknowledged_write(tmp_path: Path) -> None:
    """n3 is cut off while n1 and n2 acknowledge a write; n1 is SIGKILLed and restarted
    while n2 is paused, then the cut heals. n1 and n3 are a majority, and n1 held the
    write when it crashed, so any leader they elect must still have it."""

    def retry(fn: Callable[[], str | None]) -> str | None:
        deadline = time.monotonic() + RECOVERY_BOUND
        while True:
            try:
                return fn()
            except ClientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    with LocalCluster(tmp_path / "cluster", nodes=3, request_timeout=2.0) as cluster:
        cluster.start()
        with cluster.client("n1") as client:
            client.create("hats")
            client.put("hats", "k", "before")
        with cluster.client("n3") as client:
            assert retry(lambda: _text(client.get("hats", "k"))) == "before"
        cluster.partition({"n3"}, {"n1", "n2"})
        with cluster.client("n1") as client:
            retry(lambda: client.put("hats", "k", "acknowledged"))
        cluster.kill("n1")
        cluster.pause("n2")
        cluster.start("n1")
        cluster.heal()

        def read(node: str) -> str | None:
            with cluster.client(node, timeout=5) as client:
                return _text(client.get("hats", "k"))

        assert retry(lambda: read("n3")) == "acknowledged", cluster.log_tail("n1")
        cluster.resume("n2")
        assert retry(lambda: read("n2")) == "acknowledged"


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def test_nemesis_drop_and_create_churn_under_partitions(tmp_path: Path) -> None:
    """Issue 14.1: a bucket dropped and re-created over and over while clients use it
    and partitions cut five nodes (the meta group on all five, each bucket on three, so
    the two majorities can fall on different sides)."""
    faults = ("partition", "isolate_leader")
    options = JepsenOptions(
        faults=faults,
        fault_count=5,
        fault_interval=0.5,
        fault_hold=1.5,
        op_timeout=4.0,
        churn_buckets=CHURN_BUCKETS,
        churn_interval=0.7,
        seed=14,
    )
    result = run_jepsen(tmp_path / "cluster", options, nodes=5)
    assert_healthy(result, faults)
    assert result.count(DROP, Outcome.OK) >= 2, result.summary()
    assert result.count(CREATE, Outcome.OK) >= 2, result.summary()
    assert result.count(outcome=Outcome.NOT_FOUND) >= 1, result.summary()
