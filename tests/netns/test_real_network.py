"""The store on a real network: each node on a host of its own (a network namespace),
faults made with iptables below the processes, and the Jepsen harness checking every
history.

These need root, iproute2 and iptables (``tools/ensure-clients.sh`` installs iptables
when run as root); elsewhere they skip and say why. Every namespace, interface and
process a test makes is removed by the test, also when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from boutique.client import ClientError
from boutique.testing import netns
from boutique.testing.jepsen import Jepsen, JepsenOptions
from boutique.testing.net_faults import EVERY_FAULT, net_faults
from boutique.testing.netns_cluster import NetnsCluster

REASON = netns.unavailable()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.distributed,
    pytest.mark.skipif(REASON is not None, reason=f"real-network tests: {REASON}"),
]


def our_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(netns.PREFIX)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NetnsCluster]:
    with NetnsCluster(tmp_path / "cluster", 3, tick_interval=0.02, request_timeout=2.0) as made:
        made.start()
        yield made


def test_a_lab_leaves_nothing_behind_even_when_its_test_fails(tmp_path: Path) -> None:
    before = set(our_namespaces())
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        netns.NetLab(["a", "b"], tmp_path) as lab,
    ):
        assert set(our_namespaces()) - before == {h.namespace for h in lab.hosts.values()}
        raise RuntimeError("the test failed")
    assert set(our_namespaces()) == before
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert lab.bridge not in links


def write_through(cluster: NetnsCluster, node: str, bucket: str, key: str, value: str) -> float:
    """Seconds until a write through ``node`` is acknowledged (retrying errors)."""
    started = time.monotonic()
    while True:
        try:
            with cluster.client(node, timeout=3.0) as client:
                client.put(bucket, key, value)
            return time.monotonic() - started
        except ClientError:
            if time.monotonic() - started > 10:
                raise
            time.sleep(0.02)


def test_a_silent_partition_is_noticed_without_any_connection_closing(
    cluster: NetnsCluster,
) -> None:
    with cluster.client("n1") as client:
        client.create("apples")
    write_through(cluster, "n1", "apples", "k", "before")
    leader = cluster.leader_of("b/apples/")
    assert leader is not None
    others = [name for name in cluster.nodes if name != leader]
    cluster.partition([leader], others)
    # A request forwarded into the partition ends long before the client's own timeout
    # (the majority side suspects the silent leader, then elects a new one).
    started = time.monotonic()
    try:
        with cluster.client(others[0], timeout=10.0) as client:
            client.put("apples", "k", "during")
    except ClientError as exc:
        assert time.monotonic() - started < 3.0, exc
    assert write_through(cluster, others[0], "apples", "k", "during") < 5.0
    cluster.heal()
    for name in cluster.nodes:
        with cluster.client(name) as client:
            deadline = time.monotonic() + 10
            while client.get("apples", "k") != "during":
                assert time.monotonic() < deadline, f"{name} did not catch up after the heal"
                time.sleep(0.05)


def test_delay_and_loss_slow_writes_but_lose_nothing(cluster: NetnsCluster) -> None:
    with cluster.client("n1") as client:
        client.create("hats")
    for name in cluster.nodes:
        cluster.lab.set_delay(name, 0.02)
        cluster.lab.lose(name, 0.05)
    try:
        for i in range(10):
            write_through(cluster, f"n{1 + i % 3}", "hats", f"k{i}", str(i))
    finally:
        cluster.heal()
    with cluster.client("n2") as client:
        assert client.scan("hats") == [(f"k{i}", str(i)) for i in range(10)]


def test_jepsen_with_every_fault_on_the_real_network(tmp_path: Path) -> None:
    # Eighteen faults, two more than the former 80 s run fitted (sixteen or seventeen
    # held 59-64 s in all, too close to the 60 s asserted below), each after 0.3 s of
    # quiet (a heal waits for restarted nodes to answer): about 75 s in all.
    options = JepsenOptions(
        clients=5,
        faults=EVERY_FAULT,
        fault_count=18,
        fault_interval=0.3,
        fault_hold=3.5,
        op_timeout=4.0,
        recovery_timeout=30.0,
        seed=18,
    )
    with NetnsCluster(tmp_path / "cluster", 3, tick_interval=0.02, request_timeout=2.0) as cluster:
        cluster.start()
        result = Jepsen(cluster, options, faults=net_faults(options.faults)).run()
    assert result.ok, result.summary()
    assert result.count() > 1000, result.summary()
    assert len(result.faults) == options.fault_count, result.summary()
    injected = result.faults_by_kind()
    assert set(injected) == set(EVERY_FAULT), injected
    held = sum((e.healed_at or 0) - e.injected_at for e in result.faults)
    assert held >= 60.0, f"faults were in effect only {held:.0f} s"


def test_a_planted_stale_read_is_caught_over_a_real_partition(tmp_path: Path) -> None:
    options = JepsenOptions(
        seconds=25.0,
        clients=5,
        faults=("isolate_leader",),
        fault_interval=0.5,
        fault_hold=3.0,
        op_timeout=4.0,
        seed=7,
    )
    with NetnsCluster(
        tmp_path / "cluster", 3, tick_interval=0.02, request_timeout=2.0, unsafe_local_reads=True
    ) as cluster:
        cluster.start()
        result = Jepsen(cluster, options, faults=net_faults(options.faults)).run()
    assert not result.ok, "the harness missed the planted stale-read bug:\n" + result.summary()
    assert result.anomalies, result.summary()


def test_what_a_killed_run_left_behind_is_swept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"{netns.PREFIX}-{gone.pid}-n1"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in netns.sweep_stale()
        assert stale not in our_namespaces()
        ours = f"{netns.PREFIX}-{os.getpid()}-n1"
        subprocess.run(["ip", "netns", "add", ours], check=True)
        assert ours not in netns.sweep_stale()  # a live run's namespaces stay
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
        subprocess.run(["ip", "netns", "del", ours], capture_output=True)


def test_the_delay_proxy_outlives_a_broken_connection(tmp_path: Path) -> None:
    with netns.NetLab(["a", "b"], tmp_path) as lab:
        server = subprocess.Popen(
            [*lab.hosts["b"].exec_prefix(), sys.executable, "-c", ECHO_ONCE_THEN_RESET]
        )
        try:
            time.sleep(0.3)
            lab.start_delay_proxies([9100])
            for attempt in range(3):  # each connection is reset by the server at the end
                done = subprocess.run(
                    [*lab.hosts["a"].exec_prefix(), sys.executable, "-c", ASK % lab.address("b")],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                assert done.stdout.strip() == "hello", (attempt, done.stderr)
            proxy = lab.hosts["a"].proxy
            assert proxy is not None and proxy.poll() is None
        finally:
            server.kill()
            server.wait()


ECHO_ONCE_THEN_RESET = """
import socket, struct
s = socket.create_server(("0.0.0.0", 9100))
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
"""
ASK = """
import socket
s = socket.create_connection(("%s", 9100), timeout=5)
s.sendall(b"hello")
print(s.recv(100).decode())
"""
