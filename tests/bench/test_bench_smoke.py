"""A tiny run of every benchmark mode: the report has its figures and setup, and every
process the benchmark started (nodes, load generators) has been ended.

No speed is asserted: these runs are far too short to mean anything, and the machine
may be busy with other tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boutique.bench.fastpath import main as fastpath_main

pytestmark = pytest.mark.distributed

LEDGER = re.compile(r"^processes started: (\d+) \(([\d ]*)\); (.*) \(total", re.MULTILINE)
SETUP = ("machine:", "python:", "commit:", "load avg:", "cluster:", "raft:", "data:")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _bench(tmp_path: Path, *args: str, timeout: float = 240.0) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "boutique.bench", *args, "--dir", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    _assert_all_ended(output, tmp_path)
    return output


def _assert_all_ended(output: str, tmp_path: Path) -> list[int]:
    match = LEDGER.search(output)
    assert match, output
    pids = [int(p) for p in match.group(2).split()]
    assert len(pids) == int(match.group(1))
    assert match.group(3) == "all ended", output
    assert not [pid for pid in pids if _alive(pid)], output
    # The scratch data directory went with the cluster.
    assert not list(tmp_path.glob(".boutique-bench-*")), output
    return pids


def _line(output: str, label: str) -> str:
    for line in output.splitlines():
        if line.startswith(label):
            return line
    raise AssertionError(f"no {label!r} line in:\n{output}")


def test_load_reports_every_figure(tmp_path: Path) -> None:
    output = _bench(
        tmp_path,
        "load",
        "--connections", "4",
        "--pipeline", "2",
        "--mix", "put=1,get=1",
        "--keys", "40",
        "--buckets", "4",
        "--duration", "0.5",
        "--warmup", "0.2",
        "--client-procs", "2",
    )  # fmt: skip
    for label in SETUP:
        _line(output, label)
    assert "4 connections, pipeline depth 2, mix put=1,get=1" in _line(output, "load:")
    assert "connections per node: n1 2, n2 1, n3 1" in _line(output, "spread:")
    _line(output, "running:")
    assert re.search(r"throughput:\s+[\d,]+ ops/s", output)
    assert re.search(r"latency:\s+p50 [\d.]+ ms, p99 [\d.]+ ms, p99.9 [\d.]+ ms", output)
    _line(output, "errors:")
    assert re.search(r"node CPU:\s+n1 \d+%, n2 \d+%, n3 \d+%", output)
    assert re.search(r"node RSS:\s+n1 [\d.]+ MB, n2 [\d.]+ MB, n3 [\d.]+ MB", output)
    assert re.search(r"client CPU:\s+client0 \d+%, client1 \d+%", output)
    _line(output, "busy:")
    # Three nodes and two load generator processes.
    assert LEDGER.search(output).group(1) == "5"  # type: ignore[union-attr]


def test_load_to_leaders(tmp_path: Path) -> None:
    output = _bench(
        tmp_path, "load", "--connections", "3", "--keys", "40", "--duration", "0.3",
        "--warmup", "0.1", "--to-leaders",
    )  # fmt: skip
    assert "each connection only to buckets its node leads" in _line(output, "load:")
    assert re.search(r"throughput:\s+[\d,]+ ops/s", output)
    assert _line(output, "errors:").split(":", 1)[1].strip() == "none"


def test_failover_reports_recovery_times(tmp_path: Path) -> None:
    output = _bench(tmp_path, "failover", "--trials", "2", "--tick-interval", "0.02")
    assert re.search(
        r"trial 1: killed n\d \(leader, term \d+\); writes resumed after \d+ ms", output
    )
    assert "trial 2: killed" in output
    assert re.search(
        r"failover:\s+2 trials, 0 gave up .* p50 \d+ ms, p99 \d+ ms, max \d+ ms", output
    )
    # Three nodes plus the two restarts.
    assert LEDGER.search(output).group(1) == "5"  # type: ignore[union-attr]


def test_idle_reports_cpu_and_memory_per_bucket(tmp_path: Path) -> None:
    output = _bench(tmp_path, "idle", "--buckets", "30", "--seconds", "0.5", "--settle", "5")
    assert re.search(r"create:\s+30 buckets in [\d.]+ s .*errors: none", output)
    assert re.search(r"idle CPU:\s+n1 [\d.]+%", output)
    assert re.search(r"RSS:\s+n1 [\d.]+ MB -> [\d.]+ MB", output)
    assert re.search(r"per bucket:\s+n1 -?[\d.]+ kB", output)


def test_all_prints_the_readme_table(tmp_path: Path) -> None:
    output = _bench(
        tmp_path,
        "all",
        "--duration", "0.3",
        "--warmup", "0.1",
        "--keys", "40",
        "--trials", "1",
        "--tick-interval", "0.02",
        "--idle-buckets", "20",
        "--idle-seconds", "0.3",
        "--idle-nodes", "1",
    )  # fmt: skip
    table = [line for line in output.splitlines() if line.startswith("|")]
    assert table[0].startswith("| scenario | command | ops/s | p50 ms | p99 ms | p99.9 ms |")
    rows = "\n".join(table[2:])
    for scenario in ("writes64", "reads64", "single", "pipelined", "failover", "idle"):
        assert f"| {scenario} (" in rows
    assert "`python -m boutique.bench load --scenario writes64" in rows
    _line(output, "Setup: ")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_ends_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "boutique.bench", "load", "--connections", "2",
         "--duration", "60", "--warmup", "0", "--dir", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert bench.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = bench.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if line.startswith("running:"):
                break
        time.sleep(1.0)  # inside the measured window, load generators running
        os.kill(bench.pid, sig)
        rest, _ = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    output = "".join(lines) + rest
    assert bench.returncode == 130, output
    assert "interrupted" in output
    _assert_all_ended(output, tmp_path)


@pytest.mark.parametrize("loop", ["trio", "selectors"])
def test_echo_runs_the_same_load_against_bare_servers(tmp_path: Path, loop: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "boutique.bench", "echo", "--scenario", "reads64",
         "--servers", "3", "--loop", loop, "--connections", "6", "--mix", "put=1,get=1",
         "--duration", "0.5", "--warmup", "0.2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    pids = _assert_all_ended(output, tmp_path)
    assert len(pids) == 5  # three bare servers and two load generators
    assert f"against 3 servers with the {loop} loop" in output
    ok = int(_line(output, "throughput:").split("(")[1].split()[0].replace(",", ""))
    assert ok > 0
    # The load checks every GET's value: a bare server answers what was put through it.
    assert _line(output, "errors:") == "errors:      none"


def test_fastpath_times_router_start_and_every_request_is_answered(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fastpath_main(["--calls", "200", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "Router.start, leader on this node",
        "Router.start, leader on a peer",
        "LineParser.feed of one GET line and its event",
        "render of a 100-byte value's reply",
    ]
