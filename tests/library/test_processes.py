"""Groups of three OS processes through a leader kill.

`Ledger`, a machine defined only in this file, is replicated across three processes:
each runs this file as a script (see `child_main`), serving one member through the
blocking API and answering JSON requests on stdin. The test SIGKILLs the leader's
process, keeps working through the survivors, restarts the killed member and sees it
catch up. The shipped examples (Counter, QueueWithLength, KVStore) get the same
treatment. Every process a test starts is ended by its PID in `finally`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from boutique.machine import decode_value, encode_value

pytestmark = pytest.mark.distributed

SECRET = "process-tests-secret-0123456789"
REPO = Path(__file__).resolve().parents[2]


# --- The custom machine ------------------------------------------------------------------


class Ledger:
    """Accounts with balances. Every command carries a request id the ledger remembers,
    so a command retried after a `Timeout` (outcome unknown) is applied at most once.

    Commands: ("deposit", request_id, account, amount)
              ("move", request_id, from_account, to_account, amount)
    Reply: the balance of the (first) account afterwards.
    Queries: ("balance", account) and ("total",).
    """

    def initial_state(self) -> dict[str, Any]:
        return {"balances": {}, "done": {}}

    def apply(self, state: dict[str, Any], command: Any) -> tuple[int, dict[str, Any]]:
        request_id = command[1]
        if request_id in state["done"]:
            return state["done"][request_id], state
        balances = state["balances"]
        match command:
            case ("deposit", _, str() as account, int() as amount) if amount > 0:
                balances[account] = balances.get(account, 0) + amount
                reply = balances[account]
            case ("move", _, str() as source, str() as target, int() as amount) if amount > 0:
                if balances.get(source, 0) < amount:
                    raise ValueError(f"{source} has less than {amount}")
                balances[source] -= amount
                balances[target] = balances.get(target, 0) + amount
                reply = balances[source]
            case _:
                raise ValueError(f"not a ledger command: {command!r}")
        state["done"][request_id] = reply
        return reply, state

    def query(self, state: dict[str, Any], query: Any) -> int:
        match query:
            case ("balance", str() as account):
                return int(state["balances"].get(account, 0))
            case ("total",):
                return sum(state["balances"].values())
        raise ValueError(f"not a ledger query: {query!r}")

    def snapshot(self, state: dict[str, Any]) -> bytes:
        return encode_value(state)

    def restore(self, data: bytes) -> dict[str, Any]:
        state = decode_value(data)
        if not isinstance(state, dict):
            raise ValueError("not a ledger snapshot")
        return state


# --- The child process: one member, driven by JSON lines on stdin -------------------------


def machine_named(name: str) -> Any:
    from boutique.examples import Counter, KVStore, QueueWithLength

    return {
        "Ledger": Ledger,
        "Counter": Counter,
        "QueueWithLength": QueueWithLength,
        "KVStore": KVStore,
    }[name]()


def child_main(argv: list[str]) -> None:
    from boutique import BlockingMember, GroupError, HostSettings, Timeout

    parser = argparse.ArgumentParser()
    parser.add_argument("--machine", required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--peers", required=True)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    members = {}
    for item in args.peers.split(","):
        node, _, port = item.partition("=")
        members[int(node)] = ("127.0.0.1", int(port))
    settings = HostSettings(tick_interval=0.02, election_ticks=10)

    def answer(value: dict[str, Any]) -> None:
        print(json.dumps(value), flush=True)

    with BlockingMember.start(
        machine_named(args.machine),
        node_id=args.id,
        members=members,
        secret=SECRET,
        data_dir=args.data_dir,
        settings=settings,
    ) as member:
        answer({"ready": args.id})
        for line in sys.stdin:
            request = json.loads(line)
            op, arg, timeout = request["op"], request.get("arg"), request.get("timeout", 5.0)
            try:
                if op == "command":
                    result: Any = member.command(arg, timeout)
                elif op == "query":
                    result = member.query(arg, timeout)
                elif op == "local":
                    result = member.local_query(arg)
                elif op == "status":
                    status = member.status()
                    result = {"leader": status.leader, "role": status.role}
                else:
                    raise ValueError(op)
            except Timeout as exc:
                answer({"error": "Timeout", "message": str(exc)})
            except GroupError as exc:
                answer({"error": type(exc).__name__, "message": str(exc)})
            else:
                answer({"ok": result})


# --- The test side ---------------------------------------------------------------------


class Child:
    """One member process; `call` sends a request and waits for its answer line."""

    def __init__(self, machine: str, node: int, ports: dict[int, int], workdir: Path) -> None:
        self.machine = machine
        self.node = node
        self.ports = ports
        self.workdir = workdir
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()

    def start(self, data_dir: Path | None) -> None:
        self.spawn(data_dir)
        self.wait_started()

    def spawn(self, data_dir: Path | None) -> None:
        peers = ",".join(f"{n}={p}" for n, p in self.ports.items())
        command = [sys.executable, __file__, "--machine", self.machine]
        command += ["--id", str(self.node), "--peers", peers]
        if data_dir is not None:
            command += ["--data-dir", str(data_dir)]
        log = open(self.workdir / f"member-{self.node}.log", "a")  # noqa: SIM115
        self.lines = queue.Queue()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        log.close()
        threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()

    def wait_started(self) -> None:
        assert json.loads(self._next_line(20))["ready"] == self.node

    @staticmethod
    def _read(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    def _next_line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"member {self.node} did not answer; see its log") from None

    def call(self, op: str, arg: Any = None, timeout: float = 5.0) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, "arg": arg, "timeout": timeout}) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._next_line(timeout + 10))
        return answer

    def ok(self, op: str, arg: Any = None, timeout: float = 5.0) -> Any:
        answer = self.call(op, arg, timeout)
        assert "ok" in answer, answer
        return answer["ok"]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def three_members(machine: str, workdir: Path, durable: bool) -> Iterator[list[Child]]:
    from boutique.testing.local_cluster import free_ports

    ports = dict(enumerate(free_ports(3), start=1))
    children = [Child(machine, node, ports, workdir) for node in ports]
    try:
        for child in children:  # spawned together: Python's start-up runs in parallel
            child.spawn(workdir / f"data-{child.node}" if durable else None)
        for child in children:
            child.wait_started()
        yield children
    finally:
        for child in children:
            child.kill()


def find_leader(children: list[Child], deadline: float = 10.0) -> Child:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for child in children:
            running = child.process is not None and child.process.poll() is None
            if running and child.ok("status")["role"] == "leader":
                return child
        time.sleep(0.05)
    raise AssertionError("no leader elected")


def command_exactly_once(child: Child, command: list[Any]) -> Any:
    """Retry after an unknown outcome: the request id makes the retry harmless."""
    for _ in range(5):
        answer = child.call("command", command)
        if "ok" in answer:
            return answer["ok"]
        assert answer["error"] in ("Timeout", "Unavailable", "NoQuorum"), answer
    raise AssertionError(f"{command} never succeeded")


def wait_until_local(child: Child, query: Any, expected: Any) -> None:
    """Wait until the member's own copy answers `query` with `expected` (it caught up).
    A member that lost its state has no copy until it is re-admitted: Unavailable."""
    end = time.monotonic() + 10
    while (answer := child.call("local", query).get("ok", "unavailable")) != expected:
        assert time.monotonic() < end, f"member {child.node} stuck at {answer!r}"
        time.sleep(0.05)


def test_a_machine_defined_only_here_survives_a_leader_kill(tmp_path: Path) -> None:
    with three_members("Ledger", tmp_path, durable=True) as children:
        for i in range(5):
            reply = command_exactly_once(children[i % 3], ["deposit", f"d{i}", "alice", 10])
            assert reply == 10 * (i + 1)
        leader = find_leader(children)
        leader.kill()
        survivors = [c for c in children if c is not leader]
        for i in range(5, 10):
            command_exactly_once(survivors[i % 2], ["deposit", f"d{i}", "alice", 10])
        # A retried request id is answered from the ledger's memory, not applied again.
        assert command_exactly_once(survivors[0], ["deposit", "d3", "alice", 10]) == 40
        assert command_exactly_once(survivors[1], ["move", "m1", "alice", "bob", 30]) == 70
        refused = survivors[0].call("command", ["move", "m2", "bob", "carol", 31])
        assert refused == {"error": "CommandError", "message": "ValueError: bob has less than 31"}
        assert survivors[1].ok("query", ["balance", "bob"]) == 30
        assert survivors[0].ok("query", ["total"]) == 100
        # The killed member restarts from its data directory and catches up.
        leader.start(tmp_path / f"data-{leader.node}")
        assert leader.ok("query", ["balance", "alice"]) == 70
        wait_until_local(leader, ["balance", "bob"], 30)
        assert leader.ok("local", ["total"]) == 100


EXAMPLES: dict[str, tuple[list[list[Any]], list[list[Any]], Any, Any]] = {
    "Counter": (
        [["incr", 5], ["decr", 2], ["incr", 10]],
        [["incr", 1], ["set", 100], ["decr", 1]],
        "value",
        99,
    ),
    "QueueWithLength": (
        [["push", "a"], ["push", "b"], ["pop"]],
        [["push", "c"], ["push", "d"], ["pop"]],
        "items",
        ["c", "d"],
    ),
    "KVStore": (
        [["put", "a", 1], ["put", "b", 2], ["delete", "a"]],
        [["cas", "b", 2, 3], ["put", "c", [1, "x"]], ["put", "d", None]],
        ["keys"],
        ["b", "c", "d"],
    ),
}


@pytest.mark.parametrize("machine", sorted(EXAMPLES))
def test_example_machines_survive_a_leader_kill(machine: str, tmp_path: Path) -> None:
    before, after, query, expected = EXAMPLES[machine]
    with three_members(machine, tmp_path, durable=False) as children:
        for i, command in enumerate(before):
            children[i % 3].ok("command", command)
        leader = find_leader(children)
        leader.kill()
        survivors = [c for c in children if c is not leader]
        # These commands are not idempotent, so none may meet an unknown outcome: wait
        # for the survivors' election first (a command forwarded to the dead leader in
        # the moment before its death is noticed would end in Timeout, rightly).
        find_leader(survivors)
        for i, command in enumerate(after):
            survivors[i % 2].ok("command", command, timeout=10)
        assert survivors[0].ok("query", query) == expected
        # In memory, the killed member restarts empty and catches up from the others.
        leader.start(None)
        assert leader.ok("query", query) == expected
        wait_until_local(leader, query, expected)


if __name__ == "__main__":
    child_main(sys.argv[1:])
