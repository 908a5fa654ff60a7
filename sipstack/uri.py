"""SIP, SIPS, tel and other absolute URIs (RFC 3261 §19.1, §25.1; RFC 3966).

:func:`parse_uri` turns a URI string into a :class:`SipUri` (``sip:`` / ``sips:``), a
:class:`TelUri` (``tel:``) or an :class:`AbsoluteUri` (any other scheme, kept opaque, as
RFC 4475 §3.3.4 requires). Each object's ``str()`` is its canonical serialisation;
``parse_uri(str(u)) == u``.

Escapes (``%HH``) are kept as written in ``user``, ``password``, parameter and header values
(so the URI re-serialises byte for byte); :func:`unescape` decodes them for comparison, and
:meth:`SipUri.equivalent` implements the comparison rules of RFC 3261 §19.1.4.

The common form (``sip:user@host:port;params``, no escapes, no IPv6, no ``?headers``) is
recognised by one compiled regular expression; anything else goes through the detailed
parser, which is the authority and reports precise errors.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from .errors import SipParseError

__all__ = [
    "AbsoluteUri",
    "SipUri",
    "TelUri",
    "Uri",
    "parse_uri",
    "unescape",
]

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
# user = 1*( unreserved / escaped / user-unreserved ); unreserved = alphanum / mark
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+\Z")
_PASSWORD_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*\Z")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\.?\Z")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")
# paramchar = param-unreserved / unreserved / escaped; param-unreserved = [ ] / : & + $
_PARAM_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+\Z")
# hname/hvalue: hnv-unreserved = [ ] / ? : + $
_HEADER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})*\Z")
# RFC 3966: global-number-digits / local-number-digits (visual separators - . ( ) allowed).
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*\Z")

# The common SIP URI: no escapes, no password, no IPv6 reference, no ?headers. Groups:
# scheme, user, host, port, ";params" (see _fast_sip_uri). Also used inside <...> by
# sipstack.headers.parse_name_addr.
# Possessive quantifiers: the engine never backtracks (no character of a group can start the
# next one), which keeps a match linear and cheap. The host is _HOSTNAME_RE's language. The
# repeated parameter group is atomic, (?>(?:...)*), not (?:...)*+ (see sipstack.headers).
FAST_SIP_PATTERN = (
    r"([Ss][Ii][Pp][Ss]?):"
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,]++)@)?"
    r"([A-Za-z0-9][A-Za-z0-9\-.]*+(?<!-)(?<!-\.)(?<!\.\.))"
    r"(?::([0-9]{1,5}+))?"
    r"((?>(?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]++(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]++)?)*))"
)
_FAST_SIP_RE = re.compile(FAST_SIP_PATTERN + r"\Z")

MEMO_SIZE = 2048
"""Texts a :class:`MatchMemo` holds; it is emptied when full."""


class MatchMemo:
    """Memoised matches of one compiled pattern: for each text, the groups of the match and
    the span from the start of group ``first`` to the end of group ``last``, or ``None``
    when the pattern does not match (not memoised).

    The same texts come back within a client's exchange (the unauthenticated REGISTER, then
    the same with credentials; one Request-URI for a whole domain), and a hit costs a
    dictionary look-up where the match costs the ``re`` engine's set-up and a pass over the
    text. Only strings are kept, never a parsed object: every parse still builds its own, so
    callers may change what they get. At most :data:`MEMO_SIZE` texts (bytes: the texts
    themselves, which the messages hold anyway while they live).

    Args:
        pattern: the compiled pattern (``match``, anchored by the pattern where it must be).
        first, last: group numbers of the span returned (``0, 0``: the whole match).
    """

    def __init__(self, pattern: re.Pattern[str], first: int = 0, last: int = 0) -> None:
        self._pattern = pattern
        self._first = first
        self._last = last
        self._entries: dict[str, tuple[tuple[str | None, ...], int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, text: str) -> tuple[tuple[str | None, ...], int, int] | None:
        """``(groups, start, end)`` of the pattern's match on ``text``, or ``None``."""
        entries = self._entries
        entry = entries.get(text)
        if entry is None:
            m = self._pattern.match(text)
            if m is None:
                return None
            entry = (m.groups(), m.start(self._first), m.end(self._last))
            if len(entries) >= MEMO_SIZE:
                entries.clear()
            entries[text] = entry
        return entry


SIP_URI_MEMO = MatchMemo(_FAST_SIP_RE)
"""Memoised matches of the common SIP URI (:data:`FAST_SIP_PATTERN`, whole text): groups
scheme, user, host, port, ``;params``. Shared by :func:`parse_uri` and
:func:`sipstack.headers.parse_name_addr`."""


def unescape(text: str) -> str:
    """Decode ``%HH`` escapes (RFC 3261 §19.1.2, §25.1 ``escaped``); other text is unchanged.

    Decoded octets are read as UTF-8; octets that do not form valid UTF-8 become surrogate
    escapes (``"\\udcff"``), so nothing is lost and distinct inputs stay distinct.
    """
    if "%" not in text:
        return text
    return unquote(text, encoding="utf-8", errors="surrogateescape")


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass(slots=True, init=False)
class SipUri:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1.1).

    Attributes:
        scheme: ``"sip"`` or ``"sips"`` (lower case).
        user: the user part as written (escapes kept), or ``None``.
        password: the password as written (may be ``""``), or ``None``.
        host: host name, IPv4 address, or IPv6 reference *with* brackets (``"[::1]"``).
        port: port number 0..65535, or ``None``.
        params: uri-parameters in order; names as written, value ``None`` for a flag.
        headers: ``?``-headers in order as (name, value) pairs, escapes kept.
    """

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)

    def __init__(
        self,
        scheme: str = "sip",
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        # Written out (init=False): a dataclass-generated __init__ would run interpreted
        # even when this module is compiled (docs/native.md), and URIs are built per request.
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = {} if params is None else params
        self.headers = [] if headers is None else headers

    def __str__(self) -> str:
        if self.user is None:
            text = f"{self.scheme}:{self.host}"
        elif self.password is None:
            text = f"{self.scheme}:{self.user}@{self.host}"
        else:
            text = f"{self.scheme}:{self.user}:{self.password}@{self.host}"
        if self.port is not None:
            text = f"{text}:{self.port}"
        if self.params:
            text += _format_params(self.params)
        if self.headers:
            text += "?" + "&".join(f"{n}={v}" for n, v in self.headers)
        return text

    def param(self, name: str) -> str | None:
        """Value of uri-parameter ``name`` (case-insensitive): ``""`` for a flag, ``None`` if
        absent."""
        params = self.params
        if name in params:
            value = params[name]
            return "" if value is None else value
        lname = name.lower()
        for key, value in params.items():
            if key.lower() == lname:
                return "" if value is None else value
        return None

    @property
    def transport(self) -> str | None:
        """The ``transport`` uri-parameter, lower case, or ``None`` (RFC 3261 §19.1.1)."""
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def host_port(self) -> str:
        """``host[:port]`` as written in a Via sent-by or a Contact."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def aor(self) -> str:
        """The address-of-record form: ``scheme:user@host`` lower-cased, no port or parameters.

        The user part is unescaped (``%61lice`` is ``alice``).
        Source: DESIGN.md §4 (normalised AOR), RFC 3261 §10.3 step 5.
        """
        user = unescape(self.user).lower() if self.user is not None else ""
        host = self.host.lower()
        return f"{self.scheme}:{user}@{host}" if user else f"{self.scheme}:{host}"

    def equivalent(self, other: object) -> bool:
        """URI comparison per RFC 3261 §19.1.4.

        Userinfo is compared case-sensitively after unescaping; the host case-insensitively
        (IPv6 references by address); a port, or a ``user``/``ttl``/``method``/``maddr``/
        ``transport`` parameter present in only one URI makes them differ (the RFC's own
        examples treat ``transport`` like the others); other parameters are compared only
        when present in both; ``?headers`` must all match. Parameter and header values are
        compared case-insensitively after unescaping.
        """
        if not isinstance(other, SipUri):
            return False
        if self.scheme != other.scheme:
            return False
        if _opt_unescape(self.user) != _opt_unescape(other.user):
            return False
        if _opt_unescape(self.password) != _opt_unescape(other.password):
            return False
        if _host_key(self.host) != _host_key(other.host) or self.port != other.port:
            return False
        mine = _param_key(self.params)
        theirs = _param_key(other.params)
        for key in ("user", "ttl", "method", "maddr", "transport"):
            if mine.get(key) != theirs.get(key):
                return False
        for key in mine.keys() & theirs.keys():
            if mine[key] != theirs[key]:
                return False
        return _header_key(self.headers) == _header_key(other.headers)


def _opt_unescape(text: str | None) -> str | None:
    return None if text is None else unescape(text)


def _host_key(host: str) -> str:
    if host.startswith("["):
        try:
            return "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
        except ValueError:
            pass
    return host.lower()


def _param_key(params: dict[str, str | None]) -> dict[str, str | None]:
    return {
        unescape(k).lower(): (None if v is None else unescape(v).lower()) for k, v in params.items()
    }


def _header_key(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((unescape(n).lower(), unescape(v).lower()) for n, v in headers)


@dataclass(slots=True)
class TelUri:
    """A ``tel:`` URI (RFC 3966): the number (visual separators kept) and its parameters
    (names as written, value ``None`` for a flag)."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)
    scheme: str = "tel"

    def __str__(self) -> str:
        return f"tel:{self.number}{_format_params(self.params)}"

    def equivalent(self, other: object) -> bool:
        """RFC 3966 §4: numbers equal once visual separators are removed (case-insensitive),
        parameters equal as a set (names and values case-insensitive)."""
        if not isinstance(other, TelUri):
            return False
        return _tel_digits(self.number) == _tel_digits(other.number) and _param_key(
            self.params
        ) == _param_key(other.params)


def _tel_digits(number: str) -> str:
    return number.translate({ord(c): None for c in "-.()"}).lower()


@dataclass(slots=True)
class AbsoluteUri:
    """Any other absolute URI (RFC 3261 §25.1 ``absoluteURI``), kept opaque.

    Attributes:
        scheme: the scheme as written; opaque: everything after the first ``:``.

    RFC 4475 §3.3.4: unknown schemes in header fields must be accepted.
    """

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"

    def equivalent(self, other: object) -> bool:
        """Scheme case-insensitive, the rest octet for octet (RFC 3986 §6.2.1)."""
        return (
            isinstance(other, AbsoluteUri)
            and self.scheme.lower() == other.scheme.lower()
            and self.opaque == other.opaque
        )


Uri = SipUri | TelUri | AbsoluteUri


def _parse_params(text: str, what: str) -> dict[str, str | None]:
    """``text`` is what follows the first ``;`` (non-empty when a ``;`` was present)."""
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name or not _PARAM_RE.match(name):
            raise SipParseError(f"bad {what} parameter {item[:40]!r}")
        if eq:
            if not value or not _PARAM_RE.match(value):
                raise SipParseError(f"bad {what} parameter value {item[:40]!r}")
            params[name] = value
        else:
            params[name] = None
    return params


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {text[:60]!r}")
        host = text[: end + 1]
        if not _IPV6_RE.match(host):
            raise SipParseError(f"bad IPv6 reference {host[:60]!r}")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipParseError(f"bad IPv6 reference {host[:60]!r}") from None
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipParseError(f"bad host/port {text[:60]!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not host or not _HOSTNAME_RE.match(host):
            raise SipParseError(f"bad host {host[:60]!r}")
        if not colon:
            return host, None
    if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        raise SipParseError(f"bad port {port_text[:20]!r}")
    port = int(port_text)
    if port > 65535:
        raise SipParseError(f"port out of range {port}")
    return host, port


def _parse_sip(scheme: str, rest: str) -> SipUri:
    user = password = None
    at = rest.find("@")
    if at >= 0:
        # The user part may hold ';', '?' and '/' (RFC 3261 §25.1 user-unreserved), but no
        # other part of a SIP URI may hold an unescaped '@'.
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if not user or not _USER_RE.match(user):
            raise SipParseError(f"bad user part {user[:60]!r}")
        if colon:
            if not _PASSWORD_RE.match(pw):
                raise SipParseError("bad password part")
            password = pw
    headers: list[tuple[str, str]] = []
    q = rest.find("?")
    if q >= 0:
        rest, htext = rest[:q], rest[q + 1 :]
        for item in htext.split("&"):
            hname, eq, hvalue = item.partition("=")
            if not hname or not eq or not _HEADER_RE.match(hname) or not _HEADER_RE.match(hvalue):
                raise SipParseError(f"bad URI header {item[:60]!r}")
            headers.append((hname, hvalue))
    hostport, semi, ptext = rest.partition(";")
    host, port = _parse_hostport(hostport)
    params = _parse_params(ptext, "URI") if semi else {}
    return SipUri(scheme, user, password, host, port, params, headers)


def _parse_tel(rest: str) -> TelUri:
    number, semi, ptext = rest.partition(";")
    if not _TEL_NUMBER_RE.match(number):
        raise SipParseError(f"bad tel number {number[:40]!r}")
    return TelUri(number, _parse_params(ptext, "tel") if semi else {})


def port_number(port: str | None, error: str = "port out of range") -> int | None:
    """The number of a port its pattern matched (1 to 5 digits), or ``None`` for no port.

    Raises:
        SipParseError: the port is above 65535 (RFC 3261 §25.1 ``port``), with the message
            ``error`` followed by the port.
    """
    if port is None:
        return None
    number = int(port)
    if number > 65535:
        raise SipParseError(f"{error} {port}")
    return number


def fast_sip_uri(
    scheme: str, user: str | None, host: str, port: str | None, ptext: str
) -> SipUri:
    """The :class:`SipUri` of a match of :data:`FAST_SIP_PATTERN` (its five groups).

    Raises:
        SipParseError: the port is above 65535.
    """
    port_num = port_number(port)
    params: dict[str, str | None] = {}
    if ptext:
        for item in ptext[1:].split(";"):
            name, eq, value = item.partition("=")
            params[name] = value if eq else None
    return SipUri(scheme.lower(), user, None, host, port_num, params, [])


def parse_uri(text: str) -> Uri:
    """Parse a URI string (no surrounding ``<>``, no leading/trailing whitespace).

    Args:
        text: the URI, e.g. ``"sip:alice@contoso.com;transport=tls"``.

    Returns:
        :class:`SipUri` for ``sip``/``sips`` (scheme lower-cased), :class:`TelUri` for
        ``tel``, else :class:`AbsoluteUri`.

    Raises:
        SipParseError: status 400 when the text is not a URI (bad scheme, characters that
            are not allowed, bad escapes, bad host or port, empty parameters).

    Source: RFC 3261 §19.1.1, §25.1; RFC 3966.
    """
    entry = SIP_URI_MEMO.match(text)
    if entry is not None:
        scheme, user, host, port, ptext = entry[0]
        assert scheme is not None and host is not None
        return fast_sip_uri(scheme, user, host, port, ptext or "")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.match(scheme):
        raise SipParseError(f"not a URI: {text[:80]!r}")
    lscheme = scheme.lower()
    if lscheme == "sip" or lscheme == "sips":
        return _parse_sip(lscheme, rest)
    if not rest or any(c.isspace() or c in '<>"' or c < " " or c == "\x7f" for c in rest):
        raise SipParseError(f"bad URI {text[:80]!r}")
    if lscheme == "tel":
        return _parse_tel(rest)
    return AbsoluteUri(scheme, rest)
