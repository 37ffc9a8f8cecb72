"""Hostile and careless clients: the server stays up, bounded, and loses nothing.

Each test runs a real single-node server in process and checks three things at once:
the hostile connection gets exactly the replies the contract promises (or is closed
when it must be), the well-behaved clients beside it see correct answers throughout,
and every write that was acknowledged can be read back afterwards.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from boutique.bench.cluster import rss_bytes
from boutique.testing.local_cluster import LocalCluster
from boutique_server.protocol import ProtocolError, parse_line

if TYPE_CHECKING:  # conftest is not importable at run time; its fixtures hand these out
    from conftest import Conn, Served, StartMemoryServer, StartServer

MAX_LINE = 65536
TOOLONG = b"ERR TOOLONG line longer than 65536 bytes\r\n"


async def ask(conn: Conn, request: bytes, reply: bytes) -> None:
    await conn.send(request)
    await conn.expect(reply)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def well_behaved(
    served: Served, name: str, done: trio.Event, acked: dict[bytes, bytes], rounds: int = 15
) -> None:
    """PUT then GET its own keys until ``done`` (at least ``rounds`` times), checking
    every answer; records each acknowledged write in ``acked``."""
    conn = await served.connect()
    i = 0
    while i < rounds or not done.is_set():
        key = b"%s-%d" % (name.encode(), i % 5)
        value = b"%s value %d" % (name.encode(), i)
        await ask(conn, b'PUT work %s "%s"\n' % (key, value), b"OK\r\n")
        acked[key] = value
        await ask(conn, b"GET work %s\n" % key, b"%s\r\nOK\r\n" % value)
        i += 1
    await conn.aclose()


def garbage_line(rng: random.Random) -> bytes:
    """Random bytes that are no command: control bytes, invalid UTF-8, stray quotes and
    backslashes. No LF or CR (they would split the line), no NUL (CR NUL is a telnet
    line end), no Ctrl-D or IAC (they end the session on purpose)."""
    alphabet = [b for b in range(1, 255) if b not in (0x04, 0x0A, 0x0D)]
    body = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
    return b"#" + body


def build_flood(rng: random.Random) -> tuple[list[bytes], bytes, int]:
    """The flood's request bytes, the exact replies they must get, and how many lines
    are too long."""
    requests: list[bytes] = [b"CREATE flood\n"]
    replies: list[bytes] = [b"OK\r\n"]
    too_long = 0
    for i in range(120):
        kind = i % 6
        if kind == 0:
            line = garbage_line(rng)
            event = parse_line(line)
            assert isinstance(event, ProtocolError)
            requests.append(line + b"\n")
            replies.append(event.data)
        elif kind == 1:  # invalid UTF-8 where a bucket name must be
            requests.append(b"GET \xc3\x28 k\r\n")
            replies.append(
                b"ERR SYNTAX a bucket name is 1-255 bytes of printable UTF-8 without blanks\r\n"
            )
        elif kind == 2:  # telnet negotiation around and inside a command
            requests.append(
                b"\xff\xfb\x01\xff\xfd\x03\xff\xfa\x18\x00xterm\xff\xf0PI\xff\xfe\x05NG\r\n"
            )
            replies.append(b"PONG\r\n")
        elif kind == 3:  # a line too long, then a command that must keep its place
            size = MAX_LINE + 1 + rng.randint(0, 3 * MAX_LINE)
            requests.append(b"PUT flood big " + b"x" * size + b"\n")
            replies.append(TOOLONG)
            too_long += 1
        elif kind == 4:
            requests.append(b'PUT flood k%d "v %d\\x00"\n' % (i, i))
            replies.append(b"OK\r\n")
            requests.append(b"GET flood k%d\n" % i)
            replies.append(b'"v %d\\x00"\r\nOK\r\n' % i)
        else:  # blank lines and control bytes alone: answered with nothing or one line
            requests.append(b"\r\n \t \n\x01\x02\x1b[A\n")
            replies.append(b"COMMAND NOT IMPLEMENTED\r\n")
    return requests, b"".join(replies), too_long


async def test_flood_of_garbage_beside_working_clients(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(5)
    requests, expected, too_long = build_flood(rng)
    assert too_long == 20
    flood = await served.connect()
    received = bytearray()
    done = trio.Event()
    acked: dict[bytes, bytes] = {}
    setup = await served.connect()
    await ask(setup, b"CREATE work\n", b"OK\r\n")

    async def send_in_random_pieces() -> None:
        # Pieces of any size cut lines anywhere: half lines, half telnet commands,
        # half quoted arguments.
        data = b"".join(requests)
        at = 0
        while at < len(data):
            step = rng.choice([1, 2, 7, 100, 4096, 70000])
            await flood.send(data[at : at + step])
            at += step
            await trio.sleep(0)

    async def read_all_replies() -> None:
        with trio.fail_after(30):
            while len(received) < len(expected):
                chunk = await flood.stream.receive_some(65536)
                assert chunk, "the server closed the flooding connection"
                received.extend(chunk)
        done.set()

    async with trio.open_nursery() as nursery:
        for name in ("alice", "bob", "carol"):
            nursery.start_soon(well_behaved, served, name, done, acked)
        nursery.start_soon(read_all_replies)
        await send_in_random_pieces()

    assert bytes(received) == expected
    assert bytes(received).count(b"ERR TOOLONG") == too_long  # one per long line, exactly
    # The connection still keeps its place after all that, and a half line left at
    # the end is dropped, never run (it might be a truncated PUT).
    await ask(flood, b"PUT flood after ok\nGET flood after\n", b"OK\r\nok\r\nOK\r\n")
    await flood.send(b"PUT flood lost 1")
    await flood.aclose()
    check = await served.connect()
    await ask(check, b"GET flood lost\n", b"\r\nOK\r\n")
    for key, value in sorted(acked.items()):
        await ask(check, b"GET work %s\n" % key, b"%s\r\nOK\r\n" % value)
    assert len(acked) == 15
    assert not errors_logged(caplog)


async def test_a_client_that_never_reads_is_bounded_then_closed(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    in_flight = 16
    served = await start_server(send_timeout=0.5, max_in_flight=in_flight)
    server = served.server
    setup = await served.connect()
    big = b"x" * 60000
    await ask(setup, b"CREATE big\n", b"OK\r\n")
    await ask(setup, b"PUT big v " + big + b"\n", b"OK\r\n")
    await setup.aclose()

    hog = await served.connect()
    hog.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with trio.fail_after(5):
        while server.connections != 1:
            await trio.sleep(0.001)
    [hog_connection] = server.live
    sent = 0
    largest_backlog = 0
    largest_buffered = 0

    async def pipeline_without_reading() -> None:
        nonlocal sent
        request = b"GET big v\n" * 1000
        try:
            while True:
                await hog.send(request)
                sent += len(request)
        except trio.BrokenResourceError:
            pass  # the server closed the connection

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline_without_reading)
        other = await served.connect()
        with trio.fail_after(10):
            while hog_connection in server.live:
                # Others are served normally while the hog is stuck.
                await ask(other, b"GET big missing\n", b"\r\nOK\r\n")
                largest_backlog = max(largest_backlog, hog_connection.backlog)
                largest_buffered = max(largest_buffered, hog_connection.parser.buffered)
                await trio.sleep(0.01)
        served_at_close = server.served
        nursery.cancel_scope.cancel()

    # Replies held for the hog never exceed the in-flight limit: the server stopped
    # reading its requests instead of buffering replies (each 60 KB).
    assert largest_backlog <= in_flight
    assert largest_buffered <= MAX_LINE
    assert sent > 0
    # Far fewer GETs ran than were sent: the rest stayed unread in kernel buffers.
    assert served_at_close < sent // len(b"GET big v\n") // 2
    assert server.connections == 1  # only "other"
    await ask(other, b"PUT big after 1\nGET big after\n", b"OK\r\n1\r\nOK\r\n")
    assert not errors_logged(caplog)


async def test_many_connections_opening_and_closing_rapidly(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await served.connect()
    await ask(conn, b"CREATE rapid\n", b"OK\r\n")

    async def one(i: int) -> None:
        c = await served.connect()
        match i % 6:
            case 0:
                pass  # connect and leave
            case 1:
                await ask(c, b"PING\n", b"PONG\r\n")
            case 2:
                await c.send(b"PUT rapid half")  # a half line, never run
            case 3:
                await c.send(b"PUT rapid k%d v\nGET rapid k%d\n" % (i, i))
                c.stream.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )  # reset, replies unread
            case 4:
                await c.send(b"QUIT\n")
                assert await c.closed() == b"OK\r\n"
            case _:
                await ask(c, b"PUT rapid k%d v\n" % i, b"OK\r\n")
        await c.aclose()

    for wave in range(4):
        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, wave * 60 + i)
    with trio.fail_after(10):
        while served.server.connections > 1:
            await trio.sleep(0.005)
    await ask(conn, b"GET rapid half\n", b"\r\nOK\r\n")
    await ask(conn, b"GET rapid k5\n", b"v\r\nOK\r\n")
    await ask(conn, b"PING\n", b"PONG\r\n")
    assert not errors_logged(caplog)


# --- attacks before authentication (issue 16) ------------------------------------------


async def connect_from(served: Served, source: str) -> Conn:
    """A connection from another loopback address: another machine, as far as the
    server's per-address limits can tell."""
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", served.port))
    except BaseException:
        sock.close()
        raise
    return type(await served.connect())(trio.SocketStream(sock))


async def test_password_guessing_is_slowed_then_cut_off(
    autojump_clock: trio.testing.MockClock, start_memory_server: StartMemoryServer
) -> None:
    served = await start_memory_server(password="s3cret")
    guesser = await served.connect()
    start = trio.current_time()
    await guesser.send(b"AUTH wrong\n" * 5000)
    wrong = b"ERR AUTH wrong password\r\n"
    # Five answers, not five thousand: the rest are never read, let alone tried.
    assert await guesser.closed(timeout=100) == wrong * 4 + b"ERR AUTH wrong password; closing\r\n"
    # Each answer waited longer than the one before (0.25 s doubling, at most 2 s).
    assert trio.current_time() - start >= 0.25 + 0.5 + 1 + 2 + 2
    assert served.server.auth_failures == 5
    honest = await served.connect()
    await ask(honest, b"AUTH s3cret\nBUCKETS\n", b"OK\r\nOK\r\n")


async def test_silent_connections_cannot_lock_clients_out(
    autojump_clock: trio.testing.MockClock, start_memory_server: StartMemoryServer
) -> None:
    # The attack: with max_connections = 4, four silent sockets used to lock
    # every client out for the whole idle timeout.
    served = await start_memory_server(
        password="s3cret",
        max_connections=4,
        max_unauthenticated=4,
        max_unauthenticated_per_address=2,
        auth_timeout=5.0,
    )
    busy = b"ERR BUSY too many connections waiting to authenticate\r\n"
    silent = [await connect_from(served, "127.0.0.2") for _ in range(8)]
    start = trio.current_time()
    refused = 0
    for conn in silent[2:]:  # one address holds at most its share of the slots
        assert await conn.closed() == busy
        refused += 1
    assert refused == 6
    clients = []
    for _ in range(4):  # real clients log in at once and leave the waiting room
        conn = await served.connect()
        await ask(conn, b"AUTH s3cret\nPING\n", b"OK\r\nPONG\r\n")
        clients.append(conn)
    # Authenticated clients fill max_connections; one more may connect, but not log in.
    late = await served.connect()
    await late.send(b"AUTH s3cret\n")
    assert await late.closed() == b"ERR BUSY too many connections\r\n"
    # The silent ones are closed once the authentication deadline passes, not after
    # the idle timeout.
    for conn in silent[:2]:
        assert await conn.closed(timeout=100) == b""
    assert trio.current_time() - start == pytest.approx(5.0, abs=1.5)
    assert served.server.auth_timeouts == 2
    for conn in clients:
        await ask(conn, b"PING\n", b"PONG\r\n")


def test_scans_on_a_socket_that_never_reads_keep_server_memory_bounded(tmp_path: Path) -> None:
    # The attack: forty pipelined SCANs of a 30 MB bucket on a socket that never
    # reads took a server from 96 MiB to 1.3 GiB in 4 s. Now each reply is cut to a
    # page, and a connection's unwritten replies are capped in bytes, so the hog stalls
    # only itself.
    with LocalCluster(tmp_path / "cluster", nodes=1) as cluster:
        cluster.start()
        pid = cluster.nodes["n1"].pid
        assert pid is not None
        value = "x" * 60_000
        with cluster.client("n1") as client:
            client.create("big")
            for batch in range(10):
                with client.pipeline() as pipeline:
                    for i in range(50):
                        pipeline.put("big", f"k{batch:02d}{i:02d}", value)
            before = rss_bytes(pid)
            assert before is not None
            hog = socket.create_connection(("127.0.0.1", cluster.nodes["n1"].client_port))
            try:
                hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                hog.sendall(b'SCAN big "" ""\n' * 40)
                peak = before
                for i in range(40):  # about four seconds, as in the issue
                    # Others are served all along: a read of 60 KB and a ping.
                    assert client.get("big", f"k00{i % 50:02d}") == value
                    client.ping()
                    peak = max(peak, rss_bytes(pid) or 0)
                    time.sleep(0.1)
            finally:
                hog.close()
            assert peak - before < 256 * 1024 * 1024, f"RSS grew by {(peak - before) >> 20} MiB"
            assert len(client.scan("big")) == 500  # the client pages through all of it


async def test_a_hog_holds_at_most_its_reply_budget(
    start_memory_server: StartMemoryServer,
) -> None:
    budget = 4 * MAX_LINE  # the smallest budget the config allows
    served = await start_memory_server(max_reply_bytes=budget, send_timeout=60.0)
    setup = await served.connect()
    await ask(setup, b"CREATE big\n", b"OK\r\n")
    for i in range(100):
        await ask(setup, b"PUT big k%03d %s\n" % (i, b"x" * 10_000), b"OK\r\n")
    hog = await served.connect(receive_buffer=4096)
    with trio.fail_after(5):
        while served.server.connections != 2:
            await trio.sleep(0.001)
    largest = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hog.send, b'SCAN big "" ""\n' * 200)
        for _ in range(50):
            await ask(setup, b"GET big k000\n", b"%s\r\nOK\r\n" % (b"x" * 10_000))
            largest = max(largest, served.server.reply_bytes)
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # One page (a quarter of the budget, in raw bytes) may be made past the budget.
    assert 0 < largest <= budget + budget // 4 + 4096
