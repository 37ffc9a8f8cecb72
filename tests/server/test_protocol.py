"""The sans-I/O line protocol: request bytes to events, replies to bytes.

Tables for every command and every rule of the wire contract (DESIGN.md), the
D-Boutique transcript byte for byte, and hypothesis properties: arbitrary bytes in any
chunking never raise, give the same events, and never buffer more than ``max_line``.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boutique.wire import ErrorCode, is_terminator
from boutique_server.commands import (
    MAX_KEY_BYTES,
    Auth,
    Buckets,
    Command,
    Create,
    Delete,
    Drop,
    Get,
    Help,
    Keys,
    Ping,
    Put,
    Quit,
    Scan,
    Status,
)
from boutique_server.protocol import (
    Error,
    Event,
    LineParser,
    LocalProtocolError,
    NotFound,
    NotImplemented_,
    Ok,
    Pairs,
    Pong,
    ProtocolError,
    Reply,
    Text,
    Value,
    Values,
    render,
)

IAC, WILL, WONT, DO, DONT, SB, SE, IP, BRK, NOP = 255, 251, 252, 253, 254, 250, 240, 244, 243, 241


def events_of(data: bytes, **options: int | bool) -> list[Event]:
    parser = LineParser(**options)  # type: ignore[arg-type]
    parser.feed(data)
    return list(parser.events())


def byte_by_byte(data: bytes, **options: int | bool) -> list[Event]:
    parser = LineParser(**options)  # type: ignore[arg-type]
    events: list[Event] = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        events.extend(parser.events())
    return events


def one(line: bytes) -> Event:
    events = events_of(line + b"\r\n")
    assert len(events) == 1, events
    return events[0]


def reply_bytes(event: Event) -> bytes:
    assert isinstance(event, ProtocolError), event
    return event.data


NOT_IMPLEMENTED = b"COMMAND NOT IMPLEMENTED\r\n"


# --- commands ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"CREATE shopping", Create("shopping")),
        (b"DROP shopping", Drop("shopping")),
        (b"PUT shopping eggs 3", Put("shopping", b"eggs", b"3")),
        (b"GET shopping eggs", Get("shopping", b"eggs")),
        (b"DELETE shopping eggs", Delete("shopping", b"eggs")),
        (b"BUCKETS", Buckets()),
        (b"KEYS shopping", Keys("shopping", None)),
        (b"KEYS shopping eg", Keys("shopping", b"eg")),
        (b'KEYS shopping ""', Keys("shopping", b"")),
        (b"SCAN shopping a z", Scan("shopping", b"a", b"z", None)),
        (b"SCAN shopping a z 10", Scan("shopping", b"a", b"z", 10)),
        (b'SCAN shopping "" ""', Scan("shopping", b"", None, None)),
        (b'SCAN shopping m "" 007', Scan("shopping", b"m", None, 7)),
        (b"PING", Ping()),
        (b"HELP", Help()),
        (b"QUIT", Quit()),
        (b"STATUS", Status()),
        (b"AUTH s3cret", Auth(b"s3cret")),
        (b'PUT shopping note "buy milk\\n"', Put("shopping", b"note", b"buy milk\n")),
        (b'PUT shopping "a key" ""', Put("shopping", b"a key", b"")),
        (b'PUT shopping bin "\\x00\\xff"', Put("shopping", b"bin", b"\x00\xff")),
        (b"PUT shopping raw \xc3\x28\x01", Put("shopping", b"raw", b"\xc3\x28\x01")),
        (
            "PUT caf\u00e9 cl\u00e9 \u20ac".encode(),
            Put("caf\u00e9", "cl\u00e9".encode(), b"\xe2\x82\xac"),
        ),
        (b"  PING  ", Ping()),
        (b"\tGET\tb\tk", Get("b", b"k")),
    ],
)
def test_every_command_parses(line: bytes, command: Command) -> None:
    assert one(line) == command


@pytest.mark.parametrize("name", [b"get", b"Get", b"gEt", b'"GET"'])
def test_command_names_are_case_insensitive(name: bytes) -> None:
    assert one(name + b" shopping eggs") == Get("shopping", b"eggs")


def test_arguments_keep_their_case() -> None:
    assert one(b"put Shopping Eggs Three") == Put("Shopping", b"Eggs", b"Three")


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_lf_and_crlf_both_end_a_line(ending: bytes) -> None:
    data = b"CREATE shopping" + ending + b"PING" + ending
    assert events_of(data) == [Create("shopping"), Ping()]


def test_a_cr_inside_a_line_is_data() -> None:
    assert events_of(b"PUT b k v\rw\r\n") == [Put("b", b"k", b"v\rw")]


@pytest.mark.parametrize(
    "line",
    [
        b"FROB",
        b"CREATE",
        b"CREATE a b",
        b"PUT b k",
        b"PUT b k v w",  # a value with blanks must be quoted
        b"GET b",
        b"GET b k extra",
        b"DELETE b",
        b"DROP",
        b"BUCKETS x",
        b"KEYS",
        b"KEYS b p q 1 2",  # the start and limit of a page are the most
        b"SCAN b a",
        b"SCAN b a z 1 2",
        b"PING x",
        b"QUIT now",
        b"AUTH",
        b"\xfe\xfd",
        "G\u00c9T b k".encode(),
    ],
)
def test_unknown_command_or_wrong_arity_is_not_implemented(line: bytes) -> None:
    event = one(line)
    assert isinstance(event, ProtocolError)
    assert event.reply == NotImplemented_()
    assert event.data == NOT_IMPLEMENTED
    assert event.detail  # a reason for the logs, never sent


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b'PUT b k "unterminated', b"ERR SYNTAX unterminated quote\r\n"),
        (b'PUT b k "a"b', b"ERR SYNTAX a closing quote must be followed by a blank\r\n"),
        (b'PUT b k "\\q"', b"ERR SYNTAX unknown escape \\q (write \\\\ for a backslash)\r\n"),
        (b'FROB "x', b"ERR SYNTAX unterminated quote\r\n"),  # the line is read before the name
    ],
)
def test_malformed_quotes_are_syntax_errors(line: bytes, reply: bytes) -> None:
    assert reply_bytes(one(line)) == reply


NAME_RULE = b"ERR SYNTAX a bucket name is 1-255 bytes of printable UTF-8 without blanks\r\n"


@pytest.mark.parametrize(
    "bucket",
    [
        b'""',
        b'"a b"',
        b'"tab\\there"',
        b"bad\xfe",
        b"ctl\x01",
        b'"nel\\xc2\\x85"',
        b"x" * 256,
        "\u00e9".encode() * 128,  # 256 bytes
    ],
)
def test_bucket_names_follow_the_rule(bucket: bytes) -> None:
    assert reply_bytes(one(b"CREATE " + bucket)) == NAME_RULE
    assert reply_bytes(one(b"GET " + bucket + b" k")) == NAME_RULE


@pytest.mark.parametrize(
    "bucket", [b"a", b"x" * 255, "\u00e9".encode() * 127, b"a-g", b"OK", b"\xe2\x82\xac", b'a"b']
)
def test_valid_bucket_names(bucket: bytes) -> None:
    assert one(b"CREATE " + bucket) == Create(bucket.decode())


def test_key_length_limit() -> None:
    assert one(b"GET b " + b"k" * MAX_KEY_BYTES) == Get("b", b"k" * MAX_KEY_BYTES)
    too_long = b"k" * (MAX_KEY_BYTES + 1)
    for line in (
        b"GET b " + too_long,
        b"PUT b " + too_long + b" v",
        b"KEYS b " + too_long,
        b"SCAN b " + too_long + b"k z",
        b"KEYS b p " + too_long + b"k",
    ):
        assert reply_bytes(one(line)).startswith(b"ERR TOOLONG ")
    # A start may be one byte longer than a key: the last key of a page + \x00.
    start = b"k" * MAX_KEY_BYTES + b"\0"
    assert one(b'SCAN b "' + b"k" * MAX_KEY_BYTES + b'\\x00" ""') == Scan("b", start, None)


@pytest.mark.parametrize(
    "limit", [b"0", b"-1", b"x", b"1.5", b"1e3", b"9" * 10, b"9" * 5000, b'""']
)
def test_scan_limit_must_be_a_small_positive_number(limit: bytes) -> None:
    assert reply_bytes(one(b"SCAN b a z " + limit)).startswith(b"ERR SYNTAX limit ")


def test_values_may_be_long_and_hold_any_byte() -> None:
    value = bytes(range(256)) * 40
    line = b"PUT b k " + b'"' + b"".join(b"\\x%02x" % c for c in value) + b'"'
    assert one(line) == Put("b", b"k", value)


def test_auth_does_not_show_the_password() -> None:
    assert "s3cret" not in repr(one(b"AUTH s3cret"))


# --- lines ---------------------------------------------------------------------------


def test_blank_lines_are_ignored() -> None:
    assert events_of(b"\r\n\n  \t \r\nPING\n\n") == [Ping()]


def test_pipelined_requests_come_out_in_order() -> None:
    data = b'CREATE s\r\nPUT s k 1\r\nFROB\r\nGET s k\r\nPUT s "x\r\nPING\r\n'
    events = events_of(data)
    assert [type(e).__name__ for e in events] == [
        "Create",
        "Put",
        "ProtocolError",
        "Get",
        "ProtocolError",
        "Ping",
    ]


def test_a_half_sent_line_waits_for_the_rest() -> None:
    parser = LineParser()
    parser.feed(b"PUT shopping eg")
    assert list(parser.events()) == []
    assert parser.buffered == len(b"PUT shopping eg")
    parser.feed(b"gs 3\r")
    assert list(parser.events()) == []
    parser.feed(b"\nGET shopping eggs")
    assert list(parser.events()) == [Put("shopping", b"eggs", b"3")]
    parser.feed(b"\n")
    assert list(parser.events()) == [Get("shopping", b"eggs")]
    assert parser.buffered == 0


def toolong(max_line: int) -> ProtocolError:
    message = f"line longer than {max_line} bytes"
    return ProtocolError(Error(ErrorCode.TOOLONG, message), message)


def test_a_line_of_exactly_max_line_bytes_is_fine_with_either_ending() -> None:
    line = b"PUT b k " + b"v" * 8  # 16 bytes
    assert events_of(line + b"\n", max_line=16) == [Put("b", b"k", b"v" * 8)]
    assert events_of(line + b"\r\n", max_line=16) == [Put("b", b"k", b"v" * 8)]
    assert byte_by_byte(line + b"\r\n", max_line=16) == [Put("b", b"k", b"v" * 8)]
    assert events_of(line + b"v\n", max_line=16) == [toolong(16)]


def test_toolong_is_answered_once_and_the_next_line_still_parses() -> None:
    parser = LineParser(max_line=16)
    parser.feed(b"PING\nPUT b k " + b"v" * 20)
    assert list(parser.events()) == [Ping(), toolong(16)]
    assert parser.buffered == 0
    for _ in range(100):  # the rest of the long line is dropped, not buffered
        parser.feed(b"v" * 1000)
        assert parser.buffered == 0
        assert list(parser.events()) == []
    parser.feed(b"vvv\r\nGET b k\r\n")
    assert list(parser.events()) == [Get("b", b"k")]
    assert toolong(16).data == b"ERR TOOLONG line longer than 16 bytes\r\n"


def test_toolong_in_one_feed_keeps_place() -> None:
    data = b"PING\r\n" + b"x" * 100 + b"\r\nPING\r\n" + b"y" * 17 + b"\nGET b k\n"
    assert events_of(data, max_line=16) == [
        Ping(),
        toolong(16),
        Ping(),
        toolong(16),
        Get("b", b"k"),
    ]


def test_default_max_line_is_64_kib() -> None:
    value = b"v" * (65536 - len(b"PUT b k "))
    assert events_of(b"PUT b k " + value + b"\r\n") == [Put("b", b"k", value)]
    assert reply_bytes(events_of(b"PUT b k " + value + b"v\r\n")[0]).startswith(b"ERR TOOLONG")


# --- ending a session ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"quit\r\n",
        b"\x04",  # Ctrl-D sent at once by a telnet in character mode
        b"\x04\r\n",
        b"  \x04  \n",
        bytes([IAC, IP]),
        bytes([IAC, BRK]),
        b"PUT b k half" + bytes([IAC, IP]),  # the half line is dropped
    ],
)
def test_the_session_ends_with_a_quit_event(data: bytes) -> None:
    parser = LineParser()
    parser.feed(b"PING\n" + data)
    assert list(parser.events()) == [Ping(), Quit()]
    assert parser.ended
    parser.feed(b"PING\nGET b k\n")  # after QUIT nothing more is read
    assert list(parser.events()) == []
    assert parser.buffered == 0


def test_ctrl_d_inside_a_line_is_data() -> None:
    assert events_of(b"PUT b k a\x04\n") == [Put("b", b"k", b"a\x04")]


# --- telnet --------------------------------------------------------------------------

NEGOTIATION = bytes(
    [
        *(IAC, DO, 3, IAC, WILL, 24, IAC, WONT, 32, IAC, DONT, 1, IAC, NOP),
        *(IAC, SB, 31, 0, 80, 0, IAC, IAC, IAC, SE),  # NAWS with a doubled 255 inside
        *(IAC, SB, 24, 0, *b"xterm", IAC, SE),
    ]
)


def test_telnet_negotiation_is_stripped() -> None:
    data = NEGOTIATION + b"CREATE shopping\r\nPUT shop" + NEGOTIATION + b"ping eggs 3\r\n"
    expected = [Create("shopping"), Put("shopping", b"eggs", b"3")]
    assert events_of(data) == expected
    assert byte_by_byte(data) == expected


def test_telnet_sequences_split_at_every_position() -> None:
    data = b"PING\r\n" + NEGOTIATION + b"GET b k\r\n"
    for cut in range(len(data) + 1):
        parser = LineParser()
        parser.feed(data[:cut])
        parser.feed(data[cut:])
        assert list(parser.events()) == [Ping(), Get("b", b"k")], cut


def test_iac_iac_is_a_literal_ff() -> None:
    assert events_of(b"PUT b k a\xff\xffb\n") == [Put("b", b"k", b"a\xffb")]


def test_telnet_cr_nul_ends_a_line() -> None:
    assert events_of(b"PING\r\x00GET b k\r\x00") == [Ping(), Get("b", b"k")]
    assert byte_by_byte(b"PING\r\x00GET b k\r\x00") == [Ping(), Get("b", b"k")]


def test_a_stray_subnegotiation_gives_up_and_the_session_recovers() -> None:
    parser = LineParser(max_line=64)
    parser.feed(bytes([IAC, SB]) + b"z" * 5000 + b"\nPING\n")
    events = list(parser.events())
    assert events[-1] == Ping()


def test_without_telnet_0xff_is_data() -> None:
    data = b"PUT b k \xff\xfb\x01\n"
    assert events_of(data, telnet=False) == [Put("b", b"k", b"\xff\xfb\x01")]
    (event,) = events_of(b"\xff\xf4PING\n", telnet=False)  # no interrupt: an unknown name
    assert reply_bytes(event) == NOT_IMPLEMENTED


# --- replies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "data"),
    [
        (Ok(), b"OK\r\n"),
        (Value(b"3"), b"3\r\nOK\r\n"),
        (Value(None), b"\r\nOK\r\n"),
        (Value(b""), b'""\r\nOK\r\n'),
        (Value("caf\u00e9"), "caf\u00e9\r\nOK\r\n".encode()),
        (Value(b"OK"), b'"OK"\r\nOK\r\n'),
        (Value(b"a\r\nb"), b'"a\\r\\nb"\r\nOK\r\n'),
        (Values([]), b"OK\r\n"),
        (Values(["a-g", "shopping", "OK"]), b'a-g\r\nshopping\r\n"OK"\r\nOK\r\n'),
        (Values([b"", b"a b"]), b'""\r\na b\r\nOK\r\n'),
        (Pairs([(b"eggs", b"3"), (b"note", b"buy milk")]), b'eggs 3\r\nnote "buy milk"\r\nOK\r\n'),
        (Pairs([]), b"OK\r\n"),
        (NotFound(), b"NOT FOUND\r\n"),
        (NotImplemented_(), b"COMMAND NOT IMPLEMENTED\r\n"),
        (Pong(), b"PONG\r\n"),
        (
            Error(ErrorCode.UNAVAILABLE, "no leader for a-g"),
            b"ERR UNAVAILABLE no leader for a-g\r\n",
        ),
        (Error(ErrorCode.TIMEOUT), b"ERR TIMEOUT\r\n"),
        (Error(ErrorCode.BUSY, "two\nlines\x00"), b"ERR BUSY two\\nlines\\x00\r\n"),
        (Text(["node a", "  range a-g", "", "OK"]), b'node a\r\n  range a-g\r\n\r\n"OK"\r\nOK\r\n'),
    ],
)
def test_render(reply: Reply, data: bytes) -> None:
    assert render(reply) == data


def test_render_refuses_what_the_protocol_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError):
        render(Error("NOPE", "x"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        render(Value(3))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        render(Text(["\udc80"]))
    with pytest.raises(LocalProtocolError):
        render("OK")  # type: ignore[arg-type]


def test_error_codes_say_whether_the_command_may_have_been_applied() -> None:
    assert {code for code in ErrorCode if code.maybe_applied} == {ErrorCode.TIMEOUT}
    assert render(Error("BUSY", "full")) == b"ERR BUSY full\r\n"  # type: ignore[arg-type]


def test_protocol_error_replies_are_single_terminator_lines() -> None:
    for line in [b"FROB", b'PUT b k "x', b"CREATE \xff", b"SCAN b a z q", b"GET b " + b"k" * 5000]:
        data = reply_bytes(one(line))
        assert data.endswith(b"\r\n") and data.count(b"\n") == 1
        assert is_terminator(data[:-2])


# --- the D-Boutique transcript -------------------------------------------------------


def execute(store: dict[str, dict[bytes, bytes]], command: Command) -> Reply:
    """A one-node stand-in for the server, enough for the transcript."""
    match command:
        case Create(bucket):
            store.setdefault(bucket, {})
            return Ok()
        case Put(bucket, key, value) if bucket in store:
            store[bucket][key] = value
            return Ok()
        case Get(bucket, key) if bucket in store:
            return Value(store[bucket].get(key))
        case Delete(bucket, key) if bucket in store:
            store[bucket].pop(key, None)
            return Ok()
        case Put() | Get() | Delete():
            return NotFound()
    raise AssertionError(command)


def serve(data: bytes, chunk: int) -> bytes:
    parser = LineParser()
    store: dict[str, dict[bytes, bytes]] = {}
    out = b""
    for i in range(0, len(data), chunk):
        parser.feed(data[i : i + chunk])
        for event in parser.events():
            out += event.data if isinstance(event, ProtocolError) else render(execute(store, event))
    return out


TRANSCRIPT = [
    (b"GET shopping eggs\r\n", b"NOT FOUND\r\n"),
    (b"CREATE shopping\r\n", b"OK\r\n"),
    (b"PUT shopping eggs 3\r\n", b"OK\r\n"),
    (b"GET shopping eggs\r\n", b"3\r\nOK\r\n"),
    (b"DELETE shopping eggs\r\n", b"OK\r\n"),
    (b"GET shopping eggs\r\n", b"\r\nOK\r\n"),
    (b"FROB shopping\r\n", b"COMMAND NOT IMPLEMENTED\r\n"),
]


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_d_boutique_transcript_byte_for_byte(chunk: int) -> None:
    requests = b"".join(request for request, _ in TRANSCRIPT)
    assert serve(requests, chunk) == b"".join(reply for _, reply in TRANSCRIPT)


def test_d_boutique_transcript_with_bare_lf() -> None:
    requests = b"".join(request.replace(b"\r\n", b"\n") for request, _ in TRANSCRIPT)
    assert serve(requests, 7) == b"".join(reply for _, reply in TRANSCRIPT)


# --- properties ----------------------------------------------------------------------

# Fragments that exercise every state: line endings, quotes, escapes, telnet commands.
FRAGMENTS = [
    b"\n",
    b"\r",
    b"\r\n",
    b"\x00",
    b"\x04",
    b" ",
    b"\t",
    b'"',
    b"\\",
    b"\\x",
    b"ff",
    bytes([IAC]),
    bytes([IAC, IAC]),
    bytes([IAC, SB]),
    bytes([IAC, SE]),
    bytes([IAC, WILL]),
    bytes([IAC, IP]),
    bytes([IAC, NOP]),
    b"PUT b k ",
    b"GET b k",
    b"SCAN b a z ",
    b"QUIT",
    b"CREATE ",
    b"x" * 20,
    b"\xc3",
]

streams = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=5)), max_size=40).map(
        b"".join
    ),
)


def feed_in_chunks(data: bytes, cuts: list[int], max_line: int, telnet: bool) -> list[Event]:
    parser = LineParser(max_line=max_line, telnet=telnet)
    events: list[Event] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        parser.feed(data[start:cut])
        start = max(start, cut)
        assert parser.buffered <= max_line
        events.extend(parser.events())
    return events


@settings(max_examples=300)
@given(
    data=streams,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    max_line=st.integers(min_value=1, max_value=40),
    telnet=st.booleans(),
)
def test_any_bytes_in_any_chunks_give_the_same_events_and_never_raise(
    data: bytes, cuts: list[int], max_line: int, telnet: bool
) -> None:
    whole = feed_in_chunks(data, [], max_line, telnet)
    assert feed_in_chunks(data, cuts, max_line, telnet) == whole
    for event in whole:
        if isinstance(event, ProtocolError):
            line = event.data
            assert line.endswith(b"\r\n") and line.count(b"\n") == 1
            assert is_terminator(line[:-2])
        else:
            assert isinstance(event, Command)
    assert Quit() not in whole[:-1]  # nothing is produced after a Quit


@given(streams)
def test_one_byte_at_a_time_gives_the_same_events(data: bytes) -> None:
    assert byte_by_byte(data, max_line=32) == events_of(data, max_line=32)


def test_the_package_exports_the_protocol_api() -> None:
    # Run the file itself: an editable install may see the package as a namespace.
    import boutique_server.protocol

    init = Path(boutique_server.protocol.__file__).with_name("__init__.py")
    namespace = runpy.run_path(str(init))
    assert namespace["__doc__"]
    for name in namespace["__all__"]:
        assert name in namespace, name
    assert namespace["LineParser"] is LineParser
    assert namespace["render"] is render
