"""``boutique-cli``: talk to a boutique store from a shell, as redis-cli and etcdctl do.

    boutique-cli                                    interactive, 127.0.0.1:4040
    boutique-cli PUT shopping eggs 3                one command, then exit
    boutique-cli -c config/cluster.toml GET shopping eggs     any node of a cluster
    printf 'two\\nlines' | boutique-cli -x PUT shopping note   last argument from stdin
    boutique-cli --json SCAN shopping a z           machine-readable output
    boutique-cli < commands.txt                     one command per line, from a file

A command is written as in telnet: the same names, arguments and quoting. Replies are
printed as the server sends them (the wire form, so a quoted value stays quoted and an
empty line means a missing key); ``--raw`` prints item values as plain bytes instead,
and ``--json`` prints one JSON object per reply. The exit status is 0 when every reply
succeeded, 1 when one was an error (``NOT FOUND``, ``ERR ...``), 2 when the store could
not be reached or the arguments are wrong.

With ``--config`` the client knows every node of the cluster: it connects to ``--node``
(or the first node that answers) and moves to another node when its node goes away.
A command is sent again on another node only when it certainly had no effect: it was
never sent, or it only reads. A write whose connection broke after it was sent is
reported as having an unknown outcome, never repeated.

This module only speaks the line protocol through ``boutique.client``; it never imports
the server or the runtime.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from boutique.client import DEFAULT_HOST, DEFAULT_PORT, ClientError, ConnectionLost, ServerError
from boutique.client import Client as LineClient
from boutique.config import ConfigError, load_config
from boutique.wire import (
    COMMAND_NOT_IMPLEMENTED,
    NOT_FOUND,
    OK,
    PONG,
    ErrorCode,
    RawReply,
    WireError,
    parse_error,
    parse_pair,
    parse_value,
    request_line,
    split_args,
)

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_UNREACHABLE = 2

COMMANDS = (
    "CREATE", "DROP", "PUT", "GET", "DELETE", "BUCKETS", "KEYS", "SCAN",
    "PING", "HELP", "STATUS", "AUTH", "QUIT", "ADMIN",
)  # fmt: skip
"""Offered by tab completion in interactive mode."""

HISTORY_ENV = "BOUTIQUE_CLI_HISTORY"
PASSWORD_ENV = "BOUTIQUE_PASSWORD"

Address = tuple[str, int]

USAGE = """Talk to a boutique store from a shell.

  boutique-cli                                  a prompt, at 127.0.0.1:4040
  boutique-cli PUT shopping eggs 3              one command, then exit
  boutique-cli -c config/cluster.toml GET shopping eggs
  printf 'two\\nlines' | boutique-cli -x PUT shopping note
  boutique-cli --json SCAN shopping a z
  boutique-cli < commands.txt                   one command per line

Exit status: 0 every reply succeeded, 1 a reply was an error, 2 no node answered
(or bad arguments)."""


class Unreachable(Exception):
    """No node of the list answered, or the connection broke with an unknown outcome."""

    def __init__(self, message: str, *, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to one command line, with what the printers need to know about it."""

    command: bytes
    """The command name, upper-case (``b""`` if the line could not be split)."""
    raw: RawReply

    @property
    def ok(self) -> bool:
        return self.raw.end in (OK, PONG)


class Session:
    """The client's connection, opened at the first command. ``boutique.client.Client``
    does the failover (see the module docstring); this only turns its failures into
    ``Unreachable`` with a message for a person."""

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        password: str | None,
        timeout: float,
        connect: Callable[..., LineClient] = LineClient,
    ) -> None:
        if not addresses:
            raise ValueError("no address to connect to")
        self.addresses = list(addresses)
        self.password = password
        self.timeout = timeout
        self._connect = connect
        self._client: LineClient | None = None

    @property
    def target(self) -> Address:
        """The node in use, or the one the next command will try first."""
        if self._client is not None and self._client.address is not None:
            return self._client.address
        return self.addresses[0]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, line: bytes) -> Reply:
        """Send one request line and return its reply."""
        try:
            if self._client is None:
                self._client = self._connect(
                    addresses=self.addresses, password=self.password, timeout=self.timeout
                )
            return Reply(_command_name(line), self._client.send_line(line))
        except ConnectionLost as exc:
            unknown = "; the command may or may not have been applied" if exc.maybe_applied else ""
            raise Unreachable(f"{exc}{unknown}", maybe_applied=exc.maybe_applied) from exc
        except ServerError as exc:  # only AUTH, while connecting
            raise Unreachable(f"the password was refused: {exc}", maybe_applied=False) from exc
        except ClientError as exc:  # an unreadable reply: the client closed the connection
            raise Unreachable(str(exc), maybe_applied=True) from exc


def _where(address: Address | None) -> str:
    return "?" if address is None else f"{address[0]}:{address[1]}"


def _command_name(line: bytes) -> bytes:
    try:
        args = split_args(line)
    except WireError:
        return b""
    return args[0].upper() if args else b""


def _show(line: bytes) -> str:
    return line.decode("utf-8", "replace")


# --- printing ------------------------------------------------------------------------


def print_wire(reply: Reply, out: TextIO) -> None:
    """The reply as the server wrote it, one line each (what telnet shows)."""
    for item in reply.raw.items:
        out.write(_show(item) + "\n")
    out.write(_show(reply.raw.end) + "\n")


def print_raw(reply: Reply, out: TextIO) -> None:
    """Item values as plain bytes, one per line; the terminator only if it is not OK
    (an error goes to standard error)."""
    binary = out.buffer if hasattr(out, "buffer") else None
    for item in _decoded_items(reply):
        data = b" ".join(item) if isinstance(item, tuple) else item
        if binary is not None:
            out.flush()
            binary.write(data + b"\n")
            binary.flush()
        else:
            out.write(data.decode("utf-8", "replace") + "\n")
    if reply.raw.end == PONG:
        out.write("PONG\n")
    elif not reply.ok:
        sys.stderr.write(_show(reply.raw.end) + "\n")


def print_json(reply: Reply, out: TextIO) -> None:
    out.write(json.dumps(reply_json(reply), ensure_ascii=False) + "\n")


def reply_json(reply: Reply) -> dict[str, Any]:
    """One reply as a JSON-ready object.

    Success: ``{"ok": true, ...}`` with ``value`` (GET; null for a missing key),
    ``pairs`` (SCAN: ``[key, value]`` lists), ``status`` (STATUS, which ``--json`` sends
    as ``STATUS JSON``: the object) or ``items`` (everything else). Failure:
    ``{"ok": false, "error": code, "message": text, "maybe_applied": bool}`` where code
    is ``NOT FOUND``, ``COMMAND NOT IMPLEMENTED`` or the ``ERR`` code. Bytes that are
    not UTF-8 appear as ``{"base64": "..."}``.
    """
    raw = reply.raw
    if not reply.ok:
        return {"ok": False, **_error_json(raw.end)}
    if raw.end == PONG:
        return {"ok": True, "reply": "PONG"}
    items = _decoded_items(reply)
    if reply.command == b"STATUS" and len(items) == 1 and items[0].startswith(b"{"):
        try:
            return {"ok": True, "status": json.loads(items[0])}
        except ValueError:
            pass  # not STATUS JSON after all: shown as items
    if reply.command == b"GET" and len(raw.items) == 1:
        return {"ok": True, "value": None if raw.items[0] == b"" else _json_bytes(items[0])}
    if reply.command == b"SCAN":
        return {"ok": True, "pairs": [[_json_bytes(k), _json_bytes(v)] for k, v in items]}
    return {"ok": True, "items": [_json_bytes(item) for item in items]}


def _error_json(end: bytes) -> dict[str, Any]:
    if end in (NOT_FOUND, COMMAND_NOT_IMPLEMENTED):
        return {"error": _show(end), "message": _show(end), "maybe_applied": False}
    try:
        code, message = parse_error(end)
    except WireError:
        return {"error": "PROTOCOL", "message": _show(end), "maybe_applied": True}
    known = code in ErrorCode.__members__
    return {
        "error": code,
        "message": message,
        "maybe_applied": ErrorCode(code).maybe_applied if known else True,
    }


def _decoded_items(reply: Reply) -> list[Any]:
    """Item lines turned back into bytes: pairs for SCAN, values for the rest."""
    parse: Callable[[bytes], Any] = parse_pair if reply.command == b"SCAN" else parse_value
    items = []
    for line in reply.raw.items:
        try:
            items.append(parse(line))
        except WireError:
            items.append(line)  # shown as sent rather than lost
    return items


def _json_bytes(data: bytes) -> Any:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


PRINTERS: dict[str, Callable[[Reply, TextIO], None]] = {
    "wire": print_wire,
    "raw": print_raw,
    "json": print_json,
}


# --- modes ---------------------------------------------------------------------------


def run_one(session: Session, line: bytes, printer: Callable[[Reply, TextIO], None]) -> int:
    """Send one command, print its reply, and say how it went as an exit status."""
    if printer is print_json and _is_plain_status(line):
        line = b"STATUS JSON"  # the machine-readable form of the same facts
    try:
        reply = session.run(line)
    except Unreachable as exc:
        _report_unreachable(exc, printer)
        return EXIT_UNREACHABLE
    printer(reply, sys.stdout)
    sys.stdout.flush()
    return EXIT_OK if reply.ok else EXIT_ERROR_REPLY


def _is_plain_status(line: bytes) -> bool:
    try:
        args = split_args(line)
    except WireError:
        return False
    return [a.upper() for a in args] == [b"STATUS"]


def _report_unreachable(exc: Unreachable, printer: Callable[[Reply, TextIO], None]) -> None:
    if printer is print_json:
        error = {"ok": False, "error": "CONNECTION", "message": str(exc)}
        print(json.dumps({**error, "maybe_applied": exc.maybe_applied}), flush=True)
    else:
        print(f"boutique-cli: {exc}", file=sys.stderr, flush=True)


def run_lines(
    session: Session, lines: Iterator[bytes], printer: Callable[[Reply, TextIO], None]
) -> int:
    """Send each non-blank line as a command (a script on standard input). The exit
    status is the worst of the replies; QUIT ends the script."""
    worst = EXIT_OK
    for line in lines:
        if not line.strip():
            continue
        worst = max(worst, run_one(session, line, printer))
        if _command_name(line) == b"QUIT":
            break
    return worst


def interactive(
    session: Session, printer: Callable[[Reply, TextIO], None], history: Path | None
) -> int:
    """A prompt with line editing, history and tab completion (the standard library's
    ``readline``); Ctrl-D or QUIT leaves. AUTH lines are kept out of the history file."""
    readline = _load_readline(history)
    status = EXIT_OK
    try:
        while True:
            try:
                text = input(f"{_where(session.target)}> ")
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print()
                continue
            if not text.strip():
                continue
            line = os.fsencode(text)
            if readline is not None and _command_name(line) == b"AUTH":
                readline.remove_history_item(readline.get_current_history_length() - 1)
            status = run_one(session, line, printer)
            if _command_name(line) == b"QUIT":
                break
    finally:
        if readline is not None and history is not None:
            try:
                readline.write_history_file(history)
            except OSError as exc:
                print(f"boutique-cli: cannot save history to {history}: {exc}", file=sys.stderr)
    return status


def _load_readline(history: Path | None) -> Any:
    try:
        import readline
    except ImportError:  # not every platform's Python has it; plain input() still works
        return None
    readline.set_history_length(1000)
    words = sorted(COMMANDS)

    def complete(text: str, state: int) -> str | None:
        matches = [w + " " for w in words if w.startswith(text.upper())]
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")
    if history is not None and history.exists():
        with contextlib.suppress(OSError):  # an unreadable history only loses the history
            readline.read_history_file(history)
    return readline


# --- the command line ----------------------------------------------------------------


def _version() -> str:
    try:
        return metadata.version("boutique")
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="boutique-cli",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Without a command it reads commands from the terminal (a prompt with history "
            "and line editing) or, when standard input is not a terminal, one per line "
            f"from it. Environment: {PASSWORD_ENV} (the password, instead of --password), "
            f"{HISTORY_ENV} (the history file; empty for none; default "
            "~/.boutique_cli_history)."
        ),
    )
    parser.add_argument(
        "-H", "--host", default=None, help=f"server address (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "-p", "--port", type=_port, default=None, help=f"client port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "-c", "--config", type=Path, help="a cluster config: use its nodes, fail over between them"
    )
    parser.add_argument("--node", help="with --config: the node to try first")
    parser.add_argument("-a", "--password", help=f"send AUTH first (or set {PASSWORD_ENV})")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print each reply as a JSON object")
    output.add_argument("--raw", action="store_true", help="print values as plain bytes, unquoted")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "-x",
        "--stdin",
        action="store_true",
        help="read the command's last argument from standard input",
    )
    source.add_argument("--file", type=Path, help="read the command's last argument from this file")
    parser.add_argument(
        "-t",
        "--timeout",
        type=_positive,
        default=10.0,
        help="seconds to wait for a node (default 10)",
    )
    parser.add_argument("--version", action="version", version=f"boutique-cli {_version()}")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    args = parser.parse_args(argv)
    if (args.stdin or args.file) and not args.command:
        parser.error("--stdin and --file give the last argument of a command: name the command")
    if args.config is None and args.node:
        parser.error("--node needs --config")
    if args.config is not None and (args.host or args.port):
        parser.error("--config gives the addresses: leave out --host and --port")
    return args


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {port}")
    return port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def addresses_for(args: argparse.Namespace) -> list[Address]:
    """Where to connect: the one address given, or the config's nodes with ``--node``
    first. Raises ``ConfigError`` for an unreadable config or an unknown node."""
    if args.config is None:
        return [(args.host or DEFAULT_HOST, args.port or DEFAULT_PORT)]
    config = load_config(args.config)
    nodes = list(config.nodes)
    if args.node:
        chosen = [n for n in nodes if n.name == args.node]
        if not chosen:
            names = ", ".join(n.name for n in nodes)
            raise ConfigError(str(args.config), "--node", f"no node {args.node!r} (nodes: {names})")
        nodes.remove(chosen[0])
        nodes.insert(0, chosen[0])
    return [(n.host, n.client_port) for n in nodes]


def command_line(args: argparse.Namespace) -> bytes:
    """The request line for a one-shot command: each shell argument becomes one
    argument on the wire (quoted as needed), the last one read from stdin or a file
    when asked."""
    words = [os.fsencode(word) for word in args.command]
    if args.stdin:
        words.append(sys.stdin.buffer.read())
    elif args.file is not None:
        words.append(args.file.read_bytes())
    return request_line(words[0], *words[1:])[:-2]


def _history_path() -> Path | None:
    configured = os.environ.get(HISTORY_ENV)
    if configured is not None:
        return Path(configured) if configured else None
    return Path.home() / ".boutique_cli_history"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    printer = PRINTERS["json" if args.json else "raw" if args.raw else "wire"]
    try:
        addresses = addresses_for(args)
        line = command_line(args) if args.command else None
    except (ConfigError, OSError) as exc:
        print(f"boutique-cli: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV)
    session = Session(addresses, password=password, timeout=args.timeout)
    try:
        if line is not None:
            return run_one(session, line, printer)
        if sys.stdin.isatty():
            return interactive(session, printer, _history_path())
        return run_lines(session, (raw.rstrip(b"\r\n") for raw in sys.stdin.buffer), printer)
    except KeyboardInterrupt:
        return 130
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
