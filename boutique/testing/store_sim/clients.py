"""Simulated clients: line-protocol connections to a simulated node, and a recorder.

A ``SimConnection`` is a connection as the node sees it: ``LineServer`` serves it with
its production connection code (parsing, pipelining, replies) over an in-memory stream,
in a task of the node's process, so a crash of the node breaks it. The client writes
request lines and frames replies with the production ``ReplyParser``.

``record`` runs one operation and writes it into the ``History`` with what a client
can know (``record_pipeline`` several at once on one connection, as a client that
pipelines does: written together, answered in request order, concurrent in the
history): ``OK``, ``NOT FOUND``, certainly-not-applied (``UNAVAILABLE``, ``BUSY``),
unknown (``TIMEOUT``, a broken connection, the client's own timeout). Any other answer
to a well-formed command (``ERR INTERNAL``, ``ERR SYNTAX``) is a bug of the store and is
kept in ``problems``.

What it must never do: talk to a node other than through its ``LineServer``, or call an
outcome known when the client could not know it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import trio
import trio.testing

from boutique.testing.history import GET, History, Operation, Outcome
from boutique.wire import RawReply, ReplyParser, WireError, parse_error, parse_pair, parse_value

from .world import ProcessGone, SimWorld

CERTAINLY_NOT_APPLIED = frozenset({"UNAVAILABLE", "BUSY"})
MAYBE_APPLIED = frozenset({"TIMEOUT"})


class SimConnection:
    """One client connection to one node's ``LineServer``."""

    def __init__(self, world: SimWorld, node_id: int) -> None:
        process = world.processes[node_id]
        server, nursery = process.server, process.nursery
        if server is None or nursery is None:
            raise ProcessGone(f"n{node_id} is down")
        self.node_id = node_id
        self.world = world
        client_side, server_side = trio.testing.memory_stream_pair()
        self._stream = client_side
        self._parser = ReplyParser()
        self.closed = False
        try:
            nursery.start_soon(server._handle, server_side)
        except RuntimeError as exc:  # the process is shutting down: no new connections
            raise ProcessGone(f"n{node_id} is going down") from exc

    async def request(self, line: bytes) -> RawReply:
        """Send one request line, wait for its reply (``ProcessGone`` if the node dies)."""
        await self.send(line)
        return await self.receive()

    async def send(self, lines: bytes) -> None:
        """Write request lines (several at once: a pipeline) without waiting for any
        reply (``ProcessGone`` if the node dies)."""
        if self.closed:
            raise ProcessGone("connection closed")
        # A paused node reads nothing: the request waits in the stream.
        while self.node_id in self.world.network.paused:
            await trio.sleep(0.05)
        with self._breaking():
            await self._stream.send_all(lines)

    async def receive(self) -> RawReply:
        """The next reply: replies come in request order (``ProcessGone`` if the node
        dies)."""
        if self.closed:
            raise ProcessGone("connection closed")
        with self._breaking():
            while (reply := self._parser.next_reply()) is None:
                data = await self._stream.receive_some(65536)
                if not data:
                    raise ProcessGone(f"n{self.node_id} closed the connection")
                self._parser.feed(data)
        return reply

    @contextlib.contextmanager
    def _breaking(self) -> Iterator[None]:
        """Anything that interrupts a send or a receive leaves the connection unusable
        (a reply half read, or a request half written)."""
        try:
            yield
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.closed = True
            raise ProcessGone(f"connection to n{self.node_id} broke") from exc
        except BaseException:
            self.closed = True
            raise

    async def aclose(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self._stream)


@dataclass(frozen=True, slots=True)
class Request:
    """One operation of a pipeline: its logical client in the history, the operation
    ``kind(key[, value])`` and its request line."""

    client: int
    kind: str
    key: str
    value: str | None
    line: bytes


class Recorder:
    """Runs operations through connections and writes them into one history."""

    def __init__(self, history: History, clock: Callable[[], float], op_timeout: float) -> None:
        self.history = history
        self.clock = clock
        self.op_timeout = op_timeout
        self.problems: list[str] = []
        self.answers: Counter[str] = Counter()

    async def record(
        self,
        conn: SimConnection,
        client: int,
        kind: str,
        key: str,
        value: str | None,
        line: bytes,
    ) -> tuple[Operation, bool]:
        """Run ``line`` as operation ``kind(key[, value])``; the operation and whether
        the connection may be used again."""
        op = self.history.invoke(client, kind, key, value, self.clock())
        reply = await self._ask(conn, line)
        if reply is None:
            self.history.complete(op, self.clock(), Outcome.UNKNOWN)
            return op, False
        outcome, result = self._classify(kind, line, reply)
        self.history.complete(op, self.clock(), outcome, result)
        return op, True

    async def record_pipeline(
        self, conn: SimConnection, requests: Sequence[Request]
    ) -> tuple[list[Operation], bool]:
        """Run ``requests`` pipelined on ``conn``: every line written at once, then the
        replies read in request order (the server answers a connection in request
        order). The operations are invoked together, so the history holds them as
        concurrent (each under its own logical client), and each completes when its
        own reply is read, classified as ``record`` classifies one. As there, each has
        ``op_timeout`` from its invocation; the first one left unanswered (client
        timeout, connection lost) and every one after it are unknown, and the
        connection is not used again. The operations and whether it may be."""
        invoked = self.clock()
        ops = [self.history.invoke(r.client, r.kind, r.key, r.value, invoked) for r in requests]
        answered = 0
        with trio.move_on_after(self.op_timeout) as deadline:
            try:
                await conn.send(b"".join(r.line for r in requests))
                for op, request in zip(ops, requests, strict=True):
                    reply = await conn.receive()
                    outcome, result = self._classify(request.kind, request.line, reply)
                    self.history.complete(op, self.clock(), outcome, result)
                    answered += 1
            except ProcessGone:
                self.answers["connection lost"] += len(ops) - answered
        if deadline.cancelled_caught:
            await conn.aclose()
            self.answers["client timeout"] += len(ops) - answered
        for op in ops[answered:]:
            self.history.complete(op, self.clock(), Outcome.UNKNOWN)
        return ops, answered == len(ops)

    async def scan(self, conn: SimConnection, client: int, keys: list[str], line: bytes) -> bool:
        """A SCAN over ``keys`` (history keys, in the bucket's order): recorded as a
        read of every one of them in the same interval (a weaker check than one
        snapshot, but each must be a linearizable read)."""
        invoked = self.clock()
        reply = await self._ask(conn, line)
        if reply is None:
            return False
        end = reply.end
        if end.startswith(b"ERR "):
            code, _ = parse_error(end)
            self.answers[f"scan {code}"] += 1
            if code not in CERTAINLY_NOT_APPLIED | MAYBE_APPLIED:
                self.problems.append(f"SCAN answered {end!r}")
            return True
        if end == b"NOT FOUND":
            self.answers["scan NOT FOUND"] += 1
            ops = [self.history.invoke(client, GET, k, None, invoked) for k in keys]
            for op in ops:
                self.history.complete(op, self.clock(), Outcome.NOT_FOUND)
            return True
        if end != b"OK":
            self.problems.append(f"SCAN answered {end!r}")
            return True
        self.answers["scan OK"] += 1
        found: dict[str, str] = {}
        for item in reply.items:
            pair_key, pair_value = parse_pair(item)
            found[pair_key.decode()] = pair_value.decode()
        for key in keys:
            op = self.history.invoke(client, GET, key, None, invoked)
            self.history.complete(op, self.clock(), Outcome.OK, found.get(key.split("/", 1)[1]))
        return True

    async def _ask(self, conn: SimConnection, line: bytes) -> RawReply | None:
        try:
            with trio.fail_after(self.op_timeout):
                return await conn.request(line)
        except trio.TooSlowError:
            await conn.aclose()
            self.answers["client timeout"] += 1
        except ProcessGone:
            self.answers["connection lost"] += 1
        return None

    def _classify(self, kind: str, line: bytes, reply: RawReply) -> tuple[Outcome, str | None]:
        end = reply.end
        if end == b"OK":
            self.answers[f"{kind} OK"] += 1
            if kind != GET:
                return Outcome.OK, None
            try:
                (item,) = reply.items
                return Outcome.OK, (parse_value(item).decode() if item else None)
            except (ValueError, WireError) as exc:
                self.problems.append(f"{line!r} answered {reply!r}: {exc}")
                return Outcome.UNKNOWN, None
        if end == b"NOT FOUND":
            self.answers[f"{kind} NOT FOUND"] += 1
            return Outcome.NOT_FOUND, None
        if not end.startswith(b"ERR "):
            self.problems.append(f"{line!r} answered {end!r}")
            return Outcome.UNKNOWN, None
        try:
            code, _ = parse_error(end)
        except WireError:
            code = "?"
        self.answers[f"{kind} {code}"] += 1
        if code in CERTAINLY_NOT_APPLIED:
            return Outcome.FAIL, None
        if code not in MAYBE_APPLIED:
            self.problems.append(f"{line!r} answered {end!r}")
        return Outcome.UNKNOWN, None
