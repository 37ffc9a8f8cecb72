"""One classifier for what a request's outcome means to its caller, and the store's line
server and the library both answering by it (the store's router is covered by
tests/runtime/test_router*.py)."""

from __future__ import annotations

import pytest

from boutique.group.errors import CommandError, Timeout, Unavailable
from boutique.group.routing import settle
from boutique.machine import CommandFailed
from boutique.runtime.outcomes import (
    Applied,
    Done,
    MaybeApplied,
    NotApplied,
    Outcome,
    Refused,
    Rejected,
    Unknown,
    Verdict,
    classify,
)
from boutique.runtime.requests import Propose, Read
from boutique_server import commands as cmd
from boutique_server.server import _settled_reply

FAILED = CommandFailed("ValueError", "bad key")

TABLE: list[tuple[Outcome, bool, Verdict]] = [
    # (outcome, may_apply, what the caller is told)
    (Applied(b"v"), True, Done(b"v")),
    (Applied(b"v"), False, Done(b"v")),
    (Applied(None), True, Done(None)),
    (Applied(FAILED), True, Refused(FAILED)),
    (Applied(FAILED), False, Refused(FAILED)),
    (Unknown("lost"), True, MaybeApplied("lost")),
    (Unknown("lost"), False, NotApplied("lost")),
    (Rejected("no quorum"), True, NotApplied("no quorum")),
    (Rejected("not the leader", 3), True, NotApplied("not the leader", 3)),
    (Rejected("not the leader", 3), False, NotApplied("not the leader", 3)),
]


@pytest.mark.parametrize(("outcome", "may_apply", "verdict"), TABLE)
def test_classify(outcome: Outcome, may_apply: bool, verdict: Verdict) -> None:
    assert classify(outcome, may_apply=may_apply) == verdict


@pytest.mark.parametrize(("outcome", "may_apply", "verdict"), TABLE)
def test_the_library_answers_by_the_verdict(
    outcome: Outcome, may_apply: bool, verdict: Verdict
) -> None:
    request = Propose(b"cmd") if may_apply else Read(("get",))
    match verdict:
        case Done(reply):
            assert settle(request, outcome) == reply
        case Refused(failed):
            with pytest.raises(CommandError) as refused:
                settle(request, outcome)
            assert refused.value.failed == failed
        case MaybeApplied():
            with pytest.raises(Timeout) as timed_out:
                settle(request, outcome)
            assert timed_out.value.maybe_applied
        case NotApplied():
            with pytest.raises(Unavailable):
                settle(request, outcome)


@pytest.mark.parametrize(("outcome", "may_apply", "verdict"), TABLE)
def test_the_line_server_answers_by_the_verdict(
    outcome: Outcome, may_apply: bool, verdict: Verdict
) -> None:
    command = cmd.Put("b", b"k", b"v") if may_apply else cmd.Get("b", b"k")
    reply = _settled_reply(command, outcome)
    match verdict:
        case Done(None):
            assert reply == (b"OK\r\n" if may_apply else b"\r\nOK\r\n")
        case Done():
            assert reply == (b"OK\r\n" if may_apply else b"v\r\nOK\r\n")
        case Refused(failed):
            assert reply == f"ERR SYNTAX {failed.message}\r\n".encode()
        case MaybeApplied(reason):
            assert reply == f"ERR TIMEOUT outcome unknown: {reason}\r\n".encode()
        case NotApplied():
            assert reply is None  # the full router retries it
