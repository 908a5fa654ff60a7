"""Header field names and the typed header values of RFC 3261 §7.3, §20 and §25.

Header *names* are case-insensitive and many have compact forms (RFC 3261 §7.3.3): every name is
reduced to a *key*, its lower-case full form (``"v"`` → ``"via"``), and written back with its
canonical spelling (``"Call-ID"``, ``"CSeq"``, ``"WWW-Authenticate"``).

Header *values* stay the strings that were received; the classes here (:class:`Via`,
:class:`NameAddr`, :class:`CSeq`) are parsed views made on demand, each with a ``__str__`` that
writes it back. All parsers raise :class:`~sipstack.errors.SipParseError` (status 400) and
nothing else.

Parameters follow RFC 3261 §25.1 strictly: ``generic-param = token [ "=" (token / host /
quoted-string) ]``, so ``;a=b=c`` or ``;a=b/c`` are errors (quote such values).

Each parser has a fast path, one compiled regular expression (possessive quantifiers, no
backtracking) for the common form, and a detailed reference parser for everything else, which
also gives the precise error messages.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import SipParseError
from .uri import (
    FAST_SIP_PATTERN,
    SIP_URI_MEMO,
    MatchMemo,
    SipUri,
    Uri,
    fast_sip_uri,
    parse_uri,
    port_number,
)

__all__ = [
    "COMPACT_FORMS",
    "MAX_CSEQ",
    "METHODS",
    "MULTI_VALUED",
    "SINGLE_VALUED",
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_name",
    "check_name_addr",
    "format_params",
    "header_key",
    "is_token",
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
        "p-preferred-identity", "p-associated-uri", "history-info", "accept-contact",
        "reject-contact", "request-disposition", "privacy",
    }
)

# Headers that must appear at most once (RFC 3261 §7.3.1, §20; RFC 4475 §3.3.8, §3.3.9).
SINGLE_VALUED = frozenset(
    {"call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type"}
)

_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(rf"[{_TOKEN_CHARS}]+\Z")
# A quoted-string (RFC 3261 §25.1), unrolled and possessive so that the regex engine neither
# loops per alternative nor backtracks.
# A repeated *group* is made possessive as an atomic group, (?>(?:...)*), never (?:...)*+:
# Python documents the two as equal, but 3.11.0 to 3.11.4 (Debian 12's 3.11.2 among them)
# match a possessive group repeat wrongly (CPython gh-106052, gh-100061: ";" passed as a
# parameter list). Possessive single-character repeats ([...]*+) are not affected.
_QUOTED = r'"[^"\\]*+(?>(?:\\.[^"\\]*+)*)"'
# gen-value = token / host / quoted-string (RFC 3261 §25.1).
_VALUE_CHARS = rf"{_TOKEN_CHARS}\[\]:"
_VALUE_RE = re.compile(rf"[{_VALUE_CHARS}]+\Z")
# *( SEMI generic-param ) with the LWS around ';' and '=', as one group; the pattern checks the
# syntax, _findall_params then takes (name, value) pairs out of a text it has accepted.
_PARAMS = (
    rf"((?>(?:[ \t]*+;[ \t]*+[{_TOKEN_CHARS}]++[ \t]*+"
    rf"(?:=[ \t]*+(?:[{_VALUE_CHARS}]++|{_QUOTED}))?)*))[ \t]*+"
)
_PARAMS_RE = re.compile(rf"{_PARAMS}\Z", re.DOTALL)
# The same with group 1 = the whole item, for texts not checked yet: the items cover the text
# exactly when their lengths add up to its length.
_findall_param_items = re.compile(
    rf"([ \t]*+;[ \t]*+([{_TOKEN_CHARS}]++)[ \t]*+"
    rf"(?:=[ \t]*+([{_VALUE_CHARS}]++|{_QUOTED}))?[ \t]*+)",
    re.DOTALL,
).findall
_findall_params = re.compile(
    rf";[ \t]*+([{_TOKEN_CHARS}]++)[ \t]*+(?:=[ \t]*+([{_VALUE_CHARS}]++|{_QUOTED}))?",
    re.DOTALL,
).findall
# host = hostname / IPv4address (RFC 3261 §25.1, leniently: labels of alphanumerics and '-',
# not starting or ending with '-'); the same language as sipstack.uri's hostname check.
_HOSTNAME = r"[A-Za-z0-9][A-Za-z0-9\-.]*+(?<!-)(?<!-\.)(?<!\.\.)"
# One element of a comma-separated list: commas inside quotes or <...> do not count.
_LIST_ELEMENT_RE = re.compile(rf'(?>(?:[^,"<]++|{_QUOTED}|<[^>]*+>)*)', re.DOTALL)
_QUOTED_RE = re.compile(rf"{_QUOTED}", re.DOTALL)
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_SCHEME_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")
_DISPLAY_TOKENS_RE = re.compile(rf"[{_TOKEN_CHARS} \t]*\Z")
_name_cache: dict[str, str] = {}


def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded (``"v"`` → ``"via"``).

    Source: RFC 3261 §7.3.1 (names are case-insensitive), §7.3.3 (compact forms).
    """
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


def canonical_name(key: str) -> str:
    """The spelling used on the wire for a header key (``"call-id"`` → ``"Call-ID"``,
    ``"user-agent"`` → ``"User-Agent"``)."""
    name = _name_cache.get(key)
    if name is None:
        name = _CANONICAL.get(key) or "-".join(p.capitalize() for p in key.split("-"))
        if len(_name_cache) < 4096:
            _name_cache[key] = name
    return name


def is_token(text: str) -> bool:
    """True if ``text`` is an RFC 3261 §25.1 ``token``. ASCII letters and digits (nearly every
    parameter name and many values) are decided without the pattern, and so are those that
    also hold ``-`` and ``.`` (branches, tags, host names)."""
    if text.isascii() and (text.isalnum() or text.replace("-", "").replace(".", "").isalnum()):
        return True
    return _TOKEN_RE.match(text) is not None


def split_commas(value: str) -> list[str]:
    """Split a header value at the commas that separate list elements (RFC 3261 §7.3.1).

    Commas inside quoted strings and inside ``<...>`` do not split. Elements are stripped.
    An empty element (``"a,,b"``) is kept as ``""`` so that callers can reject it; an
    unterminated quoted string or ``<`` makes the rest of the value one (malformed) element,
    which the element parser then rejects.
    """
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        return [v.strip() for v in value.split(",")]
    out: list[str] = []
    pos = 0
    n = len(value)
    match = _LIST_ELEMENT_RE.match
    while True:
        end = match(value, pos).end()  # type: ignore[union-attr]  # always matches
        if end < n and value[end] != ",":
            out.append(value[pos:].strip())  # unbalanced '"' or '<'
            return out
        out.append(value[pos:end].strip())
        if end >= n:
            return out
        pos = end + 1


def _split_semis(text: str) -> list[str]:
    """Split at ``;`` outside quoted strings. Raises SipParseError on an open quote."""
    if '"' not in text:
        return text.split(";")
    out: list[str] = []
    start = pos = 0
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == ";":
            out.append(text[start:pos])
            start = pos = pos + 1
        elif c == '"':
            m = _QUOTED_RE.match(text, pos)
            if m is None:
                raise SipParseError("unterminated quoted string in parameters")
            pos = m.end()
        else:
            pos += 1
    out.append(text[start:])
    return out


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` after a header value (RFC 3261 §25.1).

    ``text`` starts at the first ``;`` (LWS before it is allowed) or is empty. Names are
    lower-cased; a flag parameter has the value ``None``; LWS around ``;`` and ``=`` is
    allowed; values are ``token / host / quoted-string`` and quoted values keep their quotes
    (``'"<urn:uuid:...>"'``). A repeated name keeps its last value.

    Raises:
        SipParseError: an empty parameter (``";;"``, RFC 4475 §3.1.2.1), a name that is not a
            token, an empty or malformed value, an unterminated quoted string.
    """
    if _PARAMS_RE.match(text) is not None:
        return {name.lower(): value or None for name, value in _findall_params(text)}
    return _parse_params_slow(text)


def _parse_params_slow(text: str) -> dict[str, str | None]:
    """The reference implementation of :func:`parse_params`, with precise errors."""
    params: dict[str, str | None] = {}
    text = text.strip(" \t")
    if not text:
        return params
    if text[0] != ";":
        raise SipParseError(f"junk before parameters: {text[:40]!r}")
    for item in _split_semis(text[1:]):
        name, eq, value = item.partition("=")
        name = name.strip(" \t")
        if not name or not _TOKEN_RE.match(name):
            raise SipParseError(f"bad parameter {item.strip()[:40]!r}")
        if eq:
            value = value.strip(" \t")
            if not value:
                raise SipParseError(f"empty value for parameter {name[:40]!r}")
            if value[0] == '"':
                if _parse_quoted(value, 0)[1] != len(value):
                    raise SipParseError(f"junk after quoted value of parameter {name[:40]!r}")
            elif not _VALUE_RE.match(value):
                raise SipParseError(f"bad value for parameter {name[:40]!r}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def format_params(params: dict[str, str | None]) -> str:
    """Write parameters back as ``;name=value;flag`` (values as stored, quotes kept)."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def parse_uint(text: str, limit: int, what: str) -> int:
    """Parse ``1*DIGIT`` (LWS around it allowed) with an upper bound (inclusive).

    Args:
        text: the digits; limit: the largest value allowed; what: a name for the message.

    Raises:
        SipParseError: not ASCII digits, or larger than ``limit`` (RFC 4475 §3.1.2.4).
    """
    if text.isdigit() and text.isascii() and len(text) < 19:
        value = int(text)
        if value <= limit:
            return value
    text = text.strip(" \t")
    if not text or not text.isdigit() or not text.isascii():
        raise SipParseError(f"bad {what}: {text[:40]!r}")
    if len(text) > 20:
        raise SipParseError(f"{what} too large: {text[:40]}")
    value = int(text)
    if value > limit:
        raise SipParseError(f"{what} too large: {text[:40]}")
    return value


def parse_token_list(value: str) -> list[str]:
    """Parse a comma-separated list of tokens (Require, Supported, Allow ... RFC 3261 §20).

    Raises:
        SipParseError: an element that is not a token. An empty value gives ``[]``.
    """
    if not value.strip(" \t"):
        return []
    out = []
    for item in value.split(","):
        item = item.strip(" \t")
        if not _TOKEN_RE.match(item):
            raise SipParseError(f"bad token {item[:40]!r}")
        out.append(item)
    return out


def unquote(text: str) -> str:
    """The content of a quoted-string (``'"a\\\\"b"'`` → ``'a"b'``); other text unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        content = text[1:-1]
        return _UNESCAPE_RE.sub(r"\1", content) if "\\" in content else content
    return text


# ---------------------------------------------------------------------------------------- Via

_HOST = rf"(?:\[[0-9A-Fa-f:.]+\]|{_HOSTNAME})"
# The common Via: "SIP/2.0/transport host[:port]" and parameters, "branch" first or absent.
_VIA_FAST_RE = re.compile(
    rf"SIP/2\.0/([{_TOKEN_CHARS}]++) ({_HOSTNAME})(?::([0-9]{{1,5}}+))?"
    rf"(?:;branch=([{_TOKEN_CHARS}]++))?(.*)\Z",
    re.DOTALL,
)
# The part of a common Via before its first ';' (a client's sent-protocol and sent-by, the same
# in every request it sends, where the branch differs): groups transport, host, port.
_VIA_HEAD_RE = re.compile(rf"SIP/2\.0/([{_TOKEN_CHARS}]++) ({_HOSTNAME})(?::([0-9]{{1,5}}+))?\Z")
_VIA_HEAD_MEMO = MatchMemo(_VIA_HEAD_RE)
_VIA_RE = re.compile(
    rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*"
    rf"([{_TOKEN_CHARS}]+)[ \t]+({_HOST})(?:[ \t]*:[ \t]*([0-9]{{1,5}}))?[ \t]*\Z"
)


@dataclass(slots=True, init=False)
class Via:
    """One Via header value (RFC 3261 §20.42, §18.2.1, RFC 3581 ``rport``).

    Attributes:
        transport: upper-case transport (``"UDP"``, ``"TCP"``, ``"TLS"``, ``"WS"``, or any token).
        host: sent-by host (IPv6 with brackets); port: sent-by port or ``None``.
        params: via-params with lower-cased names (``branch``, ``received``, ``rport`` ...);
            ``None`` for a flag (``rport`` as a client sends it).
        protocol: ``"SIP/2.0"`` (name/version as sent, name upper-cased, without spaces).
    """

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        protocol: str = "SIP/2.0",
    ) -> None:
        # Written out (init=False): see docs/native.md (generated __init__ runs interpreted).
        self.transport = transport
        self.host = host
        self.port = port
        self.params = {} if params is None else params
        self.protocol = protocol

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter (RFC 3261 §8.1.1.7), or ``None``."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The ``received`` parameter (RFC 3261 §18.2.1), or ``None``."""
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value (RFC 3581) as an int, or ``None`` when absent or a bare flag."""
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def has_rport(self) -> bool:
        """True when ``rport`` is present (flag or value): the client asks for RFC 3581."""
        return "rport" in self.params

    @property
    def sent_by(self) -> str:
        """``host[:port]`` as sent."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    """Parse one Via value (one element of a comma-separated Via header).

    Returns:
        a :class:`Via`; LWS inside sent-protocol and around ``:``/``;``/``=`` is accepted.

    Raises:
        SipParseError: bad sent-protocol or sent-by, empty parameters (RFC 4475 §3.1.2.1), a
            port over 65535, a non-numeric ``rport`` (RFC 3581) or a ``ttl`` not in 0..255.
    """
    # Fastest: a known sent-protocol and sent-by (memoised), then ";branch=token" and
    # optionally ";rport", the form nearly every client sends; the same result as the match of
    # _VIA_FAST_RE below would give (tests/test_properties.py holds them equal).
    semi = value.find(";")
    entry = _VIA_HEAD_MEMO.match(value if semi < 0 else value[:semi])
    if entry is not None and (semi < 0 or value.startswith(";branch=", semi)):
        v_transport, v_host, v_port = entry[0]
        assert v_transport is not None and v_host is not None
        if semi < 0:
            return _via(v_transport, v_host, v_port, {})
        end = value.find(";", semi + 8)
        v_branch = value[semi + 8 :] if end < 0 else value[semi + 8 : end]
        if v_branch and is_token(v_branch):
            if end < 0:
                return _via(v_transport, v_host, v_port, {"branch": v_branch})
            if len(value) == end + 6 and value.endswith(";rport"):
                return _via(v_transport, v_host, v_port, {"branch": v_branch, "rport": None})
    return _parse_via_general(value)


def _parse_via_general(value: str) -> Via:
    """:func:`parse_via` without its fastest path: the reference that path is tested against."""
    m = _VIA_FAST_RE.match(value)
    if m is not None:
        transport, host, port, branch, rest = m.groups()
        protocol = "SIP/2.0"
        params = {} if branch is None else {"branch": branch}
        if rest == ";rport":  # RFC 3581 clients: the most common tail by far
            params["rport"] = None
        elif rest:
            total = 0
            for whole, pname, pvalue in _findall_param_items(rest):
                total += len(whole)
                params[pname.lower()] = pvalue or None
            if total != len(rest):
                params = parse_params(rest if branch is None else f";branch={branch}{rest}")
    else:
        head, semi, ptext = value.partition(";")
        m = _VIA_RE.match(head)
        if m is None:
            raise SipParseError(f"bad Via: {value[:80]!r}")
        name, version, transport, host, port = m.groups()
        if host[0] == "[":
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise SipParseError(f"bad Via host {host[:60]!r}") from None
        protocol = f"{name.upper()}/{version}"
        params = parse_params(semi + ptext) if semi else {}
    port_num = port_number(port, "bad Via port")
    if "rport" in params:
        rport = params["rport"]
        if rport is not None and (not rport.isdigit() or len(rport) > 5 or int(rport) > 65535):
            raise SipParseError("bad Via rport")
    if "ttl" in params:
        ttl = params["ttl"]
        if ttl is None or not ttl.isdigit() or len(ttl) > 3 or int(ttl) > 255:
            raise SipParseError("bad Via ttl")
    via = Via(transport.upper(), host, port_num, params, protocol)
    return via


def _via(transport: str, host: str, port: str | None, params: dict[str, str | None]) -> Via:
    """The :class:`Via` of :func:`parse_via`'s fastest path (SIP/2.0, a checked hostname).

    Raises:
        SipParseError: the port is above 65535.
    """
    return Via(transport.upper(), host, port_number(port, "bad Via port"), params)


# ----------------------------------------------------------------------------------- NameAddr

_Q_RE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")


@dataclass(slots=True, init=False)
class NameAddr:
    """A From/To/Contact/Route value: ``[display-name] <URI> *(;param)`` or an addr-spec form
    (RFC 3261 §20.10, §20.20, §20.39, §25.1).

    Attributes:
        uri: the parsed URI (``None`` only for the Contact wildcard ``*``).
        display_name: the display name, unquoted and unescaped, or ``None``.
        params: header parameters with lower-cased names (``tag``, ``expires``, ``q``,
            ``+sip.instance`` ...); quoted values keep their quotes.
        wildcard: ``True`` for ``Contact: *``.
        uri_text: ``str(uri)`` as the parser found it written, when the text was already in
            that canonical form (the usual ``<sip:user@host:port;params>``), else ``None``:
            ``na.uri_text or str(na.uri)`` saves re-serialising a received URI. Not compared;
            set it back to ``None`` if you change :attr:`uri` in place.
    """

    uri: Uri | None
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False
    uri_text: str | None = field(default=None, compare=False, repr=False)

    def __init__(
        self,
        uri: Uri | None,
        display_name: str | None = None,
        params: dict[str, str | None] | None = None,
        wildcard: bool = False,
        uri_text: str | None = None,
    ) -> None:
        # Written out (init=False): see docs/native.md (generated __init__ runs interpreted).
        self.uri = uri
        self.display_name = display_name
        self.params = {} if params is None else params
        self.wildcard = wildcard
        self.uri_text = uri_text

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

    @property
    def expires(self) -> int | None:
        """The Contact ``expires`` parameter in seconds (RFC 3261 §20.10), ``None`` if absent.

        Raises:
            SipParseError: (400) not digits or above 2**32-1 (RFC 4475 §3.1.2.4).
        """
        if "expires" not in self.params:
            return None
        return parse_uint(self.params["expires"] or "", 2**32 - 1, "Contact expires")

    @property
    def q(self) -> float | None:
        """The Contact ``q`` parameter (RFC 3261 §20.10: ``0`` .. ``1``, 3 decimals), ``None``
        if absent.

        Raises:
            SipParseError: (400) not a qvalue.
        """
        if "q" not in self.params:
            return None
        value = self.params["q"]
        if value is None or not _Q_RE.match(value):
            raise SipParseError(f"bad q value {value!r}")
        return float(value)

    @property
    def instance_id(self) -> str | None:
        """The ``+sip.instance`` value (RFC 5626 §4.1) without its quotes and ``<>``, e.g.
        ``"urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"``; ``None`` if absent."""
        value = self.params.get("+sip.instance")
        if value is None:
            return None
        value = unquote(value)
        if value.startswith("<") and value.endswith(">"):
            value = value[1:-1]
        return value

    @property
    def reg_id(self) -> int | None:
        """The ``reg-id`` parameter (RFC 5626 §4.2, 1..2**31-1), ``None`` if absent.

        Raises:
            SipParseError: (400) not a number in range.
        """
        if "reg-id" not in self.params:
            return None
        value = parse_uint(self.params["reg-id"] or "", 2**31 - 1, "reg-id")
        if value == 0:
            raise SipParseError("reg-id must be at least 1")
        return value

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        tail = format_params(self.params) if self.params else ""
        if self.display_name is not None:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            return f'"{escaped}" <{self.uri}>{tail}'
        return f"<{self.uri}>{tail}"


def _parse_quoted(text: str, start: int) -> tuple[str, int]:
    """Parse a quoted-string starting at ``text[start] == '"'``; return (content, index after).

    Raises:
        SipParseError: the quoted string is not terminated (RFC 4475 §3.1.2.6).
    """
    m = _QUOTED_RE.match(text, start)
    if m is None:
        raise SipParseError("unterminated quoted string")
    content = text[start + 1 : m.end() - 1]
    if "\\" in content:
        content = _UNESCAPE_RE.sub(r"\1", content)
    return content, m.end()


# The common name-addr: a quoted display name without escapes or a token display name, then
# <common SIP URI>, then header parameters ("tag" first or absent).
_NAME_ADDR_FAST_RE = re.compile(
    rf'(?:"([^"\\]*+)"[ \t]*+|([{_TOKEN_CHARS}]++(?>(?:[ \t]++[{_TOKEN_CHARS}]++)*))[ \t]*+)?'
    rf"<{FAST_SIP_PATTERN}>(?:;tag=([{_TOKEN_CHARS}]++))?(.*)\Z",
    re.DOTALL,
)

# Matches of _NAME_ADDR_FAST_RE with the span of the URI (groups 3 to 7).
_NAME_ADDR_MEMO = MatchMemo(_NAME_ADDR_FAST_RE, 3, 7)


def _angle_sip_uri(value: str) -> tuple[tuple[str | None, ...], int] | None:
    """The fastest form of a name-addr: ``<`` common SIP URI ``>``, then nothing or
    ``;tag=token``. Returns ``(groups of the URI's match, index of ">")``, or ``None`` for any
    other text.

    The URI's match is memoised on the URI alone (:data:`sipstack.uri.SIP_URI_MEMO`), so the To
    of a request finds the match its From (the same URI, with a tag) left, and a client's
    next request finds both. The result is the one :data:`_NAME_ADDR_FAST_RE` gives on these
    texts (``tests/test_properties.py`` holds them equal).
    """
    if not value.startswith("<"):
        return None
    gt = value.find(">")
    if gt < 0:
        return None
    if gt + 1 < len(value):
        if not value.startswith(";tag=", gt + 1):
            return None
        tag = value[gt + 6 :]
        if not tag or not is_token(tag):
            return None
    entry = SIP_URI_MEMO.match(value[1:gt])
    if entry is None:
        return None
    return entry[0], gt


def parse_name_addr(value: str) -> NameAddr:
    """Parse one From/To/Contact/Route element (already split at list commas).

    Accepts ``"display" <uri>;params``, ``token display <uri>;params``, ``<uri>;params`` and the
    addr-spec form ``uri;params`` (whose ``;params`` are header parameters, RFC 3261 §20.10).
    Leniency (RFC 4475 §3.1.2.14 allows it): spaces just inside ``<`` ``>`` are ignored.

    Raises:
        SipParseError: unterminated quotes (§3.1.2.6), a display name that is not tokens
            (§3.1.2.15), an addr-spec holding ``,`` ``?`` or spaces in its URI (§3.1.2.13),
            missing ``>``, or a bad URI or parameter.
    """
    fast = _angle_sip_uri(value)
    if fast is not None:
        uri_groups, gt = fast
        f_scheme, f_user, f_host, f_port, f_params = uri_groups
        assert f_scheme is not None and f_host is not None
        f_uri = fast_sip_uri(f_scheme, f_user, f_host, f_port, f_params or "")
        f_text = (
            value[1:gt]
            if (f_scheme == "sip" or f_scheme == "sips") and (f_port is None or f_port[0] != "0")
            else None
        )
        return NameAddr(
            f_uri, None, {"tag": value[gt + 6 :]} if gt + 1 < len(value) else {}, False, f_text
        )
    entry = _NAME_ADDR_MEMO.match(value)
    if entry is None:
        return _parse_name_addr_slow(value)
    groups, start, end = entry
    quoted, tokens, scheme, user, host, port, uri_params, tag, rest = groups
    assert scheme is not None and host is not None
    uri = fast_sip_uri(scheme, user, host, port, uri_params or "")
    params: dict[str, str | None] = {"tag": tag} if tag is not None else {}
    if rest:
        total = 0
        for whole, pname, pvalue in _findall_param_items(rest):
            total += len(whole)
            params[pname.lower()] = pvalue or None
        if total != len(rest):
            return _parse_name_addr_slow(value)
    if quoted is not None:
        display: str | None = quoted
    elif tokens is not None:
        display = " ".join(tokens.split())
    else:
        display = None
    # str(uri) is the text itself unless the scheme or the port was written differently.
    if (scheme == "sip" or scheme == "sips") and (port is None or port[0] != "0"):
        text: str | None = value[start:end]
    else:
        text = None
    return NameAddr(uri, display, params, False, text)


def check_name_addr(value: str) -> NameAddr | None:
    """Check that ``value`` is a name-addr as :func:`parse_name_addr` would accept it, parsing
    it only when needed: the usual form (``[display] <sip:...>[;tag=...]`` with a valid port and
    no other parameter) is recognised by one regular-expression match (memoised:
    :class:`sipstack.uri.MatchMemo`) and gives ``None``; any
    other text is parsed and its :class:`NameAddr` returned.

    For the From header of every request, which most elements never look into (the response
    copies its text): :attr:`sipstack.message.Message.from_` parses it if asked.

    Raises:
        SipParseError: as :func:`parse_name_addr`.
    """
    fast = _angle_sip_uri(value)
    if fast is not None:
        port_number(fast[0][3])  # raises as parse_name_addr's fast_sip_uri would
        return None
    entry = _NAME_ADDR_MEMO.match(value)
    if entry is None or entry[0][8]:
        return parse_name_addr(value)
    port = entry[0][5]
    if port is not None and int(port) > 65535:
        return parse_name_addr(value)  # raises, with the usual message
    return None


def _parse_name_addr_slow(value: str) -> NameAddr:
    """The reference implementation of :func:`parse_name_addr`, with precise errors."""
    value = value.strip(" \t")
    if value == "*":
        return NameAddr(None, wildcard=True)
    if not value:
        raise SipParseError("empty address")
    display: str | None = None
    if value[0] == '"':
        display, pos = _parse_quoted(value, 0)
        lt = value.find("<", pos)
        if lt < 0 or value[pos:lt].strip(" \t"):
            raise SipParseError("quoted display name without <URI>")
    else:
        lt = value.find("<")
        if lt > 0:
            prefix = value[:lt]
            if _DISPLAY_TOKENS_RE.match(prefix):
                display = " ".join(prefix.split()) or None
            elif _SCHEME_PREFIX_RE.match(prefix):
                lt = -1  # an addr-spec whose parameters hold a '<' ("<urn:...>" values)
            else:
                raise SipParseError(f"bad display name {prefix.strip()[:40]!r}")
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise SipParseError("missing '>' in address")
        uri = parse_uri(value[lt + 1 : gt].strip(" \t"))
        rest = value[gt + 1 :]
        params = parse_params(rest) if rest else {}
        return NameAddr(uri, display, params)
    # addr-spec: the URI ends at the first ';' and may not contain ',', '?' or whitespace.
    uri_text, semi, ptext = value.partition(";")
    uri_text = uri_text.rstrip(" \t")
    if any(c in uri_text for c in ",? \t"):
        raise SipParseError(f"URI with ',', '?' or spaces must be in <>: {uri_text[:60]!r}")
    uri = parse_uri(uri_text)
    params = parse_params(semi + ptext) if semi else {}
    return NameAddr(uri, None, params)


# --------------------------------------------------------------------------------------- CSeq

MAX_CSEQ = 2**31 - 1
# Methods of RFC 3261 and its extensions (fast paths; any other token is a method too).
METHODS = frozenset(
    {
        "REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "SUBSCRIBE", "NOTIFY",
        "PUBLISH", "MESSAGE", "INFO", "PRACK", "UPDATE", "REFER", "SERVICE", "NEGOTIATE",
        "BENOTIFY",
    }
)
_CSEQ_RE = re.compile(rf"([0-9]{{1,10}})[ \t]+([{_TOKEN_CHARS}]+)\Z")


class CSeq(NamedTuple):
    """The CSeq header (RFC 3261 §20.16): sequence number ``< 2**31`` and method.

    Immutable and hashable (a named tuple: ``number, method = cseq`` works too).
    """

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# CSeq(number, method) runs the named tuple's interpreted __new__; tuple.__new__ with the
# class builds the same object in C (the fast path of parse_cseq, once per message).
_new_cseq = tuple.__new__




def parse_cseq(value: str) -> CSeq:
    """Parse ``CSeq: 1*DIGIT LWS Method``.

    Raises:
        SipParseError: not two fields, a number that is not digits or ``>= 2**31``
            (RFC 3261 §8.1.1.5), or a method that is not a token.
    """
    number_text, _, method = value.partition(" ")
    if (
        method in METHODS
        and number_text.isdigit()
        and number_text.isascii()
        and len(number_text) < 11
    ):
        number = int(number_text)
        if number <= MAX_CSEQ:
            return _new_cseq(CSeq, (number, method))
    m = _CSEQ_RE.match(value)
    if m is not None:
        number = int(m.group(1))
        if number <= MAX_CSEQ:
            return CSeq(number, m.group(2))
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError(f"bad CSeq {value[:40]!r}")
    number = parse_uint(parts[0], MAX_CSEQ, "CSeq number")
    if not _TOKEN_RE.match(parts[1]):
        raise SipParseError(f"bad CSeq method {parts[1][:40]!r}")
    return CSeq(number, parts[1])
