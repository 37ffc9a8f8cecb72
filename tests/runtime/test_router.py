"""Requests on a node whose registry lags: a bucket the linearizable lookup finds is
not declared NOT FOUND (or unknown, by ADMIN TRANSFER) just because the local catalog
has not caught up (regression tests for 91d89e5 and for ADMIN TRANSFER right after a
CREATE elsewhere), while a catalog entry for another group (the bucket was dropped and
re-created) still ends the request that way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from boutique.registry import (
    DEFAULT_SPLITS,
    BucketInfo,
    RegistryMachine,
    bucket_group_id,
    plan_ranges,
)
from boutique.runtime.admin import Admin, AdminError
from boutique.runtime.group import Applied, Outcome, Rejected
from boutique.runtime.node import META_GROUP
from boutique.runtime.requests import GroupRequest, Propose, Read, Request, TransferLeader
from boutique.runtime.router import NotFound, Router

BUCKET = BucketInfo("b", bucket_group_id("b", 1), "r1", (1, 2, 3), 1)


@dataclass
class Settings:
    request_timeout: float = 2.0
    unsafe_local_reads: bool = False


@dataclass
class LaggingNode:
    """Node 1: its catalog is whatever the test says; the registry's linearizable
    lookup finds ``BUCKET``; the bucket's group answers from ``answers`` in turn."""

    catalog_entries: dict[str, BucketInfo] = field(default_factory=dict)
    answers: list[Outcome] = field(default_factory=list)
    attempts: list[tuple[int, str, str]] = field(default_factory=list)
    id: int = 1
    config: Settings = field(default_factory=Settings)
    groups: dict[str, Any] = field(default_factory=dict)

    def catalog(self) -> dict[str, BucketInfo]:
        return self.catalog_entries

    def meta_members(self) -> tuple[int, ...]:
        return (1, 2, 3)

    async def execute_local(self, group: str, request: Request, timeout: float) -> Outcome:
        return await self._answer(1, group, request)

    async def forward(self, peer: int, group: str, request: Request, timeout: float) -> Outcome:
        return await self._answer(peer, group, request)

    async def _answer(self, where: int, group: str, request: Request) -> Outcome:
        kind, body = ("w", request.data) if isinstance(request, Propose) else ("r", request)
        if group == META_GROUP:
            assert isinstance(request, Read)
            body = request.query
            assert body[0] == "lookup"
            return Applied(BUCKET.to_wire() if tuple(body) == ("lookup", "b") else None)
        self.attempts.append((where, group, kind))
        return self.answers.pop(0)


async def test_a_miss_in_a_lagging_catalog_is_not_not_found() -> None:
    # The group is not open here yet (the registry entry that opens it has not been
    # applied), so the first attempt is refused; the next replica leads it.
    node = LaggingNode(answers=[Rejected("group not hosted here"), Applied(None)])
    router = Router(node)  # type: ignore[arg-type]
    await router.put("b", b"k", b"v")
    assert node.attempts == [(1, BUCKET.group, "w"), (2, BUCKET.group, "w")]


async def test_a_catalog_entry_for_another_group_is_not_found() -> None:
    recreated = BucketInfo("b", bucket_group_id("b", 2), "r1", (1, 2, 3), 2)
    node = LaggingNode(answers=[Rejected("group removed from this node")])
    router = Router(node)  # type: ignore[arg-type]
    info = await router.lookup("b")  # the lookup sees the old bucket ...
    node.catalog_entries["b"] = recreated  # ... which is dropped and re-created here
    with pytest.raises(NotFound):
        await router._write(info.group, info.replicas, ("put", b"k", b"v"), bucket="b")


async def test_admin_transfer_finds_a_bucket_the_local_catalog_has_not_applied() -> None:
    ranges = plan_ranges(DEFAULT_SPLITS, [1, 2, 3], 3)
    state = RegistryMachine(ranges).initial_state()
    assert "b" not in state.buckets  # this node has not applied the CREATE yet
    requests: list[tuple[str, tuple[int, ...], GroupRequest]] = []

    class LaggingAdminNode(LaggingNode):
        def registry_state(self) -> Any:
            return state

        def bucket_hosts(self, info: BucketInfo) -> tuple[int, ...]:
            return info.replicas

    router = Router(LaggingAdminNode())  # type: ignore[arg-type]

    async def group_request(group: str, replicas: tuple[int, ...], request: GroupRequest) -> Any:
        requests.append((group, replicas, request))

    router.group_request = group_request  # type: ignore[method-assign]
    admin = Admin(router.node, router)
    assert await admin.transfer("b", 3) == ["1 bucket(s) now led by node 3"]
    assert requests == [(BUCKET.group, BUCKET.replicas, TransferLeader(3))]
    with pytest.raises(AdminError, match="unknown bucket 'nosuch'"):
        await admin.transfer("nosuch", 3)
