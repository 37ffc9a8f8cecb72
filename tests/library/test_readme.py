"""The library section of the README, run exactly as written.

The section is written in docs/library.md between `<!-- library-example -->` and
`<!-- /library-example -->`; once pasted into README.md it is checked there too (once,
if both copies are the same). How the text is read:

- A ```console block: every `$ ` line is a command. The install line is skipped (the
  suite runs installed). `python -m boutique.examples.run_counter ...` starts that
  member as its own process, the "terminal" of its `--id`. Any other command fails the
  test, so no untested command creeps into the text.
- A ```text block of `counter[N]> ` prompts is a terminal session: what follows a prompt
  is typed into terminal N, and the lines up to the next prompt are what it must print.
  `^C` is Ctrl-C (SIGINT: the member must exit cleanly). Typing into a terminal whose
  member stopped first runs its command again, as the prose says to.
- A ```python block runs as a program; a ```text block right after it is its output.

Ports are used as written when free; a port something else holds is replaced by a free
one everywhere in the section. Every process is ended by its PID afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import pytest

from boutique.testing.local_cluster import free_ports

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
START = "<!-- library-example -->"
END = "<!-- /library-example -->"
PROMPT = re.compile(r"^counter\[(\d+)\]> (.*)$")
RUN_COUNTER = "python -m boutique.examples.run_counter "


def section(text: str) -> str:
    start = text.index(START)
    end = text.find(END, start)
    return text[start : end if end >= 0 else len(text)]


def sections() -> dict[str, str]:
    found = {"docs/library.md": section((REPO / "docs" / "library.md").read_text())}
    readme = REPO / "README.md"
    if readme.exists() and START in (text := readme.read_text()):
        pasted = section(text)
        if pasted != found["docs/library.md"]:
            found["README.md"] = pasted
    return found


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Block:
    lang: str
    lines: list[str]


def blocks(text: str) -> list[Block]:
    return [
        Block(lang, body.splitlines())
        for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    ]


def with_free_ports(text: str) -> str:
    """Keep the documented ports when they are free; move the ones that are not."""
    ports = {int(p) for p in re.findall(r'127\.0\.0\.1(?::|", )(\d{4,5})\b', text)}
    for port in sorted(ports):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                continue
            except OSError:
                pass
        (free,) = free_ports(1)
        text = re.sub(rf'(127\.0\.0\.1(?::|", )){port}\b', rf"\g<1>{free}", text)
    return text


class Terminal:
    """One member process of the counter example, typed into through stdin."""

    def __init__(self, command: str, workdir: Path) -> None:
        argv = shlex.split(command)
        assert argv[0] == "python"
        self.argv = [sys.executable, *argv[1:]]
        self.workdir = workdir
        self.node = int(argv[argv.index("--id") + 1])
        self.process: subprocess.Popen[str] | None = None
        self.lines: Queue[str] = Queue()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        log = open(self.workdir / f"terminal-{self.node}.log", "a")  # noqa: SIM115
        self.lines = Queue()
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            # A terminal's Ctrl-C must reach the member even when the suite itself was
            # started with SIGINT ignored (as a background job is), which children
            # would otherwise inherit.
            preexec_fn=_default_sigint,
        )
        log.close()
        threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()

    @staticmethod
    def _read(process: subprocess.Popen[str], lines: Queue[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    def type(self, text: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def read_line(self) -> str:
        try:
            return self.lines.get(timeout=20)
        except Empty:
            log = (self.workdir / f"terminal-{self.node}.log").read_text()
            raise AssertionError(f"terminal {self.node} printed nothing; its log:\n{log}") from None

    def interrupt(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=15) == 0

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install -e ."
"""The docs' install line: skipped, as the suite runs with boutique installed."""


def run_console(block: Block, terminals: dict[int, Terminal], workdir: Path) -> None:
    for line in block.lines:
        assert line.startswith("$ "), f"a console line without a prompt: {line!r}"
        command = line[2:].strip()
        if command.startswith("pip install ") or command == INSTALL:
            continue  # the suite runs with the package installed
        assert command.startswith(RUN_COUNTER), f"an untested command in the docs: {command}"
        terminal = Terminal(command, workdir)
        terminals[terminal.node] = terminal
        terminal.start()


def run_session(block: Block, terminals: dict[int, Terminal]) -> None:
    steps: list[tuple[int, str, list[str]]] = []
    for line in block.lines:
        prompt = PROMPT.match(line)
        if prompt:
            steps.append((int(prompt[1]), prompt[2], []))
        else:
            steps[-1][2].append(line)
    for node, typed, expected in steps:
        terminal = terminals[node]
        if typed == "^C":
            terminal.interrupt()
            assert not expected, "nothing is printed on stdout after Ctrl-C"
            continue
        if not terminal.running:
            terminal.start()  # "run member N's command again"
        terminal.type(typed)
        printed = [terminal.read_line() for _ in expected]
        assert printed == expected, f"terminal {node}, after typing {typed!r}"


def run_program(block: Block, expected: Block | None, workdir: Path, index: int) -> None:
    path = workdir / f"snippet_{index}.py"
    path.write_text("\n".join(block.lines) + "\n")
    result = subprocess.run(
        [sys.executable, str(path)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    if expected is not None:
        assert result.stdout.splitlines() == expected.lines


def is_session(block: Block) -> bool:
    return block.lang == "text" and bool(block.lines) and bool(PROMPT.match(block.lines[0]))


@pytest.mark.parametrize("source", sorted(sections()))
def test_the_library_section_runs_as_written(source: str, tmp_path: Path) -> None:
    text = with_free_ports(sections()[source])
    found = blocks(text)
    assert sum(RUN_COUNTER in line for b in found for line in b.lines) >= 3
    terminals: dict[int, Terminal] = {}
    try:
        for index, block in enumerate(found):
            following = found[index + 1] if index + 1 < len(found) else None
            if block.lang == "console":
                run_console(block, terminals, tmp_path)
            elif is_session(block):
                run_session(block, terminals)
            elif block.lang == "python":
                output = following if following and following.lang == "text" else None
                if output is not None and is_session(output):
                    output = None
                run_program(block, output, tmp_path, index)
    finally:
        for terminal in terminals.values():
            terminal.kill()
