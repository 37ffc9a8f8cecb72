"""Sans-I/O line protocol: request bytes in, ``Command`` events out; ``Reply`` objects to bytes.

This is the whole wire contract of DESIGN.md ("Wire contract of the line protocol") with
no sockets, no trio and no clock, in the style of h11: the server feeds whatever bytes
arrived and sends whatever ``render`` returns. The caller's duties, per connection:

1. ``parser.feed(data)`` with each chunk read from the socket (any size, any split).
2. For each event in ``parser.events()``, in order: a ``Command`` is executed and its
   ``Reply`` sent as ``render(reply)``; a ``ProtocolError`` (the *remote* side sent a
   bad line) is answered by sending ``error.data`` — the connection keeps working.
   Replies must be sent in the order of the events (pipelining).
3. After a ``Quit`` event, send ``render(Ok())`` and close; the parser ignores any
   further input. At end of input, whatever half line is buffered is dropped, never
   executed (it may be a truncated PUT).

Requests end in LF; CRLF is accepted, and telnet's CR NUL too. A line may hold at most
``max_line`` bytes (not counting its ending): a longer one is answered with one
``ERR TOOLONG`` as soon as it is too long, its remaining bytes are dropped unbuffered up
to the next LF, and parsing carries on with the next line. Blank lines are ignored.
Telnet option negotiation (``IAC WILL/WONT/DO/DONT x``, ``IAC SB ... IAC SE`` and the
other two-byte commands) is removed, ``IAC IAC`` is a literal 0xFF byte, and ``IAC IP``,
``IAC BRK``, ``IAC ABORT``, ``IAC EOF`` and a Ctrl-D (0x04) at the start of a line end
the session with a ``Quit`` event. (So a raw 0xFF byte from ``nc`` must be doubled or
written as ``"\\xff"``; the Python client always writes the escape.)

Multi-line replies are items then ``OK`` (see ``boutique.wire``):

    GET       one value line (empty for a missing key), OK
    BUCKETS   one bucket name per line (value form), OK
    KEYS      one key per line (value form), OK
    SCAN      one ``key value`` line per pair (two arguments in argument form), OK
    HELP, STATUS  lines of text (text form), OK
    STATUS JSON   one line: a JSON object (ASCII, see ``boutique.status``), OK

``render`` raises ``LocalProtocolError`` when *this* side asks for a reply the protocol
cannot carry. This module must never do I/O, read the clock, or raise while parsing
remote input: every byte sequence yields events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from boutique.wire import (
    COMMAND_NOT_IMPLEMENTED,
    CRLF,
    NOT_FOUND,
    OK,
    PONG,
    ErrorCode,
    WireError,
    render_pair,
    render_text,
    render_value,
    split_args,
)
from boutique_server.commands import (
    ADMIN_ARITY,
    Admin,
    ArgumentError,
    Auth,
    Buckets,
    Command,
    Create,
    Delete,
    Drop,
    Fault,
    Get,
    Help,
    Keys,
    Ping,
    Put,
    Quit,
    Scan,
    Status,
    check_bucket_name,
    check_key,
    check_limit,
    check_start,
)

DEFAULT_MAX_LINE = 64 * 1024


# --- replies -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ok:
    """``OK``."""


@dataclass(frozen=True, slots=True)
class Value:
    """A GET reply: the value line, then ``OK``. ``None`` (missing key) is an empty line."""

    value: bytes | str | None


@dataclass(frozen=True, slots=True)
class Values:
    """BUCKETS or KEYS: one item per line in value form, then ``OK`` (or, when the
    server cut the reply at its limit, ``ERR MORE`` and the ``more`` message)."""

    items: Sequence[bytes | str]
    more: str | None = None


@dataclass(frozen=True, slots=True)
class Pairs:
    """SCAN: one ``key value`` line per pair, then ``OK`` (or ``ERR MORE`` and the
    ``more`` message, like ``Values``)."""

    items: Sequence[tuple[bytes | str, bytes | str]]
    more: str | None = None


@dataclass(frozen=True, slots=True)
class NotFound:
    """``NOT FOUND``: the bucket does not exist."""


@dataclass(frozen=True, slots=True)
class NotImplemented_:  # the trailing _ keeps it apart from the builtin NotImplemented
    """``COMMAND NOT IMPLEMENTED``: unknown command or wrong number of arguments."""


@dataclass(frozen=True, slots=True)
class Pong:
    """``PONG``."""


@dataclass(frozen=True, slots=True)
class Error:
    """``ERR <CODE> <message>``. The message is made one printable line when rendered."""

    code: ErrorCode
    message: str = ""


@dataclass(frozen=True, slots=True)
class Text:
    """HELP or STATUS: lines for people, in text form, then ``OK``."""

    lines: Sequence[str]


Reply: TypeAlias = Ok | Value | Values | Pairs | NotFound | NotImplemented_ | Pong | Error | Text


class LocalProtocolError(Exception):
    """This side tried to send something the protocol cannot carry (a bug in the caller)."""


_OK_LINE = OK + CRLF


def _as_bytes(item: bytes | str) -> bytes:
    if isinstance(item, str):
        try:
            return item.encode()
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"cannot encode {item!r} as UTF-8") from exc
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise LocalProtocolError(f"a reply holds bytes or str, not {type(item).__name__}")


def _one_line(message: str) -> bytes:
    """The message as printable UTF-8 on one line: other characters become escapes."""
    if not message.isprintable():
        message = "".join(
            ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
            for ch in message
        )
    return message.encode("utf-8", "backslashreplace")


def render(reply: Reply) -> bytes:
    """The bytes of ``reply``, every line ending in CRLF."""
    match reply:
        case Ok():
            return _OK_LINE
        case Value(value=value):
            if value is None:
                return CRLF + _OK_LINE
            return render_value(_as_bytes(value)) + CRLF + _OK_LINE
        case Values(items=items, more=more):
            end = _OK_LINE if more is None else render(Error(ErrorCode.MORE, more))
            return b"".join(render_value(_as_bytes(item)) + CRLF for item in items) + end
        case Pairs(items=pairs, more=more):
            end = _OK_LINE if more is None else render(Error(ErrorCode.MORE, more))
            lines = (render_pair(_as_bytes(k), _as_bytes(v)) + CRLF for k, v in pairs)
            return b"".join(lines) + end
        case NotFound():
            return NOT_FOUND + CRLF
        case NotImplemented_():
            return COMMAND_NOT_IMPLEMENTED + CRLF
        case Pong():
            return PONG + CRLF
        case Error(code=code, message=message):
            try:
                code = ErrorCode(code)
            except ValueError:
                raise LocalProtocolError(f"unknown error code {code!r}") from None
            line = b"ERR " + code.value.encode()
            if message:
                line += b" " + _one_line(message)
            return line + CRLF
        case Text(lines=lines):
            return b"".join(render_text(_as_bytes(line)) + CRLF for line in lines) + _OK_LINE
    raise LocalProtocolError(f"not a reply: {reply!r}")


# --- request lines -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The remote side sent a line that is not a valid command.

    ``reply`` is what to answer (``NotImplemented_`` or an ``Error``); ``detail`` says
    why, for logs (``COMMAND NOT IMPLEMENTED`` itself carries no reason, by contract).
    The connection stays usable.
    """

    reply: NotImplemented_ | Error
    detail: str = ""

    @property
    def data(self) -> bytes:
        """The reply bytes to send."""
        return render(self.reply)


Event: TypeAlias = Command | ProtocolError


@dataclass(frozen=True, slots=True)
class _Spec:
    min_args: int
    max_args: int
    build: Callable[[list[bytes]], Command]


def _admin(args: list[bytes]) -> Admin:
    action = args[0].upper().decode("ascii", "replace")
    spec = ADMIN_ARITY.get(action)
    if spec is None:
        known = ", ".join(sorted(ADMIN_ARITY))
        raise ArgumentError("SYNTAX", f"unknown admin command {action[:20]!r} (known: {known})")
    count, usage = spec
    if len(args) - 1 != count:
        raise ArgumentError("SYNTAX", f"usage: {usage}")
    try:
        return Admin(action, tuple(a.decode("utf-8") for a in args[1:]))
    except UnicodeDecodeError:
        raise ArgumentError("SYNTAX", "admin arguments must be UTF-8") from None


def _status(args: list[bytes]) -> Status:
    if not args:
        return Status()
    if args[0].upper() != b"JSON":
        raise ArgumentError("SYNTAX", "STATUS or STATUS JSON")
    return Status(as_json=True)


def _fault(args: list[bytes]) -> Fault:
    action = args[0].upper().decode("ascii", "replace")
    if action not in ("BLOCK", "HEAL") or (action == "HEAL" and len(args) > 1):
        raise ArgumentError("SYNTAX", "FAULT BLOCK node... or FAULT HEAL")
    return Fault(action, tuple(a.decode("utf-8", "replace") for a in args[1:]))


def _scan(args: list[bytes]) -> Scan:
    bucket, start, end = check_bucket_name(args[0]), check_start(args[1]), check_key(args[2])
    limit = check_limit(args[3]) if len(args) == 4 else None
    return Scan(bucket, start, end or None, limit)


def _keys(args: list[bytes]) -> Keys:
    bucket = check_bucket_name(args[0])
    prefix = check_key(args[1], "prefix") if len(args) > 1 else None
    start = check_start(args[2]) if len(args) > 2 else b""
    limit = check_limit(args[3]) if len(args) > 3 else None
    return Keys(bucket, prefix, limit, start)


_COMMANDS: dict[bytes, _Spec] = {
    b"CREATE": _Spec(1, 1, lambda a: Create(check_bucket_name(a[0]))),
    b"DROP": _Spec(1, 1, lambda a: Drop(check_bucket_name(a[0]))),
    b"PUT": _Spec(3, 3, lambda a: Put(check_bucket_name(a[0]), check_key(a[1]), a[2])),
    b"GET": _Spec(2, 2, lambda a: Get(check_bucket_name(a[0]), check_key(a[1]))),
    b"DELETE": _Spec(2, 2, lambda a: Delete(check_bucket_name(a[0]), check_key(a[1]))),
    b"BUCKETS": _Spec(0, 0, lambda a: Buckets()),
    b"KEYS": _Spec(1, 4, _keys),
    b"SCAN": _Spec(3, 4, _scan),
    b"PING": _Spec(0, 0, lambda a: Ping()),
    b"HELP": _Spec(0, 0, lambda a: Help()),
    b"QUIT": _Spec(0, 0, lambda a: Quit()),
    b"STATUS": _Spec(0, 1, lambda a: _status(a)),
    b"AUTH": _Spec(1, 1, lambda a: Auth(a[0])),
    b"FAULT": _Spec(1, 16, lambda a: _fault(a)),
    b"ADMIN": _Spec(1, 6, lambda a: _admin(a)),
}

HELP_TEXT: tuple[str, ...] = (
    "boutique: a sharded, strongly consistent key-value store.",
    "Command names are case-insensitive. Multi-line replies end with OK.",
    "  CREATE bucket                  make a bucket (OK if it exists)",
    "  DROP bucket                    delete a bucket and all its keys",
    "  PUT bucket key value           set a key",
    "  GET bucket key                 the value, then OK (an empty line: no such key)",
    "  DELETE bucket key              remove a key (OK if it is absent)",
    "  BUCKETS                        one bucket name per line, then OK",
    "  KEYS bucket [prefix [start [limit]]]   one key per line, in order, then OK",
    '  SCAN bucket start end [limit]  "key value" lines, start <= key < end ("" end: to the last)',
    "  (a long KEYS or SCAN reply ends with ERR MORE and the request that continues it)",
    "  PING                           PONG",
    "  STATUS                         nodes, ranges, leaders, terms, commit indexes",
    "  STATUS JSON                    the same as one line of JSON",
    "  AUTH password                  log in, if the server wants a password",
    "  ADMIN NODES|RANGES|MOVES       the cluster's layout",
    "  ADMIN ADD-NODE name id host client_port peer_port    register a joining node",
    "  ADMIN REMOVE-NODE name         move a node's replicas away, then remove it",
    "  ADMIN MOVE range from to       move a range's replicas from one node to another",
    "  ADMIN TRANSFER bucket|range:<id> node   hand leadership to a node",
    "  ADMIN SPLIT range at           cut a range in two at a bucket name",
    "  HELP                           this text",
    "  QUIT                           close the connection (Ctrl-D does too)",
    'Quote arguments with blanks or special bytes: PUT notes todo "buy milk\\n"',
    '(escapes: \\" \\\\ \\n \\r \\t \\xHH). Values are shown quoted when they need it.',
    "Errors: ERR SYNTAX/TOOLONG/AUTH/BUSY/UNAVAILABLE had no effect; ERR TIMEOUT may have.",
)
"""The text a server answers HELP with (as ``Text(HELP_TEXT)``)."""


def _printable_name(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")[:40]


def parse_line(line: bytes) -> Command | ProtocolError | None:
    """The event for one request line (without its line ending); None for a blank line."""
    try:
        args = split_args(line)
    except WireError as exc:
        return ProtocolError(Error(ErrorCode.SYNTAX, str(exc)), str(exc))
    if not args:
        return None
    if args == [b"\x04"]:
        return Quit()
    name = args[0].upper()
    spec = _COMMANDS.get(name)
    if spec is None:
        return ProtocolError(NotImplemented_(), f"unknown command {_printable_name(name)!r}")
    if not spec.min_args <= len(args) - 1 <= spec.max_args:
        wanted = (
            f"{spec.min_args}-{spec.max_args}" if spec.max_args > spec.min_args else spec.min_args
        )
        detail = f"{name.decode()} takes {wanted} arguments, not {len(args) - 1}"
        return ProtocolError(NotImplemented_(), detail)
    try:
        return spec.build(args[1:])
    except ArgumentError as exc:
        return ProtocolError(Error(ErrorCode(exc.code), exc.message), exc.message)


# --- telnet --------------------------------------------------------------------------

_IAC = 255
_SB = 250
_SE = 240
_WILL, _DONT = 251, 254
_INTERRUPTS = frozenset({243, 244, 238, 236})  # BRK, IP, ABORT, EOF
_MAX_SUBNEGOTIATION = 4096
"""Bytes of ``IAC SB`` payload skipped before giving up on finding its ``IAC SE``, so a
stray IAC SB cannot swallow a session for good."""

_DATA, _AFTER_IAC, _OPTION, _SUB, _SUB_IAC = range(5)


class _TelnetFilter:
    """Removes telnet commands from a byte stream; keeps state across chunks.

    ``filter`` returns the data in order, with ``None`` where an interrupt (IP, BRK,
    ABORT, EOF) was. CR NUL (telnet's bare carriage return) becomes CR LF.
    """

    def __init__(self) -> None:
        self._state = _DATA
        self._last_cr = False
        self._sub_length = 0

    def filter(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        kept = bytearray()
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                iac = data.find(b"\xff", i)
                end = n if iac < 0 else iac
                if end > i:
                    chunk = data[i:end]
                    if self._last_cr and chunk[0] == 0:
                        chunk = b"\n" + chunk[1:]
                    chunk = chunk.replace(b"\r\x00", b"\r\n")
                    self._last_cr = chunk.endswith(b"\r")
                    kept += chunk
                if iac < 0:
                    break
                self._state = _AFTER_IAC
                i = iac + 1
            elif state == _AFTER_IAC:
                byte = data[i]
                i += 1
                self._state = _DATA
                if byte == _IAC:
                    kept.append(_IAC)
                    self._last_cr = False
                elif _WILL <= byte <= _DONT:
                    self._state = _OPTION
                elif byte == _SB:
                    self._state = _SUB
                    self._sub_length = 0
                elif byte in _INTERRUPTS:
                    if kept:
                        out.append(bytes(kept))
                        kept.clear()
                    out.append(None)
            elif state == _OPTION:
                i += 1
                self._state = _DATA
            elif state == _SUB:
                iac = data.find(b"\xff", i)
                end = n if iac < 0 else iac
                allowed = _MAX_SUBNEGOTIATION - self._sub_length
                if end - i > allowed:
                    i += allowed
                    self._state = _DATA
                    continue
                self._sub_length += end - i
                i = end
                if iac >= 0:
                    self._state = _SUB_IAC
                    i += 1
            else:  # _SUB_IAC
                byte = data[i]
                i += 1
                self._sub_length += 2
                self._state = _DATA if byte == _SE else _SUB
        if kept:
            out.append(bytes(kept))
        return out


# --- the parser ----------------------------------------------------------------------


class LineParser:
    """Bytes in, events out, for one connection. Never raises on remote input.

    ``feed`` parses eagerly; ``events`` yields what is ready, in order. ``buffered``
    (the bytes held for an unfinished line) never exceeds ``max_line``.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE, *, telnet: bool = True) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._telnet = _TelnetFilter() if telnet else None
        self._line = bytearray()
        self._cr_pending = False  # the line so far ended in CR: a terminator if LF follows
        self._discarding = False  # dropping the rest of a line that was too long
        self._events: deque[Event] = deque()
        self.ended = False
        """True once a ``Quit`` event was produced; later input is ignored."""

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete line."""
        return len(self._line)

    def feed(self, data: bytes | bytearray) -> None:
        """Take the next bytes received from the client."""
        if self.ended or not data:
            return
        data = bytes(data)
        pieces = self._telnet.filter(data) if self._telnet is not None else [data]
        for piece in pieces:
            if self.ended:
                return
            if piece is None:
                self._end()
            else:
                self._feed_data(piece)

    def events(self) -> Iterator[Event]:
        """The events parsed so far and not yet taken, in order."""
        while self._events:
            yield self._events.popleft()

    def _end(self) -> None:
        self._events.append(Quit())
        self.ended = True
        self._line.clear()
        self._cr_pending = False

    def _too_long(self) -> None:
        message = f"line longer than {self.max_line} bytes"
        self._events.append(ProtocolError(Error(ErrorCode.TOOLONG, message), message))
        self._line.clear()
        self._cr_pending = False

    def _feed_data(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and not self.ended:
            newline = data.find(b"\n", i)
            if self._discarding:
                if newline < 0:
                    return
                self._discarding = False
                i = newline + 1
                continue
            if not self._line and not self._cr_pending and data[i] == 0x04:
                self._end()  # Ctrl-D at the start of a line, as in a shell
                return
            end = n if newline < 0 else newline
            chunk = data[i:end]
            if self._cr_pending and chunk:
                self._line.append(0x0D)  # that CR was not a line ending after all
            self._cr_pending = False
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
                self._cr_pending = newline < 0
            if len(self._line) + len(chunk) > self.max_line:
                self._too_long()
                if newline < 0:
                    self._discarding = True
                    return
                i = newline + 1
                continue
            self._line += chunk
            if newline < 0:
                return
            i = newline + 1
            line = bytes(self._line)
            self._line.clear()
            event = parse_line(line)
            if event is not None:
                self._events.append(event)
                if isinstance(event, Quit):
                    self.ended = True
