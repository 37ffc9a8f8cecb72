"""Requests a node forwards to a peer for a group, and the peer's answers.

A node that does not lead a group sends the request (``runtime.requests``) to the node
it believes does; that node runs it in its copy of the group and answers with the
``Outcome``. This module holds both halves of that exchange except running the request,
which is the host's:

* the wire form of a ``ForwardedRequest`` and a ``ForwardedAnswer`` (``encode_*`` and
  ``decode_*``): positional msgpack-ready lists, ``[id, kind, group, body]`` and
  ``[id, status, value, leader]``. The decoders read what a peer sent: they trust
  nothing and raise only ``MalformedForward`` whatever they are given;
* the ``Forwarder``: the requests sent and not yet answered, the mail going to each
  peer at the end of the host's turn (one frame per peer), and settling requests whose
  peer stopped, went silent or whose stream broke.

What a peer sends never crashes the loop: a malformed request is answered ``Rejected``
(certainly not applied) when its id can be read and otherwise logged and dropped; a
malformed answer settles its request ``Unknown`` (a write may have been applied).

This module never imports trio (nor anything that does), never sleeps and never reads a
clock: the time comes in as a number (``now``), and frames go out through the ``Link``
the host passes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from boutique.machine import CommandFailed, WireValue
from boutique.raft import ChangeType

from .outcomes import Applied, Outcome, Rejected, Unknown
from .requests import (
    ChangeMembership,
    LeaderView,
    LocalView,
    Propose,
    Read,
    Request,
    TransferLeader,
)

__all__ = [
    "ForwardedAnswer",
    "ForwardedRequest",
    "Forwarder",
    "Link",
    "MalformedForward",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
]

log = logging.getLogger("boutique.forwarding")

REQUESTS = "f"
"""Key of a frame's list of forwarded requests."""
ANSWERS = "a"
"""Key of a frame's list of answers."""

_MAX_U64 = 2**64 - 1
_CHANGE_TYPES = {kind.value: kind for kind in ChangeType}


# --- Wire form ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """``request`` for ``group``, sent by a peer that waits for the answer to ``id``."""

    id: int
    group: str
    request: Request


@dataclass(frozen=True, slots=True)
class ForwardedAnswer:
    """The outcome of the forwarded request ``id``."""

    id: int
    outcome: Outcome


class MalformedForward(ValueError):
    """A value that is not a well-formed forwarded request or answer. ``request_id`` is
    its id when that much could be read (so the sender can be answered), else None."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


_KIND_TAGS: dict[type, str] = {
    Propose: "w",
    Read: "r",
    ChangeMembership: "c",
    LeaderView: "s",
    TransferLeader: "t",
    LocalView: "p",
}
"""The wire tag of each request kind. Part of the peer protocol: never reuse a tag."""


def encode_request(forwarded: ForwardedRequest) -> list[WireValue]:
    """``[id, kind, group, body]``, ready for msgpack."""
    body: WireValue
    match forwarded.request:
        case Propose(data):
            body = data
        case Read(query):
            body = query
        case ChangeMembership(change, node):
            body = [int(change), node]
        case TransferLeader(target):
            body = target
        case LeaderView() | LocalView():
            body = None
    return [forwarded.id, _KIND_TAGS[type(forwarded.request)], forwarded.group, body]


def decode_request(value: object) -> ForwardedRequest:
    """Inverse of ``encode_request`` for a value read off the network (arrays as lists
    or tuples; a query's arrays become tuples, the shape machines match on)."""
    fields = _fields(value, "request")
    request_id = _id(fields[0], "request")
    _, kind, group, body = fields
    if type(group) is not str:
        raise MalformedForward(f"group is {type(group).__name__}, not str", request_id)
    request: Request
    if kind == "w" and type(body) is bytes:
        request = Propose(body)
    elif kind == "r":
        try:
            request = Read(_as_tuples(from_msgpack(body)))
        except RecursionError:
            raise MalformedForward("a query nested too deep", request_id) from None
    elif kind == "c" and _is_change(body):
        change_type, node = cast(Sequence[int], body)
        request = ChangeMembership(_CHANGE_TYPES[change_type], node)
    elif kind == "s":
        request = LeaderView()
    elif kind == "t" and _is_nat(body):
        request = TransferLeader(cast(int, body))
    elif kind == "p":
        request = LocalView()
    else:
        raise MalformedForward(f"malformed request of kind {kind!r}", request_id)
    return ForwardedRequest(request_id, group, request)


def encode_answer(answer: ForwardedAnswer) -> list[WireValue]:
    """``[id, status, value, leader]``, ready for msgpack. Status ``ok`` carries the
    machine's reply, ``err`` the ``CommandFailed`` it agreed on (as a pair: tagged, so a
    reply that happens to be a pair is not mistaken for one), ``rej`` the reason and a
    leader hint, ``unk`` the reason."""
    request_id = answer.id
    match answer.outcome:
        case Applied(reply):
            if isinstance(reply, CommandFailed):
                return [request_id, "err", list(reply.to_wire()), 0]
            return [request_id, "ok", reply, 0]
        case Rejected(reason, leader):
            return [request_id, "rej", reason, leader]
        case Unknown(reason):
            return [request_id, "unk", reason, 0]


def decode_answer(value: object) -> ForwardedAnswer:
    """Inverse of ``encode_answer`` for a value read off the network."""
    fields = _fields(value, "answer")
    request_id = _id(fields[0], "answer")
    _, status, carried, leader = fields
    outcome: Outcome
    if status == "ok":
        outcome = Applied(from_msgpack(carried))
    elif status == "err":
        try:
            outcome = Applied(CommandFailed.from_wire(carried))
        except ValueError:
            raise MalformedForward("an error answer without its error", request_id) from None
    elif status == "rej" and type(carried) is str and _is_nat(leader):
        outcome = Rejected(carried, cast(int, leader))
    elif status == "unk" and type(carried) is str:
        outcome = Unknown(carried)
    else:
        raise MalformedForward(f"malformed answer of status {status!r}", request_id)
    return ForwardedAnswer(request_id, outcome)


def from_msgpack(value: object) -> WireValue:
    """``value`` as the plain value it is: whatever a peer frame holds came out of
    msgpack (the framing refuses extension types), which yields nothing else. Not a
    check: only for values read from a frame."""
    return cast(WireValue, value)


def _as_tuples(value: WireValue) -> WireValue:
    """Arrays as tuples, all the way down: msgpack gives lists, machines match on
    tuples (``machine.decode_value`` gives the same shape)."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    return value


def _fields(value: object, what: str) -> Sequence[object]:
    if not isinstance(value, list | tuple):
        raise MalformedForward(f"{what} is {type(value).__name__}, not an array")
    if len(value) != 4:
        request_id = value[0] if value and _is_nat(value[0]) else None
        raise MalformedForward(f"{what} has {len(value)} fields, not 4", request_id)
    return value


def _id(value: object, what: str) -> int:
    if not _is_nat(value):
        raise MalformedForward(f"{what} id is not a non-negative int: {value!r:.40}")
    return cast(int, value)


def _is_nat(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_U64


def _is_change(body: object) -> bool:
    return (
        isinstance(body, list | tuple)
        and len(body) == 2
        and all(_is_nat(v) for v in body)
        and body[0] in _CHANGE_TYPES
    )


# --- Requests in flight -------------------------------------------------------------------


class Pending(Protocol):
    """A request waiting for its outcome (``runtime.group.Pending`` is one): resolved
    once, from whatever learns the outcome first."""

    outcome: Outcome | None
    abandoned: bool

    def resolve(self, outcome: Outcome) -> None: ...


class Link(Protocol):
    """What the forwarder needs of the peer transport (``PeerTransport``)."""

    def send(self, peer: int, payload: object, *, now: bool = False) -> bool: ...
    def connected(self, peer: int) -> bool: ...
    def reachable(self, peer: int) -> bool: ...


@dataclass(slots=True)
class Mail:
    """What goes to one peer in the next frame besides Raft messages."""

    requests: list[ForwardedRequest] = field(default_factory=list)
    answers: list[ForwardedAnswer] = field(default_factory=list)


@dataclass(slots=True)
class Waiting:
    """A request sent to ``peer`` at ``sent_at`` and not yet answered."""

    pending: Pending
    peer: int
    request: Request
    sent_at: float


class Forwarder:
    """The forwarded requests of one host, both ways. Runs inside the host's loop (or
    a transport callback); nothing here awaits.

    ``wake`` is called when mail is posted for a peer that had none: the host then
    makes sure a turn ends soon, which sends it (``flush``). ``ticks_per_second`` paces
    the full sweeps of ``expire``.
    """

    def __init__(self, wake: Callable[[], None], ticks_per_second: int) -> None:
        self.waiting: dict[int, Waiting] = {}
        """Requests sent to peers and not yet answered, by id."""
        self.departed: set[int] = set()
        """Peers that said goodbye (see ``peer_departed``); cleared by their next frame,
        which can only come from a restarted process."""
        self._wake = wake
        self._ids = itertools.count(1)
        self._mail: dict[int, Mail] = {}
        self._sweeps = 0
        self._ticks_per_second = ticks_per_second

    # --- Sending ------------------------------------------------------------------------

    def send(
        self,
        link: Link | None,
        peer: int,
        group_id: str,
        request: Request,
        pending: Pending,
        now: float,
    ) -> None:
        """Ask ``peer`` to run ``request`` in its copy of the group; ``pending`` is
        resolved when it answers, ``Rejected`` at once if it is unreachable."""
        if link is None:
            pending.resolve(Rejected("not started"))
            return
        if peer in self.departed:
            pending.resolve(Rejected(f"node {peer} has stopped"))
            return
        if not (link.connected(peer) and link.reachable(peer)):
            pending.resolve(Rejected(f"node {peer} is unreachable"))
            return
        request_id = next(self._ids)
        self.waiting[request_id] = Waiting(pending, peer, request, now)
        self._post(peer).requests.append(ForwardedRequest(request_id, group_id, request))

    def answer(self, peer: int, request_id: int, outcome: Outcome) -> None:
        """Send ``peer`` the outcome of its request ``request_id``."""
        self._post(peer).answers.append(ForwardedAnswer(request_id, outcome))

    def _post(self, peer: int) -> Mail:
        """The mail for ``peer`` going out at the next ``flush``. One frame per peer per
        turn carries every request and answer: encoding, framing and decoding cost per
        frame, and a loaded node forwards many per turn."""
        mail = self._mail.get(peer)
        if mail is None:
            mail = self._mail[peer] = Mail()
            self._wake()
        return mail

    def flush(self, link: Link | None) -> None:
        """Send every peer its mail, one frame each; requests in a frame the link
        dropped are rejected at once (they never left)."""
        if not self._mail:
            return
        outbox, self._mail = self._mail, {}
        for peer, mail in outbox.items():
            payload: dict[str, list[list[WireValue]]] = {}
            if mail.requests:
                payload[REQUESTS] = [encode_request(r) for r in mail.requests]
            if mail.answers:
                payload[ANSWERS] = [encode_answer(a) for a in mail.answers]
            try:
                sent = link is not None and link.send(peer, payload, now=True)
            except (TypeError, ValueError) as exc:
                # Some answer cannot be sent (msgpack cannot carry it, or the frame
                # is too large): send them one by one, so only that one fails.
                log.warning("mail for node %d not sendable as one frame: %s", peer, exc)
                assert link is not None
                sent = self._send_singly(link, peer, mail)
            if not sent:
                for request in mail.requests:
                    waiting = self.waiting.pop(request.id, None)
                    if waiting is not None:
                        waiting.pending.resolve(Rejected(f"node {peer} is unreachable"))

    def _send_singly(self, link: Link, peer: int, mail: Mail) -> bool:
        sent = True
        for request in mail.requests:
            sent = link.send(peer, {REQUESTS: [encode_request(request)]}) and sent
        for answer in mail.answers:
            try:
                link.send(peer, {ANSWERS: [encode_answer(answer)]})
            except (TypeError, ValueError) as exc:
                failed = CommandFailed("TypeError", f"the reply cannot be sent: {exc}")
                error = ForwardedAnswer(answer.id, Applied(failed))
                link.send(peer, {ANSWERS: [encode_answer(error)]})
        return sent

    # --- Receiving ----------------------------------------------------------------------

    def read_requests(self, peer: int, value: object) -> list[ForwardedRequest]:
        """The well-formed requests of a frame's request list. A malformed one is
        answered ``Rejected`` if its id could be read, else logged and dropped."""
        if not isinstance(value, list):
            log.warning("node %d sent forwarded requests that are not a list; ignored", peer)
            return []
        requests = []
        for raw in value:
            try:
                requests.append(decode_request(raw))
            except MalformedForward as exc:
                log.warning("node %d forwarded a malformed request: %s", peer, exc)
                if exc.request_id is not None:
                    self.answer(peer, exc.request_id, Rejected(f"malformed request: {exc}"))
        return requests

    def read_answers(self, peer: int, value: object) -> None:
        """Settle the requests a frame's answer list answers. A malformed answer settles
        its request ``Unknown`` (what it says cannot be trusted, and a write may have
        been applied); without a readable id it is logged and dropped."""
        if not isinstance(value, list):
            log.warning("node %d sent answers that are not a list; ignored", peer)
            return
        for raw in value:
            try:
                answer = decode_answer(raw)
            except MalformedForward as exc:
                log.warning("node %d sent a malformed answer: %s", peer, exc)
                if exc.request_id is not None:
                    self._settle(peer, exc.request_id, Unknown(f"malformed answer: {exc}"))
                continue
            self._settle(peer, answer.id, answer.outcome)

    def _settle(self, peer: int, request_id: int, outcome: Outcome) -> None:
        waiting = self.waiting.get(request_id)
        # Only the peer asked may answer: ids are per host, not per peer.
        if waiting is not None and waiting.peer == peer:
            del self.waiting[request_id]
            waiting.pending.resolve(outcome)

    # --- Settling without an answer -----------------------------------------------------

    def peer_departed(self, peer: int) -> None:
        """``peer`` said goodbye: whatever it still owes us was refused or never read
        (see ``HostCore._peer_departed``), so it is rejected, to be retried elsewhere."""
        self.departed.add(peer)
        for request_id, waiting in list(self.waiting.items()):
            if waiting.peer == peer:
                del self.waiting[request_id]
                waiting.pending.resolve(Rejected(f"node {peer} has stopped"))

    def expire(self, link: Link, broken: dict[int, float], peers: Sequence[int]) -> None:
        """Called every tick: end requests whose peer went silent, or that were sent
        before a stream to or from their peer broke (``broken``: peer -> when; see
        ``HostCore._expire_requests``). ``peers`` are the other nodes."""
        if not self.waiting:
            return
        self._sweeps += 1
        # Walk every request only when a peer is unreachable or a stream broke, or about
        # once a second to drop those resolved meanwhile (timed out): under load
        # thousands are in flight.
        if (
            self._sweeps % self._ticks_per_second
            and not broken
            and all(link.reachable(peer) for peer in peers)
        ):
            return
        for request_id, waiting in list(self.waiting.items()):
            pending, peer = waiting.pending, waiting.peer
            lost_at = broken.get(peer)
            if pending.outcome is not None or pending.abandoned:
                del self.waiting[request_id]
            elif not link.reachable(peer):
                del self.waiting[request_id]
                pending.abandoned = True
                pending.resolve(Unknown(f"node {peer} did not answer"))
            elif lost_at is not None and waiting.sent_at <= lost_at:
                del self.waiting[request_id]
                pending.abandoned = True
                reason = f"the connection to node {peer} broke before it answered"
                # A lost read is resent by the caller; a write may have been applied.
                if waiting.request.may_apply:
                    pending.resolve(Unknown(reason))
                else:
                    pending.resolve(Rejected(reason))

    def busy(self) -> bool:
        """True while a request sent to a peer has no outcome yet."""
        return any(w.pending.outcome is None for w in self.waiting.values())
