"""Bytes → :class:`~sipstack.message.Request` / :class:`~sipstack.message.Response`.

Two steps, so that the hot path stays cheap while malformed input is still caught:

* :func:`parse_message` checks the framing: start line, header field syntax (names are tokens,
  line folding, compact forms), Content-Length (RFC 3261 §7, §18.3, §20.14). Header *values*
  are kept as strings.
* :func:`validate_request` / :func:`validate_response` parse the header fields every element
  relies on (Via, From, To, Call-ID, CSeq, Max-Forwards, Contact, Expires, Request-URI) and
  enforce RFC 3261 §8.2 / RFC 4475: duplicates of single-valued fields, CSeq method matching the
  request method, numeric bounds.

Both raise only :class:`~sipstack.errors.SipParseError`, whose ``status`` is the response to send
(400, 505, 513); for a response the caller discards the message.
"""

from __future__ import annotations

import re

from .errors import SipParseError
from .headers import COMPACT_FORMS, SINGLE_VALUED, canonical_name
from .message import Message, Request, Response

__all__ = ["parse_message", "validate_request", "validate_response"]

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)\Z", re.IGNORECASE)
_known_names: dict[str, tuple[str, str]] = {}


def _header_name(raw: str) -> tuple[str, str]:
    """(key, wire name) for a raw header name; raises SipParseError if it is not a token."""
    known = _known_names.get(raw)
    if known is not None:
        return known
    name = raw.rstrip(" \t")
    if not _TOKEN_RE.match(name):
        raise SipParseError(f"bad header name {name[:40]!r}")
    key = name.lower()
    if key in COMPACT_FORMS:
        key = COMPACT_FORMS[key]
        wire = canonical_name(key)
    else:
        wire = canonical_name(key) if key in _WELL_KNOWN else name
    if len(_known_names) < 2048:
        _known_names[raw] = (key, wire)
    return key, wire


_WELL_KNOWN = frozenset(
    {
        "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length",
        "content-type", "expires", "route", "record-route", "allow", "supported", "require",
        "authorization", "www-authenticate", "proxy-authenticate", "proxy-authorization",
        "user-agent", "server", "event", "subscription-state", "accept", "path",
    }
)


def parse_message(data: bytes | bytearray | memoryview, *, datagram: bool = False) -> Request | Response:
    """Parse one SIP message.

    Args:
        data: the message bytes. Leading CRLFs are ignored (RFC 3261 §7.5). Octets after
            Content-Length bytes of body are ignored (RFC 4475 §3.1.1.8, datagrams).
        datagram: ``True`` for UDP. Either way a Content-Length larger than the body is an
            error (400): on streams the framer (:mod:`sipstack.framing`) has already waited
            for the whole message. Without a Content-Length the rest of ``data`` is the body.

    Returns:
        :class:`Request` or :class:`Response`; header values unparsed (lazy).

    Raises:
        SipParseError: 400 for bad framing, start line or header syntax; 505 for a SIP version
            other than 2.0 (RFC 3261 §8.2.4 ... §21.5.6).
    """
    data = bytes(data)
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        head = data[start:end].decode("utf-8", "surrogateescape")
        body = data[end + 4 :]
        lines = head.split("\r\n")
    else:
        # Lenient: bare-LF line ends.
        end = data.find(b"\n\n", start)
        if end >= 0:
            body = data[end + 2 :]
        elif datagram:
            # A datagram is the whole message: take its end as the end of the header block
            # (the blank line is missing, as in RFC 4475 §3.1.2.15 as printed).
            end = len(data)
            body = b""
        else:
            raise SipParseError("incomplete header block (no empty line)")
        head = data[start:end].rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        lines = head.replace("\r\n", "\n").split("\n")
    if not lines or not lines[0]:
        raise SipParseError("empty start line")

    # RFC 3261 §7.3.1: a line starting with SP/HT continues the previous one.
    if any(line[:1] in (" ", "\t") for line in lines[1:]):
        folded: list[str] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t"):
                if not folded:
                    raise SipParseError("continuation line before the first header")
                folded[-1] = folded[-1].rstrip(" \t") + " " + line.strip(" \t")
            else:
                folded.append(line)
        header_lines = folded
    else:
        header_lines = lines[1:]

    headers: list[tuple[str, str, str]] = []
    append = headers.append
    content_length: str | None = None
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without ':' {line[:40]!r}")
        key, wire = _header_name(name)
        value = value.strip(" \t")
        if key == "content-length":
            if content_length is not None:
                raise SipParseError("more than one Content-Length")  # RFC 4475 §3.3.9
            content_length = value
        append((key, wire, value))

    if content_length is not None:
        if not content_length.isdigit() or not content_length.isascii() or len(content_length) > 10:
            raise SipParseError(f"bad Content-Length {content_length[:20]!r}")
        length = int(content_length)
        if length > len(body):
            raise SipParseError("Content-Length larger than the body received")
        if length < len(body):
            body = body[:length]

    first = lines[0]
    if first.startswith("SIP/"):
        return _response(first, headers, body)
    return _request(first, headers, body)


def _check_version(version: str) -> str:
    m = _VERSION_RE.match(version)
    if m is None:
        raise SipParseError(f"bad SIP version {version[:20]!r}")
    if m.group(1) != "2" or m.group(2) != "0":
        raise SipParseError(f"SIP version {version[:20]} not supported", 505)
    return "SIP/2.0"


def _request(line: str, headers: list[tuple[str, str, str]], body: bytes) -> Request:
    # Leniency (RFC 4475 §3.1.2.9, §3.1.2.10): several SPs and trailing SPs are accepted.
    parts = line.split(" ")
    if len(parts) != 3:
        parts = line.split()
        if len(parts) != 3:
            raise SipParseError("bad request line")
    method, uri, version = parts
    if not _TOKEN_RE.match(method):
        raise SipParseError(f"bad method {method[:20]!r}")
    return Request(method, uri, headers, body, _check_version(version))


def _response(line: str, headers: list[tuple[str, str, str]], body: bytes) -> Response:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
        raise SipParseError(f"bad status code {code[:20]!r}")
    return Response(int(code), reason, headers, body, _check_version(version))


def _validate_common(msg: Message) -> None:
    seen: set[str] = set()
    for key, _, value in msg.headers:
        if key in SINGLE_VALUED:
            if key in seen:
                raise SipParseError(f"more than one {canonical_name(key)}")  # RFC 4475 §3.3.8
            seen.add(key)
    if not msg.vias:
        raise SipParseError("missing Via")
    msg.from_  # noqa: B018 - parse (raises SipParseError)
    msg.to  # noqa: B018
    msg.call_id  # noqa: B018
    msg.cseq  # noqa: B018


def validate_request(req: Request) -> None:
    """Parse and check what every element needs of a request (RFC 3261 §8.2, §16.3).

    Checks: exactly one From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Content-Type;
    all Vias parse; CSeq number ``< 2**31`` and CSeq method == request method (RFC 4475
    §3.1.2.17); Max-Forwards 0..255; Expires ``< 2**32``; every Contact parses; the
    Request-URI is a URI, and a SIP Request-URI carries no ``?headers`` (RFC 3261 §19.1.5).
    The Request-URI *scheme* is not checked here: that is the element's 416 decision.

    Raises:
        SipParseError: with status 400.
    """
    _validate_common(req)
    if req.cseq.method != req.method:
        raise SipParseError("CSeq method does not match the request method")
    req.max_forwards  # noqa: B018
    req.expires  # noqa: B018
    if "contact" in req:
        for contact in req.contacts:
            params = contact.params
            if "expires" in params:
                value = params["expires"]
                if value is None or not value.isdigit() or len(value) > 10 or int(value) > 2**32 - 1:
                    raise SipParseError("bad Contact expires")
    ruri = req.request_uri
    if getattr(ruri, "headers", None):
        raise SipParseError("headers are not allowed in a Request-URI")


def validate_response(resp: Response) -> None:
    """Parse and check what a client transaction needs of a response (RFC 3261 §8.1.3, §18.1.2).

    Raises:
        SipParseError: the response must be discarded.
    """
    _validate_common(resp)
