"""The store node's logic runs with trio unimportable (issue 15): three ``StoreCore``s
driven by hand, as ``test_host_core_sans_io`` drives three host cores.

A child interpreter makes ``import trio`` fail, then runs ``three_store_cores`` from
this file: three ``StoreCore``s (a ``node.Node`` without its trio adapter) on memory
storage, one ``ManualClock``, and an in-memory ``PeerLink`` that carries each frame
through the real framing to the receiver's ``on_frame``. Requests go in as the router
sends them (``submit`` on the client's node, ``send_forward`` to the leader a refusal
names, with the registry's and the bucket's command encoding), retried while certainly
not applied, as the router retries. The run goes through:

1. the meta group's election (the configured first founder campaigns);
2. CREATE: the registry's ``create``, applied on all three: the bucket is dormant on
   each of its replicas, and no node hosts its group yet;
3. the first PUT: its toucher founds the group and campaigns, the others found it on
   its first message; the write commits; a GET reads it;
4. DROP, as ``router_flows.drop`` does it: the tombstone in the bucket's own log (the
   bucket answers ``BucketDropped`` from then on, and its leader's mover would finish
   the DROP), then the registry's ``drop``: every node closes the group and deletes
   its storage, and the registry no longer knows the bucket.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from boutique.config import parse_config
from boutique.machine import MachineHost, wire_items
from boutique.registry import META_GROUP, BucketInfo
from boutique.runtime.framing import FrameDecoder, encode_frame
from boutique.runtime.group import Pending
from boutique.runtime.outcomes import Done, NotApplied, Refused, Verdict, classify
from boutique.runtime.requests import Propose, Read
from boutique.runtime.store_core import StoreCore
from boutique.storage import MemoryNodeStorage
from boutique.testing.config_text import node_tables
from boutique.testing.host_doubles import ManualClock, RecordingTransport

IDS = (1, 2, 3)
CONFIG = """
cluster_name = "t"
secret = "a secret for this test"
replication = 3
""" + node_tables(IDS)

CHILD = f"""
import runpy
import sys
sys.modules["trio"] = None  # from here on, any import of trio fails
runpy.run_path({str(Path(__file__))!r})["three_store_cores"]()
loaded = [m for m in sys.modules if m.split(".")[0] == "trio" and sys.modules[m] is not None]
assert not loaded, loaded
print("ok")
"""


class Link(RecordingTransport):
    """A ``PeerLink`` that queues each frame, as the transport frames it, for
    ``Cluster.deliver`` (the rest of the link is ``RecordingTransport``'s)."""

    def __init__(self, me: int, in_flight: list[tuple[int, int, bytes]]) -> None:
        super().__init__()
        self.me = me
        self.in_flight = in_flight

    def send(self, peer: int, payload: object, *, now: bool = False) -> bool:
        self.in_flight.append((self.me, peer, encode_frame(payload)))
        return True


class Cluster:
    """Three store cores, a clock and the frames in flight between them."""

    def __init__(self) -> None:
        config = parse_config(CONFIG, base_dir=Path("/nonexistent"))
        self.clock = ManualClock()
        self.in_flight: list[tuple[int, int, bytes]] = []
        self.cores: dict[int, StoreCore] = {}
        for me in config.nodes:
            core = StoreCore(
                config, me, open_storage=MemoryNodeStorage, clock=self.clock, seed=me.id
            )
            core.open()
            # An empty data directory: nothing is hosted until founding admits the node.
            assert not core.groups, core.groups
            core.attach(Link(me.id, self.in_flight))
            self.cores[me.id] = core
        for core in self.cores.values():
            core.open_groups()  # what the adapter does once founding says it may

    def deliver(self) -> None:
        while self.in_flight:
            batch = list(self.in_flight)
            self.in_flight.clear()
            for sender, receiver, frame in batch:
                for payload in FrameDecoder().feed(frame):
                    self.cores[receiver].on_frame(sender, payload)
            for core in self.cores.values():
                while core.turn():
                    pass

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.clock.advance(self.cores[1].settings.tick_interval)
            for core in self.cores.values():
                core.tick()
                core.turn()
            self.deliver()

    def ask(self, node: int, group: str, request: Propose | Read) -> Verdict:
        """What a client of ``node`` is told: ``request`` run in ``node``'s copy of
        ``group``, or forwarded to the leader a refusal names, and retried while it is
        certainly not applied (an election may be under way), as the router does."""
        target = node
        for _ in range(10):
            pending = Pending()
            if target == node:
                self.cores[node].submit(group, request, pending)
            else:
                self.cores[node].send_forward(target, group, request, pending)
            for _ in range(20):
                if pending.outcome is not None:
                    break
                self.run(1)
            assert pending.outcome is not None, f"no outcome for {request} in {group}"
            verdict = classify(pending.outcome, may_apply=isinstance(request, Propose))
            if not isinstance(verdict, NotApplied):
                return verdict
            target = verdict.leader or target
            self.run(2)
        raise AssertionError(f"{request} in {group} was refused every time: {verdict}")

    def hosted(self) -> dict[int, set[str]]:
        return {node: set(core.groups) for node, core in self.cores.items()}


def write(command: tuple[object, ...]) -> Propose:
    return Propose(MachineHost.encode_command(command))


def three_store_cores() -> None:
    cluster = Cluster()
    cores = cluster.cores
    cluster.run(20)
    assert [n for n, c in cores.items() if c.is_meta_leader()] == [1]
    assert all(core.meta_members() == IDS for core in cores.values())

    # CREATE: one registry entry; the bucket sleeps on its replicas.
    created = cluster.ask(2, META_GROUP, write(("create", "apples")))
    assert isinstance(created, Done), created
    status, wire = wire_items(created.reply, 2)
    info = BucketInfo.from_wire(wire)
    assert status == "created" and info.replicas == IDS, created
    cluster.run(3)
    for core in cores.values():
        assert core.catalog() == {"apples": info}
        assert info.group in core.dormant, (core.id, list(core.dormant))
        assert core.status()["group_counts"]["dormant"] == 1
    assert cluster.hosted() == {n: {META_GROUP} for n in IDS}

    # The first PUT founds the group (node 3 touches it and campaigns), then a GET.
    assert cluster.ask(3, info.group, write(("put", b"k", b"v"))) == Done(None)
    assert cores[3].groups[info.group].leader == 3
    assert cluster.ask(3, info.group, Read(("get", b"k"))) == Done(b"v")
    cluster.run(3)
    assert cluster.hosted() == {n: {META_GROUP, info.group} for n in IDS}
    assert not any(info.group in core.dormant for core in cores.values())

    # DROP, step 1: the tombstone in the bucket's own log fences it everywhere.
    assert cluster.ask(3, info.group, write(("tombstone",))) == Done(True)
    fenced = cluster.ask(3, info.group, Read(("get", b"k")))
    assert isinstance(fenced, Refused) and fenced.failed.error_type == "BucketDropped"
    assert cores[3].fenced_but_listed() == [info]  # the leader's mover would finish it
    # DROP, step 2: the registry forgets it, and every node closes its group.
    dropped = cluster.ask(3, META_GROUP, write(("drop", "apples", info.group)))
    assert dropped == Done(True), dropped
    cluster.run(3)
    assert cluster.hosted() == {n: {META_GROUP} for n in IDS}
    for core in cores.values():
        assert core.catalog() == {}
        assert core.storage is not None and info.group not in core.storage.groups()
    assert cluster.ask(2, META_GROUP, Read(("lookup", "apples"))) == Done(None)


def test_three_store_cores_create_write_read_and_drop_with_trio_unimportable() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
