"""The task driver of the routing decisions shared by the store's router and the
library (what ends a request, what is retried, the backoff, in virtual time), and each
side's choice of the next target. The decisions alone, with no trio, are
``test_route_attempts.py``'s."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from boutique.group.routing import RequestRouter, _MemberChooser
from boutique.machine import CommandFailed, WireValue
from boutique.registry import BucketInfo
from boutique.runtime.group import Pending
from boutique.runtime.outcomes import (
    Applied,
    Done,
    MaybeApplied,
    NotApplied,
    Outcome,
    Refused,
    Rejected,
    Unknown,
)
from boutique.runtime.requests import Propose, Read, Request
from boutique.runtime.route_drivers import route
from boutique.runtime.router import DeadlinePassed, Router
from boutique.runtime.routing import (
    Answered,
    Expired,
    GaveUp,
    GiveUpKind,
    Next,
    ReplicaChooser,
)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@dataclass
class ScriptedRunner:
    """Node 1: each attempt, wherever it goes, gets the next outcome of ``script`` (the
    last one forever once the script runs out)."""

    script: list[Outcome]
    id: int = 1
    attempts: list[tuple[float, int]] = field(default_factory=list)

    async def execute_local(self, group_id: str, request: Request, timeout: float) -> Outcome:
        return self._next(self.id)

    async def forward(self, peer: int, group_id: str, request: Request, timeout: float) -> Outcome:
        return self._next(peer)

    def _next(self, target: int) -> Outcome:
        self.attempts.append((trio.current_time(), target))
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@dataclass
class RoundRobin:
    """Targets 1, 2, 3, 1, ...; waits after every third refusal."""

    refusals: list[NotApplied] = field(default_factory=list)
    checks: int = 0

    def first(self) -> int:
        return 1

    def next(self, target: int, refused: NotApplied) -> Next:
        self.refusals.append(refused)
        return Next(target % 3 + 1, len(self.refusals) % 3 == 0)

    def after_attempt(self) -> None:
        self.checks += 1
        return None


FAILED = CommandFailed("ValueError", "bad")


@pytest.mark.parametrize(
    ("request_", "script", "expected", "attempts"),
    [
        (Propose(b"x"), [Applied(b"ok")], Answered(Done(b"ok"), 1), 1),
        (Propose(b"x"), [Rejected("no"), Rejected("no", 3), Applied(7)], Answered(Done(7), 3), 3),
        (Propose(b"x"), [Applied(FAILED)], Answered(Refused(FAILED), 1), 1),
        # A write of unknown fate is never retried; a read of unknown fate is.
        (Propose(b"x"), [Rejected("no"), Unknown("lost")], Answered(MaybeApplied("lost"), 2), 2),
        (Read(("get",)), [Unknown("lost"), Applied(None)], Answered(Done(None), 2), 2),
    ],
)
async def test_the_loop_ends_at_the_first_outcome_that_settles_the_request(
    clock: trio.testing.MockClock,
    request_: Request,
    script: list[Outcome],
    expected: Answered,
    attempts: int,
) -> None:
    runner = ScriptedRunner(script)
    chooser = RoundRobin()
    assert await route(runner, "g", request_, 5.0, chooser, "nobody") == expected
    assert len(runner.attempts) == attempts
    assert chooser.checks == attempts - 1


async def test_refusals_back_off_doubling_until_the_deadline(
    clock: trio.testing.MockClock,
) -> None:
    runner = ScriptedRunner([Rejected("no quorum")])
    result = await route(runner, "g", Propose(b"x"), 1.0, RoundRobin(), "nobody")
    assert result == Expired("no quorum")
    # A round of three attempts, then a wait of 0.01, 0.02, 0.04, ... s, at most 0.2 s.
    rounds = sorted({round(t, 3) for t, _ in runner.attempts})
    assert rounds == [0, 0.01, 0.03, 0.07, 0.15, 0.31, 0.51, 0.71, 0.91]
    assert len(runner.attempts) == 3 * len(rounds)


async def test_no_attempt_in_time_is_expired_with_the_callers_reason(
    clock: trio.testing.MockClock,
) -> None:
    runner = ScriptedRunner([Applied(None)])
    assert await route(runner, "g", Propose(b"x"), 0.0, RoundRobin(), "nobody") == Expired("nobody")
    assert runner.attempts == []


@dataclass
class Me:
    name: str


@dataclass
class Conf:
    voters: frozenset[int]


@dataclass
class Raft:
    lead: int
    conf: Conf


@dataclass
class Core:
    raft: Raft


@dataclass
class LocalCopy:
    """This node's open copy of a group, as the router reads it: whom its core follows
    and who votes."""

    node: Core

    @property
    def leader(self) -> int:
        return self.node.raft.lead


def local_copy(lead: int, voters: tuple[int, ...] = (1, 2, 3)) -> LocalCopy:
    return LocalCopy(Core(Raft(lead, Conf(frozenset(voters)))))


@dataclass
class Node:
    """What the store's chooser reads of its node."""

    id: int = 1
    quarantined: dict[str, str] = field(default_factory=dict)
    waiting_for_peers: str | None = None
    me: Me = field(default_factory=lambda: Me("a-g"))
    groups: dict[str, LocalCopy] = field(default_factory=dict)

    def catalog(self) -> dict[str, object]:
        return {}


def store_chooser(node: Node, replicas: tuple[int, ...] = (1, 2, 3)) -> ReplicaChooser:
    router = Router(node)  # type: ignore[arg-type]
    return router._chooser("g", replicas, None, first=router._first_target("g", replicas))


def test_the_store_follows_a_hint_among_the_replicas_and_backs_off_after_a_round() -> None:
    chooser = store_chooser(Node())
    assert chooser.first() == 1  # this node is a replica
    steps = [
        (1, NotApplied("not the leader", 3), Next(3)),  # follow the hint
        (3, NotApplied("not the leader", 3), Next(1, True)),  # a hint at itself: next, wait
        (1, NotApplied("no leader"), Next(2)),
        (2, NotApplied("not the leader", 9), Next(1, True)),  # 9 is no replica
        (1, NotApplied("no leader"), Next(1, True)),  # all of 1, 2, 3 asked: wait, start over
        (1, NotApplied("no leader"), Next(2)),
    ]
    for target, refused, expected in steps:
        assert chooser.next(target, refused) == expected


def test_the_store_gives_up_early_when_waiting_cannot_help() -> None:
    alone = store_chooser(Node(quarantined={"g": "broken"}), replicas=(1,))
    assert alone.next(1, NotApplied("quarantined")) == GaveUp(GiveUpKind.UNAVAILABLE, "quarantined")
    waiting = store_chooser(Node(waiting_for_peers="a majority of the founders"), (1, 2))
    assert waiting.next(1, NotApplied("no leader")) == Next(2)
    gave_up = waiting.next(2, NotApplied("no leader"))
    assert isinstance(gave_up, GaveUp) and gave_up.kind is GiveUpKind.UNAVAILABLE
    assert "does not serve yet" in gave_up.reason


@dataclass
class Group:
    leader: int


@dataclass
class Host:
    """What the library's chooser reads of its host: member 1, leader as its group says."""

    groups: dict[str, Group]
    id: int = 1


def test_the_library_follows_hints_then_its_own_leader_then_every_member() -> None:
    host = Host({"g": Group(leader=0)})
    router = RequestRouter(host, "g", lambda: {1, 2, 3})  # type: ignore[arg-type]
    chooser = _MemberChooser(router)
    assert chooser.first() == 1  # no leader known, none answered yet: itself
    steps = [
        (1, NotApplied("no leader"), Next(2)),
        (2, NotApplied("not the leader", 3), Next(3)),
        (3, NotApplied("not the leader", 2), Next(1, True)),  # 2 was asked: all were, wait
        (1, NotApplied("no leader"), Next(2)),
    ]
    for target, refused, expected in steps:
        assert chooser.next(target, refused) == expected
    assert chooser.leader_seen
    host.groups["g"].leader = 3
    assert chooser.next(2, NotApplied("no leader")) == Next(3)


def test_the_library_saw_no_leader_when_none_was_ever_named() -> None:
    router = RequestRouter(Host({}), "g", lambda: {1, 2})  # type: ignore[arg-type]
    chooser = _MemberChooser(router)
    chooser.next(1, NotApplied("no leader"))
    chooser.next(2, NotApplied("no leader"))
    assert not chooser.leader_seen  # the caller raises NoQuorum, not Unavailable


# --- Without a task (``Router.start``, the line server's fast path) ----------------------


@dataclass
class Settings:
    request_timeout: float = 2.0
    unsafe_local_reads: bool = False


@dataclass
class CallbackNode(Node):
    """Node 1 of bucket "b" (replicas 1, 2, 3): each attempt is recorded, and resolved at
    once from ``answers`` (target -> outcome) if it has one, else left to the test."""

    answers: dict[int, Outcome] = field(default_factory=dict)
    attempts: list[int] = field(default_factory=list)
    unresolved: list[Pending] = field(default_factory=list)
    tracked: int = 0
    config: Settings = field(default_factory=Settings)
    now: float = 0.0

    def catalog(self) -> dict[str, object]:  # type: ignore[override]
        return {"b": BucketInfo("b", "g", "r1", (1, 2, 3), 1)}

    def clock(self) -> float:
        return self.now

    def track(self, pending: Pending) -> None:
        self.tracked += 1

    def submit(self, group: str, request: Request, pending: Pending) -> None:
        self._attempt(self.id, pending)

    def send_forward(self, peer: int, group: str, request: Request, pending: Pending) -> None:
        self._attempt(peer, pending)

    def _attempt(self, target: int, pending: Pending) -> None:
        self.attempts.append(target)
        if target in self.answers:
            pending.resolve(self.answers[target])
        else:
            self.unresolved.append(pending)


def start(
    node: CallbackNode, command: tuple[WireValue, ...], router: Router | None = None
) -> tuple[Router, list[Outcome]]:
    router = router or Router(node)  # type: ignore[arg-type]
    outcomes: list[Outcome] = []
    assert router.start("b", command, outcomes.append)
    return router, outcomes


async def test_the_fast_path_follows_a_leader_hint_without_a_task() -> None:
    node = CallbackNode(answers={1: Rejected("not the leader", 3), 3: Applied(None)})
    router, outcomes = start(node, ("put", b"k", b"v"))
    assert (node.attempts, outcomes) == ([1, 3], [Applied(None)])
    assert node.tracked == 2  # each attempt ends within the request timeout
    assert router.leader_hints == {"g": 3}  # the next request goes there first
    start(node, ("get", b"k"), router)
    assert node.attempts == [1, 3, 3]


async def test_the_fast_path_hands_over_when_a_backoff_is_due() -> None:
    # Every replica refused: the wait and the retries are the full router's, in a task.
    node = CallbackNode(answers={n: Rejected("no leader") for n in (1, 2, 3)})
    _, outcomes = start(node, ("put", b"k", b"v"))
    assert (node.attempts, outcomes) == ([1, 2, 3], [Rejected("no leader")])


async def test_the_fast_path_goes_on_from_whatever_resolves_the_attempt() -> None:
    node = CallbackNode()
    _, outcomes = start(node, ("get", b"k"))
    assert (node.attempts, outcomes) == ([1], [])
    # A read of unknown fate had no effect: it is resent, from the resolving callback.
    node.unresolved.pop().resolve(Unknown("timed out waiting for the group"))
    assert (node.attempts, outcomes) == ([1, 2], [])
    node.unresolved.pop().resolve(Applied(b"v"))
    assert outcomes == [Applied(b"v")]


async def test_the_fast_path_never_resends_a_write_of_unknown_fate() -> None:
    node = CallbackNode(answers={1: Rejected("not the leader", 2), 2: Unknown("lost")})
    _, outcomes = start(node, ("delete", b"k"))
    assert (node.attempts, outcomes) == ([1, 2], [Unknown("lost")])


async def test_the_fast_path_starts_no_attempt_past_the_deadline() -> None:
    node = CallbackNode()
    _, outcomes = start(node, ("get", b"k"))
    node.now = 2.0  # the request timeout has passed: the answer comes too late
    node.unresolved.pop().resolve(Rejected("not the leader", 2))
    # The request is over: not handed to the full router, whose deadline would start now.
    assert (node.attempts, outcomes) == ([1], [DeadlinePassed("not the leader")])


async def test_a_replica_that_knows_a_leader_serves_a_read_itself() -> None:
    # Node 1 follows leader 3, and a write learnt so: a GET is still read here
    # (ReadIndex from 3, the value from our own state) and teaches no leader hint; the
    # next write goes straight to the leader.
    node = CallbackNode(answers={1: Rejected("not the leader", 3), 3: Applied(None)})
    node.groups["g"] = local_copy(lead=3)
    router, _ = start(node, ("put", b"k", b"v"))
    assert (node.attempts, router.leader_hints) == ([1, 3], {"g": 3})
    node.answers[1] = Applied(b"v")
    _, outcomes = start(node, ("get", b"k"), router)
    assert (node.attempts, outcomes) == ([1, 3, 1], [Applied(b"v")])
    node.answers[1] = Rejected("not the leader", 3)
    start(node, ("put", b"k", b"w"), router)
    assert node.attempts == [1, 3, 1, 3]
    assert router.leader_hints == {"g": 3}


@pytest.mark.parametrize(
    "why",
    ["no leader known", "not a voter", "not a listed replica", "no open copy", "not serving yet"],
)
async def test_a_read_goes_to_the_leader_when_this_node_cannot_serve_it(why: str) -> None:
    # (A group taken out of service, or not loaded yet, has no open copy here.)
    node = CallbackNode(answers={2: Applied(b"v")})
    if why != "no open copy":
        node.groups["g"] = local_copy(
            lead=0 if why == "no leader known" else 2,
            voters=(2, 3, 4) if why == "not a voter" else (1, 2, 3),
        )
    if why == "not serving yet":
        node.waiting_for_peers = "waiting for the other founders"
    router = Router(node)  # type: ignore[arg-type]
    router.leader_hints["g"] = 2
    replicas = (2, 3, 4) if why == "not a listed replica" else (1, 2, 3)
    assert router._first_target("g", replicas, read=True) == 2
    if why != "not a listed replica":
        _, outcomes = start(node, ("get", b"k"), router)
        assert (node.attempts, outcomes) == ([2], [Applied(b"v")])


async def test_the_fast_path_retries_from_the_target_it_tried_even_if_a_hint_moved() -> None:
    # The first attempt went to this node (no hint yet); meanwhile another request
    # learnt leader 3. The refusal names leader 2: the retry follows it, from the
    # attempt actually made, not from a first target recomputed from the new hint.
    node = CallbackNode()
    router, outcomes = start(node, ("put", b"k", b"v"))
    assert node.attempts == [1]
    router.leader_hints["g"] = 3
    node.answers[2] = Applied(None)
    node.unresolved.pop().resolve(Rejected("not the leader", 2))
    assert (node.attempts, outcomes) == ([1, 2], [Applied(None)])
    assert router.leader_hints == {"g": 2}
