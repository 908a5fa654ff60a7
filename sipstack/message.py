"""SIP requests and responses (RFC 3261 §7) and their serialisation.

A :class:`Message` keeps its header fields as received: an ordered list of
``(key, name, value)`` triples, where ``key`` is the lower-case full header name used for
look-ups (:func:`~sipstack.headers.header_key`), ``name`` is the spelling written on the wire and
``value`` the unfolded, stripped field value. Typed views (``msg.vias``, ``msg.cseq``,
``msg.from_`` ...) are parsed on first use and cached until that header is changed, so parsing
is lazy while a malformed header still surfaces as one :class:`~sipstack.errors.SipParseError`.

``Message.encode()`` is the serializer; ``parse_message(m.encode()) == m`` for every message
(see :mod:`sipstack.parser`).
"""

from __future__ import annotations

from typing import Any

from .errors import SipParseError
from .headers import (
    MULTI_VALUED,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    header_key,
    parse_cseq,
    parse_name_addr,
    parse_token_list,
    parse_uint,
    parse_via,
    split_commas,
)
from .uri import Uri, parse_uri

__all__ = ["REASON_PHRASES", "Message", "Request", "Response"]

SIP_VERSION = "SIP/2.0"

REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 421: "Extension Required", 423: "Interval Too Brief",
    429: "Provide Referrer Identity", 430: "Flow Failed", 439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

_MISSING = object()


class Message:
    """Base of :class:`Request` and :class:`Response`.

    Attributes:
        headers: ``list[tuple[key, name, value]]`` in wire order (see module docstring).
        body: the message body, bytes (exactly Content-Length bytes once parsed).
    """

    __slots__ = ("_cache", "body", "headers")

    def __init__(
        self, headers: list[tuple[str, str, str]] | None = None, body: bytes = b""
    ) -> None:
        self.headers: list[tuple[str, str, str]] = headers if headers is not None else []
        self.body: bytes = body
        self._cache: dict[str, Any] = {}

    # ----------------------------------------------------------------- raw header access
    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first header field called ``name`` (any case, compact or full)."""
        key = header_key(name)
        for k, _, v in self.headers:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """The values of every header field called ``name``, one per field line."""
        key = header_key(name)
        return [v for k, _, v in self.headers if k == key]

    def values(self, name: str) -> list[str]:
        """Every element of a list header, split at commas across all its field lines
        (RFC 3261 §7.3.1). For single-valued headers, the same as :meth:`get_all`."""
        key = header_key(name)
        if key not in MULTI_VALUED:
            return [v for k, _, v in self.headers if k == key]
        out: list[str] = []
        for k, _, v in self.headers:
            if k == key:
                out.extend(split_commas(v))
        return out

    def count(self, name: str) -> int:
        """How many header field lines are called ``name``."""
        key = header_key(name)
        return sum(1 for k, _, _ in self.headers if k == key)

    def __contains__(self, name: str) -> bool:
        key = header_key(name)
        return any(k == key for k, _, _ in self.headers)

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a header field (or insert it before all others with ``first=True``;
        for Via and Record-Route that is the top of the list)."""
        key = header_key(name)
        item = (key, canonical_name(key), str(value))
        if first:
            self.headers.insert(0, item)
        else:
            self.headers.append(item)
        self._cache.pop(key, None)

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one field ``value`` (at the place of the
        first one, else at the end)."""
        key = header_key(name)
        item = (key, canonical_name(key), str(value))
        out = []
        placed = False
        for h in self.headers:
            if h[0] == key:
                if not placed:
                    out.append(item)
                    placed = True
            else:
                out.append(h)
        if not placed:
            out.append(item)
        self.headers = out
        self._cache.pop(key, None)

    def remove(self, name: str) -> int:
        """Remove every field called ``name``; returns how many were removed."""
        key = header_key(name)
        before = len(self.headers)
        self.headers = [h for h in self.headers if h[0] != key]
        self._cache.pop(key, None)
        return before - len(self.headers)

    def pop_first(self, name: str) -> str | None:
        """Remove the first *element* of a list header (e.g. the top Via) and return it."""
        key = header_key(name)
        for i, (k, n, v) in enumerate(self.headers):
            if k == key:
                parts = split_commas(v)
                if len(parts) > 1:
                    self.headers[i] = (k, n, ", ".join(parts[1:]))
                else:
                    del self.headers[i]
                self._cache.pop(key, None)
                return parts[0]
        return None

    # ---------------------------------------------------------------------- typed views
    def _cached(self, key: str, build: Any) -> Any:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = build()
            self._cache[key] = value
        return value

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first (RFC 3261 §20.42). Raises SipParseError."""
        return self._cached("via", lambda: [parse_via(v) for v in self.values("via")])

    @property
    def top_via(self) -> Via:
        """The topmost Via. Raises SipParseError (400) when there is none."""
        vias = self.vias
        if not vias:
            raise SipParseError("missing Via")
        return vias[0]

    def _single(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise SipParseError(f"missing {canonical_name(key)}")
        return value

    @property
    def from_(self) -> NameAddr:
        """The From header (RFC 3261 §20.20). Raises SipParseError."""
        return self._cached("from", lambda: parse_name_addr(self._single("from")))

    @property
    def to(self) -> NameAddr:
        """The To header (RFC 3261 §20.39). Raises SipParseError."""
        return self._cached("to", lambda: parse_name_addr(self._single("to")))

    @property
    def call_id(self) -> str:
        """The Call-ID (RFC 3261 §20.8). Raises SipParseError when missing or not one word."""

        def build() -> str:
            value = self._single("call-id")
            if not value or any(c in value for c in " \t,"):
                raise SipParseError(f"bad Call-ID {value[:40]!r}")
            return value

        return self._cached("call-id", build)

    @property
    def cseq(self) -> CSeq:
        """The CSeq (RFC 3261 §20.16). Raises SipParseError."""
        return self._cached("cseq", lambda: parse_cseq(self._single("cseq")))

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards 0..255 (RFC 3261 §20.22), or ``None`` when absent."""

        def build() -> int | None:
            value = self.get("max-forwards")
            return None if value is None else parse_uint(value, 255, "Max-Forwards")

        return self._cached("max-forwards", build)

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value (RFC 3261 §20.10); ``[NameAddr(wildcard=True)]`` for ``*``."""
        return self._cached(
            "contact", lambda: [parse_name_addr(v) for v in self.values("contact")]
        )

    @property
    def expires(self) -> int | None:
        """The Expires header in seconds (RFC 3261 §20.19), ``None`` when absent.
        Raises SipParseError above 2**32-1 (RFC 4475 §3.1.2.4)."""

        def build() -> int | None:
            value = self.get("expires")
            return None if value is None else parse_uint(value, 2**32 - 1, "Expires")

        return self._cached("expires", build)

    @property
    def content_type(self) -> str | None:
        """The media type of Content-Type, lower case, without parameters; ``None`` if absent."""
        value = self.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()

    def tokens(self, name: str) -> list[str]:
        """A token-list header (Require, Supported, Allow ...) as a list. Raises SipParseError."""
        key = header_key(name)
        return self._cached(key, lambda: [t for v in self.get_all(key) for t in parse_token_list(v)])

    # ----------------------------------------------------------------------- serializer
    def start_line(self) -> str:
        """The request-line or status-line, without CRLF."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """Serialise to wire bytes (RFC 3261 §7): start line, header fields as stored,
        blank line, body. Content-Length is written as stored: use
        :meth:`set_body` to keep it right."""
        parts = [self.start_line()]
        parts.extend([f"{n}: {v}" for _, n, v in self.headers])
        parts.append("\r\n")
        head = "\r\n".join(parts).encode("utf-8", "surrogateescape")
        return head + self.body if self.body else head

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Set the body and its Content-Length (and Content-Type when given)."""
        self.body = body
        if content_type is not None:
            self.set("Content-Type", content_type)
        self.set("Content-Length", str(len(body)))

    def _key(self) -> tuple[Any, ...]:
        return (self.start_line(), [(k, v) for k, _, v in self.headers], self.body)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Message)
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __bytes__(self) -> bytes:
        return self.encode()


class Request(Message):
    """A SIP request (RFC 3261 §7.1).

    Attributes:
        method: the method token, case-sensitive (``"REGISTER"``).
        uri: the Request-URI as written; :attr:`request_uri` parses it.
        version: ``"SIP/2.0"``.
    """

    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: list[tuple[str, str, str]] | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        self.version = version

    @property
    def request_uri(self) -> Uri:
        """The parsed Request-URI. Raises SipParseError (400)."""
        return self._cached(" ruri", lambda: parse_uri(self.uri))

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response (RFC 3261 §7.2).

    Attributes:
        status: the status code, 100..699; reason: the reason phrase (may be empty).
    """

    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str, str]] | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = REASON_PHRASES.get(status, "") if reason is None else reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


_COPY_KEYS = ("via", "from", "to", "call-id", "cseq")


def make_response(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """Build a response to ``request`` (RFC 3261 §8.2.6.2): Via (all, in order), From, To
    (with ``to_tag`` added if the To has no tag yet), Call-ID and CSeq copied; Content-Length 0.

    Record-Route is not copied (only dialog-creating 2xx need it; the caller adds it).
    """
    headers = [h for h in request.headers if h[0] in _COPY_KEYS]
    if to_tag is not None:
        for i, (k, n, v) in enumerate(headers):
            if k == "to":
                if "tag" not in request.to.params:
                    headers[i] = (k, n, f"{v};tag={to_tag}")
                break
    headers.append(("content-length", "Content-Length", "0"))
    return Response(status, reason, headers)
