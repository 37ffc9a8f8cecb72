"""Peer transport: authenticated streams of msgpack frames between the nodes of a cluster.

Every node listens on its peer port and keeps one outbound TCP connection to every
other node. A connection carries frames one way only, dialer to acceptor (as etcd keeps
one stream per direction), so each node sends on the connections it dialed and receives
on the ones it accepted. Payloads are any msgpack value; what they mean is the caller's
business (the node runtime sends codec batches).

Before a single frame is delivered, both ends of a connection prove they hold the
cluster secret, without ever sending it (the Erlang cookie idea, done safely)::

    dialer   -> acceptor   hello      {protocol, cluster, node: dialer id, nonce: A}
    acceptor -> dialer     challenge  {protocol, cluster, node: acceptor id, nonce: B,
                                       mac: HMAC(secret, "acceptor" | fields)}
    dialer   -> acceptor   proof      {mac: HMAC(secret, "dialer" | fields)}

``fields`` binds the protocol, the cluster name, both node ids and both fresh 32-byte
nonces, so a MAC cannot be replayed on another connection nor reflected back at its
sender in the other role.

A node that the cluster removed (its id is in ``removed``, set by the owner from its
replicated records) is not let in: the acceptor answers its hello with a ``removed``
notice instead of a challenge, MAC'd like a challenge under its own role label (so only
a holder of the secret can tell a node it was removed, and no challenge can be passed
off as one), and closes. The acceptor logs that once per removed id, not per attempt;
the dialer calls ``on_removed(peer)`` and stops dialing that peer.

A wrong secret, wrong cluster, unknown or unexpected node id, malformed frame or a
handshake slower than ``io_timeout`` (``handshake_timeout`` on the accepting side,
shorter) closes the connection, logs a warning on the
``boutique.transport`` logger naming the peer's address, and counts in
``stats.auth_failures``. The secret must be long and random: a peer that can connect
can collect MACs to guess a weak one offline.

Anyone who can reach the peer port can start handshakes, so the acceptor bounds them:
at most ``max_pending_handshakes`` at once and ``max_handshakes_per_source`` from one
address (more are closed at once and counted in ``stats.handshakes_refused``), each
with a short deadline. One flooding address therefore cannot keep a real peer from
connecting. Refusals and failed inbound handshakes are logged a few lines per interval
with a count of the rest, never a line per attempt.

Sending never blocks: ``send`` encodes the payload and appends it to the peer's bounded
queue, or drops it (returns False) when the queue is full. Raft tolerates lost messages,
and memory stays bounded however long a peer is down. A sender task per peer dials with
exponential backoff and jitter, writes every queued frame it can in one ``send_all``,
and sends a ``KEEPALIVE`` frame when it has had nothing to send for
``heartbeat_interval``. Receivers note when they last heard from each peer; that drives
``reachable`` and ``on_suspect``. When a stream that carried frames ends (either
direction), ``on_link_lost`` says so: whatever was in it is lost, and a caller waiting
for an answer through it should stop waiting.

All of it runs inside ``run``; cancelling ``run`` closes every socket. Frames already in
a connection that breaks are lost; frames still queued wait for the next connection.
With ``tls`` (``PeerTLS``: the cluster CA, this node's certificate and key) every
connection is mutual TLS first, and the HMAC handshake and all frames run inside it, so
frames after the handshake are authenticated and encrypted too. Without it they are
neither, and the peer network must be trusted (the transport says so when it starts).

This module never uses pickle, and never delivers a frame from an unauthenticated peer.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from boutique.admission import Admission, ThrottledLog
from boutique.runtime.framing import (
    DEFAULT_MAX_FRAME,
    KEEPALIVE,
    FrameDecoder,
    FrameError,
    encode_frame,
)
from boutique.runtime.peertls import PeerTLS

__all__ = ["PeerTransport", "TransportStats"]

logger = logging.getLogger("boutique.transport")

PROTOCOL = "boutique-peer/2"
"""Sent in every handshake and bound into every MAC; change it when the wire changes."""

_NONCE_BYTES = 32
_MAC_BYTES = hashlib.sha256().digest_size
_MAX_NODE_ID = 2**64 - 1
_HANDSHAKE_MAX_FRAME = 4096
_MAX_BATCH_BYTES = 1 << 20
_RECEIVE_BYTES = 1 << 18

Address = tuple[str, int]


@dataclass
class TransportStats:
    """Counters since the transport was made. Plain ints, safe to read at any time."""

    frames_sent: int = 0
    """Payload frames written to a socket (keepalives not included)."""
    frames_received: int = 0
    """Payload frames delivered to ``on_frame``."""
    frames_dropped: int = 0
    """Payloads refused by ``send``, lost in a failed write, or queued for a peer that
    ``set_peers`` removed."""
    writes: int = 0
    """``send_all`` calls that carried payload frames (several queued frames go in one)."""
    bytes_sent: int = 0
    bytes_received: int = 0
    keepalives_sent: int = 0
    auth_failures: int = 0
    """Handshakes that failed, on either side, for any reason."""
    handshakes_refused: int = 0
    """Inbound connections closed before a handshake because too many were pending, in
    total or from their address (not counted in ``auth_failures``)."""
    dial_failures: int = 0
    """Outbound connection attempts that found nobody listening (or timed out)."""
    connections_out: int = 0
    """Outbound connections that completed the handshake."""
    connections_in: int = 0
    """Inbound connections that completed the handshake."""
    callback_errors: int = 0
    """Exceptions raised by ``on_frame``, ``on_suspect`` or ``on_link_lost`` (logged,
    then ignored)."""
    removed_refused: int = 0
    """Handshakes from removed nodes answered with a ``removed`` notice."""


class _HandshakeError(Exception):
    """The other end did not prove it belongs to this cluster."""


class _RemovedError(Exception):
    """The acceptor proved it holds the secret and said this node was removed."""


def _mac(
    secret: bytes,
    role: bytes,
    cluster: str,
    dialer: int,
    acceptor: int,
    nonce_a: bytes,
    nonce_b: bytes,
) -> bytes:
    name = cluster.encode()
    message = b"".join(
        (
            PROTOCOL.encode(),
            b"\0",
            role,
            b"\0",
            len(name).to_bytes(4, "big"),
            name,
            dialer.to_bytes(8, "big"),
            acceptor.to_bytes(8, "big"),
            nonce_a,
            nonce_b,
        )
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def _expect(frame: object, kind: str, schema: Mapping[str, type]) -> dict[str, Any]:
    """``frame`` as a handshake message of ``kind`` with exactly ``schema``'s fields."""
    if type(frame) is not dict or frame.get("type") != kind:
        raise _HandshakeError(f"expected a {kind} message")
    if set(frame) != {"type", *schema}:
        raise _HandshakeError(f"malformed {kind} message")
    for key, expected in schema.items():
        if type(frame[key]) is not expected:
            raise _HandshakeError(f"malformed {kind} message: {key}")
    if "protocol" in frame and frame["protocol"] != PROTOCOL:
        raise _HandshakeError(f"unsupported protocol {frame['protocol'][:40]!r}")
    for key in ("nonce", "mac"):
        if key in frame and len(frame[key]) != (_NONCE_BYTES if key == "nonce" else _MAC_BYTES):
            raise _HandshakeError(f"malformed {kind} message: {key}")
    return frame


_HELLO = {"protocol": str, "cluster": str, "node": int, "nonce": bytes}
_CHALLENGE = {"protocol": str, "cluster": str, "node": int, "nonce": bytes, "mac": bytes}
_PROOF = {"mac": bytes}


async def _next_frame(stream: trio.abc.Stream, decoder: FrameDecoder) -> object:
    """The next handshake frame; leaves anything after it in ``decoder``."""
    data = b""
    while True:
        try:
            frames = decoder.feed(data, max_frames=1)
        except FrameError as exc:
            raise _HandshakeError(str(exc)) from None
        if frames:
            return frames[0]
        data = bytes(await stream.receive_some(_HANDSHAKE_MAX_FRAME))
        if not data:
            raise _HandshakeError("connection closed during handshake")


def _set_nodelay(stream: trio.SocketStream) -> None:
    # Raft messages are small and latency-bound; trio sets this already, we insist.
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)


def _remote(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "<unknown>"
    return f"{host}:{port}"


def _peer_closed(out: _Outbound) -> bool:
    """True if the acceptor closed or reset our session's connection. It never writes
    after the handshake, so anything to read means the end. The session's watcher
    notices too, but only when it next runs: after this process was stopped for a
    while (SIGSTOP) the host loop may write first, into a connection long closed."""
    if out.probe is None:
        return False
    try:
        out.probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


class _Outbound:
    """One peer's send side: where it lives, its bounded queue, the task draining it."""

    __slots__ = (
        "address",
        "connected",
        "fd",
        "last_sent",
        "peer",
        "probe",
        "queue",
        "queued_bytes",
        "scope",
        "sending_since",
        "session",
        "unsent",
        "wakeup",
    )

    def __init__(self, peer: int, address: Address) -> None:
        self.peer = peer
        self.address = address
        # (time queued, frame): frames that waited too long are stale and dropped.
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued_bytes = 0
        self.wakeup = trio.Event()
        self.scope: trio.CancelScope | None = None
        self.connected = False
        self.session: trio.CancelScope | None = None
        """The connected session (the watchdog cancels it if a write hangs)."""
        self.sending_since: float | None = None
        self.last_sent = 0.0
        self.fd: int | None = None
        self.probe: socket.socket | None = None
        """The same socket as ``fd``, to check before a direct write that the peer has
        not closed it (see ``_peer_closed``); detached, never closed, by us."""
        """The connected session's socket, for ``send(..., now=True)``; None when no
        session is up."""
        self.unsent = b""
        """The rest of a frame a direct write could not finish; the drain task sends it
        before anything queued."""


class PeerTransport:
    """Authenticated, bounded, reconnecting frame transport between cluster nodes.

    ``peers`` maps every other node's id to its peer address (an entry for this node's
    own id is ignored). ``on_frame(peer, value)`` is called, synchronously and in order
    per connection, for every frame an authenticated peer sends; exceptions from it are
    logged and swallowed. ``on_suspect(peer)`` is called once each time a peer that was
    reachable has been silent for ``suspect_after`` seconds. ``on_link_lost(peer)`` is
    called each time an authenticated stream to or from ``peer`` ends: frames written
    into it that the peer had not read, and frames it sent that we had not read, are
    gone (the queue is not: it waits for the next connection). ``on_delivered(peer)``,
    if given, is called after the frames decoded from one read of a connection were
    all handed to ``on_frame`` (at least one): the host takes their turn then, once for
    all of them, rather than once per frame.

    Call ``send``, ``reachable`` and ``set_peers`` from the trio thread.
    """

    def __init__(
        self,
        node_id: int,
        secret: bytes,
        cluster: str,
        peers: dict[int, tuple[str, int]],
        on_frame: Callable[[int, object], None],
        *,
        queue_limit: int = 1024,
        queue_byte_limit: int = 64 * 1024 * 1024,
        heartbeat_interval: float = 0.1,
        suspect_after: float = 0.5,
        max_queue_age: float = 2.0,
        on_suspect: Callable[[int], None] | None = None,
        on_link_lost: Callable[[int], None] | None = None,
        on_removed: Callable[[int], None] | None = None,
        on_delivered: Callable[[int], None] | None = None,
        io_timeout: float = 2.0,
        handshake_timeout: float = 1.0,
        max_pending_handshakes: int = 64,
        max_handshakes_per_source: int = 8,
        reconnect_min: float = 0.05,
        reconnect_max: float = 2.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        rng: random.Random | None = None,
        tls: PeerTLS | None = None,
    ) -> None:
        if not 0 < node_id <= _MAX_NODE_ID:
            raise ValueError(f"node_id must be a positive 64-bit int, got {node_id}")
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        if queue_limit < 1 or queue_byte_limit < 1:
            raise ValueError("queue limits must be positive")
        if not 0 < heartbeat_interval < suspect_after:
            raise ValueError("need 0 < heartbeat_interval < suspect_after")
        if not 0 < max_frame < 2**32:
            raise ValueError("max_frame must fit a 4-byte length")
        if not 0 < reconnect_min <= reconnect_max or io_timeout <= 0:
            raise ValueError("need 0 < reconnect_min <= reconnect_max and io_timeout > 0")
        if handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        self.node_id = node_id
        self.cluster = cluster
        self.stats = TransportStats()
        self._secret = secret
        self._on_frame = on_frame
        self._on_suspect = on_suspect
        self._on_link_lost = on_link_lost
        self._on_removed = on_removed
        self._on_delivered = on_delivered
        self.removed: frozenset[int] = frozenset()
        """Ids the cluster removed: refused with a ``removed`` notice (``set_removed``)."""
        self._told_removed: set[int] = set()
        """Removed ids whose refusal was logged already (one line per id)."""
        self._queue_limit = queue_limit
        self._queue_byte_limit = queue_byte_limit
        self._heartbeat_interval = heartbeat_interval
        self._suspect_after = suspect_after
        self._max_queue_age = max_queue_age
        self.blocked: set[int] = set()
        """Peers cut off on purpose (fault injection in distributed tests): nothing is
        sent to or accepted from them, and they become unreachable."""
        self._io_timeout = io_timeout
        # An inbound stream that stays silent this long is dead: its dialer would have
        # sent a keepalive many times over.
        self._idle_timeout = max(io_timeout, suspect_after) + 4 * heartbeat_interval
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._max_frame = max_frame
        self._rng = rng if rng is not None else random.Random()
        self._outbound: dict[int, _Outbound] = {}
        self._inbound: dict[int, trio.CancelScope] = {}
        self._last_heard: dict[int, float] = {}
        self._last_received: dict[int, float] = {}
        """When each peer's inbound stream last delivered bytes (keepalives count)."""
        self._reachable: set[int] = set()
        # A real peer answers within a round trip; the deadline only has to outlast a
        # busy node, so it is short whatever io_timeout allows for writes.
        self._handshake_timeout = min(handshake_timeout, io_timeout)
        self._pending = Admission(max_pending_handshakes, max_handshakes_per_source)
        self._tls = tls
        self._inbound_log = ThrottledLog(logger)
        self._nursery: trio.Nursery | None = None
        self.set_peers(peers)

    # --- Public API -----------------------------------------------------------------

    async def run(
        self,
        listen_host: str,
        listen_port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``listen_host:listen_port`` (port 0 picks one) and keep a connection
        to every peer until cancelled. ``task_status.started`` gets the bound port."""
        if self._nursery is not None:
            raise RuntimeError("this transport is already running")
        listeners = await trio.open_tcp_listeners(listen_port, host=listen_host)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for out in self._outbound.values():
                    self._start_sender(out)
                nursery.start_soon(self._watch_liveness)
                await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
                port: int = listeners[0].socket.getsockname()[1]
                logger.info("node %d listening for peers on %s:%d", self.node_id, listen_host, port)
                if self._tls is None:
                    logger.warning(
                        "node %d: no TLS between nodes: peer traffic is authenticated only at "
                        "the handshake and is not encrypted, so the peer network must be "
                        "trusted (see Security in the README)",
                        self.node_id,
                    )
                else:
                    logger.info("node %d: peer traffic uses mutual TLS", self.node_id)
                task_status.started(port)
        finally:
            self._nursery = None
            # A stopped transport hears nobody; on restart peers must prove life again.
            self._inbound.clear()
            self._last_heard.clear()
            self._reachable.clear()
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    def send(self, peer: int, payload: object, *, now: bool = False) -> bool:
        """Queue ``payload`` for ``peer``; False (and counted) if it was dropped because
        the peer is unknown or its queue is full. Never blocks.

        With ``now``, a frame that would be next on the wire anyway (nothing queued,
        no write in progress) is written at once from the caller, without waking the
        sender task; whatever the socket does not take goes to that task. If that
        write fails (the connection is gone), nothing of the frame left: False. The host
        loop uses it: its turn does not yield, and a follower should get its appends
        while the leader is still syncing them.

        Raises ``TypeError`` if msgpack cannot encode ``payload`` and ``FrameError`` if it
        encodes larger than ``max_frame``: no peer would accept it.
        """
        if peer in self.blocked:
            self.stats.frames_dropped += 1
            return False
        frame = encode_frame(payload)
        if len(frame) - len(KEEPALIVE) > self._max_frame:
            raise FrameError(f"payload of {len(frame)} bytes exceeds max_frame")
        out = self._outbound.get(peer)
        if (
            now
            and out is not None
            and out.fd is not None
            and not out.queue
            and not out.unsent
            and out.sending_since is None
        ):
            return self._write_now(out, frame)
        if (
            out is None
            or len(out.queue) >= self._queue_limit
            or (out.queue and out.queued_bytes + len(frame) > self._queue_byte_limit)
        ):
            self.stats.frames_dropped += 1
            return False
        out.queue.append((trio.current_time(), frame))
        out.queued_bytes += len(frame)
        out.wakeup.set()
        return True

    def _write_now(self, out: _Outbound, frame: bytes) -> bool:
        """Write ``frame`` on the session's socket from the caller; False if none of it
        was written because the connection is gone."""
        assert out.fd is not None
        if _peer_closed(out):
            # Written now, the frame would be accepted by our kernel and thrown away by
            # the peer's: say it was not sent, so its requests can be resent.
            logger.info("node %d: peer %d closed the connection", self.node_id, out.peer)
            self.stats.frames_dropped += 1
            if out.session is not None:
                out.session.cancel()
            return False
        try:
            written = os.write(out.fd, frame)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            # The connection is gone: the session ends and the dialer starts over.
            logger.info("node %d: write to peer %d failed: %r", self.node_id, out.peer, exc)
            self.stats.frames_dropped += 1
            if out.session is not None:
                out.session.cancel()
            return False
        self.stats.frames_sent += 1
        self.stats.writes += 1
        self.stats.bytes_sent += written
        out.last_sent = trio.current_time()
        if written < len(frame):
            out.unsent = frame[written:]
            out.wakeup.set()
        return True

    def queued(self, peer: int) -> int:
        """Frames waiting to be sent to ``peer``."""
        out = self._outbound.get(peer)
        return len(out.queue) if out is not None else 0

    def connected(self, peer: int) -> bool:
        """True while our authenticated stream to ``peer`` is up: a frame sent now goes
        out at once instead of waiting in the queue for a reconnect."""
        out = self._outbound.get(peer)
        return out is not None and out.connected and peer not in self.blocked

    def reachable(self, peer: int) -> bool:
        """True if ``peer`` sent anything (a frame or a keepalive) in ``suspect_after``."""
        heard = self._last_heard.get(peer)
        return heard is not None and trio.current_time() - heard <= self._suspect_after

    def set_peers(self, peers: Mapping[int, Address]) -> None:
        """Replace the membership: connect to new peers, forget removed ones (their
        queues are dropped and their connections closed), redial moved ones."""
        wanted = {
            peer: address
            for peer, address in peers.items()
            if peer != self.node_id and peer not in self.removed
        }
        for peer in wanted:
            if not 0 < peer <= _MAX_NODE_ID:
                raise ValueError(f"peer ids must be positive 64-bit ints, got {peer}")
        for peer in [peer for peer in self._outbound if peer not in wanted]:
            gone = self._outbound.pop(peer)
            self.stats.frames_dropped += len(gone.queue)
            gone.queue.clear()
            if gone.scope is not None:
                gone.scope.cancel()
            inbound = self._inbound.pop(peer, None)
            if inbound is not None:
                inbound.cancel()
            self._last_heard.pop(peer, None)
            self._reachable.discard(peer)
        for peer, address in wanted.items():
            out = self._outbound.get(peer)
            if out is None:
                out = self._outbound[peer] = _Outbound(peer, address)
            elif out.address == address:
                continue
            else:
                out.address = address
                if out.scope is not None:
                    out.scope.cancel()
            if self._nursery is not None:
                self._start_sender(out)

    def set_removed(self, removed: frozenset[int]) -> None:
        """Refuse these node ids from now on, telling them they were removed; their
        connections are closed and they stop being peers (see the module docstring)."""
        self.removed = frozenset(removed)
        if any(peer in self.removed for peer in self._outbound):
            self.set_peers({p: o.address for p, o in self._outbound.items()})
        for peer in [p for p in self._inbound if p in self.removed]:
            self._inbound.pop(peer).cancel()

    # --- Sending --------------------------------------------------------------------

    def _start_sender(self, out: _Outbound) -> None:
        assert self._nursery is not None
        scope = out.scope = trio.CancelScope()
        self._nursery.start_soon(self._dial_loop, out, scope)

    async def _dial_loop(self, out: _Outbound, scope: trio.CancelScope) -> None:
        with scope:
            delay = self._reconnect_min
            while True:
                host, port = out.address
                where = f"{host}:{port}"
                try:
                    with trio.fail_after(self._io_timeout):
                        stream = await trio.open_tcp_stream(host, port)
                except (OSError, trio.TooSlowError) as exc:
                    self.stats.dial_failures += 1
                    logger.debug(
                        "node %d: cannot reach peer %d at %s: %r",
                        self.node_id,
                        out.peer,
                        where,
                        exc,
                    )
                else:
                    try:
                        if await self._dial_session(stream, out, where):
                            delay = self._reconnect_min
                    except _RemovedError:
                        logger.info(
                            "node %d: peer %d at %s says this node was removed from the cluster",
                            self.node_id,
                            out.peer,
                            where,
                        )
                        if self._on_removed is not None:
                            try:
                                self._on_removed(out.peer)
                            except Exception:
                                self.stats.callback_errors += 1
                                logger.exception("node %d: on_removed failed", self.node_id)
                        return  # nobody will let a removed node in again
                    finally:
                        await trio.aclose_forcefully(stream)
                await trio.sleep(delay * (0.5 + self._rng.random() / 2))
                delay = min(delay * 2, self._reconnect_max)

    async def _dial_session(self, stream: trio.SocketStream, out: _Outbound, where: str) -> bool:
        """Authenticate and then send until the connection breaks; True if the
        handshake succeeded."""
        try:
            _set_nodelay(stream)
            decoder = FrameDecoder(max_frame=_HANDSHAKE_MAX_FRAME)
            with trio.fail_after(self._io_timeout):
                channel = await self._secure(stream, out.address[0])
                await self._dial_handshake(channel, out.peer, decoder)
        except (_HandshakeError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            self._auth_failed(f"handshake with peer {out.peer} at {where} failed", exc)
            return False
        self.stats.connections_out += 1
        logger.info("node %d: connected to peer %d at %s", self.node_id, out.peer, where)
        out.connected = True
        try:
            await self._send_session(stream, channel, out, where)
        finally:
            out.connected = False
            self._link_lost(out.peer)
        logger.info("node %d: connection to peer %d at %s is over", self.node_id, out.peer, where)
        return True

    async def _send_session(
        self, stream: trio.SocketStream, channel: trio.abc.Stream, out: _Outbound, where: str
    ) -> None:
        try:
            # Direct writes and the closed-connection probe use the socket itself, so
            # only without TLS.
            out.fd = stream.socket.fileno() if channel is stream else None
            out.probe = socket.socket(fileno=out.fd) if out.fd is not None else None
            await self._run_session(channel, out, where)
        finally:
            # A frame cut short by a direct write is worthless on the next connection.
            out.fd = None
            out.unsent = b""
            if out.probe is not None:
                out.probe.detach()  # the stream owns the descriptor and closes it
                out.probe = None

    async def _run_session(self, stream: trio.abc.Stream, out: _Outbound, where: str) -> None:
        async with trio.open_nursery() as nursery:
            out.session = nursery.cancel_scope
            out.last_sent = trio.current_time()
            nursery.start_soon(self._watch_for_close, stream, nursery.cancel_scope)
            try:
                await self._drain(stream, out)
            except (trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
                # Caught here, not around the nursery, so it is not wrapped in a group.
                logger.info(
                    "node %d: lost connection to peer %d at %s: %r",
                    self.node_id,
                    out.peer,
                    where,
                    exc,
                )
                nursery.cancel_scope.cancel()

    async def _secure(self, stream: trio.SocketStream, host: str | None = None) -> trio.abc.Stream:
        """``stream`` itself without TLS; else the TLS stream over it, handshake done
        (dialing when ``host`` is given: the acceptor's certificate must name it)."""
        if self._tls is None:
            return stream
        if host is None:
            secure = trio.SSLStream(stream, self._tls.server, server_side=True)
        else:
            secure = trio.SSLStream(stream, self._tls.client, server_hostname=host)
        await secure.do_handshake()
        return secure

    async def _dial_handshake(
        self, stream: trio.abc.Stream, peer: int, decoder: FrameDecoder
    ) -> None:
        nonce_a = secrets.token_bytes(_NONCE_BYTES)
        hello = {
            "type": "hello",
            "protocol": PROTOCOL,
            "cluster": self.cluster,
            "node": self.node_id,
            "nonce": nonce_a,
        }
        await stream.send_all(encode_frame(hello))
        try:
            frame = await _next_frame(stream, decoder)
        except _HandshakeError as exc:
            if decoder.buffered:
                raise
            # The acceptor hangs up without a word on anyone it will not talk to.
            raise _HandshakeError(
                f"{exc} (refused: wrong cluster name, or node {self.node_id} unknown to it?)"
            ) from None
        if isinstance(frame, dict) and frame.get("type") == "removed":
            notice = _expect(frame, "removed", _CHALLENGE)
            if notice["cluster"] != self.cluster or notice["node"] != peer:
                raise _HandshakeError("a removed notice for another cluster or node")
            expected = _mac(
                self._secret, b"removed", self.cluster, self.node_id, peer, nonce_a, notice["nonce"]
            )
            if not hmac.compare_digest(notice["mac"], expected):
                raise _HandshakeError("a removed notice with a bad MAC (wrong cluster secret?)")
            raise _RemovedError
        challenge = _expect(frame, "challenge", _CHALLENGE)
        if challenge["cluster"] != self.cluster:
            raise _HandshakeError(f"wrong cluster {challenge['cluster'][:80]!r}")
        if challenge["node"] != peer:
            raise _HandshakeError(f"expected node {peer}, it claims to be {challenge['node']}")
        nonce_b = challenge["nonce"]
        expected = _mac(
            self._secret, b"acceptor", self.cluster, self.node_id, peer, nonce_a, nonce_b
        )
        if not hmac.compare_digest(challenge["mac"], expected):
            raise _HandshakeError("bad MAC (wrong cluster secret?)")
        proof = _mac(self._secret, b"dialer", self.cluster, self.node_id, peer, nonce_a, nonce_b)
        await stream.send_all(encode_frame({"type": "proof", "mac": proof}))

    async def _drain(self, stream: trio.abc.Stream, out: _Outbound) -> None:
        # No cancel scope per write or per wait (they cost more than the write): the
        # liveness watchdog wakes us when a keepalive is due, and ends the session if a
        # write hangs for io_timeout.
        while True:
            if not out.queue and not out.unsent:
                out.wakeup = trio.Event()
                await out.wakeup.wait()
            if out.queue or out.unsent:
                # The rest of a frame a direct write cut short goes first.
                rest, out.unsent = out.unsent, b""
                batch, count = self._take_batch(out)
                if not rest and not count:
                    continue
                try:
                    await self._write(stream, out, rest + batch if rest else batch)
                except BaseException:
                    self.stats.frames_dropped += count
                    raise
                if count:
                    self.stats.frames_sent += count
                    self.stats.writes += 1
            else:
                await self._write(stream, out, KEEPALIVE)
                self.stats.keepalives_sent += 1

    async def _write(self, stream: trio.abc.Stream, out: _Outbound, data: bytes) -> None:
        out.sending_since = trio.current_time()
        try:
            await stream.send_all(data)
        finally:
            out.sending_since = None
        out.last_sent = trio.current_time()
        self.stats.bytes_sent += len(data)

    def _take_batch(self, out: _Outbound) -> tuple[bytes, int]:
        """As many queued frames as fit one write (at least one, unless all are stale).

        A frame queued more than ``max_queue_age`` ago is dropped instead: a peer that
        comes back after a long absence must not act on old requests (a forwarded
        write whose client was long since told the outcome is unknown) or old Raft
        traffic, which Raft would ignore anyway.
        """
        parts: list[bytes] = []
        size = 0
        oldest = trio.current_time() - self._max_queue_age
        while out.queue and (not parts or size + len(out.queue[0][1]) <= _MAX_BATCH_BYTES):
            queued_at, frame = out.queue.popleft()
            out.queued_bytes -= len(frame)
            if queued_at < oldest:
                self.stats.frames_dropped += 1
                continue
            parts.append(frame)
            size += len(frame)
        return b"".join(parts), len(parts)

    @staticmethod
    async def _watch_for_close(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        # The acceptor never writes after the handshake, so any read result means the
        # connection is over: notice at once instead of at the next failed write.
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.receive_some(1)
        scope.cancel()

    # --- Receiving ------------------------------------------------------------------

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        where = _remote(stream)
        source = where.rpartition(":")[0] or where
        try:
            if not self._pending.admit(source):
                self.stats.handshakes_refused += 1
                self._inbound_log.warning(
                    trio.current_time(),
                    "node %d: refused connection from %s: too many handshakes in progress",
                    self.node_id,
                    where,
                )
                return
            try:
                _set_nodelay(stream)
                decoder = FrameDecoder(max_frame=_HANDSHAKE_MAX_FRAME)
                with trio.fail_after(self._handshake_timeout):
                    channel = await self._secure(stream)
                    peer = await self._accept_handshake(channel, decoder)
            except _RemovedError:
                return  # logged once per node in _tell_removed
            except (_HandshakeError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
                self._auth_failed(f"refused connection from {where}", exc, self._inbound_log)
                return
            finally:
                self._pending.release(source)
            decoder.max_frame = self._max_frame
            await self._receive(channel, peer, decoder, where)
        finally:
            await trio.aclose_forcefully(stream)

    async def _accept_handshake(self, stream: trio.abc.Stream, decoder: FrameDecoder) -> int:
        hello = _expect(await _next_frame(stream, decoder), "hello", _HELLO)
        if hello["cluster"] != self.cluster:
            raise _HandshakeError(f"wrong cluster {hello['cluster'][:80]!r}")
        dialer: int = hello["node"]
        nonce_a = hello["nonce"]
        nonce_b = secrets.token_bytes(_NONCE_BYTES)
        if dialer in self.removed:
            await self._tell_removed(stream, dialer, nonce_a, nonce_b)
        if dialer not in self._outbound:
            raise _HandshakeError(f"unknown node id {dialer}")
        mac_b = _mac(
            self._secret, b"acceptor", self.cluster, dialer, self.node_id, nonce_a, nonce_b
        )
        challenge = {
            "type": "challenge",
            "protocol": PROTOCOL,
            "cluster": self.cluster,
            "node": self.node_id,
            "nonce": nonce_b,
            "mac": mac_b,
        }
        await stream.send_all(encode_frame(challenge))
        proof = _expect(await _next_frame(stream, decoder), "proof", _PROOF)
        expected = _mac(
            self._secret, b"dialer", self.cluster, dialer, self.node_id, nonce_a, nonce_b
        )
        if not hmac.compare_digest(proof["mac"], expected):
            raise _HandshakeError(f"node {dialer}: bad MAC (wrong cluster secret?)")
        if dialer not in self._outbound:
            raise _HandshakeError(f"node {dialer} was removed during the handshake")
        return dialer

    async def _tell_removed(
        self, stream: trio.abc.Stream, dialer: int, nonce_a: bytes, nonce_b: bytes
    ) -> None:
        """Answer a removed node's hello with the signed notice, then give up on it."""
        mac = _mac(self._secret, b"removed", self.cluster, dialer, self.node_id, nonce_a, nonce_b)
        notice = {
            "type": "removed",
            "protocol": PROTOCOL,
            "cluster": self.cluster,
            "node": self.node_id,
            "nonce": nonce_b,
            "mac": mac,
        }
        await stream.send_all(encode_frame(notice))
        self.stats.removed_refused += 1
        if dialer not in self._told_removed:
            self._told_removed.add(dialer)
            logger.info(
                "node %d: node %d was removed from the cluster; told it so", self.node_id, dialer
            )
        raise _RemovedError

    async def _receive(
        self, stream: trio.abc.Stream, peer: int, decoder: FrameDecoder, where: str
    ) -> None:
        # One inbound stream per peer: a newer one means the old one is stale (the peer
        # restarted, or its side of the old connection died without us noticing).
        previous = self._inbound.get(peer)
        if previous is not None:
            previous.cancel()
        scope = self._inbound[peer] = trio.CancelScope()
        self.stats.connections_in += 1
        logger.info("node %d: peer %d connected from %s", self.node_id, peer, where)
        try:
            with scope:
                # The liveness watchdog cancels ``scope`` if the stream stays silent
                # for idle_timeout (no cancel scope per read).
                self._last_received[peer] = trio.current_time()
                self._heard(peer)
                self._deliver(peer, decoder.feed())
                while True:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                    if not data:
                        logger.info(
                            "node %d: peer %d at %s closed its stream", self.node_id, peer, where
                        )
                        if self._inbound.get(peer) is scope:
                            # A node whose process died closes its streams at once (the
                            # kernel does it): suspect it now rather than after
                            # suspect_after of silence, so requests stop going there and
                            # groups it led elect a new leader sooner. A live peer that
                            # reconnects is heard from again at once.
                            self._suspect(peer)
                        return
                    self._last_received[peer] = trio.current_time()
                    self.stats.bytes_received += len(data)
                    self._heard(peer)
                    # A socket gives bytes; a TLS stream may give a bytearray.
                    chunk = data if isinstance(data, bytes) else bytes(data)
                    self._deliver(peer, decoder.feed(chunk))
        except FrameError as exc:
            logger.warning(
                "node %d: bad frame from peer %d at %s (%s); closing",
                self.node_id,
                peer,
                where,
                exc,
            )
        except (trio.BrokenResourceError, OSError) as exc:
            logger.info(
                "node %d: lost stream from peer %d at %s: %r", self.node_id, peer, where, exc
            )
        finally:
            if self._inbound.get(peer) is scope:
                del self._inbound[peer]
            self._link_lost(peer)

    def _deliver(self, peer: int, frames: list[object]) -> None:
        if peer in self.blocked:
            self.stats.frames_dropped += len(frames)
            return
        for frame in frames:
            self.stats.frames_received += 1
            try:
                self._on_frame(peer, frame)
            except Exception:
                self.stats.callback_errors += 1
                logger.exception(
                    "node %d: on_frame failed for a frame from peer %d", self.node_id, peer
                )
        if frames and self._on_delivered is not None:
            try:
                self._on_delivered(peer)
            except Exception:
                self.stats.callback_errors += 1
                logger.exception(
                    "node %d: on_delivered failed after frames from peer %d", self.node_id, peer
                )

    def _auth_failed(
        self, what: str, exc: BaseException, throttle: ThrottledLog | None = None
    ) -> None:
        self.stats.auth_failures += 1
        reason = (
            "handshake timed out" if isinstance(exc, trio.TooSlowError) else str(exc) or repr(exc)
        )
        if throttle is None:
            logger.warning("node %d: %s: %s", self.node_id, what, reason)
        else:
            throttle.warning(trio.current_time(), "node %d: %s: %s", self.node_id, what, reason)

    # --- Liveness -------------------------------------------------------------------

    def _heard(self, peer: int) -> None:
        if peer in self.blocked:
            return
        self._last_heard[peer] = trio.current_time()
        if peer not in self._reachable:
            self._reachable.add(peer)
            logger.info("node %d: peer %d is reachable", self.node_id, peer)

    async def _watch_liveness(self) -> None:
        """Every few hundredths of a second: suspect silent peers, close inbound streams
        that went silent, end sessions whose write hangs, and wake idle senders whose
        keepalive is due."""
        interval = min(self._heartbeat_interval / 2, self._suspect_after / 4)
        keepalive_due = self._heartbeat_interval - interval
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for peer in sorted(self._reachable):
                if now - self._last_heard.get(peer, now) > self._suspect_after:
                    self._suspect(peer)
            for peer, scope in list(self._inbound.items()):
                if now - self._last_received.get(peer, now) > self._idle_timeout:
                    logger.warning(
                        "node %d: peer %d went silent; closing its stream", self.node_id, peer
                    )
                    scope.cancel()
            for out in self._outbound.values():
                if not out.connected:
                    continue
                if out.sending_since is not None:
                    if now - out.sending_since > self._io_timeout and out.session is not None:
                        logger.info(
                            "node %d: a write to peer %d hung; dropping the connection",
                            self.node_id,
                            out.peer,
                        )
                        out.session.cancel()
                elif not out.queue and now - out.last_sent >= keepalive_due:
                    out.wakeup.set()

    def _link_lost(self, peer: int) -> None:
        if self._on_link_lost is None:
            return
        try:
            self._on_link_lost(peer)
        except Exception:
            self.stats.callback_errors += 1
            logger.exception("node %d: on_link_lost failed for peer %d", self.node_id, peer)

    def _suspect(self, peer: int) -> None:
        """``peer`` is unreachable from now on (until it is heard from again)."""
        self._last_heard[peer] = float("-inf")
        if peer not in self._reachable:
            return
        self._reachable.discard(peer)
        logger.info("node %d: peer %d is unreachable", self.node_id, peer)
        if self._on_suspect is not None:
            try:
                self._on_suspect(peer)
            except Exception:
                self.stats.callback_errors += 1
                logger.exception("node %d: on_suspect failed for peer %d", self.node_id, peer)
