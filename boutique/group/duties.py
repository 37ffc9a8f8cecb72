"""The background work of a member, besides serving its caller's requests.

- `steward`: while the member leads, carry out the membership changes queued in the
  replicated state, one at a time (learner first, promoted once caught up).
- `learn_addresses`: a joining member asks the members it knows for the address book.
- `hand_over`: a leader that stops hands leadership to another voter first.

The waits are polled, because what they wait for (leadership, a learner catching up)
changes without an event to subscribe to; a few checks per election timeout suffice.
This module only talks to the `RaftHost`; it reads the Raft core's state, never writes it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from boutique.machine import CommandFailed, encode_value
from boutique.raft import ChangeType, ConfChange, Role
from boutique.runtime.group import Applied, GroupRuntime

from .envelope import Change, GroupState, parse_book
from .errors import Timeout, Unavailable

if TYPE_CHECKING:
    from .member import Member

__all__ = ["hand_over", "learn_addresses", "steward"]

log = logging.getLogger("boutique.group")


async def steward(member: Member[Any, Any, Any, Any]) -> None:
    """While `member` leads, carry out the queued membership changes in order."""
    while True:
        await trio.sleep(member.settings.tick_interval * 2)
        group = member.host.groups.get(member.group_id)
        if group is None or group.node.raft.role is not Role.LEADER:
            continue
        state: GroupState = group.host.state
        if state.pending:
            await _carry_out(member, group, state.pending[0])


async def _carry_out(
    member: Member[Any, Any, Any, Any], group: GroupRuntime, change: Change
) -> None:
    raft = group.node.raft
    conf = raft.conf
    node = change.node
    kind: ChangeType | None = None
    if change.op == "join":
        if node in conf.voters:
            await _finish(member, change, "ok")
        elif node in conf.learners:
            progress = raft.progress.get(node)
            # Promote only a caught-up learner, so the new voter does not stall commits
            # while it fetches the log.
            if progress is not None and progress.match >= raft.log.committed:
                kind = ChangeType.ADD_VOTER
        else:
            kind = ChangeType.ADD_LEARNER
    elif node not in conf.members():
        await _finish(member, change, "ok")
    elif conf.voters == {node}:
        await _finish(member, change, "error: cannot remove the last voter")
    else:
        kind = ChangeType.REMOVE
    if kind is not None:
        outcome = await member.host.change_membership(
            member.group_id, ConfChange.single(kind, node), member.settings.request_timeout
        )
        if not isinstance(outcome, Applied):
            # Another change still applying, or leadership lost: the next round retries.
            log.debug("membership change %s %d not done yet: %s", kind.name, node, outcome)


async def _finish(member: Member[Any, Any, Any, Any], change: Change, result: str) -> None:
    done = encode_value(("m", "done", change.token, result))
    try:
        await member.router.route("w", done, member.settings.request_timeout)
    except (Timeout, Unavailable) as exc:
        # "done" is idempotent: whoever leads next records it again.
        log.debug("could not record the end of change %d: %s", change.token, exc)


async def learn_addresses(member: Member[Any, Any, Any, Any]) -> None:
    """A joining member may know only one existing member. Ask those it knows for the
    address book, so it accepts the leader's connection whoever leads; once it is a
    member, the book reaches it through the log."""
    host = member.host
    while not member.in_group():
        for peer in sorted(host.peers):
            if host.transport is None or not host.transport.reachable(peer):
                continue
            outcome = await host.forward(peer, member.group_id, "r", ("m", "book"), 1.0)
            if isinstance(outcome, Applied) and not isinstance(outcome.reply, CommandFailed):
                try:
                    member.learn_addresses(parse_book(outcome.reply))
                except ValueError:
                    continue
        await trio.sleep(0.25)


async def hand_over(member: Member[Any, Any, Any, Any]) -> None:
    """A leader that stops first hands leadership to the most caught-up voter it can
    reach, so the others go on at once instead of after an election timeout, and
    requests forwarded to it are answered. Bounded by one election timeout, and
    shielded: a member stopped by cancellation still hands over."""
    group = member.host.groups.get(member.group_id)
    transport = member.host.transport
    if group is None or transport is None or group.node.raft.role is not Role.LEADER:
        return
    raft = group.node.raft
    me = member.node_id
    reachable = [v for v in raft.conf.voters if v != me and transport.reachable(v)]
    if not reachable:
        return
    target = max(reachable, key=lambda v: (raft.progress[v].match, -v))
    limit = member.election_timeout()
    with trio.CancelScope(shield=True, deadline=trio.current_time() + limit):
        await member.host.transfer_leader(member.group_id, target, limit)
