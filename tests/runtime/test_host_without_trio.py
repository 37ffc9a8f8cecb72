"""The host's turn is sans-I/O (issue 15): stepped by hand, outside any trio run, with a
clock of the caller's. Only the async edges of ``RaftHost`` (``run``, its ticker, the
waits) need an event loop; a simulator steps the same turn the production loop runs."""

from __future__ import annotations

import pytest
import trio

from boutique.examples.kvstore import KVStore
from boutique.machine import MachineHost
from boutique.runtime.group import Applied, Pending, Unknown
from boutique.runtime.requests import Propose, Read
from boutique.testing.host_doubles import RecordingTransport, make_host


def test_a_group_elects_writes_and_reads_in_turns_without_an_event_loop() -> None:
    with pytest.raises(RuntimeError):
        trio.current_time()  # this test is not inside a trio run
    host = make_host(RecordingTransport(), machine_for=lambda group: KVStore())
    now = 0.0
    host.clock = lambda: now
    host.open_group("kv", (1,), bootstrap_voters=True, campaign=True)

    def turns() -> None:
        nonlocal now
        for _ in range(5):
            now += host.settings.tick_interval
            host._tick_due = True  # what the ticker task would say
            host._turn()

    turns()
    write, read = Pending(), Pending()
    host.submit("kv", Propose(MachineHost.encode_command(("put", "k", "v"))), write)
    turns()
    host.submit("kv", Read(("get", "k")), read)
    turns()
    assert isinstance(write.outcome, Applied)
    assert read.outcome == Applied("v")


def test_tracked_requests_expire_by_the_hosts_clock() -> None:
    host = make_host(RecordingTransport())
    now = 100.0
    host.clock = lambda: now
    pending = Pending()
    host.track(pending)
    assert pending.deadline == 100.0 + host.settings.request_timeout
    now += host.settings.request_timeout
    host._tick_due = True
    host._turn()
    assert isinstance(pending.outcome, Unknown)
