"""Cluster configuration text for tests that parse a config in process.

``node_tables`` writes the ``[[node]]`` tables of a cluster whose nodes are named
``n<id>`` and listen on 127.0.0.1 at ports derived from the id, so each test states
only what it is about (replication, splits, secrets) and not the same node list again.
It only writes text: it never opens a port or a file.
"""

from __future__ import annotations

from collections.abc import Iterable


def node_tables(ids: Iterable[int], *, client_base: int = 4040, peer_base: int = 5040) -> str:
    """``[[node]]`` tables for ``ids``: node ``i`` is ``n<i>`` with client port
    ``client_base + i`` and peer port ``peer_base + i``."""
    return "".join(
        f'[[node]]\nname = "n{i}"\nid = {i}\nhost = "127.0.0.1"\n'
        f"client_port = {client_base + i}\npeer_port = {peer_base + i}\n"
        for i in ids
    )
