"""Length-prefixed msgpack frames: split anywhere, bounded, and loud about garbage."""

from __future__ import annotations

import contextlib
import struct

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boutique.runtime.framing import KEEPALIVE, FrameDecoder, FrameError, encode_frame

values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.text(max_size=10),
        st.binary(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


def test_frame_layout() -> None:
    assert encode_frame([1, b"x"]) == b"\x00\x00\x00\x05" + b"\x92\x01\xc4\x01x"
    assert KEEPALIVE == b"\x00\x00\x00\x00"


def test_whole_frames_come_back_in_order() -> None:
    decoder = FrameDecoder()
    data = b"".join(encode_frame(i) for i in range(100))
    assert decoder.feed(data) == list(range(100))
    assert decoder.buffered == 0


def test_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    data = encode_frame({"a": [1, 2]}) + KEEPALIVE + encode_frame(b"\x00" * 300) + encode_frame("z")
    out: list[object] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert out == [{"a": [1, 2]}, b"\x00" * 300, "z"]
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(values, max_size=10), st.data())
def test_any_split_gives_the_same_frames(frames: list[object], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(v) for v in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    out: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    assert out == frames
    assert decoder.buffered == 0


def test_keepalives_are_skipped() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(KEEPALIVE * 3) == []
    assert decoder.feed(KEEPALIVE + encode_frame(None) + KEEPALIVE) == [None]


def test_max_frames_leaves_the_rest_buffered() -> None:
    decoder = FrameDecoder(max_frame=16)
    big = encode_frame(b"y" * 100)
    assert decoder.feed(encode_frame(1) + big, max_frames=1) == [1]
    decoder.max_frame = 1000
    assert decoder.feed() == [b"y" * 100]


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=1024)
    assert decoder.feed(encode_frame(b"a" * 1000)) == [b"a" * 1000]
    with pytest.raises(FrameError):
        decoder.feed(struct.pack(">I", 1025))
    # Broken for good: the stream is out of step.
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(1))


def test_http_request_is_refused() -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used byte
        b"\x92\x01",  # truncated array
        b"\x01\x02",  # two values in one frame
        b"\x81\x91\x01\x02",  # map keyed by an array: unhashable
        msgpack.packb(msgpack.ExtType(5, b"x")),
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than msgpack's stack
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G items
    ],
    ids=repr,
)
def test_undecodable_bodies_raise_frame_error(body: bytes) -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_frame_error(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=4096)
    try:
        decoder.feed(data)
    except FrameError:
        return
    assert decoder.buffered <= 4 + 4096


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_garbage_bodies_raise_only_frame_error(body: bytes) -> None:
    with contextlib.suppress(FrameError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_encode_refuses_what_msgpack_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode_frame(object())


def test_max_frame_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=0)
