"""A request whose peer stream broke is settled at once, never after the whole request
timeout (issue 14, item 6).

After a node is paused (SIGSTOP) long enough for its peers to close their streams, it
resumes, writes into the dead streams, and the peers reconnect at once: they are
"reachable" again, so only the broken stream tells that a forwarded request, its
answer, or a follower's read-index request was lost. The host is driven by hand here,
with a stand-in transport and ``MockClock``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from boutique.examples.counter import Counter
from boutique.raft.messages import Heartbeat
from boutique.runtime.codec import encode_batch
from boutique.runtime.group import Applied, Pending, Rejected, Unknown
from boutique.runtime.host import LINK_LOSS_GRACE, RaftHost, _Read
from boutique.runtime.requests import Propose, Read
from boutique.testing.host_doubles import RecordingTransport
from boutique.testing.host_doubles import make_host as make_recording_host

BROKE = "the connection to node 2 broke before it answered"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make_host() -> RaftHost:
    """Every frame taken and every peer reachable, as after a peer reconnected."""
    return make_recording_host(RecordingTransport(), machine_for=lambda group: Counter())


def tick(host: RaftHost) -> None:
    """One turn of the loop with a tick due (the ticker's job)."""
    host._tick_due = True
    host._turn()


async def test_forwards_sent_before_a_stream_broke_are_settled_after_a_short_grace(
    clock: trio.testing.MockClock,
) -> None:
    host = make_host()
    write, answered, read, elsewhere = Pending(), Pending(), Pending(), Pending()
    host.send_forward(2, "g", Propose(b"cmd"), write)
    host.send_forward(2, "g", Read(("get", b"k")), answered)
    host.send_forward(2, "g", Read(("get", b"k")), read)
    host.send_forward(3, "g", Propose(b"cmd"), elsewhere)
    host.flush_mail()
    await trio.sleep(0.01)
    host._on_link_lost(2)
    await trio.sleep(0.01)
    after = Pending()  # sent on the stream that replaced the broken one
    host.send_forward(2, "g", Propose(b"cmd"), after)
    host.flush_mail()

    # An answer already in our socket buffer may still be read: not at once...
    tick(host)
    assert write.outcome is None and read.outcome is None
    host._on_frame(2, {"a": [[2, "ok", 7, 0]]})
    assert answered.outcome == Applied(7)
    # ...but the rest are settled after the grace, not after the request timeout (5 s).
    await trio.sleep(LINK_LOSS_GRACE)
    tick(host)
    # A write may have reached the peer: unknown. A read had no effect: resend it.
    assert write.outcome == Unknown(BROKE)
    assert read.outcome == Rejected(BROKE)
    assert elsewhere.outcome is None and after.outcome is None
    assert sorted(host.forwarder.waiting) == [4, 5]
    assert host._links_lost == {}


async def test_a_follower_read_waiting_for_its_leaders_read_index_is_resent(
    clock: trio.testing.MockClock,
) -> None:
    host = make_host()
    group = host.open_group("g", (1, 2), bootstrap_voters=True)
    host._on_frame(2, {"r": encode_batch({"g": [Heartbeat(frm=2, to=1, term=5, commit=0)]})})
    host._turn()
    assert group.leader == 2
    read = Pending()
    host._post(_Read("g", "value", read))
    host._turn()  # the read-index request leaves for node 2...
    await trio.sleep(0.01)
    host._on_link_lost(2)  # ...in a stream that breaks: the core never asks again
    tick(host)
    assert read.outcome is None
    await trio.sleep(LINK_LOSS_GRACE)
    tick(host)
    assert read.outcome == Rejected(BROKE, 2)  # the hint: resend to the leader
    assert group.reads == {}
