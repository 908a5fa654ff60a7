"""Header field names and the typed header values of RFC 3261 §7.3, §20 and §25.

Header *names* are case-insensitive and many have compact forms (RFC 3261 §7.3.3): every name is
reduced to a *key*, its lower-case full form (``"v"`` → ``"via"``), and written back with its
canonical spelling (``"Call-ID"``, ``"CSeq"``, ``"WWW-Authenticate"``).

Header *values* stay the strings that were received; the classes here (:class:`Via`,
:class:`NameAddr`, :class:`CSeq`) are parsed views made on demand, each with a ``__str__`` that
writes it back. All parsers raise :class:`~sipstack.errors.SipParseError` (status 400) and
nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipParseError
from .uri import SipUri, Uri, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "MULTI_VALUED",
    "SINGLE_VALUED",
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_name",
    "header_key",
    "parse_cseq",
    "parse_name_addr",
    "parse_params",
    "parse_token_list",
    "parse_uint",
    "parse_via",
    "split_commas",
]

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "n": "identity-info",
}

_CANONICAL = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "ms-diagnostics": "ms-diagnostics",
}

# Headers whose values are comma-separated lists (RFC 3261 §7.3.1: "field-name: field-value
# *(,field-value)" is equivalent to several header lines).
MULTI_VALUED = frozenset(
    {
        "via", "contact", "route", "record-route", "path", "service-route", "allow",
        "supported", "require", "proxy-require", "unsupported", "accept", "accept-encoding",
        "accept-language", "allow-events", "content-encoding", "content-language",
        "in-reply-to", "warning", "error-info", "alert-info", "call-info", "reason",
        "security-client", "security-server", "security-verify", "p-asserted-identity",
    }
)

# Headers that must appear at most once (RFC 3261 §7.3.1, §20; RFC 4475 §3.3.8, §3.3.9).
SINGLE_VALUED = frozenset(
    {"call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type"}
)

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_name_cache: dict[str, str] = {}


def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded (``"v"`` → ``"via"``)."""
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


def canonical_name(key: str) -> str:
    """The spelling used on the wire for a header key (``"call-id"`` → ``"Call-ID"``)."""
    name = _name_cache.get(key)
    if name is None:
        name = _CANONICAL.get(key) or "-".join(p.capitalize() for p in key.split("-"))
        if len(_name_cache) < 4096:
            _name_cache[key] = name
    return name


def is_token(text: str) -> bool:
    """True if ``text`` is an RFC 3261 §25.1 ``token``."""
    return bool(_TOKEN_RE.match(text))


def _open_quote(text: str) -> bool:
    """True if ``text`` ends inside a quoted string (odd count of unescaped quotes)."""
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    return text.count('"') % 2 == 1


def split_commas(value: str) -> list[str]:
    """Split a header value at the commas that separate list elements (RFC 3261 §7.3.1).

    Commas inside quoted strings and inside ``<...>`` do not split. Elements are stripped.
    An empty element (``"a,,b"``) is kept as ``""`` so that callers can reject it.
    """
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        return [v.strip() for v in value.split(",")]
    out: list[str] = []
    pending = ""
    for part in value.split(","):
        piece = pending + part if pending else part
        # Inside a quoted string (odd number of unescaped quotes) or an open <...>: rejoin.
        if _open_quote(piece) or piece.count("<") > piece.count(">"):
            pending = piece + ","
            continue
        out.append(piece.strip())
        pending = ""
    if pending:
        out.append(pending[:-1].strip())
    return out


def _split_semis(text: str) -> list[str]:
    parts = text.split(";")
    if '"' not in text:
        return parts
    out: list[str] = []
    pending = ""
    for part in parts:
        piece = pending + part if pending else part
        if _open_quote(piece):
            pending = piece + ";"
            continue
        out.append(piece)
        pending = ""
    if pending:
        raise SipParseError("unterminated quoted string in parameters")
    return out


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` after a header value (RFC 3261 §25.1).

    ``text`` starts at the first ``;`` (or is empty). Names are lower-cased; a flag parameter
    has the value ``None``; LWS around ``;`` and ``=`` is allowed; quoted values keep their
    quotes (``'"<urn:uuid:...>"'``).

    Raises:
        SipParseError: an empty parameter (``";;"``), a name that is not a token, or an empty
            or malformed value.
    """
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    if text[0] != ";":
        raise SipParseError(f"junk before parameters: {text[:40]!r}")
    for item in _split_semis(text[1:]):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name or not _TOKEN_RE.match(name):
            raise SipParseError(f"bad parameter {item.strip()[:40]!r}")
        if eq:
            value = value.strip()
            if not value:
                raise SipParseError(f"empty value for parameter {name!r}")
            if value[0] == '"':
                if _parse_quoted(value, 0)[1] != len(value):
                    raise SipParseError(f"junk after quoted value of parameter {name!r}")
            elif any(c in value for c in ' \t"<>,'):
                raise SipParseError(f"bad value for parameter {name!r}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def format_params(params: dict[str, str | None]) -> str:
    """Write parameters back as ``;name=value;flag``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def parse_uint(text: str, limit: int, what: str) -> int:
    """Parse ``1*DIGIT`` with an upper bound (inclusive).

    Raises:
        SipParseError: not digits, or larger than ``limit`` (RFC 4475 §3.1.2.4).
    """
    text = text.strip()
    if not text or not text.isdigit() or not text.isascii() or len(text) > 20:
        raise SipParseError(f"bad {what}: {text[:40]!r}")
    value = int(text)
    if value > limit:
        raise SipParseError(f"{what} too large: {text[:40]}")
    return value


def parse_token_list(value: str) -> list[str]:
    """Parse a comma-separated list of tokens (Require, Supported, Allow ...).

    Raises:
        SipParseError: an element that is not a token. An empty value gives ``[]``.
    """
    if not value.strip():
        return []
    out = []
    for item in value.split(","):
        item = item.strip()
        if not _TOKEN_RE.match(item):
            raise SipParseError(f"bad token {item[:40]!r}")
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------- Via

_VIA_RE = re.compile(
    r"\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*"
    r"([A-Za-z0-9\-.!%*_+`'~]+)\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:\s*:\s*(\d{1,5}))?\s*\Z"
)


@dataclass(slots=True)
class Via:
    """One Via header value (RFC 3261 §20.42, §18.2.1, RFC 3581 ``rport``).

    Attributes:
        transport: upper-case transport (``"UDP"``, ``"TCP"``, ``"TLS"``, ``"WS"``, or any token).
        host: sent-by host (IPv6 with brackets); port: sent-by port or ``None``.
        params: via-params with lower-cased names (``branch``, ``received``, ``rport`` ...).
        protocol: ``"SIP/2.0"`` (name/version as sent, without spaces).
    """

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter, or ``None``."""
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        """``host[:port]`` as sent."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    """Parse one Via value (one element of a comma-separated Via header).

    Raises:
        SipParseError: bad sent-protocol or sent-by, empty parameters (RFC 4475 §3.1.2.1), a
            port over 65535, or a non-numeric ``rport``/``ttl``.
    """
    head, semi, ptext = value.partition(";")
    m = _VIA_RE.match(head)
    if m is None:
        raise SipParseError(f"bad Via: {value[:80]!r}")
    name, version, transport, host, port = m.groups()
    port_num = None
    if port is not None:
        port_num = int(port)
        if port_num > 65535:
            raise SipParseError(f"bad Via port {port}")
    params = parse_params(semi + ptext) if semi else {}
    rport = params.get("rport")
    if rport is not None and not rport.isdigit():
        raise SipParseError("bad Via rport")
    return Via(transport.upper(), host, port_num, params, f"{name.upper()}/{version}")


# ----------------------------------------------------------------------------------- NameAddr


@dataclass(slots=True)
class NameAddr:
    """A From/To/Contact/Route value: ``[display-name] <URI> *(;param)`` or an addr-spec form
    (RFC 3261 §20.10, §20.20, §20.39, §25.1).

    Attributes:
        uri: the parsed URI (``None`` only for the Contact wildcard ``*``).
        display_name: the display name, unquoted and unescaped, or ``None``.
        params: header parameters with lower-cased names (``tag``, ``expires``, ``q``,
            ``+sip.instance`` ...); quoted values keep their quotes.
        wildcard: ``True`` for ``Contact: *``.
    """

    uri: Uri | None
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (From/To, RFC 3261 §19.3), or ``None``."""
        return self.params.get("tag")

    @property
    def sip_uri(self) -> SipUri:
        """The URI as a :class:`SipUri`.

        Raises:
            SipParseError: status 416 when the URI is not a SIP/SIPS URI.
        """
        if isinstance(self.uri, SipUri):
            return self.uri
        raise SipParseError("not a SIP URI", 416)

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        tail = format_params(self.params)
        if self.display_name is not None:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            return f'"{escaped}" <{self.uri}>{tail}'
        return f"<{self.uri}>{tail}"


_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


def _parse_quoted(text: str, start: int) -> tuple[str, int]:
    """Parse a quoted-string starting at ``text[start] == '"'``; return (content, index after).

    Raises:
        SipParseError: the quoted string is not terminated (RFC 4475 §3.1.2.6).
    """
    m = _QUOTED_RE.match(text, start)
    if m is None:
        raise SipParseError("unterminated quoted string")
    content = m.group(1)
    if "\\" in content:
        content = _UNESCAPE_RE.sub(r"\1", content)
    return content, m.end()


def parse_name_addr(value: str) -> NameAddr:
    """Parse one From/To/Contact/Route element (already split at list commas).

    Leniency (RFC 4475 §3.1.2.14 allows it): spaces just inside ``<`` ``>`` are ignored.

    Raises:
        SipParseError: unterminated quotes (§3.1.2.6), a display name that is not tokens
            (§3.1.2.15), an addr-spec holding ``,`` ``?`` or ``;`` in its URI (§3.1.2.13),
            missing ``>``, or a bad URI or parameter.
    """
    value = value.strip()
    if value == "*":
        return NameAddr(None, wildcard=True)
    if not value:
        raise SipParseError("empty address")
    display: str | None = None
    if value[0] == '"':
        display, pos = _parse_quoted(value, 0)
        rest = value[pos:].lstrip()
        if not rest.startswith("<"):
            raise SipParseError("quoted display name without <URI>")
        lt = pos + (len(value[pos:]) - len(rest))
    else:
        lt = value.find("<")
        if lt > 0:
            words = value[:lt].split()
            for word in words:
                if not _TOKEN_RE.match(word):
                    raise SipParseError(f"bad display name {value[:lt].strip()[:40]!r}")
            display = " ".join(words) if words else None
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise SipParseError("missing '>' in address")
        uri = parse_uri(value[lt + 1 : gt].strip())
        rest = value[gt + 1 :]
        params = parse_params(rest) if rest.strip() else {}
        return NameAddr(uri, display, params)
    # addr-spec: the URI ends at the first ';' and may not contain ',', '?' or whitespace.
    uri_text, semi, ptext = value.partition(";")
    uri_text = uri_text.rstrip()
    if any(c in uri_text for c in ",? \t"):
        raise SipParseError(f"URI with ',', '?' or spaces must be in <>: {uri_text[:60]!r}")
    uri = parse_uri(uri_text)
    params = parse_params(semi + ptext) if semi else {}
    return NameAddr(uri, None, params)


# --------------------------------------------------------------------------------------- CSeq

MAX_CSEQ = 2**31 - 1


@dataclass(frozen=True, slots=True)
class CSeq:
    """The CSeq header (RFC 3261 §20.16): sequence number ``< 2**31`` and method."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    """Parse ``CSeq: 1*DIGIT LWS Method``.

    Raises:
        SipParseError: not two fields, a number that is not digits or ``>= 2**31``
            (RFC 3261 §8.1.1.5), or a method that is not a token.
    """
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError(f"bad CSeq {value[:40]!r}")
    number = parse_uint(parts[0], MAX_CSEQ, "CSeq number")
    if not _TOKEN_RE.match(parts[1]):
        raise SipParseError(f"bad CSeq method {parts[1][:40]!r}")
    return CSeq(number, parts[1])
