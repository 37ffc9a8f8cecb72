"""``HostCore``: one process hosting many Raft groups, of any state machines, sans I/O.

This is the multi-Raft engine under both the bucket store (``store_core.StoreCore``) and the
consensus library, with no event loop: it is driven by events and produces effects.

Events in (each a plain call; none blocks):

* ``on_frame(peer, payload)`` — a peer frame (Raft messages, forwarded requests and
  answers, hello and goodbye); ``on_suspect(peer)`` and ``on_link_lost(peer)`` — what
  the transport learnt about a peer;
* ``submit`` / ``execute`` / ``submit_call`` / ``submit_change`` — a local request,
  carrying a ``Pending`` that is resolved later (its ``then`` callback runs then);
* ``tick()`` — a tick is due (the adapter's ticker says so every ``tick_interval``);
* ``turn()`` — do the work posted since the last turn.

Effects out: frames handed to the ``PeerLink`` (``transport``), writes and ONE commit
(fsync) of the ``NodeStorage`` per Ready cycle, outcomes through each ``Pending``, and
``on_work()``: "call ``turn()`` soon", called whenever work is posted outside a turn.

Each ``turn()``:

1. ticks the active (non-quiet) groups if a tick is due, and steps every inbound
   message and local request;
2. takes a ``Ready`` from every group that has one and sends the messages that may
   leave at once, batched into one frame per destination node;
3. writes every group's hard state, entries and snapshots, then syncs the storage
   ONCE for all of them (group commit);
4. sends the messages that needed that sync, again one frame per destination;
5. applies committed entries, serves reads, advances, and tells the owner (through
   ``on_applied``) what the groups it watches applied;
6. sends the requests forwarded to other nodes and the answers to theirs, again one
   frame per destination (``runtime.forwarding.Forwarder``).

Two adapters drive it: ``runtime.host.RaftHost`` with trio in production (a loop task
calls ``turn`` when woken, a ticker calls ``tick``, awaiting helpers wait on a
``Pending``), and the simulators (``boutique.testing``), which call the same methods by
hand on a virtual clock. There is one Ready driver (``_cycle``) for all of them.

Idle groups go quiet (``RaftConfig.quiesce``) and leave the tick set, so a host with
thousands of idle groups does almost nothing. When the transport suspects a peer,
groups led by it are woken to elect someone else.

A group the owner hosts but has not opened (a dormant bucket, ``runtime.dormant``, or
a stored group not loaded since the restart) is opened by ``materialize`` when a request
or a peer's message for it first arrives.

A group whose core fails (``GROUP_FAILURES``) is quarantined and the others carry on;
a failure of the node's storage propagates out of ``turn`` (and ends the node). When a
stream to or from a peer breaks, requests forwarded to it and follower reads waiting on
it are settled within ``LINK_LOSS_GRACE``.

A graceful stop (``runtime.drain``) sets ``stopping`` (peers' requests are refused as
certainly not applied), waits until ``busy`` is false, then ``halt``s the host and
sends each peer a goodbye frame; a peer that reads it retries elsewhere whatever it
still waits for here. A new process greets its peers first, which ends the goodbye.

Removed nodes: the owner calls ``set_removed`` with the ids its replicated records say
were removed; they stop being peers, their connections close, requests they forward
are refused, and the transport tells each one, when it dials, that it was removed.
A host told so calls ``on_removed`` once (the owner stops it: see ``Node`` and
``Member``); ``removed_by`` says which peer told it.

What it must never do: import trio (or anything that does), await, sleep, open a socket
or read the time other than through the injected ``clock`` (the one exception: the
duration of a storage commit is measured for the ``on_sync`` metric, and nothing
decides on it). ``tests/runtime/test_host_core_sans_io.py`` runs it with trio made
unimportable.
"""

from __future__ import annotations

import collections
import heapq
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from boutique.machine import AnyMachine, AnyMachineHost, MachineHost, WireValue
from boutique.raft import (
    Message,
    NotLeaderError,
    RaftConfig,
    RawNode,
    Role,
    bootstrap,
)
from boutique.raft.messages import ConfChange
from boutique.raft.storage import StorageError

from .codec import CodecError, decode_batch, encode_batch
from .forwarding import ANSWERS, REQUESTS, ForwardedRequest, Forwarder
from .framing import DEFAULT_MAX_FRAME
from .group import Applied, GroupRuntime, GroupStore, Pending, Rejected, Reply, Unknown
from .requests import (
    ChangeMembership,
    GroupLeaderView,
    LeaderView,
    LocalView,
    Propose,
    Read,
    Request,
    TransferLeader,
)

log = logging.getLogger("boutique.host")

GROUP_FAILURES = (RuntimeError, StorageError)
"""What the core (or a group's own storage reads) raises when ONE group's state is
broken: a conflict with a committed entry, compacted entries and no snapshot, a Ready
out of order. Such a group is quarantined; the others carry on. Storage failures of the
whole node (``boutique.storage.errors.DataFileError``: a failed commit, a closed data
file) are not among them: they stop the node."""

LINK_LOSS_GRACE = 0.2
"""Seconds a forwarded request may still be answered after a stream to or from its
peer broke (an answer already in our socket buffer is read in that time); then it is
settled without its answer instead of waiting out the whole request timeout."""

GOODBYE = "bye"
"""Key of the last frame a stopping host sends each peer (``{"bye": True}``)."""
HELLO = "hi"
"""Key of the first frame a host sends each peer (``{"hi": True}``): a new process, so a
goodbye heard from an earlier one no longer holds."""

MAX_GROUPS_PER_TURN = 256
"""Groups carried over from earlier turns handled in one turn at most (new input and
ticks are always handled)."""

MAX_OPENS_PER_TURN = 64
"""Groups one turn opens for peers' Raft messages at most (``materialize``: an unloaded
group read from storage, a dormant one founded; about 0.5 ms each). Messages for more
are dropped, as a lost message is (its sender sends again), so a restart whose peers
wake thousands of groups at once never makes a turn that starves the transport."""

Address = tuple[str, int]

StatusField = int | str | bool | list[int]
"""A field of a group's entry in ``HostCore.group_status``."""


class NodeStorage(Protocol):
    """Every group's storage on one node (``SqliteStorage``, ``MemoryNodeStorage``)."""

    def group(self, group_id: str) -> GroupStore: ...
    def groups(self) -> list[str]: ...
    def drop_group(self, group_id: str) -> None: ...
    def pending_writes(self) -> int: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class PeerLink(Protocol):
    """What the host needs of its link to the peers (``PeerTransport`` in production,
    an in-memory network in a simulator): frames out, and what it knows of each peer.
    Frames in arrive through ``HostCore.on_frame``."""

    def send(self, peer: int, payload: object, *, now: bool = False) -> bool: ...
    def connected(self, peer: int) -> bool: ...
    def reachable(self, peer: int) -> bool: ...
    def set_peers(self, peers: dict[int, Address]) -> None: ...
    def set_removed(self, removed: frozenset[int]) -> None: ...


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Timing and sizes shared by every group of a host."""

    tick_interval: float = 0.05
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = 10_000
    request_timeout: float = 5.0
    snapshot_chunk_size: int = 1 << 20
    """Bytes of snapshot per InstallSnapshot message: a snapshot of any size goes to a
    follower in messages (and frames) of about this size."""
    max_frame: int = DEFAULT_MAX_FRAME
    """The largest peer frame accepted (see ``PeerTransport``)."""
    max_inflight_appends: int = 1
    """Unacknowledged appends per follower. One keeps the message count per write low
    under load: what is proposed while an append is in flight goes in the next one, so
    the per-message cost (a Python-level encode, decode and step) is shared."""
    max_entries_per_append: int = 256
    """Entries per append message at most. The simulator makes it tiny in some runs so
    that a leader's catch-up travels in many small appends (windows that one big append
    would hide, such as an old term's entry acknowledged without the new leader's
    no-op)."""


DEFAULT_SETTINGS = HostSettings()


@dataclass(slots=True)
class HostCounters:
    """What the loop did since the host started; STATUS shows them and the benchmark
    divides them by the operations it ran (how well turns batch)."""

    turns: int = 0
    """Turns of the loop (one per wake-up)."""
    syncs: int = 0
    """Storage commits (one fsync each) for all groups at once."""
    proposals: int = 0
    reads: int = 0
    messages_out: int = 0
    """Raft messages sent to peers (many travel in one frame)."""
    messages_in: int = 0
    frames_out: int = 0
    """Frames handed to the transport (one per peer per send)."""
    snapshot_pieces: int = 0
    """Pieces of snapshots built (one per building group per turn)."""
    snapshots_taken: int = 0
    """Snapshots built and recorded (not counting those installed from a leader)."""
    longest_turn_us: int = 0
    """The longest turn of the loop so far, in microseconds, snapshot pieces, storage
    syncs and sends included: the worst stall of the host's work this node has seen
    (an integer, like every counter, so STATUS and the benchmark parse it alike)."""


@dataclass(frozen=True, slots=True)
class _Step:
    peer: int
    batch: dict[str, list[Message]]


@dataclass(frozen=True, slots=True)
class _Propose:
    group: str
    data: bytes
    pending: Pending


@dataclass(frozen=True, slots=True)
class _Read:
    group: str
    query: WireValue
    pending: Pending


@dataclass(frozen=True, slots=True)
class _Suspect:
    peer: int


@dataclass(frozen=True, slots=True)
class _Call:
    """Run ``fn`` inside a turn (e.g. the drain starting a leader transfer) and resolve
    with its result."""

    group: str
    fn: Callable[[GroupRuntime], Reply]
    pending: Pending


@dataclass(frozen=True, slots=True)
class _Change:
    """Propose a membership change; ``pending`` is resolved once it is applied."""

    group: str
    change: ConfChange
    pending: Pending


@dataclass(frozen=True, slots=True)
class _Transfer:
    """Hand the group's leadership to ``target``; ``pending`` is resolved once this node
    sees ``target`` lead."""

    group: str
    target: int
    pending: Pending


_InboxItem = _Step | _Propose | _Read | _Suspect | _Call | _Change | _Transfer


class HostCore:
    """Hosts groups on one node, driven by calls (see the module docstring).

    Subclasses decide which groups exist: override ``load_groups`` (called by ``open``,
    before any peer traffic) and ``on_applied`` (called after groups with
    ``track_applied`` applied entries or installed a snapshot).
    """

    def __init__(
        self,
        node_id: int,
        *,
        peers: dict[int, Address],
        open_storage: Callable[[], NodeStorage],
        machine_for: Callable[[str], AnyMachine],
        clock: Callable[[], float],
        on_work: Callable[[], None] | None = None,
        settings: HostSettings = DEFAULT_SETTINGS,
        seed: int | None = None,
    ) -> None:
        self.id = node_id
        self.peers = dict(peers)
        self.open_storage = open_storage
        self.machine_for = machine_for
        self.settings = settings
        self.rng = random.Random(seed)
        self.clock = clock
        """The time (seconds) the host reads: request deadlines, broken links. The trio
        adapter passes ``trio.current_time``; a simulator its virtual clock."""
        self.on_work: Callable[[], None] = on_work or _nothing
        """Called when work is posted outside a turn: the driver should call ``turn``
        soon. Called often; it must be cheap and must not call back into the host."""
        self.storage: NodeStorage | None = None
        self.groups: dict[str, GroupRuntime] = {}
        self.active: set[str] = set()
        self.quarantined: dict[str, str] = {}
        """Groups taken out of service because their core failed: id -> why. They stay
        out until the node restarts (or the group is closed here); see ``_quarantine``."""
        self.transport: PeerLink | None = None
        self._inbox: list[_InboxItem] = []
        self._proposing: dict[str, GroupRuntime] = {}
        """Groups with writes queued and not yet proposed (``_propose_queued``)."""
        self._tick_due = False
        self._carry: set[str] = set()
        self._building: set[str] = set()
        """Groups with a snapshot being built: each gets one piece per turn."""
        self._transfers: list[_Transfer] = []
        """Leader transfers started here, waiting to see their target lead."""
        self.changed: set[str] = set()
        """Groups opened, or that applied entries or a snapshot, since a subclass last
        took this set (``StoreCore`` does, to find fenced buckets): so it never has to look
        at every group to find the few whose state changed."""
        self._links_lost: dict[int, float] = {}
        """Peers a stream to or from broke, and when (latest break): their forwards sent
        before it are settled once ``LINK_LOSS_GRACE`` has passed (``_expire_requests``)."""
        self._tracked: collections.deque[Pending] = collections.deque()
        """Requests without a waiting task, oldest first (see ``track``)."""
        self._in_turn = False
        self._opens_turn = -1
        self._opens = 0
        """Groups opened for peers' messages in turn ``_opens_turn`` (``_hosted``)."""
        self.forwarder = Forwarder(self._mail_posted, max(1, round(1 / settings.tick_interval)))
        """Requests forwarded to peers and waiting for answers, and the requests and
        answers going out at the end of the turn (one frame per peer)."""
        self.counters = HostCounters()
        self.on_sync: Callable[[float], None] | None = None
        """Told how many seconds each storage commit (fsync) took: the metrics'
        histogram, when a server serves metrics."""
        self.stopping = False
        """Set by the drain (``runtime.drain``): requests forwarded by peers are refused
        as certainly not applied, so their nodes retry elsewhere."""
        self.halted = False
        """Set by ``halt``: the host takes no more turns."""
        self.removed_ids: frozenset[int] = frozenset()
        """Node ids removed from the cluster or group (see ``set_removed``)."""
        self.removed_by: int | None = None
        """The peer that told this host it was removed (None: not removed)."""

    # --- Lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Open the storage and load the groups it holds (before any peer traffic)."""
        self.storage = self.open_storage()
        self.load_groups()

    def attach(self, transport: PeerLink) -> None:
        """Use ``transport`` for the peers from now on."""
        self.transport = transport
        if self.removed_ids:
            transport.set_removed(self.removed_ids)

    def close(self) -> None:
        """Give every request of every group an outcome and close the storage."""
        for group in self.groups.values():
            group.close("node shutting down")
        if self.storage is not None:
            self.storage.close()

    def load_groups(self) -> None:
        """Load every group the storage holds (subclasses add their own rules)."""
        assert self.storage is not None
        for group_id in self.storage.groups():
            self.open_group(group_id)

    def on_applied(self, group: GroupRuntime, restored: bool) -> None:
        """A watched group applied entries (``group.on_applied``) or, if ``restored``,
        installed a snapshot. Runs inside the turn; must not block."""

    def on_removed(self) -> None:
        """This host was removed from its cluster or group (``removed_by`` set). Called
        once; must not block. The owner stops serving and shuts the host down."""

    def learn_removed(self, peer: int) -> None:
        """``peer`` (this host's own id: its own records) says this host was removed."""
        if self.removed_by is not None:
            return  # every peer says so; acting once is enough
        self.removed_by = peer
        self.on_removed()

    def open_group(
        self,
        group_id: str,
        voters: tuple[int, ...] = (),
        *,
        bootstrap_voters: bool = False,
        campaign: bool = False,
        quiesce: bool = True,
        track_applied: bool = False,
        announce_commit: bool = True,
    ) -> GroupRuntime:
        """Host ``group_id`` here: load it from storage, or with ``bootstrap_voters``
        start it as a founding member of ``voters`` if the storage has nothing.
        ``announce_commit=False`` suits a group whose followers never serve reads (see
        ``RaftConfig.announce_commit``)."""
        existing = self.groups.get(group_id)
        if existing is not None:
            return existing
        assert self.storage is not None
        storage = self.storage.group(group_id)
        if bootstrap_voters and storage.last_index() == 0:
            hard_state, entries = bootstrap(set(voters))
            storage.bootstrap(hard_state, entries)
        host: AnyMachineHost = MachineHost(self.machine_for(group_id))
        snapshot = storage.snapshot()
        if snapshot.meta.index:
            host.restore(snapshot.data)
        raft_config = RaftConfig(
            id=self.id,
            election_tick=self.settings.election_ticks,
            heartbeat_tick=self.settings.heartbeat_ticks,
            quiesce=quiesce,
            max_inflight_msgs=self.settings.max_inflight_appends,
            max_entries_per_msg=self.settings.max_entries_per_append,
            announce_commit=announce_commit,
            snapshot_chunk_size=self.settings.snapshot_chunk_size,
        )
        node = self.make_raw_node(raft_config, storage, random.Random(self.rng.getrandbits(64)))
        group = GroupRuntime(group_id, node, storage, host, self.settings.snapshot_entries)
        group.track_applied = track_applied
        # A watched group's owner reacts to each applied command: keep them one per entry.
        group.batching = not track_applied
        self.groups[group_id] = group
        self.active.add(group_id)
        self._carry.add(group_id)
        self.changed.add(group_id)
        self.on_work()
        # The preferred leader campaigns at once: a new group is usable in one round
        # trip instead of after an election timeout.
        group.campaign_when_ready = campaign
        return group

    def materialize(self, group_id: str, *, by_request: bool) -> GroupRuntime | None:
        """Open, on its first touch, a group that the owner hosts without having opened
        it (a dormant bucket: ``runtime.dormant``); None if it is not such a group.
        ``by_request``: a local or forwarded request touched it (a campaign then gets
        it a leader), else a peer's Raft message did. Runs inside the turn."""
        return None

    def _hosted(self, group_id: str, *, by_request: bool) -> GroupRuntime | None:
        """The open group, or the one materialized now, or None (a peer's message for
        a group past this turn's ``MAX_OPENS_PER_TURN`` waits for its resending)."""
        group = self.groups.get(group_id)
        if group is None and group_id not in self.quarantined:
            if not by_request:
                if self._opens_turn != self.counters.turns:
                    self._opens_turn, self._opens = self.counters.turns, 0
                if self._opens >= MAX_OPENS_PER_TURN:
                    return None
            try:
                group = self.materialize(group_id, by_request=by_request)
            except GROUP_FAILURES as exc:
                # Its stored state cannot be loaded: out of service, like a group
                # whose core failed; the other groups carry on.
                self.quarantined[group_id] = f"{type(exc).__name__}: {exc}"
                log.error("group %s quarantined on node %d: %s", group_id, self.id, exc)
                return None
            self._opens += group is not None
        return group

    def make_raw_node(self, config: RaftConfig, storage: GroupStore, rng: random.Random) -> RawNode:
        """The core of a group being opened. The Raft-core simulator overrides this to
        run its own configurations and deliberately broken cores through the host."""
        return RawNode(config, storage, rng)

    def close_group(self, group_id: str) -> None:
        """Stop hosting ``group_id`` and delete its storage."""
        self.quarantined.pop(group_id, None)
        group = self.groups.pop(group_id, None)
        self.active.discard(group_id)
        self._carry.discard(group_id)
        self._building.discard(group_id)
        self.changed.discard(group_id)
        if group is not None:
            group.close("group removed from this node")
        assert self.storage is not None
        self.storage.drop_group(group_id)

    # --- Quarantine --------------------------------------------------------------------

    def _quarantine(self, group_id: str, exc: BaseException) -> None:
        """Take ``group_id`` out of service after its core (or its storage reads) failed:
        whatever state it is in can no longer be trusted, so nothing more of it is
        stepped, persisted, applied or sent. Its pending writes end ``Unknown`` (they
        may have been replicated and committed elsewhere), its reads ``Rejected``; new
        requests are refused with the reason. Every other group carries on."""
        group = self.groups.pop(group_id, None)
        if group is None:
            return
        reason = f"{type(exc).__name__}: {exc}"
        self.quarantined[group_id] = reason
        self.active.discard(group_id)
        self._carry.discard(group_id)
        self._building.discard(group_id)
        log.error(
            "group %s quarantined on node %d (no longer served here; other groups carry on): %s",
            group_id,
            self.id,
            reason,
            exc_info=exc,
        )
        group.close(self.quarantine_message(group_id))

    def quarantine_message(self, group_id: str) -> str:
        return f"group {group_id} is quarantined: {self.quarantined.get(group_id, '')}"

    def _not_here(self, group_id: str) -> Rejected:
        """Why a request for a group missing from ``groups`` is refused."""
        if group_id in self.quarantined:
            return Rejected(self.quarantine_message(group_id))
        return Rejected("group not hosted here")

    # --- Inbox --------------------------------------------------------------------------

    def _post(self, item: _InboxItem) -> None:
        self._inbox.append(item)
        self.on_work()

    # --- Events from the transport ------------------------------------------------------

    def on_frame(self, peer: int, payload: object) -> None:
        """A frame from ``peer`` (authenticated by the transport), as msgpack read it."""
        if not isinstance(payload, dict):
            log.warning("node %d sent a frame that is not a map; ignored", peer)
            return
        if payload.get(GOODBYE) is True:
            self._peer_departed(peer)
            return
        self.forwarder.departed.discard(peer)
        if "r" in payload:
            try:
                batch = decode_batch(payload["r"])
            except CodecError as exc:
                log.warning("node %d sent undecodable Raft messages: %s", peer, exc)
                return
            self._post(_Step(peer, batch))
        if REQUESTS in payload:
            for request in self.forwarder.read_requests(peer, payload[REQUESTS]):
                self._on_forward_request(peer, request)
        if ANSWERS in payload:
            self.forwarder.read_answers(peer, payload[ANSWERS])

    def on_suspect(self, peer: int) -> None:
        """The transport has not heard from ``peer`` for too long."""
        # Unreachable now: requests to it are refused for that reason until it is heard
        # from again, whether the process that said goodbye or a new one.
        self.forwarder.departed.discard(peer)
        self._post(_Suspect(peer))

    def on_link_lost(self, peer: int) -> None:
        """A stream to or from ``peer`` broke."""
        # A request in a stream that broke will never be answered: the peer may not have
        # read it, or its answer was in the stream. The peer reconnects at once and is
        # "reachable" again, so without this the request would wait out its timeout.
        self._links_lost[peer] = self.clock()

    # --- The turn -----------------------------------------------------------------------

    def tick(self) -> None:
        """A tick is due (every ``settings.tick_interval``): the next turn ticks the
        active groups and expires requests."""
        self._tick_due = True
        self.on_work()

    def turn(self) -> bool:
        """Do the work posted since the last turn (see the module docstring); True if
        work is left for another turn (a turn's cost is bounded: the driver should
        let other work run, then call again). A halted host does nothing."""
        if self.halted:
            return False
        self._in_turn = True
        try:
            self._turn()
            if self._building:
                self._continue_snapshots()
            if self._transfers:
                self._watch_transfers()
        finally:
            self._in_turn = False
        self.forwarder.flush(self.transport)
        return bool(self._carry or self._building)

    def _turn(self) -> None:
        self.counters.turns += 1
        dirty = self._carry
        self._carry = set()
        if len(dirty) > MAX_GROUPS_PER_TURN:
            # A turn has a bounded cost: the rest waits for the next one. Taking the
            # batch costs the batch, not the carry: sorting every carried group each
            # turn made a restart with 100,000 groups quadratic.
            self._carry = dirty
            dirty = {self._carry.pop() for _ in range(MAX_GROUPS_PER_TURN)}
        if self._tick_due:
            self._tick_due = False
            self._expire_requests()
            for group_id in list(self.active):
                node = self.groups[group_id].node
                try:
                    node.tick()
                except GROUP_FAILURES as exc:
                    self._quarantine(group_id, exc)
                    continue
                if node.quiesced:
                    # Quiet now (a lone member goes quiet without any message to
                    # send): no more ticks until a message or a request wakes it.
                    self.active.discard(group_id)
                dirty.add(group_id)
        inbox, self._inbox = self._inbox, []
        for item in inbox:
            dirty.update(self._handle(item))
        if self._proposing:
            dirty |= self._propose_queued()
        if len(dirty) > 4 * MAX_GROUPS_PER_TURN:
            self._carry |= dirty
            dirty = {self._carry.pop() for _ in range(4 * MAX_GROUPS_PER_TURN)}
        # A leader's own acknowledgement (after the sync) often commits at once: run a
        # few Ready cycles back to back so the entry is applied and answered in this
        # turn, instead of paying another trip through the scheduler.
        for _ in range(3):
            if not dirty:
                return
            dirty = self._cycle(dirty)
        self._carry |= dirty

    def _continue_snapshots(self) -> None:
        """One piece of every snapshot being built, written ahead in one sync: a large
        snapshot costs many short turns, never one long one."""
        for group_id in list(self._building):
            group = self.groups.get(group_id)
            if group is None or group.build is None:
                self._building.discard(group_id)
                continue
            try:
                group.continue_snapshot()
            except GROUP_FAILURES as exc:
                self._quarantine(group_id, exc)
                continue
            self.counters.snapshot_pieces += 1
            if group.build is None:
                self._building.discard(group_id)
                self.counters.snapshots_taken += 1
        assert self.storage is not None
        if self.storage.pending_writes():
            self._sync()

    def _sync(self) -> None:
        """Commit storage (one fsync for every group), counted and timed."""
        assert self.storage is not None
        self.counters.syncs += 1
        started = time.perf_counter()
        self.storage.commit()
        if self.on_sync is not None:
            self.on_sync(time.perf_counter() - started)

    def _cycle(self, dirty: set[str]) -> set[str]:
        """One Ready cycle for the ``dirty`` groups; returns those with more to do."""
        readies = []
        for group_id in dirty:
            group = self.groups.get(group_id)
            if group is None:
                continue
            try:
                if group.node.has_ready():
                    readies.append((group, group.node.ready()))
            except GROUP_FAILURES as exc:
                self._quarantine(group_id, exc)
        if not readies:
            return set()
        outgoing: defaultdict[int, defaultdict[str, list[Message]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for group, ready in readies:
            for msg in ready.messages:
                outgoing[msg.to][group.group_id].append(msg)
        self._send_all(outgoing)
        wrote_ahead = False
        for group, ready in readies:
            try:
                wrote_ahead |= group.persist(ready)
            except GROUP_FAILURES as exc:
                self._quarantine(group.group_id, exc)
        # A quarantined group's messages that needed its write never leave.
        readies = [(g, r) for g, r in readies if self.groups.get(g.group_id) is g]
        assert self.storage is not None
        # A Ready that only moved the commit index needs no sync (losing it in a crash
        # only means re-learning the commit index); its write joins the next commit.
        # The sync runs inline: handing it to a thread cost more (~0.2 ms a turn) than
        # it saved, and requests arriving meanwhile simply form the next turn's batch.
        # Snapshot chunks written ahead are synced as they come, never all at the end.
        must_sync = wrote_ahead or any(ready.must_sync for _, ready in readies)
        if must_sync and self.storage.pending_writes():
            self._sync()
        for group, ready in readies:
            for msg in ready.persisted_messages:
                outgoing[msg.to][group.group_id].append(msg)
        self._send_all(outgoing)
        watched = []
        more = set()
        for group, ready in readies:
            if self.groups.get(group.group_id) is not group:
                continue  # dropped or quarantined meanwhile
            try:
                group.apply_and_advance(ready)
            except GROUP_FAILURES as exc:
                self._quarantine(group.group_id, exc)
                continue
            if group.build is not None:
                self._building.add(group.group_id)
            if ready.committed_entries or ready.snapshot is not None:
                self.changed.add(group.group_id)
            if group.track_applied and (group.on_applied or ready.snapshot is not None):
                watched.append((group, ready.snapshot is not None))
            if group.node.has_ready():
                more.add(group.group_id)
            if group.node.quiesced:
                self.active.discard(group.group_id)
            else:
                self.active.add(group.group_id)
        for group, restored in watched:
            self.on_applied(group, restored)
            group.on_applied.clear()
        return more

    def _handle(self, item: _InboxItem) -> set[str]:
        match item:
            case _Step(peer, batch):
                touched = set()
                for group_id, messages in batch.items():
                    group = self._hosted(group_id, by_request=False)
                    if group is None:
                        continue  # not created here yet, or dropped: the sender retries
                    self.counters.messages_in += len(messages)
                    try:
                        for msg in messages:
                            if msg.frm != peer or msg.to != self.id:
                                continue
                            group.node.step(msg)
                    except GROUP_FAILURES as exc:
                        self._quarantine(group_id, exc)
                        continue
                    touched.add(group_id)
                    self.active.add(group_id)
                return touched
            case _Propose(group_id, data, pending):
                group = self._hosted(group_id, by_request=True)
                if group is None:
                    pending.resolve(self._not_here(group_id))
                    return set()
                # Proposed with the group's other writes of this turn, as one entry,
                # once the whole inbox is read (``_propose_queued``).
                group.queue(data, pending)
                self._proposing[group_id] = group
                self.counters.proposals += 1
                self.active.add(group_id)
                return {group_id}
            case _Read(group_id, query, pending):
                group = self._hosted(group_id, by_request=True)
                if group is None:
                    pending.resolve(self._not_here(group_id))
                    return set()
                try:
                    group.read(query, pending)
                except GROUP_FAILURES as exc:
                    self._quarantine(group_id, exc)
                    pending.resolve(self._not_here(group_id))
                    return set()
                self.counters.reads += 1
                self.active.add(group_id)
                return {group_id}
            case _Suspect(peer):
                touched = set()
                for group_id, group in list(self.groups.items()):
                    raft = group.node.raft
                    if raft.lead == peer and raft.role is not Role.LEADER:
                        try:
                            group.node.suspect_leader()
                        except GROUP_FAILURES as exc:
                            self._quarantine(group_id, exc)
                            continue
                        self.active.add(group_id)
                        touched.add(group_id)
                return touched
            case _Call(group_id, fn, pending):
                group = self._hosted(group_id, by_request=True)
                if group is None:
                    pending.resolve(self._not_here(group_id))
                    return set()
                try:
                    pending.resolve(Applied(fn(group)))
                except NotLeaderError as exc:
                    pending.resolve(Rejected("not the leader", exc.leader))
                except Exception as exc:
                    pending.resolve(Rejected(str(exc), group.leader))
                self.active.add(group_id)
                return {group_id}
            case _Change(group_id, change, pending):
                group = self._hosted(group_id, by_request=True)
                if group is None:
                    pending.resolve(self._not_here(group_id))
                    return set()
                try:
                    group.change_membership(change, pending)
                except GROUP_FAILURES as exc:
                    self._quarantine(group_id, exc)
                    pending.resolve(self._not_here(group_id))
                    return set()
                self.active.add(group_id)
                return {group_id}
            case _Transfer(group_id, target, pending):
                group = self._hosted(group_id, by_request=True)
                if group is None:
                    pending.resolve(self._not_here(group_id))
                    return set()
                try:
                    group.node.transfer_leader(target)
                except NotLeaderError as exc:
                    pending.resolve(Rejected("not the leader", exc.leader))
                    return set()
                except Exception as exc:
                    pending.resolve(Rejected(str(exc), group.leader))
                    return set()
                self._transfers.append(item)
                self.active.add(group_id)
                return {group_id}
        return set()

    def _propose_queued(self) -> set[str]:
        """Propose the writes queued by this turn's inbox and earlier ones, each group's
        as few entries as its batches allow (``GroupRuntime.propose_queued``), except
        where they still gather (``GroupRuntime.gathering``). Returns the groups that
        proposed."""
        proposed = set()
        proposing, self._proposing = self._proposing, {}
        for group_id, group in proposing.items():
            if not group.queued or self.groups.get(group_id) is not group:
                continue  # proposed already, or closed meanwhile (which answered them)
            if group.gathering():
                # Checked again after every later inbox: the answer that frees the
                # pipeline arrives in one.
                self._proposing[group_id] = group
                continue
            try:
                group.propose_queued()
            except GROUP_FAILURES as exc:
                # Nothing of these entries left the node, and the group never sends
                # again: certainly not applied (``close`` answers what is still queued).
                self._quarantine(group_id, exc)
                continue
            proposed.add(group_id)
        return proposed

    def _watch_transfers(self) -> None:
        """Resolve the leader transfers whose target now leads (as this node sees it);
        forget those whose caller gave up."""
        waiting = []
        for transfer in self._transfers:
            pending = transfer.pending
            if pending.outcome is not None or pending.abandoned:
                continue
            group = self.groups.get(transfer.group)
            if group is None:
                pending.resolve(self._not_here(transfer.group))
            elif group.leader == transfer.target:
                pending.resolve(Applied(None))
            else:
                waiting.append(transfer)
        self._transfers = waiting

    def _send_all(self, outgoing: defaultdict[int, defaultdict[str, list[Message]]]) -> None:
        if self.transport is None:
            outgoing.clear()
            return
        counters = self.counters
        for peer, batch in outgoing.items():
            if batch:
                counters.frames_out += 1
                counters.messages_out += sum(len(m) for m in batch.values())
                self.transport.send(peer, {"r": encode_batch(dict(batch))}, now=True)
        outgoing.clear()

    # --- Local requests -------------------------------------------------------------------

    def submit(self, group_id: str, request: Propose | Read, pending: Pending) -> None:
        """Start a write or a linearizable read in this node's copy of the group,
        without waiting: ``pending`` is resolved from a turn. The caller sets
        ``pending.then`` and ``track``s it, or waits for it (the trio adapter's
        ``wait_outcome``)."""
        self.execute(group_id, request, pending)

    def execute(self, group_id: str, request: Request, pending: Pending) -> None:
        """Run one routed request (any kind of ``runtime.requests``) against this node's
        copy of the group; ``pending`` is resolved from a turn (``LocalView`` at once:
        None if this node does not host the group)."""
        match request:
            case Propose(data):
                self._post(_Propose(group_id, data, pending))
            case Read(query):
                self._post(_Read(group_id, query, pending))
            case ChangeMembership(change_type, node):
                self.submit_change(group_id, ConfChange.single(change_type, node), pending)
            case LeaderView():
                self.submit_call(group_id, _leader_view, pending)
            case TransferLeader(target):
                self._post(_Transfer(group_id, target, pending))
            case LocalView():
                group = self.groups.get(group_id)
                pending.resolve(Applied(None if group is None else local_view(group)))

    def submit_call(
        self, group_id: str, fn: Callable[[GroupRuntime], Reply], pending: Pending
    ) -> None:
        """Run ``fn`` on the group inside the next turn; ``pending`` gets its result
        (``Applied``), or ``Rejected`` if it raised."""
        self._post(_Call(group_id, fn, pending))

    def submit_change(self, group_id: str, change: ConfChange, pending: Pending) -> None:
        """Propose a membership change here (this node must lead the group); ``pending``
        is resolved ``Applied`` once the change is applied on this node."""
        self._post(_Change(group_id, change, pending))

    def set_peers(self, peers: dict[int, Address]) -> None:
        """Change where peers live (members joined or left)."""
        self.peers = {p: a for p, a in peers.items() if p not in self.removed_ids}
        if self.transport is not None:
            self.transport.set_peers(self.peers)

    def set_removed(self, removed: frozenset[int]) -> None:
        """The ids removed from the cluster or group, as the owner's records say: no
        longer peers, refused, and told so when they dial."""
        if removed == self.removed_ids:
            return
        self.removed_ids = frozenset(removed)
        if self.transport is not None:
            self.transport.set_removed(self.removed_ids)
        self.set_peers(self.peers)

    # --- Stopping (driven by ``runtime.drain``) -------------------------------------------

    def busy(self) -> bool:
        """True while a request this host took on (from a local client or a peer) has
        no outcome yet."""
        if any(p.outcome is None for p in self._tracked):
            return True
        if self.forwarder.busy():
            return True
        return any(group.writes or group.reads or group.queued for group in self.groups.values())

    def greet(self) -> None:
        """Tell every peer this is a new process (queued until connected)."""
        assert self.transport is not None
        for peer in self.peers:
            if peer != self.id:
                self.transport.send(peer, {HELLO: True})

    def halt(self) -> None:
        """Take no more turns: from now on this host applies nothing and sends no Raft
        message. Requests still without an outcome get one now (a write's is unknown)."""
        self.halted = True
        self.on_work()  # the driver's loop wakes up to see it
        for group in self.groups.values():
            group.close("the node stopped before the outcome was known")
        transfers, self._transfers = self._transfers, []
        for transfer in transfers:
            transfer.pending.resolve(Unknown("the node stopped before the transfer finished"))
        while self._tracked:
            pending = self._tracked.popleft()
            if pending.outcome is None:
                pending.resolve(Unknown("the node stopped before the outcome was known"))

    def flush_mail(self) -> None:
        """Send the answers still waiting for the end of a turn (after ``halt``)."""
        self.forwarder.flush(self.transport)

    def _peer_departed(self, peer: int) -> None:
        """``peer`` said goodbye. It sends that only after answering every request it
        took on and halting its loop, and frames arrive in order: whatever we forwarded
        to it and still wait for was refused or never read, so it certainly was not
        applied and may be retried elsewhere at once, instead of timing out."""
        log.info("node %d stopped: retrying its requests elsewhere", peer)
        self.forwarder.peer_departed(peer)

    # --- Forwarding to other nodes -------------------------------------------------------

    def track(self, pending: Pending) -> None:
        """Give a request that no task waits for (``Pending.then``) a deadline of
        ``settings.request_timeout``; past it, it is resolved ``Unknown``. Every tracked
        request gets the same timeout, so the oldest is always first in line."""
        pending.deadline = self.clock() + self.settings.request_timeout
        self._tracked.append(pending)

    def _expire_requests(self) -> None:
        """Called every tick: end tracked requests past their deadline, and forwarded
        requests whose peer went silent or whose stream broke (a dead node or a broken
        stream will not answer, and waiting out the whole timeout helps nobody)."""
        now = self.clock()
        tracked = self._tracked
        while tracked and (tracked[0].outcome is not None or tracked[0].deadline <= now):
            pending = tracked.popleft()
            if pending.outcome is None:
                pending.abandoned = True
                pending.resolve(Unknown("timed out waiting for the group"))
        if self.transport is None:
            return
        broken = {p: t for p, t in self._links_lost.items() if now - t >= LINK_LOSS_GRACE}
        others = [peer for peer in self.peers if peer != self.id]
        self.forwarder.expire(self.transport, broken, others)
        if not broken:
            return
        # A follower's read waits for its leader's read index, a Raft message: if the
        # stream to or from that leader broke, it may never come.
        for group in self.groups.values():
            if group.reads and group.leader in broken and group.leader != self.id:
                group.reject_reads_waiting_for_index(
                    f"the connection to node {group.leader} broke before it answered"
                )
        for peer, lost_at in broken.items():
            if self._links_lost.get(peer) == lost_at:
                del self._links_lost[peer]

    def send_forward(self, peer: int, group_id: str, request: Request, pending: Pending) -> None:
        """Ask ``peer`` to run ``request`` in its copy of the group (``execute_local``);
        ``pending`` is resolved when it answers, ``Rejected`` at once if it is
        unreachable, ``Unknown`` if it goes silent first."""
        self.forwarder.send(self.transport, peer, group_id, request, pending, self.clock())

    def _mail_posted(self) -> None:
        """Mail waits for the end of this turn; outside a turn, one starts for it."""
        if not self._in_turn:
            self.on_work()

    def _on_forward_request(self, peer: int, forwarded: ForwardedRequest) -> None:
        request_id, request = forwarded.id, forwarded.request
        if self.stopping:
            self.forwarder.answer(peer, request_id, Rejected(f"node {self.id} is stopping"))
            return
        if peer in self.removed_ids:
            # A removed node's requests are never served, whatever stream they came in
            # (one opened before its removal included); the answer tells it why.
            self.forwarder.answer(peer, request_id, Rejected(f"node {peer} was removed"))
            return
        # No request costs a task: the answer is sent from the turn that resolves it,
        # or once the request's deadline passed.
        pending = Pending()
        pending.then = lambda outcome: self.forwarder.answer(peer, request_id, outcome)
        self.track(pending)
        self.execute(forwarded.group, request, pending)

    # --- Inspection ---------------------------------------------------------------------

    def group_status(self, limit: int | None = None) -> dict[str, dict[str, StatusField]]:
        """The groups in id order, each as a dict; only the first ``limit`` if given
        (picked without sorting them all or building a dict for each: STATUS on a
        node with 100,000 groups must answer at once)."""
        chosen = sorted(self.groups) if limit is None else heapq.nsmallest(limit, self.groups)
        groups = {}
        for group_id in chosen:
            group = self.groups[group_id]
            raft = group.node.raft
            groups[group_id] = {
                "role": raft.role.value,
                "leader": raft.lead,
                "term": raft.term,
                "commit": raft.log.committed,
                "applied": group.host.applied_index,
                "quiet": raft.quiesced,
                "voters": sorted(raft.conf.voters),
            }
        return groups

    def group_counts(self) -> dict[str, int]:
        """How many groups are in each role, and how many are quiet: one pass, no
        per-group objects."""
        counts: collections.Counter[str] = collections.Counter()
        quiet = 0
        for group in self.groups.values():
            raft = group.node.raft
            counts[raft.role.value] += 1
            quiet += raft.quiesced
        return {"total": len(self.groups), **counts, "quiet": quiet}


def local_view(group: GroupRuntime) -> WireValue:
    """This node's own, possibly stale, view of a group: its term and membership (read
    by ``group.admission.parse_view``). A term above 1 means the group has held an
    election (pre-vote makes the first one need a majority of founders)."""
    raft = group.node.raft
    return {
        "term": raft.term,
        "voters": [*sorted(raft.conf.voters)],
        "learners": [*sorted(raft.conf.learners)],
        "leader": raft.lead,
    }


def _nothing() -> None:
    """``on_work`` of a host stepped by hand: the caller knows when to turn."""


def _leader_view(group: GroupRuntime) -> WireValue:
    """What a mover needs to know about a group, as its leader sees it."""
    raft = group.node.raft
    if raft.role is not Role.LEADER:
        raise NotLeaderError(raft.lead)
    return GroupLeaderView(
        voters=tuple(sorted(raft.conf.voters)),
        learners=tuple(sorted(raft.conf.learners)),
        match={member: pr.match for member, pr in raft.progress.items()},
        commit=raft.log.committed,
        pending_conf=raft.pending_conf_index > raft.log.applied,
    ).to_wire()
