"""Sans-I/O incremental framing of SIP over stream transports (TCP, TLS).

A stream carries SIP messages back to back; the only way to find where one ends is its header
block (terminated by an empty line, ``CRLF CRLF``) followed by exactly ``Content-Length`` body
octets (RFC 3261 §18.3, §20.14). Between messages a peer may send CRLF keep-alives: a double
CRLF is a *ping* that must be answered with a single CRLF *pong* (RFC 5626 §3.5.1), and CRLFs in
front of a start line are otherwise ignored (RFC 3261 §7.5).

:class:`StreamFramer` is a pure state machine in the style of h11: the transport adapter feeds it
the bytes it reads together with the current time, and acts on the events it returns; it owns
no socket and no clock. It never raises on any input: garbage produces at most one
:class:`FramingError`, after which the framer is dead.

Events and what the adapter does with them:

===================== ====================================================================
:class:`MessageBytes`  pass ``data`` (one complete message) to the parser
:class:`KeepAlivePing` write a single ``b"\\r\\n"`` pong (RFC 5626 §3.5.1)
:class:`KeepAlivePong` note the flow as alive if we sent a ping; otherwise ignore it
:class:`FramingError`  answer ``status`` if the peer can be answered, then close the connection
:class:`Timeout`       close the connection
===================== ====================================================================

Decisions (see also the docstrings of :class:`FramingLimits` and :class:`StreamFramer`):

* **Size limits answer 513.** A header block, a message (header block + body), a raw header
  line longer than the limits, or more header lines than allowed, are all "message too large"
  (RFC 3261 §21.5.14 513 Message Too Large). A Request-Line counts as a line.
* **A bad Content-Length answers 400**: negative, non-numeric, folded into several tokens, or
  several Content-Length header fields with *different* values (RFC 4475 §3.1.2.3 ``ncl``,
  §3.3.9 ``mcl01``). Repeated fields with one same value are accepted here; the parser decides
  whether the repetition itself is an error.
* **A missing Content-Length means an empty body.** RFC 3261 §18.3 says it MUST be present on
  streams, but many clients omit it on body-less messages, so we are lenient, like most servers.
  A message that did carry a body without Content-Length then fails in the parser (its body is
  read as the start of the next message).
* **The whole message must arrive within** ``header_timeout`` **of its first octet.** A header
  block that stalls yields ``Timeout("header")`` (slowloris); a body shorter than its
  Content-Length (RFC 4475 §3.1.2.2 ``clerr``) is waited for and then yields
  ``Timeout("body")``. A connection with no octet at all for ``idle_timeout`` yields
  ``Timeout("idle")``; keep-alive CRLFs count as traffic.
* **Line ends are CRLF only** (RFC 3261 §7, §25): a bare LF neither ends a header block nor is
  a keep-alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, TypeAlias

__all__ = [
    "FramingError",
    "FramingEvent",
    "FramingLimits",
    "KeepAlivePing",
    "KeepAlivePong",
    "MessageBytes",
    "StreamFramer",
    "Timeout",
]


@dataclass(frozen=True, slots=True)
class FramingLimits:
    """Resource limits of one stream connection.

    Attributes:
        max_message_size: largest message accepted, in bytes, header block (including its
            terminating empty line) plus body. Larger → ``FramingError(513)``.
        max_headers: most raw header lines accepted after the start line, in lines; folded
            continuation lines count as lines. More → ``FramingError(513)``.
        max_line_length: longest raw header line accepted (start line included), in bytes,
            without its CRLF. Longer → ``FramingError(513)``.
        header_timeout: seconds allowed for a whole message to arrive once its first octet
            arrived: the header block (slowloris defence) and then the body.
        idle_timeout: seconds without any octet (keep-alives included) after which the
            connection is closed as idle.

    Source: RFC 3261 §18.3 (framing), §21.5.14 (513); DESIGN.md §5 (bad input never blocks).
    """

    max_message_size: int = 65536
    max_headers: int = 256
    max_line_length: int = 8192
    header_timeout: float = 10.0
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_headers", "max_line_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"FramingLimits.{name} must be >= 1")
        for name in ("header_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FramingLimits.{name} must be > 0")


@dataclass(frozen=True, slots=True, init=False)
class MessageBytes:
    """Exactly one complete SIP message: its header block including the empty line that ends
    it, followed by exactly Content-Length body bytes (RFC 3261 §18.3). Not parsed beyond that.
    """

    data: bytes

    def __init__(self, data: bytes) -> None:
        # Written out (init=False): see docs/native.md (generated __init__ runs interpreted).
        object.__setattr__(self, "data", data)


@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """The peer sent a double-CRLF keep-alive ping between messages; answer with a single
    ``b"\\r\\n"`` pong (RFC 5626 §3.5.1)."""


@dataclass(frozen=True, slots=True)
class KeepAlivePong:
    """A single CRLF arrived between messages: a pong to our ping (RFC 5626 §3.5.1), or a stray
    CRLF before a start line, which RFC 3261 §7.5 says to ignore."""


@dataclass(frozen=True, slots=True)
class FramingError:
    """Fatal framing error: answer ``status`` (400 or 513) if the peer can be answered, then close.

    Attributes:
        status: SIP status to answer with: ``513`` Message Too Large for size limits,
            ``400`` Bad Request for an invalid Content-Length (RFC 3261 §21.4.1, §21.5.14).
        reason: short human-readable reason, safe for a reason phrase or ``Warning``.
        head: the offending message's complete header block (start line to the empty line
            that ends it, inclusive) when it had arrived, so that the adapter can copy Via,
            From, To, Call-ID and CSeq into the response; ``b""`` when the header block itself
            was incomplete (too long, or a line too long before its end arrived). Not part of
            equality.

    After this event the framer is dead: it drops its buffer and returns no further events.
    """

    status: int
    reason: str
    head: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Timeout:
    """A timer expired; close the connection. The framer is dead afterwards.

    Attributes:
        kind: ``"header"`` — a header block begun but not complete within
            ``FramingLimits.header_timeout`` (slowloris); ``"body"`` — the header block arrived
            but not all Content-Length body bytes within the same limit (RFC 4475 ``clerr``);
            ``"idle"`` — no octet at all for ``FramingLimits.idle_timeout``.
    """

    kind: str


FramingEvent: TypeAlias = MessageBytes | KeepAlivePing | KeepAlivePong | FramingError | Timeout
"""Any event returned by :class:`StreamFramer`."""

# --- internals -------------------------------------------------------------------------------

_IDLE: Final = 0  # between messages: CRLF keep-alives or the first octet of a message expected
_HEADERS: Final = 1  # a message started; looking for the CRLF CRLF that ends its header block
_BODY: Final = 2  # header block complete; waiting for the body
_DEAD: Final = 3  # after FramingError or Timeout

_CR: Final = 13
_LF: Final = 10
_PING: Final = KeepAlivePing()
_PONG: Final = KeepAlivePong()

# Content-Length digits kept after stripping leading zeros; more can never fit any sane limit,
# and bounding them keeps int() away from its huge-number guard (it would raise).
_MAX_CL_DIGITS: Final = 18

# Results of _content_length() that are not lengths.
_CL_INVALID: Final = -1
_CL_CONFLICT: Final = -2
_CL_TOO_LARGE: Final = -3


def _content_length(buf: bytes | bytearray, start: int, end: int) -> int:
    """Body length declared by the header block ``buf[start:end]`` (CRLF CRLF excluded), in bytes.

    ``0`` when no Content-Length header field is present; ``_CL_INVALID`` for a value that is not
    one run of digits (negative, non-numeric, several tokens); ``_CL_CONFLICT`` for several
    fields with different values; ``_CL_TOO_LARGE`` for an absurd number of digits. The value may
    be folded onto continuation lines (LWS, RFC 3261 §25.1). ``buf[end]`` must exist (it is the
    CR of the terminating CRLF CRLF).

    The field is the long or the compact name (RFC 3261 §7.3.3, §20.14), in any case, with
    SP/HTAB allowed before the colon (HCOLON), found with ``bytes.find`` in a lower-cased copy
    of the block; the CRLF searched before the name keeps the start line and folded
    continuation lines from matching. (The same fields as the case-insensitive pattern
    ``\r\n(?:content-length|l)[ \t]*:`` would find, at a fraction of its cost on every
    message; ``tests/test_framing.py`` checks the two against each other.)
    """
    head: bytes = bytes(buf[start:end]).lower()
    size = len(head)
    result = 0
    seen = False
    long_at = head.find(b"\r\ncontent-length")
    short_at = head.find(b"\r\nl")
    while long_at >= 0 or short_at >= 0:
        # the next candidate in document order (as a pattern search would meet them)
        pos = long_at + 16 if short_at < 0 or 0 <= long_at < short_at else short_at + 3
        while pos < size and (head[pos] == 32 or head[pos] == 9):  # SP / HTAB before ':'
            pos += 1
        if pos < size and head[pos] == 58:  # ':'
            value_start = pos + 1
            eol = head.find(b"\r\n", value_start)
            if eol < 0:
                eol = size
            else:
                # Folded value: continuation lines start with SP or HTAB.
                while eol + 2 < size and (head[eol + 2] == 32 or head[eol + 2] == 9):
                    eol = head.find(b"\r\n", eol + 2)
                    if eol < 0:
                        eol = size
            digits = head[value_start:eol].strip()  # strips SP, HTAB and the folding CRLFs
            if not digits.isdigit():
                return _CL_INVALID
            if len(digits) > _MAX_CL_DIGITS:
                digits = digits.lstrip(b"0")
                if len(digits) > _MAX_CL_DIGITS:
                    return _CL_TOO_LARGE
            value = 0
            for digit in digits:
                value = value * 10 + digit - 48
            if seen and value != result:
                return _CL_CONFLICT
            seen = True
            result = value
            pos = eol
        # else: another field whose name starts the same way ("Location:", "Lx:")
        if 0 <= long_at < pos:
            long_at = head.find(b"\r\ncontent-length", pos)
        if 0 <= short_at < pos:
            short_at = head.find(b"\r\nl", pos)
    return result


class StreamFramer:
    """Incremental framer of one SIP stream connection (RFC 3261 §18.3, §7.5; RFC 5626 §3.5.1).

    Feed it every chunk read from the connection with :meth:`feed`, call :meth:`tick` at (or
    after) :meth:`next_deadline`, and act on the returned :data:`FramingEvent` list. Chunks may
    split messages anywhere, down to one byte per chunk, or carry several messages at once; the
    :class:`MessageBytes` produced are the same for every chunking. No method ever raises on
    peer input.

    Keep-alives: between messages, ``CRLF CRLF`` is a :class:`KeepAlivePing` and a lone ``CRLF``
    a :class:`KeepAlivePong`. A lone CRLF is reported as soon as it is followed by anything but
    CR, or by nothing (the end of the bytes read so far), so a pong is never delayed; the price
    is that a ping split by the network right after its first CRLF reads as two pongs. A trailing
    ``CRLF CR`` is held for the next octet. Time spent on a held partial CRLF counts against
    ``header_timeout`` like a started message.

    All times are seconds on any monotonic clock chosen by the adapter (e.g. ``loop.time()``).
    """

    __slots__ = (
        "_body_total",
        "_buf",
        "_last_rx",
        "_limits",
        "_line_start",
        "_pending_since",
        "_scan",
        "_state",
    )

    def __init__(
        self,
        limits: FramingLimits = FramingLimits(),
        *,
        now: float | None = None,
    ) -> None:
        """Create a framer for one connection.

        Args:
            limits: size and time limits (:class:`FramingLimits`).
            now: time the connection was opened, in seconds; starts the idle timer so that a
                peer that never sends anything is closed. If omitted, the idle timer starts at
                the first :meth:`feed` or :meth:`tick`.
        """
        self._limits: FramingLimits = limits
        self._buf: bytearray = bytearray()
        self._state: int = _IDLE
        # In _HEADERS: offset from the message start where the next CRLFCRLF search begins, and
        # offset of the first byte of the current (incomplete) line.
        self._scan: int = 0
        self._line_start: int = 0
        # In _BODY: total message length, header block + body, in bytes.
        self._body_total: int = 0
        # Arrival time of the oldest buffered, unconsumed byte (None when the buffer is empty).
        self._pending_since: float | None = None
        # Arrival time of the last byte (None until the idle clock starts).
        self._last_rx: float | None = now

    # --- public API ---------------------------------------------------------------------------

    @property
    def limits(self) -> FramingLimits:
        """The limits this framer enforces."""
        return self._limits

    @property
    def dead(self) -> bool:
        """True after a :class:`FramingError` or :class:`Timeout`; the connection should close."""
        return self._state == _DEAD

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of an emitted event (a partial message), in bytes."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> list[FramingEvent]:
        """Consume bytes read from the connection at time ``now`` (seconds); return the events.

        Several events may come from one chunk (e.g. two messages and a ping); a partial message
        is buffered until the rest arrives. If ``now`` is already past the deadline of a message
        in progress, the result is ``[Timeout("header" | "body")]`` and ``data`` is ignored.
        Returns ``[]`` once the framer is dead. An empty ``data`` only checks that deadline.
        Any bytes-like object is accepted; the framer keeps no reference to it.
        """
        state = self._state
        if state == _DEAD:
            return []
        pending = self._pending_since
        if pending is not None and now >= pending + self._limits.header_timeout:
            return [self._die_timeout()]
        if not data:
            return []
        self._last_rx = now

        buf: bytes | bytearray
        own = self._buf
        had_buffered = bool(own)
        if not had_buffered and state == _IDLE and type(data) is bytes and data[0] != _CR:
            # Fast path for the usual read: exactly one whole message. The same checks as
            # _run(); anything else (several or partial messages, a limit hit, keep-alives)
            # takes the general path below.
            end = data.find(b"\r\n\r\n")
            if end > 0:
                limits = self._limits
                # (the error results of _content_length are negative: never equal below)
                if (
                    len(data) <= limits.max_message_size
                    and end <= limits.max_line_length
                    and end // 3 <= limits.max_headers
                    and end + 4 + _content_length(data, 0, end) == len(data)
                ):
                    self._pending_since = None
                    return [MessageBytes(data)]
        if had_buffered:
            own += data
            buf = own
        else:
            # Fast path: nothing buffered, work on the caller's bytes without copying them.
            buf = data if type(data) is bytes else bytes(data)

        events: list[FramingEvent] = []
        pos = self._run(buf, events)
        if self._state == _DEAD:
            return events

        if pos >= len(buf):
            if had_buffered:
                own.clear()
            self._pending_since = None
        else:
            if not had_buffered:
                own += memoryview(buf)[pos:]
            elif pos:
                del own[:pos]
            # Bytes after a unit completed in this chunk arrived now; when nothing was consumed
            # the clock keeps the arrival time of the oldest buffered byte.
            if pos or pending is None:
                self._pending_since = now
        return events

    def tick(self, now: float) -> list[FramingEvent]:
        """Check the timers at time ``now`` (seconds).

        Returns ``[Timeout(kind)]`` if a message in progress missed ``header_timeout``
        (kind ``"header"`` or ``"body"``) or nothing arrived for ``idle_timeout`` (kind
        ``"idle"``), after which the framer is dead; otherwise ``[]``. Calling it early or
        often is harmless.
        """
        if self._state == _DEAD:
            return []
        limits = self._limits
        pending = self._pending_since
        if pending is not None and now >= pending + limits.header_timeout:
            return [self._die_timeout()]
        if self._last_rx is None:
            self._last_rx = now
        elif now >= self._last_rx + limits.idle_timeout:
            self._die()
            return [Timeout("idle")]
        return []

    def next_deadline(self) -> float | None:
        """Absolute time (seconds, the adapter's clock) at which :meth:`tick` should next run.

        ``None`` when dead, or when no timer runs yet (no ``now`` given to the constructor and
        nothing fed or ticked). Changes after every :meth:`feed`.
        """
        if self._state == _DEAD:
            return None
        limits = self._limits
        deadline = None if self._last_rx is None else self._last_rx + limits.idle_timeout
        pending = self._pending_since
        if pending is not None:
            message_deadline = pending + limits.header_timeout
            if deadline is None or message_deadline < deadline:
                deadline = message_deadline
        return deadline

    # --- internals ----------------------------------------------------------------------------

    def _die(self) -> None:
        self._state = _DEAD
        self._buf = bytearray()
        self._pending_since = None

    def _die_timeout(self) -> Timeout:
        kind = "body" if self._state == _BODY else "header"
        self._die()
        return Timeout(kind)

    def _fail(self, events: list[FramingEvent], status: int, reason: str, head: bytes = b"") -> int:
        self._die()
        events.append(FramingError(status, reason, head))
        return 0

    def _run(self, buf: bytes | bytearray, events: list[FramingEvent]) -> int:
        """Emit the events of ``buf`` (all unconsumed bytes); return how many bytes were consumed.

        On a fatal error the framer is dead on return and the return value is meaningless.
        """
        n = len(buf)
        pos = 0
        state = self._state
        limits = self._limits
        max_size = limits.max_message_size
        max_line = limits.max_line_length
        max_headers = limits.max_headers
        while pos < n:
            if state == _IDLE:
                if buf[pos] == _CR:
                    # Keep-alive CRLFs between messages (RFC 5626 §3.5.1, RFC 3261 §7.5).
                    if pos + 1 == n:
                        break  # a lone CR: wait for its LF
                    if buf[pos + 1] == _LF:
                        if pos + 2 < n and buf[pos + 2] == _CR:
                            if pos + 3 == n:
                                break  # CRLF CR: most likely a ping in progress; wait
                            if buf[pos + 3] == _LF:
                                events.append(_PING)
                                pos += 4
                                continue
                        events.append(_PONG)
                        pos += 2
                        continue
                    # CR followed by something else: not a keep-alive; framed as a message
                    # (the parser rejects it).
                state = _HEADERS
                self._scan = 0
                self._line_start = 0

            if state == _HEADERS:
                end = buf.find(b"\r\n\r\n", pos + self._scan)
                if end < 0:
                    avail = n - pos
                    if avail > max_size:
                        return self._fail(events, 513, "Message Too Large: header block")
                    eol = buf.rfind(b"\r\n", pos + self._scan)
                    if eol >= 0:
                        self._line_start = eol + 2 - pos
                    # +1: the line's CR may already be here without its LF.
                    if avail - self._line_start > max_line + 1:
                        return self._fail(events, 513, "Message Too Large: header line")
                    self._scan = avail - 3 if avail > 3 else 0
                    break
                header_len = end + 4 - pos
                if header_len > max_size:
                    return self._fail(
                        events, 513, "Message Too Large: header block", bytes(buf[pos : end + 4])
                    )
                if end - pos > max_line and not self._lines_fit(buf, pos, end):
                    return self._fail(
                        events, 513, "Message Too Large: header line", bytes(buf[pos : end + 4])
                    )
                # Each header line takes at least 3 bytes (a character and CRLF): only count
                # when the block is long enough to hold too many.
                if (end - pos) // 3 > max_headers and buf.count(b"\r\n", pos, end) > max_headers:
                    return self._fail(
                        events,
                        513,
                        "Message Too Large: too many header lines",
                        bytes(buf[pos : end + 4]),
                    )

                body_len = _content_length(buf, pos, end)
                if body_len < 0:
                    if body_len == _CL_TOO_LARGE:
                        return self._fail(
                            events,
                            513,
                            "Message Too Large: Content-Length",
                            bytes(buf[pos : end + 4]),
                        )
                    if body_len == _CL_CONFLICT:
                        return self._fail(
                            events,
                            400,
                            "Bad Request: conflicting Content-Length",
                            bytes(buf[pos : end + 4]),
                        )
                    return self._fail(
                        events,
                        400,
                        "Bad Request: invalid Content-Length",
                        bytes(buf[pos : end + 4]),
                    )
                total = header_len + body_len
                if total > max_size:
                    return self._fail(events, 513, "Message Too Large", bytes(buf[pos : end + 4]))
                if n - pos < total:
                    state = _BODY
                    self._body_total = total
                    break
            else:  # _BODY
                total = self._body_total
                if n - pos < total:
                    break

            # A complete message: header block and body.
            # bytes() of a bytes slice is that slice itself: one copy either way.
            events.append(MessageBytes(bytes(buf[pos : pos + total])))
            pos += total
            state = _IDLE

        self._state = state
        return pos

    def _lines_fit(self, buf: bytes | bytearray, start: int, end: int) -> bool:
        """True if no raw line of ``buf[start:end]`` is longer than ``max_line_length`` bytes."""
        limit = self._limits.max_line_length
        while start < end:
            eol = buf.find(b"\r\n", start, end)
            if eol < 0:
                eol = end
            if eol - start > limit:
                return False
            start = eol + 2
        return True
