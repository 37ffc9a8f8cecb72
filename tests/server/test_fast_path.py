"""The task-free path of PUT, GET and DELETE (``Router.start`` and the host's tracked
requests), against a real single-node ``Node``.

Nearly every request under load takes this path, so it must answer exactly as the full
router would: one attempt that settles the request is answered from the host loop;
anything else (a rejection, a read whose outcome is unknown) is handed to a task that
runs the full router, and a write whose fate is unknown is ``ERR TIMEOUT``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio

from boutique.machine import CommandFailed
from boutique.runtime.group import Applied, Outcome, Pending, Rejected, Unknown
from boutique.runtime.requests import Propose, Read
from boutique_server.server import _Connection

if TYPE_CHECKING:  # conftest is not importable at run time; its fixtures hand these out
    from conftest import Served, StartServer


@pytest.fixture
def command_tasks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every command that ran in a task of its own (the full router)."""
    ran: list[Any] = []
    original = _Connection._run_command

    async def counting(self: _Connection, command: Any, slot: Any, deps: Any) -> None:
        ran.append(command)
        await original(self, command, slot, deps)

    monkeypatch.setattr(_Connection, "_run_command", counting)
    return ran


def outcome_of_submit(
    monkeypatch: pytest.MonkeyPatch, served: Served, outcome: Outcome
) -> list[str]:
    """Make every task-free attempt in the node end with ``outcome``; returns the kinds
    of the attempts made."""
    assert served.node is not None
    attempts: list[str] = []

    def submit(group_id: str, request: Propose | Read, pending: Pending) -> None:
        attempts.append("w" if isinstance(request, Propose) else "r")
        pending.resolve(outcome)

    monkeypatch.setattr(served.node, "submit", submit)
    return attempts


async def create(conn: Any, command_tasks: list[Any], name: bytes = b"b") -> None:
    """CREATE a bucket, uncounted: the first CREATE after the node started may meet a
    meta group without a leader yet, which the full router retries in a task."""
    await conn.send(b"CREATE " + name + b"\r\n")
    await conn.expect(b"OK\r\n")
    assert len(command_tasks) <= 1
    command_tasks.clear()


async def create_and_wake(conn: Any, command_tasks: list[Any]) -> None:
    """CREATE bucket ``b`` and use it once: a new bucket is dormant, and the first use
    founds its group (``runtime.dormant``), an attempt that meets no leader yet and so
    is retried by the full router, in a task. Neither is counted, so what follows
    counts as on a bucket in use."""
    await create(conn, command_tasks)
    await conn.send(b"PUT b ~wake 1\r\n")
    await conn.expect(b"OK\r\n")
    assert len(command_tasks) <= 1
    command_tasks.clear()


async def test_put_get_delete_take_no_task(served: Served, command_tasks: list[Any]) -> None:
    conn = await served.connect()
    await create_and_wake(conn, command_tasks)
    # One command at a time: a GET sent right behind a PUT must wait for it, and a
    # command with something to wait for runs in a task (see the next test).
    for i in range(20):
        await conn.send(b"PUT b k%d v%d\r\n" % (i, i))
        await conn.expect(b"OK\r\n")
        await conn.send(b"GET b k%d\r\n" % i)
        await conn.expect(b"v%d\r\nOK\r\n" % i)
    await conn.send(b"DELETE b k3\r\n")
    await conn.expect(b"OK\r\n")
    await conn.send(b"GET b k3\r\n")
    await conn.expect(b"\r\nOK\r\n")
    assert command_tasks == []


async def test_a_command_behind_an_unfinished_one_waits_in_a_task(
    served: Served, command_tasks: list[Any]
) -> None:
    conn = await served.connect()
    await create_and_wake(conn, command_tasks)
    await conn.send(b"PUT b k v1\r\nPUT b k v2\r\nGET b k\r\n")
    await conn.expect(b"OK\r\nOK\r\nv2\r\nOK\r\n")
    # The second PUT waits for the first (same key), the GET for both.
    assert len(command_tasks) == 2


async def test_a_bucket_this_node_does_not_know_goes_to_the_full_router(
    served: Served, command_tasks: list[Any]
) -> None:
    conn = await served.connect()
    await conn.send(b"GET nowhere k\r\nPUT nowhere k v\r\n")
    await conn.expect(b"NOT FOUND\r\nNOT FOUND\r\n")
    assert len(command_tasks) == 2


async def test_a_rejected_attempt_is_retried_by_the_full_router(
    served: Served, command_tasks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await served.connect()
    await create(conn, command_tasks)
    attempts = outcome_of_submit(monkeypatch, served, Rejected("not the leader"))
    await conn.send(b"PUT b k v\r\n")
    await conn.expect(b"OK\r\n")
    await conn.send(b"GET b k\r\n")
    await conn.expect(b"v\r\nOK\r\n")
    assert attempts == ["w", "r"]
    assert len(command_tasks) == 2


async def test_a_write_of_unknown_outcome_is_a_timeout_and_a_read_is_retried(
    served: Served, command_tasks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await served.connect()
    await create_and_wake(conn, command_tasks)
    await conn.send(b"PUT b k v\r\n")
    await conn.expect(b"OK\r\n")
    outcome_of_submit(monkeypatch, served, Unknown("the leader went away"))
    await conn.send(b"PUT b k w\r\nDELETE b k\r\nGET b k\r\n")
    await conn.expect(b"ERR TIMEOUT outcome unknown: the leader went away\r\n" * 2 + b"v\r\nOK\r\n")
    assert len(command_tasks) == 1  # the GET's retry


async def test_a_machine_error_is_answered_without_a_retry(
    served: Served, command_tasks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await served.connect()
    await create(conn, command_tasks)
    outcome_of_submit(monkeypatch, served, Applied(CommandFailed("ValueError", "bad key")))
    await conn.send(b"PUT b k v\r\n")
    await conn.expect(b"ERR SYNTAX bad key\r\n")
    assert command_tasks == []


async def test_a_request_nothing_resolves_ends_unknown_at_its_deadline(
    start_server: StartServer,
) -> None:
    served = await start_server(request_timeout=0.3)
    assert served.node is not None
    outcomes: list[Outcome] = []
    resolved = trio.Event()

    def then(outcome: Outcome) -> None:
        outcomes.append(outcome)
        resolved.set()

    pending = Pending(then=then)
    served.node.track(pending)  # nothing will ever resolve it
    with trio.fail_after(5):
        await resolved.wait()
    assert outcomes == [Unknown("timed out waiting for the group")]
    assert pending.abandoned


async def test_a_request_whose_deadline_passed_is_over_without_a_second_deadline(
    served: Served, command_tasks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every attempt refused until the request timeout passed: ERR UNAVAILABLE at once,
    # not a task with the full router, whose own deadline would only start then.
    conn = await served.connect()
    await create(conn, command_tasks)
    node = served.node
    assert node is not None
    real_clock = node.clock
    late = 0.0
    monkeypatch.setattr(node, "clock", lambda: real_clock() + late)

    def submit(group_id: str, request: Propose | Read, pending: Pending) -> None:
        nonlocal late
        late = 2 * node.config.request_timeout  # the attempt outlived the deadline
        pending.resolve(Rejected("not the leader"))

    monkeypatch.setattr(node, "submit", submit)
    await conn.send(b"PUT b k v\r\n")
    await conn.expect(b"ERR UNAVAILABLE not the leader\r\n")
    assert command_tasks == []


async def test_creates_take_no_task_and_leave_together_in_few_registry_entries(
    served: Served, command_tasks: list[Any]
) -> None:
    conn = await served.connect()
    await create(conn, command_tasks, b"first")  # the meta group has its leader now
    assert served.node is not None
    meta = served.node.groups["meta"]
    applied = meta.host.applied_index
    names = [b"c%d" % i for i in range(20)]
    # CREATEs of different buckets wait for nothing: none of them costs a task, and
    # those read while the first batches are out leave in one entry.
    await conn.send(b"".join(b"CREATE " + name + b"\r\n" for name in names))
    await conn.expect(b"OK\r\n" * len(names))
    assert command_tasks == []
    # One entry each for the first two (nothing else was out), one for the rest; the
    # bound leaves room for a read cut short and the node's own registry entries.
    assert meta.host.applied_index - applied <= len(names) // 2
    # A write to a bucket waits for its CREATE (in a task); the GET for everything.
    await conn.send(b"CREATE late\r\nPUT late k v\r\nGET late k\r\n")
    await conn.expect(b"OK\r\nOK\r\nv\r\nOK\r\n")
    assert sorted(type(c).__name__ for c in command_tasks) == ["Get", "Put"]  # any order
    assert sorted(await served.router.buckets()) == sorted(
        ["first", "late", *(name.decode() for name in names)]
    )


async def test_a_create_that_finds_its_bucket_goes_to_the_full_router(
    served: Served, command_tasks: list[Any]
) -> None:
    # The bucket exists: the full router checks that no DROP fenced it (and answers OK).
    conn = await served.connect()
    await create(conn, command_tasks)
    await conn.send(b"CREATE b\r\n")
    await conn.expect(b"OK\r\n")
    assert [type(c).__name__ for c in command_tasks] == ["Create"]
