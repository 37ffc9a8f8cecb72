"""Python clients for a boutique server: ``Client`` (blocking sockets) and ``AsyncClient`` (trio).

    with Client("127.0.0.1", 4040) as c:
        c.create("shopping")
        c.put("shopping", "eggs", "3")
        c.get("shopping", "eggs")        # "3"; None if the key is missing

    async with AsyncClient("127.0.0.1", 4040) as c:
        await c.put("shopping", "eggs", "3")

Both write requests and read replies with the grammar in ``boutique.wire`` (the same
code the server uses, so every byte string round-trips) and map error replies to
exceptions. Every exception has ``maybe_applied``: False when the command certainly had
no effect (``NotFound``, ``CommandNotImplemented``, ``ERR UNAVAILABLE/SYNTAX/TOOLONG/
AUTH/BUSY``), True when the outcome is unknown (``ERR TIMEOUT``, a connection lost or a
reply that could not be read after the request was sent).

Values come back as ``str`` when they are valid UTF-8 and as ``bytes`` otherwise
(``get_bytes`` always gives bytes). Keys and values may be given as ``str`` (sent as
UTF-8) or ``bytes``.

Pipelining: ``with c.pipeline() as p: p.put(...); p.get(...)`` sends every queued request
in one write when the block ends (or at ``p.execute()``) and reads the replies in order;
``p.results`` holds one result or exception per request.

TLS: give ``ssl_context`` (e.g. ``ssl.create_default_context(cafile="ca.pem")``) to talk
to a server with ``[server] tls_cert`` and ``tls_key``; the server's certificate must name
the host connected to.

Paging: the server caps every ``SCAN`` and ``KEYS`` reply (rows and bytes). ``scan`` and
``keys`` on a client ask for pages of ``PAGE_ROWS`` and go on from the last key + ``\\x00``
until the range is read, so they return every row. In a pipeline they are one request:
a reply the server cut raises ``ServerError`` with code ``MORE``.

This module never imports ``boutique_server`` (the server depends on the core, not the
other way round), and never holds a connection in an unknown state: after a lost
connection, a timeout or an unreadable reply the connection is closed.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeAlias, TypeVar

import trio

from boutique.status import NodeStatus
from boutique.wire import (
    COMMAND_NOT_IMPLEMENTED,
    DEFAULT_MAX_REPLY_LINE,
    NOT_FOUND,
    OK,
    PONG,
    ErrorCode,
    RawReply,
    ReplyParser,
    WireError,
    parse_error,
    parse_pair,
    parse_value,
    request_line,
    split_args,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4040

Data: TypeAlias = str | bytes
"""A key, value or password: ``str`` is sent as UTF-8."""
Decoded: TypeAlias = str | bytes
"""A value or key read back: ``str`` if it is valid UTF-8, else ``bytes``."""

T = TypeVar("T")

_CHUNK = 65536
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
"""A non-blocking socket (plain or TLS) that cannot send or receive right now."""
PAGE_ROWS = 1000
"""Rows a client's ``scan`` or ``keys`` asks for per request (the server may give fewer)."""


# --- errors --------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error the client raises for a command."""

    maybe_applied: bool = False
    """True when the command may have taken effect despite the error."""


class NotFound(ClientError):
    """``NOT FOUND``: the bucket does not exist. Nothing was changed."""


class CommandNotImplemented(ClientError):
    """``COMMAND NOT IMPLEMENTED``: the server does not know the command or its arity."""


class ServerError(ClientError):
    """An ``ERR <CODE> <message>`` reply. ``ServerError.from_code`` picks the subclass."""

    code_name: ClassVar[str] = ""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"ERR {code} {message}".rstrip())
        self.code = code
        self.message = message
        try:
            self.maybe_applied = ErrorCode(code).maybe_applied
        except ValueError:
            self.maybe_applied = True  # a code this client does not know: assume the worst

    @staticmethod
    def from_code(code: str, message: str) -> ServerError:
        """The exception for an error line with this code."""
        for cls in (Unavailable, BadSyntax, TooLong, AuthError, Busy, Timeout):
            if cls.code_name == code:
                return cls(code, message)
        return ServerError(code, message)


class Unavailable(ServerError):
    """``ERR UNAVAILABLE``: no leader or quorum right now; no effect. Retry later."""

    code_name = ErrorCode.UNAVAILABLE


class BadSyntax(ServerError):
    """``ERR SYNTAX``: the request could not be read; no effect."""

    code_name = ErrorCode.SYNTAX


class TooLong(ServerError):
    """``ERR TOOLONG``: the request line or key is too long; no effect."""

    code_name = ErrorCode.TOOLONG


class AuthError(ServerError):
    """``ERR AUTH``: a password is needed, or it is wrong; no effect."""

    code_name = ErrorCode.AUTH


class Busy(ServerError):
    """``ERR BUSY``: the server is overloaded; no effect. Retry later."""

    code_name = ErrorCode.BUSY


class Timeout(ServerError):
    """``ERR TIMEOUT``: the server gave up waiting; the command may have been applied."""

    code_name = ErrorCode.TIMEOUT


class ConnectionLost(ClientError):
    """The connection broke or timed out. If a request was sent, its outcome is unknown."""

    def __init__(self, message: str, *, maybe_applied: bool = True) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class ProtocolViolation(ClientError):
    """The server's reply does not follow the protocol; the outcome is unknown."""

    maybe_applied = True


def _error_for(end: bytes) -> ClientError:
    if end == NOT_FOUND:
        return NotFound("NOT FOUND")
    if end == COMMAND_NOT_IMPLEMENTED:
        return CommandNotImplemented("COMMAND NOT IMPLEMENTED")
    try:
        code, message = parse_error(end)
    except WireError:
        return ProtocolViolation(f"unexpected reply {end[:80]!r}")
    return ServerError.from_code(code, message)


# --- requests and how their replies read ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Request(Generic[T]):
    """One request line and the function that turns its reply into a result."""

    line: bytes
    decode: Callable[[RawReply], T]
    read_only: bool = False
    """True when the request changes nothing, so sending it again is harmless."""


def _b(data: Data) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    # bytes(5) would be five NUL bytes: refuse anything that is not text or bytes.
    raise TypeError(f"keys, values and names are str or bytes, not {type(data).__name__}")


def _text(data: bytes) -> Decoded:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def _expect(raw: RawReply, end: bytes, items: int | None = 0) -> None:
    if raw.end != end:
        raise _error_for(raw.end)
    if items is not None and len(raw.items) != items:
        raise ProtocolViolation(f"expected {items} item lines, got {len(raw.items)}")


def _read(parse: Callable[[bytes], T], line: bytes) -> T:
    try:
        return parse(line)
    except WireError as exc:
        raise ProtocolViolation(f"unreadable reply line {line[:80]!r}: {exc}") from None


def decode_ok(raw: RawReply) -> None:
    """A reply that is just ``OK``."""
    _expect(raw, OK)


def decode_pong(raw: RawReply) -> None:
    """A reply that is just ``PONG``."""
    _expect(raw, PONG)


def decode_value(raw: RawReply) -> bytes | None:
    """A GET reply: the value, or None for the empty line of a missing key."""
    _expect(raw, OK, items=1)
    line = raw.items[0]
    return None if line == b"" else _read(parse_value, line)


def decode_values(raw: RawReply) -> list[bytes]:
    """A BUCKETS or KEYS reply: the items in order."""
    _expect(raw, OK, items=None)
    return [_read(parse_value, line) for line in raw.items]


def decode_pairs(raw: RawReply) -> list[tuple[bytes, bytes]]:
    """A SCAN reply: (key, value) pairs in order."""
    _expect(raw, OK, items=None)
    return [_read(parse_pair, line) for line in raw.items]


def decode_page(raw: RawReply, parse: Callable[[bytes], T]) -> tuple[list[T], bool]:
    """A SCAN or KEYS reply that may have been cut: its rows, and True if the server
    cut it (``ERR MORE``: more rows may follow the last one)."""
    if raw.end != OK:
        error = _error_for(raw.end)
        if not (isinstance(error, ServerError) and error.code == ErrorCode.MORE):
            raise error
    return [_read(parse, line) for line in raw.items], raw.end != OK


def decode_text(raw: RawReply) -> list[str]:
    """A HELP or STATUS reply: its lines."""
    _expect(raw, OK, items=None)
    return [_read(parse_value, line).decode("utf-8", "replace") for line in raw.items]


def decode_status_json(raw: RawReply) -> NodeStatus:
    """A STATUS JSON reply: one line of JSON, parsed."""
    lines = decode_text(raw)
    if len(lines) != 1:
        raise ProtocolViolation(f"STATUS JSON: expected one line, got {len(lines)}")
    try:
        return NodeStatus.from_json(lines[0])
    except ValueError as exc:
        raise ProtocolViolation(str(exc)) from None


def _raw(raw: RawReply) -> RawReply:
    return raw


def _is_read_only(line: bytes) -> bool:
    """Whether a request line typed by a person only reads (see ``_READ_ONLY``)."""
    try:
        args = split_args(line)
    except WireError:
        return False
    return bool(args) and args[0].upper() in _READ_ONLY


def _optional_text(value: bytes | None) -> Decoded | None:
    return None if value is None else _text(value)


def _request(decode: Callable[[RawReply], T], name: bytes, *args: bytes) -> Request[T]:
    return Request(request_line(name, *args), decode, read_only=name in _READ_ONLY)


_READ_ONLY = frozenset({b"GET", b"KEYS", b"SCAN", b"BUCKETS", b"PING", b"HELP", b"STATUS", b"AUTH"})
"""Commands that change nothing: after a lost connection they are asked again elsewhere."""


Row = TypeVar("Row")


class _Pager(Generic[Row]):
    """Reads a SCAN or KEYS range page by page: ``request`` is the next page's request,
    ``take`` its result (True once the range, or ``limit`` rows, have been read)."""

    def __init__(
        self,
        make: Callable[[bytes, int], Request[tuple[list[Row], bool]]],
        key_of: Callable[[Row], bytes],
        start: bytes,
        limit: int | None,
    ) -> None:
        self._make = make
        self._key_of = key_of
        self._start = start
        self._left = limit
        self._asked = 0
        self.rows: list[Row] = []

    def request(self) -> Request[tuple[list[Row], bool]]:
        self._asked = PAGE_ROWS if self._left is None else min(PAGE_ROWS, self._left)
        return self._make(self._start, self._asked)

    def take(self, page: tuple[list[Row], bool]) -> bool:
        rows, cut = page
        self.rows.extend(rows)
        if self._left is not None:
            self._left -= len(rows)
        if not rows or self._left == 0 or (not cut and len(rows) < self._asked):
            return True
        # The smallest key after the last one: the next page starts exactly there.
        self._start = self._key_of(rows[-1]) + b"\0"
        return False


def _scan_pager(
    bucket: str, start: Data, end: Data | None, limit: int | None
) -> _Pager[tuple[bytes, bytes]]:
    def make(at: bytes, count: int) -> Request[tuple[list[tuple[bytes, bytes]], bool]]:
        args = [_b(bucket), at, b"" if end is None else _b(end), str(count).encode()]
        return _request(lambda r: decode_page(r, parse_pair), b"SCAN", *args)

    return _Pager(make, lambda pair: pair[0], _b(start), limit)


def _keys_pager(bucket: str, prefix: Data | None) -> _Pager[bytes]:
    def make(at: bytes, count: int) -> Request[tuple[list[bytes], bool]]:
        args = [_b(bucket), b"" if prefix is None else _b(prefix), at, str(count).encode()]
        return _request(lambda r: decode_page(r, parse_value), b"KEYS", *args)

    return _Pager(make, lambda key: key, b"", None)


class _Requests:
    """The request for each command; the clients and pipelines share these."""

    @staticmethod
    def create(bucket: str) -> Request[None]:
        return _request(decode_ok, b"CREATE", _b(bucket))

    @staticmethod
    def drop(bucket: str) -> Request[None]:
        return _request(decode_ok, b"DROP", _b(bucket))

    @staticmethod
    def put(bucket: str, key: Data, value: Data) -> Request[None]:
        return _request(decode_ok, b"PUT", _b(bucket), _b(key), _b(value))

    @staticmethod
    def get(bucket: str, key: Data) -> Request[Decoded | None]:
        return _request(lambda r: _optional_text(decode_value(r)), b"GET", _b(bucket), _b(key))

    @staticmethod
    def get_bytes(bucket: str, key: Data) -> Request[bytes | None]:
        return _request(decode_value, b"GET", _b(bucket), _b(key))

    @staticmethod
    def delete(bucket: str, key: Data) -> Request[None]:
        return _request(decode_ok, b"DELETE", _b(bucket), _b(key))

    @staticmethod
    def buckets() -> Request[list[str]]:
        return _request(
            lambda r: [v.decode("utf-8", "replace") for v in decode_values(r)], b"BUCKETS"
        )

    @staticmethod
    def keys(bucket: str, prefix: Data | None = None) -> Request[list[Decoded]]:
        args = [_b(bucket)] if prefix is None else [_b(bucket), _b(prefix)]
        return _request(lambda r: [_text(k) for k in decode_values(r)], b"KEYS", *args)

    @staticmethod
    def scan(
        bucket: str, start: Data = b"", end: Data | None = None, limit: int | None = None
    ) -> Request[list[tuple[Decoded, Decoded]]]:
        args = [_b(bucket), _b(start), b"" if end is None else _b(end)]
        if limit is not None:
            args.append(str(limit).encode())
        return _request(
            lambda r: [(_text(k), _text(v)) for k, v in decode_pairs(r)], b"SCAN", *args
        )

    @staticmethod
    def ping() -> Request[None]:
        return _request(decode_pong, b"PING")

    @staticmethod
    def help() -> Request[list[str]]:
        return _request(decode_text, b"HELP")

    @staticmethod
    def status() -> Request[list[str]]:
        return _request(decode_text, b"STATUS")

    @staticmethod
    def status_info() -> Request[NodeStatus]:
        return _request(decode_status_json, b"STATUS", b"JSON")

    @staticmethod
    def auth(password: Data) -> Request[None]:
        return _request(decode_ok, b"AUTH", _b(password))

    @staticmethod
    def quit() -> Request[None]:
        return _request(decode_ok, b"QUIT")

    @staticmethod
    def admin(*args: str) -> Request[list[str]]:
        request = _request(decode_text, b"ADMIN", *(_b(arg) for arg in args))
        read_only = len(args) == 1 and args[0].upper() in ("NODES", "RANGES", "MOVES")
        return Request(request.line, request.decode, read_only=read_only)


_R = _Requests


def _decode_all(requests: Sequence[Request[Any]], replies: Sequence[RawReply]) -> list[Any]:
    """One result or ``ClientError`` per request, in order."""
    results: list[Any] = []
    for request, raw in zip(requests, replies, strict=True):
        try:
            results.append(request.decode(raw))
        except ClientError as exc:
            results.append(exc)
    return results


def _raise_first_error(results: list[Any]) -> list[Any]:
    for result in results:
        if isinstance(result, ClientError):
            raise result
    return results


# --- pipelines -----------------------------------------------------------------------


class _PipelineBase:
    """Queues requests; ``execute`` sends them in one write and reads replies in order."""

    def __init__(self) -> None:
        self._queued: list[Request[Any]] = []
        self.results: list[Any] = []
        """After ``execute``: one result or ``ClientError`` per request, in order."""

    def __len__(self) -> int:
        return len(self._queued)

    def _add(self, request: Request[Any]) -> Self:
        self._queued.append(request)
        return self

    def _take(self) -> list[Request[Any]]:
        queued, self._queued = self._queued, []
        return queued

    def create(self, bucket: str) -> Self:
        return self._add(_R.create(bucket))

    def drop(self, bucket: str) -> Self:
        return self._add(_R.drop(bucket))

    def put(self, bucket: str, key: Data, value: Data) -> Self:
        return self._add(_R.put(bucket, key, value))

    def get(self, bucket: str, key: Data) -> Self:
        return self._add(_R.get(bucket, key))

    def get_bytes(self, bucket: str, key: Data) -> Self:
        return self._add(_R.get_bytes(bucket, key))

    def delete(self, bucket: str, key: Data) -> Self:
        return self._add(_R.delete(bucket, key))

    def buckets(self) -> Self:
        return self._add(_R.buckets())

    def keys(self, bucket: str, prefix: Data | None = None) -> Self:
        return self._add(_R.keys(bucket, prefix))

    def scan(
        self, bucket: str, start: Data = b"", end: Data | None = None, limit: int | None = None
    ) -> Self:
        return self._add(_R.scan(bucket, start, end, limit))

    def ping(self) -> Self:
        return self._add(_R.ping())

    def status(self) -> Self:
        return self._add(_R.status())

    def status_info(self) -> Self:
        return self._add(_R.status_info())


class Pipeline(_PipelineBase):
    """Requests queued on a ``Client``; sent together by ``execute`` or at block end."""

    def __init__(self, client: Client) -> None:
        super().__init__()
        self._client = client

    def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Send the queued requests, read every reply; raise the first error if asked
        (``results`` is filled in either case)."""
        requests = self._take()
        self.results = _decode_all(requests, self._client._exchange(requests))
        return _raise_first_error(self.results) if raise_on_error else self.results

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None and self._queued:
            self.execute()


class AsyncPipeline(_PipelineBase):
    """Requests queued on an ``AsyncClient``; sent together by ``execute`` or at block end."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self._client = client

    async def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Send the queued requests, read every reply; raise the first error if asked
        (``results`` is filled in either case)."""
        requests = self._take()
        self.results = _decode_all(requests, await self._client._exchange(requests))
        return _raise_first_error(self.results) if raise_on_error else self.results

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None and self._queued:
            await self.execute()


# --- the blocking client -------------------------------------------------------------


class Client:
    """A blocking connection to a boutique server, or to any of several nodes.

    ``timeout`` (seconds, None for none) bounds connecting and each wait for the server
    to make progress; when it passes, the connection is closed and ``ConnectionLost``
    raised. ``sock`` lets a caller supply a connected socket (tests use socketpair).

    ``addresses`` (instead of ``host`` and ``port``) lists nodes of one cluster: the
    client connects to the first that answers. After a lost connection the next call
    connects again, to the next node first; the call that lost it is sent again (to the
    next node that answers) only if it certainly had no effect, that is when it was
    never sent or only reads. A write whose connection broke raises ``ConnectionLost``
    with ``maybe_applied`` and is never repeated. Pipelines are never sent twice.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        addresses: Sequence[tuple[str, int]] | None = None,
        timeout: float | None = 10.0,
        password: Data | None = None,
        sock: socket.socket | None = None,
        max_reply_line: int = DEFAULT_MAX_REPLY_LINE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.addresses = list(addresses) if addresses else [(host, port)]
        self.address: tuple[str, int] | None = None
        """The node connected to (None with a supplied ``sock``, or while closed)."""
        self._next = 0
        self._password = password
        self._max_reply_line = max_reply_line
        self._can_reconnect = sock is None
        self._closed_by_caller = False
        self._ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._parser = ReplyParser(max_reply_line)
        if sock is None:
            self._connect()
        else:
            sock = self._secure(sock, host, port)
            sock.setblocking(False)
            self._sock = sock
            self._log_in()

    def _connect(self) -> None:
        """Connect to the next address that answers (each tried once) and log in."""
        failures = []
        for _ in range(len(self.addresses)):
            host, port = self.addresses[self._next]
            self._next = (self._next + 1) % len(self.addresses)
            try:
                sock = socket.create_connection((host, port), timeout=self.timeout)
            except OSError as exc:
                failures.append(f"cannot connect to {host}:{port}: {exc}")
                continue
            try:
                sock = self._secure(sock, host, port)
            except ConnectionLost as exc:
                failures.append(str(exc))
                continue
            sock.setblocking(False)
            self._sock, self.address = sock, (host, port)
            self._parser = ReplyParser(self._max_reply_line)
            self._log_in()
            return
        raise ConnectionLost("; ".join(failures), maybe_applied=False)

    def _secure(self, sock: socket.socket, host: str, port: int) -> socket.socket:
        """Wrap ``sock`` in TLS when the client has a context. The handshake blocks
        (within the timeout), before the socket is made non-blocking for exchanges."""
        if self._ssl_context is None:
            return sock
        try:
            return self._ssl_context.wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            sock.close()
            raise ConnectionLost(
                f"TLS with {host}:{port} failed: {exc}", maybe_applied=False
            ) from exc

    def _log_in(self) -> None:
        if self._password is not None:
            try:
                self._run_once(_R.auth(self._password))
            except BaseException:
                self._drop()
                raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True while no connection is open (the next call may open one; see the class
        docstring)."""
        return self._sock is None

    def close(self) -> None:
        """Close the connection (the server treats it like QUIT); no call reopens it."""
        self._closed_by_caller = True
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.address = None

    def pipeline(self) -> Pipeline:
        """A pipeline: queue requests, then send them all in one write."""
        return Pipeline(self)

    def _run(self, request: Request[T]) -> T:
        attempts = len(self.addresses) if self._can_reconnect else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._run_once(request)
            except ConnectionLost as exc:
                harmless = request.read_only or not exc.maybe_applied
                if attempt == attempts or not harmless or self._closed_by_caller:
                    raise
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _run_once(self, request: Request[T]) -> T:
        (reply,) = self._exchange([request])
        return request.decode(reply)

    def _exchange(self, requests: Sequence[Request[Any]]) -> list[RawReply]:
        if self._sock is None:
            if self._closed_by_caller or not self._can_reconnect:
                raise ConnectionLost("the connection is closed", maybe_applied=False)
            self._connect()
            assert self._sock is not None
        if not requests:
            return []
        sock = self._sock
        payload = memoryview(b"".join(request.line for request in requests))
        sent = 0
        replies: list[RawReply] = []
        finished = False
        try:
            with selectors.DefaultSelector() as selector:
                # Send and receive together: a long pipeline must not fill both
                # directions' buffers while each side waits for the other.
                selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
                writing = True
                while True:
                    while len(replies) < len(requests):
                        reply = self._parser.next_reply()
                        if reply is None:
                            break
                        replies.append(reply)
                    if len(replies) == len(requests):
                        break
                    if writing and sent == len(payload):
                        selector.modify(sock, selectors.EVENT_READ)
                        writing = False
                    # TLS may hold decrypted bytes the socket no longer signals.
                    if isinstance(sock, ssl.SSLSocket) and sock.pending():
                        mask = selectors.EVENT_READ
                    else:
                        ready = selector.select(self.timeout)
                        if not ready:
                            raise ConnectionLost(f"no reply within {self.timeout} s")
                        _, mask = ready[0]
                    if mask & selectors.EVENT_WRITE and sent < len(payload):
                        with contextlib.suppress(*_WOULD_BLOCK):
                            sent += sock.send(payload[sent : sent + _CHUNK])
                    if mask & selectors.EVENT_READ:
                        try:
                            data = sock.recv(_CHUNK)
                        except _WOULD_BLOCK:
                            continue
                        if not data:
                            raise ConnectionLost(
                                "the server closed the connection", maybe_applied=sent > 0
                            )
                        self._parser.feed(data)
            finished = True
        except OSError as exc:
            raise ConnectionLost(f"connection lost: {exc}") from exc
        except WireError as exc:
            raise ProtocolViolation(str(exc)) from exc
        finally:
            if not finished:
                self._drop()
        return replies

    def create(self, bucket: str) -> None:
        """Make a bucket (no error if it exists)."""
        return self._run(_R.create(bucket))

    def drop(self, bucket: str) -> None:
        """Delete a bucket and its keys. ``NotFound`` if there is no such bucket."""
        return self._run(_R.drop(bucket))

    def put(self, bucket: str, key: Data, value: Data) -> None:
        """Set a key."""
        return self._run(_R.put(bucket, key, value))

    def get(self, bucket: str, key: Data) -> Decoded | None:
        """A key's value (``str`` if UTF-8, else ``bytes``), or None if it is missing."""
        return self._run(_R.get(bucket, key))

    def get_bytes(self, bucket: str, key: Data) -> bytes | None:
        """A key's value as bytes, or None if it is missing."""
        return self._run(_R.get_bytes(bucket, key))

    def delete(self, bucket: str, key: Data) -> None:
        """Remove a key (no error if it is absent)."""
        return self._run(_R.delete(bucket, key))

    def buckets(self) -> list[str]:
        """Every bucket name, in order."""
        return self._run(_R.buckets())

    def keys(self, bucket: str, prefix: Data | None = None) -> list[Decoded]:
        """The bucket's keys (those starting with ``prefix``, if given), in order,
        read in pages (see the module docstring)."""
        pager = _keys_pager(bucket, prefix)
        while not pager.take(self._run(pager.request())):
            pass
        return [_text(k) for k in pager.rows]

    def scan(
        self, bucket: str, start: Data = b"", end: Data | None = None, limit: int | None = None
    ) -> list[tuple[Decoded, Decoded]]:
        """(key, value) pairs with ``start <= key < end`` (no end: to the last), in order,
        at most ``limit`` of them, read in pages (see the module docstring)."""
        pager = _scan_pager(bucket, start, end, limit)
        while not pager.take(self._run(pager.request())):
            pass
        return [(_text(k), _text(v)) for k, v in pager.rows]

    def ping(self) -> None:
        """Check the server answers."""
        return self._run(_R.ping())

    def help(self) -> list[str]:
        """The server's help text."""
        return self._run(_R.help())

    def status(self) -> list[str]:
        """The server's status lines (nodes, ranges, leaders, terms, commit indexes)."""
        return self._run(_R.status())

    def status_info(self) -> NodeStatus:
        """The same facts as ``status``, parsed (``STATUS JSON``)."""
        return self._run(_R.status_info())

    def auth(self, password: Data) -> None:
        """Log in. ``AuthError`` if the password is wrong."""
        return self._run(_R.auth(password))

    def quit(self) -> None:
        """Say goodbye and close the connection."""
        try:
            self._run(_R.quit())
        finally:
            self.close()

    def admin(self, *args: str) -> list[str]:
        """Any ``ADMIN`` command, e.g. ``admin("MOVE", "v-z", "a-g", "e")``: its reply
        lines. The named methods below cover each command."""
        return self._run(_R.admin(*args))

    def nodes(self) -> list[str]:
        """``ADMIN NODES``: one line per node (addresses, reachability, meta role)."""
        return self.admin("NODES")

    def ranges(self) -> list[str]:
        """``ADMIN RANGES``: one line per range (bounds, replicas, buckets, move)."""
        return self.admin("RANGES")

    def moves(self) -> list[str]:
        """``ADMIN MOVES``: the moves in progress (empty when none)."""
        return self.admin("MOVES")

    def add_node(
        self, name: str, node_id: int, host: str, client_port: int, peer_port: int
    ) -> list[str]:
        """``ADMIN ADD-NODE``: register a node (a ``--join`` node does this itself)."""
        return self.admin("ADD-NODE", name, str(node_id), host, str(client_port), str(peer_port))

    def remove_node(self, name: str) -> list[str]:
        """``ADMIN REMOVE-NODE``: move the node's replicas away, then remove it."""
        return self.admin("REMOVE-NODE", name)

    def move_range(self, range_id: str, frm: str, to: str) -> list[str]:
        """``ADMIN MOVE``: move a range's replica from node ``frm`` to node ``to``."""
        return self.admin("MOVE", range_id, frm, to)

    def transfer(self, bucket_or_range: str, node: str) -> list[str]:
        """``ADMIN TRANSFER``: hand leadership of a bucket (or ``range:<id>``) to a node."""
        return self.admin("TRANSFER", bucket_or_range, node)

    def split(self, range_id: str, at: str) -> list[str]:
        """``ADMIN SPLIT``: cut a range in two at a bucket name."""
        return self.admin("SPLIT", range_id, at)

    def send_line(self, line: bytes) -> RawReply:
        """Send one request line exactly as typed (telnet syntax, no line ending) and
        return its reply as framed off the wire, undecoded: nothing is raised for an
        error reply. For tools that pass commands through, such as ``boutique-cli``."""
        if b"\n" in line or b"\r" in line:
            raise ValueError("a request line cannot hold a line break; quote it as \\n")
        return self._run(Request(line + b"\r\n", _raw, read_only=_is_read_only(line)))


# --- the trio client -----------------------------------------------------------------


class AsyncClient:
    """A trio connection to a boutique server; the same methods as ``Client``, awaited.

    Connect with ``async with AsyncClient(host, port) as c`` or ``await c.connect()``;
    ``stream`` lets a caller supply a connected ``trio.abc.Stream`` (tests use memory
    streams). Timeouts are the caller's: wrap calls in ``trio.move_on_after`` or
    ``trio.fail_after``; a call cancelled half-way closes the connection. Calls from
    several tasks are served one at a time, in order.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        password: Data | None = None,
        stream: trio.abc.Stream | None = None,
        max_reply_line: int = DEFAULT_MAX_REPLY_LINE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self._ssl_context = ssl_context
        self.port = port
        self._password = password
        self._stream = stream
        self._closed = False
        self._parser = ReplyParser(max_reply_line)
        self._lock = trio.Lock()

    async def connect(self) -> None:
        """Open the connection (if not given a stream) and log in if a password is set."""
        if self._stream is None and not self._closed:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
                if self._ssl_context is None:
                    self._stream = stream
                else:
                    secure = trio.SSLStream(stream, self._ssl_context, server_hostname=self.host)
                    try:
                        await secure.do_handshake()
                    except trio.BrokenResourceError as exc:
                        await trio.aclose_forcefully(stream)
                        raise ConnectionLost(
                            f"TLS with {self.host}:{self.port} failed: {exc.__cause__ or exc}",
                            maybe_applied=False,
                        ) from exc
                    self._stream = secure
            except OSError as exc:
                raise ConnectionLost(
                    f"cannot connect to {self.host}:{self.port}: {exc}", maybe_applied=False
                ) from exc
        if self._password is not None:
            try:
                await self.auth(self._password)
            except BaseException:
                await self.aclose()
                raise

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Close the connection."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    def pipeline(self) -> AsyncPipeline:
        """A pipeline: queue requests, then send them all in one write."""
        return AsyncPipeline(self)

    async def _run(self, request: Request[T]) -> T:
        (reply,) = await self._exchange([request])
        return request.decode(reply)

    async def _exchange(self, requests: Sequence[Request[Any]]) -> list[RawReply]:
        if not requests:
            return []
        async with self._lock:
            stream = self._stream
            if stream is None:
                raise ConnectionLost("the connection is not open", maybe_applied=False)
            payload = b"".join(request.line for request in requests)
            errors: list[ClientError] = []
            replies: list[RawReply] = []
            finished = False
            try:
                async with trio.open_nursery() as nursery:
                    # Send and receive together (see Client._exchange). Each task turns
                    # its failures into ClientErrors, so the nursery raises no group.
                    nursery.start_soon(self._send, stream, payload, errors, nursery.cancel_scope)
                    try:
                        await self._receive(stream, len(requests), replies)
                    except ClientError as exc:
                        errors.append(exc)
                        nursery.cancel_scope.cancel()
                if errors:
                    raise errors[0]
                finished = True
            finally:
                if not finished:
                    await self.aclose()
            return replies

    @staticmethod
    async def _send(
        stream: trio.abc.Stream,
        payload: bytes,
        errors: list[ClientError],
        scope: trio.CancelScope,
    ) -> None:
        try:
            await stream.send_all(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            errors.append(ConnectionLost(f"connection lost: {exc!r}"))
            scope.cancel()

    async def _receive(self, stream: trio.abc.Stream, count: int, replies: list[RawReply]) -> None:
        try:
            while len(replies) < count:
                reply = self._parser.next_reply()
                if reply is not None:
                    replies.append(reply)
                    continue
                data = await stream.receive_some(_CHUNK)
                if not data:
                    raise ConnectionLost("the server closed the connection")
                self._parser.feed(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"connection lost: {exc!r}") from exc
        except WireError as exc:
            raise ProtocolViolation(str(exc)) from exc

    async def create(self, bucket: str) -> None:
        """Make a bucket (no error if it exists)."""
        return await self._run(_R.create(bucket))

    async def drop(self, bucket: str) -> None:
        """Delete a bucket and its keys. ``NotFound`` if there is no such bucket."""
        return await self._run(_R.drop(bucket))

    async def put(self, bucket: str, key: Data, value: Data) -> None:
        """Set a key."""
        return await self._run(_R.put(bucket, key, value))

    async def get(self, bucket: str, key: Data) -> Decoded | None:
        """A key's value (``str`` if UTF-8, else ``bytes``), or None if it is missing."""
        return await self._run(_R.get(bucket, key))

    async def get_bytes(self, bucket: str, key: Data) -> bytes | None:
        """A key's value as bytes, or None if it is missing."""
        return await self._run(_R.get_bytes(bucket, key))

    async def delete(self, bucket: str, key: Data) -> None:
        """Remove a key (no error if it is absent)."""
        return await self._run(_R.delete(bucket, key))

    async def buckets(self) -> list[str]:
        """Every bucket name, in order."""
        return await self._run(_R.buckets())

    async def keys(self, bucket: str, prefix: Data | None = None) -> list[Decoded]:
        """The bucket's keys (those starting with ``prefix``, if given), in order,
        read in pages (see the module docstring)."""
        pager = _keys_pager(bucket, prefix)
        while not pager.take(await self._run(pager.request())):
            pass
        return [_text(k) for k in pager.rows]

    async def scan(
        self, bucket: str, start: Data = b"", end: Data | None = None, limit: int | None = None
    ) -> list[tuple[Decoded, Decoded]]:
        """(key, value) pairs with ``start <= key < end`` (no end: to the last), in order,
        at most ``limit`` of them, read in pages (see the module docstring)."""
        pager = _scan_pager(bucket, start, end, limit)
        while not pager.take(await self._run(pager.request())):
            pass
        return [(_text(k), _text(v)) for k, v in pager.rows]

    async def ping(self) -> None:
        """Check the server answers."""
        return await self._run(_R.ping())

    async def help(self) -> list[str]:
        """The server's help text."""
        return await self._run(_R.help())

    async def status(self) -> list[str]:
        """The server's status lines (nodes, ranges, leaders, terms, commit indexes)."""
        return await self._run(_R.status())

    async def status_info(self) -> NodeStatus:
        """The same facts as ``status``, parsed (``STATUS JSON``)."""
        return await self._run(_R.status_info())

    async def auth(self, password: Data) -> None:
        """Log in. ``AuthError`` if the password is wrong."""
        return await self._run(_R.auth(password))

    async def quit(self) -> None:
        """Say goodbye and close the connection."""
        try:
            await self._run(_R.quit())
        finally:
            await self.aclose()
