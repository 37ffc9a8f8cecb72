"""``RaftHost``: the trio adapter of ``HostCore``, the multi-Raft engine of one process.

``host_core.HostCore`` holds every decision and is driven by calls; this module gives
it an event loop and nothing else. ``RaftHost.run``:

1. opens the storage and loads the groups (``HostCore.open``);
2. starts the peer transport (``PeerTransport``, or what ``make_transport`` returns),
   whose callbacks are the core's events (``on_frame``, ``on_suspect``,
   ``on_link_lost``, ``learn_removed``);
3. runs the loop task: it sleeps until the core says there is work (``on_work`` sets a
   ``trio.Event``), calls ``turn()``, and checkpoints between turns while work is
   carried over, so a turn over thousands of groups never starves keepalives and
   clients; and the ticker task, which calls ``tick()`` every ``tick_interval``;
   the frames a peer sends while the loop sleeps with nothing to do are turned at once
   by the task that read them (``frame_arrived``, ``frames_delivered``), see below;
4. starts the owner's own tasks (``start_background``).

Inline turns (issue 19, single-connection latency): a follower's append and a leader's
acknowledgement each used to cost a trip through the scheduler (the transport task
posts, wakes the loop task, which runs in the next batch: ~30 us on the critical path
of every write, twice). Instead, when the loop is asleep and nothing else is posted,
the transport's own task takes that turn once it has handed over every frame of the
read (``frames_delivered``: one turn, and one sync, for a burst of appends, as the
loop would): the same ``turn()`` on the same work, just sooner. Only while the host is
lightly loaded: when the loop already has work (its event is set), or its last turn
handled more than one request or frame (``INLINE_TURN_LOAD``), the frames join the
loop's next turn as before, with whatever else arrives meanwhile, so a loaded host keeps
batching its writes into one sync (without that rule, two of five runs at 64
connections fell from ~5,000 to ~3,500 writes/s). A failure of the node's storage in
such a turn still ends the node: it is handed to the loop task, which raises it (the
transport would only log it).

For trio callers it adds awaiting versions of the core's requests (``propose``,
``read``, ``call``, ``change_membership``, ``transfer_leader``, ``forward``,
``execute_local``): each makes a ``Pending``, hands it to the core and awaits it with
``wait_outcome``. Requests that must not cost a task (the line server's) skip these
and use the core's ``submit``/``send_forward``/``track`` with ``Pending.then``.

What it must never do: decide anything (retry, expire, route, quarantine: that is the
core's), or touch a ``RawNode`` or a group outside the core's calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Self

import trio

from boutique.machine import AnyMachine, WireValue
from boutique.raft.messages import ConfChange

from .group import GroupRuntime, Outcome, Pending, Reply, Unknown
from .host_core import DEFAULT_SETTINGS, HostCore
from .host_core import GOODBYE as GOODBYE
from .host_core import GROUP_FAILURES as GROUP_FAILURES
from .host_core import HELLO as HELLO
from .host_core import LINK_LOSS_GRACE as LINK_LOSS_GRACE
from .host_core import MAX_GROUPS_PER_TURN as MAX_GROUPS_PER_TURN
from .host_core import Address as Address
from .host_core import HostCounters as HostCounters
from .host_core import HostSettings as HostSettings
from .host_core import NodeStorage as NodeStorage
from .host_core import local_view as local_view
from .peertls import PeerTLS
from .requests import Propose, Read, Request, TransferLeader
from .transport import PeerTransport

TIMED_OUT = "timed out waiting for the group"

INLINE_TURN_LOAD = 1
"""A peer's frames are turned inline (``RaftHost.frames_delivered``) only if the last turn
handled at most this many inbox items (requests, frames, suspicions): a lightly loaded
host. Beyond it the loop's turns batch, and a frame waits for the next one."""


async def wait_outcome(pending: Pending, timeout: float, timed_out: str = TIMED_OUT) -> Outcome:
    """Wait up to ``timeout`` seconds for ``pending``'s outcome; past it the request is
    abandoned (the group may forget it) and the outcome is ``Unknown(timed_out)``. The
    wake-up is chained onto ``pending.then``, which keeps working."""
    if pending.outcome is None:
        done = trio.Event()
        earlier = pending.then

        def then(outcome: Outcome) -> None:
            done.set()
            if earlier is not None:
                earlier(outcome)

        pending.then = then
        with trio.move_on_after(timeout):
            await done.wait()
    if pending.outcome is None:
        pending.abandoned = True
        return Unknown(timed_out)
    return pending.outcome


class RaftHost(HostCore):
    """Hosts groups on one node under trio. Start it with ``await nursery.start(host.run)``.

    Subclasses decide which groups exist (``load_groups``, ``on_applied``: see
    ``HostCore``) and may start their own tasks (``start_background``).
    """

    transport: PeerTransport | None

    def __init__(
        self,
        node_id: int,
        *,
        secret: bytes,
        cluster_name: str,
        peers: dict[int, Address],
        listen: Address,
        open_storage: Callable[[], NodeStorage],
        machine_for: Callable[[str], AnyMachine],
        settings: HostSettings = DEFAULT_SETTINGS,
        seed: int | None = None,
        peer_tls: PeerTLS | None = None,
    ) -> None:
        self._wakeup = trio.Event()
        self._holding = False
        """True from ``frame_arrived`` to ``frames_delivered``: work the frames post is
        turned then (``_held``) instead of waking the loop task."""
        self._held = False
        self._light = True
        """The last turn handled at most ``INLINE_TURN_LOAD`` inbox items."""
        self._failure: BaseException | None = None
        """What an inline turn raised, for the loop task to raise (ending the node)."""
        super().__init__(
            node_id,
            peers=peers,
            open_storage=open_storage,
            machine_for=machine_for,
            clock=trio.current_time,
            on_work=self._wake,
            settings=settings,
            seed=seed,
        )
        self.peer_tls = peer_tls
        """Mutual TLS between nodes (None: plaintext, on a trusted network)."""
        self.secret = secret
        self.cluster_name = cluster_name
        self.listen = listen
        self.peer_port: int = listen[1]
        self._nursery: trio.Nursery | None = None

    # --- Lifecycle ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Open storage, load groups, join peers, and serve until cancelled."""
        self.open()
        try:
            transport = self.make_transport()
            self.attach(transport)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.peer_port = await nursery.start(transport.run, *self.listen)
                self.greet()
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._loop)
                self.start_background(nursery)
                task_status.started(self)
        finally:
            self.close()

    def make_transport(self) -> PeerTransport:
        """The link to the peers. A test or a simulator returns an in-process network
        here (``boutique.testing.loopback``): frames go to ``on_frame`` either way."""
        return PeerTransport(
            self.id,
            self.secret,
            self.cluster_name,
            self.peers,
            self.frame_arrived,
            on_delivered=self.frames_delivered,
            on_suspect=self.on_suspect,
            max_frame=self.settings.max_frame,
            tls=self.peer_tls,
            on_link_lost=self.on_link_lost,
            on_removed=self.learn_removed,
        )

    def start_background(self, nursery: trio.Nursery) -> None:
        """Start the owner's own tasks (called once the host runs)."""

    def _wake(self) -> None:
        if self._holding and not self.halted:
            self._held = True
        else:
            self._wakeup.set()

    def deliver_frame(self, peer: int, payload: object) -> None:
        """A peer's frame handed over on its own (a transport that delivers frames one
        at a time): ``frame_arrived``, then ``frames_delivered``."""
        try:
            self.frame_arrived(peer, payload)
        finally:
            self.frames_delivered(peer)

    def frame_arrived(self, peer: int, payload: object) -> None:
        """One frame of a read (``PeerTransport``'s ``on_frame``): to the core. If the
        loop was asleep with nothing to do and the host is lightly loaded, the work the
        frames post waits for ``frames_delivered`` instead of waking the loop task.
        Never awaits."""
        if (
            not self._holding
            and self._light
            and not self._wakeup.is_set()
            and not self.halted
            and self._failure is None
        ):
            self._holding, self._held = True, False
        self.on_frame(peer, payload)

    def frames_delivered(self, peer: int) -> None:
        """Every frame of the read was handed over (``PeerTransport``'s
        ``on_delivered``): the turn for what they posted, now, in this task (see the
        module docstring). Never awaits."""
        if not self._holding:
            return  # the loop had work already: the frames joined it
        self._holding = False
        if not self._held:
            return  # nothing for a turn (an answer, a goodbye)
        self._held = False
        try:
            self._take_turn()
        except BaseException as exc:
            # The node's storage failed (or a bug): the loop task raises it and the
            # node ends, as if its own turn had failed; the transport would only log it.
            self._failure = exc
            self._wakeup.set()

    def _take_turn(self) -> bool:
        """One ``turn()``, timed for ``longest_turn_us``; True if work is left (the
        loop is woken for it)."""
        counters = self.counters
        self._light = len(self._inbox) <= INLINE_TURN_LOAD
        started = time.perf_counter()
        more = self.turn()
        took = round((time.perf_counter() - started) * 1e6)
        if took > counters.longest_turn_us:
            counters.longest_turn_us = took
        if more:
            self._wakeup.set()
        return more

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.settings.tick_interval)
            self.tick()

    async def _loop(self) -> None:
        while not self.halted:
            await self._wakeup.wait()
            if self._failure is not None:
                raise self._failure
            if self.halted:
                return
            self._wakeup = trio.Event()
            if self._take_turn():
                # Let the transport and the connections run between turns, so a turn
                # over thousands of groups never starves keepalives and clients.
                await trio.lowlevel.checkpoint()

    # --- Awaiting requests (any task) -------------------------------------------------------

    async def propose(self, group_id: str, data: bytes, timeout: float) -> Outcome:
        pending = Pending()
        self.execute(group_id, Propose(data), pending)
        return await wait_outcome(pending, timeout)

    async def read(self, group_id: str, query: WireValue, timeout: float) -> Outcome:
        pending = Pending()
        self.execute(group_id, Read(query), pending)
        return await wait_outcome(pending, timeout)

    async def call(
        self, group_id: str, fn: Callable[[GroupRuntime], Reply], timeout: float
    ) -> Outcome:
        """Run ``fn`` on the group inside a turn; ``Applied`` with its result."""
        pending = Pending()
        self.submit_call(group_id, fn, pending)
        return await wait_outcome(pending, timeout)

    async def change_membership(self, group_id: str, change: ConfChange, timeout: float) -> Outcome:
        """Propose a membership change here (this node must lead the group); Applied
        once the change is applied on this node."""
        pending = Pending()
        self.submit_change(group_id, change, pending)
        return await wait_outcome(pending, timeout)

    async def transfer_leader(self, group_id: str, target: int, timeout: float) -> Outcome:
        """Ask the group to hand leadership to ``target`` (forwarded to the leader by
        Raft from a follower). Returns once ``target`` leads, as this node sees it."""
        pending = Pending()
        self.execute(group_id, TransferLeader(target), pending)
        return await wait_outcome(pending, timeout, "the transfer did not finish in time")

    async def forward(self, peer: int, group_id: str, request: Request, timeout: float) -> Outcome:
        """``send_forward`` for a task: wait up to ``timeout`` for the answer. A write
        whose answer never comes has an unknown outcome."""
        pending = Pending()
        self.send_forward(peer, group_id, request, pending)
        outcome = await wait_outcome(pending, timeout)
        if isinstance(outcome, Unknown) and pending.outcome is None:
            outcome = Unknown(f"node {peer} did not answer")
        return outcome

    async def execute_local(self, group_id: str, request: Request, timeout: float) -> Outcome:
        """``execute`` for a task: run one routed request against this node's copy of
        the group (see ``runtime.requests`` for the kinds) and wait for its outcome.
        ``LocalView`` answers None if this node does not host the group."""
        pending = Pending()
        self.execute(group_id, request, pending)
        timed_out = TIMED_OUT
        if isinstance(request, TransferLeader):
            timed_out = "the transfer did not finish in time"
        return await wait_outcome(pending, timeout, timed_out)
