"""The node process's garbage collector policy (``boutique.runtime.gcpolicy``): full
collections stop walking old survivors, yet garbage among them is still freed."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from boutique.runtime.gcpolicy import YOUNG_THRESHOLD, FreezeSurvivors


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def policy() -> Iterator[FreezeSurvivors]:
    before = gc.get_threshold()
    gc.collect()
    policy = FreezeSurvivors(min_blocks=1000)
    policy.install()
    try:
        yield policy
    finally:
        policy.uninstall()
        assert gc.get_threshold() == before


def test_survivors_of_a_full_collection_are_not_walked_again(policy: FreezeSurvivors) -> None:
    old = Cycle()
    gc.collect()
    # Frozen: later full collections skip it (the permanent generation is not gen 2).
    assert not any(o is old for o in gc.get_objects(generation=2))
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


def test_garbage_that_died_frozen_is_freed_once_the_heap_doubles(
    policy: FreezeSurvivors,
) -> None:
    doomed = Cycle()
    alive = weakref.ref(doomed)
    gc.collect()  # frozen now
    del doomed
    gc.collect()
    assert alive() is not None  # frozen garbage waits for a thaw
    assert policy.baseline
    ballast = [object() for _ in range(2 * policy.baseline - sys.getallocatedblocks() + 10_000)]
    gc.collect()  # the heap doubled: thaw
    gc.collect()  # a whole-heap collection
    assert policy.thaws == 1
    assert alive() is None
    del ballast
