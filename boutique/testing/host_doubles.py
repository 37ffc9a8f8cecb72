"""A host core driven by hand, for tests of the host's own logic (mail, forwarding,
stopping, broken links): no sockets, no event loop.

``RecordingTransport`` stands in for ``PeerTransport``: it encodes each payload exactly
as the real one frames it (so what msgpack cannot carry fails the same way), keeps
what it accepted, and calls every peer connected and reachable. ``make_host`` builds
host 1 of three around it. Never used by the store itself, and never imports trio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from boutique.machine import StateMachine
from boutique.runtime.framing import encode_frame
from boutique.runtime.host_core import Address, HostCore, NodeStorage
from boutique.storage import MemoryNodeStorage


class RecordingTransport:
    """Takes frames like ``PeerTransport.send`` and keeps them; with ``accept=False``
    it refuses every frame, as when the peer's stream is gone."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.frames: list[tuple[int, Any]] = []

    def send(self, peer: int, payload: object, *, now: bool = False) -> bool:
        encode_frame(payload)  # raises TypeError for what msgpack cannot carry
        if self.accept:
            self.frames.append((peer, payload))
        return self.accept

    def connected(self, peer: int) -> bool:
        return True

    def reachable(self, peer: int) -> bool:
        return True

    def set_peers(self, peers: dict[int, Address]) -> None:
        pass

    def set_removed(self, removed: frozenset[int]) -> None:
        pass


def _no_machine(group: str) -> StateMachine[Any, Any, Any, Any, Any]:
    raise AssertionError(f"no group is opened in this test, yet {group!r} was")


class ManualClock:
    """A clock a test moves by hand (``advance``)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_host(
    transport: RecordingTransport,
    machine_for: Callable[[str], StateMachine[Any, Any, Any, Any, Any]] = _no_machine,
    clock: Callable[[], float] | None = None,
) -> HostCore:
    """Host 1 of nodes 1-3 with ``transport``, in-memory storage already open, ``clock``
    (a ``ManualClock`` at 0 unless given) and ``machine_for`` for the groups a test
    opens."""
    storage: Callable[[], NodeStorage] = MemoryNodeStorage
    host = HostCore(
        1,
        peers={2: ("127.0.0.1", 1), 3: ("127.0.0.1", 2)},
        open_storage=storage,
        machine_for=machine_for,
        clock=ManualClock() if clock is None else clock,
    )
    host.open()
    host.attach(transport)
    return host
