"""CREATEs in batches (``runtime.create_batch``): what each CREATE of a batch is told,
and that the CREATEs queued while batches are out leave together as one entry.

The runner is a double that keeps every attempt for the test to resolve, so the test
plays the host's turn: no Raft, no trio, no clock but a number.
"""

from __future__ import annotations

from typing import Any

import pytest

from boutique.machine import CommandFailed, WireValue, decode_value
from boutique.runtime.create_batch import (
    EXISTS,
    MAX_BATCH,
    MAX_BATCHES_IN_FLIGHT,
    CreateBatcher,
    batch_outcomes,
)
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
from boutique.runtime.route_errors import DeadlinePassed
from boutique.runtime.routing import Answered, Expired, GaveUp, GiveUpKind, Next, Result

INFO: dict[str, WireValue] = {"name": "a", "group": "b/a/1"}


class Runner:
    """Keeps every attempt (``submit`` here, ``send_forward`` elsewhere) unresolved."""

    id = 1

    def __init__(self) -> None:
        self.attempts: list[tuple[int, tuple[Any, ...], Pending]] = []

    def submit(self, group_id: str, request: Propose | Read, pending: Pending) -> None:
        self._keep(self.id, request, pending)

    def send_forward(self, peer: int, group_id: str, request: Request, pending: Pending) -> None:
        self._keep(peer, request, pending)

    def track(self, pending: Pending) -> None:
        pass

    def _keep(self, target: int, request: Request, pending: Pending) -> None:
        assert isinstance(request, Propose)
        self.attempts.append((target, decode_value(request.data), pending))

    def names(self) -> list[tuple[str, ...]]:
        """The names of each batch sent, in order."""
        out = []
        for _, command, _ in self.attempts:
            assert command[0] == "create_many"
            out.append(tuple(command[1]))
        return out


class Meta:
    """A meta group of one replica, this node: a refusal means wait and ask again."""

    def first(self) -> int:
        return 1

    def next(self, target: int, refused: NotApplied) -> Next:
        return Next(1, wait=True)

    def after_attempt(self) -> None:
        return None


def batcher(runner: Runner, hints: list[int] | None = None) -> CreateBatcher:
    return CreateBatcher(
        runner,
        lambda: 0.0,
        5.0,
        Meta,
        (hints if hints is not None else []).append,
        lambda reason: reason,
    )


def created(name: str) -> list[WireValue]:
    return ["created", {**INFO, "name": name}]


def test_creates_queued_while_batches_are_out_leave_together_as_one_entry() -> None:
    runner, hints = Runner(), []
    creates = batcher(runner, hints)
    told: dict[str, Outcome] = {}
    for name in "abcde":
        creates.start(name, lambda outcome, name=name: told.setdefault(name, outcome))
    # An idle node sends at once; what comes while its batches are out waits for one.
    assert runner.names() == [("a",), ("b",)]
    assert creates.in_flight == MAX_BATCHES_IN_FLIGHT and creates.queued == 3
    runner.attempts[0][2].resolve(Applied([created("a")]))
    assert told == {"a": Applied(("created", {**INFO, "name": "a"}))}
    assert hints == [1]
    assert runner.names()[2:] == [("c", "d", "e")]
    runner.attempts[2][2].resolve(Applied([created("c"), ["exists", INFO], ["failed", "E", "m"]]))
    assert told["c"] == Applied(("created", {**INFO, "name": "c"}))
    assert told["d"] == Rejected(EXISTS)
    assert told["e"] == Applied(CommandFailed("E", "m"))
    assert "b" not in told and creates.in_flight == 1 and creates.queued == 0


def test_a_batch_holds_at_most_max_batch_names() -> None:
    runner = Runner()
    creates = batcher(runner)
    for i in range(MAX_BATCHES_IN_FLIGHT + MAX_BATCH + 1):
        creates.start(f"n{i}", lambda outcome: None)
    runner.attempts[0][2].resolve(Applied([created("n0")]))
    assert [len(names) for names in runner.names()] == [1, 1, MAX_BATCH]
    assert creates.queued == 1


def test_a_batch_settled_at_once_lets_the_next_one_go() -> None:
    class AtOnce(Runner):
        def submit(self, group_id: str, request: Propose | Read, pending: Pending) -> None:
            super().submit(group_id, request, pending)
            names = decode_value(request.data)[1] if isinstance(request, Propose) else ()
            pending.resolve(Applied([created(name) for name in names]))

    runner = AtOnce()
    creates = batcher(runner)
    told: list[Outcome] = []
    for name in "abc":
        creates.start(name, told.append)
    assert len(told) == 3 and all(isinstance(o, Applied) for o in told)
    assert creates.in_flight == 0 and creates.queued == 0


def test_a_caller_whose_callback_fails_costs_the_others_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = Runner()
    creates = batcher(runner)
    told: list[str] = []

    def broken(outcome: Outcome) -> None:
        raise RuntimeError("a bug in one caller")

    creates.start("a", lambda outcome: told.append("a"))
    creates.start("b", lambda outcome: told.append("b"))
    creates.start("c", broken)
    creates.start("d", lambda outcome: told.append("d"))
    runner.attempts[0][2].resolve(Applied([created("a")]))
    runner.attempts[2][2].resolve(Applied([created("c"), created("d")]))
    assert told == ["a", "d"]
    assert "CREATE c" in caplog.text


def test_a_refused_attempt_waits_for_the_full_router() -> None:
    runner = Runner()
    creates = batcher(runner)
    told: list[Outcome] = []
    creates.start("a", told.append)
    runner.attempts[0][2].resolve(Rejected("not the leader"))
    # A backoff is due: no timer here, so each CREATE goes to the full router.
    assert told == [Rejected("every meta replica was asked: a backoff is due")]
    assert creates.in_flight == 0


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            Answered(Done([created("a"), ["exists", INFO]]), 2),
            [Applied(("created", {**INFO, "name": "a"})), Rejected(EXISTS)],
        ),
        (
            Answered(Done([["failed", "ValueError", "bad"], ["what", 1]]), 2),
            [Applied(CommandFailed("ValueError", "bad")), "unknown"],
        ),
        (Answered(Done([created("a")]), 1), ["unknown", "unknown"]),  # one reply for two
        (Answered(MaybeApplied("leader lost"), 2), [Unknown("leader lost")] * 2),
        (Expired("no leader"), [DeadlinePassed("no leader")] * 2),
        (Answered(Refused(CommandFailed("ValueError", "not a registry command")), 1), "rej"),
        (GaveUp(GiveUpKind.UNAVAILABLE, "out of service"), [Rejected("out of service")] * 2),
        (None, "rej"),
    ],
)
def test_what_each_create_of_a_batch_is_told(result: Result | None, expected: Any) -> None:
    outcomes = batch_outcomes(2, result)
    if expected == "rej":
        # Certainly not applied: each goes to the full router.
        assert [type(o) for o in outcomes] == [Rejected, Rejected]
        return
    assert len(outcomes) == 2
    for outcome, want in zip(outcomes, expected, strict=True):
        if want == "unknown":
            # Applied, but nothing says how: never retried blindly, never "OK".
            assert isinstance(outcome, Unknown)
        else:
            assert outcome == want
