"""Per-operation costs that must not grow with the number of buckets (issue 19).

A real single-node ``Node``: what runs every mover round or every request must look only
at what changed, never walk every group, or 100,000 idle buckets cost a core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import trio

from boutique.machine import encode_value
from boutique.runtime.group import Applied

if TYPE_CHECKING:  # conftest is not importable at run time; its fixtures hand these out
    from conftest import Served


class _NoWalk(dict[str, Any]):
    """The node's groups, refusing to be walked (lookups by id still work)."""

    def _walked(self, *args: object) -> NoReturn:
        raise AssertionError("walked every group")

    __iter__ = items = values = keys = _walked


def _no_walk(served: Served) -> Any:
    node = served.node
    assert node is not None
    real = node.groups
    node.groups = _NoWalk(real)
    return real


async def test_finding_drops_cut_short_looks_only_at_groups_that_changed(
    served: Served,
) -> None:
    node, router = served.node, served.router
    assert node is not None
    infos = [await router.create(f"bucket{i}") for i in range(20)]
    for info in infos:  # founds each dormant bucket's group (``runtime.dormant``)
        await router.put(info.name, b"k", b"v")
    node.fenced_but_listed()  # takes what changed so far

    real = _no_walk(served)
    try:
        assert node.fenced_but_listed() == []
    finally:
        node.groups = real

    # A DROP cut short: the tombstone committed, the registry step never ran. The
    # mover still finds it and finishes it.
    doomed = infos[7]
    outcome = await node.propose(doomed.group, encode_value(("tombstone",)), 5.0)
    assert isinstance(outcome, Applied)
    with trio.fail_after(10):
        while "bucket7" in await router.buckets():
            await trio.sleep(0.05)
    assert len(await router.buckets()) == 19


class _Untouchable:
    """A group whose state must not be read."""

    @property
    def node(self) -> NoReturn:
        raise AssertionError("read a group beyond the limit")

    host = node


async def test_status_lists_the_first_groups_and_counts_them_all(served: Served) -> None:
    node, router = served.node, served.router
    assert node is not None
    for i in range(60):
        await router.create(f"bucket{i:02}")
        await router.put(f"bucket{i:02}", b"k", b"v")  # founds its group
    await router.create("zz-unused")  # dormant: counted, no group (``runtime.dormant``)
    with trio.fail_after(10):
        while any(
            g.node.raft.lead == 0 or (gid != "meta" and not g.node.raft.quiesced)
            for gid, g in node.groups.items()
        ):
            await trio.sleep(0.05)
    conn = await served.connect()
    await conn.send(b"STATUS\r\n")
    lines = (await conn.read_until(b"\r\nOK\r\n")).decode().splitlines()
    await conn.aclose()
    listed = [line for line in lines if line.startswith("group ")]
    assert len(listed) == 50
    assert listed[0].startswith("group b/bucket00/")  # the first, in id order
    assert "... and 11 more groups" in lines
    assert "groups total 61 leader 61 quiet 60 unloaded 0 dormant 1" in lines  # meta: never quiet

    # The groups past the limit are never even looked at.
    last = max(node.groups)
    real = node.groups[last]
    node.groups[last] = _Untouchable()  # type: ignore[assignment]
    try:
        assert len(node.group_status(limit=50)) == 50
    finally:
        node.groups[last] = real
