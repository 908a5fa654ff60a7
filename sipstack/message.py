"""SIP requests and responses (RFC 3261 §7) and their serialisation.

A :class:`Message` keeps its header fields as received: an ordered list of
``(key, name, value)`` triples, where ``key`` is the lower-case full header name used for
look-ups (:func:`~sipstack.headers.header_key`), ``name`` is the spelling written on the wire and
``value`` the unfolded, stripped field value. Typed views (``msg.vias``, ``msg.cseq``,
``msg.from_`` ...) are parsed on first use and cached until that header is changed, so parsing
is lazy while a malformed header still surfaces as one :class:`~sipstack.errors.SipParseError`.

``Message.encode()`` is the serializer; ``parse_message(m.encode()) == m`` for every message
whose header values have no surrounding white space and no CR/LF (see :mod:`sipstack.parser`;
:meth:`Message.add` and :meth:`Message.set` refuse CR/LF).

:func:`parse_vias`, :func:`parse_contacts` and :func:`check_call_id` are the builders of the
typed views, shared with :mod:`sipstack.parser`'s validators, which fill the same cache.
"""

from __future__ import annotations

from typing import Any

from .errors import SipParseError
from .headers import (
    COMPACT_FORMS,
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

__all__ = [
    "FIRST_VALUES",
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
    "check_call_id",
    "list_elements",
    "make_response",
    "parse_contacts",
    "parse_vias",
]

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

# Header name as written by callers or on the wire -> key; seeded with the usual spellings so
# that the hot paths (Message.get, the parser) find them with one dict look-up.
_key_cache: dict[str, str] = {}
for _key in (
    "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length",
    "content-type", "expires", "route", "record-route", "allow", "supported", "require",
    "proxy-require", "unsupported", "authorization", "www-authenticate", "proxy-authenticate",
    "proxy-authorization", "user-agent", "server", "event", "subscription-state", "accept",
    "path", "service-route", "allow-events", "date", "timestamp", "min-expires", "retry-after",
    "warning", "reason", "content-encoding", "content-disposition", "subject", "organization",
    "priority", "call-info", "refer-to", "referred-by", "session-expires", "min-se",
    "p-asserted-identity", "ms-diagnostics", "sip-etag", "sip-if-match", "rseq", "rack",
):
    for _spelling in (_key, canonical_name(_key), _key.upper(), _key.title()):
        _key_cache[_spelling] = _key
for _compact, _key in COMPACT_FORMS.items():
    _key_cache[_compact] = _key_cache[_compact.upper()] = _key

_MISSING: Any = object()
_TOKENS = "tokens:"  # cache-key prefix of Message.tokens()
_RURI = " ruri"  # cache key of Request.request_uri (a header key never has a space)
FIRST_VALUES = " first"
"""Cache key of the ``{key: value of the first field of that name}`` dict that
:func:`sipstack.parser.validate_request` leaves in a message's view cache: :meth:`Message.get`
and ``in`` then cost one dict look-up. Dropped with the other views when the headers change."""


def _key_of(name: str) -> str:
    key = _key_cache.get(name)
    if key is None:
        key = header_key(name)
        if len(_key_cache) < 4096:
            _key_cache[name] = key
    return key


def check_call_id(value: str) -> str:
    """``value`` if it is a Call-ID (RFC 3261 §20.8, §25.1: ``word ["@" word]``, checked
    leniently: no LWS, no ``,``, no control characters).

    Raises:
        SipParseError: (400) empty or not one word.
    """
    if not value or not value.isprintable() or " " in value or "," in value:
        raise SipParseError(f"bad Call-ID {value[:40]!r}")
    return value


def list_elements(values: list[str]) -> list[str]:
    """The elements of list header field lines ``values``, split at the commas between them
    (RFC 3261 §7.3.1; commas inside quotes and ``<>`` are kept); ``values`` itself when no
    line holds a comma."""
    if not any("," in value for value in values):
        return values
    out: list[str] = []
    for value in values:
        if "," in value:
            out.extend(split_commas(value))
        else:
            out.append(value)
    return out


def parse_vias(values: list[str]) -> list[Via]:
    """Every Via of the Via field lines ``values`` (each may hold several, RFC 3261 §7.3.1).

    Raises:
        SipParseError: a Via that does not parse.
    """
    return [parse_via(element) for element in list_elements(values)]


def parse_contacts(values: list[str]) -> list[NameAddr]:
    """Every Contact of the Contact field lines ``values`` (RFC 3261 §20.10).

    Raises:
        SipParseError: a Contact that does not parse.
    """
    return [parse_name_addr(element) for element in list_elements(values)]


def _check_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value holds CR or LF: {value[:60]!r}")
    return value


class Message:
    """Base of :class:`Request` and :class:`Response`.

    Attributes:
        headers: ``list[tuple[key, name, value]]`` in wire order (see module docstring).
            Change it through :meth:`add`, :meth:`set`, :meth:`remove`, :meth:`pop_first` or by
            assigning a new list; after editing the list in place call :meth:`invalidate`, so
            that the typed views are parsed again.
        body: the message body, bytes (exactly Content-Length bytes once parsed).
    """

    __slots__ = ("_cache", "_headers", "body")

    def __init__(
        self, headers: list[tuple[str, str, str]] | None = None, body: bytes = b""
    ) -> None:
        self._headers: list[tuple[str, str, str]] = headers if headers is not None else []
        self.body: bytes = body
        self._cache: dict[str, Any] = {}

    @property
    def headers(self) -> list[tuple[str, str, str]]:
        """The header fields, ``(key, wire name, value)`` in wire order."""
        return self._headers

    @headers.setter
    def headers(self, value: list[tuple[str, str, str]]) -> None:
        self._headers = value
        self._cache.clear()

    def invalidate(self) -> None:
        """Forget every parsed view (call after editing :attr:`headers` in place)."""
        self._cache.clear()

    def _forget(self, key: str) -> None:
        cache = self._cache
        if cache:
            cache.pop(key, None)
            cache.pop(_TOKENS + key, None)
            cache.pop(FIRST_VALUES, None)

    # ----------------------------------------------------------------- raw header access
    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first header field called ``name`` (any case, compact or full)."""
        key = _key_cache.get(name) or _key_of(name)
        first = self._cache.get(FIRST_VALUES)
        if first is not None:
            return first.get(key, default)  # type: ignore[no-any-return]
        for k, _, v in self._headers:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """The values of every header field called ``name``, one per field line."""
        key = _key_cache.get(name) or _key_of(name)
        return [v for k, _, v in self._headers if k == key]

    def values(self, name: str) -> list[str]:
        """Every element of a list header, split at commas across all its field lines
        (RFC 3261 §7.3.1). For headers not in ``MULTI_VALUED``, the same as :meth:`get_all`."""
        key = _key_cache.get(name) or _key_of(name)
        lines = [v for k, _, v in self._headers if k == key]
        return list_elements(lines) if key in MULTI_VALUED else lines

    def count(self, name: str) -> int:
        """How many header field lines are called ``name``."""
        key = _key_cache.get(name) or _key_of(name)
        return sum(1 for k, _, _ in self._headers if k == key)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key_cache.get(name) or _key_of(name)
        first = self._cache.get(FIRST_VALUES)
        if first is not None:
            return key in first
        return key in [k for k, _, _ in self._headers]

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a header field (or insert it before all others with ``first=True``;
        for Via and Record-Route that is the top of the list).

        Raises:
            ValueError: ``value`` holds CR or LF (header injection).
        """
        key = _key_of(name)
        item = (key, canonical_name(key), _check_value(str(value)))
        if first:
            self._headers.insert(0, item)
        else:
            self._headers.append(item)
        self._forget(key)

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one field ``value`` (at the place of the
        first one, else at the end).

        Raises:
            ValueError: ``value`` holds CR or LF (header injection).
        """
        key = _key_of(name)
        item = (key, canonical_name(key), _check_value(str(value)))
        out = []
        placed = False
        for h in self._headers:
            if h[0] == key:
                if not placed:
                    out.append(item)
                    placed = True
            else:
                out.append(h)
        if not placed:
            out.append(item)
        self._headers = out
        self._forget(key)

    def remove(self, name: str) -> int:
        """Remove every field called ``name``; returns how many were removed."""
        key = _key_of(name)
        before = len(self._headers)
        self._headers = [h for h in self._headers if h[0] != key]
        self._forget(key)
        return before - len(self._headers)

    def pop_first(self, name: str) -> str | None:
        """Remove the first *element* of a list header (e.g. the top Via) and return it;
        ``None`` when there is no such header."""
        key = _key_of(name)
        for i, (k, n, v) in enumerate(self._headers):
            if k == key:
                parts = split_commas(v) if key in MULTI_VALUED else [v]
                if len(parts) > 1:
                    self._headers[i] = (k, n, ", ".join(parts[1:]))
                else:
                    del self._headers[i]
                self._forget(key)
                return parts[0]
        return None

    # ---------------------------------------------------------------------- typed views
    def _single(self, key: str) -> str:
        for k, _, v in self._headers:
            if k == key:
                return v
        raise SipParseError(f"missing {canonical_name(key)}")

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first (RFC 3261 §20.42). Raises SipParseError."""
        value = self._cache.get("via")
        if value is None:
            value = self._cache["via"] = parse_vias(
                [v for k, _, v in self._headers if k == "via"]
            )
        return value  # type: ignore[no-any-return]

    @property
    def top_via(self) -> Via:
        """The topmost Via. Raises SipParseError (400) when there is none."""
        vias = self.vias
        if not vias:
            raise SipParseError("missing Via")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        """The From header (RFC 3261 §20.20). Raises SipParseError."""
        value = self._cache.get("from")
        if value is None:
            value = self._cache["from"] = parse_name_addr(self._single("from"))
        return value  # type: ignore[no-any-return]

    @property
    def to(self) -> NameAddr:
        """The To header (RFC 3261 §20.39). Raises SipParseError."""
        value = self._cache.get("to")
        if value is None:
            value = self._cache["to"] = parse_name_addr(self._single("to"))
        return value  # type: ignore[no-any-return]

    @property
    def call_id(self) -> str:
        """The Call-ID (RFC 3261 §20.8). Raises SipParseError when missing or not one word
        (``word ["@" word]``: no LWS, no ``,``, no control characters)."""
        value = self._cache.get("call-id")
        if value is None:
            value = self._cache["call-id"] = check_call_id(self._single("call-id"))
        return value  # type: ignore[no-any-return]

    @property
    def cseq(self) -> CSeq:
        """The CSeq (RFC 3261 §20.16). Raises SipParseError."""
        value = self._cache.get("cseq")
        if value is None:
            value = self._cache["cseq"] = parse_cseq(self._single("cseq"))
        return value  # type: ignore[no-any-return]

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards 0..255 (RFC 3261 §20.22), or ``None`` when absent.
        Raises SipParseError."""
        value = self._cache.get("max-forwards", _MISSING)
        if value is _MISSING:
            text = self.get("max-forwards")
            value = None if text is None else parse_uint(text, 255, "Max-Forwards")
            self._cache["max-forwards"] = value
        return value  # type: ignore[no-any-return]

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value (RFC 3261 §20.10); ``[NameAddr(wildcard=True)]`` for ``*``.
        Raises SipParseError."""
        value = self._cache.get("contact")
        if value is None:
            value = self._cache["contact"] = parse_contacts(
                [v for k, _, v in self._headers if k == "contact"]
            )
        return value  # type: ignore[no-any-return]

    @property
    def expires(self) -> int | None:
        """The Expires header in seconds (RFC 3261 §20.19), ``None`` when absent.
        Raises SipParseError above 2**32-1 (RFC 4475 §3.1.2.4) or when not digits."""
        value = self._cache.get("expires", _MISSING)
        if value is _MISSING:
            text = self.get("expires")
            value = None if text is None else parse_uint(text, 2**32 - 1, "Expires")
            self._cache["expires"] = value
        return value  # type: ignore[no-any-return]

    @property
    def content_length(self) -> int | None:
        """Content-Length in octets (RFC 3261 §20.14), ``None`` when absent.
        Raises SipParseError."""
        text = self.get("content-length")
        return None if text is None else parse_uint(text, 2**32 - 1, "Content-Length")

    @property
    def content_type(self) -> str | None:
        """The media type of Content-Type, lower case, without parameters; ``None`` if absent."""
        value = self.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip(" \t").lower()

    def tokens(self, name: str) -> list[str]:
        """A token-list header (Require, Supported, Allow ...) as a list, across all its field
        lines. Raises SipParseError."""
        key = _key_of(name)
        value = self._cache.get(_TOKENS + key)
        if value is None:
            value = [t for v in self.get_all(key) for t in parse_token_list(v)]
            self._cache[_TOKENS + key] = value
        return value  # type: ignore[no-any-return]

    # ----------------------------------------------------------------------- serializer
    def start_line(self) -> str:
        """The request-line or status-line, without CRLF."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """Serialise to wire bytes (RFC 3261 §7): start line, header fields as stored,
        blank line, body. Content-Length is written as stored: use
        :meth:`set_body` to keep it right."""
        head = "\r\n".join(
            [self.start_line(), *[f"{n}: {v}" for _, n, v in self._headers], "", ""]
        ).encode("utf-8", "surrogateescape")
        return head + self.body if self.body else head

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Set the body and its Content-Length (and Content-Type when given)."""
        self.body = body
        if content_type is not None:
            self.set("Content-Type", content_type)
        self.set("Content-Length", str(len(body)))

    def _copy_into(self, other: Message) -> None:
        other._headers = list(self._headers)
        other.body = self.body
        other._cache = {}

    def _key(self) -> tuple[Any, ...]:
        return (self.start_line(), [(k, v) for k, _, v in self._headers], self.body)

    def __eq__(self, other: object) -> bool:
        """Equal when start lines, header keys and values (in order) and bodies are equal;
        the wire spelling of header names is not compared."""
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
        self._headers = headers if headers is not None else []
        self.body = body
        self._cache = {}
        self.method = method
        self.uri = uri
        self.version = version

    @property
    def request_uri(self) -> Uri:
        """The parsed Request-URI (re-parsed when :attr:`uri` changes). Raises SipParseError."""
        cached = self._cache.get(_RURI)
        if cached is None or cached[0] is not self.uri:
            cached = self._cache[_RURI] = (self.uri, parse_uri(self.uri))
        return cached[1]  # type: ignore[no-any-return]

    def start_line(self) -> str:
        """``Method SP Request-URI SP SIP-Version`` (RFC 3261 §7.1)."""
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> Request:
        """A copy with its own header list (values are immutable strings; body shared)."""
        other = Request(self.method, self.uri, version=self.version)
        self._copy_into(other)
        return other

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response (RFC 3261 §7.2).

    Attributes:
        status: the status code, 100..699; reason: the reason phrase (may be empty; the
            standard phrase of ``status`` when built with ``reason=None``).
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
        self._headers = headers if headers is not None else []
        self.body = body
        self._cache = {}
        self.status = status
        self.reason = REASON_PHRASES.get(status, "") if reason is None else reason
        self.version = version

    def start_line(self) -> str:
        """``SIP-Version SP Status-Code SP Reason-Phrase`` (RFC 3261 §7.2)."""
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        """A copy with its own header list (values are immutable strings; body shared)."""
        other = Response(self.status, self.reason, version=self.version)
        self._copy_into(other)
        return other

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


_COPY_KEYS = frozenset(("via", "from", "to", "call-id", "cseq"))


def make_response(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """Build a response to ``request`` (RFC 3261 §8.2.6.2): Via (all, in order), From, To,
    Call-ID and CSeq copied as field lines, in the request's order; ``to_tag`` is added to the
    To when it has no tag yet (a To that already has one is kept); Content-Length 0.

    Args:
        request: the request answered; status: 100..699; reason: the reason phrase, or
            ``None`` for the standard one; to_tag: the UAS tag (RFC 3261 §19.3).

    Raises:
        SipParseError: ``to_tag`` is given and the request's To does not parse.

    Record-Route is not copied (only dialog-creating 2xx need it; the caller adds it).
    """
    headers = [h for h in request._headers if h[0] in _COPY_KEYS]
    if to_tag is not None:
        for i, (k, n, v) in enumerate(headers):
            if k == "to":
                if request.to.tag is None:
                    headers[i] = (k, n, f"{v};tag={to_tag}")
                break
    headers.append(("content-length", "Content-Length", "0"))
    return Response(status, reason, headers)
