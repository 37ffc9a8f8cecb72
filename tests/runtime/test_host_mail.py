"""RaftHost's mail: forwarded requests and answers leave as one frame per peer per
turn, an answer msgpack cannot carry fails alone, and a dropped frame rejects its
requests at once."""

from __future__ import annotations

from boutique.runtime.group import Applied, Pending, Rejected, Unknown
from boutique.runtime.requests import Propose, Read
from boutique.testing.host_doubles import RecordingTransport, make_host


async def test_requests_and_answers_for_one_peer_share_one_frame() -> None:
    transport = RecordingTransport()
    host = make_host(transport)
    first, second = Pending(), Pending()
    host.send_forward(2, "g", Propose(b"cmd1"), first)
    host.send_forward(2, "g", Read(("get", b"k")), second)
    host.forwarder.answer(2, 7, Applied(b"v"))
    host.forwarder.answer(3, 8, Rejected("not the leader", 2))
    assert transport.frames == []  # nothing leaves before the end of the turn
    host.flush_mail()
    assert transport.frames == [
        (
            2,
            {
                "f": [[1, "w", "g", b"cmd1"], [2, "r", "g", ("get", b"k")]],
                "a": [[7, "ok", b"v", 0]],
            },
        ),
        (3, {"a": [[8, "rej", "not the leader", 2]]}),
    ]
    host.on_frame(2, {"a": [[2, "ok", b"v", 0], [1, "unk", "lost", 0]]})
    assert second.outcome == Applied(b"v")
    assert first.outcome == Unknown("lost")


async def test_an_answer_msgpack_cannot_carry_fails_alone() -> None:
    transport = RecordingTransport()
    host = make_host(transport)
    host.forwarder.answer(2, 1, Applied({"a set"}))
    host.forwarder.answer(2, 2, Applied(b"fine"))
    host.flush_mail()
    answers = [answer for _, frame in transport.frames for answer in frame["a"]]
    assert answers[1] == [2, "ok", b"fine", 0]
    request_id, status, (error_type, _message), _leader = answers[0]
    assert (request_id, status, error_type) == (1, "err", "TypeError")


async def test_requests_in_a_dropped_frame_are_rejected_at_once() -> None:
    host = make_host(RecordingTransport(accept=False))
    pending = Pending()
    host.send_forward(2, "g", Propose(b"cmd"), pending)
    host.flush_mail()
    assert isinstance(pending.outcome, Rejected)
    assert host.forwarder.waiting == {}
