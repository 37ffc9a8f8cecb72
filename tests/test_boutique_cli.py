"""``boutique-cli``: the reply printers, failover rules and flags as units; then the
real program against a real server, one-shot, scripted and typed at through a
pseudo-terminal (line editing, history).

The server is a ``LocalCluster`` process ended by PID; the CLI runs as a subprocess,
so what is tested is what a person runs.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from boutique import cli
from boutique.testing.local_cluster import LocalCluster
from boutique.wire import RawReply

CLI = [sys.executable, "-m", "boutique.cli"]
TIMEOUT = 15.0


def reply(command: bytes, *lines: bytes) -> cli.Reply:
    return cli.Reply(command, RawReply(tuple(lines[:-1]), lines[-1]))


# --- printers --------------------------------------------------------------------------


def test_json_of_values_pairs_items_and_errors() -> None:
    assert cli.reply_json(reply(b"GET", b"3", b"OK")) == {"ok": True, "value": "3"}
    assert cli.reply_json(reply(b"GET", b"", b"OK")) == {"ok": True, "value": None}
    assert cli.reply_json(reply(b"GET", b'""', b"OK")) == {"ok": True, "value": ""}
    assert cli.reply_json(reply(b"GET", b'"\\xff"', b"OK")) == {
        "ok": True,
        "value": {"base64": "/w=="},
    }
    assert cli.reply_json(reply(b"SCAN", b'a "x y"', b"b 2", b"OK")) == {
        "ok": True,
        "pairs": [["a", "x y"], ["b", "2"]],
    }
    assert cli.reply_json(reply(b"KEYS", b"a", b"b", b"OK")) == {"ok": True, "items": ["a", "b"]}
    assert cli.reply_json(reply(b"PING", b"PONG")) == {"ok": True, "reply": "PONG"}
    assert cli.reply_json(reply(b"GET", b"NOT FOUND")) == {
        "ok": False,
        "error": "NOT FOUND",
        "message": "NOT FOUND",
        "maybe_applied": False,
    }
    timeout = cli.reply_json(reply(b"PUT", b"ERR TIMEOUT outcome unknown"))
    assert timeout == {
        "ok": False,
        "error": "TIMEOUT",
        "message": "outcome unknown",
        "maybe_applied": True,
    }
    busy = cli.reply_json(reply(b"PUT", b"ERR BUSY too many"))
    assert busy["maybe_applied"] is False


# --- flags -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0", "PING"], "a port is 1 to 65535"),
        (["--port", "x", "PING"], "not a port number"),
        (["--node", "a-g", "PING"], "--node needs --config"),
        (["-x"], "name the command"),
        (["--timeout", "0", "PING"], "must be above 0"),
        (["--json", "--raw", "PING"], "not allowed with"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], message: str) -> None:
    result = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert message in result.stderr


def test_version() -> None:
    result = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0
    assert result.stdout.startswith("boutique-cli ")


def test_unknown_node_in_config(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=1) as cluster:
        result = subprocess.run(
            [*CLI, "-c", str(cluster.config_path), "--node", "zz", "PING"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 2
    assert "no node 'zz' (nodes: n1)" in result.stderr


# --- against a real server -------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cli") / "cluster", nodes=1) as cluster:
        cluster.start()
        yield cluster


def run_cli(
    server: LocalCluster, *argv: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    port = str(server.nodes["n1"].client_port)
    return subprocess.run(
        [*CLI, "-p", port, *argv], input=stdin, capture_output=True, timeout=TIMEOUT
    )


def test_one_shot_commands(server: LocalCluster) -> None:
    assert run_cli(server, "CREATE", "shopping").stdout == b"OK\n"
    assert run_cli(server, "PUT", "shopping", "note", "buy milk\nand bread").returncode == 0
    got = run_cli(server, "GET", "shopping", "note")
    assert got.stdout == b'"buy milk\\nand bread"\nOK\n'
    assert run_cli(server, "--raw", "GET", "shopping", "note").stdout == b"buy milk\nand bread\n"
    missing = run_cli(server, "GET", "nosuchbucket", "k")
    assert (missing.returncode, missing.stdout) == (1, b"NOT FOUND\n")
    unknown = run_cli(server, "FROB")
    assert (unknown.returncode, unknown.stdout) == (1, b"COMMAND NOT IMPLEMENTED\n")


def test_json_status_is_the_status_object(server: LocalCluster) -> None:
    got = run_cli(server, "--json", "status")
    assert got.returncode == 0, got.stderr
    reply = json.loads(got.stdout)
    assert reply["ok"] is True
    status = reply["status"]
    assert (status["node"], status["id"]) == ("n1", 1)
    assert any(g["id"] == "meta" and g["role"] == "leader" for g in status["groups"])
    # Without --json, STATUS stays the text people read.
    assert run_cli(server, "STATUS").stdout.startswith(b"node n1 id 1 cluster ")


def test_values_from_stdin_and_files_keep_every_byte(server: LocalCluster, tmp_path: Path) -> None:
    data = bytes(range(256)) * 3
    assert run_cli(server, "CREATE", "files").returncode == 0
    assert run_cli(server, "-x", "PUT", "files", "blob", stdin=data).returncode == 0
    path = tmp_path / "value"
    path.write_bytes(data[::-1])
    assert run_cli(server, "--file", str(path), "PUT", "files", "reversed").returncode == 0
    out = json.loads(run_cli(server, "--json", "SCAN", "files", "", "").stdout)
    values = {key: base64.b64decode(value["base64"]) for key, value in out["pairs"]}
    assert values == {"blob": data, "reversed": data[::-1]}


def test_commands_read_from_a_script(server: LocalCluster) -> None:
    script = b"CREATE scripted\nPUT scripted a 1\n\nGET scripted a\nGET nosuch a\nQUIT\nPING\n"
    result = run_cli(server, stdin=script)
    assert result.stdout == b"OK\nOK\n1\nOK\nNOT FOUND\nOK\n"
    assert result.returncode == 1  # one reply was an error; nothing after QUIT ran


def test_failover_to_another_node_of_the_config(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", nodes=3) as cluster:
        cluster.start()
        base = [*CLI, "-c", str(cluster.config_path), "--json"]
        assert (
            subprocess.run(
                [*base, "CREATE", "hats"], capture_output=True, timeout=TIMEOUT
            ).returncode
            == 0
        )
        cluster.kill("n1")
        result = subprocess.run(
            [*base, "--node", "n1", "PUT", "hats", "k", "v"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        got = subprocess.run(
            [*base, "--node", "n1", "GET", "hats", "k"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert json.loads(got.stdout) == {"ok": True, "value": "v"}


# --- interactive, through a pseudo-terminal --------------------------------------------


class Terminal:
    """The CLI on a pseudo-terminal, typed at like a person would."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.fd, slave = pty.openpty()
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.seen = b""

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_for(self, text: bytes, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"never saw {text!r}; the screen had {self.seen[-400:]!r}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the program ended
                chunk = b""
            if not chunk:
                raise AssertionError(f"ended before {text!r}; the screen had {self.seen[-400:]!r}")
            self.seen += chunk
        end = self.seen.index(text) + len(text)
        found, self.seen = self.seen[:end], self.seen[end:]
        return found

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        os.close(self.fd)


def test_interactive_prompt_with_history(server: LocalCluster, tmp_path: Path) -> None:
    port = server.nodes["n1"].client_port
    history = tmp_path / "history"
    env = {**os.environ, "TERM": "xterm", "INPUTRC": "/dev/null", cli.HISTORY_ENV: str(history)}
    terminal = Terminal([*CLI, "-p", str(port)], env)
    prompt = f"127.0.0.1:{port}> ".encode()
    try:
        terminal.wait_for(prompt)
        terminal.type(b"CREATE typed\r")
        terminal.wait_for(b"OK")
        terminal.wait_for(prompt)
        terminal.type(b'PUT typed greeting "hello world"\r')
        terminal.wait_for(prompt)
        # Line editing: recall the last line with the up arrow, change its value with
        # backspaces, and send it again.
        terminal.type(b"\x1b[A" + b"\x7f" * len(b'"hello world"') + b"bye\r")
        terminal.wait_for(prompt)
        terminal.type(b"GET typed greeting\r")
        assert b"bye" in terminal.wait_for(prompt)
        terminal.type(b"AUTH secret-not-kept\r")  # a password never goes to the history
        terminal.wait_for(prompt)
        terminal.type(b"\x04")  # Ctrl-D leaves
        assert terminal.process.wait(timeout=TIMEOUT) in (0, 1)
    finally:
        terminal.close()
    kept = history.read_text()
    assert "PUT typed greeting bye" in kept
    assert "GET typed greeting" in kept
    assert "secret-not-kept" not in kept
