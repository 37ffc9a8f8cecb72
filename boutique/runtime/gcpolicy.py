"""How a node process runs Python's cyclic garbage collector: so that its cost per
operation does not grow with the number of long-lived objects (issue 19).

A node with 100,000 buckets holds millions of long-lived objects (each group's Raft
core, storage image and state machine). CPython's full collection walks all of them,
and it runs again each time the heap grew by a quarter: creating 30,000 buckets spent
18 s of 55 in full collections, and the share grows with the heap.

The policy: after each full collection, ``gc.freeze()`` moves its survivors to the
permanent generation, which later collections skip, so the next one walks only what
was allocated since. Frozen objects that later become cyclic garbage are not freed
while frozen, so once the frozen count has doubled since the last thaw, the next full
collection runs over everything again (``gc.unfreeze()`` first): leaked cycles stay
below the live heap, and the cost of the rare whole-heap walks, shared over the
objects that doubled it, stays constant per object.

It must never disable collection: new garbage is collected as before, only old
survivors are walked less often. It is process-wide, so only a node process's entry
point installs it (not a library object: tests run many nodes in one process).
"""

from __future__ import annotations

import gc
from typing import Any

__all__ = ["FreezeSurvivors"]


class FreezeSurvivors:
    """The gc callback of the policy above; ``install`` it once per process."""

    def __init__(self) -> None:
        self.thawed_at = 0
        """The frozen count right after the last whole-heap collection."""
        self.thaws = 0
        self.freezes = 0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def uninstall(self) -> None:
        """Remove the callback and unfreeze everything (tests)."""
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        frozen = gc.get_freeze_count()
        if frozen > 2 * max(self.thawed_at, 10_000):
            # The next full collection walks the whole heap again and frees what died
            # while frozen; its survivors are frozen then.
            gc.unfreeze()
            self.thawed_at = 0
            self.thaws += 1
            return
        gc.freeze()
        self.freezes += 1
        if self.thawed_at == 0:
            self.thawed_at = gc.get_freeze_count()
