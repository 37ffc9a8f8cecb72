"""What the bucket store's services need of a node: a ``RaftHost`` plus the registry's
view as the node has applied it.

The router, the mover, founding and the admin commands run on a ``node.Node`` and the
node starts them (``Node.start_background``). If they imported ``node`` for its type,
the two would import each other; so they name this abstract class instead, which
``Node`` implements, and ``node`` imports them. (``router.py`` imports it under the
name ``Node``.)

This module only declares: it holds no state and does no I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from boutique.config import ClusterConfig, NodeConfig
from boutique.raft import ConfState
from boutique.registry import META_GROUP
from boutique.registry_state import BucketInfo, RegistryState

from .host import RaftHost

__all__ = ["META_GROUP", "StoreNode"]


class StoreNode(RaftHost, ABC):
    """A node of a bucket-store cluster, as its services see it."""

    config: ClusterConfig
    me: NodeConfig
    waiting_for_peers: str | None
    """Why this node does not serve yet (``founding.admit``), or None."""

    @abstractmethod
    def registry_state(self) -> RegistryState | None:
        """The registry as applied here (None: the meta group is not hosted)."""

    @abstractmethod
    def is_meta_leader(self) -> bool: ...

    @abstractmethod
    def meta_conf(self) -> ConfState | None: ...

    @abstractmethod
    def meta_members(self) -> tuple[int, ...]:
        """Where to send registry requests."""

    @abstractmethod
    def bucket_hosts(self, info: BucketInfo) -> tuple[int, ...]:
        """Every node that hosts the bucket now (its replicas, then any joining)."""

    @abstractmethod
    def catalog(self) -> dict[str, BucketInfo]:
        """The bucket catalog as applied here (may lag the cluster)."""

    @abstractmethod
    def fenced_but_listed(self) -> list[BucketInfo]:
        """Buckets led here whose DROP was cut short between its two steps."""
