"""The host core runs with trio unimportable (issue 15): the "simulator adapter" proof.

A child interpreter sets ``sys.modules["trio"] = None`` (so any ``import trio`` fails),
imports ``HostCore`` and what it needs, and drives three of them by hand — the events
and effects of the core's own API only (``tick``, ``turn``, ``on_frame``, ``submit``,
frames out through a ``PeerLink``), frames round-tripped through the real framing —
through an election, a write and a linearizable read applied on every node. As
``tests/raft/test_core_has_no_io.py`` does for the Raft core.
"""

from __future__ import annotations

import subprocess
import sys

DRIVER = """
import sys
sys.modules["trio"] = None  # from here on, any import of trio fails

from boutique.examples.kvstore import KVStore
from boutique.machine import MachineHost
from boutique.runtime.framing import FrameDecoder, encode_frame
from boutique.runtime.group import Applied, Pending
from boutique.runtime.host_core import HostCore
from boutique.runtime.requests import Propose, Read
from boutique.storage import MemoryNodeStorage

IDS = (1, 2, 3)
in_flight = []  # (sender, receiver, frame bytes), in send order
now = [0.0]


class Link:
    def __init__(self, me):
        self.me = me

    def send(self, peer, payload, *, now=False):
        in_flight.append((self.me, peer, encode_frame(payload)))
        return True

    def connected(self, peer):
        return True

    def reachable(self, peer):
        return True

    def set_peers(self, peers):
        pass

    def set_removed(self, removed):
        pass


hosts = {}
for node in IDS:
    host = HostCore(
        node,
        peers={p: ("sim", p) for p in IDS if p != node},
        open_storage=MemoryNodeStorage,
        machine_for=lambda group: KVStore(),
        clock=lambda: now[0],
        seed=node,
    )
    host.open()
    host.attach(Link(node))
    host.open_group("kv", IDS, bootstrap_voters=True, campaign=node == 1)
    hosts[node] = host


def deliver():
    while in_flight:
        batch = list(in_flight)
        in_flight.clear()
        for sender, receiver, frame in batch:
            for payload in FrameDecoder().feed(frame):
                hosts[receiver].on_frame(sender, payload)
        for host in hosts.values():
            while host.turn():
                pass


def run(ticks):
    for _ in range(ticks):
        now[0] += 0.05
        for host in hosts.values():
            host.tick()
            host.turn()
        deliver()


run(20)
leaders = [n for n, h in hosts.items() if h.groups["kv"].leader == n]
assert leaders == [1], leaders
write, read = Pending(), Pending()
hosts[1].submit("kv", Propose(MachineHost.encode_command(("put", "k", "v"))), write)
run(3)
hosts[1].submit("kv", Read(("get", "k")), read)
run(3)
assert isinstance(write.outcome, Applied), write.outcome
assert read.outcome == Applied("v"), read.outcome
applied = {n: h.groups["kv"].host.query(("get", "k")) for n, h in hosts.items()}
assert applied == {1: "v", 2: "v", 3: "v"}, applied
assert "trio" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""


def test_three_host_cores_elect_write_and_apply_with_trio_unimportable() -> None:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
