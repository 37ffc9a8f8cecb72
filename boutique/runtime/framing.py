"""Length-prefixed msgpack frames: how values are cut out of a peer byte stream.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack (one
value, packed with ``use_bin_type=True``). A zero-length frame (``KEEPALIVE``) carries
nothing: it only tells the receiver the sender is alive, and ``FrameDecoder`` skips it.

``FrameDecoder`` is fed whatever bytes arrive and hands back every complete value. It
raises ``FrameError`` on a length above its limit or a body that is not exactly one
msgpack value; the stream is then out of step for good and the caller must close the
connection. Memory is bounded: the decoder never buffers more than one frame plus the
last chunk it was fed, and a value's arrays, maps and strings cannot claim more items
than its frame has bytes.

This module never does I/O and never uses pickle (msgpack extension types are refused).
"""

from __future__ import annotations

import struct
from typing import NoReturn

import msgpack  # type: ignore[import-untyped]

__all__ = ["DEFAULT_MAX_FRAME", "KEEPALIVE", "FrameDecoder", "FrameError", "encode_frame"]

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
"""The largest frame body a decoder accepts unless told otherwise (64 MiB)."""

_HEADER = struct.Struct(">I")
_MAX_LENGTH = 2**32 - 1

KEEPALIVE = _HEADER.pack(0)
"""The empty frame: proof of life, no value."""


class FrameError(ValueError):
    """The byte stream is not a sequence of acceptable frames; close the connection."""


def encode_frame(obj: object) -> bytes:
    """One frame holding ``obj``. Raises ``TypeError`` if msgpack cannot encode ``obj``
    and ``FrameError`` if it does not fit a 4-byte length."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > _MAX_LENGTH:
        raise FrameError(f"frame of {len(body)} bytes does not fit a 4-byte length")
    return _HEADER.pack(len(body)) + body


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise FrameError(f"msgpack extension type {code} is not allowed")


class FrameDecoder:
    """Incremental frame parser for one connection.

    ``max_frame`` may be raised after construction: a connection reads its handshake
    with a tiny limit, then lifts it for authenticated traffic.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 < max_frame <= _MAX_LENGTH:
            raise ValueError(f"max_frame must be in 1..{_MAX_LENGTH}, got {max_frame}")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._broken: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def feed(self, data: bytes = b"", *, max_frames: int | None = None) -> list[object]:
        """Add ``data`` and return the values of the frames it completes, in order.

        With ``max_frames`` at most that many are returned and the rest stay buffered
        (``feed()`` with no data picks them up later). Once it has raised ``FrameError``
        the decoder raises it again on every call.
        """
        if self._broken is not None:
            raise self._broken
        buffer = self._buffer
        buffer += data
        frames: list[object] = []
        pos = 0
        try:
            while max_frames is None or len(frames) < max_frames:
                if len(buffer) - pos < _HEADER.size:
                    break
                (length,) = _HEADER.unpack_from(buffer, pos)
                if length > self.max_frame:
                    raise FrameError(f"frame of {length} bytes exceeds limit {self.max_frame}")
                end = pos + _HEADER.size + length
                if len(buffer) < end:
                    break
                if length:
                    frames.append(self._unpack(bytes(buffer[pos + _HEADER.size : end])))
                pos = end
        except FrameError as exc:
            self._broken = exc
            raise
        finally:
            del buffer[:pos]
        return frames

    @staticmethod
    def _unpack(body: bytes) -> object:
        try:
            return msgpack.unpackb(
                body,
                raw=False,
                strict_map_key=False,
                use_list=True,
                ext_hook=_refuse_ext,
            )
        except FrameError:
            raise
        except Exception as exc:
            # msgpack raises ValueError subclasses for bad data, but TypeError for an
            # unhashable map key and others besides: none of them may escape.
            raise FrameError(f"undecodable frame: {type(exc).__name__}") from None
