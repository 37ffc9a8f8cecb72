"""The sans-I/O Raft core: no trio, no sockets, no files, no clock, no global randomness.

Start with :class:`RawNode` and the ``Ready`` contract in ``rawnode``.
"""

from .config import RaftConfig
from .core import ReadState, Role
from .errors import InvalidConfChangeError, NotLeaderError, ProposalDroppedError, RaftError
from .messages import (
    NONE,
    ChangeType,
    Chunks,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
    SnapshotData,
    SnapshotMeta,
    pieces_of,
)
from .rawnode import RawNode, Ready, SoftState, Status, bootstrap
from .storage import CompactedError, LogStorage, StorageError, UnavailableError

__all__ = [
    "NONE",
    "ChangeType",
    "Chunks",
    "CompactedError",
    "ConfChange",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "InvalidConfChangeError",
    "LogStorage",
    "Message",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftConfig",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotData",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "StorageError",
    "UnavailableError",
    "bootstrap",
    "pieces_of",
]
