"""``--all`` does not restart a node that exited because the cluster removed it."""

from __future__ import annotations

import sys

from boutique_server.supervisor import EXIT_REMOVED, Child, Supervisor


def exited_child(code: int) -> Child:
    child = Child("e", [sys.executable, "-c", f"raise SystemExit({code})"])
    child.start(0.0)
    assert child.process is not None
    child.process.wait(timeout=30)
    return child


def test_a_removed_node_is_not_restarted_but_a_crashed_one_is() -> None:
    removed, crashed = exited_child(EXIT_REMOVED), exited_child(1)
    supervisor = Supervisor([removed, crashed], clock=lambda: 0.0)
    supervisor.check(1.0)
    assert removed.restart_at is None
    assert crashed.restart_at is not None
    supervisor.check(1000.0)  # long past any backoff
    assert removed.process is None and removed.restarts == 0
    assert crashed.restarts == 1
    assert supervisor.exit_code == 0  # the others keep running
    assert crashed.process is not None
    crashed.process.kill()
    crashed.process.wait(timeout=30)
