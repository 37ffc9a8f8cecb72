"""tools/bar_budget.py turns one sitting's raw results into the budget per request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bar_budget.py"


def _run(ops: float, server_pct: float, gen_pct: float, p50: float) -> dict[str, object]:
    return {
        "ops_per_s": ops,
        "server_cpu_pct": {"1": server_pct},
        "gen_cpu_pct": gen_pct,
        "p50_ms": p50,
    }


def test_the_budget_is_the_cores_less_the_bare_server_and_the_generator(tmp_path: Path) -> None:
    compare, floor = tmp_path / "compare.jsonl", tmp_path / "floor.jsonl"
    with compare.open("w") as f:
        for case in ("put64", "get64", "put1", "put8x32"):
            for system in ("etcd", "boutique"):
                # 1,000/s at 30% of a core on the nodes: 300 us per request.
                row = {"case": case, "sys": system, "r": _run(1000, 30, 10, 2.0)}
                f.write(json.dumps(row) + "\n")
    with floor.open("w") as f:
        for case in ("put64x1", "get64x1", "put1x1", "put8x32"):
            for loop in ("trio", "selectors"):
                # 10,000/s at 40% of a core: 40 us per request; the generator 30 us.
                row = {"case": case, "loop": loop, "r": _run(10_000, 40, 30, 0.1)}
                f.write(json.dumps(row) + "\n")
    result = subprocess.run(
        [sys.executable, str(TOOL), str(compare), "--", str(floor)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    cores = os.cpu_count() or 2
    lines = result.stdout.splitlines()
    # PUT64 at 2x etcd: 2,000/s, so cores x 500 us per request, less 40 + 30.
    assert (
        lines[0]
        == f"== put64 >= 2x etcd (1,000/s): 2,000/s; {cores} cores allow {cores * 500:.1f} us of CPU per request"
    )
    assert lines[2].endswith(
        f"left for the store's own work: {cores * 500 - 70:.1f} us (it spends 260.0 now)"
    )
    assert f"cores allow {cores * 1e6 / 3000:.1f} us" in lines[4]
    assert "== put1 p50 <= 0.75x etcd (2.000 ms): 1.500 ms" in lines
