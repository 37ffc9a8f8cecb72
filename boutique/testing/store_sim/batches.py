"""Counting the batch entries a simulated run applies: how much of batching it exercised.

A leader proposes the writes it gathers in one turn as one entry (``machine.encode_batch``,
``GroupRuntime.propose_queued``). Whether a run made any is invisible to its clients
(batching changes nothing they can observe), so ``counting_batches`` wraps
``MachineHost.apply_batch`` for the duration of one run and counts each batch entry as
it is applied, on every replica that applies it, with the commands it carried.

What it must never do: change what ``apply_batch`` does or answers, or stay installed
after its run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from boutique.machine import CommandFailed, MachineHost


@dataclass(slots=True)
class BatchCount:
    """Batch entries applied in one run (each replica's apply counts)."""

    entries: int = 0
    commands: int = 0
    """Commands in those entries (an entry that cannot be decoded counts one)."""
    largest: int = 0
    """Commands in the largest batch entry."""

    def add(self, commands: int) -> None:
        self.entries += 1
        self.commands += commands
        self.largest = max(self.largest, commands)

    def merge(self, other: BatchCount) -> None:
        """Add another run's count (a sweep's total)."""
        self.entries += other.entries
        self.commands += other.commands
        self.largest = max(self.largest, other.largest)


@contextlib.contextmanager
def counting_batches() -> Iterator[BatchCount]:
    """Count every ``MachineHost.apply_batch`` inside the block (a plant installed
    before it is counted as what it is: the code the run ran)."""
    count = BatchCount()
    real = MachineHost.__dict__["apply_batch"]

    def counted(self: MachineHost[Any, Any, Any, Any, Any], index: int, data: bytes) -> Any:
        replies: list[Any | CommandFailed] = real(self, index, data)
        count.add(len(replies))
        return replies

    MachineHost.apply_batch = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        MachineHost.apply_batch = real  # type: ignore[method-assign]
