"""The byte-level grammar of the line protocol, shared by the server and the Python client.

Both sides of a connection must agree on how an argument or a value is written, so the
rules live in one place. ``boutique_server`` re-exports them (``boutique_server.quoting``);
``boutique.client`` uses them to write requests and read replies. This module never does
I/O and never imports ``boutique_server`` (the import direction is server -> core).

Arguments (requests)
    A request is one line. Arguments are split on blanks (space, tab). An argument that
    starts with ``"`` is a *quoted* argument: it runs to the matching ``"`` and may use
    the escapes ``\\" \\\\ \\n \\r \\t \\xHH``; the closing quote must be followed by a
    blank or the end of the line. Anywhere else, ``"`` and ``\\`` are ordinary bytes, so
    ``PUT files path C:\\tmp`` stores ``C:\\tmp``. Any other byte stands for itself.

Three ways a reply line shows bytes
    *value form* (``render_value``): the whole line is the value. It is written bare
    unless it is empty, starts with ``"``, has leading or trailing blanks, is not
    printable UTF-8 (control bytes, invalid UTF-8, non-printable characters such as
    U+0085), or could be read as a terminator line (see below); then it is written
    quoted. Used for GET values, bucket names (BUCKETS) and keys (KEYS).

    *argument form* (``render_arg``): bare only when the bytes read back as exactly one
    argument (non-empty, printable UTF-8, no blanks, not starting with ``"``). Two of
    them separated by one space make a SCAN line (``render_pair``), so a SCAN line can
    be pasted after ``PUT bucket``.

    *text form* (``render_text``): HELP and STATUS lines for people. Like value form,
    but empty lines and leading or trailing blanks stay bare.

    ``parse_value`` reads value and text form; ``split_args`` reads argument form.
    ``quote`` produces the quoted form, which every reader accepts, for every byte
    string; raw bytes outside printable UTF-8 never reach the wire, so a reply never
    carries a bare CR, LF or telnet IAC (0xFF) byte.

Reply framing
    Every reply is zero or more *item lines* followed by exactly one *terminator line*:
    ``OK``, ``PONG``, ``NOT FOUND``, ``COMMAND NOT IMPLEMENTED``, or ``ERR <CODE>
    <message>`` (``is_terminator``). Item lines are rendered so that they are never a
    terminator, so a reader finds the end of any reply without knowing what was asked
    (``ReplyParser``). An empty item line means a missing key in a GET reply (or a
    blank line of text).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

CRLF = b"\r\n"
BLANKS = b" \t"

OK = b"OK"
PONG = b"PONG"
NOT_FOUND = b"NOT FOUND"
COMMAND_NOT_IMPLEMENTED = b"COMMAND NOT IMPLEMENTED"
ERR = b"ERR"

_TERMINATORS = frozenset({OK, PONG, NOT_FOUND, COMMAND_NOT_IMPLEMENTED, ERR})

DEFAULT_MAX_REPLY_LINE = 16 * 1024 * 1024
"""The longest reply line a ``ReplyParser`` accepts by default (a quoted value may be up
to four times the length of the raw value)."""


class WireError(ValueError):
    """Bytes that do not follow the grammar: a bad quoted argument, a malformed reply."""


class ErrorCode(enum.StrEnum):
    """The code in an ``ERR <CODE> <message>`` line: what is known about the outcome."""

    UNAVAILABLE = "UNAVAILABLE"
    """No leader or no quorum reachable right now; the command had no effect."""
    SYNTAX = "SYNTAX"
    """The line could not be read (bad quoting, bad bucket name, bad number)."""
    TOOLONG = "TOOLONG"
    """The line (or a key) is longer than the limit; the command had no effect."""
    AUTH = "AUTH"
    """A password is required, or the one given is wrong."""
    BUSY = "BUSY"
    """Too many connections or requests; the command had no effect."""
    MORE = "MORE"
    """Ends a SCAN or KEYS reply that the server cut at its row or byte limit: the
    lines before it are correct, and the message says how to continue (the next
    request starts at the last key + ``\\x00``)."""
    TIMEOUT = "TIMEOUT"
    """The command was sent to its group but no answer came in time: it may have been
    applied, or may still be."""

    @property
    def maybe_applied(self) -> bool:
        """True when the command may have taken effect despite the error."""
        return self is ErrorCode.TIMEOUT


# --- quoting -------------------------------------------------------------------------

# str.translate table for quote(): the short escapes, \xHH for ASCII controls, and
# \xHH for each byte that was not valid UTF-8 (decoded as a lone surrogate U+DC80-DCFF).
_QUOTE_TABLE: dict[int, str] = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]}
_QUOTE_TABLE.update({0xDC00 + byte: f"\\x{byte:02x}" for byte in range(0x80, 0x100)})
_QUOTE_TABLE.update({ord('"'): '\\"', ord("\\"): "\\\\", 10: "\\n", 13: "\\r", 9: "\\t"})

_HEX_DIGITS = b"0123456789abcdefABCDEF"
_UNQUOTE_TABLE: dict[bytes, bytes] = {
    b"\\x" + bytes([high, low]): bytes([int(bytes([high, low]), 16)])
    for high in _HEX_DIGITS
    for low in _HEX_DIGITS
}
_UNQUOTE_TABLE.update({b'\\"': b'"', b"\\\\": b"\\", b"\\n": b"\n", b"\\r": b"\r", b"\\t": b"\t"})
_UNESCAPES = {ord('"'): ord('"'), ord("\\"): ord("\\"), ord("n"): 10, ord("r"): 13, ord("t"): 9}

_PLAIN_ASCII = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # printable, no " or \
# A well-formed quoted argument; possessive, so matching is linear even when it fails.
_VALID_QUOTED = re.compile(rb'"((?:[^"\\]++|\\[\\"nrt]|\\x[0-9A-Fa-f]{2})*+)"')
_ESCAPE_TOKEN = re.compile(rb'(\\(?:x[0-9A-Fa-f]{2}|[\\"nrt]))')
_QUOTED_RUN = re.compile(rb'[^"\\]*')
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")
_BARE_ARG = re.compile(rb"[^ \t]*")


def quote(data: bytes) -> bytes:
    """The quoted form of ``data``: ``"..."`` with escapes. Works for every byte string.

    Printable UTF-8 characters are kept as they are; ``"``, ``\\``, LF, CR and tab get
    their short escapes and every other byte (control bytes, invalid UTF-8, the bytes of
    non-printable characters) becomes ``\\xHH``.
    """
    if _PLAIN_ASCII.fullmatch(data):
        return b'"' + data + b'"'
    text = data.decode("utf-8", "surrogateescape").translate(_QUOTE_TABLE)
    if not text.isprintable():  # rare: non-ASCII characters such as U+0085 or U+00A0
        text = "".join(
            ch if ch.isprintable() else "".join(f"\\x{byte:02x}" for byte in ch.encode())
            for ch in text
        )
    return b'"' + text.encode() + b'"'


def _printable_utf8(data: bytes) -> bool:
    if _PLAIN_ASCII.fullmatch(data):
        return True
    try:
        return data.decode().isprintable()
    except UnicodeDecodeError:
        return False


def is_terminator(line: bytes) -> bool:
    """True when ``line`` (without its CRLF) ends a reply: OK, PONG, an error line."""
    return line in _TERMINATORS or line.startswith(b"ERR ")


def value_needs_quoting(data: bytes) -> bool:
    """True when ``data`` cannot be written bare as a whole reply line."""
    return (
        not data
        or data[0] in BLANKS
        or data[-1] in BLANKS
        or data.startswith(b'"')
        or is_terminator(data)
        or not _printable_utf8(data)
    )


def arg_needs_quoting(data: bytes) -> bool:
    """True when ``data`` would not read back as exactly one bare argument."""
    return (
        not data
        or data.startswith(b'"')
        or b" " in data
        or not _printable_utf8(data)  # tab is not printable
    )


def render_value(data: bytes) -> bytes:
    """``data`` in value form: a whole line, quoted only when it must be."""
    return quote(data) if value_needs_quoting(data) else data


def render_arg(data: bytes) -> bytes:
    """``data`` in argument form: one argument of a request or of a SCAN line."""
    return quote(data) if arg_needs_quoting(data) else data


def render_pair(key: bytes, value: bytes) -> bytes:
    """A SCAN line: key and value in argument form, never mistaken for a terminator."""
    line = render_arg(key) + b" " + render_arg(value)
    if is_terminator(line):  # e.g. key NOT, value FOUND; a quoted key cannot be one
        line = quote(key) + b" " + render_arg(value)
    return line


def render_text(line: bytes) -> bytes:
    """A line of HELP or STATUS text: bare unless it is not printable or could be
    mistaken for a terminator or a quoted line."""
    if line.startswith(b'"') or is_terminator(line) or not _printable_utf8(line):
        return quote(line)
    return line


def request_line(name: bytes, *args: bytes) -> bytes:
    """One request line, CRLF included, with every argument in argument form."""
    return b" ".join([name, *(render_arg(arg) for arg in args)]) + CRLF


def _show_escape(byte: int) -> str:
    return "\\" + chr(byte) if 0x21 <= byte <= 0x7E else f"\\ before byte 0x{byte:02x}"


def _read_quoted(line: bytes, start: int) -> tuple[bytes, int]:
    """Read the quoted argument at ``line[start]`` (a ``"``); return it and the index
    just past the closing quote."""
    match = _VALID_QUOTED.match(line, start)
    if match is None:
        _raise_quoting_error(line, start)
    body = match.group(1)
    if b"\\" in body:
        parts = _ESCAPE_TOKEN.split(body)  # plain, escape, plain, ..., plain
        parts[1::2] = [_UNQUOTE_TABLE[escape] for escape in parts[1::2]]
        body = b"".join(parts)
    return body, match.end()


def _raise_quoting_error(line: bytes, start: int) -> NoReturn:
    """Walk a quoted argument that ``_VALID_QUOTED`` refused, to say what is wrong."""
    i = start + 1
    n = len(line)
    while True:
        match = _QUOTED_RUN.match(line, i)
        assert match is not None  # the pattern matches the empty string
        i = match.end()
        if i >= n:
            raise WireError("unterminated quote")
        if line[i] == 0x22:  # "
            raise AssertionError("a well-formed quoted argument was refused")
        if i + 1 >= n:  # a backslash ends the line
            raise WireError("unterminated quote")
        escape = line[i + 1]
        if escape in _UNESCAPES:
            i += 2
        elif escape == 0x78:  # x
            if not _HEX2.fullmatch(line[i + 2 : i + 4]):
                raise WireError("\\x must be followed by two hex digits")
            i += 4
        else:
            raise WireError(f"unknown escape {_show_escape(escape)} (write \\\\ for a backslash)")


def split_args(line: bytes) -> list[bytes]:
    """Split a request line (without its line ending) into arguments.

    Raises ``WireError`` for an unterminated quote, an unknown escape, or a closing
    quote followed by something other than a blank.
    """
    args: list[bytes] = []
    i = 0
    n = len(line)
    while True:
        while i < n and line[i] in BLANKS:
            i += 1
        if i >= n:
            return args
        if line[i] == 0x22:  # "
            arg, i = _read_quoted(line, i)
            if i < n and line[i] not in BLANKS:
                raise WireError("a closing quote must be followed by a blank")
        else:
            match = _BARE_ARG.match(line, i)
            assert match is not None
            arg, i = match.group(), match.end()
        args.append(arg)


def parse_value(line: bytes) -> bytes:
    """Read a line in value or text form (the inverse of ``render_value``)."""
    if not line.startswith(b'"'):
        return line
    value, end = _read_quoted(line, 0)
    if end != len(line):
        raise WireError("text after a closing quote")
    return value


def parse_pair(line: bytes) -> tuple[bytes, bytes]:
    """Read a SCAN line (the inverse of ``render_pair``)."""
    args = split_args(line)
    if len(args) != 2:
        raise WireError(f"a key-value line holds 2 arguments, not {len(args)}")
    return args[0], args[1]


def parse_error(line: bytes) -> tuple[str, str]:
    """Split an ``ERR <CODE> <message>`` line into code and message."""
    if not line.startswith(b"ERR "):
        raise WireError("not an error line")
    code, _, message = line[4:].partition(b" ")
    if not code:
        raise WireError("an error line without a code")
    return code.decode("ascii", "replace"), message.decode("utf-8", "replace")


# --- reply framing -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawReply:
    """One framed reply: its item lines (still in wire form) and its terminator line."""

    items: tuple[bytes, ...]
    end: bytes


class ReplyParser:
    """Sans-I/O framing of replies: bytes in, ``RawReply`` objects out, in order.

    It needs no knowledge of the requests: a reply ends at its terminator line. Lines
    end in CRLF; a bare LF is accepted. A line longer than ``max_line`` raises
    ``WireError`` (the stream cannot be trusted after that).
    """

    def __init__(self, max_line: int = DEFAULT_MAX_REPLY_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no LF
        self._items: list[bytes] = []

    @property
    def buffered(self) -> int:
        """Bytes held for lines not yet complete, plus item lines of an unfinished reply."""
        return len(self._buffer) + sum(len(item) for item in self._items)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the server."""
        self._buffer += data

    def next_reply(self) -> RawReply | None:
        """The next complete reply, or None if more bytes are needed."""
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                self._scanned = len(self._buffer)
                if self._scanned > self.max_line + 1:
                    raise WireError(f"reply line longer than {self.max_line} bytes")
                return None
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                raise WireError(f"reply line longer than {self.max_line} bytes")
            if is_terminator(line):
                items, self._items = tuple(self._items), []
                return RawReply(items, line)
            self._items.append(line)

    def replies(self) -> Iterator[RawReply]:
        """Every complete reply buffered so far."""
        while (reply := self.next_reply()) is not None:
            yield reply
