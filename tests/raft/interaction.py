"""Raft interaction tests as data: a scripted cluster and a tiny datadriven runner.

In the style of etcd-io/raft's ``testdata/*.txt`` (driven there by
``rafttest/interaction_env_handler.go``); the code here is our own. A test file is a
sequence of blocks separated by blank lines::

    # Comments (lines starting with '#') may stand between blocks.
    command arg1 arg2 key=value key=(1,2,3)
    ----
    expected output, one line per line

The runner executes every command against one :class:`InteractionEnv` and compares what
it prints with the expected lines. To regenerate the expected outputs after a deliberate
change, run::

    BOUTIQUE_REWRITE=1 .venv/bin/pytest tests/raft/test_interaction.py

which rewrites the files in place; then *read the diff*: the files are a specification
of Raft behaviour, and a changed output is only right if the new behaviour is.

Notation in outputs: a log position prints as ``term/index`` (as in etcd's testdata), so
``prev=2/3`` is "index 3, of term 2"; an entry prints as ``term/index TYPE data``; id
sets print as ``(1,2,3)``. Messages print as ``from->to Type fields``. A ``Ready``
prints its parts in a fixed order: soft state, hard state, snapshot, entries, committed
entries, messages (may be sent at once), messages after persist, read states.

The network: ``isolate`` drops what crosses the partition, and ``recover`` discards
what crossed it while it stood (it is not delivered late). A crash loses the messages
on their way to the node, and those that reach it while it is down; what it sent
before crashing stays in flight.

Scripts whose expected output is the correct behaviour of a known core bug are listed
in ``test_interaction.KNOWN_CORE_BUGS`` (strict xfails, never rewritten).

This module drives the core only through ``RawNode``; it reads ``RawNode.raft`` (timers,
progress) to print it and to know how many ticks fire a timer, and never changes it.

The environment carries out each ``Ready`` exactly as ``boutique.raft.rawnode`` asks:
persist (into the node's ``MemoryStorage``, its simulated disk), queue messages on the
simulated network, restore/apply to a trivial state machine (the list of applied
``NORMAL`` payloads), then ``advance``. ``add-nodes`` consumes each founding member's
first ``Ready`` (which only applies the founding configuration entry 1) and prints a
summary instead.

Commands (ids are node ids; ``[...]`` marks optional arguments):

* ``add-nodes N [voters=(1,2,3)] [election-tick=10] [heartbeat-tick=1] [pre-vote=true]
  [check-quorum=true] [max-inflight=64] [snapshot-chunk=1048576]`` — add N nodes with the
  next free ids; with ``voters`` they are founding members (bootstrapped), without they
  start empty and join through a membership change.
* ``campaign ID``; ``tick-heartbeat ID`` / ``tick-election ID`` (tick until a heartbeat
  resp. an election or check-quorum round fires); ``tick ID N``.
* ``propose ID data``; ``propose-conf-change ID +4|~4|-3``; ``read-index ID ctx``;
  ``transfer-leader ID target``.
* ``process-ready ID...``; ``deliver-msgs ID... [drop=(ids or message type names)]``;
  ``stabilize [ID...]`` (process every Ready, deliver every message, until quiet).
* ``isolate ID...`` (drop every message to or from them) / ``recover`` (heal all).
* ``status ID``; ``raft-log ID``; ``machine ID``; ``compact ID index``;
  ``crash ID`` / ``restart ID [applied=N]`` (rebuild the node from its storage alone;
  by default its state machine restarts from the storage's snapshot, with ``applied``
  it is durable and kept what it had applied up to N).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from boutique.raft import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    RaftConfig,
    RaftError,
    RawNode,
    Ready,
    Role,
    Snapshot,
    bootstrap,
)
from boutique.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotChunk,
    SnapshotResponse,
    TimeoutNow,
    TransferLeaderRequest,
    VoteRequest,
    VoteResponse,
    decode_conf_change,
)
from boutique.raft.progress import ProgressState
from boutique.storage import MemoryStorage

REWRITE_ENV_VAR = "BOUTIQUE_REWRITE"

# --- The datadriven file format -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command line: ``name pos1 pos2 key=value``."""

    name: str
    args: tuple[str, ...]
    kwargs: dict[str, str]
    line: str
    lineno: int


@dataclass(slots=True)
class Block:
    command: Command
    expected: list[str]


Item = Block | str
"""A test file is blocks interleaved with verbatim lines (comments, blank lines)."""


def _split_args(line: str) -> list[str]:
    """Split on blanks, except inside parentheses (``voters=(1, 2)`` is one token)."""
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    for char in line:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char.isspace() and depth == 0:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        tokens.append("".join(current))
    return tokens


def parse_command(line: str, lineno: int) -> Command:
    tokens = _split_args(line)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if eq and key and not key.startswith(("+", "-", "~")):
            kwargs[key] = value
        else:
            args.append(token)
    return Command(tokens[0], tuple(args), kwargs, line, lineno)


def parse_file(text: str, name: str = "<test>") -> list[Item]:
    lines = text.splitlines()
    items: list[Item] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            items.append(line)
            i += 1
            continue
        command = parse_command(line.strip(), i + 1)
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ValueError(f"{name}:{i}: expected '----' after command {line!r}")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        items.append(Block(command, expected))
    return items


def render_file(items: Iterable[Item]) -> str:
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        else:
            out.append(item.command.line)
            out.append("----")
            out.extend(item.expected)
    return "\n".join(out) + "\n"


def rewrite_requested() -> bool:
    return os.environ.get(REWRITE_ENV_VAR, "") not in ("", "0")


def run_file(
    path: Path, handler: Callable[[Command], list[str]], rewrite: bool | None = None
) -> None:
    """Run every block of ``path`` through ``handler``; fail on the first mismatch, or
    rewrite the expected outputs in place when ``rewrite`` (default: whether
    ``BOUTIQUE_REWRITE`` is set)."""
    if rewrite is None:
        rewrite = rewrite_requested()
    items = parse_file(path.read_text(), path.name)
    for item in items:
        if isinstance(item, str):
            continue
        command = item.command
        try:
            actual = handler(command)
        except Exception as exc:
            raise AssertionError(
                f"{path.name}:{command.lineno}: {command.line!r} raised {exc!r}"
            ) from exc
        if not actual:
            actual = ["ok"]
        if any(not line.strip() for line in actual):
            raise AssertionError(f"{path.name}:{command.lineno}: output has a blank line")
        if rewrite:
            item.expected = actual
        elif actual != item.expected:
            diff = "\n".join(
                difflib.unified_diff(item.expected, actual, "expected", "actual", lineterm="")
            )
            raise AssertionError(
                f"{path.name}:{command.lineno}: output of {command.line!r} differs "
                f"(if the new output is right, rerun with {REWRITE_ENV_VAR}=1):\n{diff}"
            )
    if rewrite:
        path.write_text(render_file(items))


# --- Formatting -------------------------------------------------------------------------------


def fmt_bytes(data: bytes) -> str:
    out = []
    for byte in data:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def fmt_ids(ids: Iterable[int]) -> str:
    return "(" + ",".join(str(i) for i in sorted(ids)) + ")"


def fmt_conf(conf: ConfState) -> str:
    return f"voters={fmt_ids(conf.voters)} learners={fmt_ids(conf.learners)}"


def fmt_entry(entry: Entry) -> str:
    text = f"{entry.term}/{entry.index} {entry.type.name}"
    if entry.type is EntryType.NORMAL:
        text += " " + fmt_bytes(entry.data)
    elif entry.type is EntryType.CONF_CHANGE:
        text += " " + entry.data.decode("ascii", "backslashreplace")
    return text


def fmt_entries(entries: Iterable[Entry]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_hard_state(hs: HardState) -> str:
    return f"term={hs.term} vote={hs.vote} commit={hs.commit}"


def fmt_snapshot(snapshot: Snapshot) -> str:
    meta = snapshot.meta
    return f"{meta.term}/{meta.index} {fmt_conf(meta.conf)} data={fmt_bytes(bytes(snapshot.data))}"


def fmt_contexts(contexts: Iterable[bytes]) -> str:
    return "[" + ",".join(fmt_bytes(c) for c in contexts) + "]"


def fmt_msg(msg: Message) -> str:
    head = f"{msg.frm}->{msg.to} {type(msg).__name__}"
    match msg:
        case VoteRequest():
            flags = (" pre-vote" if msg.pre_vote else "") + (" force" if msg.force else "")
            body = f"{flags} term={msg.term} last={msg.last_log_term}/{msg.last_log_index}"
        case VoteResponse():
            flags = " pre-vote" if msg.pre_vote else ""
            verdict = "granted" if msg.granted else "rejected"
            body = f"{flags} term={msg.term} {verdict}"
        case AppendRequest():
            body = (
                f" term={msg.term} prev={msg.prev_log_term}/{msg.prev_log_index}"
                f" commit={msg.commit} entries={fmt_entries(msg.entries)}"
            )
        case AppendResponse():
            body = f" term={msg.term} index={msg.index}"
            if msg.reject:
                body += f" reject hint={msg.hint_term}/{msg.hint_index}"
        case Heartbeat():
            body = f" term={msg.term} commit={msg.commit}"
            if msg.read_round:
                body += f" read-round={msg.read_round}"
        case HeartbeatResponse():
            body = f" term={msg.term}"
            if msg.read_round:
                body += f" read-round={msg.read_round}"
        case SnapshotChunk():
            meta = msg.meta
            body = (
                f" term={msg.term} snap={meta.term}/{meta.index} {fmt_conf(meta.conf)}"
                f" offset={msg.offset} data={fmt_bytes(msg.data)}" + (" done" if msg.done else "")
            )
        case SnapshotResponse():
            body = f" term={msg.term} snap-index={msg.snapshot_index} received={msg.received}"
            body += (" reject" if msg.reject else "") + (" installed" if msg.installed else "")
        case TimeoutNow():
            body = f" term={msg.term}"
        case ReadIndexRequest():
            body = f" term={msg.term} ctx={fmt_contexts(msg.contexts)}"
        case ReadIndexResponse():
            body = f" term={msg.term} index={msg.index} ctx={fmt_contexts(msg.contexts)}"
        case TransferLeaderRequest():
            body = f" term={msg.term} target={msg.target}"
    return head + body


def fmt_ready(node_id: int, ready: Ready) -> list[str]:
    out = [f"> {node_id} handling Ready", f"  Ready must_sync={str(ready.must_sync).lower()}:"]
    if ready.soft_state is not None:
        out.append(f"  soft state: {ready.soft_state.role.value} lead={ready.soft_state.lead}")
    if ready.hard_state is not None:
        out.append(f"  hard state: {fmt_hard_state(ready.hard_state)}")
    if ready.snapshot is not None:
        out.append(f"  snapshot: {fmt_snapshot(ready.snapshot)}")
    for title, entries in (
        ("entries", ready.entries),
        ("committed entries", ready.committed_entries),
    ):
        if entries:
            out.append(f"  {title}:")
            out.extend(f"    {fmt_entry(e)}" for e in entries)
    for title, msgs in (
        ("messages", ready.messages),
        ("messages after persist", ready.persisted_messages),
    ):
        if msgs:
            out.append(f"  {title}:")
            out.extend(f"    {fmt_msg(m)}" for m in msgs)
    if ready.read_states:
        out.append("  read states:")
        out.extend(f"    index={rs.index} ctx={fmt_bytes(rs.context)}" for rs in ready.read_states)
    return out


# --- The simulated cluster --------------------------------------------------------------------


def _parse_ids(value: str) -> list[int]:
    return [int(part) for part in value.strip("()").replace(" ", "").split(",") if part]


def _parse_bool(value: str) -> bool:
    if value not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value == "true"


@dataclass(slots=True)
class SimNode:
    """One node: its disk (storage) survives a crash; everything else is volatile."""

    config: RaftConfig
    storage: MemoryStorage
    raw: RawNode | None
    applied: list[tuple[int, bytes]] = field(default_factory=list)
    """The state machine: ``(index, data)`` of every applied NORMAL entry, in order."""
    confs: list[tuple[int, ConfState]] = field(default_factory=list)
    """Membership history ``(index it took effect, conf)``, to snapshot at any index."""
    applied_at_crash: int = 0
    """How far the state machine had got when the node crashed (``restart applied=``)."""

    def node(self) -> RawNode:
        if self.raw is None:
            raise RuntimeError(f"node {self.config.id} is down")
        return self.raw

    def conf_at(self, index: int) -> ConfState:
        conf = ConfState()
        for at, c in self.confs:
            if at <= index:
                conf = c
        return conf

    def machine_bytes(self, upto: int) -> bytes:
        data = [d.decode("latin-1") for i, d in self.applied if i <= upto]
        return json.dumps(data, separators=(",", ":")).encode()

    def restore_machine(self, snapshot: Snapshot) -> None:
        index = snapshot.meta.index
        data = json.loads(bytes(snapshot.data)) if snapshot.data else []
        self.applied = [(index, d.encode("latin-1")) for d in data]
        self.confs = [(index, snapshot.meta.conf)]


class InteractionEnv:
    """A cluster driven one command at a time; every command returns printed lines."""

    def __init__(self) -> None:
        self.nodes: dict[int, SimNode] = {}
        self.network: list[Message] = []
        self.isolated: set[int] = set()
        self.out: list[str] = []
        self.handlers: dict[str, Callable[[Command], None]] = {
            "add-nodes": self.cmd_add_nodes,
            "campaign": self.cmd_campaign,
            "tick": self.cmd_tick,
            "tick-heartbeat": self.cmd_tick_heartbeat,
            "tick-election": self.cmd_tick_election,
            "propose": self.cmd_propose,
            "propose-conf-change": self.cmd_propose_conf_change,
            "read-index": self.cmd_read_index,
            "transfer-leader": self.cmd_transfer_leader,
            "stabilize": self.cmd_stabilize,
            "process-ready": self.cmd_process_ready,
            "deliver-msgs": self.cmd_deliver_msgs,
            "isolate": self.cmd_isolate,
            "recover": self.cmd_recover,
            "status": self.cmd_status,
            "raft-log": self.cmd_raft_log,
            "machine": self.cmd_machine,
            "compact": self.cmd_compact,
            "crash": self.cmd_crash,
            "restart": self.cmd_restart,
        }

    def handle(self, command: Command) -> list[str]:
        handler = self.handlers.get(command.name)
        if handler is None:
            raise ValueError(f"unknown command {command.name!r}")
        self.out = []
        try:
            handler(command)
        except RaftError as exc:
            # Errors the core reports to its caller are part of the specification.
            self.out.append(f"error: {type(exc).__name__}: {exc}")
        return self.out

    def _id(self, command: Command, position: int = 0) -> int:
        node_id = int(command.args[position])
        if node_id not in self.nodes:
            raise ValueError(f"no node {node_id}")
        return node_id

    def _ids(self, command: Command) -> list[int]:
        if not command.args:
            return sorted(self.nodes)
        return [self._id(command, i) for i in range(len(command.args))]

    # --- Building the cluster ---------------------------------------------------------------

    def cmd_add_nodes(self, command: Command) -> None:
        count = int(command.args[0])
        kw = dict(command.kwargs)
        voters = _parse_ids(kw.pop("voters")) if "voters" in kw else []
        options: dict[str, int | bool] = {}
        for key, attr, parse in (
            ("election-tick", "election_tick", int),
            ("heartbeat-tick", "heartbeat_tick", int),
            ("pre-vote", "pre_vote", _parse_bool),
            ("check-quorum", "check_quorum", _parse_bool),
            ("max-inflight", "max_inflight_msgs", int),
            ("announce-commit", "announce_commit", _parse_bool),
            ("snapshot-chunk", "snapshot_chunk_size", int),
        ):
            if key in kw:
                options[attr] = parse(kw.pop(key))
        if kw:
            raise ValueError(f"unknown add-nodes options {sorted(kw)}")
        first = max(self.nodes, default=0) + 1
        for node_id in range(first, first + count):
            storage = MemoryStorage()
            if voters:
                hard_state, entries = bootstrap(set(voters))
                storage.bootstrap(hard_state, entries)
            config = RaftConfig(id=node_id, **options)  # type: ignore[arg-type]
            sim = SimNode(config, storage, RawNode(config, storage, random.Random(node_id)))
            self.nodes[node_id] = sim
            raw = sim.node()
            if voters:
                # The founding entry is committed; applying it installs the membership.
                while raw.has_ready():
                    self._carry_out(sim, raw.ready(), quiet=True)
            status = raw.status()
            self.out.append(
                f"{node_id}: {'bootstrapped' if voters else 'empty'} term={status.term}"
                f" commit={status.commit} applied={status.applied} {fmt_conf(status.conf)}"
            )

    # --- Local inputs -----------------------------------------------------------------------

    def cmd_campaign(self, command: Command) -> None:
        self.nodes[self._id(command)].node().campaign()

    def _tick(self, node_id: int, count: int) -> None:
        raw = self.nodes[node_id].node()
        for _ in range(count):
            raw.tick()
        self.out.append(f"{node_id} ticked {count} time{'s' if count != 1 else ''}")

    def cmd_tick(self, command: Command) -> None:
        self._tick(self._id(command), int(command.args[1]))

    def cmd_tick_heartbeat(self, command: Command) -> None:
        node_id = self._id(command)
        raft = self.nodes[node_id].node().raft
        self._tick(node_id, raft.config.heartbeat_tick - raft.heartbeat_elapsed)

    def cmd_tick_election(self, command: Command) -> None:
        """Tick until the node's election timer fires: a follower campaigns (if it may),
        a leader runs its check-quorum round."""
        node_id = self._id(command)
        raft = self.nodes[node_id].node().raft
        if raft.role is Role.LEADER:
            timeout = raft.config.election_tick
        else:
            timeout = raft.randomized_election_timeout
        self._tick(node_id, max(1, timeout - raft.election_elapsed))

    def cmd_propose(self, command: Command) -> None:
        node_id = self._id(command)
        entry = self.nodes[node_id].node().propose(command.args[1].encode())
        self.out.append(f"{node_id} appended {fmt_entry(entry)}")

    def cmd_propose_conf_change(self, command: Command) -> None:
        node_id = self._id(command)
        change = decode_conf_change(command.args[1].encode())
        entry = self.nodes[node_id].node().propose_conf_change(change)
        self.out.append(f"{node_id} appended {fmt_entry(entry)}")

    def cmd_read_index(self, command: Command) -> None:
        self.nodes[self._id(command)].node().read_index(command.args[1].encode())

    def cmd_transfer_leader(self, command: Command) -> None:
        self.nodes[self._id(command)].node().transfer_leader(int(command.args[1]))

    # --- Ready and the network --------------------------------------------------------------

    def _carry_out(self, sim: SimNode, ready: Ready, quiet: bool = False) -> None:
        """Do what the Ready contract asks, in its order, printing the Ready first."""
        raw = sim.node()
        if not quiet:
            self.out.extend(fmt_ready(sim.config.id, ready))
        # 1. Persist.
        storage = sim.storage
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        # 2. Send (the simulated network delivers only on deliver-msgs / stabilize).
        self.network.extend(ready.messages)
        self.network.extend(ready.persisted_messages)
        # 3. Restore and apply.
        conf_before = raw.conf_state
        if ready.snapshot is not None:
            sim.restore_machine(ready.snapshot)
        for entry in ready.committed_entries:
            if entry.type is EntryType.NORMAL:
                sim.applied.append((entry.index, entry.data))
            elif entry.type is EntryType.CONF_CHANGE:
                conf = decode_conf_change(entry.data).apply_to(sim.conf_at(entry.index))
                sim.confs.append((entry.index, conf))
        # 4. Reads are served by the caller; the printout above is all this env does.
        # 5. Advance.
        raw.advance(ready)
        expected_conf = sim.conf_at(raw.applied)
        if raw.conf_state != expected_conf:
            raise AssertionError(
                f"node {sim.config.id} conf {fmt_conf(raw.conf_state)} after applying"
                f" {raw.applied}, expected {fmt_conf(expected_conf)}"
            )
        if not quiet and raw.conf_state != conf_before:
            self.out.append(f"  applied conf: {fmt_conf(raw.conf_state)}")

    def _process_ready(self, node_id: int) -> bool:
        sim = self.nodes[node_id]
        if sim.raw is None or not sim.raw.has_ready():
            return False
        self._carry_out(sim, sim.raw.ready())
        return True

    def _deliver(self, node_id: int, drop: frozenset[str] = frozenset()) -> bool:
        msgs = [m for m in self.network if m.to == node_id]
        if not msgs:
            return False
        self.network = [m for m in self.network if m.to != node_id]
        self.out.append(f"> {node_id} receiving messages")
        sim = self.nodes[node_id]
        for msg in msgs:
            dropped: str | None = None
            if sim.raw is None:
                dropped = " (DROPPED: node down)"
            elif msg.frm in self.isolated or msg.to in self.isolated:
                dropped = " (DROPPED: isolated)"
            elif str(msg.frm) in drop or type(msg).__name__ in drop:
                dropped = " (DROPPED)"
            if dropped is not None:
                self.out.append(f"  {fmt_msg(msg)}{dropped}")
                continue
            self.out.append(f"  {fmt_msg(msg)}")
            try:
                sim.node().step(msg)
            except Exception as exc:
                # Not a caller error to print: a peer's message must never make step()
                # raise, or one confused peer could crash the node.
                raise AssertionError(
                    f"node {node_id}: step({fmt_msg(msg)}) raised {exc!r}"
                ) from exc
        return True

    def cmd_process_ready(self, command: Command) -> None:
        for node_id in self._ids(command):
            self._process_ready(node_id)

    def cmd_deliver_msgs(self, command: Command) -> None:
        drop = frozenset(_parse_ids_or_names(command.kwargs.get("drop", "")))
        for node_id in self._ids(command):
            self._deliver(node_id, drop)

    def cmd_stabilize(self, command: Command) -> None:
        ids = self._ids(command)
        for _ in range(1000):
            busy = False
            for node_id in ids:
                busy |= self._process_ready(node_id)
            for node_id in ids:
                busy |= self._deliver(node_id)
            if not busy:
                return
        raise RuntimeError("stabilize did not converge in 1000 rounds")

    def cmd_isolate(self, command: Command) -> None:
        self.isolated.update(self._ids(command))
        self.out.append(f"isolated {fmt_ids(self.isolated)}")

    def cmd_recover(self, command: Command) -> None:
        """Heal every partition. Messages still queued that crossed a partition while
        it existed are lost, not delivered late."""
        lost = [m for m in self.network if m.frm in self.isolated or m.to in self.isolated]
        if lost:
            self.network = [m for m in self.network if m not in lost]
            self.out.append("lost in the partition:")
            self.out.extend(f"  {fmt_msg(m)}" for m in lost)
        self.isolated.clear()

    # --- Inspection -------------------------------------------------------------------------

    def cmd_status(self, command: Command) -> None:
        node_id = self._id(command)
        raw = self.nodes[node_id].node()
        st = raw.status()
        self.out.append(
            f"{node_id} {st.role.value} term={st.term} vote={st.vote} lead={st.lead}"
            f" commit={st.commit} applied={st.applied} last={st.last_index}"
        )
        self.out.append(fmt_conf(st.conf))
        for member, pr in sorted(raw.raft.progress.items()):
            line = f"progress {member}: {pr.state.value} match={pr.match} next={pr.next}"
            if pr.learner:
                line += " learner"
            if pr.state is ProgressState.REPLICATE and member != node_id:
                line += f" inflight={len(pr.inflights)}"
            if pr.state is ProgressState.PROBE and pr.probe_sent:
                line += " probe-sent"
            if pr.transfer is not None:
                meta = pr.transfer.snapshot.meta
                line += (
                    f" snap={meta.term}/{meta.index} acked={pr.transfer.acked}"
                    f" sent={pr.transfer.sent}"
                )
            self.out.append(line)

    def cmd_raft_log(self, command: Command) -> None:
        sim = self.nodes[self._id(command)]
        storage = sim.storage
        snapshot = storage.snapshot()
        if snapshot.meta.index:
            self.out.append(f"snapshot {fmt_snapshot(snapshot)}")
        entries = storage.entries(storage.first_index(), storage.last_index() + 1)
        self.out.extend(fmt_entry(e) for e in entries)
        if sim.raw is not None and sim.raw.raft.log.unstable.entries:
            self.out.append(f"unstable {fmt_entries(sim.raw.raft.log.unstable.entries)}")
        if not self.out:
            self.out.append(f"log is empty: first={storage.first_index()}")

    def cmd_machine(self, command: Command) -> None:
        node_id = self._id(command)
        sim = self.nodes[node_id]
        applied = sim.node().applied
        self.out.append(f"applied={applied} data={sim.machine_bytes(applied).decode()}")

    # --- Snapshots and crashes --------------------------------------------------------------

    def cmd_compact(self, command: Command) -> None:
        node_id = self._id(command)
        index = int(command.args[1])
        sim = self.nodes[node_id]
        raw = sim.node()
        if index > raw.applied:
            raise ValueError(f"cannot snapshot at {index}: node {node_id} applied {raw.applied}")
        snapshot = sim.storage.create_snapshot(index, sim.conf_at(index), sim.machine_bytes(index))
        sim.storage.compact(index)
        self.out.append(f"{node_id} snapshot {fmt_snapshot(snapshot)}")
        self.out.append(f"{node_id} log now starts at {sim.storage.first_index()}")

    def cmd_crash(self, command: Command) -> None:
        node_id = self._id(command)
        sim = self.nodes[node_id]
        sim.applied_at_crash = sim.node().applied
        sim.raw = None
        self.out.append(f"{node_id} crashed: hard state {fmt_hard_state(sim.storage.hard_state)}")
        # Messages on their way to a dead process are lost; those it sent are in flight.
        lost = [m for m in self.network if m.to == node_id]
        if lost:
            self.network = [m for m in self.network if m.to != node_id]
            self.out.append("lost with the crash:")
            self.out.extend(f"  {fmt_msg(m)}" for m in lost)

    def cmd_restart(self, command: Command) -> None:
        node_id = self._id(command)
        sim = self.nodes[node_id]
        if sim.raw is not None:
            raise ValueError(f"node {node_id} is running")
        lost = [m for m in self.network if m.to == node_id]
        if lost:
            self.network = [m for m in self.network if m.to != node_id]
            self.out.append("lost while down:")
            self.out.extend(f"  {fmt_msg(m)}" for m in lost)
        snapshot = sim.storage.snapshot()
        if "applied" in command.kwargs:
            # A durable state machine: it kept what it had applied up to ``applied``.
            applied = int(command.kwargs["applied"])
            if not snapshot.meta.index <= applied <= sim.applied_at_crash:
                raise ValueError(f"applied={applied} outside what node {node_id} could keep")
            sim.applied = [(i, d) for i, d in sim.applied if i <= applied]
            sim.confs = [(i, c) for i, c in sim.confs if i <= applied]
        else:
            # A volatile state machine: it restarts from the snapshot and replays.
            applied = snapshot.meta.index
            sim.restore_machine(snapshot)
        config = dataclasses.replace(sim.config, applied=applied)
        sim.raw = RawNode(config, sim.storage, random.Random(node_id))
        st = sim.raw.status()
        self.out.append(
            f"{node_id} restarted: term={st.term} vote={st.vote} commit={st.commit}"
            f" applied={st.applied} last={st.last_index} {fmt_conf(st.conf)}"
        )


def _parse_ids_or_names(value: str) -> list[str]:
    return [part for part in value.strip("()").replace(" ", "").split(",") if part]


def run_interaction_file(path: Path, rewrite: bool | None = None) -> None:
    env = InteractionEnv()
    run_file(path, env.handle, rewrite)
