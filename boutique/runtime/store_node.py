"""What the bucket store's services see of a node: ``StoreCore`` under ``RaftHost``.

The router, the mover, founding and the admin commands run on a ``node.Node`` and the
node starts them (``Node.start_background``). If they imported ``node`` for its type,
the two would import each other; so they name this class instead, and ``node``
imports them. (``router.py`` imports it under the name ``Node``.) It is the store's
logic (``store_core.StoreCore``: the groups hosted, the registry as applied here)
driven by the trio adapter of the host (``host.RaftHost``: the loop and ticker tasks,
awaiting ``propose``, ``read``, ``forward``...); ``node.Node`` adds the process's part
(the data directory, peer TLS, the background tasks).

The class order is ``StoreNode``, ``StoreCore``, ``RaftHost``, ``HostCore``: the store's
hooks override the core's, and ``StoreCore.__init__`` hands ``RaftHost`` its
arguments (``secret``, ``cluster_name``, ``listen``, ``open_storage``, ``peer_tls``).

This module only combines the two: it holds no state of its own and does no I/O.
"""

from __future__ import annotations

from boutique.registry import META_GROUP

from .host import RaftHost
from .store_core import StoreCore

__all__ = ["META_GROUP", "StoreNode"]


class StoreNode(StoreCore, RaftHost):
    """A node of a bucket-store cluster under trio, as its services see it."""
