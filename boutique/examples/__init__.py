"""Example replicated state machines, each mirroring an Elixir Raft library's example.

They show how small a `boutique.machine.StateMachine` can be, and serve as workloads
for tests and the Raft simulator. They never do I/O or read the clock.
"""

from boutique.examples.counter import Counter
from boutique.examples.kvstore import KVStore
from boutique.examples.queue import QueueWithLength

__all__ = ["Counter", "KVStore", "QueueWithLength"]
