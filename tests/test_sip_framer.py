"""The TCP/TLS stream framer (sipguard/sip/framer.py): whole, byte by byte, random cuts."""

from __future__ import annotations

import contextlib
import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipguard.sip.errors import MessageTooLarge, SipError
from sipguard.sip.framer import StreamFramer
from sipguard.sip.message import parse_message


def sip(n: int, body: bytes = b"", clen_header: str = "Content-Length") -> bytes:
    head = (
        f"OPTIONS sip:bob@example.org SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP client.example.com;branch=z9hG4bK{n}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag={n}\r\n"
        f"To: <sip:bob@example.org>\r\n"
        f"Call-ID: call-{n}\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        f"{clen_header}: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


MESSAGES = [
    sip(1),
    sip(2, b"v=0\r\n\r\n\r\nbody with CRLFCRLF inside\r\n\r\n"),
    sip(3, b"x" * 300, "l"),
    sip(4, b"\x00\r\n", "content-length"),
    sip(5, b"", "Content-Length  "),
]
STREAM = b"".join(MESSAGES)


def feed_all(chunks: list[bytes], framer: StreamFramer | None = None) -> list[bytes]:
    framer = framer or StreamFramer()
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_whole() -> None:
    assert feed_all([STREAM]) == MESSAGES


def test_byte_by_byte() -> None:
    assert feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == MESSAGES


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_random_cuts(points: list[int]) -> None:
    assert feed_all(cut(STREAM, points)) == MESSAGES


def test_framed_messages_parse() -> None:
    for data in feed_all([STREAM]):
        parse_message(data, datagram=False).validate()


def test_trailing_bytes_wait_for_the_rest() -> None:
    framer = StreamFramer()
    partial = MESSAGES[1][:-5]
    assert framer.feed(MESSAGES[0] + partial) == [MESSAGES[0]]
    assert framer.buffered == len(partial)
    assert framer.feed(b"") == []
    assert framer.feed(MESSAGES[1][-5:]) == [MESSAGES[1]]
    assert framer.buffered == 0


def test_header_section_then_body_later() -> None:
    framer = StreamFramer()
    msg = MESSAGES[2]
    split = msg.index(b"\r\n\r\n") + 4
    assert framer.feed(msg[:split]) == []
    assert framer.feed(msg[split:-1]) == []
    assert framer.feed(msg[-1:]) == [msg]


# -- keep-alives (RFC 5626 §4.4.1, RFC 3261 §7.5) ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "pings", "messages"),
    [
        (b"\r\n\r\n", 1, []),
        (b"\r\n\r\n\r\n\r\n", 2, []),
        (b"\r\n", 0, []),  # a lone CRLF is a pong, not a ping
        (b"\r\n\r\n" + MESSAGES[0] + b"\r\n\r\n" + MESSAGES[1], 2, MESSAGES[:2]),
        (MESSAGES[0] + b"\r\n" + MESSAGES[1] + b"\r\n", 0, MESSAGES[:2]),
    ],
)
def test_keep_alives_whole_and_byte_by_byte(data: bytes, pings: int, messages: list[bytes]) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))], cut(data, [1, 3])):
        framer = StreamFramer()
        assert feed_all(chunks, framer) == messages
        assert framer.pings == pings, chunks
        assert framer.buffered == 0


def test_pings_counted_as_they_complete() -> None:
    framer = StreamFramer()
    for byte in b"\r\n\r":
        assert framer.feed(bytes([byte])) == []
    assert framer.pings == 0
    framer.feed(b"\n")
    assert framer.pings == 1
    framer.feed(b"\r\n")
    framer.feed(MESSAGES[0])  # a message in between starts the count again
    framer.feed(b"\r\n")
    assert framer.pings == 1
    framer.feed(b"\r\n")
    assert framer.pings == 2


def test_half_crlf_then_message() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n" + MESSAGES[0]) == [MESSAGES[0]]


# -- errors ------------------------------------------------------------------------------------


def test_missing_content_length_is_a_framing_error() -> None:
    data = MESSAGES[0].replace(b"Content-Length: 0\r\n", b"")
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        with pytest.raises(SipError) as info:
            feed_all(chunks)
        assert info.value.status is None
        assert not isinstance(info.value, MessageTooLarge)


@pytest.mark.parametrize(
    "values",
    [[b"-1"], [b"x"], [b"1", b"2"], [b"99999999999"], [b"1 2"], [b"\xb2"], ["\u00b2".encode()]],
)
def test_bad_content_length_is_a_framing_error(values: list[bytes]) -> None:
    head = MESSAGES[0].replace(b"Content-Length: 0\r\n", b"")
    extra = b"".join(b"Content-Length: " + v + b"\r\n" for v in values)
    data = head[:-2] + extra + b"\r\n"
    with pytest.raises(SipError) as info:
        StreamFramer().feed(data)
    assert info.value.status is None


def test_equal_content_lengths_are_fine() -> None:
    data = MESSAGES[0].replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 0\r\n")
    assert StreamFramer().feed(data) == [data]


def test_header_section_too_large() -> None:
    framer = StreamFramer(max_message=1000)
    framer.feed(b"INVITE sip:x SIP/2.0\r\n")
    with pytest.raises(MessageTooLarge) as info:
        for _ in range(100):
            framer.feed(b"X-Filler: " + b"a" * 50 + b"\r\n")
    assert info.value.status is None
    assert framer.buffered <= 1100  # bounded: never more than the limit and one chunk


def test_content_length_over_the_limit() -> None:
    data = sip(9, b"x" * 2000)
    with pytest.raises(MessageTooLarge) as info:
        StreamFramer(max_message=1000).feed(data[:300])
    assert info.value.status is None
    # exactly at the limit is fine
    assert StreamFramer(max_message=len(data)).feed(data) == [data]


def test_lf_only_stream_hits_the_limit() -> None:
    data = MESSAGES[0].replace(b"\r\n", b"\n")
    framer = StreamFramer(max_message=len(data) + 10)
    assert framer.feed(data) == []
    with pytest.raises(MessageTooLarge):
        framer.feed(data)


def test_messages_before_an_error_are_delivered_then_the_error() -> None:
    """A framing error never swallows the good messages framed before it; the error
    is raised by the next call (feed(b"") asks at once), and stays."""
    bad = MESSAGES[0].replace(b"Content-Length: 0\r\n", b"")
    framer = StreamFramer()
    assert framer.feed(MESSAGES[0] + MESSAGES[1] + bad) == MESSAGES[:2]
    for _ in range(2):
        with pytest.raises(SipError) as info:
            framer.feed(b"")
        assert info.value.status is None
    with pytest.raises(SipError):
        framer.feed(MESSAGES[2])


def test_error_without_earlier_messages_is_raised_at_once() -> None:
    bad = MESSAGES[0].replace(b"Content-Length: 0\r\n", b"")
    framer = StreamFramer()
    with pytest.raises(SipError):
        framer.feed(bad)
    with pytest.raises(SipError):
        framer.feed(MESSAGES[0])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=10))
def test_arbitrary_bytes_only_sip_errors(data: bytes, points: list[int]) -> None:
    """No exception but SipError, and after every feed that returns, no more than
    ``max_message`` bytes are held (a limit well under the input's size, so that the
    bound is really tested)."""
    framer = StreamFramer(max_message=200)
    try:
        for chunk in cut(data, [p for p in points if p <= len(data)]):
            for msg in framer.feed(chunk):
                assert len(msg) <= 200
                with contextlib.suppress(SipError):
                    parse_message(msg, datagram=False).validate()
            assert framer.buffered <= 200
    except SipError:
        pass


def test_hostile_whitespace_around_content_length_is_linear() -> None:
    """A Content-Length line of spaces ending in a bare CR made the old regex
    backtrack cubically (2,000 spaces took seconds, 4,000 minutes): one message
    could stall the event loop. The lines are now read in one pass."""
    for tail in (b"\rx", b"\r", b"x", b" \t" * 100 + b"\r 1"):
        data = b"INVITE sip:a@example.com SIP/2.0\r\nl:" + b" \t" * 30000 + tail + b"\r\n\r\n"
        t0 = time.perf_counter()
        with pytest.raises(SipError) as info:
            StreamFramer().feed(data)
        assert time.perf_counter() - t0 < 0.5
        assert info.value.status is None


def test_content_length_is_read_as_the_parser_reads_it() -> None:
    """Folded, with LWS before the colon, in any case: the framer and the parser agree;
    a 'Content-Length' hidden behind a bare LF inside another line is no header."""
    head = sip(7, b"hi").replace(b"Content-Length: 2\r\n\r\nhi", b"")
    for line in (b"Content-Length:\r\n 2", b"CONTENT-LENGTH \t: 2", b"L:2", b"l:\r\n\t 2 "):
        data = head + line + b"\r\n\r\nhi"
        (framed,) = StreamFramer().feed(data + MESSAGES[0])[:1]
        assert framed == data
        assert parse_message(framed, datagram=False).body == b"hi"
    smuggled = head + b"X-A: b\nContent-Length: 2\r\nContent-Length: 0\r\n\r\nhi"
    assert StreamFramer().feed(smuggled)[0].endswith(b"\r\n\r\n")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([*MESSAGES, b"\r\n\r\n", b"\r\n"]), max_size=8),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=30),
)
def test_random_streams_same_whole_bytewise_and_cut(parts: list[bytes], points: list[int]) -> None:
    data = b"".join(parts)
    whole = StreamFramer()
    expected = whole.feed(data)
    assert expected == [p for p in parts if p not in (b"\r\n\r\n", b"\r\n")]
    bytewise = StreamFramer()
    assert feed_all([data[i : i + 1] for i in range(len(data))], bytewise) == expected
    cuts = StreamFramer()
    assert feed_all(cut(data, [p for p in points if p <= len(data)]), cuts) == expected
    assert whole.pings == bytewise.pings == cuts.pings
