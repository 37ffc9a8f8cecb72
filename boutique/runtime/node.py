"""The bucket-store node under trio: the adapter of ``store_core.StoreCore``.

The node's logic (the groups it hosts, dormant buckets, the registry as applied here,
what a create, drop or move changes) is ``StoreCore``'s, which never imports trio; the
trio adapter of the host (``host.RaftHost``) runs it (see ``store_node.StoreNode``).
This class adds what a process needs around them:

* the data directory: locked (one node per directory), then its SQLite file opened as
  the core's storage;
* peer TLS, from the files the config names;
* the background tasks (``start_background``): the mover, and founding (an empty data
  directory hosts nothing until ``founding.admit`` says it may; then the registry's
  record of started nodes is kept up to date);
* ``removed``, the event the process waits on: set once the core learns that the
  cluster removed this node (``on_removed``), after which the process drains and exits
  (``boutique_server.process``).

What it must never do: decide which groups are hosted or what an applied registry
entry means (that is ``StoreCore``'s).
"""

from __future__ import annotations

import fcntl
from typing import IO, Self

import trio

from boutique.config import ClusterConfig, NodeConfig
from boutique.storage.errors import StorageOpenError
from boutique.storage.sqlite import SqliteStorage

from . import founding
from .mover import Mover
from .peertls import PeerTLS
from .router import Router
from .store_node import META_GROUP as META_GROUP  # re-exported: many import it from here
from .store_node import StoreNode


class Node(StoreNode):
    """A running node of a bucket-store cluster."""

    def __init__(self, config: ClusterConfig, me: NodeConfig, *, seed: int | None = None) -> None:
        self._data_lock: IO[str] | None = None
        self.removed = trio.Event()
        """Set once this node learns that the cluster removed it (see ``on_removed``)."""
        super().__init__(
            config,
            me,
            seed=seed,
            open_storage=self._open_storage,
            secret=config.secret,
            cluster_name=config.cluster_name,
            listen=(me.host, me.peer_port),
            peer_tls=_peer_tls(config, me),
        )

    def _open_storage(self) -> SqliteStorage:
        """Lock the data directory (one node per directory), then open the data file."""
        data_dir = self.me.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            lock = open(data_dir / "LOCK", "a+")  # noqa: SIM115 - held while the node runs
        except OSError as exc:
            raise StorageOpenError(data_dir, f"cannot use the data directory: {exc}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StorageOpenError(
                data_dir, "another boutique node is already using this data directory"
            ) from None
        self._data_lock = lock
        try:
            return SqliteStorage(data_dir / "raft.db")
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        lock = getattr(self, "_data_lock", None)
        if lock is not None:
            lock.close()
            self._data_lock = None

    async def run(self, *, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            self._release_lock()

    def start_background(self, nursery: trio.Nursery) -> None:
        self._update_peers()
        self.mover = Mover(self, Router(self))
        nursery.start_soon(self.mover.run)
        nursery.start_soon(self._found_then_record, Router(self))

    async def _found_then_record(self, router: Router) -> None:
        """A node whose data directory is empty hosts nothing until ``founding.admit``
        says it may (or raises, which stops the node); then the registry's record of
        started nodes is kept up to date, so a later wipe is recognised."""
        if META_GROUP not in self.groups:
            await founding.admit(self, router)
            self.open_groups()
            self._update_peers()
        await founding.record_started(self, router)

    def on_removed(self) -> None:
        super().on_removed()  # the core logs the one line about it
        self.removed.set()


def _peer_tls(config: ClusterConfig, me: NodeConfig) -> PeerTLS | None:
    files = config.peer_tls_files(me.name)
    return None if files is None else PeerTLS.load(*files)
