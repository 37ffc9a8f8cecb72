"""Issue 19's bars as CPU budgets per request, from one sitting's raw results.

    python3 tools/bar_budget.py COMPARE_RAW... -- FLOOR_RAW...

COMPARE_RAW are the ``results.jsonl`` files ``../shared/bench/compare.sh`` prints the
path of ("raw: ..."), FLOOR_RAW those of ``tools/floor.sh``, from the same sitting. On a
machine whose cores run both the load generator and the three nodes, and with every case
CPU-bound, a closed-loop rate R is possible only if R x (generator CPU + nodes' CPU per
request) <= the cores. The bare servers' figures (a server that does nothing, measured
by the same generator) then say what is left, at each bar's rate, for the store's own
work per request. Medians over every round given. It reads files and prints; it never
starts anything.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any

CORES = os.cpu_count() or 2
LOOPS = ("trio", "selectors")
Run = dict[str, Any]


def load(paths: list[str], kind: str) -> dict[tuple[str, str], list[Run]]:
    """Each file's rounds, keyed by (case, system) or (case, loop)."""
    rows: dict[tuple[str, str], list[Run]] = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows.setdefault((row["case"], row[kind]), []).append(row["r"])
    return rows


def median(runs: list[Run], figure: str) -> float:
    """The median of a figure: ops_per_s, p50_ms, or CPU µs per request ("server", "gen")."""

    def value(run: Run) -> float:
        if figure == "server":
            return 1e4 * float(sum(run["server_cpu_pct"].values())) / float(run["ops_per_s"])
        if figure == "gen":
            return 1e4 * float(run["gen_cpu_pct"]) / float(run["ops_per_s"])
        return float(run[figure])

    return statistics.median(value(run) for run in runs)


def throughput_bar(store: dict[tuple[str, str], list[Run]], floor: dict[tuple[str, str], list[Run]],
                   case: str, floor_case: str, target: float, label: str) -> None:  # fmt: skip
    budget = CORES * 1e6 / target
    print(f"== {label}: {target:,.0f}/s; {CORES} cores allow {budget:.1f} us of CPU per request")
    ours = store[(case, "boutique")]
    print(
        f"   boutique: {median(ours, 'ops_per_s'):,.0f}/s; nodes {median(ours, 'server'):.1f}"
        f" us, generator {median(ours, 'gen'):.1f} us per request"
    )
    for loop in LOOPS:
        bare = floor[(floor_case, loop)]
        server, generator = median(bare, "server"), median(bare, "gen")
        print(
            f"   bare {loop:9}: {median(bare, 'ops_per_s'):,.0f}/s doing nothing; server"
            f" {server:.1f} us, generator {generator:.1f} us -> left for the store's own work:"
            f" {budget - server - generator:.1f} us"
            + (f" (it spends {median(ours, 'server') - server:.1f} now)" if loop == "trio" else "")
        )


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__)
        return 2
    cut = argv.index("--")
    store, floor = load(argv[:cut], "sys"), load(argv[cut + 1 :], "loop")
    for case, floor_case, factor in (("put64", "put64x1", 2.0), ("get64", "get64x1", 3.0)):
        etcd = median(store[(case, "etcd")], "ops_per_s")
        label = f"{case} >= {factor:.0f}x etcd ({etcd:,.0f}/s)"
        throughput_bar(store, floor, case, floor_case, factor * etcd, label)
    throughput_bar(store, floor, "put8x32", "put8x32", 30_000, "pipelined >= 30,000/s")
    etcd_p50 = median(store[("put1", "etcd")], "p50_ms")
    ours = median(store[("put1", "boutique")], "p50_ms")
    print(f"== put1 p50 <= 0.75x etcd ({etcd_p50:.3f} ms): {0.75 * etcd_p50:.3f} ms")
    print(f"   boutique: {ours:.3f} ms ({ours / etcd_p50:.2f}x etcd)")
    for loop in LOOPS:
        print(
            f"   bare {loop:9}: one round trip p50 {median(floor[('put1x1', loop)], 'p50_ms'):.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
