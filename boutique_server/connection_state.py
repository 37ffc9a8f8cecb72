"""A line-server connection's life as explicit state tables (after h11's ``_state.py``).

A client connection is four small machines, each a table of states x events:

* ``Life``: whether the connection takes requests, reads no more and closes after its
  last reply (by its own choice: QUIT, a refusal, the node draining), saw the client end
  its input, or is over (closed gently, done, or abandoned with its commands cancelled).
* ``Flow``: backpressure. ``PAUSED`` while the replies not yet written are over the
  count or byte budget: the reader reads nothing until there is room.
* ``Access``: whether the client proved the password (with none, it starts proved), was
  refused (no client slot free, too many wrong passwords) or timed out.
* ``Answer``: one per reply position in the output order (``_Slot``): pending, settled
  by the host loop (an outcome recorded, not yet turned into a reply), ready, written.
  Replies go out strictly in request order, so a reply answered twice or written before
  it is ready would answer the wrong request: both are illegal here.

``_Connection`` makes every state change through ``ConnectionState.fire`` (or
``answer_after`` for a reply); an event that the table does not list for the current
state raises ``IllegalTransition`` naming both. A listed self-transition (``STOP`` while
already closing) is deliberate: that event may race with the one that got there first.

This module is pure: no trio, no sockets, no clock. It must never do I/O or hold policy
(how many replies, how many wrong passwords, how long to wait): the connection decides
that, then reports the event here.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, TypeVar

__all__ = [
    "ACCESS_TRANSITIONS",
    "ANSWER_TRANSITIONS",
    "FLOW_TRANSITIONS",
    "LIFE_TRANSITIONS",
    "Access",
    "AccessEvent",
    "Answer",
    "AnswerEvent",
    "ConnectionState",
    "Flow",
    "FlowEvent",
    "IllegalTransition",
    "Life",
    "LifeEvent",
    "answer_after",
]


class IllegalTransition(RuntimeError):
    """An event came that the connection's state does not allow: a bug in the server,
    never the client's doing (bad client input is a ``ProtocolError`` reply)."""

    def __init__(self, machine: str, state: Enum, event: Enum) -> None:
        super().__init__(f"connection {machine} in state {state.name} cannot take {event.name}")
        self.machine = machine
        self.state = state
        self.event = event


class Life(Enum):
    READING = "reading"
    """Takes requests and answers them."""
    CLOSING = "closing"
    """Reads no more by the server's choice; answers what it read, then closes gently."""
    INPUT_ENDED = "input ended"
    """The client shut its side or sat idle; answers what it read, then closes."""
    CLOSED = "closed"
    """Closing, and every reply owed was written: shut our side gently and close."""
    DONE = "done"
    """The input ended and every reply owed was written: close."""
    ABANDONED = "abandoned"
    """Nobody can receive replies any more: the connection's commands are cancelled."""


class LifeEvent(Enum):
    QUIT = "the client sent QUIT"
    REFUSE = "the connection refuses to go on (no client slot, too many wrong passwords)"
    STOP = "the node drains: read no more"
    END_OF_INPUT = "the client shut its side"
    IDLE = "no request for the idle timeout"
    ALL_WRITTEN = "every reply owed is written and no more will come"
    RESET = "the client reset the connection"
    SEND_TIMEOUT = "the client did not read a reply within the send timeout"
    AUTH_TIMEOUT = "the client did not authenticate in time"
    FAILED = "the connection's tasks ended without closing it"


_ABANDON = (LifeEvent.RESET, LifeEvent.SEND_TIMEOUT, LifeEvent.AUTH_TIMEOUT, LifeEvent.FAILED)
"""Events after which no reply can be delivered."""

LIFE_TRANSITIONS: Final[dict[Life, dict[LifeEvent, Life]]] = {
    Life.READING: {
        LifeEvent.QUIT: Life.CLOSING,
        LifeEvent.REFUSE: Life.CLOSING,
        LifeEvent.STOP: Life.CLOSING,
        LifeEvent.END_OF_INPUT: Life.INPUT_ENDED,
        LifeEvent.IDLE: Life.INPUT_ENDED,
        **{event: Life.ABANDONED for event in _ABANDON},
    },
    Life.CLOSING: {
        # A request being dispatched when the STOP came (waiting for reply room, or
        # behind a wrong password's delay) is still answered, and may close too.
        LifeEvent.QUIT: Life.CLOSING,
        LifeEvent.REFUSE: Life.CLOSING,
        LifeEvent.STOP: Life.CLOSING,
        LifeEvent.ALL_WRITTEN: Life.CLOSED,
        **{event: Life.ABANDONED for event in _ABANDON},
    },
    Life.INPUT_ENDED: {
        # The node drains while the last replies go out: the close becomes gentle.
        LifeEvent.STOP: Life.CLOSING,
        LifeEvent.ALL_WRITTEN: Life.DONE,
        **{event: Life.ABANDONED for event in _ABANDON},
    },
    # Over. News that comes late (a drain, a reset noticed while the tasks unwind)
    # changes nothing; a request or a reply does not come any more.
    Life.CLOSED: {LifeEvent.STOP: Life.CLOSED, **{event: Life.CLOSED for event in _ABANDON}},
    Life.DONE: {LifeEvent.STOP: Life.DONE, **{event: Life.DONE for event in _ABANDON}},
    Life.ABANDONED: {
        LifeEvent.STOP: Life.ABANDONED,
        **{event: Life.ABANDONED for event in _ABANDON},
    },
}

OVER: Final = frozenset({Life.CLOSED, Life.DONE, Life.ABANDONED})


class Flow(Enum):
    FLOWING = "flowing"
    """The reader may read and dispatch requests."""
    PAUSED = "paused"
    """The replies not yet written fill the count or byte budget: read nothing."""


class FlowEvent(Enum):
    OUT_OF_ROOM = "the replies not yet written fill a budget"
    ROOM = "replies were written; the budgets have room"


FLOW_TRANSITIONS: Final[dict[Flow, dict[FlowEvent, Flow]]] = {
    Flow.FLOWING: {FlowEvent.OUT_OF_ROOM: Flow.PAUSED},
    Flow.PAUSED: {FlowEvent.ROOM: Flow.FLOWING},
}


class Access(Enum):
    UNAUTHENTICATED = "unauthenticated"
    """Holds an unauthenticated slot; only AUTH, PING, HELP and QUIT are served."""
    AUTHENTICATED = "authenticated"
    """Holds a client slot until the connection ends."""
    REFUSED = "refused"
    """Proved nothing and is being closed: no client slot free, or too many guesses."""
    TIMED_OUT = "timed out"
    """Did not authenticate within the auth timeout; abandoned."""


class AccessEvent(Enum):
    PASSWORD_OK = "the right password, and a client slot was free"
    WRONG_PASSWORD = "a wrong password, not the last one allowed"
    LAST_WRONG_PASSWORD = "the last wrong password allowed"
    NO_CLIENT_SLOT = "the right password, but every client slot is taken"
    AUTH_TIMEOUT = "the auth timeout passed"


ACCESS_TRANSITIONS: Final[dict[Access, dict[AccessEvent, Access]]] = {
    Access.UNAUTHENTICATED: {
        AccessEvent.PASSWORD_OK: Access.AUTHENTICATED,
        AccessEvent.WRONG_PASSWORD: Access.UNAUTHENTICATED,
        AccessEvent.LAST_WRONG_PASSWORD: Access.REFUSED,
        AccessEvent.NO_CLIENT_SLOT: Access.REFUSED,
        AccessEvent.AUTH_TIMEOUT: Access.TIMED_OUT,
    },
    # Proved once, proved for good: the client keeps its slot. Wrong guesses are still
    # counted and the last one still closes the connection (``Life``), so a proved
    # connection cannot be used to guess other passwords forever.
    Access.AUTHENTICATED: {
        AccessEvent.PASSWORD_OK: Access.AUTHENTICATED,
        AccessEvent.WRONG_PASSWORD: Access.AUTHENTICATED,
        AccessEvent.LAST_WRONG_PASSWORD: Access.AUTHENTICATED,
    },
    Access.REFUSED: {},
    Access.TIMED_OUT: {},
}


class Answer(Enum):
    PENDING = "pending"
    """Read and taken on; its reply is not known yet."""
    SETTLED = "settled"
    """The host loop recorded an outcome; the connection has not turned it into a reply."""
    READY = "ready"
    """The reply is in the slot; it goes out once every earlier reply has."""
    WRITTEN = "written"


class AnswerEvent(Enum):
    OUTCOME = "the host loop recorded one attempt's outcome"
    RETRY = "the outcome settled nothing: the full router takes the command over"
    ANSWERED = "the reply is known"
    WRITTEN = "the reply was handed to the socket"


ANSWER_TRANSITIONS: Final[dict[Answer, dict[AnswerEvent, Answer]]] = {
    Answer.PENDING: {
        AnswerEvent.OUTCOME: Answer.SETTLED,
        AnswerEvent.ANSWERED: Answer.READY,
    },
    Answer.SETTLED: {
        AnswerEvent.ANSWERED: Answer.READY,
        AnswerEvent.RETRY: Answer.PENDING,
    },
    Answer.READY: {AnswerEvent.WRITTEN: Answer.WRITTEN},
    Answer.WRITTEN: {},
}

_Answers: Final = {
    (state, event): after
    for state, events in ANSWER_TRANSITIONS.items()
    for event, after in events.items()
}
"""The answer table flattened: one lookup per reply event, which is on the hot path."""

_S = TypeVar("_S", bound=Enum)
_E = TypeVar("_E", bound=Enum)


def _after(machine: str, table: dict[_S, dict[_E, _S]], state: _S, event: _E) -> _S:
    try:
        return table[state][event]
    except KeyError:
        raise IllegalTransition(machine, state, event) from None


def answer_after(state: Answer, event: AnswerEvent) -> Answer:
    """The state of a reply after ``event``; ``IllegalTransition`` if not allowed."""
    try:
        return _Answers[state, event]
    except KeyError:
        raise IllegalTransition("reply", state, event) from None


class ConnectionState:
    """The ``Life``, ``Flow`` and ``Access`` of one connection, changed only by
    ``fire``. Reads are plain attributes and properties."""

    __slots__ = ("access", "flow", "life")

    def __init__(self, *, authenticated: bool) -> None:
        self.life = Life.READING
        self.flow = Flow.FLOWING
        self.access = Access.AUTHENTICATED if authenticated else Access.UNAUTHENTICATED

    def fire(self, event: LifeEvent | FlowEvent | AccessEvent) -> None:
        """Apply ``event`` to the machine it belongs to, or raise ``IllegalTransition``
        (leaving every state as it was)."""
        if isinstance(event, LifeEvent):
            self.life = _after("life", LIFE_TRANSITIONS, self.life, event)
        elif isinstance(event, FlowEvent):
            self.flow = _after("flow", FLOW_TRANSITIONS, self.flow, event)
        else:
            self.access = _after("access", ACCESS_TRANSITIONS, self.access, event)

    @property
    def takes_requests(self) -> bool:
        """Whether the reader should read on (it stops once this is False)."""
        return self.life is Life.READING

    @property
    def over(self) -> bool:
        """Whether the connection is over: late replies are dropped, nothing written."""
        return self.life in OVER

    @property
    def gentle(self) -> bool:
        """Whether the close should shut our side and drain the client's input first
        (it closed by its own choice after writing its last reply)."""
        return self.life is Life.CLOSED

    @property
    def authenticated(self) -> bool:
        return self.access is Access.AUTHENTICATED

    def __repr__(self) -> str:
        return f"ConnectionState({self.life.name}, {self.flow.name}, {self.access.name})"
