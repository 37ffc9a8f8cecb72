"""The children ``boutique-server --all`` starts run the installed package, whatever
directory the supervisor was started from."""

from __future__ import annotations

import subprocess
from pathlib import Path

from boutique.config import NodeConfig
from boutique_server.supervisor import child_command


def test_a_child_never_imports_from_the_working_directory(tmp_path: Path) -> None:
    # A directory holding a ``boutique_server`` package of its own (a checkout of another
    # version, say): a child started from it must still run the installed one.
    shadow = tmp_path / "boutique_server"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    (shadow / "__main__.py").write_text("print('the working directory copy')\n")
    node = NodeConfig(
        name="n1", id=1, host="127.0.0.1", client_port=1, peer_port=2, data_dir=tmp_path / "n1"
    )
    command = child_command(tmp_path / "cluster.toml", node, log_level="info")
    module_at = command.index("boutique_server")
    run = subprocess.run(
        [*command[: module_at + 1], "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "working directory" not in run.stdout
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("boutique-server ")
