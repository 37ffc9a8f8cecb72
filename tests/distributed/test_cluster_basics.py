"""Real processes on loopback: routing across ranges, failover, and the cluster secret."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from boutique.client import ClientError, NotFound
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed

# One bucket per range of the default split (a-g, h-n, o-u, v-z), plus names outside a-z.
BUCKETS = ["apples", "hats", "oranges", "zebras", "Apples", "42", "~tilde", "ünïcode"]


def _retry(fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("cluster_name", ["cluster3", "cluster4"])
def test_write_through_one_node_read_through_every_other(
    cluster_name: str, request: pytest.FixtureRequest
) -> None:
    cluster: LocalCluster = request.getfixturevalue(cluster_name)
    names = list(cluster.nodes)
    with cluster.client(names[0]) as client:
        for bucket in BUCKETS:
            client.create(bucket)
            client.put(bucket, "key", f"value of {bucket}")
    for name in names[1:]:
        with cluster.client(name) as client:
            assert sorted(client.buckets()) == sorted(BUCKETS)
            for bucket in BUCKETS:
                assert client.get(bucket, "key") == f"value of {bucket}"
    # D-Boutique's answers for a bucket that does not exist, from every node.
    for name in names:
        with cluster.client(name) as client, pytest.raises(NotFound):
            client.get("nosuchbucket", "key")


def test_leader_killed_writes_resume_and_nothing_acknowledged_is_lost(
    cluster3: LocalCluster,
) -> None:
    cluster = cluster3
    with cluster.client("n1") as client:
        client.create("hats")
    acknowledged: dict[str, str] = {}
    with cluster.client("n1") as client:
        for i in range(50):
            client.put("hats", f"k{i}", f"v{i}")
            acknowledged[f"k{i}"] = f"v{i}"
    leader = _retry(lambda: cluster.leader_of("b/hats/") or _raise())
    survivors = [n for n in cluster.nodes if n != leader]
    cluster.kill(leader)
    killed_at = time.monotonic()
    with cluster.client(survivors[0]) as client:
        # A write in flight to the dead leader may end ERR TIMEOUT (outcome unknown);
        # PUT is idempotent, so retrying it is safe.
        _retry(lambda: client.put("hats", "after-kill", "1"), timeout=10)
    recovered = time.monotonic() - killed_at
    acknowledged["after-kill"] = "1"
    assert recovered < 5, f"writes resumed only after {recovered:.2f}s"
    with cluster.client(survivors[1]) as client:
        for i in range(50, 80):
            client.put("hats", f"k{i}", f"v{i}")
            acknowledged[f"k{i}"] = f"v{i}"
    cluster.start(leader)
    # The restarted node catches up: read every acknowledged write through it.
    with cluster.client(leader) as client:
        for key, value in acknowledged.items():
            assert _retry(lambda key=key: client.get("hats", key)) == value
    print(f"writes resumed {recovered:.2f}s after SIGKILL of the leader")


def test_peer_with_wrong_secret_cannot_join(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3) as cluster:
        cluster.start("n1", "n2")
        # n3 starts with another secret: it must not be able to take part.
        cluster.start("n3", wait=True, env={"BOUTIQUE_SECRET": "a-completely-different-secret"})
        with cluster.client("n1") as client:
            client.create("apples")
            client.put("apples", "a", "1")
            assert client.get("apples", "a") == "1"
        # n3 never hears from the others: it cannot serve the bucket.
        with cluster.client("n3", timeout=15) as client, pytest.raises(ClientError):
            client.get("apples", "a")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            logs = (
                cluster.nodes["n1"].log_path.read_text() + cluster.nodes["n2"].log_path.read_text()
            )
            if "auth" in logs.lower() or "secret" in logs.lower():
                break
            time.sleep(0.1)
        assert "auth" in logs.lower() or "secret" in logs.lower(), logs[-2000:]
        # The healthy pair keeps serving.
        with cluster.client("n2") as client:
            client.put("apples", "b", "2")
            assert client.get("apples", "b") == "2"


def _raise() -> str:
    raise ClientError("no leader yet")


def test_harness_kills_what_it_started(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=1) as cluster:
        cluster.start()
        pids = list(cluster.pids())
        assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_partitioned_minority_cannot_write_and_heals(cluster3: LocalCluster) -> None:
    cluster = cluster3
    with cluster.client("n1") as client:
        client.create("oranges")
        client.put("oranges", "k", "before")
    cluster.partition({"n1"}, {"n2", "n3"})
    # The majority side keeps serving...
    with cluster.client("n2") as client:
        _retry(lambda: client.put("oranges", "k", "during"))
    # ...and the isolated node cannot confirm a read or commit a write.
    with cluster.client("n1", timeout=20) as client, pytest.raises(ClientError):
        client.put("oranges", "k", "lost")
    cluster.heal()
    with cluster.client("n1") as client:
        assert _retry(lambda: client.get("oranges", "k")) == "during"


def test_a_cluster_with_mutual_tls_between_its_nodes(tmp_path: Path) -> None:
    import trustme

    certs = tmp_path / "certs"
    certs.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    for name in ("n1", "n2", "n3"):
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(certs / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(certs / f"{name}.key"))
    tls = f'[tls]\nca = "{certs}/ca.pem"\ncert = "{certs}/{{name}}.pem"\nkey = "{certs}/{{name}}.key"\n'
    with LocalCluster(tmp_path / "cluster", nodes=3, extra=tls) as cluster:
        cluster.start()
        with cluster.client("n1") as client:
            for bucket in BUCKETS[:4]:  # one per range: most are led by another node
                _retry(lambda b=bucket: client.create(b))
                client.put(bucket, "key", f"value of {bucket}")
        with cluster.client("n3") as client:
            for bucket in BUCKETS[:4]:
                assert client.get(bucket, "key") == f"value of {bucket}"
        assert "peer traffic uses mutual TLS" in (tmp_path / "cluster" / "n2.log").read_text()
