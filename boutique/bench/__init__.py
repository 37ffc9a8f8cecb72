"""Benchmarks of a running boutique cluster: ``python -m boutique.bench --help``.

Four modes, each printing its exact setup first:

* ``load``: drive a cluster over the line protocol (connections, pipelining, op mix)
  and report throughput, latency percentiles, errors, and CPU and memory per process;
* ``failover``: SIGKILL a bucket's leader under writes, time until writes succeed again;
* ``idle``: create many buckets, let them go quiet, measure idle CPU and memory;
* ``all``: the standard scenarios of issue 8 as one markdown table.

The benchmark starts its own cluster (``boutique.testing.LocalCluster``) under the
current directory, or targets nodes that are already running. It drives them only
through the client port, and every process it starts is ended by PID when it finishes,
fails or is interrupted. It is never imported by the store itself.
"""

from __future__ import annotations

__all__: list[str] = []
