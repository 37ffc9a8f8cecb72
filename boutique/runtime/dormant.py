"""Dormant buckets: groups this node founds, but only on their first touch.

A bucket nobody has used yet needs no Raft group: its initial state is fully decided
by its registry entry (the group id, and its founding replicas as the voters: the
bootstrap entries, an empty log after them, no vote). So when the registry's ``create``
is applied, a founding replica only records the bucket here. Its group is
*materialized* — bootstrapped in storage exactly as a founding member always was, then
opened — when it is first touched: a client request routed to it (the materializer
campaigns, so the request's retry finds a leader), or any Raft message for it from a
peer (that peer materialized it first; no campaign then). A DROP is a touch like any
other: its tombstone is committed in the group's own log, which materializes it.
So 100,000 unused buckets cost their registry entries and one entry each here: no
storage rows, no ``RawNode``, no election, nothing to load or tick after a restart.

Why starting a dormant group from its founding state is truthful (the safety rule):
Raft lets a member start from the bootstrap state only if it never voted or
acknowledged anything in that group; a member that forgets a vote or an entry it
acknowledged may let two leaders be elected in a term, or lose a committed entry. A
dormant replica has never opened the group, so it never voted or acknowledged in it:
every vote and acknowledgement is sent only after the group's hard state and entries
are synced (the host's Ready rule), and the bootstrap rows are written in the same
storage transaction as that sync. So "this node's storage has no rows for the group"
implies "it never voted or acknowledged there" — as long as the storage is the node's
own, unbroken, and the group was never closed here. Hence a bucket may be dormant on
node ``me`` only if (``may_sleep``):

* ``me`` is one of its replicas and the bucket never moved (``BucketInfo.moved``):
  the replicas are then the founding members, and ``me`` can never have been closed
  out of the group and come back. A moved-in replica always starts empty and is
  caught up by the leader, as before; a replica that a move left in place but that
  is still dormant keeps its founding entry (recorded before the move) and, woken by
  the leader's message, bootstraps from it and is caught up from there.
* the node's storage is intact: a node whose data directory is empty hosts nothing
  until ``founding.admit`` lets it (a node that started before refuses to start), so
  the registry is never replayed, and no bucket made dormant, on a wiped disk.
* the group has no storage rows here: every stored group is opened at start, so a
  group that is neither open nor quarantined has none.

This module only keeps the record and states the rule: it opens no group and does no
I/O (``store_core.StoreCore`` does, through ``HostCore.materialize``). It must never record a
bucket whose group this node has opened, or one that moved.
"""

from __future__ import annotations

from collections.abc import Iterator

from boutique.registry_state import BucketInfo

__all__ = ["DormantBuckets", "may_sleep"]


def may_sleep(me: int, info: BucketInfo) -> bool:
    """Whether node ``me``, holding no rows of ``info``'s group, may record the bucket
    as dormant (found it on first touch) rather than open it empty."""
    return me in info.replicas and not info.moved


class DormantBuckets:
    """The buckets this node founds on first touch: group id -> the entry (with the
    founding replicas) as it was when recorded."""

    __slots__ = ("_by_name", "_infos")

    def __init__(self) -> None:
        self._infos: dict[str, BucketInfo] = {}
        self._by_name: dict[str, str] = {}
        """Bucket name -> its dormant group: a drop finds it without a scan."""

    def add(self, info: BucketInfo) -> None:
        # The first entry is kept: it holds the founding replicas, even if a move has
        # changed the registry's since.
        if info.group not in self._infos:
            self.discard(self._by_name.get(info.name, ""))  # an older incarnation
            self._infos[info.group] = info
            self._by_name[info.name] = info.group

    def wake(self, group_id: str) -> BucketInfo | None:
        """Take the bucket out of the record to materialize it (None: not dormant)."""
        info = self._infos.pop(group_id, None)
        if info is not None:
            del self._by_name[info.name]
        return info

    def discard(self, group_id: str) -> None:
        self.wake(group_id)

    def of(self, name: str) -> str | None:
        """The dormant group of bucket ``name``, if any."""
        return self._by_name.get(name)

    def __contains__(self, group_id: object) -> bool:
        return group_id in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)
