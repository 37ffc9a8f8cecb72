"""Durable and in-memory homes for Raft logs, hard states and snapshots."""

from .memory import MemoryNodeStorage, MemoryStorage

__all__ = ["MemoryNodeStorage", "MemoryStorage"]
