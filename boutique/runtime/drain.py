"""The graceful stop of a host: hand leadership over, answer what was taken on, leave.

``drain`` is what SIGTERM and Ctrl-C run before the host is cancelled:

1. ``host.stopping``: requests that peers forward from now on are refused as certainly
   not applied, so their nodes retry them elsewhere (the caller refuses its own new
   client commands, e.g. the line server answers ``ERR UNAVAILABLE node is stopping``);
2. every group this host leads with other voters hands leadership to its most
   up-to-date reachable voter (Raft's TimeoutNow transfer), asked again whenever Raft
   abandons a transfer, until none is led here or ``handover_timeout`` passes;
3. wait, at most ``settle_timeout``, until every request taken on has an outcome
   (``host.busy`` and the caller's ``busy``): a write the old leader proposed commits
   under the new one, and this host applies it and answers ``OK``;
4. halt the host's loop, resolving whatever is left (a write as outcome unknown), send
   those answers, then a goodbye frame to every peer. Frames arrive in order, so a peer
   that reads the goodbye knows every request it still waits for here was never
   applied, and retries it elsewhere at once instead of timing out.

The caller then cancels the host, which closes its storage. Every wait is bounded: a
peer that does not cooperate delays the stop, it never blocks it. This module never
touches a ``RawNode`` outside the host's loop (it goes through ``host.call``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from boutique.raft import Role

from .group import GroupRuntime
from .host import GOODBYE, RaftHost

log = logging.getLogger("boutique.drain")

NO_NODE = 0


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What the drain achieved, for the one log line of a stop."""

    led: int
    """Groups led here when the drain began."""
    still_leading: int
    """Of those, groups still led here when the hand-over time ran out."""
    unsettled: bool
    """True if some request had no outcome when the settle time ran out."""
    seconds: float


def led_groups(host: RaftHost) -> list[str]:
    """Groups this host leads that have another voter to hand leadership to."""
    return [
        group_id
        for group_id, group in host.groups.items()
        if group.node.raft.role is Role.LEADER and len(group.node.raft.conf.voters) > 1
    ]


def _hand_over(host: RaftHost) -> Callable[[GroupRuntime], int]:
    """A ``host.call`` function: start a transfer to the best voter, unless one is
    under way; returns the target (0: nothing to do)."""

    def start(group: GroupRuntime) -> int:
        raft = group.node.raft
        if raft.role is not Role.LEADER:
            return NO_NODE
        if raft.lead_transferee != NO_NODE:
            return int(raft.lead_transferee)
        transport = host.transport
        others = [v for v in raft.conf.voters if v != raft.id]
        if not others:
            return NO_NODE
        # A reachable voter that already holds most of the log finishes soonest; the
        # transfer itself still waits until the target holds all of it.
        target = max(
            others,
            key=lambda v: (
                transport is not None and transport.reachable(v),
                raft.progress[v].match if v in raft.progress else -1,
                -v,
            ),
        )
        group.node.transfer_leader(target)
        return target

    return start


async def hand_over_leadership(host: RaftHost, timeout: float) -> int:
    """Transfer every group led here; returns how many are still led here at the end."""
    interval = host.settings.tick_interval
    deadline = trio.current_time() + timeout
    start = _hand_over(host)
    leading = led_groups(host)
    while leading and trio.current_time() < deadline:
        remaining = max(interval, deadline - trio.current_time())
        async with trio.open_nursery() as nursery:
            for group_id in leading:
                nursery.start_soon(host.call, group_id, start, remaining)
        await trio.sleep(interval)
        leading = led_groups(host)
    return len(leading)


async def settle(host: RaftHost, busy: Callable[[], bool], timeout: float) -> bool:
    """Wait until no request taken on lacks an outcome; False if time ran out."""
    interval = host.settings.tick_interval / 2
    with trio.move_on_after(timeout):
        while host.busy() or busy():
            await trio.sleep(interval)
        return True
    return False


async def say_goodbye(host: RaftHost, timeout: float) -> None:
    """Halt the host, send what it still owes, then the goodbye frame to every peer."""
    # Requests from peers got their outcome in ``halt``, and their answers joined the
    # mail (no task serves them), so it is complete now.
    host.halt()
    host.flush_mail()
    transport = host.transport
    if transport is None:
        return
    peers = [peer for peer in host.peers if peer != host.id]
    for peer in peers:
        transport.send(peer, {GOODBYE: True}, now=True)
    with trio.move_on_after(timeout):
        while any(transport.queued(peer) for peer in peers if transport.connected(peer)):
            await trio.sleep(host.settings.tick_interval / 4)


async def drain(
    host: RaftHost,
    *,
    busy: Callable[[], bool] = lambda: False,
    handover_timeout: float,
    settle_timeout: float,
) -> DrainReport:
    """Run the whole stop sequence (see the module docstring); the caller cancels the
    host afterwards."""
    began = trio.current_time()
    host.stopping = True
    leading = len(led_groups(host))
    still_leading = await hand_over_leadership(host, handover_timeout)
    settled = await settle(host, busy, settle_timeout)
    await say_goodbye(host, timeout=1.0)
    return DrainReport(
        led=leading,
        still_leading=still_leading,
        unsettled=not settled,
        seconds=trio.current_time() - began,
    )
