"""Micro-benchmark of the line server's task-free path: ``Router.start`` and the line work.

Runs ``Router.start`` against a node double that answers every attempt at once (as
the bucket's leader would, here or at a peer), so what is timed is the router's own
work per request — choosing the target, the attempt's ``Pending``, the routing
decisions and the reply callback — not Raft, storage or sockets. Prints the best of
``rounds`` rounds of ``calls`` calls, for a target on this node and on a peer. It also
times the work every request needs before and after routing, whatever the store does:
parsing one GET line as it arrives alone (``LineParser.feed`` and its event) and
rendering a 100-byte value's reply. Together they are a lower bound, in this
interpreter, on the Python work a node does per request beyond its sockets:

    python -m boutique.bench.fastpath [--calls N] [--rounds R]

Compare two trees by running each tree's interpreter in one sitting; quote ratios. It
measures; it never asserts a speed.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from boutique.registry import BucketInfo
from boutique.runtime.outcomes import Applied
from boutique.runtime.router import Router
from boutique_server.protocol import LineParser, Value, render


class _AnsweringNode:
    """What ``Router.start`` reads of a node; every attempt is answered at once."""

    id = 1
    waiting_for_peers = None

    def __init__(self, leader: int) -> None:
        self.leader = leader
        self.config = SimpleNamespace(unsafe_local_reads=False, request_timeout=5.0)
        self.me = SimpleNamespace(name="n1")
        self._catalog = {"b": BucketInfo("b", "b/b/1", "r1", (1, 2, 3), 1)}

    def catalog(self) -> dict[str, BucketInfo]:
        return self._catalog

    def clock(self) -> float:
        return time.monotonic()

    def track(self, pending: object) -> None:
        pass

    def submit(self, group: str, request: object, pending: object) -> None:
        pending.resolve(Applied(None))  # type: ignore[attr-defined]

    def send_forward(self, peer: int, group: str, request: object, pending: object) -> None:
        pending.resolve(Applied(None))  # type: ignore[attr-defined]


def time_start(leader: int, calls: int, rounds: int) -> float:
    """Seconds per ``Router.start`` (best round) with the bucket's leader at ``leader``."""
    router = Router(_AnsweringNode(leader))  # type: ignore[arg-type]
    answers: list[object] = []
    command = ("put", b"k", b"v")
    best = float("inf")
    for _ in range(rounds):
        answers.clear()
        started = time.perf_counter()
        for _ in range(calls):
            router.start("b", command, answers.append)
        best = min(best, (time.perf_counter() - started) / calls)
        assert len(answers) == calls, "every request must be answered"
    return best


def time_line_work(calls: int, rounds: int) -> tuple[float, float]:
    """Seconds to parse one GET line fed alone, and to render a 100-byte value's reply."""
    parser = LineParser()
    line = b"GET apple bk00000042\r\n"
    value = b"v" * 100
    parse = render_ = float("inf")
    for _ in range(rounds):
        parsed = 0
        started = time.perf_counter()
        for _ in range(calls):
            parser.feed(line)
            for _event in parser.events():
                parsed += 1
        parse = min(parse, (time.perf_counter() - started) / calls)
        assert parsed == calls, "every line must become one event"
        started = time.perf_counter()
        for _ in range(calls):
            render(Value(value))
        render_ = min(render_, (time.perf_counter() - started) / calls)
    return parse, render_


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m boutique.bench.fastpath")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    for leader, where in ((1, "this node"), (2, "a peer")):
        seconds = time_start(leader, args.calls, args.rounds)
        print(f"Router.start, leader on {where}: {seconds * 1e6:.2f} us per request")
    parse, render_ = time_line_work(args.calls, args.rounds)
    print(f"LineParser.feed of one GET line and its event: {parse * 1e6:.2f} us")
    print(f"render of a 100-byte value's reply: {render_ * 1e6:.2f} us")


if __name__ == "__main__":
    main()
