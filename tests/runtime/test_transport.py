"""The peer transport over real loopback sockets: delivery, authentication, bounds, liveness.

Intervals are shrunk so every test finishes well inside two seconds of real time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from boutique.runtime.framing import FrameDecoder, encode_frame
from boutique.runtime.peertls import PeerTLS, PeerTLSError
from boutique.runtime.transport import PROTOCOL, PeerTransport

SECRET = b"correct horse battery staple 1234"
HOST = "127.0.0.1"
FAST: dict[str, Any] = {
    "heartbeat_interval": 0.02,
    "suspect_after": 0.15,
    "io_timeout": 0.4,
    "reconnect_min": 0.01,
    "reconnect_max": 0.05,
}


class Node:
    """One transport plus what it received, startable and stoppable on a fixed port."""

    def __init__(
        self,
        node_id: int,
        *,
        secret: bytes = SECRET,
        cluster: str = "test",
        on_frame: Callable[[int, object], None] | None = None,
        **options: Any,
    ) -> None:
        self.id = node_id
        self.received: list[tuple[int, object]] = []
        self.suspected: list[int] = []
        self.port = 0
        self.transport = PeerTransport(
            node_id,
            secret,
            cluster,
            {},
            on_frame or self.on_frame,
            on_suspect=self.suspected.append,
            **{**FAST, **options},
        )
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    def on_frame(self, peer: int, frame: object) -> None:
        self.received.append((peer, frame))

    def frames_from(self, peer: int) -> list[object]:
        return [frame for frm, frame in self.received if frm == peer]

    async def start(self, nursery: trio.Nursery) -> None:
        async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with trio.CancelScope() as self._scope:
                    await self.transport.run(HOST, self.port, task_status=task_status)
            finally:
                self._stopped.set()

        self._stopped = trio.Event()
        self.port = await nursery.start(run)

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()


def mesh(*nodes: Node) -> None:
    for node in nodes:
        node.transport.set_peers({other.id: (HOST, other.port) for other in nodes})


async def wait_until(predicate: Callable[[], bool], timeout: float = 1.5) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


async def closed_by_remote(stream: trio.SocketStream) -> bool:
    """True once the other end closes ``stream`` (it should never send us anything)."""
    try:
        with trio.fail_after(1.5):
            return await stream.receive_some(65536) == b""
    except trio.BrokenResourceError:
        return True


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def warnings_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name == "boutique.transport" and r.levelno == logging.WARNING
    )


async def test_two_nodes_exchange_frames_both_ways() -> None:
    a, b = Node(1), Node(2)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        for i in range(50):
            assert a.transport.send(2, {"n": i, "blob": b"\x00" * i})
        assert b.transport.send(1, ["hello", None, True])
        await wait_until(lambda: len(b.received) == 50 and len(a.received) == 1)
        assert b.frames_from(1) == [{"n": i, "blob": b"\x00" * i} for i in range(50)]
        assert a.received == [(2, ["hello", None, True])]
        # The sender counts after its write returns, which may be after the delivery.
        await wait_until(lambda: a.transport.stats.frames_sent == 50)
        assert b.transport.stats.frames_received == 50
        assert a.transport.stats.auth_failures == b.transport.stats.auth_failures == 0
        assert a.transport.reachable(2)
        assert b.transport.reachable(1)
        nursery.cancel_scope.cancel()


async def test_direct_writes_keep_frames_whole_and_in_order() -> None:
    a, b = Node(1), Node(2)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        await wait_until(lambda: a.transport.connected(2))
        # Far more than a socket takes at once: the direct write is cut short, and the
        # rest of the frame must go out before the frames sent after it.
        big = {"blob": bytes(range(256)) * 32768}
        assert a.transport.send(2, big, now=True)
        assert a.transport.send(2, {"n": 1}, now=True)
        assert a.transport.send(2, {"n": 2})
        await wait_until(lambda: len(b.received) == 3, timeout=5)
        assert b.frames_from(1) == [big, {"n": 1}, {"n": 2}]
        assert a.transport.send(2, {"n": 3}, now=True)
        await wait_until(lambda: len(b.received) == 4)
        assert b.frames_from(1)[-1] == {"n": 3}
        nursery.cancel_scope.cancel()


async def test_three_nodes_all_pairs() -> None:
    nodes = [Node(i) for i in (1, 2, 3)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await node.start(nursery)
        mesh(*nodes)
        for node in nodes:
            for other in nodes:
                if other is not node:
                    assert node.transport.send(other.id, f"{node.id}->{other.id}")
        await wait_until(lambda: all(len(node.received) == 2 for node in nodes))
        for node in nodes:
            assert sorted(node.received) == sorted(
                (other.id, f"{other.id}->{node.id}") for other in nodes if other is not node
            )
        nursery.cancel_scope.cancel()


async def test_wrong_secret_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="boutique.transport")
    a, b = Node(1), Node(2, secret=b"not the cluster secret at all!!!")
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        a.transport.send(2, "secret stuff")
        b.transport.send(1, "let me in")
        # Each side fails once as dialer and once as acceptor.
        await wait_until(
            lambda: a.transport.stats.auth_failures >= 2 and b.transport.stats.auth_failures >= 2
        )
        await trio.sleep(0.1)
        assert a.received == b.received == []
        assert not a.transport.reachable(2)
        assert a.transport.stats.connections_in == a.transport.stats.connections_out == 0
        text = warnings_text(caplog)
        assert f"peer 2 at {HOST}:{b.port}" in text
        assert f"refused connection from {HOST}:" in text
        assert "wrong cluster secret" in text
        nursery.cancel_scope.cancel()


async def test_wrong_cluster_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="boutique.transport")
    a, b = Node(1), Node(2, cluster="another")
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        a.transport.send(2, "x")
        b.transport.send(1, "y")
        await wait_until(
            lambda: a.transport.stats.auth_failures >= 2 and b.transport.stats.auth_failures >= 2
        )
        assert a.received == b.received == []
        text = warnings_text(caplog)
        assert "wrong cluster 'another'" in text
        assert "refused: wrong cluster name" in text
        nursery.cancel_scope.cancel()


async def test_unknown_node_id_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="boutique.transport")
    a, c = Node(1), Node(3)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await c.start(nursery)
        c.transport.set_peers({1: (HOST, a.port)})  # a does not know node 3
        c.transport.send(1, "hi")
        await wait_until(lambda: a.transport.stats.auth_failures >= 1)
        assert a.received == []
        assert "unknown node id 3" in warnings_text(caplog)
        nursery.cancel_scope.cancel()


async def test_garbage_and_impostors_are_dropped_while_peers_keep_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="boutique.transport")
    a, b = Node(1), Node(2)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)

        http = await trio.open_tcp_stream(HOST, a.port)
        await http.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert await closed_by_remote(http)

        junk = await trio.open_tcp_stream(HOST, a.port)
        await junk.send_all(encode_frame({"type": "hello", "node": 2}))
        assert await closed_by_remote(junk)

        silent = await trio.open_tcp_stream(HOST, a.port)
        assert await closed_by_remote(silent)  # after io_timeout

        # An impostor claiming to be node 2 reflects the acceptor's own MAC as its proof.
        impostor = await trio.open_tcp_stream(HOST, a.port)
        hello = {
            "type": "hello",
            "protocol": PROTOCOL,
            "cluster": "test",
            "node": 2,
            "nonce": b"n" * 32,
        }
        await impostor.send_all(encode_frame(hello))
        decoder = FrameDecoder()
        challenge: list[object] = []
        while not challenge:
            challenge = decoder.feed(await impostor.receive_some(4096))
        assert isinstance(challenge[0], dict)
        reflected = {"type": "proof", "mac": challenge[0]["mac"]}
        await impostor.send_all(encode_frame(reflected) + encode_frame("forged"))
        assert await closed_by_remote(impostor)

        for stream in (http, junk, silent, impostor):
            await stream.aclose()
        assert a.transport.stats.auth_failures == 4
        assert "forged" not in a.frames_from(2)

        assert b.transport.send(1, "still here")
        assert a.transport.send(2, "me too")
        await wait_until(lambda: "still here" in a.frames_from(2) and b.received != [])
        assert a.frames_from(2) == ["still here"]
        assert "timed out" in warnings_text(caplog)
        nursery.cancel_scope.cancel()


async def test_queue_to_a_down_peer_is_bounded_and_kept_for_reconnect() -> None:
    port = free_port()
    a = Node(1, queue_limit=100)
    b = Node(2)
    b.port = port
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        a.transport.set_peers({2: (HOST, port)})
        accepted = [a.transport.send(2, i) for i in range(10_000)]
        assert accepted == [True] * 100 + [False] * 9_900
        assert a.transport.queued(2) == 100
        assert a.transport.stats.frames_dropped == 9_900
        assert not a.transport.send(99, "unknown peer")
        await wait_until(lambda: a.transport.stats.dial_failures >= 2)
        assert a.transport.queued(2) == 100

        await b.start(nursery)
        b.transport.set_peers({1: (HOST, a.port)})
        await wait_until(lambda: len(b.received) == 100)
        assert b.frames_from(1) == list(range(100))
        assert a.transport.queued(2) == 0
        await wait_until(lambda: a.transport.stats.frames_sent == 100)
        assert a.transport.stats.writes == 1  # the whole backlog in one send_all
        nursery.cancel_scope.cancel()


async def test_queue_is_bounded_in_bytes_too() -> None:
    a = Node(1, queue_byte_limit=10_000)
    a.transport.set_peers({2: (HOST, free_port())})
    blob = b"x" * 3_000
    assert [a.transport.send(2, blob) for _ in range(5)] == [True] * 3 + [False] * 2
    # One frame larger than the byte limit still goes alone into an empty queue.
    b = Node(1, queue_byte_limit=10)
    b.transport.set_peers({2: (HOST, 1)})
    assert b.transport.send(2, blob)
    assert not b.transport.send(2, 1)


async def test_frames_flow_again_after_a_peer_restarts() -> None:
    a, b = Node(1), Node(2)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        a.transport.send(2, "before")
        await wait_until(lambda: b.received == [(1, "before")])

        port = b.port
        await b.stop()
        a.transport.send(2, "while down")
        await trio.sleep(0.05)
        await b.start(nursery)  # same transport object, same port
        assert b.port == port

        a.transport.send(2, "after")
        b.transport.send(1, "back")
        await wait_until(lambda: "after" in b.frames_from(1) and a.frames_from(2) == ["back"])
        assert b.frames_from(1)[0] == "before"
        assert a.transport.stats.connections_out >= 2
        nursery.cancel_scope.cancel()


async def test_reachable_and_on_suspect_follow_a_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Virtual time over loopback sockets in this process: what is checked is the
    # keepalive and suspicion logic, so it can watch for much longer than it waits.
    a, b = Node(1, suspect_after=0.25), Node(2)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        assert not a.transport.reachable(2)
        await b.start(nursery)
        mesh(a, b)
        await wait_until(lambda: a.transport.reachable(2))

        # Keepalives alone keep it reachable while nothing is sent.
        await trio.sleep(3.0)
        assert a.transport.reachable(2)
        assert a.suspected == []

        await b.stop()
        stopped = trio.current_time()
        await wait_until(lambda: a.suspected == [2])
        # At once, not suspect_after later: the end of its stream tells.
        assert trio.current_time() - stopped <= 0.01
        assert not a.transport.reachable(2)
        await trio.sleep(3.0)
        assert a.suspected == [2]  # once per loss, not once per check

        await b.start(nursery)
        await wait_until(lambda: a.transport.reachable(2))
        await b.stop()
        await wait_until(lambda: a.suspected == [2, 2])
        nursery.cancel_scope.cancel()


async def test_a_peer_whose_stream_closes_is_suspected_at_once() -> None:
    """A node whose process dies has its connections closed by the kernel: that is
    news now, not after ``suspect_after`` of silence (failover waits on it)."""
    a, b = Node(1, suspect_after=5.0, heartbeat_interval=0.05), Node(2)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        await wait_until(lambda: a.transport.reachable(2))
        with trio.fail_after(1.0):  # far below suspect_after
            await b.stop()
            await wait_until(lambda: a.suspected == [2])
        assert not a.transport.reachable(2)
        await b.start(nursery)  # a live peer that reconnects is reachable again
        await wait_until(lambda: a.transport.reachable(2))
        nursery.cancel_scope.cancel()


async def test_an_inbound_stream_that_goes_silent_is_closed(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """A dialer that stays connected but sends nothing, not even keepalives (a paused
    process), has its stream closed after the idle timeout: the watchdog does what a
    timeout around every read used to."""
    a, b = Node(1), Node(2)

    async def stall(stream: trio.SocketStream, out: Any) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(b.transport, "_drain", stall)
    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        await wait_until(lambda: 2 in a.transport._inbound)
        assert trio.current_time() - began <= 0.005  # the handshake: its last bytes
        await wait_until(lambda: 2 not in a.transport._inbound)
        # The idle timeout, max(io_timeout, suspect_after) + 4 heartbeats = 0.48 s,
        # seen by a watchdog that looks every 0.01 s (and a poll of 0.005 s here).
        assert 0.48 <= trio.current_time() - began <= 0.48 + 0.01 + 0.005 + 0.005
        assert a.suspected == [2]
        nursery.cancel_scope.cancel()


async def test_a_failing_callback_does_not_kill_the_transport(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="boutique.transport")
    got: list[object] = []

    def on_frame(peer: int, frame: object) -> None:
        if frame == "boom":
            raise RuntimeError("callback bug")
        got.append(frame)

    a, b = Node(1), Node(2, on_frame=on_frame)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        for frame in ("one", "boom", "two"):
            a.transport.send(2, frame)
        await wait_until(lambda: got == ["one", "two"])
        assert b.transport.stats.callback_errors == 1
        assert "on_frame failed" in caplog.text
        nursery.cancel_scope.cancel()


async def test_removed_peer_is_forgotten() -> None:
    a, b = Node(1), Node(2)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        b.transport.send(1, "first")
        await wait_until(lambda: a.received == [(2, "first")])

        a.transport.set_peers({})
        assert not a.transport.send(2, "x")
        b.transport.send(1, "second")
        # b notices its stream closed and redials; a no longer knows node 2.
        await wait_until(lambda: a.transport.stats.auth_failures >= 2)
        assert a.received == [(2, "first")]

        mesh(a, b)
        b.transport.send(1, "third")
        await wait_until(lambda: a.frames_from(2)[-1:] == ["third"])
        nursery.cancel_scope.cancel()


async def test_oversized_payload_is_refused_at_send() -> None:
    a = Node(1, max_frame=100)
    a.transport.set_peers({2: (HOST, 1)})
    with pytest.raises(ValueError):
        a.transport.send(2, b"x" * 200)
    with pytest.raises(TypeError):
        a.transport.send(2, object())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        PeerTransport(0, SECRET, "c", {}, lambda p, f: None)
    with pytest.raises(ValueError):
        PeerTransport(1, b"", "c", {}, lambda p, f: None)
    with pytest.raises(ValueError):
        PeerTransport(1, SECRET, "c", {}, lambda p, f: None, heartbeat_interval=1, suspect_after=1)


async def test_a_handshake_flood_from_one_address_does_not_keep_a_peer_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The issue's attack: connect, send nothing, reconnect when dropped, on more
    # connections than there are handshake slots. Before the fix a restarted peer could
    # not connect for 20 s and every attempt logged a warning.
    caplog.set_level(logging.WARNING, logger="boutique.transport")
    a = Node(1, io_timeout=2.0)  # production handshake deadlines, not the shrunk ones
    b = Node(2, reconnect_max=0.5)
    attempts = 0
    attacking = trio.Event()

    async def hold_a_slot() -> None:
        nonlocal attempts
        while True:
            sock = trio.socket.socket()
            try:
                await sock.bind(("127.0.0.2", 0))  # another machine, as far as a can tell
                await sock.connect((HOST, a.port))
                attempts += 1
                if attempts >= 200:
                    attacking.set()
                with contextlib.suppress(OSError):
                    await sock.recv(1)  # until a drops us
            except OSError:
                pass
            finally:
                sock.close()
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        for _ in range(70):  # more than the 64 slots
            nursery.start_soon(hold_a_slot)
        await attacking.wait()
        await b.start(nursery)
        mesh(a, b)
        b.transport.send(1, "let me in")
        await wait_until(lambda: "let me in" in a.frames_from(2), timeout=5)
        refused = a.transport.stats.handshakes_refused
        assert refused > 0
        nursery.cancel_scope.cancel()
    # One summary now and then, not a line per attempt.
    assert len(warnings_text(caplog).splitlines()) <= 10, attempts


# --- mutual TLS (issue 16, item 2) -----------------------------------------------------


def peer_tls(ca: trustme.CA, tmp_path: Path, name: str, host: str = HOST) -> PeerTLS:
    """A node's TLS files from ``ca``, written where ``PeerTLS.load`` reads them."""
    cert = ca.issue_cert(host)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
    return PeerTLS.load(tmp_path / "ca.pem", tmp_path / f"{name}.pem", tmp_path / f"{name}.key")


async def test_nodes_with_certificates_from_the_cluster_ca_talk_over_tls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="boutique.transport")
    ca = trustme.CA()
    a = Node(1, tls=peer_tls(ca, tmp_path, "a"))
    b = Node(2, tls=peer_tls(ca, tmp_path, "b"))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        assert b.transport.send(1, "over tls")
        assert a.transport.send(2, {"big": b"x" * 300_000})
        await wait_until(lambda: a.frames_from(2) == ["over tls"] and b.received != [])
        assert b.frames_from(1) == [{"big": b"x" * 300_000}]
        # What goes on the wire is TLS: a plaintext dialer gets no further.
        plain = await trio.open_tcp_stream(HOST, a.port)
        await plain.send_all(encode_frame({"type": "hello", "node": 2}))
        assert await closed_by_remote(plain)
        await plain.aclose()
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert "node 1: peer traffic uses mutual TLS" in messages
    assert not any("must be trusted" in m for m in messages)


async def test_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ca, stranger = trustme.CA(), trustme.CA()
    (tmp_path / "x").mkdir()
    a = Node(1, tls=peer_tls(ca, tmp_path, "a"))
    # It even knows the cluster secret: without the CA's certificate it gets nothing.
    c = Node(2, tls=peer_tls(stranger, tmp_path / "x", "c"))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await c.start(nursery)
        mesh(a, c)
        c.transport.send(1, "let me in")
        a.transport.send(2, "secret stuff")
        await wait_until(
            lambda: a.transport.stats.auth_failures >= 2 and c.transport.stats.auth_failures >= 2
        )
        assert a.received == c.received == []
        nursery.cancel_scope.cancel()


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "x").mkdir()
    a = Node(1, tls=peer_tls(ca, tmp_path, "a", host="node-a.example"))
    b = Node(2, tls=peer_tls(ca, tmp_path / "x", "b"))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        mesh(a, b)
        b.transport.send(1, "to whoever listens at a's address")
        await wait_until(lambda: b.transport.stats.auth_failures >= 2)
        assert a.received == []
        nursery.cancel_scope.cancel()


def test_unusable_tls_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(PeerTLSError, match=r"ca\.pem as the CA"):
        PeerTLS.load(tmp_path / "ca.pem", tmp_path / "a.pem", tmp_path / "a.key")
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with pytest.raises(PeerTLSError, match=r"cannot use certificate .*a\.pem"):
        PeerTLS.load(tmp_path / "ca.pem", tmp_path / "a.pem", tmp_path / "a.key")


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
async def test_an_on_path_attacker_cannot_inject_frames_over_tls(tmp_path: Path, tls: bool) -> None:
    # The issue's attack: relay the handshake untouched, then add frames of one's own.
    # Without TLS they are delivered as the peer's (why the peer network must be
    # trusted); with TLS the connection breaks instead and nothing forged arrives.
    ca = trustme.CA()
    (tmp_path / "b").mkdir()
    a = Node(1, tls=peer_tls(ca, tmp_path, "a") if tls else None)
    b = Node(2, tls=peer_tls(ca, tmp_path / "b", "b") if tls else None)
    injected = trio.Event()

    async def relay(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(HOST, a.port)
        answered = trio.Event()

        async def pipe(src: trio.SocketStream, dst: trio.SocketStream, forward: bool) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while data := await src.receive_some(65536):
                    await dst.send_all(data)
                    if not forward:
                        answered.set()
                    elif answered.is_set() and not injected.is_set():
                        await dst.send_all(encode_frame("forged"))  # after the proof
                        injected.set()
            await dst.aclose()

        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, server, True)
            nursery.start_soon(pipe, server, client, False)

    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, relay, 0, host=HOST))
        a.transport.set_peers({2: (HOST, b.port)})
        b.transport.set_peers({1: (HOST, listener.socket.getsockname()[1])})
        b.transport.send(1, "genuine")
        with trio.fail_after(5):
            await injected.wait()
        # b gets through in the end (over a new connection if the first one broke).
        await wait_until(lambda: "genuine" in a.frames_from(2), timeout=5)
        if tls:
            assert "forged" not in a.frames_from(2)
        else:
            await wait_until(lambda: "forged" in a.frames_from(2))
        nursery.cancel_scope.cancel()
