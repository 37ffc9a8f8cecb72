"""The Python client (and ``boutique-cli`` on top of it) across several nodes: which
node it uses, what it sends again after a lost connection and what it never repeats.

The "nodes" are tiny line servers in threads on 127.0.0.1 that either answer every
line (``OK``, or ``PONG`` to PING) or read one line and hang up without answering, and
a port nobody listens on; each records the lines it received.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from boutique import cli
from boutique.client import Client, ConnectionLost
from boutique.testing.local_cluster import free_ports


class FakeNode:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.lines: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = ("127.0.0.1", self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            reader = conn.makefile("rb")
            for line in reader:
                self.lines.append(line.rstrip(b"\r\n"))
                if self.behaviour == "hang up":
                    return
                conn.sendall(b"PONG\r\n" if line.startswith(b"PING") else b"OK\r\n")

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def nodes() -> Iterator[dict[str, FakeNode]]:
    made = {"ok": FakeNode("answer"), "ok2": FakeNode("answer"), "hangs up": FakeNode("hang up")}
    yield made
    for node in made.values():
        node.close()


@pytest.fixture
def down() -> tuple[str, int]:
    return ("127.0.0.1", free_ports(1)[0])


def test_the_first_node_that_answers_is_used(
    nodes: dict[str, FakeNode], down: tuple[str, int]
) -> None:
    with Client(addresses=[down, nodes["ok"].address], timeout=5) as client:
        assert client.address == nodes["ok"].address
        client.put("b", "k", "v")
    assert nodes["ok"].lines == [b"PUT b k v"]


def test_a_read_whose_connection_broke_is_asked_again_on_the_next_node(
    nodes: dict[str, FakeNode],
) -> None:
    with Client(addresses=[nodes["hangs up"].address, nodes["ok"].address], timeout=5) as client:
        client.ping()
    assert nodes["hangs up"].lines == [b"PING"]
    assert nodes["ok"].lines == [b"PING"]


def test_a_write_whose_connection_broke_is_never_repeated_but_the_next_call_reconnects(
    nodes: dict[str, FakeNode],
) -> None:
    with Client(addresses=[nodes["hangs up"].address, nodes["ok"].address], timeout=5) as client:
        with pytest.raises(ConnectionLost) as caught:
            client.put("b", "k", "v")
        assert caught.value.maybe_applied
        assert client.closed
        client.delete("b", "k")  # a new connection, to the next node
        assert client.address == nodes["ok"].address
    assert nodes["hangs up"].lines == [b"PUT b k v"]
    assert nodes["ok"].lines == [b"DELETE b k"]


def test_no_node_answers(down: tuple[str, int]) -> None:
    other = ("127.0.0.1", free_ports(1)[0])
    with pytest.raises(ConnectionLost) as caught:
        Client(addresses=[down, other], timeout=5)
    assert not caught.value.maybe_applied
    assert f":{down[1]}" in str(caught.value) and f":{other[1]}" in str(caught.value)


def test_a_closed_client_stays_closed(nodes: dict[str, FakeNode]) -> None:
    client = Client(*nodes["ok"].address, timeout=5)
    client.close()
    with pytest.raises(ConnectionLost, match="closed") as caught:
        client.ping()
    assert not caught.value.maybe_applied
    assert nodes["ok"].lines == []


@pytest.mark.parametrize("value", [5, 1.5, None, ["x"], {"a": 1}])
def test_only_text_and_bytes_are_stored(nodes: dict[str, FakeNode], value: object) -> None:
    with Client(*nodes["ok"].address, timeout=5) as client:
        with pytest.raises(TypeError, match="str or bytes"):
            client.put("b", "k", value)  # type: ignore[arg-type]
        client.put("b", "k", bytearray(b"ok"))
    assert nodes["ok"].lines == [b"PUT b k ok"]  # nothing was sent for the refused ones


def test_admin_methods_send_the_admin_commands(nodes: dict[str, FakeNode]) -> None:
    with Client(*nodes["ok"].address, timeout=5) as client:
        assert client.nodes() == []
        client.add_node("e", 5, "127.0.0.1", 4045, 5045)
        client.move_range("v-z", "a-g", "e")
        client.transfer("range:v-z", "e")
        client.split("h-n", "k")
        client.remove_node("e")
    assert nodes["ok"].lines == [
        b"ADMIN NODES",
        b"ADMIN ADD-NODE e 5 127.0.0.1 4045 5045",
        b"ADMIN MOVE v-z a-g e",
        b"ADMIN TRANSFER range:v-z e",
        b"ADMIN SPLIT h-n k",
        b"ADMIN REMOVE-NODE e",
    ]


def test_cli_reports_a_write_of_unknown_outcome_and_a_read_moves_on(
    nodes: dict[str, FakeNode],
) -> None:
    session = cli.Session(
        [nodes["hangs up"].address, nodes["ok"].address], password=None, timeout=5
    )
    with pytest.raises(cli.Unreachable) as caught:
        session.run(b"PUT b k v")
    assert caught.value.maybe_applied
    assert "may or may not have been applied" in str(caught.value)
    assert session.run(b"GET b k").ok
    session.close()
    assert nodes["ok"].lines == [b"GET b k"]
