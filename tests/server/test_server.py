"""The trio line server end to end, over real loopback sockets.

Commands run against a real single-node ``Node`` (``served``); the rules the server
itself owns (reply order, what runs concurrently, limits, errors that never kill a
connection) are pinned with ``MemoryRouter`` wrappers that hold commands until the test
releases them, so nothing here depends on timing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
import trustme

import boutique.client as client_module
from boutique.client import AsyncClient, Client, ConnectionLost
from boutique.machine import CommandFailed
from boutique.runtime import join
from boutique.runtime.group import Applied
from boutique.runtime.router import CommandRejected, OutcomeUnknown, Unavailable
from boutique.status import NodeStatus
from boutique.wire import parse_value, render_value, request_line
from boutique_server.protocol import HELP_TEXT, Text, render

if TYPE_CHECKING:  # conftest is not importable at run time; its fixtures hand these out
    from conftest import Conn, MemoryRouter, Served, StartMemoryServer, StartServer

TRANSCRIPT = [
    (b"GET shopping eggs\r\n", b"NOT FOUND\r\n"),
    (b"CREATE shopping\r\n", b"OK\r\n"),
    (b"PUT shopping eggs 3\r\n", b"OK\r\n"),
    (b"GET shopping eggs\r\n", b"3\r\nOK\r\n"),
    (b"DELETE shopping eggs\r\n", b"OK\r\n"),
    (b"GET shopping eggs\r\n", b"\r\nOK\r\n"),
]
"""The original D-Boutique session, request by request, byte for byte."""


async def ask(conn: Conn, request: bytes, reply: bytes) -> None:
    await conn.send(request)
    await conn.expect(reply)


def nothing_received(conn: Conn) -> bool:
    """True if no reply byte has reached the client yet. Loopback delivers a write at
    once, so once every task is blocked, a reply the server sent would be here."""
    with socket.socket(fileno=os.dup(conn.stream.socket.fileno())) as peek:
        try:
            peek.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except BlockingIOError:
            return True
    return False  # a byte arrived, or the server closed


def reset(conn: Conn) -> None:
    """Make the next close a TCP reset, as a crashed client's would be."""
    conn.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# --- the D-Boutique transcript and every command -------------------------------------------


async def test_d_boutique_transcript_byte_for_byte(served: Served) -> None:
    conn = await served.connect()
    for request, reply in TRANSCRIPT:
        await ask(conn, request, reply)


async def test_transcript_with_bare_lf_and_lowercase(served: Served) -> None:
    conn = await served.connect()
    for request, reply in TRANSCRIPT:
        name, rest = request.rstrip(b"\r\n").split(b" ", 1)
        await ask(conn, name.lower() + b" " + rest + b"\n", reply)


async def test_create_is_idempotent_and_keeps_the_data(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"CREATE fruit\n", b"OK\r\n")
    await ask(conn, b"PUT fruit apple red\n", b"OK\r\n")
    await ask(conn, b"CREATE fruit\n", b"OK\r\n")
    await ask(conn, b"GET fruit apple\n", b"red\r\nOK\r\n")


async def test_put_overwrites_and_delete_is_ok_when_absent(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"CREATE fruit\n", b"OK\r\n")
    await ask(conn, b"PUT fruit apple red\n", b"OK\r\n")
    await ask(conn, b"PUT fruit apple green\n", b"OK\r\n")
    await ask(conn, b"GET fruit apple\n", b"green\r\nOK\r\n")
    await ask(conn, b"DELETE fruit apple\n", b"OK\r\n")
    await ask(conn, b"DELETE fruit apple\n", b"OK\r\n")
    await ask(conn, b"GET fruit apple\n", b"\r\nOK\r\n")


async def test_drop_then_every_bucket_command_is_not_found(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"CREATE fruit\n", b"OK\r\n")
    await ask(conn, b"PUT fruit apple red\n", b"OK\r\n")
    await ask(conn, b"DROP fruit\n", b"OK\r\n")
    for request in (
        b"GET fruit apple\n",
        b"PUT fruit apple red\n",
        b"DELETE fruit apple\n",
        b"KEYS fruit\n",
        b'SCAN fruit "" ""\n',
        b"DROP fruit\n",
    ):
        await ask(conn, request, b"NOT FOUND\r\n")
    await ask(conn, b"CREATE fruit\n", b"OK\r\n")
    await ask(conn, b"GET fruit apple\n", b"\r\nOK\r\n")  # a new bucket starts empty


async def test_buckets_lists_every_bucket_in_order(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"BUCKETS\n", b"OK\r\n")
    for name in (b"zebra", b"apple", b"mango"):
        await ask(conn, b"CREATE " + name + b"\n", b"OK\r\n")
    await ask(conn, b"BUCKETS\n", b"apple\r\nmango\r\nzebra\r\nOK\r\n")


async def test_keys_in_order_with_and_without_prefix(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"CREATE b\n", b"OK\r\n")
    for key in (b"banana", b"apricot", b"apple", b"ap"):
        await ask(conn, b"PUT b " + key + b" 1\n", b"OK\r\n")
    await ask(conn, b"KEYS b\n", b"ap\r\napple\r\napricot\r\nbanana\r\nOK\r\n")
    await ask(conn, b"KEYS b ap\n", b"ap\r\napple\r\napricot\r\nOK\r\n")
    await ask(conn, b"KEYS b app\n", b"apple\r\nOK\r\n")
    await ask(conn, b"KEYS b cherry\n", b"OK\r\n")


async def test_long_replies_are_cut_and_continue_exactly(
    start_memory_server: StartMemoryServer,
) -> None:
    # No reply is unbounded: past the server's row limit a SCAN or KEYS reply ends with
    # ERR MORE and the request that reads on; below it, replies are as they always were.
    served = await start_memory_server(scan_limit=3)
    conn = await served.connect()
    await ask(conn, b"CREATE b\n", b"OK\r\n")
    for key, value in ((b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4"), (b"e", b"5")):
        await ask(conn, b"PUT b " + key + b" " + value + b"\n", b"OK\r\n")
    more = b"ERR MORE reply cut after 3 rows; continue with: "
    await ask(conn, b'SCAN b "" ""\n', b"a 1\r\nb 2\r\nc 3\r\n" + more + b'SCAN b "c\\x00" ""\r\n')
    await ask(conn, b'SCAN b "c\\x00" ""\n', b"d 4\r\ne 5\r\nOK\r\n")
    await ask(conn, b"SCAN b a e 3\n", b"a 1\r\nb 2\r\nc 3\r\nOK\r\n")  # allowed: as before
    await ask(conn, b"SCAN b a e 5\n", b"a 1\r\nb 2\r\nc 3\r\n" + more + b'SCAN b "c\\x00" e 2\r\n')
    await ask(conn, b"KEYS b\n", b"a\r\nb\r\nc\r\n" + more + b'KEYS b "" "c\\x00"\r\n')
    await ask(conn, b'KEYS b "" "c\\x00"\n', b"d\r\ne\r\nOK\r\n")
    await ask(conn, b'KEYS b "" b 2\n', b"b\r\nc\r\nOK\r\n")


async def test_a_reply_is_cut_at_its_byte_budget_too(
    start_memory_server: StartMemoryServer,
) -> None:
    # A page holds at most a quarter of max_reply_bytes in raw bytes (at least one row).
    served = await start_memory_server(max_line=64, max_reply_bytes=256)
    conn = await served.connect()
    await ask(conn, b"CREATE b\n", b"OK\r\n")
    for key in (b"a", b"b", b"c"):
        await ask(conn, b"PUT b " + key + b" " + b"v" * 40 + b"\n", b"OK\r\n")
    row = b" " + b"v" * 40 + b"\r\n"
    more = b"ERR MORE reply cut after 1 rows; continue with: "
    await ask(conn, b'SCAN b "" ""\n', b"a" + row + more + b'SCAN b "a\\x00" ""\r\n')
    await ask(conn, b'SCAN b "" "" 2\n', b"a" + row + more + b'SCAN b "a\\x00" "" 1\r\n')


@pytest.mark.parametrize("page_rows", [1000, 2])
async def test_clients_page_through_cut_replies(
    start_memory_server: StartMemoryServer, monkeypatch: pytest.MonkeyPatch, page_rows: int
) -> None:
    # The server cuts at 3 rows (ERR MORE); with pages of 2 the client cuts first (OK).
    monkeypatch.setattr(client_module, "PAGE_ROWS", page_rows, raising=False)
    served = await start_memory_server(scan_limit=3)
    keys = sorted([b"k%02d" % i for i in range(10)] + [b"k05\x00", b"k05\x00\x00", b"k\xff"])
    pairs = [(k.decode(errors="replace"), f"v{i}") for i, k in enumerate(keys)]
    async with AsyncClient("127.0.0.1", served.port) as client:
        await client.create("b")
        for key, (_, value) in zip(keys, pairs, strict=True):
            await client.put("b", key, value)
        got = await client.scan("b")
        assert [(k if isinstance(k, bytes) else k.encode(), v) for k, v in got] == [
            (k, v) for k, (_, v) in zip(keys, pairs, strict=True)
        ]
        assert await client.scan("b", "k02", "k06") == [
            ("k02", "v2"),
            ("k03", "v3"),
            ("k04", "v4"),
            ("k05", "v5"),
            ("k05\x00", "v6"),
            ("k05\x00\x00", "v7"),
        ]
        assert len(await client.scan("b", limit=5)) == 5
        assert len(await client.scan("b", limit=7)) == 7
        assert [k if isinstance(k, bytes) else k.encode() for k in await client.keys("b")] == keys
        assert await client.keys("b", "k05") == ["k05", "k05\x00", "k05\x00\x00"]

    def blocking() -> list[Any]:
        with Client("127.0.0.1", served.port) as sync:
            return [len(sync.scan("b")), len(sync.keys("b")), len(sync.scan("b", "k09"))]

    assert await trio.to_thread.run_sync(blocking) == [len(keys), len(keys), 2]


async def test_scan_bounds_limit_and_open_end(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"CREATE b\n", b"OK\r\n")
    for key, value in ((b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")):
        await ask(conn, b"PUT b " + key + b" " + value + b"\n", b"OK\r\n")
    await ask(conn, b"SCAN b a c\n", b"a 1\r\nb 2\r\nOK\r\n")  # end is exclusive
    await ask(conn, b'SCAN b b ""\n', b"b 2\r\nc 3\r\nd 4\r\nOK\r\n")  # "" = no end
    await ask(conn, b'SCAN b "" "" 2\n', b"a 1\r\nb 2\r\nOK\r\n")
    await ask(conn, b"SCAN b bb c\n", b"OK\r\n")
    await ask(
        conn, b"SCAN b a z 0\n", b"ERR SYNTAX limit must be a positive whole number below 10^9\r\n"
    )


async def test_ping_help_status(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"PING\n", b"PONG\r\n")
    await ask(conn, b"help\n", render(Text(HELP_TEXT)))
    await conn.send(b"STATUS\n")
    [reply] = await conn.replies(1)
    assert reply.end == b"OK"
    lines = [line.decode() for line in reply.items]
    assert lines[0] == "node local id 1 cluster boutique"
    assert "clients 1 of 1024" in lines
    # What the edges refused (issue 16): counts, not a log line per attempt.
    assert "edge unauthenticated 0 of 64 refused 0 auth-failures 0 auth-timeouts 0" in lines
    assert "peer-edge handshakes-refused 0 auth-failures 0" in lines
    assert [line for line in lines if line.startswith("range ")] == [
        "range a-g replicas local",
        "range h-n replicas local",
        "range o-u replicas local",
        "range v-z replicas local",
    ]
    assert any(line.startswith("group meta role leader leader local term ") for line in lines)


async def test_status_json_holds_what_status_says(served: Served) -> None:
    conn = await served.connect()
    await conn.send(b"STATUS\nstatus json\nSTATUS XML\n")
    text, as_json, bad = await conn.replies(3)
    assert bad.end == b"ERR SYNTAX STATUS or STATUS JSON"
    [line] = as_json.items
    status = NodeStatus.from_json(line)

    # The same snapshot model renders both: the JSON, as text, is the text reply
    # (the loop counters move between the two requests, so they are left out).
    def steady(lines: list[str]) -> list[str]:
        return [entry for entry in lines if not entry.startswith("loop ")]

    assert steady(status.to_lines()) == steady([item.decode() for item in text.items])
    assert status.clients == 1 and status.groups_total >= 1
    assert status.ranges[0].replicas == ("local",)


async def test_client_status_info_is_parsed(served: Served) -> None:
    async with AsyncClient("127.0.0.1", served.port) as client:
        info = await client.status_info()
        assert isinstance(info, NodeStatus)
        assert info.node == "local"
        assert [g.role for g in info.groups if g.id == "meta"] == ["leader"]
        async with client.pipeline() as pipe:
            pipe.status_info()
            pipe.ping()
        assert isinstance(pipe.results[0], NodeStatus)


async def test_quit_answers_ok_then_closes(served: Served) -> None:
    conn = await served.connect()
    await conn.send(b"quit\r\n")
    assert await conn.closed() == b"OK\r\n"


async def test_quit_waits_for_earlier_replies_and_ignores_later_lines(served: Served) -> None:
    conn = await served.connect()
    await conn.send(b"CREATE b\nPUT b k v\nGET b k\nNOPE\nQUIT\nPING\nPUT b k w\n")
    assert await conn.closed() == b"OK\r\nOK\r\nv\r\nOK\r\nCOMMAND NOT IMPLEMENTED\r\nOK\r\n"
    again = await served.connect()
    await ask(again, b"GET b k\n", b"v\r\nOK\r\n")  # the PUT after QUIT never ran


async def test_quit_closes_gently_despite_unread_input(served: Served) -> None:
    # Closing a socket with unread input makes the kernel send a reset, which throws
    # away replies not yet delivered to a slow client. The server shuts its side and
    # drains instead, so the client reads every reply and then a clean end of stream.
    conn = await served.connect()
    await conn.send(b"PING\nQUIT\n" + b"ignored after QUIT\n" * 1000)
    with trio.fail_after(10):
        while served.server.connections:
            await trio.sleep(0.001)
    assert await conn.closed(reset_ok=False) == b"PONG\r\nOK\r\n"


async def test_ctrl_d_ends_the_session(served: Served) -> None:
    conn = await served.connect()
    await conn.send(b"PING\n\x04")
    assert await conn.closed() == b"PONG\r\nOK\r\n"


async def test_client_half_close_still_gets_every_reply(served: Served) -> None:
    conn = await served.connect()
    await conn.send(b"CREATE b\nPUT b k v\nGET b k\nPUT b half")  # the half line is dropped
    await conn.stream.send_eof()
    assert await conn.closed() == b"OK\r\nOK\r\nv\r\nOK\r\n"
    again = await served.connect()
    await ask(again, b"GET b half\n", b"\r\nOK\r\n")


@pytest.mark.parametrize(
    "request_line",
    [
        b"FROB\n",
        b"GETT shopping eggs\n",
        b"GET shopping\n",
        b"GET shopping eggs extra\n",
        b"PUT shopping eggs\n",
        b"CREATE\n",
        b"PING now\n",
        b"FAULT HEAL\n",  # only with [testing] fault_injection
    ],
)
async def test_unknown_command_or_wrong_arity(served: Served, request_line: bytes) -> None:
    conn = await served.connect()
    await ask(conn, request_line, b"COMMAND NOT IMPLEMENTED\r\n")
    await ask(conn, b"PING\n", b"PONG\r\n")


@pytest.mark.parametrize(
    "request_line, reply",
    [
        (b'PUT b k "unclosed\n', b"ERR SYNTAX unterminated quote"),
        (b"GET b\x01c k\n", b"ERR SYNTAX a bucket name is 1-255 bytes of printable UTF-8"),
        (b"GET b " + b"k" * 4097 + b"\n", b"ERR TOOLONG key longer than 4096 bytes"),
    ],
)
async def test_bad_arguments_are_one_error_line(
    served: Served, request_line: bytes, reply: bytes
) -> None:
    conn = await served.connect()
    await conn.send(request_line)
    line = await conn.read_until(b"\r\n")
    assert line.startswith(reply) and line.count(b"\n") == 1
    await ask(conn, b"PING\n", b"PONG\r\n")


VALUES = [
    b"buy eggs and milk",
    b" leading and trailing ",
    b"",
    b'"starts with a quote',
    b"NOT FOUND",
    b"ERR TIMEOUT fake",
    b"line\r\nbreaks\ttab",
    bytes(range(256)),
    "caf\u00e9 \u2603".encode(),
    b"\xff\xfe invalid utf-8 \xc3\x28",
]


@pytest.mark.parametrize("value", VALUES)
async def test_quoted_values_round_trip(served: Served, value: bytes) -> None:
    conn = await served.connect()
    await ask(conn, b"CREATE b\n", b"OK\r\n")
    # Written the way a person types it in telnet: every byte as an escape, in quotes.
    typed = b'"' + b"".join(b"\\x%02x" % byte for byte in value) + b'"'
    await ask(conn, b'PUT b "my key" ' + typed + b"\n", b"OK\r\n")
    await conn.send(b'GET b "my key"\n')
    [reply] = await conn.replies(1)
    assert reply.end == b"OK"
    [line] = reply.items
    assert line == render_value(value)
    assert parse_value(line) == value


# --- pipelining ------------------------------------------------------------------------


async def test_pipelined_requests_in_one_write_are_answered_in_order(served: Served) -> None:
    requests = [b"CREATE p\n"]
    replies = [b"OK\r\n"]
    for i in range(60):
        requests += [b"PUT p k%d v%d\n" % (i % 7, i), b"GET p k%d\n" % (i % 7), b"BAD\n"]
        replies += [b"OK\r\n", b"v%d\r\nOK\r\n" % i, b"COMMAND NOT IMPLEMENTED\r\n"]
    requests += [b"KEYS p\n", b"PING\n"]
    replies += [b"".join(b"k%d\r\n" % i for i in range(7)) + b"OK\r\n", b"PONG\r\n"]
    conn = await served.connect()
    await conn.send(b"".join(requests))
    await conn.expect(b"".join(replies))


async def test_put_then_get_of_one_key_in_one_write_reads_the_write(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"CREATE p\n", b"OK\r\n")
    for i in range(20):
        await conn.send(b"PUT p k a%d\nDELETE p k\nPUT p k b%d\nGET p k\n" % (i, i))
        await conn.expect(b"OK\r\nOK\r\nOK\r\nb%d\r\nOK\r\n" % i)


class HoldingRouter:
    """Delegates to ``inner`` but holds every PUT until ``release`` is set, and logs the
    calls in the order they reach the router."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.release = trio.Event()
        self.calls: list[tuple[str, bytes]] = []
        self.held = 0
        self.peak = 0
        self.cancelled = 0

    async def put(self, bucket: str, key: bytes, value: bytes) -> None:
        self.calls.append(("put", key))
        self.held += 1
        self.peak = max(self.peak, self.held)
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.held -= 1
        await self.inner.put(bucket, key, value)

    async def get(self, bucket: str, key: bytes) -> bytes | None:
        self.calls.append(("get", key))
        result: bytes | None = await self.inner.get(bucket, key)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start(self, bucket: str, command: Any, then: Any) -> bool:
        return False  # no task-free path: every request goes through the methods above


async def test_pipelined_writes_to_different_keys_are_in_flight_together(
    start_server: StartServer,
) -> None:
    count = 16
    holder: HoldingRouter | None = None

    def wrap(router: Any) -> Any:
        nonlocal holder
        holder = HoldingRouter(router)
        return holder

    served = await start_server(wrap_router=wrap)
    assert holder is not None
    conn = await served.connect()
    await ask(conn, b"CREATE p\n", b"OK\r\n")
    await conn.send(b"".join(b"PUT p key%d v\n" % i for i in range(count)))
    # Every PUT reaches the router while none has finished: a server that ran them one
    # after the other would hold the first forever and fail here.
    with trio.fail_after(5):
        while holder.held < count:
            await trio.sleep(0.001)
    assert nothing_received(conn)
    holder.release.set()
    await conn.expect(b"OK\r\n" * count)
    assert holder.peak == count


async def test_what_waits_for_what(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    inner = memory_router
    await inner.create("b")
    holder = HoldingRouter(inner)
    served = await start_memory_server(holder)
    conn = await served.connect()
    await conn.send(b"PUT b k 1\nPUT b other x\nGET b k\nPUT b k 2\nBAD\nGET b k\n")
    await trio.testing.wait_all_tasks_blocked()
    # The PUT to another key runs beside the first PUT; the GET waits for every earlier
    # command; the second PUT of k waits for the first and for the GET before it (or
    # the GET could read it); the bad line's reply waits its turn.
    # (The two PUTs run concurrently, so in either order.)
    assert sorted(holder.calls) == [("put", b"k"), ("put", b"other")]
    assert nothing_received(conn)
    holder.release.set()
    await conn.expect(b"OK\r\nOK\r\n1\r\nOK\r\nOK\r\nCOMMAND NOT IMPLEMENTED\r\n2\r\nOK\r\n")
    assert sorted(holder.calls[:2]) == [("put", b"k"), ("put", b"other")]
    assert holder.calls[2:] == [
        ("get", b"k"),
        ("put", b"k"),
        ("get", b"k"),
    ]


async def test_a_bad_line_before_commands_keeps_its_place(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    inner = memory_router
    await inner.create("b")
    holder = HoldingRouter(inner)
    served = await start_memory_server(holder)
    conn = await served.connect()
    await conn.send(b'BAD\nPUT b k 1\nPUT b "x\nAUTH pw\nQUIT\n')
    await conn.expect(b"COMMAND NOT IMPLEMENTED\r\n")
    await trio.testing.wait_all_tasks_blocked()
    assert nothing_received(conn)  # the syntax error, AUTH and QUIT wait for the PUT
    holder.release.set()
    assert await conn.closed() == b"OK\r\nERR SYNTAX unterminated quote\r\nOK\r\nOK\r\n"


async def test_quit_waits_for_a_held_command(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    inner = memory_router
    await inner.create("b")
    holder = HoldingRouter(inner)
    served = await start_memory_server(holder)
    conn = await served.connect()
    await conn.send(b"PUT b k 1\nQUIT\n")
    await trio.testing.wait_all_tasks_blocked()
    assert nothing_received(conn)
    assert holder.cancelled == 0
    holder.release.set()
    assert await conn.closed() == b"OK\r\nOK\r\n"
    assert inner.buckets_["b"] == {b"k": b"1"}


# --- AUTH and limits ---------------------------------------------------------------------


async def test_password_refuses_commands_until_auth(start_server: StartServer) -> None:
    served = await start_server(password="s3cret")
    conn = await served.connect()
    refused = b"ERR AUTH authenticate first: AUTH password\r\n"
    await ask(conn, b"CREATE b\n", refused)
    await ask(conn, b"GET shopping eggs\n", refused)
    await ask(conn, b"PING\n", b"PONG\r\n")  # a person can still check the line
    await ask(conn, b"AUTH wrong\n", b"ERR AUTH wrong password\r\n")
    await ask(conn, b"BUCKETS\n", refused)
    await ask(conn, b"AUTH s3cret\n", b"OK\r\n")
    await ask(conn, b"CREATE b\n", b"OK\r\n")
    await ask(conn, b"BUCKETS\n", b"b\r\nOK\r\n")
    other = await served.connect()  # authentication belongs to one connection
    await ask(other, b"BUCKETS\n", refused)


async def test_auth_without_a_password_is_ok(served: Served) -> None:
    conn = await served.connect()
    await ask(conn, b"AUTH anything\n", b"OK\r\n")


async def test_too_many_connections_get_err_busy(start_server: StartServer) -> None:
    served = await start_server(max_connections=2)
    first, second = await served.connect(), await served.connect()
    await ask(first, b"CREATE b\n", b"OK\r\n")
    await ask(second, b"PING\n", b"PONG\r\n")
    extra = await served.connect()
    await extra.send(b"PING\n" * 1000)  # unread input must not turn the close into a reset
    assert await extra.closed(reset_ok=False) == b"ERR BUSY too many connections\r\n"
    assert served.server.refused == 1
    await ask(first, b"PUT b k v\n", b"OK\r\n")
    await ask(second, b"GET b k\n", b"v\r\nOK\r\n")
    await first.send(b"QUIT\n")
    assert await first.closed() == b"OK\r\n"
    with trio.fail_after(5):
        while served.server.connections > 1:
            await trio.sleep(0.001)
    third = await served.connect()
    await ask(third, b"GET b k\n", b"v\r\nOK\r\n")


async def test_idle_connection_is_closed_in_virtual_time(
    autojump_clock: trio.testing.MockClock, start_memory_server: StartMemoryServer
) -> None:
    served = await start_memory_server(idle_timeout=60.0)
    conn = await served.connect()
    await trio.sleep(59)
    await ask(conn, b"PING\n", b"PONG\r\n")  # activity restarts the idle clock
    start = trio.current_time()
    assert await conn.closed(timeout=1000) == b""
    assert trio.current_time() - start == pytest.approx(60.0, abs=0.5)
    assert served.server.connections == 0


async def test_idle_timeout_on_a_real_node(start_server: StartServer) -> None:
    served = await start_server(idle_timeout=0.2)
    conn = await served.connect()
    assert await conn.closed(timeout=5) == b""
    other = await served.connect()
    await ask(other, b"PING\n", b"PONG\r\n")


# --- failures stay inside one command or one connection --------------------------------


class FailingRouter:
    """Delegates to ``inner`` but fails in every way a router can: its own errors and
    unforeseen ones."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, bucket: str, key: bytes) -> Any:
        match key:
            case b"unavailable":
                raise Unavailable("no quorum for b")
            case b"unknown":
                raise OutcomeUnknown("leader lost")
            case b"rejected":
                raise CommandRejected(CommandFailed("ValueError", "bad command"))
            case b"bug":
                raise RuntimeError("a bug")
            case b"unrenderable":
                return 42  # a reply the protocol cannot carry
        return await self.inner.get(bucket, key)

    async def put(self, bucket: str, key: bytes, value: bytes) -> None:
        if key == b"bug":
            raise RuntimeError("a bug after proposing, maybe")
        await self.inner.put(bucket, key, value)


async def test_command_failures_are_one_classed_line_and_the_connection_lives(
    start_memory_server: StartMemoryServer,
    memory_router: MemoryRouter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await memory_router.create("b")
    router = FailingRouter(memory_router)
    served = await start_memory_server(router)
    conn = await served.connect()
    cases = [
        (b"GET b unavailable\n", b"ERR UNAVAILABLE no quorum for b\r\n"),
        (b"GET b unknown\n", b"ERR TIMEOUT outcome unknown: leader lost\r\n"),
        (b"GET b rejected\n", b"ERR SYNTAX bad command\r\n"),
        (b"GET b bug\n", b"ERR UNAVAILABLE internal error\r\n"),
        (b"GET b unrenderable\n", b"ERR UNAVAILABLE internal error\r\n"),
        (b"PUT b bug 1\n", b"ERR TIMEOUT internal error: the outcome is unknown\r\n"),
        (b"PUT b fine 1\n", b"OK\r\n"),
        (b"GET b fine\n", b"1\r\nOK\r\n"),
    ]
    # One by one, then all pipelined: a failure never shifts the replies after it.
    for request, reply in cases:
        await ask(conn, request, reply)
    await conn.send(b"".join(request for request, _ in cases))
    await conn.expect(b"".join(reply for _, reply in cases))
    assert served.server.connections == 1
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 6 and all("internal error" in m for m in logged)


async def test_reset_with_commands_in_flight_cancels_them_cleanly(
    start_memory_server: StartMemoryServer,
    memory_router: MemoryRouter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = memory_router
    await inner.create("b")
    holder = HoldingRouter(inner)
    served = await start_memory_server(holder)
    conn = await served.connect()
    await conn.send(b"".join(b"PUT b k%d v\n" % i for i in range(10)) + b"GET b k1\n")
    await trio.testing.wait_all_tasks_blocked()
    assert holder.held == 10
    reset(conn)
    await conn.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert holder.cancelled == 10 and holder.held == 0
    assert served.server.connections == 0
    assert inner.buckets_["b"] == {}
    other = await served.connect()
    await ask(other, b"PING\n", b"PONG\r\n")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_reset_while_replies_are_being_written_on_a_real_node(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # This crashed the whole server once: the writer's BrokenResourceError left the
    # connection's nursery inside an exception group that nothing caught.
    for _ in range(3):
        conn = await served.connect()
        await conn.send(b"CREATE b\n" + b"PUT b k v\nGET b k\n" * 200)
        await conn.read(10)
        reset(conn)
        await conn.aclose()
    with trio.fail_after(10):
        while served.server.connections:
            await trio.sleep(0.01)
    other = await served.connect()
    await ask(other, b"GET b k\n", b"v\r\nOK\r\n")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_join_authenticates_with_a_password_that_needs_quoting(
    start_server: StartServer,
) -> None:
    # --join builds its AUTH line with the shared quoting: a password with a quote and a
    # backslash in it must log in, not be refused forever.
    password = 'pa"ss\\word x'
    served = await start_server(password=password)
    seed = dataclasses.replace(served.config.nodes[0], client_port=served.port)
    newcomer = dataclasses.replace(seed, name="newcomer", id=7, client_port=1, peer_port=2)
    config = dataclasses.replace(served.config, nodes=(seed, newcomer))
    with trio.fail_after(10):
        await join.register(config, newcomer)
    conn = await served.connect()
    await conn.send(request_line(b"AUTH", password.encode()))
    await conn.expect(b"OK\r\n")


async def test_clients_over_tls(start_server: StartServer, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "node.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "node.key"))
    served = await start_server(
        client_tls=(str(tmp_path / "node.pem"), str(tmp_path / "node.key")), password="s3cret"
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with AsyncClient("127.0.0.1", served.port, ssl_context=context, password="s3cret") as c:
        await c.create("b")
        await c.put("b", "k", "tls" * 15_000)  # bigger than one TLS record
        assert await c.get("b", "k") == "tls" * 15_000
        assert len(await c.scan("b")) == 1

    def blocking() -> Any:
        with Client("127.0.0.1", served.port, ssl_context=context, password="s3cret") as sync:
            with sync.pipeline() as pipeline:
                for i in range(200):
                    pipeline.put("b", f"k{i}", "v" * 1000)
            return sync.get("b", "k199"), len(sync.keys("b"))

    assert await trio.to_thread.run_sync(blocking) == ("v" * 1000, 201)
    # A plaintext client gets no reply in clear text: it is not speaking TLS.
    plain = await served.connect()
    await plain.send(b"PING\n")
    assert b"PONG" not in await plain.closed()
    # A client that does not trust the CA refuses the server.
    with pytest.raises(ConnectionLost, match="TLS"):
        await AsyncClient(
            "127.0.0.1", served.port, ssl_context=ssl.create_default_context()
        ).connect()


async def test_a_reply_that_comes_after_its_connection_is_gone_is_not_counted(
    start_memory_server: StartMemoryServer, memory_router: MemoryRouter
) -> None:
    # A PUT on the task-free path is answered from the host loop, maybe after its
    # client reset the connection: those bytes are never written, so they must not
    # stay counted against the server-wide reply budget.
    await memory_router.create("b")
    waiting: list[Any] = []

    class Late:
        def __getattr__(self, name: str) -> Any:
            return getattr(memory_router, name)

        def start(self, bucket: str, command: Any, then: Any) -> bool:
            waiting.append(then)
            return True

    served = await start_memory_server(Late())
    conn = await served.connect()
    await conn.send(b"PUT b k v\n")
    with trio.fail_after(5):
        while not waiting:
            await trio.sleep(0.001)
    reset(conn)
    await conn.aclose()
    with trio.fail_after(5):
        while served.server.connections:
            await trio.sleep(0.001)
    waiting[0](Applied(None))
    assert served.server.reply_bytes == 0
