"""Crash durability with real processes: what ``commit()`` returned for survives SIGKILL.

``crash_writer.py`` writes batches across three groups of one data file, printing each
batch's plan before ``commit()`` and ``SYNCED`` after it. This test kills it with
SIGKILL at random moments, over many rounds on the same file, each round continuing
from what the last one left. After each kill it reopens the file and replays the
reported batches on ``MemoryStorage`` models: the file must equal the models after the
last synced batch, or after the one batch whose commit may have finished after its
report could not be printed anymore. Equal means every reported entry is there with its
data, the hard state is the last synced one (or that newer one), snapshots and
compaction points match, and the log has no holes.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from boutique.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from boutique.storage import MemoryStorage
from boutique.storage.sqlite import SqliteStorage

WRITER = Path(__file__).with_name("crash_writer.py")
GROUPS = ("meta", "bucket:apples", "bucket:pears")
CONF = ConfState(frozenset({1, 2, 3}))
ROUNDS = 24

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def payload(group: str, index: int, term: int) -> bytes:
    """Same as ``crash_writer.payload``."""
    return f"{group}:{index}:{term}:".encode() * (1 + index % 7)


def snapshot_data(group: str, index: int) -> bytes:
    """Same as ``crash_writer.snapshot_data``."""
    return f"snapshot of {group} at {index}".encode()


Models = dict[str, MemoryStorage]


def replay(models: Models, plan: dict[str, list[list[Any]]]) -> None:
    """Carry out one reported batch on the models."""
    for name, ops in plan.items():
        m = models.setdefault(name, MemoryStorage())
        for op in ops:
            match op:
                case ["install", int(index), int(term)]:
                    meta = SnapshotMeta(index, term, CONF)
                    m.apply_snapshot(Snapshot(meta, snapshot_data(name, index)))
                case ["append", int(start), int(count), int(term)]:
                    m.append(
                        [
                            Entry(term, i, payload(name, i, term))
                            for i in range(start, start + count)
                        ]
                    )
                case ["hs", int(term), int(vote), int(commit)]:
                    m.set_hard_state(HardState(term, vote, commit))
                case ["snap", int(index)]:
                    m.create_snapshot(index, CONF, snapshot_data(name, index))
                case ["compact", int(index)]:
                    m.compact(index)
                case _:
                    raise AssertionError(f"unknown op {op!r}")


def image(storage: Any) -> tuple[object, ...]:
    first, last = storage.first_index(), storage.last_index()
    return (
        storage.hard_state,
        storage.snapshot(),
        first,
        last,
        storage.term(first - 1),
        storage.entries(first, last + 1),
    )


def read_file(db: Path) -> dict[str, tuple[object, ...]]:
    """Reopen the file and check every group's log is whole."""
    with SqliteStorage(db) as store:
        images = {}
        for name in store.groups():
            g = store.group(name)
            entries = g.entries(g.first_index(), g.last_index() + 1)
            assert [e.index for e in entries] == list(range(g.first_index(), g.last_index() + 1))
            for e in entries:
                assert e.data == payload(name, e.index, e.term), (name, e)
            images[name] = image(g)
        return images


def images_of(models: Models) -> dict[str, tuple[object, ...]]:
    return {name: image(m) for name, m in models.items()}


class Writer:
    """One run of ``crash_writer.py``, its stdout read line by line by a thread."""

    def __init__(self, db: Path, seed: int, stderr: Path) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._stderr_path = stderr
        self._stderr = stderr.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(db), str(seed)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break  # cut by the kill: never reported
            line = raw.decode()
            self.lines.append(line)
            if line.startswith("READY"):
                self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"writer not ready: {self._stderr_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL our process by its pid (if it still runs) and reap it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


def test_synced_writes_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    db = tmp_path / "data" / "node.db"
    models: Models = {}
    synced_batches = 0
    newer_after_kill = 0
    for round_no in range(ROUNDS):
        stderr = tmp_path / f"writer-{round_no}.err"
        writer = Writer(db, seed=round_no, stderr=stderr)
        try:
            if rng.random() < 0.15:
                time.sleep(rng.uniform(0, 0.3))  # may land while it opens the file
            else:
                writer.wait_ready(timeout=30)
                time.sleep(rng.uniform(0, 0.2))
            assert writer.proc.poll() is None, f"writer exited: {stderr.read_text()}"
        finally:
            writer.kill()
        assert writer.proc.returncode == -signal.SIGKILL

        pending: dict[str, Any] | None = None
        for line in writer.lines:
            kind, _, body = line.partition(" ")
            if kind == "PLAN":
                pending = json.loads(body)
            elif kind == "SYNCED":
                report = json.loads(body)
                assert pending is not None and pending["seq"] == report["seq"]
                replay(models, pending["groups"])
                pending = None
                synced_batches += 1
                for name, (last, term, *hs) in report["groups"].items():
                    m = models[name]
                    assert (m.last_index(), m.term(m.last_index())) == (last, term)
                    assert m.hard_state == HardState(*hs)

        on_disk = read_file(db)
        if on_disk != images_of(models):
            # The kill came after commit() but before SYNCED was printed.
            assert pending is not None, f"round {round_no}: file differs from the synced state"
            newer = copy.deepcopy(models)
            replay(newer, pending["groups"])
            assert on_disk == images_of(newer), f"round {round_no}: file matches no reported state"
            models = newer
            newer_after_kill += 1
    assert synced_batches > ROUNDS, "the writer hardly ever got to sync"
    assert set(models) == set(GROUPS)
    print(f"{synced_batches} synced batches, {newer_after_kill} commits seen after the kill")
