"""Multi-step fault patterns for the simulator's nemesis, each aimed at one Raft rule.

Independent random faults almost never line up into the few sequences that expose some
bugs: Figure 8's commit of an old-term entry, a deposed leader serving reads, a new
leader changing membership while it inherited an unapplied change. A pattern plays such
a sequence: it watches the cluster every step and acts on what it sees (a new leader, a
commit index moving), like a scripted test, but every choice in it is random, so each
seed plays it differently.

A pattern only does what a deployment can suffer or ask for: crashes, restarts, network
cuts, leader transfers, membership changes. It never changes a node's state directly,
and it never checks anything: finding the bug is the invariant checker's and the
linearizability checker's job.
"""

from __future__ import annotations

import random

from boutique.raft import (
    ChangeType,
    ConfChange,
    InvalidConfChangeError,
    NotLeaderError,
    ProposalDroppedError,
    Role,
)

from .cluster import SimCluster, SimNode

PATTERN_TIMEOUT = 200
"""Steps after which an unfinished pattern gives up (its cuts healed, nodes restarted)."""


def propose_membership_change(leader: SimNode, nodes: list[int], rng: random.Random) -> bool:
    """Ask ``leader`` for one random single-server change; False if it refused."""
    raft = leader.raft
    conf = raft.conf
    outsiders = [n for n in nodes if n not in conf.members()]
    caught_up = [
        n
        for n in conf.learners
        if n in raft.progress and raft.progress[n].match >= raft.log.committed
    ]
    choices: list[ConfChange] = []
    if outsiders:
        choices.append(ConfChange.single(ChangeType.ADD_LEARNER, rng.choice(outsiders)))
    if caught_up:
        choices.append(ConfChange.single(ChangeType.ADD_VOTER, rng.choice(caught_up)))
    if len(conf.voters) > 3:
        # Sometimes the leader removes itself (thesis §4.2.2).
        choices.append(ConfChange.single(ChangeType.REMOVE, rng.choice(sorted(conf.voters))))
    if conf.learners:
        choices.append(ConfChange.single(ChangeType.REMOVE, rng.choice(sorted(conf.learners))))
    if not choices:
        return False
    try:
        leader.raft_node().propose_conf_change(rng.choice(choices))
    except (ProposalDroppedError, InvalidConfChangeError, NotLeaderError):
        return False
    return True


class Pattern:
    """One multi-step fault sequence. ``step`` runs once per simulation step until
    ``done``; ``stop`` undoes what the pattern still holds (cuts, crashed nodes)."""

    def __init__(self, cluster: SimCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.started = cluster.now
        self.done = False
        self.down: set[int] = set()
        """Nodes this pattern crashed and has not restarted yet."""

    def start(self) -> bool:
        """Begin; False if the cluster is not in a state this pattern can start from."""
        raise NotImplementedError

    def step(self) -> None:
        if self.cluster.now - self.started > PATTERN_TIMEOUT:
            self.stop()
            return
        self.advance()

    def advance(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.cluster.network.heal()
        for node_id in sorted(self.down):
            self.cluster.restart(node_id)
        self.down.clear()
        self.done = True

    # --- Helpers ------------------------------------------------------------------------

    def crash(self, node_id: int) -> None:
        self.cluster.crash(node_id)
        self.down.add(node_id)

    def restart(self, node_id: int) -> None:
        self.cluster.restart(node_id)
        self.down.discard(node_id)

    def in_flight_horizon(self) -> int:
        """Steps after which every message now in flight has arrived or been lost."""
        return self.cluster.network.faults.max_delay + 1

    def isolate(self, node_id: int) -> None:
        self.cluster.network.isolate(node_id, set(self.cluster.nodes))

    def leads(self, node_id: int, term: int | None = None) -> bool:
        sim = self.cluster.nodes[node_id]
        return sim.up and sim.raft.role is Role.LEADER and (term is None or sim.raft.term == term)


class Usurp(Pattern):
    """A leader is deposed without knowing it, then leads again.

    The leader hands over to another voter (a leader transfer). From the moment the
    successor campaigns, nothing from a node of the new term reaches the old leader;
    once the old leader has no read round in flight, it is cut off entirely. So it goes
    on believing it leads while the successor commits, and clients that knew it keep
    sending it reads, which start a round that cannot be confirmed. After a while the
    network heals and leadership is transferred back to it. A deposed leader that
    answers reads without a heartbeat quorum, or that carries unconfirmed read rounds
    into its next term, releases a read index older than what was committed meanwhile.
    """

    def start(self) -> bool:
        leader = self.cluster.leader()
        if leader is None or self.cluster.network.has_cuts:
            return False
        raft = leader.raft
        targets = [v for v in sorted(raft.conf.voters) if v != leader.id and v in raft.progress]
        targets = [v for v in targets if self.cluster.nodes[v].up]
        if not targets:
            return False
        self.old = leader.id
        self.term = raft.term
        self.target = self.rng.choice(targets)
        try:
            leader.raft_node().transfer_leader(self.target)
        except (InvalidConfChangeError, NotLeaderError):
            return False
        self.stage = "handover"
        self.deadline = self.cluster.now + 3 * self.cluster.options.election_tick
        return True

    def advance(self) -> None:
        cluster, now = self.cluster, self.cluster.now
        old = cluster.nodes[self.old]
        if not old.up:
            self.stop()
        elif self.stage == "handover":
            target = cluster.nodes[self.target]
            if target.up and target.raft.term > self.term:
                self.stage = "deafened"
                self.deadline = now + 2 * self.in_flight_horizon()
                self._deafen()
            elif now > self.deadline:
                self.stop()
        elif self.stage == "deafened":
            self._deafen()
            if not old.raft.read_rounds or now >= self.deadline:
                self.isolate(self.old)
                self.stage = "deposed"
                self.deadline = now + self.rng.randint(12, 30)
        elif self.stage == "deposed":
            if now >= self.deadline:
                cluster.network.heal()
                self.stage = "return"
                self.deadline = now + 8 * cluster.options.election_tick
        elif self.stage == "return":
            leader = cluster.leader()
            if now > self.deadline or (leader is not None and leader.id == self.old):
                self.stop()
            elif leader is not None and (now - self.started) % 5 == 0:
                try:
                    leader.raft_node().transfer_leader(self.old)
                except (InvalidConfChangeError, NotLeaderError):
                    self.stop()

    def _deafen(self) -> None:
        """Cut every link into the old leader from a node of a newer term. Such a node's
        messages sent since it changed term are still in flight, and are lost with it."""
        for sim in self.cluster.live():
            if sim.raft.term > self.term:
                self.cluster.network.cut(sim.id, self.old)


class MembershipFailover(Pattern):
    """A leader proposes a membership change and crashes before it is applied; the next
    leader is asked for another change at once. That leader inherited the first change
    unapplied (if it reached it), so it must refuse until an entry of its own term
    commits: otherwise two changes are in flight together."""

    def start(self) -> bool:
        leader = self.cluster.leader()
        if leader is None:
            return False
        if not propose_membership_change(leader, sorted(self.cluster.nodes), self.rng):
            return False
        self.old = leader.id
        self.term = leader.raft.term
        self.crash_at = self.cluster.now + self.rng.randint(1, 3)
        self.restart_at = self.crash_at + self.rng.randint(5, 40)
        self.asked = False
        return True

    def advance(self) -> None:
        cluster, now = self.cluster, self.cluster.now
        if now == self.crash_at:
            self.crash(self.old)
        if now >= self.restart_at:
            self.restart(self.old)
            if self.asked:
                self.done = True
                return
        if now <= self.crash_at or self.asked:
            return
        leader = cluster.leader()
        if leader is not None and leader.id != self.old and leader.raft.term > self.term:
            propose_membership_change(leader, sorted(cluster.nodes), self.rng)
            self.asked = True


class Figure8(Pattern):
    """Figure 8 of the Raft paper (§5.4.2), played with random choices.

    (a) The leader L is cut off with one follower F and replicates client writes to F
        only; then L crashes and the cut heals.
    (b) Another node N wins the next term without those entries; it is cut off at once,
        so its no-op stays local, and crashes.
    (c) L's and F's old-term entries make one of them the only electable node: this
        leader M replicates them and, the moment its commit index reaches the first
        entry N's log disagrees with, is cut off (its appends in flight are lost) and
        crashes. A correct M has committed its own no-op by then; a broken one may
        have committed an old-term entry by counting replicas.
    (d) L and N come back, N with a fast clock (it times out first). N's last term is
        the newest among the nodes without M's no-op, so a majority may vote for it;
        if M had committed by counting, N overwrites a committed entry.
    """

    def start(self) -> bool:
        cluster = self.cluster
        leader = cluster.leader()
        if leader is None or cluster.network.has_cuts:
            return False
        followers = [v for v in sorted(leader.raft.conf.voters) if v != leader.id]
        followers = [v for v in followers if cluster.nodes[v].up]
        if len(followers) < 3:
            return False
        self.old = leader.id
        self.partner = self.rng.choice(followers)
        self.usurper = 0
        self.watched: tuple[int, int, int] | None = None
        pair = {self.old, self.partner}
        cluster.network.partition(pair, set(cluster.nodes) - pair)
        self.stage = "strand"
        self.deadline = cluster.now + self.rng.randint(4, 10)
        return True

    def _divergence(self, leader: SimNode) -> int | None:
        """The first index where the crashed usurper's log disagrees with ``leader``'s."""
        storage = self.cluster.nodes[self.usurper].storage
        log = leader.raft.log
        for index in range(max(storage.first_index(), log.first_index()), storage.last_index() + 1):
            if storage.term(index) != log.term_or_none(index):
                return index
        return None

    def _new_leader(self, exclude: set[int]) -> SimNode | None:
        leader = self.cluster.leader()
        if leader is None or leader.id in exclude:
            return None
        return leader

    def advance(self) -> None:
        cluster, now = self.cluster, self.cluster.now
        if self.stage == "strand":
            if now >= self.deadline:
                self.crash(self.old)
                cluster.network.heal()
                self.stage = "usurp"
        elif self.stage == "usurp":
            leader = self._new_leader({self.old})
            if leader is None:
                return
            if leader.id == self.partner:
                self.stop()  # F won (b): its no-op commits the stranded entries
                return
            self.usurper = leader.id
            self.isolate(leader.id)
            self.stage = "usurp_crash"
            self.deadline = now + self.rng.randint(1, 3)
        elif self.stage == "usurp_crash":
            if now >= self.deadline:
                self.crash(self.usurper)
                self.stage = "usurp_gone"
                self.deadline = now + self.in_flight_horizon()
        elif self.stage == "usurp_gone":
            # Heal only once what N had in flight is lost: its no-op must stay local.
            if now >= self.deadline:
                cluster.network.heal()
                if self.rng.random() < 0.5:
                    self.restart(self.old)
                self.stage = "inherit"
        elif self.stage == "inherit":
            leader = self._new_leader({self.usurper})
            if leader is None:
                return
            diverge = self._divergence(leader)
            if diverge is None:
                self.stop()  # N's log is a prefix of M's: nothing to overwrite
                return
            self.watched = (leader.id, leader.raft.term, diverge)
            self.stage = "watch"
        elif self.stage == "watch":
            assert self.watched is not None
            node_id, term, diverge = self.watched
            if not self.leads(node_id, term):
                self.stop()
                return
            if cluster.nodes[node_id].raft.log.committed >= diverge:
                self.isolate(node_id)
                self.crash(node_id)
                self.restart(self.usurper)
                if self.old != node_id:
                    self.restart(self.old)
                self.stage = "settle"
                self.deadline = now + self.in_flight_horizon()
                self.clock_speed = self.rng.randint(4, 6)
        elif self.stage in ("settle", "return"):
            usurper = cluster.nodes[self.usurper]
            if usurper.node is not None and cluster.leader() is None:
                # A fast clock: the usurper's election timer fires before the others'.
                for _ in range(self.clock_speed - 1):
                    usurper.node.tick()
            if now < self.deadline:
                return
            if self.stage == "settle":
                # Heal once what the crashed leader had in flight is lost; it returns
                # later, so it does not simply win again with its newer no-op.
                cluster.network.heal()
                self.stage = "return"
                self.deadline = now + self.rng.randint(20, 40)
            else:
                self.stop()
