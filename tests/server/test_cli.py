"""``boutique-server`` flags: every mistake is one clear line and exit code 2, every
startup error names the file, node, role and address, and nothing is dropped silently."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from boutique.testing.local_cluster import LocalCluster, free_ports
from boutique_server.__main__ import build_parser, main
from boutique_server.supervisor import child_command, describe_exit


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main`` expecting a usage error; the message on stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse reports bad values itself
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "0"], "--port: expected a port number 1-65535, got 0"),
        (["--port", "70000"], "--port: expected a port number 1-65535, got 70000"),
        (["--port", "http"], "--port: expected a port number 1-65535, got 'http'"),
        (["--peer-port", "0", "--config", "x.toml"], "--peer-port: expected a port number"),
        (["--log-level", "foo"], "--log-level: invalid choice: 'FOO'"),
        (["--node", "a-g"], "--node needs --config"),
        (["--join", "--name", "e", "--id", "5"], "--join needs --config"),
        (["--all"], "--all needs --config"),
        (["--id", "0", "--config", "x.toml", "--join"], "--id: expected a positive integer"),
        (["--config", "c.toml", "--node", "a", "--all"], "--node and --all cannot be used"),
        (["--config", "c.toml", "--node", "a", "--name", "e"], "--name is only for --join"),
        (["--config", "c.toml", "--all", "--port", "4000"], "--port names one node's port"),
        (["--host", ""], "--host: must not be empty"),
    ],
)
def test_bad_flags_are_refused_with_the_flag_named(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in _usage_error(argv, capsys)


def test_a_bad_boutique_log_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOUTIQUE_LOG", "loud")
    assert "BOUTIQUE_LOG: expected one of DEBUG, INFO, WARNING, ERROR" in _usage_error([], capsys)


def test_join_names_every_missing_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = LocalCluster(tmp_path, nodes=1).config_path
    err = _usage_error(["--config", str(config), "--join", "--name", "e"], capsys)
    assert "--join needs --id, --port, --peer-port" in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "boutique-server 0.1.0"
    text = build_parser().format_help()
    assert "`" not in text
    assert "``" not in text
    for documented in ("BOUTIQUE_LOG", "BOUTIQUE_SECRET", "SIGTERM", "--all", "exit codes"):
        assert documented in text


def test_all_passes_data_dir_and_host_to_every_node(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=2)
    from boutique.config import load_config

    config = load_config(cluster.config_path)
    commands = [
        child_command(
            cluster.config_path, node, log_level="INFO", data_dir=tmp_path / "d", host="0.0.0.0"
        )
        for node in config.nodes
    ]
    for node, command in zip(config.nodes, commands, strict=True):
        assert command[command.index("--node") + 1] == node.name
        assert command[command.index("--data-dir") + 1] == str(tmp_path / "d" / node.name)
        assert command[command.index("--host") + 1] == "0.0.0.0"


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-15) == "was killed by SIGTERM"
    assert describe_exit(3) == "exited with code 3"


def _start_and_fail(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run a node expected to fail at startup; its exit code and stderr."""
    process = subprocess.run(
        [sys.executable, "-m", "boutique_server", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return process.returncode, process.stderr


@pytest.mark.parametrize("role", ["clients", "peers", "metrics"])
def test_a_port_in_use_names_the_file_node_role_and_address(tmp_path: Path, role: str) -> None:
    (metrics_port,) = free_ports(1)
    cluster = LocalCluster(tmp_path, nodes=1, extra=f"\n[metrics]\nport = {metrics_port}")
    node = cluster.nodes["n1"]
    port = {"clients": node.client_port, "peers": node.peer_port, "metrics": metrics_port}[role]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        code, err = _start_and_fail(
            ["--config", str(cluster.config_path), "--node", "n1"], tmp_path
        )
    assert code == 4, err
    key = {"clients": "client_port", "peers": "peer_port", "metrics": "metrics.port"}[role]
    assert (
        f"{cluster.config_path}: node n1: cannot listen for {role} on 127.0.0.1:{port} ({key}): "
        "Address already in use"
    ) in err, err
    assert "Traceback" not in err


def test_a_bad_host_names_the_address(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    code, err = _start_and_fail(
        ["--port", str(port), "--host", "no-such-host.invalid", "--data-dir", "d"], tmp_path
    )
    assert code == 4, err
    assert (
        f"<single node>: node local: cannot listen for clients on no-such-host.invalid:{port}"
        in err
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "module",
    ["boutique_server", "boutique.testing", "boutique.bench", "boutique.examples.run_counter"],
)
def test_every_command_has_version_and_plain_help(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main_of = importlib.import_module(
        f"{module}.__main__" if module != "boutique.examples.run_counter" else module
    ).main
    for flag in ("--version", "--help"):
        with pytest.raises(SystemExit) as exit_info:
            main_of([flag])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(" 0.1.0")
    assert "``" not in out
