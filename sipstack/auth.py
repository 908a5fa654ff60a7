"""Sans-I/O digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

This module does no I/O and reads no clock: every time is a ``float`` number of seconds passed
in by the caller as ``now`` (any fixed epoch, e.g. ``time.time()``; all callers sharing a
:class:`NonceManager` secret must use the same epoch).

Contents:

* Header parsing/formatting: :func:`parse_challenge` / :func:`format_challenge`
  (``WWW-Authenticate`` / ``Proxy-Authenticate``) and :func:`parse_credentials` /
  :func:`format_credentials` (``Authorization`` / ``Proxy-Authorization``). Parsers raise only
  :class:`~sipstack.errors.SipParseError`; ``parse(format(x)) == x`` for every formattable ``x``.
* Hashes: :func:`compute_ha1`, :func:`compute_response` (algorithms ``MD5``, ``SHA-256`` and
  their ``-sess`` variants; ``qop`` ``auth``, ``auth-int`` or absent).
* Stateless nonces: :class:`NonceManager` (timestamp + HMAC-SHA256, no per-nonce state).
* Replay protection: :class:`NonceCountTracker` (bounded LRU of the highest ``nc`` per nonce).
* Server side: :class:`DigestVerifier` (challenges and verification, constant work for unknown
  users). Client side (test tools): :func:`answer_challenge`.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import math
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sipstack.errors import SipParseError
from sipstack.headers import is_token

__all__ = [
    "AuthResult",
    "AuthStatus",
    "Credentials",
    "DigestChallenge",
    "DigestVerifier",
    "NonceCountStatus",
    "NonceCountTracker",
    "NonceManager",
    "NonceStatus",
    "answer_challenge",
    "compute_ha1",
    "compute_response",
    "format_challenge",
    "format_credentials",
    "parse_challenge",
    "parse_credentials",
]

# ---------------------------------------------------------------------------------------------
# Algorithms and hashes (RFC 2617 §3.2.2, RFC 7616 §3.4, RFC 8760 §2)
# ---------------------------------------------------------------------------------------------

_HEX_LEN = {"MD5": 32, "SHA-256": 64}


def _b(s: str) -> bytes:
    """UTF-8 bytes of ``s``; lone surrogates (from ``surrogateescape`` decoding) never raise."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _h(base: str, data: bytes) -> str:
    """Lowercase hex digest of ``data`` with the base algorithm ``MD5`` or ``SHA-256``."""
    if base == "MD5":
        return hashlib.md5(data).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _split_algorithm(algorithm: str | None) -> tuple[str, bool]:
    """Return ``(base, is_sess)`` for an algorithm name (``None`` means ``MD5``, RFC 2617 §3.2.1).

    Raises:
        ValueError: the algorithm is not MD5, SHA-256 or one of their ``-sess`` variants.
    """
    name = "MD5" if algorithm is None else algorithm.upper()
    sess = name.endswith("-SESS")
    base = name[:-5] if sess else name
    if base not in _HEX_LEN:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return base, sess


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "SHA-256") -> str:
    """Return ``H(username ":" realm ":" password)`` as lowercase hex (RFC 7616 §3.4.2).

    This is the value a credential store keeps per user and algorithm. For ``-sess`` algorithms
    it is the *base* HA1; the session key is derived in :func:`compute_response`. Strings are
    hashed as UTF-8.

    Args:
        username, realm, password: ``str`` values, unquoted.
        algorithm: ``"MD5"``, ``"SHA-256"`` or a ``-sess`` variant (case-insensitive).

    Raises:
        ValueError: unsupported algorithm.
    """
    base, _ = _split_algorithm(algorithm)
    return _h(base, _b(f"{username}:{realm}:{password}"))


# (base algorithm, method, digest-uri) -> HA2: the same for every REGISTER to one domain
_HA2_CACHE: dict[tuple[str, str, str], str] = {}


def compute_response(
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | int | None,
    cnonce: str | None,
    qop: str | None,
    algorithm: str | None,
    body: bytes = b"",
) -> str:
    """Return the request-digest (``response`` parameter) as lowercase hex (RFC 2617 §3.2.2.1,
    RFC 7616 §3.4.1, RFC 3261 §22.4).

    Args:
        ha1: base HA1 hex as from :func:`compute_ha1`; for ``-sess`` algorithms the session
            HA1 ``H(ha1:nonce:cnonce)`` is derived here.
        method: request method (``"REGISTER"``); uri: the ``uri`` (digest-uri) parameter.
        nonce, cnonce: as sent; nc: nonce-count, 8 hex digits or an ``int`` (formatted
            ``%08x``). ``nc``/``cnonce`` are ignored when ``qop`` is ``None``.
        qop: ``"auth"``, ``"auth-int"`` (hashes ``body``) or ``None`` (RFC 2069 form).
        algorithm: ``"MD5"``, ``"SHA-256"``, a ``-sess`` variant, or ``None`` (= MD5).
        body: message body bytes, used only for ``qop=auth-int``.

    Raises:
        ValueError: unsupported algorithm or qop, or ``-sess``/qop without a ``cnonce``/``nc``.
    """
    base, sess = _split_algorithm(algorithm)
    if sess:
        if not cnonce:
            raise ValueError("-sess algorithms need a cnonce")
        ha1 = _h(base, _b(f"{ha1}:{nonce}:{cnonce}"))
    qop_l = None if qop is None else qop.lower()
    if qop_l == "auth-int":
        ha2 = _h(base, _b(f"{method}:{uri}:") + _h(base, body).encode())
    elif qop_l is None or qop_l == "auth":
        key = (base, method, uri)
        cached = _HA2_CACHE.get(key)
        if cached is None:
            cached = _h(base, _b(f"{method}:{uri}"))
            if len(_HA2_CACHE) >= 1024:
                _HA2_CACHE.clear()
            _HA2_CACHE[key] = cached
        ha2 = cached
    else:
        raise ValueError(f"unsupported qop {qop!r}")
    if qop is None:
        return _h(base, _b(f"{ha1}:{nonce}:{ha2}"))
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    nc_s = f"{nc:08x}" if isinstance(nc, int) else nc
    return _h(base, _b(f"{ha1}:{nonce}:{nc_s}:{cnonce}:{qop}:{ha2}"))


# ---------------------------------------------------------------------------------------------
# Header grammar (RFC 3261 §25.1 / §20.7 / §20.44, RFC 7235 §2.1)
# ---------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# qdtext (LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII) or quoted-pair (RFC 3261 §25.1).
_QUOTED_RE = re.compile(
    r'"((?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*)"'
)
_UNESCAPE_RE = re.compile(r"\\(.)", re.S)
_ESCAPE_RE = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')
_FOLD_RE = re.compile(r"\r?\n[ \t]")
_WS = " \t"


def _skip_ws(s: str, pos: int) -> int:
    n = len(s)
    while pos < n and s[pos] in _WS:
        pos += 1
    return pos


def _parse_params(s: str) -> list[tuple[str, str]]:
    """Parse ``auth-param *(COMMA auth-param)`` covering all of ``s`` (no surrounding LWS):
    ``[(lowercase name, unquoted value), ...]`` in order.

    The fast path takes the text as clients write it, with ``str.find`` and slices: a token
    name, ``=``, a token or a quoted-string of printable characters without quoted-pairs, a
    comma (LWS allowed around ``=`` and ``,``). Anything else (quoted-pairs, HTAB or control
    characters inside quotes, a grammar error, a repeated name) is left to
    :func:`_parse_params_slow`, which gives the same result for what the fast path accepts
    and the precise error for the rest (``tests/test_auth.py`` holds the two equal). A pattern
    match per parameter cost four times as much: the regular-expression engine's set-up and
    its per-character class test dominate on values as long as a nonce.

    Raises:
        SipParseError: grammar error or repeated parameter (RFC 3261 §25.1).
    """
    out: list[tuple[str, str]] = []
    pos = 0
    n = len(s)
    while True:
        eq = s.find("=", pos)
        if eq <= pos:  # no '=', or an empty name
            return _parse_params_slow(s)
        name = s[pos:eq]
        if name[-1] == " " or name[-1] == "\t":
            name = name.rstrip(_WS)
        if not is_token(name):
            return _parse_params_slow(s)
        pos = eq + 1
        if pos < n and (s[pos] == " " or s[pos] == "\t"):
            pos = _skip_ws(s, pos)
        if pos >= n:
            return _parse_params_slow(s)
        if s[pos] == '"':
            end = s.find('"', pos + 1)
            if end < 0:
                return _parse_params_slow(s)
            value = s[pos + 1 : end]
            # qdtext: printable text without quoted-pairs (HTAB and the rest: the reference)
            if "\\" in value or not value.isprintable():
                return _parse_params_slow(s)
            pos = end + 1
        else:
            end = s.find(",", pos)
            if end < 0:
                end = n
            value = s[pos:end]
            if not value:
                return _parse_params_slow(s)
            if value[-1] == " " or value[-1] == "\t":
                value = value.rstrip(_WS)
            if not is_token(value):
                return _parse_params_slow(s)
            pos = end
        out.append((name.lower(), value))
        if pos < n and (s[pos] == " " or s[pos] == "\t"):
            pos = _skip_ws(s, pos)
        if pos >= n:
            break
        if s[pos] != ",":
            return _parse_params_slow(s)
        pos += 1
        if pos < n and (s[pos] == " " or s[pos] == "\t"):
            pos = _skip_ws(s, pos)
        if pos >= n:  # a trailing comma
            return _parse_params_slow(s)
    if len(out) > 1 and len({name for name, _ in out}) != len(out):
        return _parse_params_slow(s)
    return out


def _parse_params_slow(s: str) -> list[tuple[str, str]]:
    """Parse ``auth-param *(COMMA auth-param)`` covering all of ``s`` (no surrounding LWS),
    one grammar element at a time: the reference for :func:`_parse_params` and the source of
    its error messages."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    pos, n = 0, len(s)
    while True:
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise SipParseError("auth header: expected parameter name")
        name = m.group().lower()
        pos = _skip_ws(s, m.end())
        if pos >= n or s[pos] != "=":
            raise SipParseError(f"auth header: expected '=' after {name!r}")
        pos = _skip_ws(s, pos + 1)
        if pos < n and s[pos] == '"':
            q = _QUOTED_RE.match(s, pos)
            if q is None:
                raise SipParseError(f"auth header: bad quoted-string for {name!r}")
            val = q.group(1)
            if "\\" in val:
                val = _UNESCAPE_RE.sub(lambda e: e.group(1), val)
            pos = q.end()
        else:
            t = _TOKEN_RE.match(s, pos)
            if t is None:
                raise SipParseError(f"auth header: expected value for {name!r}")
            val = t.group()
            pos = t.end()
        if name in seen:
            raise SipParseError(f"auth header: duplicate parameter {name!r}")
        seen.add(name)
        out.append((name, val))
        pos = _skip_ws(s, pos)
        if pos == n:
            return out
        if s[pos] != ",":
            raise SipParseError("auth header: expected ',' between parameters")
        pos = _skip_ws(s, pos + 1)


def _parse_auth(value: object) -> tuple[str, list[tuple[str, str]], str | None]:
    """Split a challenge/credentials value into ``(scheme, params, token68)``."""
    if not isinstance(value, str):
        raise SipParseError("auth header: value is not a string")
    if "\r" in value or "\n" in value:
        value = _FOLD_RE.sub(" ", value)
        if "\r" in value or "\n" in value:
            raise SipParseError("auth header: bare CR or LF")
    s = value.strip(_WS)
    end = s.find(" ")  # the usual "Digest username=..."
    if end > 0 and is_token(s[:end]):
        scheme = s[:end]
    else:
        m = _TOKEN_RE.match(s)
        if m is None:
            raise SipParseError("auth header: missing auth-scheme")
        scheme = m.group()
        end = m.end()
        if end == len(s):
            return scheme, [], None
        if s[end] not in _WS:
            raise SipParseError("auth header: expected LWS after auth-scheme")
    rest = s[end:].lstrip(_WS)
    try:
        return scheme, _parse_params(rest), None
    except SipParseError:
        if scheme.lower() != "digest" and _TOKEN68_RE.fullmatch(rest):
            return scheme, [], rest  # e.g. "Basic QWxh...==" (RFC 7235 §2.1)
        raise


def _quote(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("CR/LF cannot be represented in a quoted-string")
    return '"' + _ESCAPE_RE.sub(lambda e: "\\" + e.group(), value) + '"'


def _token_or_quote(value: str) -> str:
    return value if _TOKEN_RE.fullmatch(value) else _quote(value)


def _format(
    scheme: str,
    known: list[tuple[str, str | None, bool]],
    extra: tuple[tuple[str, str], ...],
    token68: str | None,
) -> str:
    """Format ``scheme`` plus params; ``known`` holds ``(name, value or None, always_quote)``."""
    if not _TOKEN_RE.fullmatch(scheme):
        raise ValueError(f"auth-scheme {scheme!r} is not a token")
    parts = [
        f"{name}={_quote(v) if quoted else _token_or_quote(v)}"
        for name, v, quoted in known
        if v is not None
    ]
    names = {name for name, _, _ in known}
    for name, v in extra:
        if not _TOKEN_RE.fullmatch(name) or name != name.lower() or name in names:
            raise ValueError(f"bad or duplicate extra parameter name {name!r}")
        names.add(name)
        parts.append(f"{name}={_token_or_quote(v)}")
    if token68 is not None:
        if parts or not _TOKEN68_RE.fullmatch(token68) or scheme.lower() == "digest":
            raise ValueError("token68 needs a non-Digest scheme and no parameters")
        return f"{scheme} {token68}"
    return f"{scheme} {', '.join(parts)}" if parts else scheme


_CHALLENGE_NAMES = ("realm", "domain", "nonce", "opaque", "stale", "algorithm", "qop")
_CREDENTIAL_NAMES = (
    "username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "opaque", "qop", "nc",
)  # fmt: skip
_CREDENTIAL_SET = frozenset(_CREDENTIAL_NAMES)


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """One ``WWW-Authenticate`` / ``Proxy-Authenticate`` challenge (RFC 3261 §20.44, §25.1;
    RFC 7616 §3.3).

    Attributes (``None`` = parameter absent; strings are unquoted/unescaped):
        realm, nonce, opaque, domain: ``str | None``.
        algorithm: ``str | None`` as sent (``"SHA-256"``, ``"MD5"``, ...).
        qop: ``tuple[str, ...] | None``, the qop-options list (``("auth",)``).
        stale: ``bool`` (``stale=true``, case-insensitive; anything else is ``False``).
        scheme: the auth-scheme token; not ``"Digest"`` for other schemes, whose params are
            then in the known fields / ``params`` or, for token68 forms, in ``token68``.
        params: other auth-params as ``(lowercase name, value)`` pairs, in order.
        token68: ``str | None``, the token68 form of non-Digest schemes (RFC 7235 §2.1).
    """

    realm: str | None = None
    nonce: str | None = None
    algorithm: str | None = None
    qop: tuple[str, ...] | None = None
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    scheme: str = "Digest"
    params: tuple[tuple[str, str], ...] = ()
    token68: str | None = None

    def to_header(self) -> str:
        """Header value; see :func:`format_challenge`."""
        return format_challenge(self)


@dataclass(slots=True, init=False)
class Credentials:
    """One ``Authorization`` / ``Proxy-Authorization`` value (RFC 3261 §20.7, §22.4, §25.1;
    RFC 7616 §3.4).

    Attributes (``None`` = parameter absent; strings are unquoted/unescaped and kept as sent):
        username, realm, nonce, uri, response, algorithm, cnonce, opaque, qop, nc: ``str | None``
            (``nc`` is the 8-hex-digit nonce-count text; ``qop`` the single message-qop).
        scheme: the auth-scheme token (an unknown scheme still parses, RFC 4475 §3.3.7).
        params: other auth-params as ``(lowercase name, value)`` pairs, in order.
        token68: ``str | None``, the token68 form of non-Digest schemes (RFC 7235 §2.1).

    Built once per authenticated request, so its ``__init__`` is written out (the generated one
    would run interpreted in the compiled module, docs/native.md); treat it as read-only.
    """

    username: str | None
    realm: str | None
    nonce: str | None
    uri: str | None
    response: str | None
    algorithm: str | None
    cnonce: str | None
    opaque: str | None
    qop: str | None
    nc: str | None
    scheme: str
    params: tuple[tuple[str, str], ...]
    token68: str | None

    def __init__(
        self,
        username: str | None = None,
        realm: str | None = None,
        nonce: str | None = None,
        uri: str | None = None,
        response: str | None = None,
        algorithm: str | None = None,
        cnonce: str | None = None,
        opaque: str | None = None,
        qop: str | None = None,
        nc: str | None = None,
        scheme: str = "Digest",
        params: tuple[tuple[str, str], ...] = (),
        token68: str | None = None,
    ) -> None:
        self.username = username
        self.realm = realm
        self.nonce = nonce
        self.uri = uri
        self.response = response
        self.algorithm = algorithm
        self.cnonce = cnonce
        self.opaque = opaque
        self.qop = qop
        self.nc = nc
        self.scheme = scheme
        self.params = params
        self.token68 = token68

    def to_header(self) -> str:
        """Header value; see :func:`format_credentials`."""
        return format_credentials(self)


def parse_challenge(value: str) -> DigestChallenge:
    """Parse a ``WWW-Authenticate`` / ``Proxy-Authenticate`` header value (one challenge).

    Accepts LWS (including folded CRLF+WSP) around ``=`` and ``,``, token or quoted-string
    values with backslash escapes, and case-insensitive parameter names. Unknown schemes
    parse too (``scheme`` tells; RFC 7235 §2.1 token68 allowed for them).

    Raises:
        SipParseError: (status 400) the value violates the grammar (RFC 3261 §25.1) or repeats
            a parameter; never any other exception.
    """
    scheme, pairs, token68 = _parse_auth(value)
    known: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for name, v in pairs:
        if name in _CHALLENGE_NAMES:
            known[name] = v
        else:
            extra.append((name, v))
    qop_raw = known.get("qop")
    qop = None
    if qop_raw is not None:
        qop = tuple(q for q in (p.strip(_WS) for p in qop_raw.split(",")) if q)
    return DigestChallenge(
        realm=known.get("realm"),
        nonce=known.get("nonce"),
        algorithm=known.get("algorithm"),
        qop=qop,
        opaque=known.get("opaque"),
        stale=known.get("stale", "").lower() == "true",
        domain=known.get("domain"),
        scheme=scheme,
        params=tuple(extra),
        token68=token68,
    )


def format_challenge(challenge: DigestChallenge) -> str:
    """Format a challenge as a header value (without the header name); RFC 3261 §25.1,
    RFC 7616 §3.3. ``realm``, ``domain``, ``nonce``, ``opaque`` and ``qop`` are quoted;
    ``stale=true`` appears only when ``stale`` is ``True``.

    Raises:
        ValueError: a value holds CR/LF, a qop option or the scheme is not a token, extra
            parameter names are not lowercase tokens or collide, or token68 is misused.
    """
    c = challenge
    qop = None
    if c.qop is not None:
        if not all(_TOKEN_RE.fullmatch(q) for q in c.qop):
            raise ValueError("qop options must be tokens")
        qop = ",".join(c.qop)
    known: list[tuple[str, str | None, bool]] = [
        ("realm", c.realm, True),
        ("domain", c.domain, True),
        ("nonce", c.nonce, True),
        ("opaque", c.opaque, True),
        ("stale", "true" if c.stale else None, False),
        ("algorithm", c.algorithm, False),
        ("qop", qop, True),
    ]
    return _format(c.scheme, known, c.params, c.token68)


def parse_credentials(value: str) -> Credentials:
    """Parse an ``Authorization`` / ``Proxy-Authorization`` header value.

    Same grammar handling as :func:`parse_challenge`. Parameter *values* are not validated
    here (e.g. a bad ``nc``); :meth:`DigestVerifier.verify` rejects those.

    Raises:
        SipParseError: (status 400) the value violates the grammar (RFC 3261 §25.1) or repeats
            a parameter; never any other exception.
    """
    scheme, pairs, token68 = _parse_auth(value)
    known: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for name, v in pairs:
        if name in _CREDENTIAL_SET:
            known[name] = v
        else:
            extra.append((name, v))
    get = known.get
    return Credentials(
        get("username"),
        get("realm"),
        get("nonce"),
        get("uri"),
        get("response"),
        get("algorithm"),
        get("cnonce"),
        get("opaque"),
        get("qop"),
        get("nc"),
        scheme,
        tuple(extra),
        token68,
    )


def format_credentials(credentials: Credentials) -> str:
    """Format credentials as a header value (RFC 3261 §25.1, RFC 7616 §3.4): ``algorithm``,
    ``qop`` and ``nc`` as tokens (quoted only if they are not tokens), the rest quoted.

    Raises:
        ValueError: as for :func:`format_challenge`.
    """
    c = credentials
    known: list[tuple[str, str | None, bool]] = [
        (name, getattr(c, name), name not in ("algorithm", "qop", "nc"))
        for name in _CREDENTIAL_NAMES
    ]
    return _format(c.scheme, known, c.params, c.token68)


# ---------------------------------------------------------------------------------------------
# Stateless nonces
# ---------------------------------------------------------------------------------------------


class NonceStatus(enum.Enum):
    """Result of :meth:`NonceManager.check`."""

    VALID = "valid"
    STALE = "stale"  # authentic (our MAC) but expired: re-challenge with stale=true
    INVALID = "invalid"  # forged, garbled, or for another realm/source


_NONCE_VERSION = 2  # 2: keyed BLAKE2b MAC; 1 (before 2026-11): HMAC-SHA256, still accepted
_NONCE_V1 = 1
_NONCE_STRUCT = struct.Struct(">BqQ")  # version, issue time in ms, salt
_NONCE_MAC_LEN = 16
_NONCE_RAW_LEN = _NONCE_STRUCT.size + _NONCE_MAC_LEN  # 33 bytes -> 44 base64url chars
# base64url (RFC 4648 §5) from and to binascii's base64, without base64.py's interpreted frames,
# both ways by bytes.translate (a table look-up per byte; str.translate with a dict cost ten
# times as much)
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_BLAKE2B_MAX_KEY = 64


class NonceManager:
    """Makes and checks stateless nonces (RFC 7616 §3.3 / RFC 2617 §3.2.1 suggestion).

    A nonce is ``base64url(version(1) | issue_time_ms(8) | salt(8) | mac(16))`` (44 chars),
    where ``mac = BLAKE2b-128(key=secret, person="sipstack-nonce", version | time | salt |
    realm | source)`` (keyed BLAKE2b, RFC 7693 §2.9: a MAC; a secret longer than 64 bytes
    is first hashed to 64 with BLAKE2b), ``realm`` and ``source`` each prefixed with its
    UTF-8 length (4 bytes, big-endian). No per-nonce state is kept; front ends sharing
    ``secret`` (and a clock epoch) accept each other's nonces.

    Version 1 nonces, issued by releases before 2026-11 with ``mac = HMAC-SHA256(secret,
    "sipstack-nonce" | the same fields)`` cut to 128 bits, are still accepted, so a pool
    upgraded one FE at a time does not reject the nonces its clients hold. Version 2 uses
    BLAKE2b because CPython implements it itself: one MAC is a copy, an update and a digest
    of a small object, where OpenSSL's HMAC allocates and frees several contexts.

    The salt makes every nonce of a manager unique (RFC 7616 §3.3): a 64-bit counter that
    starts at a random value and steps by one per nonce. The MAC, not the salt, makes nonces
    unforgeable, so the salt need not be unpredictable, and no nonce costs a ``getrandom``
    system call (which releases the GIL, handing the CPU to any thread waiting for it).

    Args:
        secret: HMAC key, ``bytes`` of at least 16 bytes.
        lifetime: seconds a nonce stays VALID (default 300 s); later it is STALE.
        max_skew: seconds a nonce may lie in the future (clock skew between front ends).
        random_bytes: ``(n) -> bytes``, called once with 8 for the salt counter's start;
            default :func:`os.urandom`.

    Raises:
        ValueError: secret shorter than 16 bytes, or non-positive/non-finite lifetime.
    """

    __slots__ = ("_keyed", "_salt", "_secret", "_tails", "lifetime", "max_skew")

    def __init__(
        self,
        secret: bytes,
        lifetime: float = 300.0,
        *,
        max_skew: float = 5.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError("lifetime must be a positive number of seconds")
        self._secret = bytes(secret)
        self.lifetime = float(lifetime)
        self.max_skew = float(max_skew)
        self._salt = int.from_bytes(random_bytes(8)[:8].rjust(8, b"\0"), "big")
        # Keyed once; each MAC works on a copy.
        key = self._secret
        if len(key) > _BLAKE2B_MAX_KEY:
            key = hashlib.blake2b(key).digest()
        self._keyed = hashlib.blake2b(
            key=key, digest_size=_NONCE_MAC_LEN, person=b"sipstack-nonce"
        )
        # (realm, source) -> the MAC message's tail (length-prefixed UTF-8 of both).
        self._tails: dict[tuple[str, str], bytes] = {}

    def _mac(self, head: bytes, realm: str, source: str) -> bytes:
        tail = self._tails.get((realm, source))
        if tail is None:
            r, s = _b(realm), _b(source)
            tail = b"".join((len(r).to_bytes(4, "big"), r, len(s).to_bytes(4, "big"), s))
            if len(self._tails) >= 1024:  # bounded: sources are per caller's choice
                self._tails.clear()
            self._tails[(realm, source)] = tail
        if head[0] == _NONCE_V1:
            msg = b"sipstack-nonce" + head + tail
            return hmac.new(self._secret, msg, "sha256").digest()[:_NONCE_MAC_LEN]
        mac = self._keyed.copy()
        mac.update(head + tail)
        return mac.digest()

    def make(self, now: float, realm: str, source: str = "") -> str:
        """Return a fresh nonce for ``realm`` issued at ``now`` (seconds).

        ``source`` optionally binds the nonce to a string (e.g. a connection id); the same
        string must then be given to :meth:`check`.

        Raises:
            ValueError: ``now`` is not finite or ``abs(now) >= 1e15``.
        """
        if not (math.isfinite(now) and abs(now) < 1e15):
            raise ValueError("now must be a finite number of seconds below 1e15")
        salt = self._salt = (self._salt + 1) & 0xFFFF_FFFF_FFFF_FFFF
        head = _NONCE_STRUCT.pack(_NONCE_VERSION, round(now * 1000), salt)
        raw = head + self._mac(head, realm, source)
        return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).decode("ascii")

    @staticmethod
    def _decode(nonce: str) -> bytes | None:
        # 44 base64url characters: binascii's strict mode rejects anything outside the
        # base64 alphabet once "-_" read as "+/"; "+" and "/" themselves are not base64url.
        if not isinstance(nonce, str) or len(nonce) != 44 or "+" in nonce or "/" in nonce:
            return None
        try:
            text = nonce.encode("ascii")
        except UnicodeEncodeError:
            return None
        try:
            raw = binascii.a2b_base64(text.translate(_FROM_URLSAFE), strict_mode=True)
        except binascii.Error:
            return None
        if len(raw) != _NONCE_RAW_LEN or (raw[0] != _NONCE_VERSION and raw[0] != _NONCE_V1):
            return None
        return raw

    def issued_at(self, nonce: str) -> float | None:
        """Issue time (seconds) embedded in ``nonce``, or ``None`` if it cannot be decoded.

        Not authenticated: only meaningful once :meth:`check` did not return INVALID.
        """
        raw = self._decode(nonce)
        if raw is None:
            return None
        return _NONCE_STRUCT.unpack_from(raw)[1] / 1000.0

    def check(self, nonce: str, now: float, realm: str, source: str = "") -> NonceStatus:
        """Check ``nonce`` at time ``now`` (seconds) for ``realm`` (and ``source``).

        Returns:
            VALID if authentic and ``-max_skew <= now - issued <= lifetime``; STALE if
            authentic but outside that window; INVALID if garbled or the MAC does not match.
            Never raises.
        """
        return self.check_issued(nonce, now, realm, source)[0]

    def check_issued(
        self, nonce: str, now: float, realm: str, source: str = ""
    ) -> tuple[NonceStatus, float]:
        """:meth:`check` and the issue time (seconds) in one decoding: ``(status, issued)``;
        ``issued`` is ``nan`` when the status is INVALID. Never raises."""
        raw = self._decode(nonce)
        if raw is None:
            return NonceStatus.INVALID, math.nan
        head = raw[: _NONCE_STRUCT.size]
        if not hmac.compare_digest(raw[_NONCE_STRUCT.size :], self._mac(head, realm, source)):
            return NonceStatus.INVALID, math.nan
        issued = _NONCE_STRUCT.unpack(head)[1] / 1000.0
        age = now - issued
        if age > self.lifetime or age < -self.max_skew or math.isnan(age):
            return NonceStatus.STALE, issued
        return NonceStatus.VALID, issued


# ---------------------------------------------------------------------------------------------
# Nonce-count replay protection
# ---------------------------------------------------------------------------------------------


class NonceCountStatus(enum.Enum):
    """Result of :meth:`NonceCountTracker.record`."""

    FRESH = "fresh"  # nc is above every nc seen for this nonce: accept (now recorded)
    REPLAY = "replay"  # nc <= the highest nc seen for this nonce
    FORGOTTEN = "forgotten"  # nonce not tracked but possibly evicted: treat as stale


class NonceCountTracker:
    """Bounded in-memory record of the highest nonce-count (``nc``) seen per nonce
    (RFC 7616 §3.3 / RFC 2617 §3.2.2 replay protection).

    Memory bound: at most ``max_entries`` nonces are kept in an LRU ``OrderedDict``; with the
    44-character nonces of :class:`NonceManager` one entry costs about 300 bytes on CPython
    3.11+ (key string, value tuple, dict and linked-list slots), so the default 100 000
    entries stay below ~30 MiB. When full, the least recently used nonce is evicted and the
    highest issue time among evicted nonces is remembered as a watermark; an untracked nonce
    issued at or before that watermark is answered FORGOTTEN (the verifier re-challenges with
    ``stale=true``), so eviction never re-opens a replay window. Only record nonce-counts of
    requests whose digest already verified, so unauthenticated traffic cannot fill the table.

    The tracker is per process: front ends sharing a nonce secret do not share it.

    Args:
        max_entries: ``int >= 1``, the bound (default 100 000).

    Raises:
        ValueError: ``max_entries < 1``.
    """

    __slots__ = ("_entries", "_watermark", "max_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._watermark = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, nonce: str, nc: int, issued_at: float) -> NonceCountStatus:
        """Check ``nc`` (``int``) for ``nonce`` issued at ``issued_at`` (seconds); record it
        if FRESH. O(1)."""
        entries = self._entries
        entry = entries.get(nonce)
        if entry is None:
            if issued_at <= self._watermark:
                return NonceCountStatus.FORGOTTEN
            entries[nonce] = (nc, issued_at)
            if len(entries) > self.max_entries:
                _, (_, old_issued) = entries.popitem(last=False)
                self._watermark = max(self._watermark, old_issued)
            return NonceCountStatus.FRESH
        entries.move_to_end(nonce)
        if nc <= entry[0]:
            return NonceCountStatus.REPLAY
        entries[nonce] = (nc, entry[1])
        return NonceCountStatus.FRESH


# ---------------------------------------------------------------------------------------------
# Server-side verifier
# ---------------------------------------------------------------------------------------------


class AuthStatus(enum.Enum):
    """Outcome class of :meth:`DigestVerifier.verify`."""

    OK = "ok"  # authenticated
    STALE = "stale"  # right password, expired/forgotten nonce: re-challenge with stale=true
    FAILED = "failed"  # anything else: challenge again (and count for rate limiting)


@dataclass(slots=True, init=False)
class AuthResult:
    """Result of :meth:`DigestVerifier.verify`.

    Attributes:
        status: :class:`AuthStatus`.
        username: ``str | None``: the authenticated user for OK; otherwise the *claimed*
            username (useful for per-AOR rate limiting, never proof of identity).
        reason: short text for logs. Unknown user and wrong password share one reason
            (``"invalid credentials"``) so nothing downstream can tell them apart.
    """

    status: AuthStatus
    username: str | None
    reason: str

    def __init__(self, status: AuthStatus, username: str | None = None, reason: str = "") -> None:
        self.status = status
        self.username = username
        self.reason = reason

    @property
    def ok(self) -> bool:
        """``True`` iff ``status`` is OK."""
        return self.status is AuthStatus.OK


_HEX_DIGITS = "0123456789abcdefABCDEF"


def _is_hex(text: str) -> bool:
    """True if ``text`` is one or more hex digits (``str.strip`` of the digits leaves nothing:
    one call, where a pattern match costs its engine's set-up)."""
    return bool(text) and not text.strip(_HEX_DIGITS)


class DigestVerifier:
    """Digest challenges and verification for one realm (RFC 3261 §22.4, RFC 7616 §3.3-3.5,
    RFC 8760 §2).

    Args:
        nonces: the :class:`NonceManager` (shared secret, lifetime).
        realm: ``str``, the realm challenged and required in credentials.
        tracker: :class:`NonceCountTracker` for replay protection (default: a new one with
            100 000 entries).
        algorithms: accepted algorithms (default ``("SHA-256", "MD5")``); the ``-sess``
            variant of an accepted algorithm is accepted too.
        allow_no_qop: accept RFC 2069 credentials without ``qop`` (default ``True``); each
            such nonce is then usable once (reuse gives STALE, prompting a fresh nonce).

    Raises:
        ValueError: an unsupported algorithm in ``algorithms``.
    """

    __slots__ = ("_accepted", "_dummy", "_templates", "allow_no_qop", "nonces", "realm", "tracker")

    def __init__(
        self,
        nonces: NonceManager,
        realm: str,
        *,
        tracker: NonceCountTracker | None = None,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        allow_no_qop: bool = True,
    ) -> None:
        self.nonces = nonces
        self.realm = realm
        self.tracker = tracker if tracker is not None else NonceCountTracker()
        self._accepted = frozenset(_split_algorithm(a)[0] for a in algorithms)
        self.allow_no_qop = allow_no_qop
        seed = os.urandom(16)
        self._dummy = {base: _h(base, seed) for base in _HEX_LEN}
        # (stale, order) -> the challenges as (text before the nonce, text after it)
        self._templates: dict[tuple[bool, tuple[str, ...]], list[tuple[str, str | None]]] = {}

    def challenge(
        self, now: float, stale: bool = False, algorithm: str = "SHA-256", source: str = ""
    ) -> str:
        """Return a ``WWW-Authenticate``/``Proxy-Authenticate`` value with a fresh nonce issued
        at ``now`` (seconds), ``qop="auth"`` and ``algorithm``; ``stale=true`` if ``stale``.

        Raises:
            ValueError: unsupported ``algorithm`` or non-finite ``now``.
        """
        _split_algorithm(algorithm)
        nonce = self.nonces.make(now, self.realm, source)
        return self._challenge(nonce, stale, algorithm)

    def _challenge(self, nonce: str, stale: bool, algorithm: str) -> str:
        return format_challenge(
            DigestChallenge(
                realm=self.realm, nonce=nonce, algorithm=algorithm, qop=("auth",), stale=stale
            )
        )

    def challenges(
        self,
        now: float,
        stale: bool = False,
        source: str = "",
        order: Iterable[str] = ("SHA-256", "MD5"),
    ) -> list[str]:
        """Return one challenge per accepted algorithm in ``order`` (default SHA-256 before
        MD5, RFC 8760 §2.4, RFC 7616 §3.7), sharing one nonce issued at ``now`` (seconds).
        Send each as its own header field, in order. Clients that read only the first
        challenge (sipp 3.6, older phones) need MD5 first."""
        nonce = self.nonces.make(now, self.realm, source)
        key = (bool(stale), tuple(order))
        templates = self._templates.get(key)
        if templates is None:
            templates = self._templates[key] = [
                self._template(stale, a) for a in key[1] if a in self._accepted
            ]
        return [
            before + nonce + after if after is not None else self._challenge(nonce, stale, before)
            for before, after in templates
        ]

    def _template(self, stale: bool, algorithm: str) -> tuple[str, str | None]:
        """The challenge for ``algorithm`` split where the nonce goes, ``(before, after)`` (a
        nonce is base64url text, which a quoted-string holds as it is); ``(algorithm, None)``
        when the place-holder is not unique (a realm holding it): format each time."""
        mark = "N" * 44
        text = self._challenge(mark, stale, algorithm)
        if text.count(mark) != 1:
            return algorithm, None
        before, after = text.split(mark)
        return before, after

    def verify(
        self,
        credentials: Credentials,
        method: str,
        ha1_lookup: Callable[[str, str], str | None],
        now: float,
        source: str = "",
    ) -> AuthResult:
        """Verify ``credentials`` of a ``method`` request at time ``now`` (seconds).

        Args:
            credentials: parsed ``Authorization``/``Proxy-Authorization`` value.
            method: the request method (``"REGISTER"``).
            ha1_lookup: ``(username, algorithm) -> HA1 hex or None``; ``algorithm`` is the base
                name ``"MD5"`` or ``"SHA-256"`` and the HA1 is ``H(user:realm:password)``
                (:func:`compute_ha1`). ``None`` means unknown user; the same hash work is then
                done against a dummy HA1 so timing does not reveal whether the user exists
                (the lookup's own timing is the caller's concern). Exceptions propagate.
            now: current time in seconds; source: as given to :meth:`challenge`.

        Returns:
            OK with the username; STALE if the digest is right but the nonce is expired or
            was forgotten (challenge again with ``stale=true``); FAILED for an unknown scheme,
            missing/malformed parameters, realm mismatch, unsupported algorithm/qop, bad
            nonce, wrong password or unknown user (same reason), or a replayed nonce-count.
            The ``uri`` parameter is not compared with the Request-URI here.
        """
        c = credentials
        user = c.username
        reason = self._malformed(c)
        if reason:
            return AuthResult(AuthStatus.FAILED, user, reason)
        assert user is not None and c.nonce is not None and c.uri is not None
        response = c.response
        assert response is not None
        base, _ = _split_algorithm(c.algorithm)
        nonce_status, issued = self.nonces.check_issued(c.nonce, now, self.realm, source)
        if nonce_status is NonceStatus.INVALID:
            return AuthResult(AuthStatus.FAILED, user, "invalid nonce")

        ha1 = ha1_lookup(user, base)
        known = ha1 is not None
        expected = compute_response(
            ha1.lower() if ha1 is not None else self._dummy[base],
            method,
            c.uri,
            c.nonce,
            c.nc,
            c.cnonce,
            c.qop,
            c.algorithm,
        )
        match = hmac.compare_digest(expected.encode(), response.lower().encode())
        if not (match and known):
            return AuthResult(AuthStatus.FAILED, user, "invalid credentials")
        if nonce_status is NonceStatus.STALE:
            return AuthResult(AuthStatus.STALE, user, "stale nonce")

        nc_value = int(c.nc, 16) if c.qop is not None and c.nc is not None else 1
        count = self.tracker.record(c.nonce, nc_value, issued)
        if count is NonceCountStatus.FORGOTTEN:
            return AuthResult(AuthStatus.STALE, user, "nonce no longer tracked")
        if count is NonceCountStatus.REPLAY:
            if c.qop is None:
                return AuthResult(AuthStatus.STALE, user, "RFC 2069 nonce reused")
            return AuthResult(AuthStatus.FAILED, user, "replayed nonce-count")
        return AuthResult(AuthStatus.OK, user, "")

    def _malformed(self, c: Credentials) -> str:
        """Why ``c`` cannot be verified at all (the reason of a FAILED result), or ``""``."""
        if c.scheme.lower() != "digest":
            return "unsupported auth scheme"
        if c.username is None or c.realm is None or c.nonce is None or c.uri is None:
            return "missing parameter"
        response = c.response
        if response is None:
            return "missing parameter"
        if c.realm != self.realm:
            return "realm mismatch"
        try:
            base, sess = _split_algorithm(c.algorithm)
        except ValueError:
            return "unsupported algorithm"
        if base not in self._accepted:
            return "unsupported algorithm"
        if c.qop is not None:
            if c.qop.lower() != "auth":
                return "unsupported qop"
            if c.nc is None or c.cnonce is None:
                return "missing parameter"
            if len(c.nc) != 8 or not _is_hex(c.nc) or c.nc == "00000000":
                return "malformed nc"
        elif not self.allow_no_qop or sess:
            return "missing qop"
        if len(response) != _HEX_LEN[base] or not _is_hex(response):
            return "malformed response"
        return ""


# ---------------------------------------------------------------------------------------------
# Client side (test tools, benchmarks)
# ---------------------------------------------------------------------------------------------


def answer_challenge(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
    body: bytes = b"",
) -> Credentials:
    """Build the credentials a UAC sends in reply to ``challenge`` (RFC 3261 §22.4).

    Picks ``qop=auth`` if offered, else ``auth-int``, else the RFC 2069 form (no qop), and
    echoes ``algorithm`` and ``opaque``.

    Raises:
        ValueError: non-Digest scheme, missing realm/nonce, unsupported algorithm or only
            unsupported qop options offered.
    """
    if challenge.scheme.lower() != "digest" or challenge.realm is None or not challenge.nonce:
        raise ValueError("not a usable Digest challenge")
    offered = None if challenge.qop is None else [q.lower() for q in challenge.qop]
    qop: str | None
    if offered is None:
        qop = None
    elif "auth" in offered:
        qop = "auth"
    elif "auth-int" in offered:
        qop = "auth-int"
    else:
        raise ValueError("no supported qop offered")
    ha1 = compute_ha1(username, challenge.realm, password, challenge.algorithm or "MD5")
    nc_s = f"{nc:08x}" if qop else None
    cn = cnonce if qop else None
    response = compute_response(
        ha1, method, uri, challenge.nonce, nc_s, cn, qop, challenge.algorithm, body
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        cnonce=cn,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc_s,
    )
