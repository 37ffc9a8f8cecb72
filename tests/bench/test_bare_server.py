"""The bare servers of the floor benchmark answer as a map would, with bounded memory.

If they answered wrongly the floor would measure something else than the least a line
server must do; if they kept unbounded input they would be a hostile client's target.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from boutique.bench.cluster import Ledger
from boutique.bench.echo import MAX_LINE, BareMap, echo_servers


def test_a_get_answers_the_value_last_put_and_ok() -> None:
    answers = BareMap()
    buffer = bytearray(b"PUT apple k1 v1\r\nPUT apple k1 v2\nGET apple k1\r\nGET apple k2\n")
    assert answers.answer(buffer) == b"OK\r\nOK\r\nv2\r\nOK\r\n\r\nOK\r\n"
    assert buffer == b""


def test_every_other_line_answers_ok_and_a_partial_line_waits() -> None:
    answers = BareMap()
    buffer = bytearray(b"CREATE apple\nPING\nGET app")
    assert answers.answer(buffer) == b"OK\r\nOK\r\n"
    assert buffer == b"GET app"
    assert answers.answer(buffer) == b""
    buffer += b"le k\n"
    assert answers.answer(buffer) == b"\r\nOK\r\n"


@pytest.fixture(params=["trio", "selectors"])
def bare_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """The port of one bare server process, started and ended (by PID) as the bench does."""
    with echo_servers(Ledger(), 1, request.param) as started:
        ((_, port), _) = started[0]
        yield port


def _read_until(conn: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_served_connection_gets_every_answer_in_order(bare_server: int) -> None:
    with socket.create_connection(("127.0.0.1", bare_server), timeout=10) as conn:
        requests = b"".join(b"PUT b k%d v%d\n" % (i, i) for i in range(500))
        requests += b"".join(b"GET b k%d\n" % i for i in range(500))
        conn.sendall(requests)
        expected = b"OK\r\n" * 500 + b"".join(b"v%d\r\nOK\r\n" % i for i in range(500))
        assert _read_until(conn, expected[-40:]) == expected


def test_a_line_longer_than_the_bound_closes_the_connection(bare_server: int) -> None:
    with socket.create_connection(("127.0.0.1", bare_server), timeout=10) as conn:
        conn.sendall(b"x" * (MAX_LINE + 1))
        # A server that kept reading would answer nothing and the read would time out.
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(1) == b""
