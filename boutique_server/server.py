"""The line-protocol server: trio at the edge, the sans-I/O protocol and the router inside.

One task reads each connection and turns bytes into events (``protocol.LineParser``);
commands run concurrently so a client that sends ahead is not held to one Raft round
per request; one writer task sends the replies strictly in request order. A bad line
(``ProtocolError``) takes its place in that order like any command. A ``PUT``, ``GET``
or ``DELETE`` with nothing to wait for costs no task: its one attempt
(``Router.start``) is answered from the host loop, and only what that attempt cannot
settle goes to a task running the full router. Every other command runs in a task.

Ordering within a connection is what a person expects from a terminal: a write (``PUT``,
``DELETE``) waits for earlier writes to the same key and for the last other command
before it; any other command waits for every earlier command. So ``PUT`` then ``GET``
on one connection always reads the write, a ``GET`` is never overtaken by a later
``PUT``, and a ``PUT`` after ``CREATE`` finds the bucket. Consecutive writes to
different keys run concurrently, which is what makes pipelining fast.

Bounded everywhere: at most ``max_in_flight`` replies per connection wait in its queue,
plus one batch of at most as many being written (the reader stops reading beyond that,
so a client that sends ahead without reading costs a bounded number of replies); a reply that cannot be written within
``send_timeout`` closes the connection (a client that never reads);
``max_connections`` clients at once (the next gets ``ERR BUSY`` and is closed); an
idle connection is closed after ``idle_timeout``.

A connection never takes the server down: a command that raises is answered with an
error line (``ERR TIMEOUT`` for a write, whose outcome is then unknown), a client that
resets its connection cancels its own commands, and anything unforeseen is logged and
ends only that connection. After ``QUIT`` (or ``ERR BUSY``) the server shuts its side
and drains what the client still sends for a moment before closing, so the last reply
is not destroyed by a TCP reset.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

from boutique.config import ClusterConfig, NodeConfig
from boutique.machine import CommandFailed
from boutique.runtime.admin import Admin, AdminError
from boutique.runtime.group import Applied, Outcome, Unknown
from boutique.runtime.node import Node
from boutique.runtime.router import (
    CommandRejected,
    NotFound,
    OutcomeUnknown,
    Router,
    Unavailable,
)
from boutique.wire import ErrorCode

from . import commands as cmd
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
STATUS_GROUP_LIMIT = 50


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
    """One reply position in the connection's output order."""

    done: _Done = field(default_factory=_Done)
    data: bytes = b""
    close_after: bool = False


_OK_LINE = render(Ok())


def _settled_reply(command: cmd.Command, outcome: Outcome) -> bytes | None:
    """The reply line(s) for one attempt's outcome, or None if the attempt settled
    nothing and the full router should take over (see ``LineServer.execute``)."""
    match outcome:
        case Applied(CommandFailed() as failed):
            return render(Error(ErrorCode.SYNTAX, failed.message))
        case Applied(reply):
            if isinstance(command, cmd.Get):
                return render(Value(reply if reply is None else bytes(reply)))
            return _OK_LINE
        case Unknown(reason) if not isinstance(command, cmd.Get):
            return render(Error(ErrorCode.TIMEOUT, f"outcome unknown: {reason}"))
    return None


def _internal_error(command: cmd.Command) -> Error:
    """The reply for a command that failed in a way nobody foresaw. A write may have
    been proposed before it failed, so its outcome is unknown; anything else had no
    effect."""
    if isinstance(command, cmd.Put | cmd.Delete | cmd.Create | cmd.Drop):
        return Error(ErrorCode.TIMEOUT, "internal error: the outcome is unknown")
    return Error(ErrorCode.UNAVAILABLE, "internal error")


async def _close_gently(stream: trio.abc.HalfCloseableStream) -> None:
    """Shut our side, then read (and drop) what the client still sends until it closes
    or ``LINGER_TIMEOUT`` passes. Closing a socket with unread input makes the kernel
    send a reset, and a reset can destroy replies the client has not read yet."""
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
        self.stopping = False
        """Set when the node drains: new commands get ``ERR UNAVAILABLE`` (certainly not
        applied), commands already taken on run to their answer."""

        self.closed = False

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
        return render(Error(ErrorCode.UNAVAILABLE, f"node {self.me.name} is stopping"))

    @property
    def connections(self) -> int:
        """How many clients are being served now."""
        return len(self.live)

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
        listeners = await trio.open_tcp_listeners(listen_port, host=self.config.listen_host)
        actual: int = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_connections)
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(actual)

    async def _watch_connections(self) -> None:
        """Close idle connections and connections whose client does not read. One task
        checks them all a few times per timeout, instead of a cancel scope around every
        read and every write (which costs more than the request itself)."""
        idle = self.config.idle_timeout or math.inf
        period = min(1.0, idle / 8, self.send_timeout / 8)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for connection in list(self.live):
                connection.check_timeouts(now, idle, self.send_timeout)

    async def _handle(self, stream: trio.SocketStream) -> None:
        # trio.serve_listeners lets a handler's exception crash the whole server, so
        # nothing may escape from here but cancellation.
        gentle = False
        try:
            if len(self.live) >= self.config.max_connections:
                self.refused += 1
                gentle = True
                with trio.move_on_after(self.send_timeout):
                    await stream.send_all(render(Error(ErrorCode.BUSY, "too many connections")))
                return
            connection = _Connection(self, stream)
            self.live.add(connection)
            if self.closed:
                connection.stop_reading()
            try:
                await connection.run()
            finally:
                self.live.discard(connection)
            gentle = connection.quit
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            gentle = False
        except Exception:
            gentle = False
            log.exception("a client connection failed; closing it")
        finally:
            if gentle:
                await _close_gently(stream)
            await trio.aclose_forcefully(stream)

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
                case cmd.Keys(bucket, prefix):
                    return Values(await router.keys(bucket, prefix, None))
                case cmd.Scan(bucket, start, end, limit):
                    return Pairs(await router.scan(bucket, start, end, limit))
                case cmd.Buckets():
                    return Values(await router.buckets())
                case cmd.Ping():
                    return Pong()
                case cmd.Help():
                    return Text(HELP_TEXT)
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
        status = self.node.status()
        config = self.config
        names = {n.id: n.name for n in config.nodes}
        lines = [f"node {status['node']} id {status['id']} cluster {config.cluster_name}"]
        lines.append(f"clients {len(self.live)} of {config.max_connections}")
        counters = " ".join(f"{k.replace('_', '-')} {v}" for k, v in status["counters"].items())
        lines.append(f"loop {counters}")
        for peer, up in sorted(status["peers"].items()):
            lines.append(f"peer {peer} {'up' if up else 'DOWN'}")
        for rng in config.ranges:
            replicas = ",".join(names.get(r, str(r)) for r in rng.replicas)
            lines.append(f"range {rng.id} replicas {replicas}")
        groups: dict[str, dict[str, Any]] = status["groups"]
        for shown, (group_id, g) in enumerate(groups.items()):
            if shown >= STATUS_GROUP_LIMIT:
                lines.append(f"... and {len(groups) - shown} more groups")
                break
            leader = names.get(g["leader"], "none")
            lines.append(
                f"group {group_id} role {g['role']} leader {leader} term {g['term']} "
                f"commit {g['commit']} applied {g['applied']}{' quiet' if g['quiet'] else ''}"
            )
        return lines


class _Connection:
    """One client connection: a reader, command tasks, and an ordered writer."""

    def __init__(self, server: LineServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.parser = LineParser(server.config.max_line)
        self.authed = server.config.password is None
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
        self._input_done = False
        self.last_by_key: dict[tuple[str, bytes], _Done] = {}
        self.earlier: deque[_Done] = deque()
        """Commands not known to be finished, oldest first (pruned from the front)."""
        self._barriers: list[_Done] = []
        self.closing = False
        self.quit = False
        """True once the QUIT reply was written: the close should be gentle."""
        self._cancel: trio.CancelScope | None = None
        self.finished = False
        """True once the connection's tasks are gone (late completions are dropped)."""
        self._reading = trio.CancelScope()
        self.receiving = False
        self.last_received = trio.current_time()
        self.sending_since: float | None = None
        """When the write in progress started (None: not writing)."""

    @property
    def backlog(self) -> int:
        """Replies queued and not yet written."""
        return len(self.replies)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._writer)
                await self._reader(nursery)
                # No more requests: the replies still pending are sent, then the writer
                # returns and the nursery ends.
                self._input_done = True
                self._writer_wanted.set()
        finally:
            self.finished = True

    def stop_reading(self) -> None:
        """Read no more requests; answer those read, then close gently."""
        self.closing = True
        self.quit = True
        if self.receiving:
            self._reading.cancel()

    def _abandon(self) -> None:
        """Nobody can receive replies any more: cancel the commands and the writer."""
        assert self._cancel is not None
        self._cancel.cancel()

    def check_timeouts(self, now: float, idle: float, send_timeout: float) -> None:
        """Called now and then by the server's watchdog."""
        if self.receiving and now - self.last_received >= idle:
            log.info("closing an idle connection")
            self._reading.cancel()
        if self.sending_since is not None and now - self.sending_since >= send_timeout:
            log.info("closing a connection whose client does not read its replies")
            self._abandon()

    async def _reader(self, nursery: trio.Nursery) -> None:
        # The watchdog cancels ``_reading`` only while we wait for the client in
        # receive_some (never while a full reply queue holds us back).
        with self._reading:
            while not self.closing:
                self.receiving = True
                try:
                    data = await self.stream.receive_some(READ_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._abandon()  # reset by the client: no one left to answer
                    return
                finally:
                    self.receiving = False
                self.last_received = trio.current_time()
                if not data:
                    return  # the client shut its side; pending replies are still sent
                self.parser.feed(data)
                for event in self.parser.events():
                    await self._dispatch(event, nursery)
                    if self.closing:
                        return

    async def _dispatch(self, event: cmd.Command | ProtocolError, nursery: trio.Nursery) -> None:
        slot = _Slot()
        while len(self.replies) >= self.limit:
            self._room = trio.Event()
            await self._room.wait()
        self.replies.append(slot)
        if isinstance(event, ProtocolError):
            self._finish(slot, event.data)
        elif isinstance(event, cmd.Quit):
            # The writer sends replies in order, so OK goes out after every earlier
            # reply; waiting here keeps the reader from reading past the QUIT.
            self.closing = True
            await self._wait_all()
            slot.close_after = True
            self._finish(slot, render(Ok()))
        elif isinstance(event, cmd.Auth):
            self._finish(slot, render(self._auth(event)))
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
            if deps or not self._start_simple(event, slot, nursery):
                nursery.start_soon(self._run_command, event, slot, deps)

    def _start_simple(self, command: cmd.Command, slot: _Slot, nursery: trio.Nursery) -> bool:
        """PUT, GET or DELETE with nothing to wait for: one attempt through
        ``Router.start``, without a task. Whatever that attempt cannot settle (a
        rejection, a read's unknown outcome) goes to a task with the full router."""
        match command:
            case cmd.Put(bucket, key, value):
                request: tuple[Any, ...] = ("put", key, value)
            case cmd.Delete(bucket, key):
                request = ("delete", key)
            case cmd.Get(bucket, key):
                request = ("get", key)
            case _:
                return False

        def done(outcome: Outcome) -> None:
            reply = _settled_reply(command, outcome)
            if reply is not None:
                slot.data = reply
                self._command_done(slot)
            elif not self.finished:
                nursery.start_soon(self._run_command, command, slot, [])

        return self.server.router.start(bucket, request, done)

    def _finish(self, slot: _Slot, data: bytes) -> None:
        slot.data = data
        slot.done.set()
        self._flush()

    def _auth(self, event: cmd.Auth) -> Reply:
        password = self.server.config.password
        if password is None:
            return Ok()
        if hmac.compare_digest(event.password, password.encode()):
            self.authed = True
            return Ok()
        return Error(ErrorCode.AUTH, "wrong password")

    def _dependencies(self, command: cmd.Command, done: _Done) -> list[_Done]:
        """What this command must wait for (see the module docstring)."""
        earlier = self.earlier
        while earlier and earlier[0].is_set():
            earlier.popleft()
        if isinstance(command, cmd.Put | cmd.Delete):
            key = (command.bucket, command.key)
            deps = [e for e in (self.last_by_key.get(key), *self._barriers) if e is not None]
            deps = [e for e in deps if not e.is_set()]  # nothing to wait for: no task
            self.last_by_key[key] = done
            if len(self.last_by_key) > 4 * self.server.max_in_flight:
                self.last_by_key = {k: e for k, e in self.last_by_key.items() if not e.is_set()}
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
        """A command has its reply in ``slot``: the writer may send it, and the command
        no longer counts against ``max_in_flight``."""
        slot.done.set()
        self.in_flight.release()
        self.server.served += 1
        self._flush()

    def _take_ready(self) -> tuple[bytes, bool]:
        """The replies at the head of the queue that are done, joined (one write for a
        pipelined batch), and whether the connection closes after them."""
        replies = self.replies
        chunks = []
        close = False
        while replies and replies[0].done.is_set():
            slot = replies.popleft()
            chunks.append(slot.data)
            if slot.close_after:
                close = True
                break
        if chunks:
            self._room.set()
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), close

    def _flush(self) -> None:
        """Write the replies that are ready, in order. Straight from the caller (the host
        loop or the reader) while the socket takes them: waking a writer task per reply
        costs more than the write. What the socket does not take at once (or every
        reply, without a socket) goes to the writer task, which owns the socket until
        it has sent all that is ready."""
        if self._writing or self.finished:
            return
        data, close = self._take_ready()
        if data and self._fd is not None:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._abandon()  # reset by the client: no one left to answer
                return
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
        """The reply to QUIT is written: close gently (see ``LineServer._handle``)."""
        self.quit = True
        self._abandon()

    async def _writer(self) -> None:
        while True:
            while self._writing:
                data, close = self._unsent, self._close_after_unsent
                self._unsent = b""
                self.sending_since = trio.current_time()
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._abandon()
                    return
                finally:
                    self.sending_since = None
                if close:
                    self._quit_done()
                    return
                self._unsent, self._close_after_unsent = self._take_ready()
                self._writing = bool(self._unsent)
            if self._input_done and not self.replies:
                return
            self._writer_wanted = trio.Event()
            await self._writer_wanted.wait()


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    """The file descriptor of a socket stream (non-blocking, as trio leaves it)."""
    socket = getattr(stream, "socket", None)
    return socket.fileno() if socket is not None else None
