"""Issue 14.1 on real processes: DROP fences the bucket's own Raft group.

Five nodes, replication 3: bucket ``pears`` (range o-u) lives on n3, n4, n5; the meta
group on all five. The partition {n1, n2, n3} | {n4, n5} puts the meta majority on one
side and the bucket group's majority on the other. Before the fix, ``DROP pears``
through n1 answered OK, then ``PUT pears`` through n4 answered OK too, and after the
heal the key was gone: an acknowledged write lost.

The rule checked: no write is acknowledged after an acknowledged DROP, and nothing
acknowledged is lost unless an acknowledged (or unknown) DROP removed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from boutique.client import ClientError, NotFound
from boutique.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.distributed

T = TypeVar("T")
NODES = ["n1", "n2", "n3", "n4", "n5"]


@pytest.fixture
def cluster5(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "c5", nodes=5, request_timeout=2.0) as cluster:
        cluster.start()
        yield cluster


def _retry(fn: Callable[[], T], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except NotFound:
            raise  # an answer, not a failure to serve
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _until(done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not done in time"
        time.sleep(0.2)


def _answer(cluster: LocalCluster, node: str, fn: Callable[..., object], *args: str) -> str:
    """One request through ``node``: "OK", "NOT FOUND" or the error's class name."""
    with cluster.client(node, timeout=10.0) as client:
        try:
            getattr(client, fn.__name__)(*args)
        except NotFound:
            return "NOT FOUND"
        except ClientError as exc:
            return type(exc).__name__
    return "OK"


def _get_everywhere(cluster: LocalCluster, bucket: str, key: str) -> set[object]:
    seen: set[object] = set()
    for node in NODES:
        with cluster.client(node, timeout=10.0) as client:
            try:
                seen.add(_retry(lambda c=client: c.get(bucket, key)))  # type: ignore[misc]
            except NotFound:
                seen.add(NotFound)
    return seen


def _listed(cluster: LocalCluster) -> list[str]:
    with cluster.client("n1") as client:
        return _retry(client.buckets)


def _setup(cluster: LocalCluster, bucket: str) -> None:
    with cluster.client("n1") as client:
        _retry(lambda: client.create(bucket))
        _retry(lambda: client.put(bucket, "before", "v0"))
    # Every node must know the bucket before the cut, as in the issue.
    for node in NODES:
        with cluster.client(node) as client:
            assert _retry(lambda c=client: c.get(bucket, "before")) == "v0"  # type: ignore[misc]


def test_drop_through_the_meta_majority_cannot_orphan_the_bucket_group(
    cluster5: LocalCluster,
) -> None:
    cluster = cluster5
    _setup(cluster, "pears")
    cluster.partition({"n1", "n2", "n3"}, {"n4", "n5"})
    drop = _answer(cluster, "n1", _Ops.drop, "pears")
    time.sleep(2.0)
    put = _answer(cluster, "n4", _Ops.put, "pears", "k", "v")
    # The fence cannot commit: n3 alone is no majority of the bucket's group. So the
    # DROP is not acknowledged, and the bucket group's majority may go on serving.
    assert drop != "OK", f"DROP answered OK, then PUT through n4 answered {put}"
    assert drop in ("Unavailable", "Timeout"), drop
    cluster.heal()
    seen_k = _get_everywhere(cluster, "pears", "k")
    seen_before = _get_everywhere(cluster, "pears", "before")
    if put == "OK":
        assert seen_k == {"v"}, f"PUT through n4 was acknowledged, yet reads give {seen_k}"
    if drop == "Unavailable":
        assert seen_before == {"v0"}, f"nothing dropped 'before', yet reads give {seen_before}"
    # After the heal the DROP goes through, and then no node takes a write.
    _until(lambda: _answer(cluster, "n1", _Ops.drop, "pears") in ("OK", "NOT FOUND"))
    for node in NODES:
        assert _answer(cluster, node, _Ops.put, "pears", "k", "after") == "NOT FOUND"
    assert _get_everywhere(cluster, "pears", "k") == {NotFound}
    # A re-CREATE is a new incarnation: nothing of the old one shows through.
    with cluster.client("n4") as client:
        _retry(lambda: client.create("pears"))
    assert _get_everywhere(cluster, "pears", "k") == {None}
    assert _get_everywhere(cluster, "pears", "before") == {None}


def test_a_drop_fenced_on_the_bucket_side_is_finished_after_the_heal(
    cluster5: LocalCluster,
) -> None:
    # The other half of the same partition: through n4 the fence commits (n4, n5 are a
    # majority of the group) but the registry, on the other side, cannot be told.
    cluster = cluster5
    _setup(cluster, "plums")
    cluster.partition({"n1", "n2", "n3"}, {"n4", "n5"})
    drop = _answer(cluster, "n4", _Ops.drop, "plums")
    # The fence committed: the bucket is gone from that instant, so the DROP took
    # effect. It once answered Unavailable here ("certainly not applied"), which the
    # whole-cluster simulator showed to be wrong (see tests/sim/test_whole_cluster.py).
    assert drop in ("OK", "Timeout"), drop
    # The group is fenced: no write is acknowledged through either side.
    for node in ("n4", "n5", "n1"):
        assert _answer(cluster, node, _Ops.put, "plums", "k", "v") != "OK"
    cluster.heal()
    # The group leader's mover finishes the DROP: the registry forgets the bucket.
    _until(lambda: "plums" not in _listed(cluster))
    assert _get_everywhere(cluster, "plums", "before") == {NotFound}


class _Ops:
    """Names of client methods, for ``_answer``."""

    @staticmethod
    def drop(bucket: str) -> None: ...

    @staticmethod
    def put(bucket: str, key: str, value: str) -> None: ...
