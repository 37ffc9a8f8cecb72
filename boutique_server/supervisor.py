"""``boutique-server --all``: every node of a config as a child process, kept running.

The supervisor starts one ``boutique-server --node NAME`` child per node of the config.
When a child dies it says which node, its PID and how (exit code or signal), and starts
it again after a backoff that doubles up to ``MAX_BACKOFF`` (reset once the node has
run for ``STABLE_AFTER`` seconds); the other nodes keep serving, as a cluster with a
minority down does. A child that exits with a usage or configuration error (code 2) is
not restarted: the supervisor stops them all and exits 2, since a restart cannot help.
A child that exits because the cluster removed it (code 5) is not restarted either; the
others keep running.

SIGTERM or SIGINT to the supervisor stops every child gracefully: each gets one SIGTERM
and drains (hands leadership over, answers what it took on), and is killed only if it
has not exited within ``STOP_TIMEOUT``. Children ignore SIGINT, so the terminal's Ctrl-C
(sent to the whole process group) reaches them once, through the supervisor.

This module never kills a process it did not start.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from boutique.config import ClusterConfig, NodeConfig

log = logging.getLogger("boutique.supervisor")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0
"""Seconds a child must run before its next death restarts it at ``FIRST_BACKOFF``."""
STOP_TIMEOUT = 20.0
"""Seconds a child may take to drain after SIGTERM before it is killed."""
POLL = 0.1
EXIT_USAGE = 2
EXIT_REMOVED = 5
"""``boutique_server.process.EXIT_REMOVED``: the node was removed from the cluster."""


def child_command(
    config_path: Path,
    node: NodeConfig,
    *,
    log_level: str,
    data_dir: Path | None = None,
    host: str | None = None,
) -> list[str]:
    """The command line that runs one node of the config. ``data_dir`` is the base
    directory of ``--all`` (each node keeps its data in a subdirectory named after it);
    ``host`` the client listen address given to ``--all``."""
    cmd = [
        sys.executable,
        # -P: never import from the working directory. ``-m`` puts it first on the
        # path, so a checkout (or any directory holding a ``boutique`` folder) would
        # run its code in the children instead of the installed package's.
        "-P",
        "-m",
        "boutique_server",
        "--config",
        str(config_path),
        "--node",
        node.name,
        "--log-level",
        log_level,
    ]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir / node.name)]
    if host is not None:
        cmd += ["--host", host]
    return cmd


def describe_exit(returncode: int) -> str:
    """``exited with code 3`` or ``was killed by SIGKILL``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(slots=True)
class Child:
    """One supervised node."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None
    restarts: int = 0

    def start(self, now: float) -> None:
        self.process = subprocess.Popen(self.command, preexec_fn=_ignore_sigint)
        self.started_at = now
        self.restart_at = None
        log.info("node %s started (pid %d)", self.name, self.process.pid)


@dataclass(slots=True)
class Supervisor:
    """Runs the children until ``stop`` is requested (by a signal, or by a test)."""

    children: list[Child]
    clock: Callable[[], float] = time.monotonic
    stop_requested: str | None = None
    """The name of the signal that asked us to stop."""
    exit_code: int = 0
    stopped: list[str] = field(default_factory=list)

    def request_stop(self, signum: int, frame: FrameType | None = None) -> None:
        if self.stop_requested is None:
            self.stop_requested = signal.Signals(signum).name

    def run(self) -> int:
        now = self.clock()
        try:
            for child in self.children:
                child.start(now)
            while self.stop_requested is None:
                self.check(self.clock())
                if self.exit_code:
                    break
                time.sleep(POLL)
            if self.stop_requested is not None:
                log.info("%s received: stopping every node", self.stop_requested)
        finally:
            self.stop_all()
        return self.exit_code

    def check(self, now: float) -> None:
        """Notice dead children and restart those whose backoff has passed."""
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is not None:
                code = process.returncode
                child.process = None
                if code == EXIT_USAGE:
                    log.error(
                        "node %s (pid %d) %s: a configuration or usage error, not restarting",
                        child.name,
                        process.pid,
                        describe_exit(code),
                    )
                    self.exit_code = EXIT_USAGE
                    return
                if code == EXIT_REMOVED:
                    log.info(
                        "node %s (pid %d) was removed from the cluster: not restarting it",
                        child.name,
                        process.pid,
                    )
                    child.restart_at = None
                    continue
                if now - child.started_at >= STABLE_AFTER:
                    child.backoff = FIRST_BACKOFF
                child.restart_at = now + child.backoff
                log.warning(
                    "node %s (pid %d) %s; restarting it in %.1fs (the others keep serving)",
                    child.name,
                    process.pid,
                    describe_exit(code),
                    child.backoff,
                )
                child.backoff = min(child.backoff * 2, MAX_BACKOFF)
            elif process is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                child.start(now)

    def stop_all(self) -> None:
        """SIGTERM to every running child, then wait; kill what does not exit in time."""
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = self.clock() + STOP_TIMEOUT
        for child in running:
            assert child.process is not None
            try:
                code = child.process.wait(timeout=max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.error("node %s did not stop in %.0fs: killing it", child.name, STOP_TIMEOUT)
                child.process.kill()
                code = child.process.wait()
            if code != 0 and not self.exit_code:
                self.exit_code = 1
            log.info("node %s (pid %d) %s", child.name, child.process.pid, describe_exit(code))
            self.stopped.append(child.name)


def run_all(
    config: ClusterConfig,
    config_path: Path,
    *,
    log_level: str,
    data_dir: Path | None,
    host: str | None,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> int:
    """Supervise every node of ``config`` until SIGTERM or SIGINT; the exit code."""
    children = [
        Child(
            node.name,
            child_command(config_path, node, log_level=log_level, data_dir=data_dir, host=host),
        )
        for node in config.nodes
    ]
    supervisor = Supervisor(children)
    for signum in signals:
        signal.signal(signum, supervisor.request_stop)
    log.info(
        "supervising %d nodes of %s: %s",
        len(children),
        config_path,
        ", ".join(c.name for c in children),
    )
    return supervisor.run()
