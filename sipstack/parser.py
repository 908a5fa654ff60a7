"""Bytes → :class:`~sipstack.message.Request` / :class:`~sipstack.message.Response`.

Two steps, so that the hot path stays cheap while malformed input is still caught:

* :func:`parse_message` checks the framing: start line, header field syntax (names are tokens,
  line folding, compact forms), Content-Length (RFC 3261 §7, §18.3, §20.14). Header *values*
  are kept as strings. A second Content-Length is reported by the validators (the parser
  frames with the last one).
* :func:`validate_request` / :func:`validate_response` parse the header fields every element
  relies on (Via, From, To, Call-ID, CSeq, Max-Forwards, Contact, Expires, Request-URI) and
  enforce RFC 3261 §8.2 / RFC 4475: duplicates of single-valued fields, CSeq method matching the
  request method, numeric bounds.

Both raise only :class:`~sipstack.errors.SipParseError`, whose ``status`` is the response to send
(400, 505); for a response the caller discards the message.

Well-known header names are written back in their canonical spelling (``v`` and ``VIA`` become
``Via``); other names keep the spelling they were received with.

Leniencies, on purpose: several SPs in the request line (RFC 4475 §3.1.2.9/10), bare-LF line
ends, a datagram without its final empty line, header values stripped of all surrounding white
space (``str.strip()``: SP, HT and the other Unicode spaces), spaces inside ``<...>``
(§3.1.2.14). Never accepted: a bare CR, a header name that is not a token, a Content-Length that
is not digits or exceeds the body.

Speed: the common message (CRLF line ends, header names seen before, no folding) takes one list
comprehension over the lines; the validators parse each header with one compiled regular
expression for its common form and fall back to the detailed parsers otherwise, which are the
reference (the property tests check that both agree). See ``bench/parse.py``.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import SipParseError
from .headers import (
    COMPACT_FORMS,
    METHODS,
    SINGLE_VALUED,
    canonical_name,
    check_name_addr,
    parse_cseq,
    parse_name_addr,
    parse_uint,
)
from .message import (
    FIRST_VALUES,
    Message,
    Request,
    Response,
    check_call_id,
    parse_contacts,
    parse_vias,
)
from .uri import SipUri

__all__ = ["parse_message", "validate_request", "validate_response"]

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VERSION_RE = re.compile(r"SIP/([0-9]+)\.([0-9]+)\Z", re.IGNORECASE)
_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")
_LINE_END_RE = re.compile(r"\r?\n")

_WELL_KNOWN = frozenset(
    {
        "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length",
        "content-type", "expires", "route", "record-route", "allow", "supported", "require",
        "proxy-require", "unsupported", "authorization", "www-authenticate",
        "proxy-authenticate", "proxy-authorization", "user-agent", "server", "event",
        "subscription-state", "accept", "path", "service-route", "allow-events",
        "content-encoding", "subject", "refer-to", "referred-by", "min-expires",
        "retry-after", "date", "timestamp", "warning",
    }
)
_known_names: dict[str, tuple[str, str]] = {}
_MAX_KNOWN = 2048


def _header_name(raw: str) -> tuple[str, str]:
    """(key, wire name) for a raw header name (as between line start and ``:``).

    Raises:
        SipParseError: the name is not a token (RFC 3261 §7.3.1, §25.1).
    """
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
    if len(_known_names) < _MAX_KNOWN:
        _known_names[raw] = (key, wire)
    return key, wire


# Seed the cache with the usual spellings, so that a flood of odd names cannot push them out.
for _key in sorted(_WELL_KNOWN):
    for _spelling in (_key, canonical_name(_key), _key.upper(), _key.title()):
        _header_name(_spelling)
for _compact in COMPACT_FORMS:
    _header_name(_compact)
    _header_name(_compact.upper())


def parse_message(
    data: bytes | bytearray | memoryview, *, datagram: bool = False
) -> Request | Response:
    """Parse one SIP message.

    Args:
        data: the message bytes. Leading CRLFs are ignored (RFC 3261 §7.5). Octets after
            Content-Length bytes of body are ignored (RFC 4475 §3.1.1.8, datagrams). Bare-LF
            line ends are accepted (leniency); a bare CR is not.
        datagram: ``True`` for UDP: the datagram is the whole message, so a header block
            without its final empty line is accepted (RFC 4475 §3.1.2.15 as printed). Either
            way a Content-Length larger than the body is an error (400): on streams the framer
            (:mod:`sipstack.framing`) has already waited for the whole message. Without a
            Content-Length the rest of ``data`` is the body.

    Returns:
        :class:`Request` or :class:`Response`; header values unparsed (lazy), unfolded and
        stripped of surrounding white space.

    Raises:
        SipParseError: 400 for bad framing, start line or header syntax; 505 for a SIP version
            other than 2.0 (RFC 3261 §8.2.4 ... §21.5.6, RFC 4475 §3.1.2.16).
    """
    if type(data) is not bytes:
        data = bytes(data)
    start = 0
    if data[:2] == b"\r\n":
        while data.startswith(b"\r\n", start):
            start += 2
    end = data.find(b"\r\n\r\n", start)
    headers: list[tuple[str, str, str]] | None = None
    if end >= 0:
        # Fast path: split at LF, strip the CR with the value's whitespace. It applies when
        # every header name has been seen before (so is a valid token), no line is folded or
        # lacks a ':' and no value holds a CR; anything else takes the careful path below.
        lines = data[start:end].decode("utf-8", "surrogateescape").split("\n")
        known = _known_names
        headers = []
        for i in range(1, len(lines)):
            line = lines[i]
            colon = line.find(":")
            entry = known.get(line[:colon]) if colon > 0 else None
            if entry is None:
                headers = None
                break
            value = line[colon + 1 :].strip()
            if "\r" in value:
                headers = None
                break
            headers.append((entry[0], entry[1], value))
        if headers is not None:
            first = lines[0]
            if first[-1:] == "\r":
                first = first[:-1]
            if "\r" in first:
                headers = None
            else:
                body = data[end + 4 :]
    if headers is None:
        lines, body = _split_lenient(data, start, datagram)
        headers = _parse_headers(lines)
        first = lines[0]
    if not first:
        raise SipParseError("empty start line")

    assert headers is not None
    # Content-Length is usually last; a second one is rejected by validate_*() (RFC 4475 §3.3.9).
    for key, _, value in reversed(headers):
        if key == "content-length":
            if not value.isdigit() or not value.isascii() or len(value) > 10:
                raise SipParseError(f"bad Content-Length {value[:20]!r}")
            length = int(value)
            if length != len(body):
                if length > len(body):
                    raise SipParseError("Content-Length larger than the body received")
                body = body[:length]
            break

    if first[:4] == "SIP/":
        return _response(first, headers, body)
    parts = first.split(" ")
    if len(parts) == 3 and parts[2] == "SIP/2.0" and parts[0] in METHODS:
        return Request(parts[0], parts[1], headers, body, "SIP/2.0")
    return _request(first, headers, body)


def _parse_headers(lines: list[str]) -> list[tuple[str, str, str]]:
    """Header fields of unfolded ``lines`` (``lines[0]`` is the start line)."""
    headers: list[tuple[str, str, str]] = []
    for i in range(1, len(lines)):
        name, colon, value = lines[i].partition(":")
        if not colon:
            raise SipParseError(f"header line without ':' {lines[i][:40]!r}")
        key, wire = _header_name(name)
        headers.append((key, wire, value.strip()))
    return headers


def _split_lenient(data: bytes, start: int, datagram: bool) -> tuple[list[str], bytes]:
    """Header lines and body when line ends are not all CRLF (bare LF accepted)."""
    m = _BLANK_LINE_RE.search(data, start)
    if m is not None:
        end = m.start()
        body = data[m.end() :]
    elif datagram:
        # A datagram is the whole message: take its end as the end of the header block
        # (the blank line is missing, as in RFC 4475 §3.1.2.15 as printed).
        end = len(data)
        body = b""
    else:
        raise SipParseError("incomplete header block (no empty line)")
    head = data[start:end].decode("utf-8", "surrogateescape")
    if head.endswith("\r\n"):
        head = head[:-2]
    elif head.endswith("\n"):
        head = head[:-1]
    lines = _LINE_END_RE.split(head)
    for line in lines:
        if "\r" in line:
            raise SipParseError("bare CR in the header block")
    return _unfold(lines), body


def _unfold(lines: list[str]) -> list[str]:
    """RFC 3261 §7.3.1: a line starting with SP/HT continues the previous one."""
    if not any(line[:1] in (" ", "\t") for line in lines):
        return lines
    out = [lines[0]]
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(out) == 1:
                raise SipParseError("continuation line before the first header")
            out[-1] = out[-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
    return out


def _check_version(version: str) -> str:
    if version == "SIP/2.0":
        return version
    m = _VERSION_RE.match(version)
    if m is None:
        raise SipParseError(f"bad SIP version {version[:20]!r}")
    if int(m.group(1)) != 2 or int(m.group(2)) != 0:
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


def _required(first: dict[str, str], key: str) -> str:
    """The first value of required header ``key`` (RFC 4475 §3.3.1: From, To, Call-ID, CSeq).

    Raises:
        SipParseError: the header is missing.
    """
    value = first.get(key)
    if value is None:
        raise SipParseError(f"missing {canonical_name(key)}")
    return value


def _validate_common(msg: Message) -> tuple[dict[str, Any], list[str]]:
    """Checks shared by requests and responses; returns the message's view cache and its
    Contact field lines. The parsed views go into the message's cache, so that ``msg.vias``,
    ``msg.to`` ... cost nothing afterwards, with the first value of every header name
    (:data:`~sipstack.message.FIRST_VALUES`). The From is only checked when it has the usual
    ``<sip:...>;tag=...`` form (``msg.from_`` parses it on first use)."""
    headers = msg._headers
    # The first value of each name: walk backwards, so the first field of a name is set last.
    first: dict[str, str] = {}
    for i in range(len(headers) - 1, -1, -1):
        field = headers[i]
        first[field[0]] = field[2]
    if len(first) == len(headers):  # every name once (the usual request): no duplicates
        value = first.get("via")
        vias = [value] if value is not None else []
        value = first.get("contact")
        contacts = [value] if value is not None else []
    else:
        vias = []
        contacts = []
        seen: set[str] = set()
        for key, _, value in headers:
            if key == "via":
                vias.append(value)
            elif key == "contact":
                contacts.append(value)
            elif key not in seen:
                seen.add(key)
            elif key in SINGLE_VALUED:
                raise SipParseError(f"more than one {canonical_name(key)}")  # RFC 4475 §3.3.8
    cache = msg._cache
    parsed = cache.get("via")
    if parsed is None:
        parsed = cache["via"] = parse_vias(vias)
    if not parsed:
        raise SipParseError("missing Via")
    # RFC 4475 §3.3.1: From, To, Call-ID and CSeq are required.
    if "from" not in cache:
        na = check_name_addr(_required(first, "from"))
        if na is not None:
            cache["from"] = na
    if "to" not in cache:
        cache["to"] = parse_name_addr(_required(first, "to"))
    if "call-id" not in cache:
        cache["call-id"] = check_call_id(_required(first, "call-id"))
    if "cseq" not in cache:
        cache["cseq"] = parse_cseq(_required(first, "cseq"))
    # Max-Forwards 0..255 (RFC 3261 §20.22), Expires < 2**32 (RFC 4475 §3.1.2.4).
    if "max-forwards" not in cache:
        value = first.get("max-forwards")
        cache["max-forwards"] = None if value is None else parse_uint(value, 255, "Max-Forwards")
    if "expires" not in cache:
        value = first.get("expires")
        cache["expires"] = None if value is None else parse_uint(value, 2**32 - 1, "Expires")
    cache[FIRST_VALUES] = first
    return cache, contacts


def validate_request(req: Request) -> None:
    """Parse and check what every element needs of a request (RFC 3261 §8.2, §16.3).

    Checks: at most one From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Content-Type,
    and From, To, Call-ID, CSeq and a Via present (RFC 4475 §3.3.1, §3.3.8); all Vias parse;
    CSeq number ``< 2**31`` and CSeq method == request method (RFC 4475 §3.1.2.17);
    Max-Forwards 0..255; Expires ``< 2**32``; every Contact parses, with ``expires``
    ``< 2**32``, a valid ``q`` and ``reg-id``; the Request-URI is a URI, and a SIP
    Request-URI carries no ``?headers`` (RFC 3261 §19.1.5, RFC 4475 §3.1.2.11).
    The Request-URI *scheme* is not checked here: that is the element's 416 decision, nor is
    the Contact ``*`` rule of RFC 3261 §10.3 step 6 (the registrar's).

    Afterwards the typed views (``vias``, ``to``, ``call_id``, ``cseq``, ``max_forwards``,
    ``expires``, ``contacts``, ``request_uri``) are parsed and cached, and so is the first value
    of every header name (``get()`` and ``in`` are one look-up). ``from_`` is checked, and
    parsed on first use when it has the usual form (:func:`~sipstack.headers.check_name_addr`).

    Raises:
        SipParseError: with status 400.
    """
    cache, contacts = _validate_common(req)
    if cache["cseq"].method != req.method:
        raise SipParseError("CSeq method does not match the request method")
    parsed = cache.get("contact")
    if parsed is None:
        parsed = cache["contact"] = parse_contacts(contacts)
    for contact in parsed:
        params = contact.params
        if params:
            if "expires" in params:
                contact.expires  # noqa: B018 - parse (raises SipParseError)
            if "q" in params:
                contact.q  # noqa: B018
            if "reg-id" in params:
                contact.reg_id  # noqa: B018
    ruri = req.request_uri
    if type(ruri) is SipUri and ruri.headers:
        raise SipParseError("headers are not allowed in a Request-URI")


def validate_response(resp: Response) -> None:
    """Parse and check what a client transaction needs of a response (RFC 3261 §8.1.3, §18.1.2):
    the same header checks as :func:`validate_request` for Via, From, To, Call-ID, CSeq,
    Max-Forwards and Expires.

    Raises:
        SipParseError: the response must be discarded.
    """
    _validate_common(resp)
