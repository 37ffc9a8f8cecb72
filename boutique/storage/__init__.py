"""Durable and in-memory homes for Raft logs, hard states and snapshots."""

from .memory import MemoryStorage

__all__ = ["MemoryStorage"]
