"""The background work of a member, besides serving its caller's requests.

- `steward`: while the member leads, carry out the membership changes queued in the
  replicated state, one at a time (learner first, promoted once caught up).
- `learn_addresses`: a joining member asks the members it knows for the address book.
- `hand_over`: a leader that stops hands leadership to another voter first.
- `admit`: a member whose storage has no record of the group asks the others whether
  it may found it or must rejoin it (the rule is in `admission`), and acts on it.

The waits are polled, because what they wait for (leadership, a learner catching up)
changes without an event to subscribe to; a few checks per election timeout suffice.
This module only talks to the `RaftHost`; it reads the Raft core's state, never writes it.
"""

from __future__ import annotations

import logging
import secrets
from typing import Protocol

import trio

from boutique.machine import CommandFailed, encode_value
from boutique.raft import ChangeType, ConfChange, Role
from boutique.runtime.group import Applied, GroupRuntime
from boutique.runtime.host import HostSettings, RaftHost
from boutique.runtime.requests import LocalView, Propose, Read

from .admission import GroupView, Verdict, decide, parse_view
from .envelope import Address, Change, GroupState, book_to_wire, parse_book
from .errors import GroupError, Timeout, Unavailable
from .routing import RequestRouter

__all__ = ["DutyMember", "admit", "hand_over", "learn_addresses", "steward"]


class DutyMember(Protocol):
    """What the duties need of a member (``member.Member`` is one). A protocol, not
    the class, so that this module and ``member`` (which starts the duties) do not
    import each other."""

    node_id: int
    group_id: str
    settings: HostSettings
    founders: frozenset[int]
    joining: bool
    rejoining: bool

    @property
    def host(self) -> RaftHost: ...

    @property
    def router(self) -> RequestRouter: ...

    def in_group(self) -> bool: ...

    def election_timeout(self) -> float: ...

    def addresses(self) -> dict[int, Address]: ...

    def learn_addresses(self, book: dict[int, Address]) -> None: ...

    def refresh_peers(self) -> None: ...

    def open_member_group(self, *, found: bool, campaign: bool) -> None: ...


log = logging.getLogger("boutique.group")


async def steward(member: DutyMember) -> None:
    """While `member` leads, carry out the queued membership changes: each node's in
    order, one step at a time. A learner that is still catching up (or has not come
    up at all) does not hold back the changes of other nodes: a member that lost its
    state may be the only seed of that learner, and must be re-admitted first."""
    while True:
        await trio.sleep(member.settings.tick_interval * 2)
        group = member.host.groups.get(member.group_id)
        if group is None or group.node.raft.role is not Role.LEADER:
            continue
        state: GroupState = group.host.state
        seen: set[int] = set()
        for change in list(state.pending):
            if change.node in seen:
                continue  # an earlier change of the same node goes first
            seen.add(change.node)
            if await _carry_out(member, group, change):
                break


async def _carry_out(member: DutyMember, group: GroupRuntime, change: Change) -> bool:
    """Take the next step of `change`; False if it can only wait (a learner that is
    not caught up yet)."""
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
            if progress is None or progress.match < raft.log.committed:
                return False
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
    return True


async def _finish(member: DutyMember, change: Change, result: str) -> None:
    done = encode_value(("m", "done", change.token, result))
    try:
        await member.router.route(Propose(done), member.settings.request_timeout)
    except (Timeout, Unavailable) as exc:
        # "done" is idempotent: whoever leads next records it again.
        log.debug("could not record the end of change %d: %s", change.token, exc)


async def learn_addresses(member: DutyMember) -> None:
    """A joining member may know only one existing member. Ask those it knows for the
    address book, so it accepts the leader's connection whoever leads; once it is a
    member, the book reaches it through the log."""
    host = member.host
    while not member.in_group():
        for peer in sorted(host.peers):
            if host.transport is None or not host.transport.reachable(peer):
                continue
            outcome = await host.forward(peer, member.group_id, Read(("m", "book")), 1.0)
            if isinstance(outcome, Applied) and not isinstance(outcome.reply, CommandFailed):
                try:
                    member.learn_addresses(parse_book(outcome.reply))
                except ValueError:
                    continue
        await trio.sleep(0.25)


async def hand_over(member: DutyMember) -> None:
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


ADMISSION_RETRY = 0.25
"""Seconds between two rounds of questions while a member cannot decide yet."""


async def admit(member: DutyMember) -> None:
    """Host the group once it is known to be safe: found it, join it empty, or first
    have this member removed and added again (it lost its state). Until then the
    member hosts nothing, so it neither votes nor acknowledges."""
    while True:
        answers = await _ask_views(member)
        verdict = decide(member.node_id, member.founders, member.joining, answers)
        if verdict is Verdict.WAIT:
            # Often: founders starting a moment apart. Ask again well within an
            # election timeout, so none is left behind by the first election.
            await trio.sleep(min(ADMISSION_RETRY, member.election_timeout() / 4))
            continue
        log.info("member %d: %s the group", member.node_id, verdict.value)
        if verdict is Verdict.REJOIN:
            member.rejoining = True
            await _readmit(member)
        # Campaign at once only if every founder hosts the group already: an
        # election won before a founder decides would make that founder rejoin.
        everyone = all(answers.get(f) is not None for f in member.founders - {member.node_id})
        member.open_member_group(found=verdict is Verdict.FOUND, campaign=everyone)
        member.refresh_peers()
        return


async def _ask_views(member: DutyMember) -> dict[int, GroupView | None]:
    """Every reachable member's own view of the group (None: it hosts none)."""
    answers: dict[int, GroupView | None] = {}
    timeout = max(member.election_timeout(), 0.5)

    async def ask(peer: int) -> None:
        outcome = await member.host.forward(peer, member.group_id, LocalView(), timeout)
        if isinstance(outcome, Applied) and not isinstance(outcome.reply, CommandFailed):
            try:
                answers[peer] = parse_view(outcome.reply)
            except ValueError as exc:
                log.warning("member %d sent a bad view of the group: %s", peer, exc)

    async with trio.open_nursery() as nursery:
        for peer in sorted(member.host.peers):
            nursery.start_soon(ask, peer)
    return answers


async def _readmit(member: DutyMember) -> None:
    """Have the group remove this member and add it back as a learner; return once
    the removal is committed, after which no candidate counts this member's vote
    until the leader promotes it (caught up, as any new member)."""
    me = member.node_id
    leave, join = secrets.randbits(62), secrets.randbits(62)
    book = book_to_wire({me: member.addresses()[me]})
    request = encode_value(("m", "rejoin", leave, join, me, book))
    timeout = member.settings.request_timeout
    while True:
        try:
            await member.router.route(Propose(request), timeout)
            break
        except (Timeout, Unavailable) as exc:
            # Asking twice is harmless: the second entry replaces the first's join.
            log.info("member %d: no leader took the request to rejoin yet: %s", me, exc)
        except GroupError as exc:
            log.warning("member %d: the request to rejoin failed: %s", me, exc)
        await trio.sleep(ADMISSION_RETRY)
    while True:
        try:
            result = await member.router.route(Read(("m", "result", leave)), timeout)
        except (Timeout, Unavailable):
            result = None
        if result == "ok":
            return
        if result is not None:
            # Only "cannot remove the last voter": this member was the whole group,
            # and what it held is gone with it. Hosting it empty is all there is.
            log.error("member %d could not be removed to rejoin: %s", me, result)
            return
        await trio.sleep(ADMISSION_RETRY)
