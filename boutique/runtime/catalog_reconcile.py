"""Which bucket groups a node should host, given the registry: the catalog's
reconciliation as pure functions.

The node (``runtime.node``) calls these with the registry as it applied it and the
groups it hosts, and opens or closes what they name:

* ``reconcile`` — after a restart, a registry snapshot or a placement change: every
  bucket this node replicates (or receives in a move) is hosted (open, on disk, or
  dormant: ``runtime.dormant``); with ``close`` (only against a registry at least as
  new as everything hosted here), every other bucket group goes, and every other
  dormant record is forgotten;
* ``not_ours`` — after a drop or a move of one bucket: its groups the registry no longer
  places here;
* ``drops_cut_short`` — fenced bucket groups this node leads that the registry still
  lists: DROPs whose registry step never happened (the mover finishes them).

This module never does I/O, never opens or closes anything itself and never imports
trio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from boutique.placement import bucket_hosts
from boutique.registry_state import BucketInfo, RegistryState

__all__ = ["Reconciliation", "bucket_of", "drops_cut_short", "not_ours", "reconcile"]


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Buckets to host (open, or record as dormant), groups to close, and dormant
    records to forget."""

    open: tuple[BucketInfo, ...]
    close: tuple[str, ...]
    forget: tuple[str, ...] = ()


def reconcile(
    state: RegistryState,
    me: int,
    hosted: Sequence[str],
    quarantined: Sequence[str],
    *,
    close: bool,
    dormant: Sequence[str] = (),
) -> Reconciliation:
    """What node ``me``, hosting the bucket groups ``hosted`` (open or on disk), with
    ``quarantined`` out of service and ``dormant`` recorded but never founded here,
    hosts and — with ``close`` — closes and forgets to match ``state``."""
    wanted = {
        info.group: info for info in state.buckets.values() if me in bucket_hosts(info, state)
    }
    # A quarantined group stays out until the node restarts: reopening it would only
    # hit the same broken state again.
    here = {*hosted, *quarantined, *dormant}  # a set: the lists may be long
    opening = tuple(info for group, info in wanted.items() if group not in here)
    closing: tuple[str, ...] = ()
    forgetting: tuple[str, ...] = ()
    if close:
        closing = tuple(group for group in (*hosted, *quarantined) if group not in wanted)
        forgetting = tuple(group for group in dormant if group not in wanted)
    return Reconciliation(opening, closing, forgetting)


def not_ours(state: RegistryState, me: int, name: str, hosted: Iterable[str]) -> list[str]:
    """The groups of bucket ``name`` among ``hosted`` that ``state`` does not place on
    node ``me`` (any incarnation but the registered one, or all if it moved away).
    ``hosted`` may be every group or only the bucket's (a node's index by name)."""
    info = state.buckets.get(name)
    prefix = f"b/{name}/"
    keep = info.group if info is not None and me in bucket_hosts(info, state) else None
    return [group for group in hosted if group.startswith(prefix) and group != keep]


def bucket_of(group_id: str) -> str:
    """The bucket name a bucket group's id carries (``b/<name>/<seq>``)."""
    return group_id.split("/")[1]


def drops_cut_short(
    fenced: Iterable[str], catalog: Mapping[str, BucketInfo], leads: Callable[[str], bool]
) -> list[BucketInfo]:
    """Of the ``fenced`` bucket groups, those the ``catalog`` still lists (as that very
    incarnation) and that this node ``leads``."""
    found = []
    for group_id in fenced:
        info = catalog.get(bucket_of(group_id))
        if info is not None and info.group == group_id and leads(group_id):
            found.append(info)
    return found
