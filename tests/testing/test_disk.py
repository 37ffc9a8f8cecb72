"""The power-loss disk: a crash keeps exactly what was synced (or, torn, a prefix of
the rest), and a storage that lost its power refuses all use."""

from __future__ import annotations

import random

import pytest

from boutique.raft.messages import ConfState, Entry, HardState
from boutique.testing.disk import PowerLossDisk, PowerLost


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, f"e{i}".encode()) for i in range(first, last + 1)]


def log_of(disk: PowerLossDisk, group: str) -> list[int]:
    synced = disk.synced(group)
    if synced is None:
        return []
    return [e.index for e in synced.entries(synced.first_index(), synced.last_index() + 1)]


def test_a_crash_keeps_what_was_synced_and_loses_the_rest() -> None:
    disk = PowerLossDisk()
    store = disk.open()
    g = store.group("g")
    g.append(entries(1, 3))
    g.set_hard_state(HardState(1, 1, 2))
    store.group("h").append(entries(1, 1))
    store.commit()
    g.append(entries(4, 5))
    g.set_hard_state(HardState(2, 2, 3))
    store.drop_group("h")
    assert store.pending_writes() == 3
    assert g.last_index() == 5  # the node reads back what it wrote

    disk.crash()
    assert (disk.crashes, disk.lost_writes) == (1, 3)
    with pytest.raises(PowerLost):
        store.commit()
    with pytest.raises(PowerLost):
        g.append(entries(6, 6))
    store.close()  # the host's shutdown path: nothing to do, and no error

    restarted = disk.open()
    assert restarted.groups() == ["g", "h"]
    g2 = restarted.group("g")
    assert (g2.last_index(), g2.hard_state) == (3, HardState(1, 1, 2))
    assert restarted.pending_writes() == 0


def test_synced_image_is_not_the_live_one() -> None:
    disk = PowerLossDisk()
    store = disk.open()
    g = store.group("g")
    g.append(entries(1, 2))
    assert disk.synced("g") is None
    store.commit()
    g.append(entries(3, 3))
    g.create_snapshot(2, ConfState(frozenset({1})), b"state")
    g.compact(2)
    synced = disk.synced("g")
    assert synced is not None
    assert (synced.first_index(), synced.last_index(), synced.snapshot().meta.index) == (1, 2, 0)
    store.commit()
    assert (synced.first_index(), synced.last_index(), synced.snapshot().meta.index) == (3, 3, 2)
    assert disk.syncs == 2


def test_close_discards_unsynced_writes_like_sqlite() -> None:
    disk = PowerLossDisk()
    store = disk.open()
    store.group("g").append(entries(1, 2))
    store.commit()
    store.group("g").append(entries(3, 4))
    store.close()
    assert disk.open().group("g").last_index() == 2
    assert disk.lost_writes == 1


def test_one_node_at_a_time() -> None:
    disk = PowerLossDisk()
    disk.open()
    with pytest.raises(RuntimeError):
        disk.open()


def test_armed_power_loss_hits_the_nth_operation_before_it_takes_effect() -> None:
    disk = PowerLossDisk()
    store = disk.open()
    g = store.group("g")
    disk.arm(3)
    g.append(entries(1, 1))  # 1
    store.commit()  # 2: synced
    with pytest.raises(PowerLost):
        g.append(entries(2, 2))  # 3: the power goes first
    assert not disk.running
    assert log_of(disk, "g") == [1]

    store = disk.open()
    disk.arm(2)
    store.group("g").append(entries(2, 3))
    with pytest.raises(PowerLost):
        store.commit()  # the sync never happens
    assert log_of(disk, "g") == [1]
    with pytest.raises(ValueError):
        disk.arm(0)


def test_a_torn_crash_keeps_a_prefix_in_order_and_may_cut_the_last_append() -> None:
    outcomes = set()
    for seed in range(40):
        disk = PowerLossDisk()
        store = disk.open()
        g = store.group("g")
        g.append(entries(1, 2))
        store.commit()
        g.append(entries(3, 6, term=2))  # unsynced: 4 entries in one write
        g.set_hard_state(HardState(2, 1, 2))
        g.append(entries(7, 8, term=2))
        disk.crash(tear=random.Random(seed))
        log = log_of(disk, "g")
        assert log == list(range(1, len(log) + 1)), "a torn crash left a hole"
        synced = disk.synced("g")
        assert synced is not None
        if len(log) > 6:
            assert synced.hard_state == HardState(2, 1, 2), "a later write outlived an earlier"
        outcomes.add(len(log))
        # The same seed tears the same way.
        again = PowerLossDisk()
        s2 = again.open()
        s2.group("g").append(entries(1, 2))
        s2.commit()
        s2.group("g").append(entries(3, 6, term=2))
        s2.group("g").set_hard_state(HardState(2, 1, 2))
        s2.group("g").append(entries(7, 8, term=2))
        again.crash(tear=random.Random(seed))
        assert log_of(again, "g") == log
    # Whole loss, torn appends (3-5 of 3..6) and whole survival all happen.
    assert {2, 8} <= outcomes and outcomes & {3, 4, 5}
