"""A request whose peer stream broke is settled at once, never after the whole request
timeout (issue 14, item 6).

After a node is paused (SIGSTOP) long enough for its peers to close their streams, it
resumes, writes into the dead streams, and the peers reconnect at once: they are
"reachable" again, so only the broken stream tells that a forwarded request, its
answer, or a follower's read-index request was lost. The host core is driven by hand
here, with a stand-in transport and a clock moved by hand: no event loop.
"""

from __future__ import annotations

from boutique.examples.counter import Counter
from boutique.raft.messages import Heartbeat
from boutique.runtime.codec import encode_batch
from boutique.runtime.group import Applied, Pending, Rejected, Unknown
from boutique.runtime.host_core import LINK_LOSS_GRACE, HostCore, _Read
from boutique.runtime.requests import Propose, Read
from boutique.testing.host_doubles import ManualClock, RecordingTransport
from boutique.testing.host_doubles import make_host as make_recording_host

BROKE = "the connection to node 2 broke before it answered"


def make_host(clock: ManualClock) -> HostCore:
    """Every frame taken and every peer reachable, as after a peer reconnected."""
    return make_recording_host(
        RecordingTransport(), machine_for=lambda group: Counter(), clock=clock
    )


def tick(host: HostCore) -> None:
    """One turn with a tick due (what the trio adapter's ticker asks for)."""
    host.tick()
    host.turn()


def test_forwards_sent_before_a_stream_broke_are_settled_after_a_short_grace() -> None:
    clock = ManualClock()
    host = make_host(clock)
    write, answered, read, elsewhere = Pending(), Pending(), Pending(), Pending()
    host.send_forward(2, "g", Propose(b"cmd"), write)
    host.send_forward(2, "g", Read(("get", b"k")), answered)
    host.send_forward(2, "g", Read(("get", b"k")), read)
    host.send_forward(3, "g", Propose(b"cmd"), elsewhere)
    host.flush_mail()
    clock.advance(0.01)
    host.on_link_lost(2)
    clock.advance(0.01)
    after = Pending()  # sent on the stream that replaced the broken one
    host.send_forward(2, "g", Propose(b"cmd"), after)
    host.flush_mail()

    # An answer already in our socket buffer may still be read: not at once...
    tick(host)
    assert write.outcome is None and read.outcome is None
    host.on_frame(2, {"a": [[2, "ok", 7, 0]]})
    assert answered.outcome == Applied(7)
    # ...but the rest are settled after the grace, not after the request timeout (5 s).
    clock.advance(LINK_LOSS_GRACE)
    tick(host)
    # A write may have reached the peer: unknown. A read had no effect: resend it.
    assert write.outcome == Unknown(BROKE)
    assert read.outcome == Rejected(BROKE)
    assert elsewhere.outcome is None and after.outcome is None
    assert sorted(host.forwarder.waiting) == [4, 5]
    assert host._links_lost == {}


def test_a_follower_read_waiting_for_its_leaders_read_index_is_resent() -> None:
    clock = ManualClock()
    host = make_host(clock)
    group = host.open_group("g", (1, 2), bootstrap_voters=True)
    host.on_frame(2, {"r": encode_batch({"g": [Heartbeat(frm=2, to=1, term=5, commit=0)]})})
    host.turn()
    assert group.leader == 2
    read = Pending()
    host._post(_Read("g", "value", read))
    host.turn()  # the read-index request leaves for node 2...
    clock.advance(0.01)
    host.on_link_lost(2)  # ...in a stream that breaks: the core never asks again
    tick(host)
    assert read.outcome is None
    clock.advance(LINK_LOSS_GRACE)
    tick(host)
    assert read.outcome == Rejected(BROKE, 2)  # the hint: resend to the leader
    assert group.reads == {}
