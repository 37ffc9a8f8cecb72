"""The line-protocol server: trio at the edge, the sans-I/O protocol and the router inside.

One task reads each connection and turns bytes into events (``protocol.LineParser``);
commands run concurrently so a client that sends ahead is not held to one Raft round
per request; one writer task sends the replies strictly in request order. A bad line
(``ProtocolError``) takes its place in that order like any command. A ``PUT``, ``GET``
or ``DELETE`` with nothing to wait for costs no task: its one attempt
(``Router.start``) settles inside the host loop's turn, which only records the outcome
and queues the connection; after the turn, one server task (``answer_settled``) turns
every outcome recorded, on every connection, into its reply, and each connection's
replies are written in one go (the loop never formats or writes a reply). A
``CREATE`` with nothing to wait for costs no task either: it joins the node's next
registry entry of CREATEs (``Router.start_create``, ``runtime.create_batch``). Only
what that cannot settle goes to a task running the full router. Every other command
runs in a task.

Ordering within a connection is what a person expects from a terminal: a write (``PUT``,
``DELETE``) waits for earlier writes to the same key, for the last ``CREATE`` of its
bucket and for the last other command before it; a ``CREATE`` waits for earlier
commands on its bucket and for the last other command (not for ``CREATE``s of other
buckets, which go out together); any other command waits for every earlier command.
So ``PUT`` then ``GET`` on one connection always reads the write, a ``GET`` is never
overtaken by a later ``PUT``, and a ``PUT`` after ``CREATE`` finds the bucket.
Consecutive writes to different keys, and ``CREATE``s of different buckets, run
concurrently, which is what makes pipelining fast.

Bounded everywhere: at most ``max_in_flight`` replies per connection wait in its queue,
plus one batch of at most as many being written (the reader stops reading beyond that,
so a client that sends ahead without reading costs a bounded number of replies); a reply that cannot be written within
``send_timeout`` closes the connection (a client that never reads);
``max_connections`` clients at once (the next gets ``ERR BUSY`` and is closed); an
idle connection is closed after ``idle_timeout``. Replies are bounded in bytes too: a
connection stops reading, and a SCAN, KEYS, BUCKETS, STATUS or HELP waits before it
runs, while its unwritten replies exceed ``max_reply_bytes`` (or all connections'
exceed ``max_total_reply_bytes``), so a client that does not read stalls only itself;
SCAN and KEYS replies are cut to ``scan_limit`` rows and a quarter of the byte budget
and end with ``ERR MORE`` and the request that continues them.

Before authentication (with a password): a connection holds one of
``max_unauthenticated`` slots (at most ``max_unauthenticated_per_address`` per
address), not a client slot, and is closed after ``auth_timeout``; each wrong password
is answered more slowly, and the fifth closes the connection. Refusals and failures are
counted for STATUS and logged a few lines at a time (``boutique.admission``).

A connection never takes the server down: a command that raises is answered with an
error line (``ERR TIMEOUT`` for a write, whose outcome is then unknown), a client that
resets its connection cancels its own commands, and anything unforeseen is logged and
ends only that connection. After ``QUIT`` (or ``ERR BUSY``) the server shuts its side
and drains what the client still sends for a moment before closing, so the last reply
is not destroyed by a TCP reset.

A connection's life (reading, closing, over), its backpressure, its access and each
reply's progress are the state tables of ``connection_state``: every change goes
through them, so a change the tables do not allow fails loudly instead of answering a
client with the reply to another request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from boutique.admission import Admission, ThrottledLog
from boutique.config import ClusterConfig, NodeConfig
from boutique.runtime.admin import Admin, AdminError
from boutique.runtime.node import Node
from boutique.runtime.outcomes import Done, MaybeApplied, Outcome, Refused, classify
from boutique.runtime.peertls import client_port_context
from boutique.runtime.router import (
    Command,
    CommandRejected,
    DeadlinePassed,
    NotFound,
    OutcomeUnknown,
    Router,
    Unavailable,
)
from boutique.status import (
    GROUP_LIMIT,
    EdgeStatus,
    GroupStatus,
    NodeStatus,
    PeerEdgeStatus,
    RangeStatus,
)
from boutique.wire import ErrorCode, request_line

from . import commands as cmd
from .connection_state import (
    Access,
    AccessEvent,
    Answer,
    AnswerEvent,
    ConnectionState,
    FlowEvent,
    LifeEvent,
    answer_after,
)
from .node_metrics import NodeMetrics
from .protocol import (
    HELP_TEXT,
    Error,
    LineParser,
    Ok,
    Pairs,
    Pong,
    ProtocolError,
    Reply,
    Text,
    Value,
    Values,
    render,
)
from .protocol import NotFound as NotFoundReply
from .protocol import NotImplemented_ as NotImplementedReply

log = logging.getLogger("boutique.server")

MAX_IN_FLIGHT = 256
"""Replies a connection may have pending (running or waiting to be written)."""
SEND_TIMEOUT = 30.0
"""Seconds a reply may take to be written before the client counts as not reading."""
LINGER_TIMEOUT = 2.0
"""Seconds spent draining a client's input after the last reply, before closing."""
READ_CHUNK = 65536
AUTH_FAILURE_LIMIT = 5
"""Wrong passwords one connection may try; the last one's reply closes it."""
AUTH_FAILURE_DELAY = 0.25
"""Seconds the first wrong password's reply waits; each further one waits twice as long
(up to ``AUTH_FAILURE_DELAY_MAX``). The reader waits too, so guesses cannot pile up."""
AUTH_FAILURE_DELAY_MAX = 2.0
STATUS_GROUP_LIMIT = GROUP_LIMIT


class _Done:
    """Set once a command's reply is ready. Like ``trio.Event``, but a plain flag until
    someone waits on it: most never are, and an Event per command is measurable."""

    __slots__ = ("_event", "_flag")

    def __init__(self) -> None:
        self._flag = False
        self._event: trio.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._flag:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()


@dataclass(slots=True)
class _Slot:
    """One reply position in the connection's output order: the request it answers
    and when that was read (``time.perf_counter()``), for the metrics. ``state``
    changes only through ``connection_state.answer_after``; ``done`` wakes whoever
    waits for it to be answered."""

    event: cmd.Command | ProtocolError
    started: float
    done: _Done = field(default_factory=_Done)
    data: bytes = b""
    close_after: bool = False
    state: Answer = Answer.PENDING
    outcome: Outcome | None = None
    """What the host loop recorded for a task-free attempt, until the connection
    turns it into a reply (``_Connection._answer_settled``)."""

    def answered(self) -> None:
        self.state = answer_after(self.state, AnswerEvent.ANSWERED)
        self.done.set()


_OK_LINE = render(Ok())
_LARGE_REPLIES = (cmd.Scan, cmd.Keys, cmd.Buckets, cmd.Status, cmd.Help)
"""Commands whose reply may be large: they wait for reply room before they run."""


def _settled_reply(command: cmd.Command, outcome: Outcome) -> bytes | None:
    """The reply line(s) for one attempt's outcome, or None if the attempt settled
    nothing and the full router should take over (see ``LineServer.execute``)."""
    if isinstance(outcome, DeadlinePassed):
        return render(Error(ErrorCode.UNAVAILABLE, outcome.reason))
    match classify(outcome, may_apply=not isinstance(command, cmd.Get)):
        case Refused(failed):
            return render(Error(ErrorCode.SYNTAX, failed.message))
        case Done(reply):
            if not isinstance(command, cmd.Get):
                return _OK_LINE
            if reply is None or isinstance(reply, bytes):
                return render(Value(reply))
        case MaybeApplied(reason):
            return render(Error(ErrorCode.TIMEOUT, f"outcome unknown: {reason}"))
    return None


def _internal_error(command: cmd.Command) -> Error:
    """The reply for a command that failed in a way nobody foresaw. A write may have
    been proposed before it failed, so its outcome is unknown; anything else had no
    effect."""
    if isinstance(command, cmd.Put | cmd.Delete | cmd.Create | cmd.Drop):
        return Error(ErrorCode.TIMEOUT, "internal error: the outcome is unknown")
    return Error(ErrorCode.UNAVAILABLE, "internal error")


async def _close_gently(stream: trio.abc.Stream) -> None:
    """Shut our side, then read (and drop) what the client still sends until it closes
    or ``LINGER_TIMEOUT`` passes. Closing a socket with unread input makes the kernel
    send a reset, and a reset can destroy replies the client has not read yet. (TLS
    has no half close: there the close is the TLS close.)"""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_TIMEOUT):
        try:
            await stream.send_eof()
            while await stream.receive_some(READ_CHUNK):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class LineServer:
    """Serves the line protocol for one node.

    ``send_timeout`` and ``max_in_flight`` default to the module constants; tests make
    them small. ``live`` holds the connections being served (not the ones refused with
    ``ERR BUSY``), ``served`` counts commands run and ``refused`` connections refused.
    """

    def __init__(
        self,
        config: ClusterConfig,
        me: NodeConfig,
        node: Node,
        router: Router,
        *,
        send_timeout: float = SEND_TIMEOUT,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be positive")
        self.config = config
        self.me = me
        self.node = node
        self.router = router
        self.admin = Admin(node, router)
        self.send_timeout = send_timeout
        self.max_in_flight = max_in_flight
        self.live: set[_Connection] = set()
        self.served = 0
        self.refused = 0
        self.clients = 0
        """Authenticated connections (all of them, without a password): at most
        ``max_connections``."""
        self.unauthenticated = Admission(
            config.max_unauthenticated, config.max_unauthenticated_per_address
        )
        """With a password: connections that have not authenticated yet, which have
        their own small caps so that silent sockets cannot lock real clients out."""
        self.auth_failures = 0
        self.auth_timeouts = 0
        self.refusals = ThrottledLog(log)
        self.reply_bytes = 0
        """Reply bytes ready and not yet written, over every connection."""
        self.short_of_bytes: set[_Connection] = set()
        """Connections waiting for the server-wide reply budget to have room."""
        self.stopping = False
        """Set when the node drains: new commands get ``ERR UNAVAILABLE`` (certainly not
        applied), commands already taken on run to their answer."""
        self.metrics = NodeMetrics(self)
        """Counted for every reply; served over HTTP only with ``[metrics] port``."""
        self.removed = False
        """Set (with ``stopping``) when the cluster removed this node: the refusal says
        so, so a client knows to use another node rather than wait for this one."""

        self.closed = False
        self._to_answer: list[_Connection] = []
        """Connections with outcomes the host loop recorded, for ``answer_settled``."""
        self._answer_wanted = trio.Event()

    def account(self, change: int) -> None:
        """Reply bytes became ready (positive) or were written or dropped (negative)."""
        self.reply_bytes += change
        if (
            change < 0
            and self.short_of_bytes
            and self.reply_bytes < self.config.max_total_reply_bytes
        ):
            waiting, self.short_of_bytes = self.short_of_bytes, set()
            for connection in waiting:
                connection.bytes_freed()

    def busy(self) -> bool:
        """True while some connection has a command without its answer."""
        return any(c.in_flight.value < c.limit for c in self.live)

    async def close_connections(self, timeout: float) -> None:
        """The node stops: every connection reads no more, sends the replies it owes,
        then closes gently (a reset could destroy replies the client has not read).
        Returns when all are closed, or after ``timeout``."""
        self.closed = True
        for connection in list(self.live):
            connection.stop_reading()
        with trio.move_on_after(timeout):
            while self.live:
                await trio.sleep(0.01)

    @property
    def stopping_reply(self) -> bytes:
        if self.removed:
            return render(
                Error(ErrorCode.UNAVAILABLE, f"node {self.me.name} was removed from the cluster")
            )
        return render(Error(ErrorCode.UNAVAILABLE, f"node {self.me.name} is stopping"))

    @property
    def connections(self) -> int:
        """How many clients are being served now."""
        return len(self.live)

    def check_password(self, given: bytes) -> bool:
        """True if ``given`` is the password. Both sides are hashed first, so the
        comparison takes the same time whatever the guess, its length included."""
        password = self.config.password
        if password is None:
            return True
        want = hashlib.sha256(password.encode()).digest()
        return hmac.compare_digest(hashlib.sha256(given).digest(), want)

    def promote(self) -> bool:
        """An unauthenticated connection proved the password: it takes a client slot
        (False: none is free)."""
        if self.clients >= self.config.max_connections:
            self.refused += 1
            return False
        self.clients += 1
        return True

    async def serve(
        self,
        port: int | None = None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``config.listen_host`` and ``port`` (default: this node's client
        port; 0 lets the OS choose) until cancelled. ``task_status.started`` gets the
        port actually bound."""
        listen_port = self.me.client_port if port is None else port
        tls_files = self.config.client_tls_files(self.me.name)
        context = None if tls_files is None else client_port_context(*tls_files)
        listeners = await trio.open_tcp_listeners(listen_port, host=self.config.listen_host)
        actual: int = listeners[0].socket.getsockname()[1]
        served: list[trio.abc.Listener[Any]] = list(listeners)
        if context is not None:
            # The TLS handshake happens in the connection's first read, so a client
            # that never finishes it is bound by the same timeouts as a silent one.
            served = [trio.SSLListener(listener, context) for listener in listeners]
            log.info("clients connect with TLS on port %d", actual)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_connections)
            nursery.start_soon(self.answer_settled)
            await nursery.start(trio.serve_listeners, self._handle, served)
            task_status.started(actual)

    def settled_on(self, connection: _Connection) -> None:
        """``connection`` has an outcome to answer (called inside the host loop's turn):
        ``answer_settled`` will turn it into a reply after the turn."""
        self._to_answer.append(connection)
        self._answer_wanted.set()

    async def answer_settled(self) -> None:
        """Turn the outcomes the host loop recorded into replies, for every connection
        that has some, once per turn of the loop: one task wakes per turn instead of
        one writer per connection (waking a task costs about what formatting and
        writing its reply does). Writing stays the connection's business: a reply the
        socket does not take at once goes to that connection's writer. Runs for the
        server's life: ``serve`` starts it, and so must whoever else hands this server
        connections (``_handle``)."""
        while True:
            await self._answer_wanted.wait()
            self._answer_wanted = trio.Event()
            ready, self._to_answer = self._to_answer, []
            for connection in ready:
                connection.answer_recorded()

    async def _watch_connections(self) -> None:
        """Close idle connections and connections whose client does not read. One task
        checks them all a few times per timeout, instead of a cancel scope around every
        read and every write (which costs more than the request itself)."""
        idle = self.config.idle_timeout or math.inf
        auth = self.config.auth_timeout if self.config.password is not None else math.inf
        period = min(1.0, idle / 8, self.send_timeout / 8, auth / 8)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for connection in list(self.live):
                connection.check_timeouts(now, idle, self.send_timeout, auth)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        # trio.serve_listeners lets a handler's exception crash the whole server, so
        # nothing may escape from here but cancellation.
        gentle = False
        source = _source(stream)
        try:
            refusal = self._admit(source)
            if refusal is not None:
                self.refused += 1
                self.refusals.warning(
                    trio.current_time(), "refused a client from %s: %s", source, refusal
                )
                gentle = True
                with trio.move_on_after(self.send_timeout):
                    await stream.send_all(render(Error(ErrorCode.BUSY, refusal)))
                return
            connection = _Connection(self, stream, source)
            self.live.add(connection)
            if self.closed:
                connection.stop_reading()
            try:
                await connection.run()
            finally:
                self.live.discard(connection)
                if connection.authed:
                    self.clients -= 1
                else:
                    self.unauthenticated.release(source)
            gentle = connection.state.gentle
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            gentle = False
        except Exception:
            gentle = False
            log.exception("a client connection failed; closing it")
        finally:
            if gentle:
                await _close_gently(stream)
            await trio.aclose_forcefully(stream)

    def _admit(self, source: str) -> str | None:
        """Take a slot for a new connection from ``source``: a client slot without a
        password, an unauthenticated one with. The reason for refusing, or None."""
        if self.config.password is None:
            if self.clients >= self.config.max_connections:
                return "too many connections"
            self.clients += 1
            return None
        if not self.unauthenticated.admit(source):
            return "too many connections waiting to authenticate"
        return None

    # --- Executing commands ---------------------------------------------------------------

    async def execute(self, command: cmd.Command) -> Reply:
        """Run one command and class any failure as the wire contract says."""
        router = self.router
        try:
            match command:
                case cmd.Put(bucket, key, value):
                    await router.put(bucket, key, value)
                    return Ok()
                case cmd.Get(bucket, key):
                    return Value(await router.get(bucket, key))
                case cmd.Delete(bucket, key):
                    await router.delete(bucket, key)
                    return Ok()
                case cmd.Create(bucket):
                    await router.create(bucket)
                    return Ok()
                case cmd.Drop(bucket):
                    await router.drop(bucket)
                    return Ok()
                case cmd.Keys(bucket, prefix, limit, start):
                    want = self._rows_wanted(limit)
                    if start:
                        keys = await router.keys(bucket, prefix, want, start)
                    else:
                        keys = await router.keys(bucket, prefix, want)
                    keys, rest = self._page(keys, limit, len)
                    if rest is None:
                        return Values(keys)
                    args = [bucket.encode(), prefix or b"", keys[-1] + b"\0"]
                    return Values(keys, _continue(b"KEYS", args, rest, len(keys)))
                case cmd.Scan(bucket, start, end, limit):
                    pairs = await router.scan(bucket, start, end, self._rows_wanted(limit))
                    pairs, rest = self._page(pairs, limit, lambda p: len(p[0]) + len(p[1]))
                    if rest is None:
                        return Pairs(pairs)
                    args = [bucket.encode(), pairs[-1][0] + b"\0", end or b""]
                    return Pairs(pairs, _continue(b"SCAN", args, rest, len(pairs)))
                case cmd.Buckets():
                    return Values(await router.buckets())
                case cmd.Ping():
                    return Pong()
                case cmd.Help():
                    return Text(HELP_TEXT)
                case cmd.Status(as_json=True):
                    return Text([self.status_snapshot().to_json()])
                case cmd.Status():
                    return Text(self.status_lines())
                case cmd.Quit() | cmd.Auth():
                    return Ok()  # the connection answers these itself
                case cmd.Admin(action, args):
                    try:
                        return Text(await self.admin.execute(action, args))
                    except AdminError as exc:
                        return Error(ErrorCode(exc.code), exc.message)
                case cmd.Fault(action, nodes):
                    return self.fault(action, nodes)
        except NotFound:
            return NotFoundReply()
        except Unavailable as exc:
            return Error(ErrorCode.UNAVAILABLE, str(exc) or "no leader reachable")
        except OutcomeUnknown as exc:
            return Error(ErrorCode.TIMEOUT, f"outcome unknown: {exc}")
        except CommandRejected as exc:
            return Error(ErrorCode.SYNTAX, exc.failed.message)
        except Exception:
            log.exception("internal error running %r", command)
            return _internal_error(command)
        raise AssertionError(f"unhandled command {command!r}")

    def _rows_wanted(self, limit: int | None) -> int:
        """How many rows to read for a SCAN or KEYS asking for ``limit``: the limit
        if the server allows that many, else one more than it allows (to tell whether
        the reply has to be cut)."""
        cap = self.config.scan_limit
        return limit if limit is not None and limit <= cap else cap + 1

    def _page(
        self, rows: list[_Row], limit: int | None, size: Callable[[_Row], int]
    ) -> tuple[list[_Row], int | None]:
        """``rows`` cut to the server's row limit and byte budget. The second item is
        None when nothing was cut, else the rows the request still wanted after these
        (0: as many as there are)."""
        cap = self.config.scan_limit
        cut = len(rows) > cap and (limit is None or limit > cap)
        rows = rows[:cap] if cut else rows
        # Raw bytes, not rendered ones: quoting at most quadruples a row, so a page
        # of a quarter of the connection's budget renders within the budget.
        budget = self.config.max_reply_bytes // 4
        total = 0
        for i, row in enumerate(rows):
            total += size(row) + 4
            if total > budget and i > 0:
                rows, cut = rows[:i], True
                break
        if not cut:
            return rows, None
        return rows, 0 if limit is None else limit - len(rows)

    def fault(self, action: str, nodes: tuple[str, ...]) -> Reply:
        """Cut or heal this node's links to peers (distributed tests only)."""
        if not self.config.fault_injection:
            return NotImplementedReply()
        by_name = {n.name: n.id for n in self.config.nodes}
        unknown = [name for name in nodes if name not in by_name]
        if unknown:
            return Error(ErrorCode.SYNTAX, f"unknown node {unknown[0]}")
        transport = self.node.transport
        if transport is None:
            return Error(ErrorCode.UNAVAILABLE, "node not started")
        if action == "HEAL":
            transport.blocked.clear()
        else:
            transport.blocked.update(by_name[name] for name in nodes)
        log.warning("fault injection: links to %s now cut", sorted(transport.blocked) or "nobody")
        return Ok()

    def status_lines(self) -> list[str]:
        """The STATUS text reply (see ``boutique.status``)."""
        return self.status_snapshot().to_lines()

    def status_snapshot(self) -> NodeStatus:
        """What STATUS and STATUS JSON report, taken now."""
        status = self.node.status(group_limit=STATUS_GROUP_LIMIT)
        config = self.config
        names = {n.id: n.name for n in config.nodes}
        transport = self.node.transport
        peer_edge = None
        if transport is not None:
            stats = transport.stats
            peer_edge = PeerEdgeStatus(stats.handshakes_refused, stats.auth_failures)
        groups: dict[str, dict[str, Any]] = status["groups"]
        counts: dict[str, int] = status["group_counts"]
        return NodeStatus(
            node=status["node"],
            id=status["id"],
            cluster=config.cluster_name,
            clients=self.clients,
            max_connections=config.max_connections,
            edge=EdgeStatus(
                unauthenticated=self.unauthenticated.count,
                max_unauthenticated=config.max_unauthenticated,
                refused=self.refused,
                auth_failures=self.auth_failures,
                auth_timeouts=self.auth_timeouts,
            ),
            peer_edge=peer_edge,
            loop=dict(status["counters"]),
            peers=dict(status["peers"]),
            ranges=tuple(
                RangeStatus(rng.id, tuple(names.get(r, str(r)) for r in rng.replicas))
                for rng in config.ranges
            ),
            quarantined=dict(status["quarantined"]),
            groups=tuple(
                GroupStatus(
                    id=group_id,
                    role=g["role"],
                    leader=names.get(g["leader"]),
                    term=g["term"],
                    commit=g["commit"],
                    applied=g["applied"],
                    quiet=bool(g["quiet"]),
                )
                for group_id, g in groups.items()
            ),
            groups_total=counts["total"],
            groups_quiet=counts["quiet"],
            group_counts=dict(counts),
        )


class _Connection:
    """One client connection: a reader, command tasks, and an ordered writer. Its life,
    backpressure, access and each reply's progress are ``state`` (and ``_Slot.state``),
    changed only through the tables in ``connection_state``."""

    def __init__(self, server: LineServer, stream: trio.abc.Stream, source: str) -> None:
        self.server = server
        self.stream = stream
        self.source = source
        """The client's address, as the per-address limits count it."""
        self.parser = LineParser(server.config.max_line)
        self.state = ConnectionState(authenticated=server.config.password is None)
        self.auth_failures = 0
        self.opened = trio.current_time()
        self.reply_bytes = 0
        """Bytes of this connection's replies that are ready and not yet written."""
        self._bytes_room = trio.Event()
        limit = server.max_in_flight
        # Every event takes a slot, so the queue bounds the replies held in memory;
        # the semaphore bounds the command tasks among them.
        self.replies: deque[_Slot] = deque()
        """Reply positions not yet written, in request order."""
        self.limit = limit
        self._room = trio.Event()
        self.in_flight = trio.Semaphore(limit)
        self._fd = _socket_fd(stream)
        """The socket to write ready replies to at once (None: always via the writer)."""
        self._writing = False
        """True while the writer task owns the socket (a write would block, or no fd)."""
        self._unsent = b""
        self._close_after_unsent = False
        self._writer_wanted = trio.Event()
        """Wakes the writer task: replies to write, outcomes to answer, or the end."""
        self._settled: list[_Slot] = []
        """Slots whose outcome the host loop recorded, in the order it did."""
        self._queued_to_answer = False
        """True while this connection waits in the server's ``answer_settled`` queue."""
        self._nursery: trio.Nursery | None = None
        self._input_done = False
        """True once the reader task returned: no slot will be added any more."""
        self.last_by_key: dict[tuple[str, bytes], _Done] = {}
        self.last_create: dict[str, _Done] = {}
        """Bucket -> the last CREATE of it: later writes to the bucket wait for it."""
        self.earlier: deque[_Done] = deque()
        """Commands not known to be finished, oldest first (pruned from the front)."""
        self._barriers: list[_Done] = []
        self._cancel: trio.CancelScope | None = None
        self._reading = trio.CancelScope()
        self.receiving = False
        self.last_received = trio.current_time()
        self.sending_since: float | None = None
        """When the write in progress started (None: not writing)."""

    @property
    def authed(self) -> bool:
        """Whether the client holds a client slot (proved the password, or none is set)."""
        return self.state.authenticated

    @property
    def backlog(self) -> int:
        """Replies queued and not yet written."""
        return len(self.replies)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                self._nursery = nursery
                nursery.start_soon(self._writer)
                await self._reader(nursery)
                # No more requests: the replies still pending are sent, then the writer
                # returns and the nursery ends.
                self._input_done = True
                self._writer_wanted.set()
        finally:
            if not self.state.over:
                self.state.fire(LifeEvent.FAILED)  # cancelled from outside, or a bug
            self.server.account(-self.reply_bytes)
            self.reply_bytes = 0

    def _account(self, change: int) -> None:
        if self.state.over:
            return  # a late reply for a connection that is gone
        self.reply_bytes += change
        self.server.account(change)
        if change < 0:
            self.bytes_freed()

    def bytes_freed(self) -> None:
        """Replies were written: whoever waits for reply room may look again."""
        self._room.set()
        self._bytes_room.set()

    def _has_byte_room(self) -> bool:
        """Whether another reply may be produced now. A connection with nothing
        waiting to be written always may (one reply at a time cannot be refused);
        otherwise it must be under its own budget and the server under the total."""
        if self.reply_bytes == 0:
            return True
        config = self.server.config
        if self.reply_bytes >= config.max_reply_bytes:
            return False
        if self.server.reply_bytes >= config.max_total_reply_bytes:
            self.server.short_of_bytes.add(self)
            return False
        return True

    async def _wait_for_byte_room(self) -> None:
        """Before a command whose reply may be large: wait until the replies already
        made have been written down to the budgets. Only this client waits; a client
        that does not read holds at most its budget (plus this one reply)."""
        while not self._has_byte_room():
            if self._bytes_room.is_set():
                self._bytes_room = trio.Event()
            await self._bytes_room.wait()

    def stop_reading(self) -> None:
        """Read no more requests; answer those read, then close gently."""
        self.state.fire(LifeEvent.STOP)
        if self.receiving:
            self._reading.cancel()

    def _abandon(self, why: LifeEvent) -> None:
        """Nobody can receive replies any more: cancel the commands and the writer."""
        self.state.fire(why)
        assert self._cancel is not None
        self._cancel.cancel()

    def check_timeouts(
        self, now: float, idle: float, send_timeout: float, auth_timeout: float
    ) -> None:
        """Called now and then by the server's watchdog."""
        state = self.state
        if state.over:
            return  # its tasks are unwinding
        if state.access is Access.UNAUTHENTICATED and now - self.opened >= auth_timeout:
            # A connection that never authenticates holds a slot for nothing: it gets
            # a few seconds, not the idle timeout.
            self.server.auth_timeouts += 1
            self.server.refusals.warning(
                now, "closing a client from %s that did not authenticate", self.source
            )
            state.fire(AccessEvent.AUTH_TIMEOUT)
            self._abandon(LifeEvent.AUTH_TIMEOUT)
            return
        if state.takes_requests and self.receiving and now - self.last_received >= idle:
            log.info("closing an idle connection")
            state.fire(LifeEvent.IDLE)
            self._reading.cancel()
        if self.sending_since is not None and now - self.sending_since >= send_timeout:
            log.info("closing a connection whose client does not read its replies")
            self._abandon(LifeEvent.SEND_TIMEOUT)

    async def _reader(self, nursery: trio.Nursery) -> None:
        # The watchdog cancels ``_reading`` only while we wait for the client in
        # receive_some (never while a full reply queue holds us back).
        state = self.state
        with self._reading:
            while state.takes_requests:
                self.receiving = True
                try:
                    data = await self.stream.receive_some(READ_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # Reset by the client: no one left to answer.
                    self._abandon(LifeEvent.RESET)
                    return
                finally:
                    self.receiving = False
                if not state.takes_requests:
                    return  # stopped, or idle, while this read came in: drop it
                self.last_received = trio.current_time()
                if not data:
                    # The client shut its side; pending replies are still sent.
                    state.fire(LifeEvent.END_OF_INPUT)
                    return
                self.parser.feed(data)
                for event in self.parser.events():
                    await self._dispatch(event, nursery)
                    if not state.takes_requests:
                        return

    async def _dispatch(self, event: cmd.Command | ProtocolError, nursery: trio.Nursery) -> None:
        slot = _Slot(event, time.perf_counter())
        # A bound on replies by count and by bytes: past either, stop reading.
        if len(self.replies) >= self.limit or not self._has_byte_room():
            self.state.fire(FlowEvent.OUT_OF_ROOM)
            while len(self.replies) >= self.limit or not self._has_byte_room():
                self._room = trio.Event()
                await self._room.wait()
            self.state.fire(FlowEvent.ROOM)
        self.replies.append(slot)
        if isinstance(event, ProtocolError):
            self._finish(slot, event.data)
        elif isinstance(event, cmd.Quit):
            # The writer sends replies in order, so OK goes out after every earlier
            # reply; waiting here keeps the reader from reading past the QUIT.
            self.state.fire(LifeEvent.QUIT)
            await self._wait_all()
            slot.close_after = True
            self._finish(slot, render(Ok()))
        elif isinstance(event, cmd.Auth):
            await self._auth(event, slot)
        elif not self.authed and not isinstance(event, cmd.Ping | cmd.Help):
            self._finish(slot, render(Error(ErrorCode.AUTH, "authenticate first: AUTH password")))
        elif self.server.stopping:
            self._finish(slot, self.server.stopping_reply)
        else:
            try:
                # No checkpoint when there is room: a pipelined batch is dispatched
                # without a trip through the scheduler per command.
                self.in_flight.acquire_nowait()
            except trio.WouldBlock:
                await self.in_flight.acquire()
            deps = self._dependencies(event, slot.done)
            if deps or not self._start_simple(event, slot):
                nursery.start_soon(self._run_command, event, slot, deps)

    def _start_simple(self, command: cmd.Command, slot: _Slot) -> bool:
        """PUT, GET, DELETE or CREATE with nothing to wait for, without a task: a key
        command's one attempt through ``Router.start``, a CREATE in the node's next
        batch of CREATEs (``Router.start_create``). Its outcome comes back inside the
        host loop's turn, which only records it and queues this connection for the
        server's ``answer_settled``: formatting and writing are the server's work
        after the turn, not the loop's (``_answer_settled``)."""
        request: Command | None
        match command:
            case cmd.Put(bucket, key, value):
                request = ("put", key, value)
            case cmd.Delete(bucket, key):
                request = ("delete", key)
            case cmd.Get(bucket, key):
                request = ("get", key)
            case cmd.Create(bucket):
                request = None
            case _:
                return False

        def settled(outcome: Outcome) -> None:
            if self.state.over:
                return  # nobody left to answer
            slot.outcome = outcome
            slot.state = answer_after(slot.state, AnswerEvent.OUTCOME)
            self._settled.append(slot)
            if not self._queued_to_answer:
                self._queued_to_answer = True
                self.server.settled_on(self)

        if request is None:
            started = self.server.router.start_create(bucket, settled)
        else:
            started = self.server.router.start(bucket, request, settled)
        if self._settled:
            # Settled at once (or others were, by the loop): this is the connection's
            # own task, so answer now, before the next command looks for what to wait for.
            self._answer_settled()
        return started

    def answer_recorded(self) -> None:
        """The server's ``answer_settled`` reached this connection: answer what the
        host loop recorded since (nothing, if the connection's own task was first)."""
        self._queued_to_answer = False
        if self._settled and not self.state.over:
            try:
                self._answer_settled()
            except Exception:
                # A bug here must end this connection only, not the server's task
                # that answers every connection.
                log.exception("answering a client from %s failed; closing it", self.source)
                self._abandon(LifeEvent.FAILED)

    def _answer_settled(self) -> None:
        """Turn the outcomes the host loop recorded into replies (one write for all of
        them, by ``_flush``). Whatever an attempt could not settle (a rejection, a
        read's unknown outcome) goes to a task with the full router."""
        settled, self._settled = self._settled, []
        for slot in settled:
            assert isinstance(slot.event, cmd.Command) and slot.outcome is not None
            reply = _settled_reply(slot.event, slot.outcome)
            slot.outcome = None
            if reply is None:
                slot.state = answer_after(slot.state, AnswerEvent.RETRY)
                assert self._nursery is not None
                self._nursery.start_soon(self._run_command, slot.event, slot, [])
            else:
                slot.data = reply
                self._answer(slot)
        self._flush()

    def _finish(self, slot: _Slot, data: bytes) -> None:
        slot.data = data
        self.server.metrics.answered(slot.event, slot.started, data)
        self._account(len(data))
        slot.answered()
        self._flush()

    async def _auth(self, event: cmd.Auth, slot: _Slot) -> None:
        server = self.server
        state = self.state
        if server.check_password(event.password):
            if not state.authenticated:
                if not server.promote():
                    state.fire(AccessEvent.NO_CLIENT_SLOT)
                    await self._close_with(slot, Error(ErrorCode.BUSY, "too many connections"))
                    return
                server.unauthenticated.release(self.source)
            state.fire(AccessEvent.PASSWORD_OK)
            self._finish(slot, _OK_LINE)
            return
        # A guess costs time, and only a few are allowed: the reader waits here, so
        # guesses sent ahead are not even read until this one is answered.
        server.auth_failures += 1
        self.auth_failures += 1
        delay = AUTH_FAILURE_DELAY * 2 ** (self.auth_failures - 1)
        await trio.sleep(min(delay, AUTH_FAILURE_DELAY_MAX))
        if self.auth_failures >= AUTH_FAILURE_LIMIT:
            state.fire(AccessEvent.LAST_WRONG_PASSWORD)
            server.refusals.warning(
                trio.current_time(),
                "closing a client from %s after %d wrong passwords",
                self.source,
                self.auth_failures,
            )
            await self._close_with(slot, Error(ErrorCode.AUTH, "wrong password; closing"))
            return
        state.fire(AccessEvent.WRONG_PASSWORD)
        self._finish(slot, render(Error(ErrorCode.AUTH, "wrong password")))

    async def _close_with(self, slot: _Slot, reply: Reply) -> None:
        """Answer ``slot`` with ``reply`` after every earlier reply, then close."""
        self.state.fire(LifeEvent.REFUSE)
        await self._wait_all()
        slot.close_after = True
        self._finish(slot, render(reply))

    def _dependencies(self, command: cmd.Command, done: _Done) -> list[_Done]:
        """What this command must wait for (see the module docstring)."""
        earlier = self.earlier
        while earlier and earlier[0].is_set():
            earlier.popleft()
        if isinstance(command, cmd.Put | cmd.Delete):
            key = (command.bucket, command.key)
            created = self.last_create.get(command.bucket)
            deps = [
                e for e in (self.last_by_key.get(key), created, *self._barriers) if e is not None
            ]
            deps = [e for e in deps if not e.is_set()]  # nothing to wait for: no task
            self.last_by_key[key] = done
            if len(self.last_by_key) > 4 * self.server.max_in_flight:
                self.last_by_key = {k: e for k, e in self.last_by_key.items() if not e.is_set()}
        elif isinstance(command, cmd.Create):
            # A barrier for its own bucket only: CREATEs of other buckets neither wait
            # for it nor hold it up, so they go out together (in one registry entry).
            # The last write to each key stands for every earlier one to that key.
            bucket = command.bucket
            on_bucket = [e for (b, _), e in self.last_by_key.items() if b == bucket]
            deps = [
                e
                for e in (self.last_create.get(bucket), *self._barriers, *on_bucket)
                if e is not None and not e.is_set()
            ]
            self.last_create[bucket] = done
            if len(self.last_create) > 4 * self.server.max_in_flight:
                self.last_create = {b: e for b, e in self.last_create.items() if not e.is_set()}
        else:
            deps = [e for e in earlier if not e.is_set()]
            self._barriers = [done]
        earlier.append(done)
        return deps

    async def _wait_all(self) -> None:
        for event in list(self.earlier):
            await event.wait()

    async def _run_command(self, command: cmd.Command, slot: _Slot, deps: list[_Done]) -> None:
        try:
            for dep in deps:
                await dep.wait()
            if isinstance(command, _LARGE_REPLIES):
                await self._wait_for_byte_room()
            try:
                slot.data = render(await self.server.execute(command))
            except Exception:
                # A reply that cannot be rendered (or a bug in execute) still gets one
                # line in its place, or every later reply would answer the wrong request.
                log.exception("internal error answering %r", command)
                slot.data = render(_internal_error(command))
        finally:
            self._command_done(slot)

    def _command_done(self, slot: _Slot) -> None:
        """A command has its reply in ``slot``: send what is ready."""
        self._answer(slot)
        self._flush()

    def _answer(self, slot: _Slot) -> None:
        """``slot`` has its reply: the writer may send it, and the command no longer
        counts against ``max_in_flight``."""
        self.server.metrics.answered(slot.event, slot.started, slot.data)
        self._account(len(slot.data))
        slot.answered()
        self.in_flight.release()
        self.server.served += 1

    def _take_ready(self) -> tuple[bytes, bool]:
        """The replies at the head of the queue that are done, joined (one write for a
        pipelined batch), and whether the connection closes after them."""
        replies = self.replies
        chunks = []
        close = False
        while replies and replies[0].state is Answer.READY:
            slot = replies.popleft()
            slot.state = answer_after(slot.state, AnswerEvent.WRITTEN)
            chunks.append(slot.data)
            if slot.close_after:
                close = True
                break
        if chunks:
            self._room.set()
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), close

    def _flush(self) -> None:
        """Write the replies that are ready, in order. Straight from the connection's
        task that made them (reader, command task, or writer) while the socket takes
        them: waking the writer task per reply costs more than the write. What the
        socket does not take at once (or every reply, without a socket) goes to the
        writer task, which owns the socket until it has sent all that is ready. Never
        called from the host loop's turn (see ``_start_simple``)."""
        if self._writing or self.state.over:
            return
        data, close = self._take_ready()
        if data and self._fd is not None:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._abandon(LifeEvent.RESET)  # no one left to answer
                return
            self._account(-sent)
            data = data[sent:]
            if not data and close:
                self._quit_done()
                return
        if data:
            self._unsent, self._close_after_unsent = data, close
            self._writing = True
            self._writer_wanted.set()
        elif self._input_done and not self.replies:
            self._writer_wanted.set()  # nothing left to send: the writer may return

    def _quit_done(self) -> None:
        """The last reply (to QUIT, or a refusal) is written: close gently (see
        ``LineServer._handle``); the cancel only ends tasks with nothing left to do."""
        self.state.fire(LifeEvent.ALL_WRITTEN)
        assert self._cancel is not None
        self._cancel.cancel()

    async def _writer(self) -> None:
        while True:
            if self._settled:
                self._answer_settled()
            if self._writing:
                data, close = self._unsent, self._close_after_unsent
                self._unsent = b""
                self.sending_since = trio.current_time()
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._abandon(LifeEvent.RESET)
                    return
                finally:
                    self.sending_since = None
                self._account(-len(data))
                if close:
                    self._quit_done()
                    return
                self._unsent, self._close_after_unsent = self._take_ready()
                self._writing = bool(self._unsent)
                continue
            if self._input_done and not self.replies:
                # Not if the connection ended while this task was already woken.
                if not self.state.over:
                    self.state.fire(LifeEvent.ALL_WRITTEN)
                return
            self._writer_wanted = trio.Event()
            await self._writer_wanted.wait()


_Row = TypeVar("_Row")


def _continue(name: bytes, args: list[bytes], rest: int, rows: int) -> str:
    """The ``ERR MORE`` message of a cut reply: the request that reads on from it."""
    if rest:
        args = [*args, str(rest).encode()]
    line = request_line(name, *args).rstrip().decode("utf-8", "backslashreplace")
    return f"reply cut after {rows} rows; continue with: {line}"


def _source(stream: trio.abc.Stream) -> str:
    """The client's address without the port: what per-address limits count."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    try:
        return str(stream.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError, IndexError, TypeError):
        return "<unknown>"


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    """The file descriptor of a socket stream (non-blocking, as trio leaves it)."""
    socket = getattr(stream, "socket", None)
    return socket.fileno() if socket is not None else None
