"""One test per claim of the Raft paper, each citing the section it checks.

"§" refers to "In Search of an Understandable Consensus Algorithm (Extended Version)",
Ongaro & Ousterhout, 2014; "thesis" to Ongaro's PhD thesis "Consensus: Bridging Theory
and Practice", 2014. In the spirit of etcd-io/raft ``raft_paper_test.go``.

``Net`` below is a tiny deterministic network: every node is a ``RawNode`` over a
``MemoryStorage``, driven through the full Ready contract (persist, send, apply,
advance); messages wait in one FIFO queue and filters may drop or rewrite them.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest

from boutique.raft import (
    ChangeType,
    ConfChange,
    Entry,
    EntryType,
    HardState,
    InvalidConfChangeError,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftConfig,
    RawNode,
    ReadState,
    Role,
    bootstrap,
)
from boutique.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotChunk,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from boutique.storage import MemoryStorage

ELECTION = 10
"""``election_tick`` of every node in this file (``heartbeat_tick`` is 1)."""

M = TypeVar("M")

Filter = Callable[[Message], Message | None]
"""Returns the message to deliver (possibly rewritten), or None to drop it."""


def encode_state(values: list[bytes]) -> bytes:
    return b"\x00".join(values)


def decode_state(data: bytes) -> list[bytes]:
    return bytes(data).split(b"\x00") if data else []


class Net:
    """Nodes, their storages and state machines, and the messages between them."""

    def __init__(
        self,
        voters: Iterable[int],
        *,
        nodes: Iterable[int] | None = None,
        logs: dict[int, list[int]] | None = None,
        terms: dict[int, int] | None = None,
        seed: int = 0,
        **config: Any,
    ) -> None:
        """``logs[i]`` lists the terms of node i's entries from index 1 (index 1 is
        always the founding entry, of term 1); ``terms[i]`` its persisted term."""
        self.voters = frozenset(voters)
        self.config: dict[str, object] = {
            "election_tick": ELECTION,
            "heartbeat_tick": 1,
            **config,
        }
        self.rng = random.Random(seed)
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        self.state: dict[int, list[bytes]] = {}
        """Each node's state machine: the data of the NORMAL entries it applied."""
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []
        """Every message any node ever sent (before filters), for assertions."""
        self.filters: list[Filter] = []
        for node_id in sorted(nodes if nodes is not None else self.voters):
            storage = MemoryStorage()
            hard_state, founding = bootstrap(self.voters)
            storage.bootstrap(hard_state, founding)
            extra = (logs or {}).get(node_id, [1])[1:]
            storage.append([Entry(t, i, f"{i}@{t}".encode()) for i, t in enumerate(extra, start=2)])
            term = (terms or {}).get(node_id, max([1, *extra]))
            storage.set_hard_state(HardState(term, 0, 1))
            self.storages[node_id] = storage
            self.start(node_id)
        self.flush()

    # --- Node life cycle ----------------------------------------------------------------

    def start(self, node_id: int) -> RawNode:
        """(Re)start ``node_id`` over its storage; its state machine starts empty and
        replays the log (``MemoryStorage`` plays the disk)."""
        storage = self.storages.setdefault(node_id, MemoryStorage())
        cfg = RaftConfig(id=node_id, **self.config)  # type: ignore[arg-type]
        node = RawNode(cfg, storage, random.Random(self.rng.randrange(1 << 30)))
        self.nodes[node_id] = node
        snapshot = storage.snapshot()
        self.state[node_id] = decode_state(snapshot.data)
        self.applied[node_id] = []
        self.read_states.setdefault(node_id, [])
        return node

    def __getitem__(self, node_id: int) -> RawNode:
        return self.nodes[node_id]

    # --- The Ready contract ---------------------------------------------------------------

    def handle_ready(self, node_id: int) -> None:
        node, storage = self.nodes[node_id], self.storages[node_id]
        ready = node.ready()
        # 1. Persist: snapshot, entries, hard state.
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        # 2. Send (all of it: step 1 is already "durable").
        for msg in [*ready.messages, *ready.persisted_messages]:
            self.sent.append(msg)
            self.queue.append(msg)
        # 3. Restore, then apply in order.
        if ready.snapshot is not None:
            self.state[node_id] = decode_state(ready.snapshot.data)
        for entry in ready.committed_entries:
            self.applied[node_id].append(entry)
            if entry.type is EntryType.NORMAL and entry.data:
                self.state[node_id].append(entry.data)
        # 4. Reads.
        self.read_states[node_id].extend(ready.read_states)
        # 5. Advance.
        node.advance(ready)

    def flush(self) -> None:
        """Carry out every pending Ready."""
        progress = True
        while progress:
            progress = False
            for node_id in sorted(self.nodes):
                while self.nodes[node_id].has_ready():
                    self.handle_ready(node_id)
                    progress = True

    def take(self) -> list[Message]:
        """Flush, then remove and return the queued messages without delivering them."""
        self.flush()
        msgs = list(self.queue)
        self.queue.clear()
        return msgs

    def deliver(self, max_messages: int = 20_000) -> None:
        """Deliver messages until none is in flight."""
        for _ in range(max_messages):
            self.flush()
            if not self.queue:
                return
            msg: Message | None = self.queue.popleft()
            for keep in self.filters:
                if msg is None:
                    break
                msg = keep(msg)
            if msg is not None and msg.to in self.nodes:
                self.nodes[msg.to].step(msg)
        raise AssertionError("the network did not go quiet")

    def step(self, msg: Message) -> None:
        """Hand ``msg`` to its receiver directly (bypassing queue and filters)."""
        self.nodes[msg.to].step(msg)

    def tick(self, *node_ids: int, times: int = 1) -> None:
        """Tick the given nodes (all when none given), delivering after every tick."""
        ids = node_ids or tuple(sorted(self.nodes))
        for _ in range(times):
            for node_id in ids:
                self.nodes[node_id].tick()
            self.deliver()

    # --- Faults ---------------------------------------------------------------------------

    def isolate(self, *node_ids: int) -> Filter:
        cut = set(node_ids)

        def keep(msg: Message) -> Message | None:
            return None if msg.frm in cut or msg.to in cut else msg

        self.filters.append(keep)
        return keep

    def drop(self, predicate: Callable[[Message], bool]) -> Filter:
        def keep(msg: Message) -> Message | None:
            return None if predicate(msg) else msg

        self.filters.append(keep)
        return keep

    def heal(self) -> None:
        self.filters.clear()

    # --- Conveniences -----------------------------------------------------------------------

    def elect(self, node_id: int) -> RawNode:
        self.nodes[node_id].campaign()
        self.deliver()
        node = self.nodes[node_id]
        assert node.raft.role is Role.LEADER, node.status()
        return node

    def propose(self, node_id: int, data: bytes) -> Entry:
        entry = self.nodes[node_id].propose(data)
        self.deliver()
        return entry

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.raft.role is Role.LEADER]

    def log(self, node_id: int) -> list[tuple[int, int]]:
        """``(index, term)`` of every entry in ``node_id``'s log."""
        log = self.nodes[node_id].raft.log
        return [(e.index, e.term) for e in log.slice(log.first_index(), log.last_index() + 1)]

    def terms(self, node_id: int) -> list[int]:
        return [term for _, term in self.log(node_id)]

    def sent_of(self, kind: type[M], frm: int | None = None, to: int | None = None) -> list[M]:
        return [
            m
            for m in self.sent
            if isinstance(m, kind) and (frm is None or m.frm == frm) and (to is None or m.to == to)
        ]


def role(net: Net, node_id: int) -> Role:
    return net[node_id].raft.role


def three_nodes(**config: Any) -> Net:
    """A healthy three-node group led by node 1, its no-op committed everywhere."""
    net = Net({1, 2, 3}, **config)
    net.elect(1)
    return net


# --- §5.1 Terms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start_role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER]
)
def test_higher_term_makes_any_node_a_follower_of_that_term(start_role: Role) -> None:
    """§5.1: "If one server's current term is smaller than the other's, then it updates
    its current term to the larger value. If a candidate or leader discovers that its
    term is out of date, it immediately reverts to follower state." """
    net = Net({1, 2, 3}, pre_vote=start_role is Role.PRE_CANDIDATE)
    node = net[1]
    if start_role in (Role.PRE_CANDIDATE, Role.CANDIDATE):
        node.campaign()
    elif start_role is Role.LEADER:
        net.elect(1)
    net.take()
    assert role(net, 1) is start_role
    net.step(Heartbeat(frm=2, to=1, term=9, commit=0))
    assert role(net, 1) is Role.FOLLOWER
    assert node.raft.term == 9
    assert node.raft.lead == 2
    net.flush()
    assert net.storages[1].hard_state.term == 9


def test_stale_term_append_is_rejected_and_answered_with_current_term() -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the
    request." The answer carries the newer term so the stale leader steps down."""
    net = Net({1, 2, 3}, logs={1: [1, 2, 2]}, terms={1: 5})
    before = net.log(1)
    net.step(
        AppendRequest(
            frm=2,
            to=1,
            term=3,
            prev_log_index=3,
            prev_log_term=2,
            entries=(Entry(3, 4, b"stale"),),
            commit=4,
        )
    )
    (answer,) = net.take()
    assert isinstance(answer, AppendResponse)
    assert (answer.to, answer.term, answer.reject) == (2, 5, True)
    assert net.log(1) == before
    assert net[1].raft.term == 5
    assert net[1].raft.lead == 0
    assert net[1].status().commit == 1


def test_stale_term_vote_request_is_not_granted() -> None:
    """§5.1 / Figure 2 RequestVote: "Reply false if term < currentTerm"."""
    net = Net({1, 2, 3}, terms={1: 5}, pre_vote=False)
    net.step(VoteRequest(frm=2, to=1, term=4, last_log_index=9, last_log_term=4))
    granted = [m for m in net.take() if isinstance(m, VoteResponse) and m.granted]
    assert granted == []
    assert (net[1].raft.term, net[1].raft.vote) == (5, 0)


def test_stale_leader_steps_down_when_it_hears_the_new_term() -> None:
    """§5.1: a leader cut off while the others elected a new one learns the newer term
    from the first answer it gets, and reverts to follower."""
    net = three_nodes(check_quorum=False)
    old_term = net[1].raft.term
    net.isolate(1)
    net.elect(2)
    assert net[2].raft.term == old_term + 1
    assert role(net, 1) is Role.LEADER  # it does not know yet
    net.heal()
    net.tick(1)  # its heartbeat is answered with the newer term
    assert role(net, 1) is Role.FOLLOWER
    assert net[1].raft.term == old_term + 1
    net.tick(2)
    assert net.leaders() == [2]
    assert net[1].raft.lead == 2


# --- §5.2 Leader election ----------------------------------------------------------------


def ticks_until_campaign(net: Net, node_id: int) -> int:
    """Ticks until ``node_id`` starts a (pre-)campaign: a new role or a new term."""
    start = (role(net, node_id), net[node_id].raft.term)
    for ticks in range(1, 10 * ELECTION):
        net[node_id].tick()
        if (role(net, node_id), net[node_id].raft.term) != start:
            return ticks
    raise AssertionError("never campaigned")


@pytest.mark.parametrize("seed", range(20))
def test_followers_that_suspect_their_leader_campaign_soon_and_in_turn(seed: int) -> None:
    """Not in the paper: when the caller believes the leader's node is gone (its
    process died and its connections closed), each follower campaigns within a few
    ticks instead of waiting out a randomized timeout of up to two election timeouts,
    and the followers take turns by id, so they never split the vote."""
    net = three_nodes(seed=seed)
    net.isolate(1)
    waits = {}
    for node_id in (2, 3):
        net[node_id].raft.election_elapsed = 0
        net[node_id].suspect_leader()
        waits[node_id] = ticks_until_campaign(net, node_id)
    assert waits[2] <= 2
    assert waits[2] < waits[3] <= 4


def test_follower_campaigns_after_election_timeout_and_votes_for_itself() -> None:
    """§5.2: "If a follower receives no communication over a period of time called the
    election timeout, then it ... begins an election ... it increments its current term
    and transitions to candidate state. It then votes for itself and issues RequestVote
    RPCs in parallel to each of the other servers." The vote is persisted before the
    requests leave (Figure 2: persist before responding to RPCs)."""
    net = Net({1, 2, 3}, pre_vote=False)
    ticks = ticks_until_campaign(net, 1)
    assert ELECTION <= ticks < 2 * ELECTION
    assert role(net, 1) is Role.CANDIDATE
    assert (net[1].raft.term, net[1].raft.vote) == (2, 1)
    ready = net[1].ready()
    assert ready.hard_state == HardState(term=2, vote=1, commit=1)
    assert ready.must_sync
    assert ready.messages == []
    assert sorted(ready.persisted_messages, key=lambda m: m.to) == [
        VoteRequest(frm=1, to=2, term=2, last_log_index=1, last_log_term=1),
        VoteRequest(frm=1, to=3, term=2, last_log_index=1, last_log_term=1),
    ]
    net[1].advance(ready)


def test_election_timeout_is_randomized_in_one_to_two_timeouts() -> None:
    """§5.2: "election timeouts are chosen randomly from a fixed interval (e.g.,
    150-300ms)" so split votes are rare; here ``[election_tick, 2 * election_tick)``."""
    seen = set()
    for seed in range(40):
        net = Net({1, 2, 3}, seed=seed, pre_vote=False)
        ticks = ticks_until_campaign(net, 1)
        assert ELECTION <= ticks < 2 * ELECTION
        seen.add(ticks)
    assert len(seen) >= 5


def test_election_timeout_is_redrawn_for_every_term() -> None:
    """§5.2: each candidate restarts its randomized election timeout at the start of an
    election, so a split vote is followed by a new, differently timed election."""
    net = Net({1, 2, 3}, pre_vote=False)
    net.isolate(1)
    waits = []
    for term in range(2, 12):
        waits.append(ticks_until_campaign(net, 1))
        assert (role(net, 1), net[1].raft.term) == (Role.CANDIDATE, term)
        net.deliver()
    assert all(ELECTION <= w < 2 * ELECTION for w in waits)
    assert len(set(waits)) > 1


# (voters, grants, rejections, role afterwards)
ELECTION_TABLE = [
    (1, set(), set(), Role.LEADER),
    (3, {2, 3}, set(), Role.LEADER),
    (3, {2}, set(), Role.LEADER),
    (3, set(), set(), Role.CANDIDATE),
    (3, set(), {2}, Role.CANDIDATE),
    (3, set(), {2, 3}, Role.FOLLOWER),
    (5, {2, 3, 4, 5}, set(), Role.LEADER),
    (5, {2, 3}, set(), Role.LEADER),
    (5, {2}, set(), Role.CANDIDATE),
    (5, {2}, {3, 4}, Role.CANDIDATE),
    (5, {2}, {3, 4, 5}, Role.FOLLOWER),
    (5, set(), {2, 3, 4}, Role.FOLLOWER),
]


@pytest.mark.parametrize(("size", "grants", "rejections", "expected"), ELECTION_TABLE)
def test_candidate_wins_with_votes_from_a_majority(
    size: int, grants: set[int], rejections: set[int], expected: Role
) -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the
    servers in the full cluster for the same term." It loses once a majority refused."""
    net = Net(range(1, size + 1), nodes=[1], pre_vote=False)
    net[1].campaign()
    net.take()
    for voter in sorted(grants | rejections):
        net.step(VoteResponse(frm=voter, to=1, term=2, granted=voter in grants))
    assert role(net, 1) is expected
    assert net[1].raft.term == 2


def test_candidate_ignores_duplicate_votes() -> None:
    """§5.2: a vote counts once per server (a retransmitted grant is not a majority)."""
    net = Net({1, 2, 3, 4, 5}, nodes=[1], pre_vote=False)
    net[1].campaign()
    for _ in range(3):
        net.step(VoteResponse(frm=2, to=1, term=2, granted=True))
    assert role(net, 1) is Role.CANDIDATE


@pytest.mark.parametrize("message_term", [2, 3])
@pytest.mark.parametrize("start_role", [Role.PRE_CANDIDATE, Role.CANDIDATE])
def test_candidate_steps_down_on_append_from_a_leader(message_term: int, start_role: Role) -> None:
    """§5.2: "If the leader's term ... is at least as large as the candidate's current
    term, then the candidate recognizes the leader as legitimate and returns to follower
    state." """
    net = Net({1, 2, 3}, pre_vote=start_role is Role.PRE_CANDIDATE)
    net[1].campaign()
    net.take()
    assert role(net, 1) is start_role
    term = net[1].raft.term
    assert term == (1 if start_role is Role.PRE_CANDIDATE else 2)
    net.step(
        AppendRequest(
            frm=3,
            to=1,
            term=term + message_term - 2,
            prev_log_index=1,
            prev_log_term=1,
            entries=(),
            commit=1,
        )
    )
    assert role(net, 1) is Role.FOLLOWER
    assert net[1].raft.lead == 3
    assert net[1].raft.term == term + message_term - 2
    (answer,) = net.take()
    assert isinstance(answer, AppendResponse)
    assert (answer.reject, answer.index) == (False, 1)


def test_leader_is_elected_by_timeout_alone() -> None:
    """§5.2: with randomized timeouts an election completes without help: ticking a
    healthy cluster yields exactly one leader, recognised by everyone."""
    for seed in range(5):
        net = Net({1, 2, 3, 4, 5}, seed=seed)
        net.tick(times=3 * ELECTION)
        (leader,) = net.leaders()
        term = net[leader].raft.term
        for node in net.nodes.values():
            assert (node.raft.lead, node.raft.term) == (leader, term)


def test_one_vote_per_term_even_across_a_restart() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis"; Figure 2 makes ``votedFor`` persistent, so a
    restarted server still refuses a second candidate of that term."""
    net = Net({1, 2, 3}, pre_vote=False, check_quorum=False)
    net.step(VoteRequest(frm=1, to=3, term=2, last_log_index=1, last_log_term=1))
    ready = net[3].ready()
    assert ready.hard_state == HardState(term=2, vote=1, commit=1)
    assert ready.persisted_messages == [VoteResponse(frm=3, to=1, term=2, granted=True)]
    assert ready.messages == []  # a grant may only leave once the vote is durable
    net[3].advance(ready)
    net.storages[3].set_hard_state(ready.hard_state)

    net.step(VoteRequest(frm=2, to=3, term=2, last_log_index=1, last_log_term=1))
    assert net.take() == [VoteResponse(frm=3, to=2, term=2, granted=False)]

    net.start(3)  # crash and restart from storage
    assert (net[3].raft.term, net[3].raft.vote) == (2, 1)
    net.step(VoteRequest(frm=2, to=3, term=2, last_log_index=1, last_log_term=1))
    assert VoteResponse(frm=3, to=2, term=2, granted=False) in net.take()
    # The same candidate asking again (a retransmission) is granted again.
    net.step(VoteRequest(frm=1, to=3, term=2, last_log_index=1, last_log_term=1))
    assert net.take() == [VoteResponse(frm=3, to=1, term=2, granted=True)]


def test_follower_that_hears_a_leader_ignores_disruptive_candidates() -> None:
    """Thesis §4.2.3: "if a server receives a RequestVote request within the minimum
    election timeout of hearing from a current leader, it does not update its term or
    grant its vote" (here with check-quorum)."""
    net = three_nodes(check_quorum=True, pre_vote=False)
    term = net[2].raft.term
    net.step(VoteRequest(frm=3, to=2, term=term + 5, last_log_index=99, last_log_term=term))
    assert net.take() == []
    assert (net[2].raft.term, net[2].raft.lead) == (term, 1)


# --- §5.3 Log replication ----------------------------------------------------------------


def test_leader_appends_proposal_and_sends_it_to_every_follower() -> None:
    """§5.3: "The leader appends the command to its log as a new entry, then issues
    AppendEntries RPCs in parallel to each of the other servers." The leader may send
    before its own write is durable (thesis §10.2.1)."""
    net = three_nodes()
    last = net[1].status().last_index
    entry = net[1].propose(b"x")
    assert (entry.index, entry.term, entry.data) == (last + 1, 2, b"x")
    ready = net[1].ready()
    assert ready.entries == [entry]
    assert ready.must_sync
    appends = sorted(
        (m for m in ready.messages if isinstance(m, AppendRequest)), key=lambda m: m.to
    )
    assert [m.to for m in appends] == [2, 3]
    for m in appends:
        assert (m.prev_log_index, m.prev_log_term, m.entries, m.commit) == (last, 2, (entry,), last)
    net[1].advance(ready)


def test_entry_commits_once_a_majority_stores_it() -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has
    replicated it on a majority of the servers." """
    net = Net({1, 2, 3, 4, 5})
    net.elect(1)
    net.isolate(4, 5)
    a = net.propose(1, b"a")
    assert net[1].status().commit == a.index
    assert net[1].status().match == {
        1: a.index,
        2: a.index,
        3: a.index,
        4: a.index - 1,
        5: a.index - 1,
    }
    net.isolate(3)
    b = net.propose(1, b"b")
    net.tick(1, times=3)
    assert net[1].status().commit == a.index  # only 1 and 2 hold b: 2 of 5
    assert net.state[1] == [b"a"]
    net.heal()
    net.tick(1, times=2)
    assert net[1].status().commit == b.index
    assert net.state[1] == [b"a", b"b"]


def test_followers_apply_committed_entries_in_log_order() -> None:
    """§5.3: "Once a follower learns that a log entry is committed, it applies the entry
    to its local state machine (in log order)." Each entry exactly once."""
    net = three_nodes()
    for value in (b"a", b"b", b"c"):
        net[1].propose(value)
    net.deliver()
    net.tick(1)  # the heartbeat carries the final commit index
    for node_id in (1, 2, 3):
        assert net.state[node_id] == [b"a", b"b", b"c"]
        indices = [e.index for e in net.applied[node_id]]
        assert indices == list(range(1, indices[-1] + 1))
        assert net[node_id].status().commit == net[node_id].applied == 5


# (follower log terms, prev index, prev term, hint (index, term))
MISMATCH_TABLE = [
    ([1, 2, 2], 3, 3, (3, 2)),  # same index, other term
    ([1, 2, 2], 5, 3, (3, 2)),  # beyond our log
    ([1, 2, 2, 4, 4], 5, 3, (3, 2)),  # skip our whole term-4 run at once
    ([1, 3, 3, 3], 4, 2, (1, 1)),
    ([1], 7, 6, (1, 1)),
]


@pytest.mark.parametrize(("terms", "prev_index", "prev_term", "hint"), MISMATCH_TABLE)
def test_follower_rejects_append_when_logs_do_not_match(
    terms: list[int], prev_index: int, prev_term: int, hint: tuple[int, int]
) -> None:
    """§5.3: "If the follower does not find an entry in its log with the same index and
    term, then it refuses the new entries" (the consistency check), with a hint so the
    leader skips a whole conflicting term per round trip (§5.3, last paragraphs)."""
    net = Net({1, 2, 3}, logs={1: terms}, terms={1: 6})
    before = net.log(1)
    net.step(
        AppendRequest(
            frm=2,
            to=1,
            term=6,
            prev_log_index=prev_index,
            prev_log_term=prev_term,
            entries=(Entry(6, prev_index + 1, b"new"),),
            commit=prev_index + 1,
        )
    )
    (answer,) = net.take()
    assert isinstance(answer, AppendResponse)
    assert answer.reject
    assert (answer.index, answer.hint_index, answer.hint_term) == (prev_index, *hint)
    assert net.log(1) == before
    assert net[1].status().commit == 1


FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIGURE_7_FOLLOWERS))
def test_leader_brings_follower_log_into_agreement(case: str) -> None:
    """§5.3, Figure 7: whatever a follower's log holds — missing entries, extra
    uncommitted entries, or both — the leader finds the last matching entry, the
    follower deletes everything after it, and ends with exactly the leader's log."""
    follower = FIGURE_7_FOLLOWERS[case]
    net = Net(
        {1, 2, 3},
        logs={1: FIGURE_7_LEADER, 2: follower, 3: [1]},
        terms={1: 7, 2: max(follower), 3: 1},
    )
    net.elect(1)  # with node 3's vote; node 2 may well refuse
    assert net[1].raft.term == 8
    net.tick(1)
    expected = [*FIGURE_7_LEADER, 8]
    assert net.terms(1) == expected
    assert net.terms(2) == expected
    assert net.terms(3) == expected
    assert net[2].status().commit == len(expected)
    assert [e.data for e in net.storages[2].entries(2, 4)] == [b"2@1", b"3@1"]


def test_stale_duplicate_append_does_not_truncate_follower_log() -> None:
    """§5.3 with §5.5 ("Raft RPCs are idempotent"): a delayed copy of an old
    AppendEntries whose entries the follower already holds must not delete the entries
    it received since."""
    net = three_nodes()
    net[1].propose(b"a")
    to_2 = [m for m in net.take() if isinstance(m, AppendRequest) and m.to == 2]
    for value in (b"b", b"c"):  # proposed together: one append carries both
        net[1].propose(value)
    to_2 += [m for m in net.take() if isinstance(m, AppendRequest) and m.to == 2]
    assert [[e.data for e in m.entries] for m in to_2] == [[b"a"], [b"b", b"c"]]
    for msg in to_2:
        net.step(msg)
    net.take()  # the acknowledgements are lost: 2 does not learn that a, b, c commit
    assert (net[2].status().commit, net[2].status().last_index) == (2, 5)
    net.step(to_2[0])  # the delayed duplicate of the first one arrives
    assert net.take() == [AppendResponse(frm=2, to=1, term=2, index=3)]
    assert net.log(2) == [(1, 1), (2, 2), (3, 2), (4, 2), (5, 2)]
    assert net.storages[2].last_index() == 5
    net.tick(1, times=2)
    for node_id in (1, 2, 3):
        assert net.state[node_id] == [b"a", b"b", b"c"]


# --- §5.4.1 Election restriction -----------------------------------------------------------


# voter's log terms are [1, 2, 2] (last index 3, last term 2)
UP_TO_DATE_TABLE = [
    (3, 2, True),  # identical
    (4, 2, True),  # same last term, longer
    (2, 2, False),  # same last term, shorter
    (1, 3, True),  # higher last term wins whatever the length
    (9, 1, False),  # lower last term loses whatever the length
    (3, 1, False),
]


@pytest.mark.parametrize(("last_index", "last_term", "granted"), UP_TO_DATE_TABLE)
def test_voter_refuses_a_candidate_with_a_less_up_to_date_log(
    last_index: int, last_term: int, granted: bool
) -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than that of
    the candidate ... If the logs have last entries with different terms, then the log
    with the later term is more up-to-date. If the logs end with the same term, then
    whichever log is longer is more up-to-date." """
    net = Net({1, 2, 3}, logs={1: [1, 2, 2]}, terms={1: 2}, pre_vote=False)
    net.step(VoteRequest(frm=2, to=1, term=3, last_log_index=last_index, last_log_term=last_term))
    assert net.take() == [VoteResponse(frm=1, to=2, term=3, granted=granted)]
    assert net[1].raft.vote == (2 if granted else 0)


def test_node_missing_committed_entries_cannot_become_leader() -> None:
    """§5.4.1 (Leader Completeness): a node that missed committed entries cannot gather a
    majority, so every leader holds every committed entry."""
    net = three_nodes(pre_vote=False, check_quorum=False)
    net.isolate(3)
    committed = net.propose(1, b"committed")
    assert net[1].status().commit == committed.index
    net.heal()
    net.isolate(1)  # the leader crashes; 3 hurries to campaign
    net[3].campaign()
    net.deliver()
    assert role(net, 3) is not Role.LEADER
    net.tick(2, 3, times=4 * ELECTION)
    (leader,) = [i for i in net.leaders() if i != 1]
    assert leader == 2
    assert (committed.index, committed.term) in net.log(2)
    assert net.state[3] == [b"committed"]


# --- §5.4.2 Committing entries from previous terms ------------------------------------------


def test_new_leader_commits_a_noop_of_its_term() -> None:
    """§8 / §5.4.2: "each leader commit[s] a blank no-op entry into the log at the start
    of its term", which commits every earlier entry with it."""
    net = Net({1, 2, 3}, logs={1: [1, 1, 1], 2: [1, 1], 3: [1]}, terms={1: 1, 2: 1, 3: 1})
    net.elect(1)
    noop = net[1].raft.log.slice(4, 5)[0]
    assert (noop.index, noop.term, noop.type, noop.data) == (4, 2, EntryType.NOOP, b"")
    for node_id in (1, 2, 3):
        assert net.log(node_id) == [(1, 1), (2, 1), (3, 1), (4, 2)]
    net.tick(1)
    for node_id in (1, 2, 3):
        assert net[node_id].status().commit == 4
        assert net.state[node_id] == [b"2@1", b"3@1"]
        assert net.applied[node_id][-1].type is EntryType.NOOP


def figure_8(**config: Any) -> Net:
    """Figure 8 (c): S1 leads term 4; index 2 (term 2) reaches S2, S3 and S4, but the
    term-4 entry reaches nobody; S5 (term-3 entry at index 2) is down."""
    net = Net(
        {1, 2, 3, 4, 5},
        logs={1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]},
        terms={1: 3, 2: 2, 3: 3, 4: 3, 5: 3},
        pre_vote=False,
        check_quorum=False,
        max_entries_per_msg=1,
        **config,
    )

    def strip_term_4(msg: Message) -> Message | None:
        if isinstance(msg, AppendRequest):
            return dataclasses.replace(msg, entries=tuple(e for e in msg.entries if e.term != 4))
        return msg

    net.isolate(5)
    net.filters.append(strip_term_4)
    net.elect(1)
    assert net[1].raft.term == 4
    net.tick(1, times=3)
    return net


def test_leader_does_not_commit_old_term_entry_by_counting_replicas() -> None:
    """§5.4.2, Figure 8: "Raft never commits log entries from previous terms by counting
    replicas." Here entry 2 (term 2) is stored on four of five servers, yet S1 must not
    commit it: S5 can still be elected and overwrite it, as it then does."""
    net = figure_8()
    for node_id in (1, 2, 3, 4):
        assert net.log(node_id)[:2] == [(1, 1), (2, 2)]
    assert net[1].status().match == {1: 3, 2: 2, 3: 2, 4: 2, 5: 0}
    assert net[1].status().commit == 1
    # (d): S1 crashes; S5 is elected with votes from S2, S3, S4 and overwrites index 2.
    net.heal()
    net.isolate(1)
    for _ in range(3):
        if role(net, 5) is not Role.LEADER:
            net[5].campaign()
            net.deliver()
    assert role(net, 5) is Role.LEADER
    assert net[5].raft.term == 5
    net.tick(5, times=3)
    for node_id in (2, 3, 4, 5):
        assert net.log(node_id) == [(1, 1), (2, 3), (3, 5)]
        assert net[node_id].status().commit == 3
        assert net.state[node_id] == [b"2@3"]
    net.heal()
    net.tick(5, times=2)
    assert net.log(1) == [(1, 1), (2, 3), (3, 5)]
    assert net.state[1] == [b"2@3"]


def test_old_term_entry_commits_with_an_entry_of_the_current_term() -> None:
    """§5.4.2, Figure 8 (e): once S1 replicates an entry of its own term to a majority,
    that entry and the earlier one (index 2, term 2) are committed together."""
    net = figure_8()
    assert net[1].status().commit == 1
    net.filters.pop()  # the term-4 entry now gets through (S5 stays down)
    net.tick(1, times=2)
    assert net[1].status().commit == 3
    for node_id in (1, 2, 3, 4):
        assert net.log(node_id) == [(1, 1), (2, 2), (3, 4)]
        assert net.state[node_id] == [b"2@2"]


# --- §6 Cluster membership changes --------------------------------------------------------


def add_learner(net: Net, node_id: int) -> None:
    net.start(node_id)
    net[1].propose_conf_change(ConfChange.single(ChangeType.ADD_LEARNER, node_id))
    net.deliver()
    net.tick(1)


def test_learner_catches_up_but_neither_votes_nor_counts() -> None:
    """§6 / thesis §4.2.1: a new server joins as a non-voting member and receives the
    log; it counts for neither commitment nor elections until promoted."""
    net = three_nodes()
    net.propose(1, b"before")
    add_learner(net, 4)
    add_learner(net, 5)
    for node_id in (1, 2, 3, 4, 5):
        assert net[node_id].conf_state.voters == {1, 2, 3}
        assert net[node_id].conf_state.learners == {4, 5}
    assert net.log(4) == net.log(5) == net.log(1)
    assert net.state[4] == net.state[5] == [b"before"]
    # Commitment ignores learners: 1, 4 and 5 are three of five members, but only one
    # of three voters.
    net.isolate(2, 3)
    e = net.propose(1, b"only-learners")
    net.tick(1, times=2)
    assert net[4].status().last_index == net[5].status().last_index == e.index
    assert net[1].status().commit == e.index - 1
    net.heal()
    # A learner never campaigns, however long it hears nothing.
    net.isolate(4)
    net.tick(4, times=5 * ELECTION)
    assert (role(net, 4), net[4].raft.term) == (Role.FOLLOWER, 2)
    assert net.sent_of(VoteRequest, frm=4) == []


def test_promoted_learner_becomes_a_voter() -> None:
    """§6: after the change to C_new commits, the new server is part of every majority
    (four voters: three are needed)."""
    net = three_nodes()
    add_learner(net, 4)
    net[1].propose_conf_change(ConfChange.single(ChangeType.ADD_VOTER, 4))
    net.deliver()
    net.tick(1)
    for node_id in (1, 2, 3, 4):
        assert net[node_id].conf_state.voters == {1, 2, 3, 4}
        assert net[node_id].conf_state.learners == set()
    net.isolate(2, 3)
    e = net.propose(1, b"two-of-four")
    assert net[1].status().commit == e.index - 1
    net.heal()
    net.isolate(3)
    net.tick(1, times=2)
    assert net[1].status().commit == e.index  # 1, 2 and 4: three of four


def test_removed_follower_is_no_longer_needed_or_contacted() -> None:
    """§6: once C_new (without the server) is in effect, majorities are of the remaining
    servers and the leader stops replicating to the removed one."""
    net = three_nodes()
    net[1].propose_conf_change(ConfChange.single(ChangeType.REMOVE, 3))
    net.deliver()
    net.tick(1)
    assert net[1].conf_state.voters == {1, 2}
    assert 3 not in net[1].status().match
    net.isolate(3)
    sent_before = len(net.sent_of(AppendRequest, to=3)) + len(net.sent_of(Heartbeat, to=3))
    e = net.propose(1, b"two-of-two")
    net.tick(1, times=3)
    assert net[1].status().commit == e.index
    assert len(net.sent_of(AppendRequest, to=3)) + len(net.sent_of(Heartbeat, to=3)) == sent_before


def test_removed_leader_steps_down_and_the_rest_elect_a_new_one() -> None:
    """§6: "the leader ... steps down (returns to follower state) once it has committed
    the C_new log entry"; the remaining servers then elect a leader among themselves."""
    net = three_nodes()
    change = net[1].propose_conf_change(ConfChange.single(ChangeType.REMOVE, 1))
    net.deliver()
    assert net[1].applied >= change.index
    assert role(net, 1) is Role.FOLLOWER
    assert net[1].conf_state.voters == {2, 3}
    campaigns_before = len(net.sent_of(VoteRequest, frm=1))
    net.tick(times=4 * ELECTION)
    (leader,) = net.leaders()
    assert leader in (2, 3)
    assert len(net.sent_of(VoteRequest, frm=1)) == campaigns_before
    e = net.propose(leader, b"after")
    assert net[leader].status().commit == e.index


def test_leader_removed_from_a_two_voter_group_does_not_strand_the_survivor() -> None:
    """§6 / thesis §4.2.2: after a leader removes itself "a new leader will be elected
    from among the servers in C_new". Here the removal (index 3) commits, but the one
    message telling node 2 so is lost, and node 1 holds an uncommitted entry (index 4)
    that node 2 lacks. Node 2 must still end up leading the group {2}."""
    net = Net({1, 2})
    net.elect(1)
    change = net[1].propose_conf_change(ConfChange.single(ChangeType.REMOVE, 1))
    for msg in net.take():  # node 2 receives the removal (its answer is in flight)...
        net.step(msg)
    tail = net[1].propose(b"tail")  # ...before the leader appends the tail
    assert (change.index, tail.index) == (3, 4)

    def lose_news_of_the_commit(msg: Message) -> Message | None:
        if isinstance(msg, AppendRequest | Heartbeat) and msg.to == 2:
            if msg.commit >= change.index:
                return None
            if isinstance(msg, AppendRequest) and any(e.index >= tail.index for e in msg.entries):
                return None
        return msg

    net.filters.append(lose_news_of_the_commit)
    net.deliver()
    # Node 1 applied its removal. It keeps leading only to hand over to node 2 once 2
    # holds its whole log, and refuses proposals meanwhile.
    assert net[1].conf_state.voters == {2}
    assert net[1].raft.lead_transferee == 2
    with pytest.raises(ProposalDroppedError):
        net[1].propose(b"late")
    assert net[2].status().commit == change.index - 1
    net.heal()
    net.tick(times=10 * ELECTION)
    assert net.leaders() == [2]
    e = net.propose(2, b"after")
    assert net[2].status().commit == e.index
    assert net[2].conf_state.voters == {2}


def test_membership_changes_one_at_a_time() -> None:
    """§6 / thesis §4.1: a leader proposes one server change at a time and only after the
    previous one is applied; impossible changes are refused outright."""
    net = three_nodes()
    net.start(4)
    net[1].propose_conf_change(ConfChange.single(ChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDroppedError):
        net[1].propose_conf_change(ConfChange.single(ChangeType.REMOVE, 3))
    net.deliver()
    with pytest.raises(InvalidConfChangeError):
        net[1].propose_conf_change(ConfChange.single(ChangeType.ADD_VOTER, 2))
    with pytest.raises(InvalidConfChangeError):
        net[1].propose_conf_change(ConfChange.single(ChangeType.REMOVE, 9))
    with pytest.raises(InvalidConfChangeError):
        net[1].propose_conf_change(ConfChange(((ChangeType.REMOVE, 2), (ChangeType.REMOVE, 3))))
    with pytest.raises(NotLeaderError):
        net[2].propose_conf_change(ConfChange.single(ChangeType.REMOVE, 3))
    net[1].propose_conf_change(ConfChange.single(ChangeType.REMOVE, 3))
    net.deliver()
    assert net[1].conf_state.voters == {1, 2}


# --- §7 Log compaction ----------------------------------------------------------------------


def test_follower_behind_a_compacted_log_installs_a_chunked_snapshot() -> None:
    """§7: "the leader must occasionally send snapshots to followers that lag behind"
    with InstallSnapshot, whose data is sent in chunks at increasing offsets; the
    follower discards its log and restores its state machine from the snapshot."""
    net = three_nodes(snapshot_chunk_size=8)
    net.isolate(3)
    values = [f"value-{i}".encode() for i in range(10)]
    for value in values:
        net.propose(1, value)
    net.tick(1)
    leader, storage = net[1], net.storages[1]
    applied = leader.applied
    assert applied == 12 and net.state[1] == values
    snapshot = storage.create_snapshot(applied, leader.conf_state, encode_state(net.state[1]))
    storage.compact(applied)
    assert storage.first_index() == applied + 1

    net.heal()
    net.tick(1, times=3)
    chunks = net.sent_of(SnapshotChunk, to=3)
    assert len(chunks) == -(-len(snapshot.data) // 8) > 3
    assert [c.offset for c in chunks] == list(range(0, len(snapshot.data), 8))
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert b"".join(c.data for c in chunks) == snapshot.data
    assert all(c.meta == snapshot.meta for c in chunks)
    assert net.storages[3].snapshot() == snapshot
    assert net.state[3] == values
    assert net[3].applied == applied
    # Replication resumes after the snapshot.
    e = net.propose(1, b"after")
    net.tick(1)
    assert net[3].status().commit == e.index
    assert net.state[3] == [*values, b"after"]


def test_snapshot_transfer_survives_a_lost_chunk() -> None:
    """§7: a lost InstallSnapshot chunk is retried (RPCs are retried, §5.5) and the
    follower still ends with the exact snapshot."""
    net = three_nodes(snapshot_chunk_size=8)
    net.isolate(3)
    for i in range(6):
        net.propose(1, f"v{i}".encode())
    net.tick(1)
    snapshot = net.storages[1].create_snapshot(
        net[1].applied, net[1].conf_state, encode_state(net.state[1])
    )
    net.storages[1].compact(net[1].applied)
    net.heal()
    lost: list[Message] = []

    def lose_second_chunk(msg: Message) -> Message | None:
        if isinstance(msg, SnapshotChunk) and msg.offset == 8 and not lost:
            lost.append(msg)
            return None
        return msg

    net.filters.append(lose_second_chunk)
    net.tick(1, times=10)
    assert len(lost) == 1
    assert net.storages[3].snapshot() == snapshot
    assert net.state[3] == net.state[1]


# --- §8 Client interaction: ReadIndex (thesis §6.4) -----------------------------------------


def test_read_index_is_served_only_after_a_quorum_confirms_leadership() -> None:
    """§8 / thesis §6.4: a read-only request is answered only after "the leader ...
    exchange[s] heartbeat messages with a majority of the cluster"; the read index is
    the commit index when the read arrived."""
    net = three_nodes()
    write = net.propose(1, b"w")
    net.isolate(2, 3)
    net[1].read_index(b"r1")
    net.deliver()
    rounds = [m for m in net.sent_of(Heartbeat, frm=1) if m.read_round]
    assert sorted(m.to for m in rounds) == [2, 3]
    assert net.read_states[1] == []
    net.heal()
    net.isolate(3)
    net[1].read_index(b"r2")
    net.deliver()
    # One round is in flight at a time: r2 waits for r1's round, which the next
    # heartbeat asks again.
    assert net.read_states[1] == []
    net.tick(1)
    net.deliver()
    # One follower's answer plus the leader's own makes a majority of three.
    assert net.read_states[1] == [ReadState(write.index, b"r1"), ReadState(write.index, b"r2")]


def test_read_round_whose_heartbeats_were_lost_is_confirmed_by_later_heartbeats() -> None:
    """Thesis §6.4 with §5.5 (requests are retried): if the heartbeats of a ReadIndex
    round are lost, later heartbeats still confirm leadership and release the read."""
    net = three_nodes()
    net.isolate(2, 3)
    net[1].read_index(b"r")
    net.deliver()
    net.heal()
    net.tick(1, times=3)
    assert net.read_states[1] == [ReadState(2, b"r")]


def test_read_index_waits_for_an_entry_of_the_leaders_term_to_commit() -> None:
    """Thesis §6.4 step 1: a new leader first commits an entry of its term (its no-op),
    since until then it may not know the latest commit index."""
    net = Net({1, 2, 3})
    appends = net.drop(lambda m: isinstance(m, AppendRequest))
    net.elect(1)
    net[1].read_index(b"early")
    net.tick(1, times=2)
    assert net.read_states[1] == []
    assert net[1].status().commit == 1
    assert [m for m in net.sent_of(Heartbeat) if m.read_round] == []
    net.filters.remove(appends)
    net.tick(1, times=2)
    assert net[1].status().commit == 2
    assert net.read_states[1] == [ReadState(2, b"early")]


def test_reads_are_batched_into_one_heartbeat_round() -> None:
    """Thesis §6.4.1: many read requests share one round of heartbeats."""
    net = three_nodes()
    for ctx in (b"a", b"b", b"c"):
        net[1].read_index(ctx)
    msgs = net.take()
    rounds = {m.read_round for m in msgs if isinstance(m, Heartbeat)}
    assert len(rounds) == 1 and 0 not in rounds
    assert sorted(m.to for m in msgs if isinstance(m, Heartbeat)) == [2, 3]
    net.queue.extend(msgs)
    net.deliver()
    assert net.read_states[1] == [ReadState(2, b"a"), ReadState(2, b"b"), ReadState(2, b"c")]


def test_follower_obtains_a_read_index_from_the_leader() -> None:
    """Thesis §6.4: "followers ... request the current commit index from the leader"
    and serve the read once they have applied up to it."""
    net = three_nodes()
    write = net.propose(1, b"w")
    net[2].read_index(b"f")
    net.deliver()
    assert net.read_states[2] == [ReadState(write.index, b"f")]
    assert len(net.sent_of(ReadIndexRequest, frm=2, to=1)) == 1
    assert len(net.sent_of(ReadIndexResponse, frm=1, to=2)) == 1
    assert net.read_states[1] == []
    net.tick(1)
    assert net[2].applied >= write.index


def test_read_index_on_a_node_that_knows_no_leader_is_refused() -> None:
    """Thesis §6.4: only a leader can confirm a read point; a node without one says so."""
    net = Net({1, 2, 3})
    with pytest.raises(NotLeaderError):
        net[1].read_index(b"x")


# --- Thesis §3.10 Leadership transfer --------------------------------------------------------


def test_leader_transfer_to_an_up_to_date_follower() -> None:
    """Thesis §3.10: the leader sends TimeoutNow to a caught-up target, which starts an
    election at once (without waiting for its timeout) and wins it."""
    net = three_nodes()
    term = net[1].raft.term
    net[1].transfer_leader(2)
    net.deliver()
    assert net.sent_of(TimeoutNow, frm=1, to=2) == [TimeoutNow(frm=1, to=2, term=term)]
    assert net.leaders() == [2]
    assert net[2].raft.term == term + 1
    assert (role(net, 1), net[1].raft.lead) == (Role.FOLLOWER, 2)


def test_leader_transfer_catches_the_target_up_first() -> None:
    """Thesis §3.10 step 2: "The prior leader transfers its log entries to the target
    server" before sending TimeoutNow, so the target can win."""
    net = three_nodes()
    net.isolate(3)
    e = net.propose(1, b"missed")
    net.heal()
    net[1].transfer_leader(3)
    net.deliver()
    assert net.leaders() == [3]
    assert (e.index, e.term) in net.log(3)
    timeout_at = net.sent.index(net.sent_of(TimeoutNow, to=3)[0])
    caught_up = [
        i
        for i, m in enumerate(net.sent)
        if isinstance(m, AppendResponse) and m.frm == 3 and m.index == e.index and not m.reject
    ]
    assert caught_up and caught_up[0] < timeout_at


def test_proposals_are_refused_during_a_transfer_until_it_times_out() -> None:
    """Thesis §3.10: during a transfer the leader stops accepting client requests; if
    the transfer does not finish within an election timeout it is aborted."""
    net = three_nodes()
    net.isolate(3)
    net[1].transfer_leader(3)
    net.deliver()
    with pytest.raises(ProposalDroppedError):
        net[1].propose(b"x")
    net.tick(1, 2, times=ELECTION)
    assert net.leaders() == [1]
    e = net.propose(1, b"x")
    assert net[1].status().commit == e.index


def test_follower_forwards_a_transfer_request_to_the_leader() -> None:
    """Thesis §3.10: any server may ask; the request reaches the leader."""
    net = three_nodes()
    net[3].transfer_leader(3)
    net.deliver()
    assert net.leaders() == [3]


def test_forwarded_transfer_to_a_non_voter_does_not_crash_the_leader() -> None:
    """Thesis §3.10: only a voter can take over. A follower forwards its clients'
    transfer requests unchecked, so a request naming a learner reaches the leader as
    a peer message, which must be refused, never raised out of ``step``."""
    net = three_nodes()
    add_learner(net, 4)
    net[3].transfer_leader(4)
    net.deliver()
    assert net.leaders() == [1]
    assert net.sent_of(TimeoutNow) == []
    e = net.propose(1, b"still-leading")
    assert net[1].status().commit == e.index


# --- Thesis §9.6 Pre-vote -------------------------------------------------------------------


def test_prevote_keeps_a_partitioned_node_from_raising_its_term() -> None:
    """Thesis §9.6: a candidate first asks whether it could win; a partitioned server
    never can, so it never increments its term and does not disrupt the cluster when it
    rejoins."""
    net = three_nodes(pre_vote=True)
    term = net[1].raft.term
    net.isolate(3)
    net.tick(times=5 * ELECTION)
    assert net[3].raft.term == term
    assert role(net, 3) is Role.PRE_CANDIDATE
    assert all(m.pre_vote and m.term == term + 1 for m in net.sent_of(VoteRequest, frm=3))
    net.heal()
    net.tick(times=2)
    assert net.leaders() == [1]
    assert {n.raft.term for n in net.nodes.values()} == {term}
    assert net[3].raft.lead == 1


def test_without_prevote_a_partitioned_node_disrupts_on_rejoining() -> None:
    """Thesis §9.6 (the problem pre-vote solves): without it, the partitioned server's
    term grows with each timeout and its return deposes the leader."""
    net = three_nodes(pre_vote=False)
    term = net[1].raft.term
    net.isolate(3)
    net.tick(times=5 * ELECTION)
    assert net[3].raft.term > term + 2
    net.heal()
    net.tick(times=4 * ELECTION)
    assert min(n.raft.term for n in net.nodes.values()) > term + 2


# --- Thesis §6.2 Check-quorum -----------------------------------------------------------------


def test_leader_without_a_quorum_steps_down() -> None:
    """Thesis §6.2: "a leader ... steps down if an election timeout elapses without a
    successful round of heartbeats to a majority of its cluster"."""
    net = three_nodes(check_quorum=True)
    net.isolate(1)
    for _ in range(2 * ELECTION):
        net.tick(1)
        if role(net, 1) is not Role.LEADER:
            break
    else:
        raise AssertionError("still leading after two election timeouts")
    assert (role(net, 1), net[1].raft.lead) == (Role.FOLLOWER, 0)
    with pytest.raises(NotLeaderError):
        net[1].propose(b"x")


def test_leader_with_a_quorum_keeps_leading() -> None:
    """Thesis §6.2: heartbeats acknowledged by a majority keep the leader in office."""
    net = three_nodes(check_quorum=True)
    net.isolate(3)
    net.tick(1, 2, times=5 * ELECTION)
    assert net.leaders() == [1]
    assert net[1].raft.term == 2


def test_follower_that_lost_its_log_is_caught_up_again() -> None:
    """A member without durable storage (rafted_value-style) may restart empty. The
    leader must notice from its rejection that the acknowledged entries are gone and
    replicate from what the follower really holds, instead of probing past it forever."""
    from boutique.raft.progress import Inflights, Progress, ProgressState

    pr = Progress(match=7, next=8, inflights=Inflights(4))
    pr.become_replicate()
    # A stale rejection (of an older message, below match) changes nothing...
    assert pr.maybe_decrease(5, 0) is False
    assert (pr.match, pr.next) == (7, 8)
    # ...a rejection at match with a lower hint is suspicious: probe at match...
    assert pr.maybe_decrease(7, 0) is True
    pr.become_probe()
    assert (pr.match, pr.next) == (7, 8)
    # ...and if the probe at match is refused too, the log is gone: start over.
    assert pr.maybe_decrease(7, 0) is True
    assert (pr.match, pr.next) == (0, 1)
    assert pr.state is ProgressState.PROBE
