"""The commands a client can send, as frozen slotted dataclasses, and the rules for names.

``boutique_server.protocol`` turns request lines into these objects; the server executes
them. They carry already-validated arguments: bucket names are ``str`` that follow
``check_bucket_name``, keys and values are ``bytes`` (any bytes). This module never does
I/O and never knows about the wire format.

Name rules
    A bucket name is 1 to 255 bytes of UTF-8; every character is printable and none is
    whitespace (``str.isprintable() and not str.isspace()``). So a name is always one
    bare argument and always routes by its first character.
    A key is any bytes, 0 to ``MAX_KEY_BYTES`` long; a value is any bytes (bounded only
    by the line length). A longer key is answered with ``ERR TOOLONG``.

Semantics the server is expected to give them (see DESIGN.md "Wire contract")
    Every command on a bucket that does not exist is answered ``NOT FOUND``, except
    ``CREATE``, which is idempotent. ``DELETE`` of an absent key is ``OK``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from boutique.runtime.admin_commands import USAGE as ADMIN_USAGE

MAX_BUCKET_NAME_BYTES = 255
MAX_KEY_BYTES = 4096
MAX_SCAN_LIMIT_DIGITS = 9
"""A SCAN limit has at most this many digits (so at most 999,999,999)."""


class ArgumentError(ValueError):
    """An argument breaks a name rule; ``code`` is the ``ErrorCode`` name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_bucket_name(raw: bytes) -> str:
    """The bucket name in ``raw``, or ``ArgumentError`` (SYNTAX) if it breaks the rule."""
    name = _valid_names.get(raw)
    if name is not None:
        return name
    name = _check_bucket_name(raw)
    if len(_valid_names) >= _VALID_NAMES_KEPT:
        _valid_names.clear()
    _valid_names[raw] = name
    return name


_valid_names: dict[bytes, str] = {}
"""Names that passed the check: a client names the same few buckets over and over."""
_VALID_NAMES_KEPT = 4096


def _check_bucket_name(raw: bytes) -> str:
    if 1 <= len(raw) <= MAX_BUCKET_NAME_BYTES:
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            pass
        else:
            if all(ch.isprintable() and not ch.isspace() for ch in name):
                return name
    raise ArgumentError(
        "SYNTAX",
        f"a bucket name is 1-{MAX_BUCKET_NAME_BYTES} bytes of printable UTF-8 without blanks",
    )


def check_key(raw: bytes, what: str = "key") -> bytes:
    """``raw`` if it is short enough to be a key, or ``ArgumentError`` (TOOLONG)."""
    if len(raw) > MAX_KEY_BYTES:
        raise ArgumentError("TOOLONG", f"{what} longer than {MAX_KEY_BYTES} bytes")
    return raw


def check_start(raw: bytes) -> bytes:
    """A SCAN or KEYS start: a key, or one byte longer (the last key of a reply plus
    ``\\x00``, where the next page starts)."""
    if len(raw) > MAX_KEY_BYTES + 1:
        raise ArgumentError("TOOLONG", f"start longer than {MAX_KEY_BYTES + 1} bytes")
    return raw


def check_limit(raw: bytes) -> int:
    """A positive decimal count, or ``ArgumentError`` (SYNTAX)."""
    if raw.isdigit() and len(raw) <= MAX_SCAN_LIMIT_DIGITS and int(raw) > 0:
        return int(raw)
    raise ArgumentError("SYNTAX", "limit must be a positive whole number below 10^9")


@dataclass(frozen=True, slots=True)
class Create:
    """``CREATE bucket``: make a bucket; ``OK`` also when it exists."""

    bucket: str


@dataclass(frozen=True, slots=True)
class Drop:
    """``DROP bucket``: delete a bucket and every key in it."""

    bucket: str


@dataclass(frozen=True, slots=True)
class Put:
    """``PUT bucket key value``: set a key."""

    bucket: str
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Get:
    """``GET bucket key``: the value line (empty if the key is missing), then ``OK``."""

    bucket: str
    key: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    """``DELETE bucket key``: remove a key; ``OK`` also when it is absent."""

    bucket: str
    key: bytes


@dataclass(frozen=True, slots=True)
class Buckets:
    """``BUCKETS``: one bucket name per line, in order, then ``OK``."""


@dataclass(frozen=True, slots=True)
class Keys:
    """``KEYS bucket [prefix [start [limit]]]``: the keys starting with ``prefix`` (an
    empty prefix: every key) from the first one ``>= start``, at most ``limit`` of
    them, one per line in order, then ``OK``."""

    bucket: str
    prefix: bytes | None = None
    limit: int | None = None
    start: bytes = b""


@dataclass(frozen=True, slots=True)
class Scan:
    """``SCAN bucket start end [limit]``: ``key value`` lines for ``start <= key < end``
    in key order, at most ``limit`` of them, then ``OK``. An empty end (``""``) means
    no upper bound; it is stored as ``None``."""

    bucket: str
    start: bytes
    end: bytes | None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """``PING``: ``PONG``."""


@dataclass(frozen=True, slots=True)
class Help:
    """``HELP``: lines of text, then ``OK``."""


@dataclass(frozen=True, slots=True)
class Quit:
    """``QUIT`` (or Ctrl-D, or telnet's interrupt): answer ``OK`` and close."""


@dataclass(frozen=True, slots=True)
class Status:
    """``STATUS``: lines of text about nodes, ranges and groups, then ``OK``.
    ``STATUS JSON``: the same facts as one line of JSON, then ``OK``."""

    as_json: bool = False


@dataclass(frozen=True, slots=True)
class Auth:
    """``AUTH password``: ``OK``, or ``ERR AUTH`` if the password is wrong."""

    password: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Fault:
    """``FAULT BLOCK node...`` / ``FAULT HEAL``: cut or restore this node's links to
    peers. Only for distributed tests; a server without ``[testing] fault_injection``
    answers ``COMMAND NOT IMPLEMENTED``."""

    action: str
    nodes: tuple[str, ...] = ()


ADMIN_ARITY: dict[str, tuple[int, str]] = {
    action: (len(usage.split()) - 2, usage) for action, usage in ADMIN_USAGE.items()
}
"""Admin sub-commands: number of arguments, and usage for error messages (from the one
table the node's admin commands are parsed by, ``runtime.admin_commands.USAGE``)."""


@dataclass(frozen=True, slots=True)
class Admin:
    """``ADMIN <action> args...``: change or inspect the cluster's layout online (see
    ``ADMIN_ARITY``). Needs ``AUTH`` first when the server has a password."""

    action: str
    args: tuple[str, ...] = ()


Command: TypeAlias = (
    Create
    | Drop
    | Put
    | Get
    | Delete
    | Buckets
    | Keys
    | Scan
    | Ping
    | Help
    | Quit
    | Status
    | Auth
    | Fault
    | Admin
)
"""Every command a request line can hold."""

BucketCommand: TypeAlias = Create | Drop | Put | Get | Delete | Keys | Scan
"""Commands that name a bucket (``command.bucket``) and are routed to its group."""

WriteCommand: TypeAlias = Create | Drop | Put | Delete
"""Commands that change state: proposed through Raft; a TIMEOUT leaves them unknown."""

ReadCommand: TypeAlias = Get | Buckets | Keys | Scan
"""Commands that only read state: answered after a ReadIndex, never change anything."""
