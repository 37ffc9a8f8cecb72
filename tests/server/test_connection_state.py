"""The connection state tables, checked against a spec written out here: every
(state, event) pair of every machine either moves where the spec says or raises
``IllegalTransition`` naming both and changes nothing. Then a few live connections,
to see that the server's changes go through the tables."""

from __future__ import annotations

import itertools
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio
import trio.testing

from boutique_server.connection_state import (
    Access,
    AccessEvent,
    Answer,
    AnswerEvent,
    ConnectionState,
    Flow,
    FlowEvent,
    IllegalTransition,
    Life,
    LifeEvent,
    answer_after,
)

if TYPE_CHECKING:  # conftest is not importable at run time; its fixtures hand these out
    from conftest import MemoryRouter, Served, StartMemoryServer

L, LE = Life, LifeEvent
_ABANDONING = (LE.RESET, LE.SEND_TIMEOUT, LE.AUTH_TIMEOUT, LE.FAILED)

LIFE_SPEC: dict[tuple[Life, LifeEvent], Life] = {
    (L.READING, LE.QUIT): L.CLOSING,
    (L.READING, LE.REFUSE): L.CLOSING,
    (L.READING, LE.STOP): L.CLOSING,
    (L.READING, LE.END_OF_INPUT): L.INPUT_ENDED,
    (L.READING, LE.IDLE): L.INPUT_ENDED,
    (L.CLOSING, LE.QUIT): L.CLOSING,
    (L.CLOSING, LE.REFUSE): L.CLOSING,
    (L.CLOSING, LE.STOP): L.CLOSING,
    (L.CLOSING, LE.ALL_WRITTEN): L.CLOSED,
    (L.INPUT_ENDED, LE.STOP): L.CLOSING,
    (L.INPUT_ENDED, LE.ALL_WRITTEN): L.DONE,
    **{
        (state, event): L.ABANDONED
        for state in (L.READING, L.CLOSING, L.INPUT_ENDED)
        for event in _ABANDONING
    },
    **{
        (over, event): over
        for over in (L.CLOSED, L.DONE, L.ABANDONED)
        for event in (LE.STOP, *_ABANDONING)
    },
}

FLOW_SPEC: dict[tuple[Flow, FlowEvent], Flow] = {
    (Flow.FLOWING, FlowEvent.OUT_OF_ROOM): Flow.PAUSED,
    (Flow.PAUSED, FlowEvent.ROOM): Flow.FLOWING,
}

A, AE = Access, AccessEvent
ACCESS_SPEC: dict[tuple[Access, AccessEvent], Access] = {
    (A.UNAUTHENTICATED, AE.PASSWORD_OK): A.AUTHENTICATED,
    (A.UNAUTHENTICATED, AE.WRONG_PASSWORD): A.UNAUTHENTICATED,
    (A.UNAUTHENTICATED, AE.LAST_WRONG_PASSWORD): A.REFUSED,
    (A.UNAUTHENTICATED, AE.NO_CLIENT_SLOT): A.REFUSED,
    (A.UNAUTHENTICATED, AE.AUTH_TIMEOUT): A.TIMED_OUT,
    (A.AUTHENTICATED, AE.PASSWORD_OK): A.AUTHENTICATED,
    (A.AUTHENTICATED, AE.WRONG_PASSWORD): A.AUTHENTICATED,
    (A.AUTHENTICATED, AE.LAST_WRONG_PASSWORD): A.AUTHENTICATED,
}

ANSWER_SPEC: dict[tuple[Answer, AnswerEvent], Answer] = {
    (Answer.PENDING, AnswerEvent.OUTCOME): Answer.SETTLED,
    (Answer.PENDING, AnswerEvent.ANSWERED): Answer.READY,
    (Answer.SETTLED, AnswerEvent.ANSWERED): Answer.READY,
    (Answer.SETTLED, AnswerEvent.RETRY): Answer.PENDING,
    (Answer.READY, AnswerEvent.WRITTEN): Answer.WRITTEN,
}


def _in(state: ConnectionState, value: Enum) -> ConnectionState:
    """``state`` put straight into ``value`` (tests only: the server never does this)."""
    if isinstance(value, Life):
        state.life = value
    elif isinstance(value, Flow):
        state.flow = value
    else:
        assert isinstance(value, Access)
        state.access = value
    return state


def _read(state: ConnectionState, like: Enum) -> Enum:
    if isinstance(like, Life):
        return state.life
    if isinstance(like, Flow):
        return state.flow
    return state.access


_S = TypeVar("_S", bound=Enum)
_E = TypeVar("_E", bound=Enum)


def _cases(
    states: type[_S], events: type[_E], spec: dict[tuple[_S, _E], _S]
) -> list[tuple[_S, _E, _S | None]]:
    """Every (state, event) pair, with where the spec says it leads (None: nowhere)."""
    return [(s, e, spec.get((s, e))) for s, e in itertools.product(states, events)]


_MACHINE_CASES: list[tuple[Enum, Enum, Enum | None]] = [
    *_cases(Life, LifeEvent, LIFE_SPEC),
    *_cases(Flow, FlowEvent, FLOW_SPEC),
    *_cases(Access, AccessEvent, ACCESS_SPEC),
]


@pytest.mark.parametrize(("before", "event", "after"), _MACHINE_CASES, ids=str)
def test_every_pair_moves_as_the_spec_says_or_raises(
    before: Enum, event: LifeEvent | FlowEvent | AccessEvent, after: Enum | None
) -> None:
    state = _in(ConnectionState(authenticated=False), before)
    untouched = (state.life, state.flow, state.access)
    if after is not None:
        state.fire(event)
        assert _read(state, before) is after
        return
    with pytest.raises(IllegalTransition) as raised:
        state.fire(event)
    assert before.name in str(raised.value) and event.name in str(raised.value)
    assert (raised.value.state, raised.value.event) == (before, event)
    assert (state.life, state.flow, state.access) == untouched


@pytest.mark.parametrize(
    ("before", "event", "after"), _cases(Answer, AnswerEvent, ANSWER_SPEC), ids=str
)
def test_every_reply_pair_moves_as_the_spec_says_or_raises(
    before: Answer, event: AnswerEvent, after: Answer | None
) -> None:
    if after is not None:
        assert answer_after(before, event) is after
        return
    with pytest.raises(IllegalTransition, match=f"reply in state {before.name} cannot take"):
        answer_after(before, event)


def test_a_reply_cannot_be_answered_twice_or_written_before_it_is_ready() -> None:
    # The two mistakes that would send a client the reply to another request.
    ready = answer_after(Answer.PENDING, AnswerEvent.ANSWERED)
    with pytest.raises(IllegalTransition):
        answer_after(ready, AnswerEvent.ANSWERED)
    with pytest.raises(IllegalTransition):
        answer_after(Answer.PENDING, AnswerEvent.WRITTEN)
    with pytest.raises(IllegalTransition):
        answer_after(Answer.SETTLED, AnswerEvent.WRITTEN)


def test_a_new_connection_reads_flows_and_is_proved_only_without_a_password() -> None:
    open_ = ConnectionState(authenticated=True)
    assert (open_.life, open_.flow, open_.access) == (L.READING, Flow.FLOWING, A.AUTHENTICATED)
    assert open_.takes_requests and open_.authenticated and not open_.over
    assert ConnectionState(authenticated=False).access is A.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("events", "life", "gentle"),
    [
        # QUIT: answer what was read, then close gently.
        ((LE.QUIT, LE.ALL_WRITTEN), L.CLOSED, True),
        # The node drains a connection whose client had already shut its side.
        ((LE.END_OF_INPUT, LE.STOP, LE.ALL_WRITTEN), L.CLOSED, True),
        ((LE.END_OF_INPUT, LE.ALL_WRITTEN), L.DONE, False),
        ((LE.IDLE, LE.ALL_WRITTEN), L.DONE, False),
        # A reset while closing: nobody to be gentle with.
        ((LE.STOP, LE.RESET), L.ABANDONED, False),
        ((LE.REFUSE, LE.SEND_TIMEOUT, LE.STOP), L.ABANDONED, False),
    ],
)
def test_lives_end_where_they_should(
    events: tuple[LifeEvent, ...], life: Life, gentle: bool
) -> None:
    state = ConnectionState(authenticated=True)
    for event in events:
        state.fire(event)
    assert state.life is life
    assert state.over and not state.takes_requests
    assert state.gentle is gentle


def test_after_quit_no_request_is_read_and_the_input_cannot_end_it_again() -> None:
    state = ConnectionState(authenticated=True)
    state.fire(LE.QUIT)
    assert not state.takes_requests
    with pytest.raises(IllegalTransition, match="CLOSING cannot take END_OF_INPUT"):
        state.fire(LE.END_OF_INPUT)


def test_a_refused_or_timed_out_client_never_becomes_authenticated() -> None:
    for last in (AE.NO_CLIENT_SLOT, AE.LAST_WRONG_PASSWORD, AE.AUTH_TIMEOUT):
        state = ConnectionState(authenticated=False)
        state.fire(AE.WRONG_PASSWORD)
        state.fire(last)
        assert not state.authenticated
        with pytest.raises(IllegalTransition):
            state.fire(AE.PASSWORD_OK)


# --- The server's connections go through the tables -----------------------------------


class _HeldPuts:
    """A router that holds every PUT until ``release`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.release = trio.Event()

    async def put(self, bucket: str, key: bytes, value: bytes) -> None:
        await self.release.wait()
        await self.inner.put(bucket, key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _the_connection(served: Served) -> Any:
    await trio.testing.wait_all_tasks_blocked()
    [connection] = served.server.live
    return connection


async def test_a_live_connection_pauses_when_full_then_closes_gently_after_quit(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    await memory_router.create("b")
    held = _HeldPuts(memory_router)
    served = await start_memory_server(held, max_in_flight=1)
    conn = await served.connect()
    await conn.send(b"PUT b k 1\nPING\nQUIT\n")
    connection = await _the_connection(served)
    state = connection.state
    # One reply may be pending: the PING waits for room, so the reader is paused.
    assert (state.life, state.flow, state.access) == (L.READING, Flow.PAUSED, A.AUTHENTICATED)
    assert [slot.state for slot in connection.replies] == [Answer.PENDING]
    held.release.set()
    assert await conn.closed(reset_ok=False) == b"OK\r\nPONG\r\nOK\r\n"
    assert (state.life, state.flow) == (L.CLOSED, Flow.FLOWING)
    assert state.gentle


async def test_a_client_that_shuts_its_side_ends_done_with_every_reply(
    start_memory_server: StartMemoryServer,
) -> None:
    served = await start_memory_server()
    conn = await served.connect()
    await conn.send(b"PING\nPING\n")
    connection = await _the_connection(served)
    await conn.stream.send_eof()
    assert await conn.closed() == b"PONG\r\nPONG\r\n"
    assert connection.state.life is L.DONE and not connection.state.gentle


async def test_a_wrong_then_right_password_authenticates_and_a_refusal_is_recorded(
    start_memory_server: StartMemoryServer,
) -> None:
    served = await start_memory_server(password="pw", max_connections=1)
    first, second = await served.connect(), await served.connect()
    await first.send(b"AUTH nope\nAUTH pw\n")
    await first.expect(b"ERR AUTH wrong password\r\nOK\r\n", timeout=5)
    await second.send(b"AUTH pw\n")
    assert await second.closed() == b"ERR BUSY too many connections\r\n"
    [connection] = served.server.live
    assert connection.state.access is A.AUTHENTICATED
