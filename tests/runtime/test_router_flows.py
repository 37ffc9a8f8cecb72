"""The Router's composite operations as flows (issue 15), driven here with scripted
replies and no event loop: each table row lists every request the flow must make, in
order, with the answer it gets (a reply sent in, or a routing error thrown in), and the
operation's answer. A flow that asks for one request more or fewer than its row fails.

The DROP fence's rules are pinned here: NOT FOUND only after a linearizable registry
read; a request that meets a fenced group follows a newer incarnation; a DROP whose
tombstone committed answers OK even when the registry step fails. (``runtime.router``
drives the same flows over real routing: tests/runtime/test_router_drop.py.)
``test_sans_io_modules`` proves the flows load without trio."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from boutique.machine import WireValue, encode_value
from boutique.registry import META_GROUP, BucketInfo, bucket_group_id
from boutique.runtime import router_flows
from boutique.runtime.requests import Propose, Read
from boutique.runtime.route_errors import (
    GroupFenced,
    NotFound,
    OutcomeUnknown,
    RoutingError,
    Unavailable,
)
from boutique.runtime.router_flows import FENCE_RETRIES, Command, Flow, RouteTo

META = (1, 2, 3)
JOINING = 4
"""A node joining every bucket group: ``bucket_hosts`` lists it, ``replicas`` do not."""


def incarnation(seq: int, name: str = "pears") -> BucketInfo:
    return BucketInfo(name, bucket_group_id(name, seq), "r0", (1, 2, 3), seq)


OLD = incarnation(1)
NEW = incarnation(2)


@dataclass
class View:
    """The node as a flow sees it: a catalog the script may change mid-flow."""

    listed: dict[str, BucketInfo] = field(default_factory=dict)

    def catalog(self) -> Mapping[str, BucketInfo]:
        return self.listed

    def bucket_hosts(self, info: BucketInfo) -> tuple[int, ...]:
        return (*info.replicas, JOINING)

    def meta_members(self) -> tuple[int, ...]:
        return META


Answer = WireValue | RoutingError


@dataclass(frozen=True)
class Step:
    """The request the flow must make next, and what it gets back."""

    request: RouteTo
    answer: Answer
    forget: bool = False
    """The node applies the bucket's drop (it leaves the catalog) before the answer."""


def registry_write(*command: WireValue) -> RouteTo:
    return RouteTo(META_GROUP, META, Propose(encode_value(command)))


def registry_lookup(name: str = "pears") -> RouteTo:
    return RouteTo(META_GROUP, META, Read(("lookup", name)))


def tombstone(info: BucketInfo) -> RouteTo:
    # To every host, a joining one included: the fence must reach the group's leader.
    return RouteTo(
        info.group, (*info.replicas, JOINING), Propose(encode_value(("tombstone",))), info.name
    )


def count(info: BucketInfo) -> RouteTo:
    return RouteTo(info.group, (*info.replicas, JOINING), Read(("count",)))


def put(info: BucketInfo) -> RouteTo:
    return RouteTo(info.group, info.replicas, Propose(encode_value(PUT)), info.name)


def get(info: BucketInfo) -> RouteTo:
    return RouteTo(info.group, info.replicas, Read(GET), info.name)


PUT: Command = ("put", b"k", b"v")
GET: Command = ("get", b"k")


def drive(flow: Flow[object], view: View, script: Sequence[Step]) -> object:
    """Run ``flow`` as ``Router._drive`` does, answering from ``script``; the flow's
    answer, or the routing error it ended with. Every scripted request, and no other,
    must be made, in order."""
    made: list[RouteTo] = []
    try:
        request = next(flow)
        while True:
            made.append(request)
            assert len(made) <= len(script), f"unscripted request {request}"
            step = script[len(made) - 1]
            assert request == step.request, f"request {len(made)}"
            if step.forget:
                view.listed.clear()
            if isinstance(step.answer, RoutingError):
                request = flow.throw(step.answer)
            else:
                request = flow.send(step.answer)
    except StopIteration as done:
        answer: object = done.value
    except RoutingError as error:
        answer = error
    assert made == [step.request for step in script]
    return answer


Expect = BucketInfo | bool | bytes | None | type[RoutingError]


def check(answer: object, expected: Expect) -> None:
    if isinstance(expected, type):
        assert type(answer) is expected, answer
    else:
        assert answer == expected


def entry(info: BucketInfo) -> WireValue:
    """The registry's entry for ``info``, as a routed reply carries it."""
    wire: dict[WireValue, WireValue] = {key: value for key, value in info.to_wire().items()}
    return wire


def created(info: BucketInfo) -> WireValue:
    return ("created", entry(info))


def exists(info: BucketInfo) -> WireValue:
    return ("exists", entry(info))


# --- CREATE ----------------------------------------------------------------------------

CREATE_CASES: dict[str, tuple[list[Step], Expect]] = {
    "created": ([Step(registry_write("create", "pears"), created(NEW))], NEW),
    "exists": (
        [Step(registry_write("create", "pears"), exists(OLD)), Step(count(OLD), 1)],
        OLD,
    ),
    "exists but fenced: finish the drop, then create": (
        [
            Step(registry_write("create", "pears"), exists(OLD)),
            Step(count(OLD), GroupFenced(OLD.group)),
            Step(registry_write("drop", "pears", OLD.group), True),
            Step(registry_write("create", "pears"), created(NEW)),
        ],
        NEW,
    ),
    "exists and fenced every time": (
        [
            step
            for seq in range(1, FENCE_RETRIES + 1)
            for step in (
                Step(registry_write("create", "pears"), exists(incarnation(seq))),
                Step(count(incarnation(seq)), GroupFenced(incarnation(seq).group)),
                Step(registry_write("drop", "pears", incarnation(seq).group), True),
            )
        ],
        Unavailable,
    ),
    "the count cannot be read: not a fence": (
        [
            Step(registry_write("create", "pears"), exists(OLD)),
            Step(count(OLD), Unavailable("no quorum")),
        ],
        Unavailable,
    ),
}


@pytest.mark.parametrize("case", CREATE_CASES)
def test_create(case: str) -> None:
    script, expected = CREATE_CASES[case]
    view = View()
    check(drive(router_flows.create(view, "pears"), view, script), expected)


# --- DROP ------------------------------------------------------------------------------

DROP_CASES: dict[str, tuple[dict[str, BucketInfo], list[Step], Expect]] = {
    "fence committed, registry entry gone": (
        {"pears": OLD},
        [Step(tombstone(OLD), True), Step(registry_write("drop", "pears", OLD.group), True)],
        True,
    ),
    "fence committed, registry out of reach: the DROP took effect": (
        {"pears": OLD},
        [
            Step(tombstone(OLD), True),
            Step(registry_write("drop", "pears", OLD.group), Unavailable("no quorum")),
        ],
        True,
    ),
    "fence committed, registry step's fate unknown: the DROP took effect": (
        {"pears": OLD},
        [
            Step(tombstone(OLD), True),
            Step(registry_write("drop", "pears", OLD.group), OutcomeUnknown("lost")),
        ],
        True,
    ),
    "fenced by another DROP, registry out of reach: not this DROP's doing": (
        {"pears": OLD},
        [
            Step(tombstone(OLD), False),
            Step(registry_write("drop", "pears", OLD.group), Unavailable("no quorum")),
        ],
        Unavailable,
    ),
    "fenced by another DROP, registry lists a newer incarnation: drop that one": (
        {"pears": OLD},
        [
            Step(tombstone(OLD), False),
            Step(registry_write("drop", "pears", OLD.group), True),
            Step(registry_lookup(), entry(NEW)),
            Step(tombstone(NEW), True),
            Step(registry_write("drop", "pears", NEW.group), True),
        ],
        True,
    ),
    "fenced by another DROP, registry lists the same incarnation": (
        {"pears": OLD},
        [
            Step(tombstone(OLD), False),
            Step(registry_write("drop", "pears", OLD.group), True),
            Step(registry_lookup(), entry(OLD)),
        ],
        NotFound,
    ),
    "stale catalog, the registry has no such bucket": (
        {"pears": OLD},
        [Step(tombstone(OLD), NotFound("gone")), Step(registry_lookup(), None)],
        NotFound,
    ),
    "stale catalog, the registry lists a newer incarnation": (
        {"pears": OLD},
        [
            Step(tombstone(OLD), NotFound("gone")),
            Step(registry_lookup(), entry(NEW)),
            Step(tombstone(NEW), True),
            Step(registry_write("drop", "pears", NEW.group), True),
        ],
        True,
    ),
    "fence out of reach, the registry lists the same incarnation": (
        {"pears": OLD},
        [Step(tombstone(OLD), Unavailable("no quorum")), Step(registry_lookup(), entry(OLD))],
        Unavailable,
    ),
    "not in the catalog: NOT FOUND after a registry read": (
        {},
        [Step(registry_lookup(), None)],
        NotFound,
    ),
    "not in the catalog yet: the registry's entry is dropped": (
        {},
        [
            Step(registry_lookup(), entry(OLD)),
            Step(tombstone(OLD), True),
            Step(registry_write("drop", "pears", OLD.group), True),
        ],
        True,
    ),
    "dropped and created again every time": (
        {"pears": incarnation(1)},
        [
            step
            for seq in range(1, FENCE_RETRIES + 1)
            for step in (
                Step(tombstone(incarnation(seq)), False),
                Step(registry_write("drop", "pears", incarnation(seq).group), True),
                Step(registry_lookup(), entry(incarnation(seq + 1))),
            )
        ],
        Unavailable,
    ),
}


@pytest.mark.parametrize("case", DROP_CASES)
def test_drop(case: str) -> None:
    listed, script, expected = DROP_CASES[case]
    view = View(dict(listed))
    check(drive(router_flows.drop(view, "pears"), view, script), expected)


# --- A key command in a bucket ---------------------------------------------------------

IN_BUCKET_CASES: dict[str, tuple[Command, list[Step], Expect]] = {
    # The command (a write unless a "get"), the requests, the answer.
    "a write served": (PUT, [Step(put(OLD), None)], None),
    "a read served": (GET, [Step(get(OLD), b"v")], b"v"),
    "fenced, the registry has no such bucket": (
        PUT,
        [Step(put(OLD), GroupFenced(OLD.group)), Step(registry_lookup(), None)],
        NotFound,
    ),
    "fenced, the registry still lists that incarnation (its DROP was cut short)": (
        GET,
        [Step(get(OLD), GroupFenced(OLD.group)), Step(registry_lookup(), entry(OLD))],
        NotFound,
    ),
    "fenced, the registry lists a newer incarnation: follow it": (
        PUT,
        [
            Step(put(OLD), GroupFenced(OLD.group)),
            Step(registry_lookup(), entry(NEW)),
            Step(put(NEW), None),
        ],
        None,
    ),
    "another incarnation listed here, none in the registry": (
        GET,
        [Step(get(OLD), NotFound("not listed")), Step(registry_lookup(), None)],
        NotFound,
    ),
    "another incarnation listed here and in the registry: follow it": (
        GET,
        [
            Step(get(OLD), NotFound("not listed")),
            Step(registry_lookup(), entry(NEW)),
            Step(get(NEW), b"v"),
        ],
        b"v",
    ),
    "no replica served it, still listed here": (
        PUT,
        [Step(put(OLD), Unavailable("no quorum"))],
        Unavailable,
    ),
    "no replica served it, dropped here meanwhile, none in the registry": (
        PUT,
        [Step(put(OLD), Unavailable("no quorum"), forget=True), Step(registry_lookup(), None)],
        NotFound,
    ),
    "no replica served it, dropped here meanwhile, the same in the registry": (
        GET,
        [
            Step(get(OLD), Unavailable("no quorum"), forget=True),
            Step(registry_lookup(), entry(OLD)),
        ],
        Unavailable,
    ),
    "no replica served it, dropped here meanwhile, a newer one in the registry": (
        GET,
        [
            Step(get(OLD), Unavailable("no quorum"), forget=True),
            Step(registry_lookup(), entry(NEW)),
            Step(get(NEW), None),
        ],
        None,
    ),
    "fenced and created again every time": (
        PUT,
        [
            step
            for seq in range(1, FENCE_RETRIES + 1)
            for step in (
                Step(put(incarnation(seq)), GroupFenced(incarnation(seq).group)),
                Step(registry_lookup(), entry(incarnation(seq + 1))),
            )
        ],
        Unavailable,
    ),
}


@pytest.mark.parametrize("case", IN_BUCKET_CASES)
def test_in_bucket(case: str) -> None:
    body, script, expected = IN_BUCKET_CASES[case]
    view = View({"pears": OLD})
    flow = router_flows.in_bucket(view, "pears", body, write=body[0] != "get")
    check(drive(flow, view, script), expected)


def test_in_bucket_not_listed_here_reads_the_registry_first() -> None:
    view = View()
    script = [Step(registry_lookup(), entry(OLD)), Step(put(OLD), None)]
    assert drive(router_flows.in_bucket(view, "pears", PUT, write=True), view, script) is None
    script = [Step(registry_lookup(), None)]
    answer = drive(router_flows.in_bucket(view, "pears", PUT, write=True), view, script)
    assert type(answer) is NotFound


# --- Lookup ----------------------------------------------------------------------------

LOOKUP_CASES: dict[str, tuple[dict[str, BucketInfo], list[Step], Expect]] = {
    "a local hit is trusted, no request": ({"pears": OLD}, [], OLD),
    "a miss confirmed by the registry": ({}, [Step(registry_lookup(), None)], NotFound),
    "a miss the registry lists (the catalog lags)": (
        {},
        [Step(registry_lookup(), entry(NEW))],
        NEW,
    ),
    "a miss with the registry out of reach is not NOT FOUND": (
        {},
        [Step(registry_lookup(), Unavailable("no quorum"))],
        Unavailable,
    ),
}


@pytest.mark.parametrize("case", LOOKUP_CASES)
def test_lookup(case: str) -> None:
    listed, script, expected = LOOKUP_CASES[case]
    view = View(dict(listed))
    check(drive(router_flows.lookup(view, "pears"), view, script), expected)
