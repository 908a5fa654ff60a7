"""Tests of sipstack.framing: stream framing of SIP over TCP/TLS (RFC 3261 §18.3, §7.5;
RFC 5626 §3.5.1 keep-alives; RFC 4475 torture messages)."""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipstack.framing import (
    FramingError,
    FramingEvent,
    FramingLimits,
    KeepAlivePing,
    KeepAlivePong,
    MessageBytes,
    StreamFramer,
    Timeout,
)

PING = KeepAlivePing()
PONG = KeepAlivePong()


def sip(
    *headers: str, body: bytes = b"", start: str = "OPTIONS sip:bob@example.com SIP/2.0"
) -> bytes:
    """A message with the given header lines (Content-Length is not added for you)."""
    head = "\r\n".join([start, *headers]) + "\r\n\r\n"
    return head.encode() + body


def sip_cl(body: bytes = b"", *headers: str) -> bytes:
    """A well-formed message with Via/Call-ID/CSeq and a correct Content-Length."""
    return sip(
        "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK74bf9",
        "Call-ID: 3848276298220188511@atlanta.example.com",
        "CSeq: 1 OPTIONS",
        *headers,
        f"Content-Length: {len(body)}",
        body=body,
    )


def feed_chunks(
    framer: StreamFramer, chunks: Iterable[bytes], now: float = 0.0
) -> list[FramingEvent]:
    events: list[FramingEvent] = []
    for chunk in chunks:
        events += framer.feed(chunk, now)
    return events


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def messages(events: Sequence[FramingEvent]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageBytes)]


def assert_in_order(parts: Sequence[bytes], data: bytes) -> None:
    """Each part occurs in ``data``, in order, without overlap: framing invents no bytes."""
    pos = 0
    for part in parts:
        found = data.find(part, pos)
        assert found >= 0
        pos = found + len(part)


# --- complete messages ----------------------------------------------------------------------


def test_single_message_without_body() -> None:
    msg = sip_cl()
    framer = StreamFramer()
    assert framer.feed(msg, 0.0) == [MessageBytes(msg)]
    assert framer.buffered == 0


def test_message_with_body_containing_blank_lines() -> None:
    body = b"v=0\r\n\r\n\r\n\r\nINVITE sip:x SIP/2.0\r\nContent-Length: 99\r\n\r\n"
    msg = sip_cl(body, "Content-Type: application/sdp")
    framer = StreamFramer()
    assert framer.feed(msg + msg, 0.0) == [MessageBytes(msg), MessageBytes(msg)]


def test_emitted_data_is_immutable_bytes_even_from_bytearray_input() -> None:
    msg = sip_cl(b"hello")
    framer = StreamFramer()
    chunk = bytearray(msg)
    (event,) = framer.feed(chunk, 0.0)  # type: ignore[arg-type]
    chunk[:] = b"x" * len(chunk)
    assert isinstance(event, MessageBytes)
    assert type(event.data) is bytes
    assert event.data == msg
    # Through the buffered path too.
    framer.feed(msg[:10], 0.0)
    (event,) = framer.feed(memoryview(msg[10:]), 0.0)  # type: ignore[arg-type]
    assert isinstance(event, MessageBytes)
    assert type(event.data) is bytes
    assert event.data == msg


def test_several_messages_and_keepalives_in_one_feed() -> None:
    a, b, c = sip_cl(b"a"), sip_cl(b"bb"), sip_cl()
    framer = StreamFramer()
    events = framer.feed(b"\r\n\r\n" + a + b + b"\r\n\r\n" + c + b"\r\n", 0.0)
    assert events == [PING, MessageBytes(a), MessageBytes(b), PING, MessageBytes(c), PONG]
    assert framer.buffered == 0


def test_message_one_byte_at_a_time() -> None:
    a, b = sip_cl(b"body one"), sip_cl(b"\r\n\r\n")
    framer = StreamFramer()
    assert messages(feed_chunks(framer, one_byte_at_a_time(a + b))) == [a, b]
    assert framer.buffered == 0


def test_partial_message_is_buffered_until_complete() -> None:
    msg = sip_cl(b"0123456789")
    framer = StreamFramer()
    assert framer.feed(msg[:20], 0.0) == []
    assert framer.buffered == 20
    assert framer.feed(msg[20:-3], 0.0) == []  # header block complete, body not
    assert framer.feed(msg[-3:] + msg[:5], 0.0) == [MessageBytes(msg)]
    assert framer.buffered == 5
    assert framer.feed(msg[5:], 0.0) == [MessageBytes(msg)]


def test_header_terminator_split_across_feeds() -> None:
    msg = sip_cl()
    head = len(msg) - 4
    for cut in range(head - 2, len(msg)):
        framer = StreamFramer()
        assert framer.feed(msg[:cut], 0.0) == []
        assert framer.feed(msg[cut:], 0.0) == [MessageBytes(msg)]


# --- Content-Length -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Content-Length: 5",
        "content-length: 5",
        "CONTENT-LENGTH:5",
        "Content-Length :  5  ",
        "Content-Length\t:\t5",
        "l: 5",
        "L:5",
        "l \t: 5",
        "Content-Length: 0005",
        "Content-Length:\r\n 5",
        "Content-Length:\r\n\t 5 \r\n  ",
        "Content-Length: " + "0" * 5000 + "5",
    ],
)
def test_content_length_forms(header: str) -> None:
    msg = sip("Via: SIP/2.0/TCP h;branch=z9hG4bK1", header, "Max-Forwards: 70", body=b"hello")
    framer = StreamFramer()
    assert framer.feed(msg + msg, 0.0) == [MessageBytes(msg), MessageBytes(msg)]


@pytest.mark.parametrize(
    "header",
    [
        "X-Content-Length: 99",
        "Content-Length-Foo: 99",
        "Lines: 99",
        "Subject: Content-Length: 99",
        "Subject: x\r\n l: 99",  # a continuation line, not a header field
    ],
)
def test_not_fooled_by_lookalike_headers(header: str) -> None:
    msg = sip(header, "Content-Length: 2", body=b"ok")
    framer = StreamFramer()
    assert framer.feed(msg, 0.0) == [MessageBytes(msg)]


def test_content_length_in_start_line_is_ignored() -> None:
    msg = sip("l: 1", body=b"x", start="OPTIONS sip:Content-Length:9@example.com SIP/2.0")
    assert StreamFramer().feed(msg, 0.0) == [MessageBytes(msg)]


def test_missing_content_length_means_empty_body() -> None:
    """Lenient on purpose: RFC 3261 §18.3 makes Content-Length mandatory on streams."""
    msg = sip("Via: SIP/2.0/TCP h;branch=z9hG4bK1", "CSeq: 1 OPTIONS")
    framer = StreamFramer()
    assert framer.feed(msg + msg, 0.0) == [MessageBytes(msg), MessageBytes(msg)]


def test_repeated_equal_content_length_is_accepted() -> None:
    msg = sip("Content-Length: 3", "l: 003", body=b"abc")
    assert StreamFramer().feed(msg, 0.0) == [MessageBytes(msg)]


@pytest.mark.parametrize(
    "value",
    ["-1", "-999", "abc", "4 2", "", "+5", "0x10", "5;x", "5,5", "\uff15", "1e3", "\r\n 4\r\n 2"],
)
def test_invalid_content_length_is_400(value: str) -> None:
    framer = StreamFramer()
    events = framer.feed(sip(f"Content-Length: {value}", body=b"12345"), 0.0)
    assert events == [FramingError(400, "Bad Request: invalid Content-Length")]
    assert framer.dead


def test_conflicting_content_lengths_are_400() -> None:
    framer = StreamFramer()
    events = framer.feed(sip("Content-Length: 3", "l: 4", body=b"abcd"), 0.0)
    assert events == [FramingError(400, "Bad Request: conflicting Content-Length")]


def test_absurd_content_length_is_513_not_an_exception() -> None:
    framer = StreamFramer()
    (event,) = framer.feed(sip("Content-Length: " + "9" * 5000), 0.0)
    assert isinstance(event, FramingError)
    assert event.status == 513


# --- limits ---------------------------------------------------------------------------------


def test_message_of_exactly_max_size_is_accepted() -> None:
    msg = sip("l: 10", body=b"b" * 10)
    limits = FramingLimits(max_message_size=len(msg))
    assert StreamFramer(limits).feed(msg, 0.0) == [MessageBytes(msg)]
    assert StreamFramer(limits).feed(msg + b"x", 0.0)[0] == MessageBytes(msg)


def test_whole_message_over_limit_in_one_chunk_is_513() -> None:
    """The one-message-per-read fast path applies the same limit as the general path."""
    msg = sip("l: 10", body=b"b" * 10)
    (event,) = StreamFramer(FramingLimits(max_message_size=len(msg) - 1)).feed(msg, 0.0)
    assert isinstance(event, FramingError)
    assert event.status == 513


def test_content_length_over_limit_is_513_before_the_body_arrives() -> None:
    framer = StreamFramer(FramingLimits(max_message_size=1000))
    (event,) = framer.feed(sip("Content-Length: 1000"), 0.0)
    assert isinstance(event, FramingError)
    assert event.status == 513
    assert framer.dead
    assert framer.feed(b"x" * 1000, 0.0) == []


def test_header_block_over_limit_is_513_while_incomplete() -> None:
    framer = StreamFramer(FramingLimits(max_message_size=1000))
    events = feed_chunks(framer, [b"OPTIONS sip:x SIP/2.0\r\n"] + [b"X: yyyyyyy\r\n"] * 100)
    assert events == [FramingError(513, "Message Too Large: header block")]
    assert framer.buffered == 0  # the buffer is released


def test_header_block_over_limit_is_513_when_complete() -> None:
    framer = StreamFramer(FramingLimits(max_message_size=100))
    msg = sip(*[f"X-{i}: value" for i in range(10)])
    assert len(msg) > 100
    assert framer.feed(msg, 0.0) == [FramingError(513, "Message Too Large: header block")]


def test_line_length_limit() -> None:
    limits = FramingLimits(max_line_length=40)
    ok = sip("X: " + "a" * 37)  # exactly 40 bytes
    assert StreamFramer(limits).feed(ok, 0.0) == [MessageBytes(ok)]
    too_long = sip("X: " + "a" * 38)
    expected = [FramingError(513, "Message Too Large: header line")]
    assert StreamFramer(limits).feed(too_long, 0.0) == expected
    # A line of exactly the limit is fine byte by byte too (its CR may arrive before its LF).
    framer = StreamFramer(limits)
    assert messages(feed_chunks(framer, one_byte_at_a_time(ok))) == [ok]
    # Detected before the line ends, byte by byte.
    framer = StreamFramer(limits)
    assert feed_chunks(framer, one_byte_at_a_time(sip("X: " + "a" * 60)[:-4])) == expected
    # The start line counts too.
    long_start = sip(start="OPTIONS sip:" + "u" * 40 + "@example.com SIP/2.0")
    assert StreamFramer(limits).feed(long_start, 0.0) == expected


def test_max_headers_limit() -> None:
    limits = FramingLimits(max_headers=5)
    ok = sip(*[f"X-{i}: {i}" for i in range(5)])
    assert StreamFramer(limits).feed(ok, 0.0) == [MessageBytes(ok)]
    too_many = sip(*[f"X-{i}: {i}" for i in range(6)])
    assert StreamFramer(limits).feed(too_many, 0.0) == [
        FramingError(513, "Message Too Large: too many header lines")
    ]


def test_max_headers_limit_with_the_shortest_possible_lines() -> None:
    limits = FramingLimits(max_headers=5)
    ok = b"X" + b"\r\na" * 5 + b"\r\n\r\n"
    assert StreamFramer(limits).feed(ok, 0.0) == [MessageBytes(ok)]
    too_many = b"X" + b"\r\na" * 6 + b"\r\n\r\n"
    (event,) = StreamFramer(limits).feed(too_many, 0.0)
    assert event == FramingError(513, "Message Too Large: too many header lines")


def test_messages_before_an_error_in_the_same_chunk_are_delivered() -> None:
    good = sip_cl(b"ok")
    framer = StreamFramer()
    events = framer.feed(good + sip("Content-Length: -1") + good, 0.0)
    assert events == [MessageBytes(good), FramingError(400, "Bad Request: invalid Content-Length")]
    assert framer.feed(good, 1.0) == []
    assert framer.tick(1e9) == []
    assert framer.next_deadline() is None


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        FramingLimits(max_message_size=0)
    with pytest.raises(ValueError):
        FramingLimits(header_timeout=0)


# --- keep-alives (RFC 5626 §3.5.1, RFC 3261 §7.5) -------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"\r\n\r\n"], [PING]),
        ([b"\r\n"], [PONG]),
        ([b"\r\n\r\n\r\n"], [PING, PONG]),
        ([b"\r\n\r\n\r\n\r\n"], [PING, PING]),
        ([b"\r\n\r", b"\n"], [PING]),
        ([b"\r", b"\n\r\n"], [PING]),
        ([b"\r", b"\n"], [PONG]),
        # A ping split after its first CRLF reads as two pongs (documented trade-off: a pong
        # is never delayed waiting for a second CRLF).
        ([b"\r\n", b"\r\n"], [PONG, PONG]),
    ],
)
def test_keepalives(chunks: list[bytes], expected: list[FramingEvent]) -> None:
    framer = StreamFramer()
    assert feed_chunks(framer, chunks) == expected
    assert framer.buffered == 0


def test_crlfs_before_a_start_line_are_not_part_of_the_message() -> None:
    msg = sip_cl()
    framer = StreamFramer()
    assert framer.feed(b"\r\n" + msg, 0.0) == [PONG, MessageBytes(msg)]
    assert framer.feed(b"\r\n\r\n\r\n" + msg, 0.0) == [PING, PONG, MessageBytes(msg)]
    assert framer.feed(b"\r\n\r", 0.0) == []
    assert framer.feed(msg, 0.0) == [PONG, MessageBytes(b"\r" + msg)]


def test_partial_crlf_is_held() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r", 0.0) == []
    assert framer.buffered == 1
    assert framer.feed(b"\n", 0.0) == [PONG]
    assert framer.feed(b"\r\n\r", 0.0) == []
    assert framer.buffered == 3


# --- timers ---------------------------------------------------------------------------------


LIMITS = FramingLimits(header_timeout=10.0, idle_timeout=300.0)


def test_idle_timeout_from_connection_open() -> None:
    framer = StreamFramer(LIMITS, now=100.0)
    assert framer.next_deadline() == 400.0
    assert framer.tick(399.9) == []
    assert framer.tick(400.0) == [Timeout("idle")]
    assert framer.dead
    assert framer.next_deadline() is None
    assert framer.tick(500.0) == []
    assert framer.feed(sip_cl(), 500.0) == []


def test_idle_clock_starts_at_first_feed_or_tick_without_now() -> None:
    framer = StreamFramer(LIMITS)
    assert framer.next_deadline() is None
    assert framer.tick(5.0) == []
    assert framer.next_deadline() == 305.0
    framer = StreamFramer(LIMITS)
    framer.feed(sip_cl(), 7.0)
    assert framer.next_deadline() == 307.0


def test_keepalives_and_messages_reset_the_idle_timer() -> None:
    framer = StreamFramer(LIMITS, now=0.0)
    assert framer.feed(b"\r\n\r\n", 250.0) == [PING]
    assert framer.next_deadline() == 550.0
    assert framer.tick(549.0) == []
    assert framer.feed(sip_cl(), 500.0) == [MessageBytes(sip_cl())]
    assert framer.next_deadline() == 800.0


def test_header_timeout_slowloris() -> None:
    msg = sip_cl()
    framer = StreamFramer(LIMITS, now=0.0)
    assert framer.feed(msg[:5], 1.0) == []
    assert framer.next_deadline() == 11.0
    assert framer.tick(10.99) == []
    assert framer.tick(11.0) == [Timeout("header")]
    assert framer.dead


def test_header_timeout_counts_from_the_first_byte_even_while_bytes_trickle_in() -> None:
    msg = sip_cl()
    framer = StreamFramer(LIMITS, now=0.0)
    events: list[FramingEvent] = []
    for i, byte in enumerate(one_byte_at_a_time(msg)):
        events += framer.feed(byte, float(i))
        if framer.dead:
            break
    assert events == [Timeout("header")]
    assert framer.dead


def test_body_timeout_rfc4475_clerr() -> None:
    """RFC 4475 §3.1.2.2: Content-Length larger than the bytes sent: wait, then time out."""
    msg = sip("Content-Length: 9999", body=b"v=0\r\n")
    framer = StreamFramer(LIMITS, now=0.0)
    assert framer.feed(msg, 2.0) == []
    assert framer.next_deadline() == 12.0
    assert framer.feed(b"more body", 5.0) == []
    assert framer.next_deadline() == 12.0  # the whole message must arrive within the limit
    assert framer.tick(12.0) == [Timeout("body")]


def test_late_feed_after_message_deadline_times_out() -> None:
    msg = sip_cl(b"abc")
    framer = StreamFramer(LIMITS, now=0.0)
    framer.feed(msg[:-1], 0.0)
    assert framer.feed(msg[-1:], 10.0) == [Timeout("body")]


def test_message_clock_restarts_for_the_next_message() -> None:
    a = sip_cl(b"abc")
    framer = StreamFramer(LIMITS, now=0.0)
    assert framer.feed(a[:10], 0.0) == []
    assert framer.feed(a[10:] + a[:10], 8.0) == [MessageBytes(a)]
    assert framer.next_deadline() == 18.0  # the next message's first byte arrived at 8.0
    assert framer.feed(a[10:], 17.0) == [MessageBytes(a)]
    assert framer.next_deadline() == 317.0  # nothing pending: only the idle timer


def test_held_partial_crlf_counts_against_header_timeout() -> None:
    framer = StreamFramer(LIMITS, now=0.0)
    framer.feed(b"\r\n\r", 1.0)
    assert framer.next_deadline() == 11.0
    assert framer.tick(11.0) == [Timeout("header")]


def test_empty_feed_changes_nothing() -> None:
    framer = StreamFramer(LIMITS, now=0.0)
    assert framer.feed(b"", 100.0) == []
    assert framer.next_deadline() == 300.0


# --- RFC 4475 torture messages --------------------------------------------------------------


def _corpus_dir() -> Path | None:
    here = Path(__file__).resolve().parent
    for candidate in (
        here.parent / "conformance" / "rfc4475",
        here.parent.parent / "shared" / "conformance" / "rfc4475",
    ):
        if (candidate / "MANIFEST.toml").is_file():
            return candidate
    return None


CORPUS = _corpus_dir()
CORPUS_NAMES = (
    sorted(tomllib.loads((CORPUS / "MANIFEST.toml").read_text())) if CORPUS is not None else []
)


@pytest.mark.skipif(CORPUS is None, reason="RFC 4475 corpus not found")
@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_rfc4475_corpus_frames_alike_in_any_chunking(name: str) -> None:
    assert CORPUS is not None
    data = (CORPUS / f"{name}.dat").read_bytes()
    whole = StreamFramer(LIMITS)
    events = whole.feed(data, 0.0) + whole.tick(20.0)
    byte_wise = StreamFramer(LIMITS)
    events_1 = feed_chunks(byte_wise, one_byte_at_a_time(data)) + byte_wise.tick(20.0)
    assert events_1 == events
    assert_in_order(messages(events), data)

    if name in ("ncl", "mcl01"):  # negative / multiple differing Content-Length
        assert isinstance(events[-1], FramingError)
        assert events[-1].status == 400
    elif name == "clerr":
        assert events == [Timeout("body")]
    elif name == "dblreq":  # a UDP test: on a stream the trailing octets start a next message
        assert messages(events)[0] == data[: data.index(b"\r\n\r\n") + 4]
    elif name == "inv2543":  # RFC 2543 style, no Content-Length: the body is not framed
        assert messages(events) == [data[: data.index(b"\r\n\r\n") + 4]]
        assert events[-1] == Timeout("header")
    elif name == "baddn":  # baddn.dat has no empty line after its last header field
        assert events in ([MessageBytes(data)], [Timeout("header")])
    else:
        assert events == [MessageBytes(data)]


def test_rfc4475_corpus_is_present_in_this_checkout() -> None:
    if CORPUS is None:
        pytest.skip("RFC 4475 corpus not found")
    assert len(CORPUS_NAMES) > 40


# --- properties -----------------------------------------------------------------------------


TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@st.composite
def header_lines(draw: st.DrawFn) -> str:
    name = draw(st.text(TOKEN_CHARS, min_size=1, max_size=12))
    if name.lower() in ("l", "content-length"):
        name = "X-" + name
    value = draw(st.text(VALUE_CHARS, max_size=30)).strip()
    if draw(st.booleans()):
        value += "\r\n " + draw(st.text(VALUE_CHARS, min_size=1, max_size=10)).strip() + "x"
    return f"{name}: {value}"


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    body = draw(
        st.one_of(
            st.binary(max_size=300), st.sampled_from([b"", b"\r\n\r\n", b"\r\n", b"l: 9\r\n"])
        )
    )
    name = draw(st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH", "l", "L"]))
    space = draw(st.sampled_from(["", " ", "\t", "  "]))
    fold = draw(st.sampled_from(["", "\r\n ", "\r\n\t"]))
    zeros = "0" * draw(st.integers(0, 3))
    cl = f"{name}{space}: {fold}{zeros}{len(body)}"
    headers = draw(st.lists(header_lines(), max_size=8))
    headers.insert(draw(st.integers(0, len(headers))), cl)
    if not body and draw(st.integers(0, 3)) == 0:
        headers.remove(cl)  # missing Content-Length: empty body
    elif draw(st.integers(0, 4)) == 0:
        headers.append(f"l: {len(body)}")  # a repeated, equal value
    start = draw(
        st.sampled_from(
            [
                "REGISTER sip:contoso.com SIP/2.0",
                "INVITE sip:bob@biloxi.example.com;transport=tls SIP/2.0",
                "SIP/2.0 200 OK",
                "SIP/2.0 180 Ringing",
            ]
        )
    )
    return sip(*headers, body=body, start=start)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Valid messages, with keep-alive CRLFs between them: (the messages, the stream)."""
    msgs = draw(st.lists(valid_messages(), max_size=6))
    parts: list[bytes] = []
    for msg in msgs:
        parts.append(draw(st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n"])))
        parts.append(msg)
    parts.append(draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])))
    return msgs, b"".join(parts)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), cuts=st.lists(st.integers(0, 4000), max_size=40))
def test_splitting_invariance(stream: tuple[list[bytes], bytes], cuts: list[int]) -> None:
    msgs, data = stream
    whole = StreamFramer()
    whole_events = whole.feed(data, 0.0)
    assert messages(whole_events) == msgs
    assert not any(isinstance(e, FramingError | Timeout) for e in whole_events)
    assert whole.buffered == 0

    split = StreamFramer()
    split_events = feed_chunks(split, split_at(data, cuts))
    assert messages(split_events) == msgs
    assert not any(isinstance(e, FramingError | Timeout) for e in split_events)
    assert split.buffered == 0


@settings(max_examples=50, deadline=None)
@given(stream=streams())
def test_one_byte_at_a_time_matches_whole(stream: tuple[list[bytes], bytes]) -> None:
    msgs, data = stream
    framer = StreamFramer()
    assert messages(feed_chunks(framer, one_byte_at_a_time(data))) == msgs


SIPISH = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\n\r\n",
        b" ",
        b"\t",
        b":",
        b"INVITE sip:a@b SIP/2.0",
        b"SIP/2.0 200 OK",
        b"Content-Length",
        b"content-length",
        b"l",
        b"L",
        b"0",
        b"5",
        b"-1",
        b"99999999999999999999999",
        b"Via: x",
        b"\x00",
        b"\xff",
    ]
)


def check_event_stream(events: list[FramingEvent]) -> None:
    for i, event in enumerate(events):
        assert isinstance(
            event, MessageBytes | KeepAlivePing | KeepAlivePong | FramingError | Timeout
        )
        if isinstance(event, FramingError | Timeout):
            assert i == len(events) - 1, "a fatal event must be the last one"
        if isinstance(event, FramingError):
            assert event.status in (400, 513)
        if isinstance(event, Timeout):
            assert event.kind in ("header", "body", "idle")
        if isinstance(event, MessageBytes):
            assert type(event.data) is bytes
            assert b"\r\n\r\n" in event.data


@settings(max_examples=400, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(st.binary(max_size=64), st.lists(SIPISH, max_size=12).map(b"".join)),
        max_size=30,
    ),
    small=st.booleans(),
    step=st.sampled_from([0.0, 0.5, 3.0, 50.0]),
)
def test_arbitrary_input_never_raises(chunks: list[bytes], small: bool, step: float) -> None:
    limits = (
        FramingLimits(max_message_size=120, max_headers=4, max_line_length=30, idle_timeout=100.0)
        if small
        else FramingLimits()
    )
    framer = StreamFramer(limits, now=0.0)
    events: list[FramingEvent] = []
    now = 0.0
    for chunk in chunks:
        now += step
        deadline = framer.next_deadline()
        if deadline is not None and deadline <= now:
            events += framer.tick(now)
        events += framer.feed(chunk, now)
    events += framer.tick(now + 1e6)
    check_event_stream(events)
    assert framer.dead
    assert framer.buffered == 0
    assert_in_order(messages(events), b"".join(chunks))


# The name and colon of a Content-Length header field as the framer once found it.
_CONTENT_LENGTH_NAME_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:", re.IGNORECASE)


def _reference_content_length(buf: bytes, start: int, end: int) -> int:
    """The pattern-based reading of Content-Length that ``_content_length`` replaced."""
    from sipstack.framing import _MAX_CL_DIGITS

    result, seen = 0, False
    match = _CONTENT_LENGTH_NAME_RE.search(buf, start, end)
    while match is not None:
        value_start = match.end()
        eol = buf.find(b"\r\n", value_start, end)
        if eol < 0:
            eol = end
        else:
            while eol < end and buf[eol + 2] in b" \t":
                eol = buf.find(b"\r\n", eol + 2, end)
                if eol < 0:
                    eol = end
        digits = buf[value_start:eol].strip()
        if not digits.isdigit():
            return -1
        if len(digits) > _MAX_CL_DIGITS:
            digits = digits.lstrip(b"0")
            if len(digits) > _MAX_CL_DIGITS:
                return -3
        value = int(digits)
        if seen and value != result:
            return -2
        seen, result = True, value
        match = _CONTENT_LENGTH_NAME_RE.search(buf, eol, end)
    return result


_CL_LINES = st.sampled_from(
    [
        b"Content-Length: 0", b"content-length:12", b"CONTENT-LENGTH \t: 7", b"l: 0", b"L:3",
        b"Content-Length: 12", b"Content-Length:  1 2", b"Content-Length: -1", b"l: x",
        b"Location: sip:a@b", b"Lx: 4", b"Via: SIP/2.0/TCP h", b" 5", b"\t0012",
        b"Content-Length: " + b"0" * 30 + b"9", b"Content-Length: " + b"9" * 30, b"X-L: 3",
        b"Content-Lengthy: 4", b"Content-Length:", b"l :  ",
    ]
)


@settings(max_examples=400)
@given(st.lists(_CL_LINES, max_size=6))
def test_content_length_matches_the_reference_pattern(lines: list[bytes]) -> None:
    """The find-based ``_content_length`` reads exactly what the case-insensitive pattern did
    (compact and long names, SP/HTAB before the colon, folding, conflicts, absurd lengths)."""
    from sipstack.framing import _content_length

    data = b"\r\n".join([b"INVITE sip:a@b SIP/2.0", *lines]) + b"\r\n\r\n"
    end = data.find(b"\r\n\r\n")
    assert _content_length(data, 0, end) == _reference_content_length(data, 0, end)
    assert _content_length(bytearray(data), 0, end) == _reference_content_length(data, 0, end)
