"""The routing decisions as tables, with no trio: a ``RouteAttempts`` with the store's
``ReplicaChooser`` is stepped by hand, in virtual time, and the steps it asks for are
compared with the expected ones (leader hints followed, replicas tried in order, the
classes of refusal, the backoff, expiry, giving up early).

The last test runs one of these tables in a process where ``import trio`` fails."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from boutique.machine import CommandFailed
from boutique.runtime.outcomes import (
    Applied,
    Done,
    MaybeApplied,
    Outcome,
    Refused,
    Rejected,
    Unknown,
)
from boutique.runtime.routing import (
    Answered,
    Expired,
    Finish,
    Forward,
    GaveUp,
    GiveUpKind,
    ReplicaChooser,
    RouteAttempts,
    Step,
    Submit,
    Wait,
)

FAILED = CommandFailed("ValueError", "bad")
ATTEMPT = 0.001
"""Virtual seconds every attempt takes."""


@dataclass
class View:
    """Node 1, as the store's chooser reads it."""

    id: int = 1
    quarantined: dict[str, str] = field(default_factory=dict)
    waiting_for_peers: str | None = None


def drive(
    script: Sequence[Outcome],
    *,
    replicas: tuple[int, ...] = (1, 2, 3),
    first: int = 1,
    may_apply: bool = True,
    timeout: float = 5.0,
    view: View | None = None,
    catalog: list[str | None] | None = None,
) -> list[str]:
    """Step a request through ``script`` (one outcome per attempt, the last forever);
    the steps it took, as text. ``catalog``: the bucket's group in the catalog after
    each check (the request is for bucket "b" of group "g", listed when it began)."""
    groups = list(catalog or [])
    chooser = ReplicaChooser(
        view or View(),
        "g",
        replicas,
        first,
        bucket="b" if catalog is not None else None,
        was_listed=True,
        catalog_group=lambda: groups.pop(0) if len(groups) > 1 else groups[0],
    )
    attempts = RouteAttempts(1, chooser, timeout, may_apply=may_apply, no_answer="nobody")
    outcomes = list(script)
    now = 0.0
    trace: list[str] = []
    while True:
        step: Step = attempts.next_step(now)
        trace.append(_text(step))
        match step:
            case Finish():
                assert attempts.result == step.result
                return trace
            case Wait(until):
                assert until > now
                now = until
            case Submit() | Forward():
                now += ATTEMPT
                outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
                attempts.attempted(outcome, now)


def _text(step: Step) -> str:
    match step:
        case Submit():
            return "submit"
        case Forward(peer):
            return f"forward {peer}"
        case Wait(until):
            return f"wait until {until:.3f}"
        case Finish(result):
            return f"finish {result}"


LEADER = Rejected("not the leader", 3)
NO_LEADER = Rejected("no leader")


@pytest.mark.parametrize(
    ("script", "kwargs", "expected"),
    [
        pytest.param(
            [Applied(b"v")],
            {},
            ["submit", f"finish {Answered(Done(b'v'), 1)}"],
            id="served-locally",
        ),
        pytest.param(
            [Applied(b"v")],
            {"first": 2},
            ["forward 2", f"finish {Answered(Done(b'v'), 2)}"],
            id="the-known-leader-first",
        ),
        pytest.param(
            [LEADER, Applied(None)],
            {},
            ["submit", "forward 3", f"finish {Answered(Done(None), 3)}"],
            id="the-leader-hint-followed",
        ),
        pytest.param(
            [NO_LEADER, NO_LEADER, Applied(None)],
            {},
            ["submit", "forward 2", "forward 3", f"finish {Answered(Done(None), 3)}"],
            id="replicas-tried-in-order",
        ),
        pytest.param(
            [NO_LEADER, Rejected("not the leader", 9), Applied(None)],
            {},
            [
                "submit",
                "forward 2",
                "wait until 0.012",
                "forward 3",
                f"finish {Answered(Done(None), 3)}",
            ],
            id="a-hint-outside-the-replicas-is-not-followed",
        ),
        pytest.param(
            [Applied(FAILED)],
            {},
            ["submit", f"finish {Answered(Refused(FAILED), 1)}"],
            id="refused-by-the-machine-is-never-retried",
        ),
        pytest.param(
            [NO_LEADER, Unknown("lost")],
            {},
            ["submit", "forward 2", f"finish {Answered(MaybeApplied('lost'), 2)}"],
            id="a-write-of-unknown-fate-is-never-retried",
        ),
        pytest.param(
            [Unknown("lost"), Applied(b"v")],
            {"may_apply": False},
            ["submit", "forward 2", f"finish {Answered(Done(b'v'), 2)}"],
            id="a-read-of-unknown-fate-is-retried",
        ),
        pytest.param(
            [NO_LEADER],
            {"timeout": 0.05},
            [
                *["submit", "forward 2", "forward 3", "wait until 0.013"],
                *["submit", "forward 2", "forward 3", "wait until 0.036"],
                *["submit", "forward 2", "forward 3", "wait until 0.050"],  # not past it
                f"finish {Expired('no leader')}",
            ],
            id="backoff-doubling-then-expired",
        ),
        pytest.param(
            [NO_LEADER],
            {"timeout": 0.0},
            [f"finish {Expired('nobody')}"],
            id="no-time-for-any-attempt",
        ),
        pytest.param(
            [Rejected("quarantined")],
            {"replicas": (1,), "view": View(quarantined={"g": "broken"})},
            ["submit", f"finish {GaveUp(GiveUpKind.UNAVAILABLE, 'quarantined')}"],
            id="the-only-replica-out-of-service",
        ),
        pytest.param(
            [NO_LEADER],
            {"view": View(waiting_for_peers="founders")},
            [
                *["submit", "forward 2", "forward 3"],
                f"finish {GaveUp(GiveUpKind.UNAVAILABLE, 'no leader')}",
            ],
            id="this-node-does-not-serve-yet",
        ),
        pytest.param(
            [NO_LEADER],
            {"catalog": ["g", "g2"]},
            ["submit", "forward 2", f"finish {GaveUp(GiveUpKind.NOT_FOUND, 'b')}"],
            id="the-bucket-re-created-elsewhere",
        ),
        pytest.param(
            [NO_LEADER],
            {"catalog": [None]},
            [
                "submit",
                f"finish {GaveUp(GiveUpKind.UNAVAILABLE, 'bucket b left this node' + chr(39) + 's catalog')}",
            ],
            id="the-bucket-left-the-catalog",
        ),
        pytest.param(
            [NO_LEADER, NO_LEADER, NO_LEADER, Applied(None)],
            {"catalog": ["g"]},
            [
                "submit",
                "forward 2",
                "forward 3",
                "wait until 0.013",
                "submit",
                f"finish {Answered(Done(None), 1)}",
            ],
            id="a-listed-bucket-keeps-going",
        ),
    ],
)
def test_the_steps_of_a_request(
    script: list[Outcome], kwargs: dict[str, object], expected: list[str]
) -> None:
    assert drive(script, **kwargs) == expected  # type: ignore[arg-type]


def test_the_protocol_is_one_attempt_at_a_time() -> None:
    attempts = RouteAttempts(
        1, ReplicaChooser(View(), "g", (1, 2), 1), 1.0, may_apply=True, no_answer="nobody"
    )
    with pytest.raises(RuntimeError, match="no attempt"):
        attempts.attempted(Applied(None), 0.0)
    assert attempts.next_step(0.0) == Submit(1.0)
    with pytest.raises(RuntimeError, match="in flight"):
        attempts.next_step(0.0)
    assert attempts.attempted(Applied(None), 0.5) == Answered(Done(None), 1)
    # Over is over: asked again, it repeats the result.
    assert attempts.next_step(9.0) == Finish(Answered(Done(None), 1))


def test_the_decisions_run_where_trio_cannot_be_imported() -> None:
    program = (
        "import sys\n"
        "sys.modules['trio'] = None\n"
        "from boutique.runtime.outcomes import Applied, Rejected\n"
        "from boutique.runtime.routing import ReplicaChooser, RouteAttempts, Forward, Submit\n"
        "class View:\n"
        "    id, quarantined, waiting_for_peers = 1, {}, None\n"
        "a = RouteAttempts(1, ReplicaChooser(View(), 'g', (1, 2, 3), 1), 5.0,\n"
        "                  may_apply=True, no_answer='nobody')\n"
        "assert a.next_step(0.0) == Submit(5.0)\n"
        "a.attempted(Rejected('not the leader', 3), 1.0)\n"
        "assert a.next_step(1.0) == Forward(3, 4.0)\n"
        "print(a.attempted(Applied(b'v'), 2.0))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Answered(verdict=Done(reply=b'v'), target=3)"
