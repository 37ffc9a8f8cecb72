"""`Member`: one node of a replicated group of a user's state machine, for trio code.

A member hosts one Raft group (through `RaftHost`) whose machine is the user's machine
wrapped in an `Envelope`. Any member takes commands and linearizable queries and gets
them to the leader (`routing`). Membership changes are queued in the replicated state
and carried out by whoever leads (`duties.steward`), so they can be asked for at any
member and survive a change of leader.

Every member's peer list is its start-up `members` merged with the replicated address
book, so a member added at one node becomes reachable from all of them.

A removed member is refused by the others as soon as they apply its removal (no
connection, no request it forwards is served, even through a connection opened
before), and told so when it dials; it learns it from them or from its own log, logs
one line, stops its connections and serves nothing more: `command`, `query` and
`wait_ready` raise `Removed`, and `status().role` is "removed".

This module never blocks the event loop and never opens files itself (the host opens
the storage this module chooses).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

import trio

from boutique.machine import CommandFailed, StateMachine, WireValue, decode_value, encode_value
from boutique.runtime.group import GroupRuntime, Rejected
from boutique.runtime.host import HostSettings, NodeStorage, RaftHost
from boutique.runtime.requests import Propose, Read
from boutique.storage import MemoryNodeStorage
from boutique.storage.sqlite import SqliteStorage

from . import duties
from .envelope import Address, Envelope, GroupState, book_to_wire
from .errors import CommandError, MembershipError, NotLeader, Removed, Timeout, Unavailable
from .routing import RequestRouter, settle

__all__ = ["Member", "MemberStatus"]

log = logging.getLogger("boutique.group")

_REMOVED = object()
"""What ``_unless_removed`` answers once the member knows it was removed."""

C = TypeVar("C")
R = TypeVar("R")
Q = TypeVar("Q")
A = TypeVar("A")

DEFAULT_TIMEOUT = 5.0
MEMBERSHIP_TIMEOUT = 30.0
"""A new member must start (if it was not running) and catch up within this time."""


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What one member knows about its group, right now (it may lag the leader)."""

    node_id: int
    group: str
    role: str
    """One of: leader, follower, candidate, pre-candidate; "removed" once this member
    knows it was removed from the group."""
    leader: int | None
    term: int
    commit_index: int
    applied_index: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    addresses: dict[int, Address]
    """Every address this member knows: its start-up `members` and the address book."""


class _LibraryHost(RaftHost):
    """A `RaftHost` with exactly one group, the member's; it tells the member when the
    group applied something so the peer list follows the address book."""

    def __init__(self, member: Member[Any, Any, Any, Any], **kwargs: Any) -> None:
        self.member = member
        super().__init__(**kwargs)

    def load_groups(self) -> None:
        assert self.storage is not None
        if self.member.group_id in self.storage.groups():
            # The storage remembers the group: its term, vote and log are its own.
            self.open_member_group(found=False)
        # Otherwise nothing is hosted until `duties.admit` has decided, from the other
        # members' answers, whether this is the group's first start (see `admission`).

    def open_member_group(self, *, found: bool, campaign: bool = False) -> None:
        """Host the member's group: as a founding voter if `found`, else as whatever
        the storage holds (empty: a member waiting to be added). With `campaign`, the
        lowest founder campaigns at once, so a new group has a leader after one round
        trip instead of an election timeout."""
        member = self.member
        founders = tuple(sorted(member.founders))
        self.open_group(
            member.group_id,
            founders,
            bootstrap_voters=found,
            campaign=found and campaign and self.id == founders[0],
            # One group per host: heartbeats are cheap, and a group that never goes quiet
            # notices a dead leader by itself, without the transport's help.
            quiesce=False,
            track_applied=True,
        )

    def on_applied(self, group: GroupRuntime, restored: bool) -> None:
        self.member.refresh_peers()

    def on_removed(self) -> None:
        self.member.stop_as_removed()


class Member(Generic[C, R, Q, A]):
    """One member of a group replicating a user's `StateMachine`.

    Start it with `async with Member.start(...) as member:`. Type parameters: Command,
    Reply, Query, Answer of the machine. Replies and answers come back decoded from
    msgpack (arrays as tuples), whichever member served them.
    """

    def __init__(
        self,
        machine: StateMachine[Any, C, R, Q, A],
        *,
        node_id: int,
        members: Mapping[int, Address],
        secret: bytes | str,
        data_dir: str | PathLike[str] | None = None,
        group: str = "default",
        join: bool = False,
        listen: Address | None = None,
        settings: HostSettings | None = None,
    ) -> None:
        self.node_id = node_id
        self.group_id = group
        self.joining = join
        self.rejoining = False
        """Set while this member, which lost its state, is removed and added back."""
        self.static_members: dict[int, Address] = _check_members(node_id, members)
        self.founders = frozenset(self.static_members)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.settings = settings if settings is not None else HostSettings()
        self._learned: dict[int, Address] = {}
        self._nursery: trio.Nursery | None = None
        self._removed_event = trio.Event()
        """Set when this member learns it was removed (see ``stop_as_removed``)."""
        envelope = Envelope(machine)
        self.host = _LibraryHost(
            self,
            node_id=node_id,
            secret=secret.encode() if isinstance(secret, str) else secret,
            cluster_name=f"boutique-group/{group}",
            peers={n: a for n, a in self.static_members.items() if n != node_id},
            listen=listen if listen is not None else self.static_members[node_id],
            open_storage=self._open_storage,
            machine_for=lambda _group_id: envelope,
            settings=self.settings,
        )
        self.router = RequestRouter(self.host, group, self._candidates)

    @classmethod
    def start(
        cls,
        machine: StateMachine[Any, C, R, Q, A],
        *,
        node_id: int,
        members: Mapping[int, Address],
        secret: bytes | str,
        data_dir: str | PathLike[str] | None = None,
        group: str = "default",
        join: bool = False,
        listen: Address | None = None,
        settings: HostSettings | None = None,
    ) -> AbstractAsyncContextManager[Member[C, R, Q, A]]:
        """Run a member for the duration of an `async with` block.

        - `members`: node id -> (host, port) of the group's founding members, this one
          included (its entry is where it listens, unless `listen` says otherwise). A
          joining member needs its own entry and at least one existing member's.
        - `secret`: shared by every member; peers prove they hold it before any Raft
          message is accepted. Make it long and random.
        - `data_dir`: None keeps the log in memory (a restarted member catches up from
          its peers); a directory makes the member durable (SQLite, fsync per batch).
          A member whose storage has no record of the group asks the others first: it
          founds the group only if every founder answers and none has held an
          election; if the group exists and lists it as a voter, it lost its state and
          comes back as a new learner (removed and added again) before it votes.
        - `join=True`: do not found the group; wait to be added by `add_member` at an
          existing member. Also needed to restart an in-memory member that was added
          after the group was founded.
        - `settings`: timing (tick interval, election ticks) and snapshot frequency.

        Returns once the member listens; it may not know a leader yet (see
        `wait_ready`). Leaving the block stops the member.
        """
        member = cls(
            machine,
            node_id=node_id,
            members=members,
            secret=secret,
            data_dir=data_dir,
            group=group,
            join=join,
            listen=listen,
            settings=settings,
        )
        return member._running()

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Member[C, R, Q, A]]:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.host.run)
                self._nursery = nursery
                if self.removed:
                    nursery.start_soon(self._halt)  # learnt while its log was replayed
                nursery.start_soon(duties.steward, self)
                if self.group_id not in self.host.groups:
                    nursery.start_soon(duties.admit, self)
                nursery.start_soon(duties.learn_addresses, self)
                try:
                    yield self
                finally:
                    await duties.hand_over(self)
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # trio's nurseries wrap every error in exception groups, even the caller's
            # own from the `async with` body or a port that is taken: give back the one
            # error there is, as itself.
            sole = _sole_error(group)
            if sole is not None:
                raise sole from None
            raise

    def _open_storage(self) -> NodeStorage:
        if self.data_dir is None:
            return MemoryNodeStorage()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return SqliteStorage(self.data_dir / f"member-{self.node_id}.db")

    # --- Requests -----------------------------------------------------------------------

    async def command(
        self, command: C, timeout: float = DEFAULT_TIMEOUT, *, forward: bool = True
    ) -> R:
        """Replicate `command` and return the machine's reply once it is applied.

        Raises `CommandError` if the machine raised, `Timeout` if the outcome is unknown,
        `Unavailable`/`NoQuorum` if it was certainly not applied, `TypeError` if the
        command is not a plain msgpack value. With `forward=False` the command is only
        proposed here: `NotLeader` (with a hint) if this member does not lead.
        """
        data = encode_value(("u", command))
        self._check_not_removed()
        if forward:
            reply = await self.router.route(Propose(data), timeout)
        else:
            outcome = await self.host.propose(self.group_id, data, timeout)
            if isinstance(outcome, Rejected) and outcome.leader != self.node_id:
                raise NotLeader(outcome.leader or None)
            reply = settle(Propose(data), outcome)
        return cast(R, _user_value(reply))

    async def query(self, query: Q, timeout: float = DEFAULT_TIMEOUT) -> A:
        """Answer `query` on a state that includes every command applied before the call
        (a linearizable read: ReadIndex at the leader). Any member can serve it.

        Raises `CommandError` if the machine's `query` raised, `Unavailable`/`NoQuorum`
        if no leader confirmed the read in time.
        """
        # Round-trip the query so it reaches the machine in the same shape whether it is
        # served here or forwarded (arrays as tuples), and fails early if not plain.
        body = decode_value(encode_value(("u", query)))
        self._check_not_removed()
        answer = await self.router.route(Read(body), timeout)
        return cast(A, _user_value(answer))

    def local_query(self, query: Q) -> A:
        """Answer `query` from this member's own copy, without asking the leader: fast,
        but possibly stale (it misses what this member has not applied yet)."""
        group = self._group()
        body = decode_value(encode_value(("u", query)))
        try:
            answer = group.host.query(body)
        except Exception as exc:
            raise CommandError(CommandFailed.from_exception(exc)) from None
        return cast(A, decode_value(answer))

    def leader(self) -> int | None:
        """The member this one believes leads (None if it knows of none). It can be stale:
        `command` and `query` do not need it."""
        group = self.host.groups.get(self.group_id)
        if group is None:
            return None
        return group.leader or None

    def status(self) -> MemberStatus:
        """This member's view of the group, for dashboards and tests."""
        group = self._group()
        raft = group.node.raft
        return MemberStatus(
            node_id=self.node_id,
            group=self.group_id,
            role="removed" if self.removed else raft.role.value,
            leader=raft.lead or None,
            term=raft.term,
            commit_index=raft.log.committed,
            applied_index=group.host.applied_index,
            voters=tuple(sorted(raft.conf.voters)),
            learners=tuple(sorted(raft.conf.learners)),
            addresses=self.addresses(),
        )

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until this member belongs to the group's membership and knows a leader
        (a member that lost its state and is being re-admitted: until it votes again).

        Raises `Timeout` (maybe_applied False) if that takes longer than `timeout`."""
        with trio.move_on_after(timeout):
            while True:
                self._check_not_removed()
                group = self.host.groups.get(self.group_id)
                raft = group.node.raft if group is not None else None
                if raft is not None and raft.lead:
                    # A member being re-admitted is ready once it votes again.
                    conf = raft.conf
                    if self.node_id in (conf.voters if self.rejoining else conf.members()):
                        return
                await trio.sleep(self.settings.tick_interval)
        raise Timeout(f"member {self.node_id} is not ready", maybe_applied=False)

    # --- Membership ---------------------------------------------------------------------

    async def add_member(
        self, node_id: int, address: Address, timeout: float = MEMBERSHIP_TIMEOUT
    ) -> None:
        """Add `node_id`, listening at `address`, as a voter.

        Every member learns the address; the new member (started with `join=True`, before
        or after this call) joins as a learner, catches up, and is then promoted. Returns
        once it votes. On `Timeout` the change goes on in the background; `remove_member`
        cancels it. Raises `MembershipError` if `node_id` was removed from the group: a
        member that comes back needs a new id.
        """
        if node_id <= 0:
            raise ValueError(f"a node id must be positive, not {node_id}")
        host, port = address
        book = {**self.addresses(), node_id: (str(host), int(port))}
        await self._change("join", node_id, book, timeout)

    async def remove_member(self, node_id: int, timeout: float = MEMBERSHIP_TIMEOUT) -> None:
        """Remove `node_id` from the group (a leader hands leadership over first).

        The removed member's process keeps running until it is stopped; it no longer
        takes part. Raises `MembershipError` if it would remove the last voter.
        """
        await self._change("leave", node_id, {}, timeout)

    async def transfer_leadership(self, node_id: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Make voter `node_id` the leader (e.g. before stopping the current leader's
        machine). Returns once this member sees `node_id` lead."""
        deadline = trio.current_time() + timeout
        while True:
            raft = self._group().node.raft
            if raft.lead == node_id:
                return
            if node_id not in raft.conf.voters:
                raise MembershipError(f"node {node_id} is not a voter")
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise Timeout(f"node {node_id} did not take over in time", maybe_applied=True)
            # A transfer is abandoned after an election timeout if the target lags;
            # asking again restarts it.
            attempt = min(remaining, self.election_timeout() * 2)
            outcome = await self.host.transfer_leader(self.group_id, node_id, attempt)
            if isinstance(outcome, Rejected) and not raft.lead:
                await trio.sleep(min(self.settings.tick_interval, max(0.0, remaining)))

    async def _change(
        self, op: Literal["join", "leave"], node_id: int, book: dict[int, Address], timeout: float
    ) -> None:
        deadline = trio.current_time() + timeout
        token = secrets.randbits(62)
        request = ("m", "change", token, op, node_id, book_to_wire(book))
        await self.router.route(Propose(encode_value(request)), timeout)
        while True:
            if node_id == self.node_id and self.removed:
                return  # it removed itself, and the others told it so
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise Timeout(f"the change of node {node_id} goes on in the background")
            try:
                result = await self._unless_removed(Read(("m", "result", token)), remaining)
            except Unavailable:
                continue  # the deadline check above ends this
            if result is _REMOVED:
                continue  # the check above returns: the removal it asked for is done
            if result == "ok":
                break
            if result is not None:
                raise MembershipError(f"node {node_id}: " + str(result))
            await trio.sleep(min(0.05, remaining))
        # The change is committed; wait (briefly) until this member applied it too, so
        # `status()` right after the call shows it.
        while trio.current_time() < deadline:
            if node_id == self.node_id:
                return
            conf = self._group().node.raft.conf
            if (node_id in conf.voters) == (op == "join"):
                return
            await trio.sleep(self.settings.tick_interval)

    async def _unless_removed(self, request: Read, timeout: float) -> object:
        """``request``'s answer, or ``_REMOVED`` as soon as this member learns it was
        removed: a removed member is refused by everyone, so waiting for the answer
        would only wait out the timeout (a member that removed itself did, 30 s by
        default, although it knew at once)."""
        answer: list[object] = []
        failed: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                try:
                    answer.append(await self.router.route(request, timeout))
                except Exception as exc:  # re-raised below as it came, not in a group
                    failed.append(exc)
                finally:
                    nursery.cancel_scope.cancel()

            async def watch() -> None:
                await self._removed_event.wait()
                answer.append(_REMOVED)
                nursery.cancel_scope.cancel()

            nursery.start_soon(ask)
            nursery.start_soon(watch)
        if failed:
            raise failed[0]
        return answer[0] if answer else _REMOVED

    # --- Addresses ----------------------------------------------------------------------

    def addresses(self) -> dict[int, Address]:
        """Every member address known here: start-up `members`, then what was learnt."""
        group = self.host.groups.get(self.group_id)
        book = group.host.state.book if group is not None else {}
        return {**self.static_members, **self._learned, **book}

    def open_member_group(self, *, found: bool, campaign: bool) -> None:
        """Host the group as admission decided (see ``duties.admit``)."""
        self.host.open_member_group(found=found, campaign=campaign)

    def learn_addresses(self, book: dict[int, Address]) -> None:
        """Merge addresses learnt outside the log (a joining member's seeds' books)."""
        self._learned.update(book)
        self.refresh_peers()

    def refresh_peers(self) -> None:
        """Make the transport's peers match the known addresses (called after every
        applied batch, so an address added anywhere reaches every member)."""
        self.host.set_removed(frozenset(self._removed_members()))
        if self.node_id in self.host.removed_ids:
            self.host.learn_removed(self.node_id)  # it applied its own removal
        peers = {n: a for n, a in self.addresses().items() if n != self.node_id}
        if peers != self.host.peers:
            self.host.set_peers(peers)

    def _removed_members(self) -> set[int]:
        """Tombstoned members, and those whose removal took effect in the Raft
        membership but is not recorded as done yet (refused from that moment on)."""
        group = self.host.groups.get(self.group_id)
        if group is None:
            return set(self.host.removed_ids)
        state: GroupState = group.host.state
        members = group.node.raft.conf.members()
        # A leave followed by a join of the same node is a re-admission (a member that
        # lost its state, see ``admission``): it is out only until the join.
        coming_back = {c.node for c in state.pending if c.op == "join"}
        leaving = {
            c.node
            for c in state.pending
            if c.op == "leave" and c.node not in members and c.node not in coming_back
        }
        return {*state.removed, *leaving}

    # --- Removal ------------------------------------------------------------------------

    @property
    def removed(self) -> bool:
        """True once this member knows it was removed from the group."""
        return self.host.removed_by is not None

    def stop_as_removed(self) -> None:
        """Called once, when this member learns it was removed: say so, close every
        connection and stop the host's loop (what it still waited for is settled)."""
        by = self.host.removed_by
        source = "its own log" if by == self.node_id else f"member {by}"
        log.warning(
            "member %d of group %s was removed from the group (told by %s): it serves "
            "nothing more; stop its process",
            self.node_id,
            self.group_id,
            source,
        )
        self.host.set_peers({})
        self._removed_event.set()
        # Often called from inside the host's turn (applying its own removal), where
        # the loop must not be halted under its feet: halt it from a task.
        if self._nursery is not None:
            self._nursery.start_soon(self._halt)

    async def _halt(self) -> None:
        self.host.halt()

    def _check_not_removed(self) -> None:
        if self.removed:
            raise Removed(f"member {self.node_id} was removed from group {self.group_id}")

    # --- Internals ----------------------------------------------------------------------

    def in_group(self) -> bool:
        """Whether this member is a voter or learner of the group, as far as it knows
        (False while it does not host the group yet)."""
        group = self.host.groups.get(self.group_id)
        return group is not None and self.node_id in group.node.raft.conf.members()

    def election_timeout(self) -> float:
        """The shortest election timeout, in seconds."""
        return self.settings.tick_interval * self.settings.election_ticks

    def _group(self) -> GroupRuntime:
        group = self.host.groups.get(self.group_id)
        if group is None:
            if self.group_id in self.host.quarantined:
                raise Unavailable(self.host.quarantine_message(self.group_id))
            raise Unavailable(
                "the member does not host its group: it is stopped, or still asking the "
                "other members whether it may found the group or must rejoin it"
            )
        return group

    def _candidates(self) -> set[int]:
        """Members worth trying when no leader is known: the group's members and the
        founders, among those whose address this member knows."""
        group = self.host.groups.get(self.group_id)
        conf_members = group.node.raft.conf.members() if group is not None else frozenset()
        known = {self.node_id, *self.host.peers}
        return known & ({self.node_id, *conf_members} | self.founders)


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only exception in `group` (nested groups flattened), else None."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


def _check_members(node_id: int, members: Mapping[int, Address]) -> dict[int, Address]:
    checked: dict[int, Address] = {}
    for node, address in members.items():
        if not isinstance(node, int) or isinstance(node, bool) or node <= 0:
            raise ValueError(f"member ids must be positive ints, not {node!r}")
        host, port = address
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"member {node}: an address is (host, port), not {address!r}")
        checked[node] = (host, port)
    if node_id not in checked:
        raise ValueError(f"members must include this member ({node_id}) and its address")
    return checked


def _user_value(reply: WireValue) -> object:
    """A user machine's reply or answer: msgpack bytes in the envelope's reply (see
    `envelope`), decoded here, where the caller's types are known."""
    if not isinstance(reply, bytes):
        raise TypeError(f"a user reply travels as msgpack bytes, not {type(reply).__name__}")
    return decode_value(reply)
