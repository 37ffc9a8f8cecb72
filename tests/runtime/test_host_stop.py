"""RaftHost while a node stops: a stopping host refuses peers' requests as certainly
not applied, and a peer that said goodbye gets no request that could time out."""

from __future__ import annotations

from typing import Any

from boutique.runtime.group import Applied, Pending, Rejected
from boutique.runtime.host import GOODBYE, HELLO
from boutique.runtime.requests import Propose
from boutique.testing.host_doubles import RecordingTransport, make_host


async def test_a_stopping_host_refuses_forwarded_requests_as_not_applied() -> None:
    transport = RecordingTransport()
    host = make_host(transport)
    host.stopping = True
    host.on_frame(2, {"f": [[7, "w", "b/hats/1", b"cmd"], [8, "c", "b/hats/1", [1, 4]]]})
    host.flush_mail()
    # "rej" is what makes the forwarding node retry elsewhere instead of answering
    # ERR TIMEOUT; nothing was submitted to a group.
    assert transport.frames == [
        (2, {"a": [[7, "rej", "node 1 is stopping", 0], [8, "rej", "node 1 is stopping", 0]]})
    ]
    assert not host._inbox
    assert not host.busy()


async def test_goodbye_turns_requests_waiting_on_that_peer_into_retries() -> None:
    transport = RecordingTransport()
    host = make_host(transport)
    to_2, to_3 = Pending(), Pending()
    host.send_forward(2, "g", Propose(b"cmd"), to_2)
    host.send_forward(3, "g", Propose(b"cmd"), to_3)
    assert host.busy()
    host.on_frame(2, {GOODBYE: True})
    # Certainly not applied: node 2 answered all it took on before its goodbye.
    assert to_2.outcome == Rejected("node 2 has stopped")
    assert to_3.outcome is None
    later = Pending()
    host.send_forward(2, "g", Propose(b"cmd"), later)
    assert later.outcome == Rejected("node 2 has stopped")
    # Any later frame from node 2 comes from a restarted process: it is asked again.
    host.on_frame(2, {"a": []})
    again = Pending()
    host.send_forward(2, "g", Propose(b"cmd"), again)
    assert again.outcome is None
    (request_id,) = [i for i, forward in host.forwarder.waiting.items() if forward.pending is again]
    host.on_frame(2, {"a": [[request_id, "ok", b"v", 0]]})
    assert again.outcome == Applied(b"v")


async def test_halt_gives_every_request_an_outcome_and_sends_no_more() -> None:
    transport = RecordingTransport()
    host = make_host(transport)
    answered: list[Any] = []
    tracked = Pending(then=answered.append)
    host.track(tracked)
    assert host.busy()
    host.halt()
    assert tracked.outcome is not None
    assert answered == [tracked.outcome]
    assert not host.busy()


async def test_a_restarted_peer_is_asked_again_after_its_hello_or_once_suspected() -> None:
    transport = RecordingTransport()
    host = make_host(transport)
    host.greet()
    assert transport.frames == [(2, {HELLO: True}), (3, {HELLO: True})]
    for peer, forget in (
        (2, lambda: host.on_frame(2, {HELLO: True})),
        (3, lambda: host.on_suspect(3)),
    ):
        host.on_frame(peer, {GOODBYE: True})
        refused = Pending()
        host.send_forward(peer, "g", Propose(b"cmd"), refused)
        assert refused.outcome == Rejected(f"node {peer} has stopped")
        forget()
        asked = Pending()
        host.send_forward(peer, "g", Propose(b"cmd"), asked)
        assert asked.outcome is None
