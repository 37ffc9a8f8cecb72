"""How a node process runs Python's cyclic garbage collector: so that its cost per
operation does not grow with the number of long-lived objects (issue 19).

A node with 100,000 buckets holds millions of long-lived objects (each group's Raft
core, storage image and state machine). CPython's full collection walks all of them,
and it runs again each time the heap grew by a quarter: creating 30,000 buckets spent
18 s of 55 in full collections, and the share grows with the heap.

The policy: after each full collection, ``gc.freeze()`` moves its survivors to the
permanent generation, which later collections skip, so the next one walks only what
was allocated since. Frozen objects that later become cyclic garbage are not freed
while frozen, so once the heap has doubled since the last whole-heap collection, the next full
collection runs over everything again (``gc.unfreeze()`` first): leaked cycles stay
below the live heap, and the cost of the rare whole-heap walks, shared over the
objects that doubled it, stays constant per object.

It must never disable collection: new garbage is collected as before, only old
survivors are walked less often. It is process-wide, so only a node process's entry
point installs it (not a library object: tests run many nodes in one process).
"""

from __future__ import annotations

import gc
import sys
from typing import Any

__all__ = ["FreezeSurvivors"]


YOUNG_THRESHOLD = 20_000
"""Allocations between collections of the youngest generation (CPython: 700)."""
MIN_BLOCKS = 200_000
"""Below this many allocated blocks a whole-heap collection is cheap: no thaw rule."""


class FreezeSurvivors:
    """The gc callback of the policy above; ``install`` it once per process.

    The heap's size is read with ``sys.getallocatedblocks()`` (a walk over the
    allocator's arenas, a few thousand at most), never with ``gc.get_freeze_count()``
    or ``gc.get_objects()``, which walk every object: the point is not to do that."""

    def __init__(self, min_blocks: int = MIN_BLOCKS) -> None:
        self.min_blocks = min_blocks
        self.baseline = 0
        """Allocated blocks after the last whole-heap collection (0: the next full
        collection walks the whole heap)."""
        self.thaws = 0
        self.freezes = 0
        self._installed = False
        self._thresholds = gc.get_threshold()

    def install(self) -> None:
        """Add the callback, and collect the youngest generation every
        ``YOUNG_THRESHOLD`` allocations instead of 700: each collection has a cost that
        grows with the heap, so fewer of them (same objects walked) cost less."""
        gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def uninstall(self) -> None:
        """Remove the callback, unfreeze everything and restore the thresholds (tests)."""
        gc.set_threshold(*self._thresholds)
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        blocks = sys.getallocatedblocks()
        if self.baseline and blocks > 2 * max(self.baseline, self.min_blocks):
            # The next full collection walks the whole heap again and frees what died
            # while frozen; its survivors are frozen then.
            gc.unfreeze()
            self.baseline = 0
            self.thaws += 1
            return
        gc.freeze()
        self.freezes += 1
        if not self.baseline:
            self.baseline = blocks
