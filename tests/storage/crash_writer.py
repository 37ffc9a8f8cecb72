"""A writer process for the crash test: it writes Raft state and reports what it synced.

Usage: ``python crash_writer.py DB SEED``. It opens ``DB`` (continuing from whatever is
there), prints ``READY``, then loops forever over batches touching some of three groups:
appends (sometimes overwriting a suffix above the commit index, as a new leader would),
hard states, snapshots with compaction, and snapshot installs. For every batch it prints
``PLAN {json}`` (the operations, enough for the test to replay them on a
``MemoryStorage``), calls ``commit()``, then prints ``SYNCED {json}`` with what is now
durable. Each line is flushed before the next step, so a line the test read was written
before the kill. The test kills this process with SIGKILL; it never exits by itself.
"""

from __future__ import annotations

import json
import random
import sys

from boutique.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from boutique.storage.sqlite import GroupStorage, SqliteStorage

GROUPS = ("meta", "bucket:apples", "bucket:pears")
CONF = ConfState(frozenset({1, 2, 3}))

Op = list[object]


def payload(group: str, index: int, term: int) -> bytes:
    """The data of an entry, so the test can check it (``test_crash_durability`` too)."""
    return f"{group}:{index}:{term}:".encode() * (1 + index % 7)


def snapshot_data(group: str, index: int) -> bytes:
    return f"snapshot of {group} at {index}".encode()


def plan_group(rng: random.Random, group: GroupStorage) -> list[Op]:
    """Choose this batch's writes for one group and carry them out on it."""
    name = group.group_id
    ops: list[Op] = []
    hs = group.hard_state
    last = group.last_index()
    term = max(hs.term, group.term(last), 1)
    commit = hs.commit
    if rng.random() < 0.03:
        # A snapshot from the leader, past the end of our log.
        index = last + rng.randint(1, 30)
        term += 1
        group.apply_snapshot(Snapshot(SnapshotMeta(index, term, CONF), snapshot_data(name, index)))
        ops.append(["install", index, term])
        last = commit = index
    low = max(commit + 1, group.first_index())
    start = last + 1
    if low <= last and rng.random() < 0.2:
        # A new leader overwrites entries that were never committed.
        term += 1
        start = rng.randint(low, last)
    count = rng.randint(1, 20)
    group.append([Entry(term, i, payload(name, i, term)) for i in range(start, start + count)])
    ops.append(["append", start, count, term])
    last = start + count - 1
    commit = rng.randint(commit, last)
    vote = rng.randint(1, 3)
    group.set_hard_state(HardState(term, vote, commit))
    ops.append(["hs", term, vote, commit])
    if rng.random() < 0.15 and commit > group.snapshot().meta.index:
        group.create_snapshot(commit, CONF, snapshot_data(name, commit))
        ops.append(["snap", commit])
        through = max(0, commit - rng.randint(0, 10))
        group.compact(through)
        ops.append(["compact", through])
    return ops


def emit(kind: str, body: object) -> None:
    sys.stdout.write(f"{kind} {json.dumps(body)}\n")
    sys.stdout.flush()


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = SqliteStorage(path)
    emit("READY", {"groups": store.groups()})
    seq = 0
    while True:
        seq += 1
        touched = rng.sample(GROUPS, rng.randint(1, len(GROUPS)))
        plan = {name: plan_group(rng, store.group(name)) for name in touched}
        emit("PLAN", {"seq": seq, "groups": plan})
        store.commit()
        synced = {}
        for name in touched:
            g = store.group(name)
            hs = g.hard_state
            synced[name] = [g.last_index(), g.term(g.last_index()), hs.term, hs.vote, hs.commit]
        emit("SYNCED", {"seq": seq, "groups": synced})


if __name__ == "__main__":
    main()
