"""Quoting and escaping: tables of the rules, and properties over every byte string.

The claims (boutique.wire): every byte string round-trips through each form; a rendered
value is one printable line that is never a terminator; only ``WireError`` comes out of
reading bad input.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boutique.wire import (
    WireError,
    is_terminator,
    parse_pair,
    parse_value,
    quote,
    render_arg,
    render_pair,
    render_text,
    render_value,
    request_line,
    split_args,
)
from boutique_server import quoting

TRICKY = [
    b"",
    b" ",
    b"\t",
    b'"',
    b"\\",
    b"OK",
    b"PONG",
    b"NOT",
    b"FOUND",
    b"NOT FOUND",
    b"COMMAND NOT IMPLEMENTED",
    b"ERR",
    b"ERR ",
    b"ERR TIMEOUT lost",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\x04",
    b"\xff",
    b"\xff\xfb\x01",
    "caf\u00e9".encode(),
    "\u0085".encode(),
    "\u2028".encode(),
    "\u00a0".encode(),
    b"\xed\xa0\x80",  # an encoded surrogate: not valid UTF-8
    b"\\x41",
]

# Bytes with the awkward cases over-represented, so properties meet them often.
tricky_bytes = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32).map(str.encode),
    st.lists(st.sampled_from(TRICKY), max_size=6).map(b"".join),
    st.sampled_from(TRICKY),
)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (b"3", b"3"),
        (b"buy milk", b"buy milk"),  # inner blanks stay bare: the whole line is the value
        (b'say "hi"', b'say "hi"'),
        (b"C:\\tmp", b"C:\\tmp"),  # backslash is only special inside quotes
        ("caf\u00e9".encode(), "caf\u00e9".encode()),
        (b"", b'""'),  # distinct from the empty line of a missing key
        (b'"quoted"', b'"\\"quoted\\""'),
        (b" lead", b'" lead"'),
        (b"trail ", b'"trail "'),
        (b"OK", b'"OK"'),
        (b"PONG", b'"PONG"'),
        (b"NOT FOUND", b'"NOT FOUND"'),
        (b"COMMAND NOT IMPLEMENTED", b'"COMMAND NOT IMPLEMENTED"'),
        (b"ERR TIMEOUT x", b'"ERR TIMEOUT x"'),
        (b"ERR", b'"ERR"'),
        (b"ok", b"ok"),  # terminators are upper case only
        (b"ERRATA", b"ERRATA"),
        (b"a\nb", b'"a\\nb"'),
        (b"a\r\n", b'"a\\r\\n"'),
        (b"tab\there", b'"tab\\there"'),
        (b"\x00\x7f", b'"\\x00\\x7f"'),
        (b"\xff", b'"\\xff"'),
        (b"\xc3", b'"\\xc3"'),  # a truncated UTF-8 sequence
        ("\u0085".encode(), b'"\\xc2\\x85"'),  # NEL: valid UTF-8, not printable
        ("caf\u00e9\n".encode(), '"caf\u00e9\\n"'.encode()),
    ],
)
def test_value_form(value: bytes, written: bytes) -> None:
    assert render_value(value) == written
    assert parse_value(written) == value


@pytest.mark.parametrize(
    ("arg", "written"),
    [
        (b"eggs", b"eggs"),
        (b'a"b', b'a"b'),
        (b"a b", b'"a b"'),
        (b"", b'""'),
        (b'"x', b'"\\"x"'),
        (b"a\tb", b'"a\\tb"'),
        (b"OK", b"OK"),  # an argument alone is never a whole reply line
    ],
)
def test_argument_form(arg: bytes, written: bytes) -> None:
    assert render_arg(arg) == written
    assert split_args(written) == [arg]


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        (b"eggs", b"3", b"eggs 3"),
        (b"note", b"buy milk", b'note "buy milk"'),
        (b"NOT", b"FOUND", b'"NOT" FOUND'),  # would read as the NOT FOUND terminator
        (b"ERR", b"x", b'"ERR" x'),
        (b"OK", b"OK", b"OK OK"),
        (b"", b"", b'"" ""'),
    ],
)
def test_pair_form(key: bytes, value: bytes, line: bytes) -> None:
    assert render_pair(key, value) == line
    assert parse_pair(line) == (key, value)
    assert not is_terminator(line)


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"GET shopping eggs", [b"GET", b"shopping", b"eggs"]),
        (b"  GET\t shopping  eggs \t", [b"GET", b"shopping", b"eggs"]),
        (b'PUT b k "buy milk"', [b"PUT", b"b", b"k", b"buy milk"]),
        (b'PUT b "" ""', [b"PUT", b"b", b"", b""]),
        (b'"a"\t"b"', [b"a", b"b"]),
        (b'x "\\" \\\\ \\n \\r \\t"', [b"x", b'" \\ \n \r \t']),
        (b'"\\x00\\xff\\xAb"', [b"\x00\xff\xab"]),
        (b'a"b c"', [b'a"b', b'c"']),  # a quote opens a quoted argument only at its start
        (b"C:\\tmp\\new", [b"C:\\tmp\\new"]),
        (b"", []),
        (b" \t ", []),
        (b"\xff\x00", [b"\xff\x00"]),
    ],
)
def test_split_args(line: bytes, args: list[bytes]) -> None:
    assert split_args(line) == args


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'PUT b k "buy milk', "unterminated quote"),
        (b'"abc\\', "unterminated quote"),
        (b'"abc\\"', "unterminated quote"),
        (b'"a\\q"', "unknown escape \\q"),
        (b'"a\\\x01"', "unknown escape \\ before byte 0x01"),
        (b'"\\x4"', "\\x must be followed by two hex digits"),
        (b'"\\xZZ"', "\\x must be followed by two hex digits"),
        (b'"a"b', "a closing quote must be followed by a blank"),
    ],
)
def test_split_args_errors(line: bytes, message: str) -> None:
    with pytest.raises(WireError, match="^" + message.replace("\\", "\\\\")):
        split_args(line)


def test_text_form_keeps_indentation_and_blank_lines() -> None:
    assert render_text(b"  PING   PONG") == b"  PING   PONG"
    assert render_text(b"") == b""
    assert render_text(b"OK") == b'"OK"'
    assert render_text(b'"quoted" start') == b'"\\"quoted\\" start"'
    assert render_text(b"bell\x07") == b'"bell\\x07"'


def test_server_reexports_the_one_grammar() -> None:
    assert quoting.render_value is render_value
    assert quoting.split_args is split_args
    assert quoting.quote is quote


@given(tricky_bytes)
def test_quote_round_trips_every_byte_string(data: bytes) -> None:
    quoted = quote(data)
    assert split_args(quoted) == [data]
    assert parse_value(quoted) == data


@given(tricky_bytes)
def test_value_form_round_trips_and_is_one_safe_line(data: bytes) -> None:
    line = render_value(data)
    assert parse_value(line) == data
    assert line != b""  # the empty line is reserved for a missing key
    assert not is_terminator(line)
    assert b"\r" not in line and b"\n" not in line
    assert b"\xff" not in line  # never a telnet IAC on the wire
    assert line.decode().isprintable()


@given(tricky_bytes)
def test_argument_form_round_trips(data: bytes) -> None:
    line = render_arg(data)
    assert split_args(line) == [data]
    assert line.decode().isprintable()


@given(tricky_bytes, tricky_bytes)
def test_pair_form_round_trips_and_is_never_a_terminator(key: bytes, value: bytes) -> None:
    line = render_pair(key, value)
    assert parse_pair(line) == (key, value)
    assert not is_terminator(line)
    assert line.decode().isprintable()


@given(st.text(max_size=40))
def test_text_form_round_trips(text: str) -> None:
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # lone surrogates are not text
        return
    line = render_text(raw)
    assert parse_value(line) == raw
    assert not is_terminator(line)
    assert line.decode().isprintable()


@given(st.lists(tricky_bytes, max_size=5))
def test_request_lines_split_back_into_their_arguments(args: list[bytes]) -> None:
    line = request_line(b"PUT", *args)
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    assert split_args(line[:-2]) == [b"PUT", *args]


@given(tricky_bytes)
def test_reading_arbitrary_bytes_raises_only_wire_errors(line: bytes) -> None:
    for read in (split_args, parse_value, parse_pair):
        with contextlib.suppress(WireError):
            read(line)
