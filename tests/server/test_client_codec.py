"""The Python client's codec, and both clients against a sans-I/O stand-in server.

Claims: the client's reply parser reads back everything ``render`` writes, for every
reply type, however the bytes are chunked and however many replies are pipelined; every
request the client writes parses on the server as the command meant; errors map to
exceptions that say whether the command may have been applied; ``Client`` (sockets) and
``AsyncClient`` (trio) run the D-Boutique transcript and pipelines.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from boutique.client import (
    AsyncClient,
    AuthError,
    BadSyntax,
    Busy,
    Client,
    ClientError,
    CommandNotImplemented,
    ConnectionLost,
    NotFound,
    ProtocolViolation,
    Request,
    ServerError,
    Timeout,
    TooLong,
    Unavailable,
    _Requests,
    decode_ok,
    decode_pairs,
    decode_pong,
    decode_text,
    decode_value,
    decode_values,
)
from boutique.wire import ErrorCode, RawReply, ReplyParser, WireError
from boutique_server import commands as c
from boutique_server import protocol as p

any_bytes = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"OK", b"NOT FOUND", b"ERR x", b'"', b" a ", b"\r\n", b"\xff", b"NOT"]),
)
printable_text = st.text(max_size=30)  # hypothesis leaves out lone surrogates


def frame(data: bytes, cuts: list[int] | None = None) -> list[RawReply]:
    parser = ReplyParser()
    replies: list[RawReply] = []
    start = 0
    for cut in [*sorted(x % (len(data) + 1) for x in cuts or []), len(data)]:
        parser.feed(data[start:cut])
        start = max(start, cut)
        replies.extend(parser.replies())
    assert parser.buffered == 0
    return replies


def one_reply(reply: p.Reply) -> RawReply:
    (raw,) = frame(p.render(reply))
    return raw


# --- the reply codec -----------------------------------------------------------------


@given(st.one_of(st.none(), any_bytes))
def test_value_round_trips(value: bytes | None) -> None:
    assert decode_value(one_reply(p.Value(value))) == value


@given(st.lists(any_bytes, max_size=6))
def test_values_round_trip(items: list[bytes]) -> None:
    assert decode_values(one_reply(p.Values(items))) == items


@given(st.lists(st.tuples(any_bytes, any_bytes), max_size=6))
def test_pairs_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    assert decode_pairs(one_reply(p.Pairs(pairs))) == pairs


@given(st.lists(printable_text, max_size=6))
def test_text_round_trips(lines: list[str]) -> None:
    assert decode_text(one_reply(p.Text(lines))) == lines


def test_simple_replies() -> None:
    decode_ok(one_reply(p.Ok()))
    decode_pong(one_reply(p.Pong()))
    assert decode_text(one_reply(p.Text(p.HELP_TEXT))) == list(p.HELP_TEXT)


@pytest.mark.parametrize(
    ("reply", "error", "maybe_applied"),
    [
        (p.NotFound(), NotFound, False),
        (p.NotImplemented_(), CommandNotImplemented, False),
        (p.Error(ErrorCode.UNAVAILABLE, "no leader"), Unavailable, False),
        (p.Error(ErrorCode.SYNTAX, "unterminated quote"), BadSyntax, False),
        (p.Error(ErrorCode.TOOLONG, "line longer than 65536 bytes"), TooLong, False),
        (p.Error(ErrorCode.AUTH, "password required"), AuthError, False),
        (p.Error(ErrorCode.BUSY, "too many connections"), Busy, False),
        (p.Error(ErrorCode.TIMEOUT, "no commit in 5 s"), Timeout, True),
    ],
)
@pytest.mark.parametrize(
    "decode", [decode_ok, decode_pong, decode_value, decode_values, decode_pairs, decode_text]
)
def test_error_replies_map_to_exceptions(
    reply: p.Reply,
    error: type[ClientError],
    maybe_applied: bool,
    decode: Callable[[RawReply], Any],
) -> None:
    with pytest.raises(error) as caught:
        decode(one_reply(reply))
    assert caught.value.maybe_applied is maybe_applied
    if isinstance(reply, p.Error):
        assert isinstance(caught.value, ServerError)
        assert caught.value.code == reply.code
        assert caught.value.message == reply.message


def test_an_unknown_error_code_is_assumed_to_maybe_have_applied() -> None:
    with pytest.raises(ServerError) as caught:
        decode_ok(RawReply((), b"ERR NEWFANGLED something"))
    assert type(caught.value) is ServerError
    assert caught.value.code == "NEWFANGLED"
    assert caught.value.maybe_applied


@pytest.mark.parametrize(
    ("decode", "raw"),
    [
        (decode_ok, RawReply((), b"PONG")),
        (decode_ok, RawReply((b"x",), b"OK")),
        (decode_pong, RawReply((), b"OK")),
        (decode_value, RawReply((), b"OK")),
        (decode_value, RawReply((b"a", b"b"), b"OK")),
        (decode_value, RawReply((b'"open',), b"OK")),
        (decode_pairs, RawReply((b"one",), b"OK")),
        (decode_ok, RawReply((), b"ERR")),
    ],
)
def test_replies_that_break_the_protocol(decode: Callable[[RawReply], Any], raw: RawReply) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        decode(raw)
    assert caught.value.maybe_applied


replies = st.one_of(
    st.builds(p.Ok),
    st.builds(p.Pong),
    st.builds(p.NotFound),
    st.builds(p.NotImplemented_),
    st.builds(p.Value, st.one_of(st.none(), any_bytes)),
    st.builds(p.Values, st.lists(any_bytes, max_size=4)),
    st.builds(p.Pairs, st.lists(st.tuples(any_bytes, any_bytes), max_size=4)),
    st.builds(p.Text, st.lists(printable_text, max_size=4)),
    st.builds(p.Error, st.sampled_from(ErrorCode), printable_text),
)


@settings(max_examples=200)
@given(st.lists(replies, max_size=8), st.lists(st.integers(0, 10_000), max_size=8))
def test_pipelined_replies_are_framed_in_order_in_any_chunking(
    sent: list[p.Reply], cuts: list[int]
) -> None:
    data = b"".join(p.render(reply) for reply in sent)
    framed = frame(data, cuts)
    assert len(framed) == len(sent)
    for reply, raw in zip(sent, framed, strict=True):
        assert p.render(reply) == b"".join(line + b"\r\n" for line in (*raw.items, raw.end))


def test_reply_lines_are_bounded() -> None:
    parser = ReplyParser(max_line=10)
    parser.feed(b"x" * 11)
    assert parser.next_reply() is None
    parser.feed(b"x")
    with pytest.raises(WireError):
        parser.next_reply()


# --- requests ------------------------------------------------------------------------


def parsed(line: bytes) -> p.Event:
    parser = p.LineParser()
    parser.feed(line)
    (event,) = parser.events()
    return event


key_bytes = st.one_of(any_bytes, st.binary(max_size=200))


@given(key_bytes, key_bytes)
def test_client_requests_parse_as_the_command_meant(key: bytes, value: bytes) -> None:
    assert parsed(_Requests.put("shopping", key, value).line) == c.Put("shopping", key, value)
    assert parsed(_Requests.get("shopping", key).line) == c.Get("shopping", key)
    assert parsed(_Requests.delete("shopping", key).line) == c.Delete("shopping", key)
    assert parsed(_Requests.keys("shopping", key).line) == c.Keys("shopping", key)
    assert parsed(_Requests.scan("shopping", key, value, 5).line) == c.Scan(
        "shopping", key, value or None, 5
    )
    assert parsed(_Requests.auth(value).line) == c.Auth(value)


def test_every_client_request_is_a_known_command() -> None:
    requests: list[Request[Any]] = [
        _Requests.create("b"),
        _Requests.drop("b"),
        _Requests.buckets(),
        _Requests.keys("b"),
        _Requests.scan("b"),
        _Requests.ping(),
        _Requests.help(),
        _Requests.status(),
        _Requests.quit(),
    ]
    expected = [
        c.Create("b"),
        c.Drop("b"),
        c.Buckets(),
        c.Keys("b"),
        c.Scan("b", b"", None),
        c.Ping(),
        c.Help(),
        c.Status(),
        c.Quit(),
    ]
    assert [parsed(r.line) for r in requests] == expected


# --- a stand-in server ---------------------------------------------------------------


class FakeStore:
    """One node's worth of the bucket semantics, enough to drive the clients."""

    def __init__(self, password: bytes | None = None) -> None:
        self.buckets: dict[str, dict[bytes, bytes]] = {}
        self.password = password
        self.authed = password is None

    def execute(self, command: c.Command) -> p.Reply:
        if isinstance(command, c.Auth):
            self.authed = command.password == self.password
            return p.Ok() if self.authed else p.Error(ErrorCode.AUTH, "wrong password")
        if not self.authed and not isinstance(command, c.Quit):
            return p.Error(ErrorCode.AUTH, "password required")
        match command:
            case c.Create(bucket):
                self.buckets.setdefault(bucket, {})
                return p.Ok()
            case c.Ping():
                return p.Pong()
            case c.Quit():
                return p.Ok()
            case c.Help():
                return p.Text(p.HELP_TEXT)
            case c.Status():
                return p.Text(["node 1 ranges a-z", "OK"])
            case c.Buckets():
                return p.Values(sorted(self.buckets))
        contents = self.buckets.get(getattr(command, "bucket", ""))
        if contents is None:
            return p.NotFound()
        match command:
            case c.Drop(name):
                del self.buckets[name]
                return p.Ok()
            case c.Put(_, key, value):
                contents[key] = value
                return p.Ok()
            case c.Get(_, key):
                return p.Value(contents.get(key))
            case c.Delete(_, key):
                contents.pop(key, None)
                return p.Ok()
            case c.Keys(_, prefix):
                return p.Values([k for k in sorted(contents) if k.startswith(prefix or b"")])
            case c.Scan(_, start, end, limit):
                keys = [k for k in sorted(contents) if start <= k and (end is None or k < end)]
                return p.Pairs([(k, contents[k]) for k in keys[:limit]])
        raise AssertionError(command)

    def serve(self, parser: p.LineParser, data: bytes | bytearray) -> bytes:
        parser.feed(data)
        out = b""
        for event in parser.events():
            if isinstance(event, p.ProtocolError):
                out += event.data
            else:
                out += p.render(self.execute(event))
        return out


def start_sync_server(store: FakeStore) -> tuple[socket.socket, threading.Thread]:
    """A connected socket whose peer is served by ``store`` in a thread."""
    ours, theirs = socket.socketpair()

    def run() -> None:
        parser = p.LineParser()
        with theirs:
            while not parser.ended:
                try:
                    data = theirs.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                theirs.sendall(store.serve(parser, data))  # blocks: real backpressure

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return ours, thread


@pytest.fixture
def sync_server() -> Iterator[tuple[socket.socket, FakeStore]]:
    store = FakeStore()
    sock, thread = start_sync_server(store)
    yield sock, store
    sock.close()
    thread.join(timeout=10)


def test_sync_client_logs_in_when_given_a_password() -> None:
    sock, thread = start_sync_server(FakeStore(password=b"s3cret"))
    with Client(sock=sock, password="s3cret") as client:
        client.ping()
    thread.join(timeout=10)
    sock, thread = start_sync_server(FakeStore(password=b"s3cret"))
    with pytest.raises(AuthError):
        Client(sock=sock, password="wrong")
    assert sock.fileno() == -1  # closed, not leaked
    thread.join(timeout=10)


def test_sync_client_runs_the_d_boutique_transcript(
    sync_server: tuple[socket.socket, FakeStore],
) -> None:
    sock, _ = sync_server
    with Client(sock=sock, timeout=10) as client:
        with pytest.raises(NotFound):
            client.get("shopping", "eggs")
        client.create("shopping")
        client.put("shopping", "eggs", "3")
        assert client.get("shopping", "eggs") == "3"
        client.delete("shopping", "eggs")
        assert client.get("shopping", "eggs") is None


def test_sync_client_every_method(sync_server: tuple[socket.socket, FakeStore]) -> None:
    sock, _ = sync_server
    client = Client(sock=sock, timeout=10)
    client.ping()
    client.create("shopping")
    client.create("OK")
    client.put("shopping", "note", "buy milk\n")
    client.put("shopping", b"\xffbin", b"\x00\xff")
    client.put("shopping", "empty", "")
    assert client.get("shopping", "note") == "buy milk\n"
    assert client.get("shopping", b"\xffbin") == b"\x00\xff"
    assert client.get_bytes("shopping", "note") == b"buy milk\n"
    assert client.get("shopping", "empty") == ""
    assert client.buckets() == ["OK", "shopping"]
    assert client.keys("shopping") == ["empty", "note", b"\xffbin"]
    assert client.keys("shopping", "no") == ["note"]
    assert client.scan("shopping", "a", "z") == [("empty", ""), ("note", "buy milk\n")]
    assert client.scan("shopping", limit=1) == [("empty", "")]
    assert client.help() == list(p.HELP_TEXT)
    assert client.status() == ["node 1 ranges a-z", "OK"]
    with pytest.raises(CommandNotImplemented):
        client._run(Request(b"FROB\r\n", decode_ok))
    with pytest.raises(BadSyntax) as caught:
        client.create("has space")
    assert not caught.value.maybe_applied
    client.drop("OK")
    with pytest.raises(NotFound):
        client.drop("OK")
    client.ping()  # the connection survived every error
    client.quit()
    assert client.closed
    with pytest.raises(ConnectionLost) as lost:
        client.ping()
    assert not lost.value.maybe_applied


def test_sync_pipeline(sync_server: tuple[socket.socket, FakeStore]) -> None:
    sock, _ = sync_server
    with Client(sock=sock, timeout=10) as client:
        with pytest.raises(NotFound), client.pipeline() as pipe:
            pipe.create("shopping").put("shopping", "eggs", "3").get("shopping", "eggs")
            pipe.get("nope", "x").ping()
            assert len(pipe) == 5
        # The block raised the first error, and every result is kept, in order.
        assert pipe.results[:3] == [None, None, "3"]
        assert isinstance(pipe.results[3], NotFound)
        assert pipe.results[4] is None
        pipe.get("nope", "x").get("shopping", "eggs")
        results = pipe.execute(raise_on_error=False)
        assert isinstance(results[0], NotFound) and results[1] == "3"
        assert pipe.execute() == []  # nothing queued


def test_a_long_pipeline_with_big_replies_does_not_deadlock(
    sync_server: tuple[socket.socket, FakeStore],
) -> None:
    """Requests and replies each overflow the socket buffers: the client must read
    while it writes, or both sides block for good."""
    sock, _ = sync_server
    value = b"v" * 4096
    with Client(sock=sock, timeout=10) as client:
        client.create("big")
        pipe = client.pipeline()
        for i in range(1500):
            pipe.put("big", f"k{i}", value).get_bytes("big", f"k{i}")
        results = pipe.execute()
    assert results == [None, value] * 1500


def test_sync_client_server_closing_is_connection_lost() -> None:
    ours, theirs = socket.socketpair()
    theirs.close()
    client = Client(sock=ours, timeout=5)
    with pytest.raises(ConnectionLost) as caught:
        client.ping()
    assert caught.value.maybe_applied
    assert client.closed


def test_sync_client_garbage_reply_is_a_protocol_violation() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(b'"unterminated\r\nOK\r\n')
        client = Client(sock=ours, timeout=5)
        with pytest.raises(ProtocolViolation):
            client.get("b", "k")
        assert not client.closed  # framing held; only the item was unreadable
        client.close()


def test_sync_client_times_out_and_closes() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        client = Client(sock=ours, timeout=0.05)
        with pytest.raises(ConnectionLost) as caught:
            client.ping()
        assert caught.value.maybe_applied
        assert client.closed


def test_connecting_to_nothing_is_connection_lost() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(ConnectionLost) as caught:
        Client("127.0.0.1", port, timeout=2)
    assert not caught.value.maybe_applied


# --- the trio client -----------------------------------------------------------------


async def fake_server(stream: trio.abc.Stream, store: FakeStore) -> None:
    parser = p.LineParser()
    async with stream:
        while not parser.ended:
            data = await stream.receive_some(65536)
            if not data:
                return
            reply = store.serve(parser, data)
            if reply:
                await stream.send_all(reply)


async def test_async_client_transcript_pipeline_and_auth() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    store = FakeStore(password=b"s3cret")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_server, theirs, store)
        client = AsyncClient(stream=ours)
        async with client:
            with pytest.raises(AuthError):
                await client.ping()
            await client.auth("s3cret")
            with pytest.raises(NotFound):
                await client.get("shopping", "eggs")
            await client.create("shopping")
            await client.put("shopping", "eggs", "3")
            assert await client.get("shopping", "eggs") == "3"
            await client.delete("shopping", "eggs")
            assert await client.get("shopping", "eggs") is None
            async with client.pipeline() as pipe:
                for i in range(100):
                    pipe.put("shopping", f"k{i:03}", str(i))
                pipe.keys("shopping", "k00").scan("shopping", "k098", limit=5)
            assert pipe.results[-2] == [f"k00{i}" for i in range(10)]
            assert pipe.results[-1] == [("k098", "98"), ("k099", "99")]
            assert await client.buckets() == ["shopping"]
            assert await client.help() == list(p.HELP_TEXT)
            await client.quit()
        assert client.closed


async def test_async_clients_calls_from_many_tasks_stay_in_order() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    store = FakeStore()
    store.buckets["b"] = {}
    results: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_server, theirs, store)
        client = AsyncClient(stream=ours)

        async def worker(i: int) -> None:
            await client.put("b", str(i), str(i * i))
            results[i] = await client.get("b", str(i))

        async with trio.open_nursery() as workers:
            for i in range(20):
                workers.start_soon(worker, i)
        await client.aclose()
    assert results == {i: str(i * i) for i in range(20)}


async def test_async_client_cancelled_mid_call_closes_the_connection() -> None:
    ours, _theirs = trio.testing.memory_stream_pair()  # nobody answers
    client = AsyncClient(stream=ours)
    with trio.move_on_after(1):
        await client.ping()
    assert client.closed
    with pytest.raises(ConnectionLost) as caught:
        await client.ping()
    assert not caught.value.maybe_applied


async def test_async_client_server_gone_is_connection_lost() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.aclose()
    client = AsyncClient(stream=ours)
    with pytest.raises(ConnectionLost) as caught:
        await client.ping()
    assert caught.value.maybe_applied
    assert client.closed


async def test_async_client_over_tcp() -> None:
    store = FakeStore()

    async def handler(stream: trio.SocketStream) -> None:
        await fake_server(stream, store)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        async with AsyncClient("127.0.0.1", port) as client:
            await client.create("shopping")
            await client.put("shopping", "eggs", "3")
            assert await client.get("shopping", "eggs") == "3"
        nursery.cancel_scope.cancel()
