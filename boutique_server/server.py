"""The line-protocol server: trio at the edge, the sans-I/O protocol and the router inside.

One task reads each connection and turns bytes into commands (``protocol.LineParser``);
each command runs in its own task so a client that sends ahead is not held to one Raft
round per request; one writer task sends the replies strictly in request order.

Ordering within a connection is what a person expects from a terminal: a write waits
for earlier commands on the same key, a read (or any other command) waits for every
earlier command, so ``PUT`` then ``GET`` on one connection always reads the write.
Writes to different keys run concurrently, which is what makes pipelining fast.

Bounded everywhere: at most ``MAX_IN_FLIGHT`` commands per connection (the reader stops
reading beyond that), a reply that cannot be written within ``SEND_TIMEOUT`` closes the
connection (a client that never reads), ``max_connections`` clients at once (the next
gets ``ERR BUSY``), and an idle connection is closed after ``idle_timeout``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from boutique.config import ClusterConfig, NodeConfig
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
SEND_TIMEOUT = 30.0
READ_CHUNK = 65536
STATUS_GROUP_LIMIT = 50

HELP = (
    "boutique: a strongly consistent bucket store. Commands (names are case-insensitive):",
    "CREATE bucket                 make a bucket (OK also when it exists)",
    "DROP bucket                   delete a bucket and all its keys",
    "PUT bucket key value          set a key",
    "GET bucket key                the value, then OK (empty line if missing)",
    "DELETE bucket key             remove a key (OK also when absent)",
    "BUCKETS                       every bucket, one per line, then OK",
    "KEYS bucket [prefix]          keys in order, one per line, then OK",
    "SCAN bucket start end [limit] key value lines for start <= key < end (end \"\" = no end)",
    "PING                          PONG",
    "STATUS                        nodes, ranges and Raft groups as this node sees them",
    "AUTH password                 authenticate when the server asks for a password",
    "QUIT                          close the connection (also Ctrl-D)",
    'Quote arguments with spaces: PUT notes todo "buy eggs\\n" (escapes \\" \\\\ \\n \\r \\t \\xHH)',
    "Errors: ERR UNAVAILABLE|SYNTAX|TOOLONG|AUTH|BUSY had no effect; ERR TIMEOUT may have.",
)


@dataclass(slots=True)
class _Slot:
    """One reply position in the connection's output order."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes = b""
    close_after: bool = False


class LineServer:
    """Serves the line protocol for one node."""

    def __init__(self, config: ClusterConfig, me: NodeConfig, node: Node, router: Router) -> None:
        self.config = config
        self.me = me
        self.node = node
        self.router = router
        self.connections = 0
        self.served = 0

    async def serve(
        self, port: int | None = None, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listen_port = self.me.client_port if port is None else port
        listeners = await trio.open_tcp_listeners(listen_port, host=self.config.listen_host)
        actual = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(actual)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            if self.connections >= self.config.max_connections:
                with trio.move_on_after(1):
                    await stream.send_all(render(Error(ErrorCode.BUSY, "too many connections")))
                return
            self.connections += 1
            try:
                await _Connection(self, stream).run()
            finally:
                self.connections -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
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
                    return Text(HELP)
                case cmd.Status():
                    return Text(self.status_lines())
                case cmd.Quit():
                    return Ok()
                case cmd.Auth():
                    return Ok()
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
            if isinstance(command, cmd.Put | cmd.Delete | cmd.Create | cmd.Drop):
                return Error(ErrorCode.TIMEOUT, "internal error: the outcome is unknown")
            return Error(ErrorCode.UNAVAILABLE, "internal error")
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
        self.slots_send, self.slots_recv = trio.open_memory_channel[_Slot](MAX_IN_FLIGHT)
        self.in_flight = trio.Semaphore(MAX_IN_FLIGHT)
        self.last_by_key: dict[tuple[str, bytes], trio.Event] = {}
        self.earlier: list[trio.Event] = []
        self._barriers: list[trio.Event] = []
        self.closing = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, nursery.cancel_scope)
            await self._reader(nursery)
            await self.slots_send.aclose()

    async def _reader(self, nursery: trio.Nursery) -> None:
        idle = self.server.config.idle_timeout or float("inf")
        while not self.closing:
            data = b""
            with trio.move_on_after(idle) as scope:
                data = await self.stream.receive_some(READ_CHUNK)
            if scope.cancelled_caught or not data:
                return  # idle, or the client closed its side
            self.parser.feed(data)
            for event in self.parser.events():
                await self._dispatch(event, nursery)
                if self.closing:
                    return

    async def _dispatch(self, event: cmd.Command | ProtocolError, nursery: trio.Nursery) -> None:
        slot = _Slot()
        await self.slots_send.send(slot)
        if isinstance(event, ProtocolError):
            slot.data = event.data
            slot.done.set()
            return
        if isinstance(event, cmd.Quit):
            self.closing = True
            await self._wait_all()
            slot.data = render(Ok())
            slot.close_after = True
            slot.done.set()
            return
        if isinstance(event, cmd.Auth):
            slot.data = render(self._auth(event))
            slot.done.set()
            return
        if not self.authed and not isinstance(event, cmd.Ping | cmd.Help):
            slot.data = render(Error(ErrorCode.AUTH, "authenticate first: AUTH password"))
            slot.done.set()
            return
        await self.in_flight.acquire()
        deps = self._dependencies(event, slot.done)
        nursery.start_soon(self._run_command, event, slot, deps)

    def _auth(self, event: cmd.Auth) -> Reply:
        import hmac

        password = self.server.config.password
        if password is None:
            return Ok()
        if hmac.compare_digest(event.password, password.encode()):
            self.authed = True
            return Ok()
        return Error(ErrorCode.AUTH, "wrong password")

    def _dependencies(self, command: cmd.Command, done: trio.Event) -> list[trio.Event]:
        """What this command must wait for (see the module docstring)."""
        self.earlier = [e for e in self.earlier if not e.is_set()]
        if isinstance(command, cmd.Put | cmd.Delete):
            key = (command.bucket, command.key)
            deps = [e for e in (self.last_by_key.get(key),) if e is not None]
            deps += self._barriers
            self.last_by_key[key] = done
            if len(self.last_by_key) > 4 * MAX_IN_FLIGHT:
                self.last_by_key = {k: e for k, e in self.last_by_key.items() if not e.is_set()}
        else:
            deps = list(self.earlier)
            self._barriers = [done]
        self.earlier.append(done)
        return deps

    async def _wait_all(self) -> None:
        for event in list(self.earlier):
            await event.wait()

    async def _run_command(self, command: cmd.Command, slot: _Slot, deps: list[trio.Event]) -> None:
        try:
            for dep in deps:
                await dep.wait()
            reply = await self.server.execute(command)
            slot.data = render(reply)
        finally:
            slot.done.set()
            self.in_flight.release()
            self.server.served += 1

    async def _writer(self, cancel_scope: trio.CancelScope) -> None:
        held: _Slot | None = None
        while True:
            if held is None:
                try:
                    held = await self.slots_recv.receive()
                except trio.EndOfChannel:
                    return
            await held.done.wait()
            chunks = [held.data]
            close = held.close_after
            held = None
            # Send every reply that is already finished in one write (pipelining).
            while not close:
                try:
                    nxt = self.slots_recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if not nxt.done.is_set():
                    held = nxt
                    break
                chunks.append(nxt.data)
                close = nxt.close_after
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                await self.stream.send_all(b"".join(chunks))
            if scope.cancelled_caught:
                log.info("closing a connection whose client does not read its replies")
                cancel_scope.cancel()
                return
            if close:
                cancel_scope.cancel()
                return
