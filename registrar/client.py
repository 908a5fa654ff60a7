"""The pool client: a SIP user agent that registers through a DNS-load-balanced pool.

It does what a Lync-style client does against a pool of front ends (FEs) (DESIGN.md §1, §4;
``reference/seed-excerpts.md`` §1 and §7):

1. **Discovery** (RFC 3263 style, Lync names): DNS SRV ``_sipinternaltls._tcp.<domain>``, else
   ``_sips._tcp.<domain>``, else ``_sip._tls.<domain>``; SRV records are tried in RFC 2782
   order (:func:`srv_order`). The SRV target is the **pool FQDN**, whose A records list every
   FE's IP address.
2. **Trust** (seed §7): the SRV target must equal, or be a sub-domain of, a trusted domain (the
   user's own SIP domain plus any configured ones, :func:`trusted`). An untrusted target is
   refused *before* any connection is made (:class:`UntrustedServerError`). Servers the client
   is redirected to by a trusted server are trusted (seed §7); their TLS certificate must still
   name them.
3. **Connection**: the A-record IPs are tried in **random order** until a TLS connection
   succeeds (seed §1: "the client chooses an IP address from the list at random ... continues
   down the list"). TLS ≥ 1.2; the certificate must chain to the configured CA and name the
   pool FQDN (FE certificates carry SAN = FE FQDN + pool FQDN, DESIGN.md §5).
4. **REGISTER** (RFC 3261 §10.2, RFC 5626 outbound): ``401`` is answered with digest (SHA-256 or
   MD5, the first challenge whose algorithm is supported, RFC 8760 §2.4); ``301``/``302`` is
   followed to the FE named in the Contact (its A record from the same DNS server, TLS name =
   the FE FQDN) at most :data:`MAX_REDIRECTS` times (DESIGN.md §4 step 4); ``503`` with
   ``Retry-After`` is retried after that delay a bounded number of times; ``423`` is retried
   once with ``Min-Expires``. The granted expiry is read from our Contact's ``expires``.
5. **Keeping it**: :meth:`PoolClient.run` refreshes at 70-80 % of the granted expiry, sends
   RFC 5626 §4.4.1 CRLF keep-alives, and when the connection (the *flow*) drops, registers
   again from scratch -- DNS first -- after an exponential backoff with jitter.
6. **Being moved** (``subscribe=True``, DESIGN.md §4 "Re-homing"): after each registration the
   client subscribes to the ``reg`` event package of its own AOR (RFC 3680 over RFC 6665) on
   the registration's flow, answers every NOTIFY of that subscription and refreshes it before
   it expires. When a NOTIFY says that one of *its own* contacts ended with
   ``event="deactivated"`` (RFC 3680 §5.2), it registers again from scratch -- DNS, a random
   FE, the ``301`` to the current registrar. Re-registrations never overlap: only
   :meth:`PoolClient.run` starts them, one at a time, under the client's lock, and the flow
   close that follows a deactivation is expected, not a second reason to register.

The I/O-free parts are plain functions, tested alone: :func:`parse_dns_address`,
:func:`trusted`, :func:`srv_order`, :func:`parse_redirect`, :func:`redirect_maddr`,
:func:`pick_challenge`, :func:`build_register`, :func:`granted_expires`,
:func:`parse_retry_after`, :func:`refresh_delay`, :func:`backoff_delay`, :func:`percentile`,
:func:`build_subscribe`, :func:`parse_subscription_state`, :func:`own_contacts`.

The command line (``registrar client register|load|resolve``) is added by :func:`add_cli`;
``python -m registrar.client`` runs it standalone. Operator documentation: ``docs/client.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import signal
import ssl
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import dns.asyncresolver as dns_asyncresolver
import dns.exception as dns_exception
import dns.nameserver as dns_nameserver
import dns.resolver as dns_resolver

from sipstack.auth import (
    Credentials,
    DigestChallenge,
    answer_challenge,
    format_credentials,
    parse_challenge,
)
from sipstack.dialog import Dialog, DialogError
from sipstack.errors import SipParseError
from sipstack.framing import FramingLimits
from sipstack.headers import NameAddr
from sipstack.message import Request, Response, make_response
from sipstack.reginfo import CONTENT_TYPE as REGINFO_TYPE
from sipstack.reginfo import ContactInfo, RegInfo, parse_reginfo
from sipstack.transport.endpoint import EndpointConfig, SipEndpoint
from sipstack.transport.flows import Flow
from sipstack.transport.stream import StreamConnection
from sipstack.transport.tls import client_ssl_context, peer_identities
from sipstack.uri import SipUri, parse_uri

from . import __version__
from .cliutil import add_group

__all__ = [
    "DEFAULT_EXPIRES",
    "DEFAULT_SRV_NAMES",
    "DEFAULT_SUBSCRIBE_EXPIRES",
    "MAX_REDIRECTS",
    "REREGISTER_EVENTS",
    "REREGISTER_REASONS",
    "AuthenticationError",
    "ClientError",
    "ClientHandler",
    "ConnectError",
    "DiscoveryError",
    "FlowLostError",
    "PoolClient",
    "PoolResolver",
    "RegistrationError",
    "RegistrationResult",
    "SrvRecord",
    "SubscriptionState",
    "TooManyRedirectsError",
    "UntrustedServerError",
    "add_cli",
    "backoff_delay",
    "build_register",
    "build_subscribe",
    "client_endpoint",
    "granted_expires",
    "main",
    "own_contacts",
    "parse_dns_address",
    "parse_redirect",
    "parse_retry_after",
    "parse_subscription_state",
    "percentile",
    "pick_challenge",
    "redirect_maddr",
    "refresh_delay",
    "srv_order",
    "trusted",
]

log = logging.getLogger("registrar.client")

DEFAULT_SRV_NAMES: tuple[str, ...] = ("_sipinternaltls._tcp", "_sips._tcp", "_sip._tls")
"""SRV owner-name prefixes tried in order (Lync internal TLS, RFC 3263 SIPS, Lync legacy)."""

MAX_REDIRECTS = 10
"""Redirects (``301``/``302``) followed for one registration before giving up (DESIGN.md §4)."""

DEFAULT_EXPIRES = 300
"""Registration expiry asked for, in seconds."""

DEFAULT_TLS_PORT = 5061
"""Port of a redirect target whose URI names none (RFC 3261 §19.1.2: 5061 for TLS)."""

KEEPALIVE_INTERVAL = 120.0
"""Seconds between CRLF keep-alives when the registrar sends no ``Flow-Timer``
(RFC 5626 §4.4.1 recommends 95-120 s for connection-oriented transports)."""

DEFAULT_SUBSCRIBE_EXPIRES = 600
"""Duration asked for the ``reg`` event subscription, in seconds (RFC 6665 §4.1.2.1; the FE
grants 60..7200 s, ``registrar/regevent.py``)."""

REG_EVENT = "reg"
"""The event package the client subscribes to (RFC 3680 §4.1)."""

SUBSCRIBE_PERMANENT_FAILURES = frozenset({400, 403, 404, 405, 406, 415, 416, 420, 489, 501, 603})
"""Answers to SUBSCRIBE after which the client does not subscribe again on that flow (the FE
cannot or will not serve the ``reg`` package to us); other failures are retried with backoff."""

REREGISTER_EVENTS = frozenset({"deactivated", "probation"})
"""Contact events (RFC 3680 §5.2) that make the client register again when they end one of its
own contacts: ``deactivated`` at once, from DNS; ``probation`` after the contact's
``retry-after``. ``expired``, ``unregistered`` and ``rejected`` are only reported."""

REREGISTER_REASONS: tuple[str, ...] = ("deactivated", "flow-lost", "refresh")
"""Why a registration had to be made again (:attr:`PoolClient.reregistrations` keys, always
listed by ``client load``): a reg event NOTIFY deactivated our contact; the connection closed;
a refresh failed or was redirected to another FE. ``probation`` may appear too."""

SUPPORTED_ALGORITHMS = frozenset({"MD5", "SHA-256", "MD5-SESS", "SHA-256-SESS"})
"""Digest algorithms this client answers (RFC 7616 §3.4, RFC 8760)."""

USER_AGENT = f"registrar-client/{__version__}"

EventCallback = Callable[[str, dict[str, Any]], None]
"""``on_event(name, info)``: progress/logging hook; ``info`` always has ``"aor"``."""


# =============================================================================== errors


class ClientError(Exception):
    """A registration could not be made or kept. ``str(exc)`` is a one-line reason.

    Attributes:
        retryable: ``True`` when trying again later may succeed (network, DNS, server busy);
            ``False`` for configuration or credential problems that retrying cannot fix.
    """

    retryable = True


class DiscoveryError(ClientError):
    """DNS gave no usable SRV or A record (or the DNS server did not answer)."""


class UntrustedServerError(ClientError):
    """Every SRV target found lies outside the trusted domains (seed-excerpts §7); no
    connection was attempted."""

    retryable = False


class ConnectError(ClientError):
    """No address of the server accepted a TCP connection and a verified TLS handshake."""


class FlowLostError(ClientError):
    """The connection closed, or a request got no answer, during a transaction."""


class RegistrationError(ClientError):
    """The registrar answered with a final failure.

    Attributes:
        status: the SIP status code (``0`` when the failure is not a status, e.g. a 200 that
            does not list our Contact).
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        # 4xx (except 408 timeouts and 423 handled earlier) are about the request or the user.
        self.retryable = not (400 <= status < 500 and status != 408)


class AuthenticationError(RegistrationError):
    """The registrar rejected our digest credentials (wrong user name or password), or offered
    no challenge this client can answer."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message, status)
        self.retryable = False


class TooManyRedirectsError(RegistrationError):
    """More than ``max_redirects`` redirects for one registration (DESIGN.md §4 step 4)."""

    def __init__(self, message: str, status: int = 301) -> None:
        super().__init__(message, status)
        self.retryable = True


# ========================================================================= pure helpers


class SrvRecord(NamedTuple):
    """One DNS SRV record (RFC 2782): ``priority`` (lower first), ``weight`` (share within a
    priority), ``port`` and ``target`` (a host name without the final dot, lower case)."""

    priority: int
    weight: int
    port: int
    target: str


def parse_dns_address(text: str | tuple[str, int]) -> tuple[str, int]:
    """Parse a DNS server address ``HOST[:PORT]`` (``[v6]:PORT`` too); the port defaults to 53.

    Raises:
        ValueError: naming the expected form (``127.0.1.53:5353``).
    """
    if isinstance(text, tuple):
        host, port = text
        return str(host), int(port)
    value = text.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not host:
        raise ValueError(f"DNS server {text!r}: expected HOST[:PORT], e.g. 127.0.1.53:5353")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) <= 65535):
        raise ValueError(f"DNS server {text!r}: the port must be a number 1..65535")
    return host, int(port_text) if port_text else 53


def _normal_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def trusted(server_fqdn: str, trusted_domains: Iterable[str]) -> bool:
    """Is an automatically discovered server trusted? (``reference/seed-excerpts.md`` §7)

    The server's FQDN must equal a trusted domain or be a sub-domain of one: with trusted
    domains ``d.e`` and ``h.i.j``, ``s1.b.c.d.e`` is trusted and ``s2.i.j`` is not. The test is
    on whole labels, case-insensitive, ignoring a final dot; it is not a certificate check (the
    TLS handshake checks the certificate separately). An IP address is never trusted this way.

    Args:
        server_fqdn: the host name found in DNS (an SRV target).
        trusted_domains: domain names; empty entries are ignored.
    """
    name = _normal_name(server_fqdn)
    if not name or _is_ip(name):
        return False
    for domain in trusted_domains:
        d = _normal_name(domain)
        if d and (name == d or name.endswith("." + d)):
            return True
    return False


def srv_order(records: Iterable[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """The order in which to try SRV records (RFC 2782): by ascending priority; within one
    priority a weighted random order (zero-weight records have a small chance, as the RFC's
    selection algorithm gives them). A lone target ``"."`` means "service not offered" and is
    dropped.

    Args:
        records: the SRV answer; rng: randomness source (``random`` module when ``None``).
    """
    rand = rng or random.Random()
    usable = [r for r in records if _normal_name(r.target)]
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        group = sorted((r for r in usable if r.priority == priority), key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            pick = rand.randint(0, total)
            running = 0
            chosen = group[-1]
            for record in group:
                running += record.weight
                if running >= pick:
                    chosen = record
                    break
            group.remove(chosen)
            out.append(chosen)
    return out


def _redirect_contact(response: Response) -> NameAddr:
    try:
        contacts = [c for c in response.contacts if not c.wildcard]
    except SipParseError as exc:
        raise ValueError(f"{response.status} with a malformed Contact: {exc.reason}") from None
    if not contacts:
        raise ValueError(f"{response.status} {response.reason} without a Contact")

    def q_of(contact: NameAddr) -> float:
        try:
            q = contact.q
        except SipParseError:
            return 0.0
        return 1.0 if q is None else q

    best = max(contacts, key=q_of)  # max() keeps the first of equals: the server's order
    if not isinstance(best.uri, SipUri):
        raise ValueError(f"{response.status} Contact {best.uri} is not a SIP URI")
    return best


def parse_redirect(response: Response) -> tuple[str, int, str]:
    """Where a ``301``/``302`` sends us: ``(host, port, transport)``.

    The Contact with the highest ``q`` (the first of equals) is used. ``host`` is the URI host
    in lower case (IPv6 without brackets); ``port`` defaults to 5061; ``transport`` is the
    ``transport`` parameter in lower case, ``"tls"`` when absent or for a ``sips:`` URI (this
    client only speaks TLS, and the request that was redirected went over TLS).

    Example: ``Contact: <sip:fe3.contoso.com:5061;transport=tls>`` →
    ``("fe3.contoso.com", 5061, "tls")``.

    Raises:
        ValueError: no Contact, a malformed one, or not a SIP/SIPS URI.
    """
    uri = _redirect_contact(response).uri
    assert isinstance(uri, SipUri)
    transport = uri.transport or "tls"
    if uri.scheme == "sips":
        transport = "tls"
    host = uri.host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, uri.port or DEFAULT_TLS_PORT, transport


def redirect_maddr(response: Response) -> str | None:
    """The ``maddr`` parameter of the redirect Contact (the FE's IP address, which the pool adds
    for clients that cannot resolve FE names), or ``None``. Raises ValueError like
    :func:`parse_redirect`."""
    uri = _redirect_contact(response).uri
    assert isinstance(uri, SipUri)
    value = uri.param("maddr")
    return value or None


def _algorithm_supported(challenge: DigestChallenge) -> bool:
    if challenge.scheme.lower() != "digest" or challenge.realm is None or not challenge.nonce:
        return False
    if (challenge.algorithm or "MD5").upper() not in SUPPORTED_ALGORITHMS:
        return False
    qop = challenge.qop
    return qop is None or any(q.lower() in ("auth", "auth-int") for q in qop)


def pick_challenge(response: Response) -> DigestChallenge | None:
    """The challenge to answer in a ``401``/``407``: the first ``WWW-Authenticate`` (or
    ``Proxy-Authenticate``) Digest challenge whose algorithm is MD5 or SHA-256 (or their
    ``-sess`` variants) and whose qop includes ``auth`` (or has none). The server lists its
    preferred algorithm first (RFC 8760 §2.4), so the first usable one is taken. Unparsable
    challenges are skipped. ``None`` when there is no usable challenge.
    """
    name = "proxy-authenticate" if response.status == 407 else "www-authenticate"
    for value in response.get_all(name):
        try:
            challenge = parse_challenge(value)
        except SipParseError:
            continue
        if _algorithm_supported(challenge):
            return challenge
    return None


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _request_to_self(
    method: str, uri: str, aor_text: str, via: str, call_id: str, cseq: int, from_tag: str
) -> Request:
    """The start of a request from our AOR ``aor_text`` to itself: Via, Max-Forwards, From
    (with ``from_tag``), To (no tag), Call-ID and CSeq. :func:`_finish_request` ends it."""
    req = Request(method, uri)
    req.add("Via", via)
    req.add("Max-Forwards", "70")
    req.add("From", f"<{aor_text}>;tag={from_tag}")
    req.add("To", f"<{aor_text}>")
    req.add("Call-ID", call_id)
    req.add("CSeq", f"{cseq} {method}")
    return req


def _finish_request(
    req: Request, authorization: str | None, proxy: bool, user_agent: str
) -> Request:
    """Add the ``Authorization`` (with ``proxy``: ``Proxy-Authorization``) when given, then
    User-Agent and ``Content-Length: 0``; returns ``req``."""
    if authorization is not None:
        req.add("Proxy-Authorization" if proxy else "Authorization", authorization)
    req.add("User-Agent", user_agent)
    req.add("Content-Length", "0")
    return req


def build_register(
    *,
    aor: SipUri,
    via: str,
    local: tuple[str, int],
    call_id: str,
    cseq: int,
    from_tag: str,
    instance_id: str,
    expires: int,
    authorization: str | None = None,
    proxy: bool = False,
    user_agent: str = USER_AGENT,
) -> Request:
    """Build one REGISTER (RFC 3261 §10.2, RFC 5626 §4.2, RFC 3327).

    Request-URI ``sip:<domain>``; To and From the AOR; Contact
    ``<sip:user@LOCALIP:LOCALPORT;transport=tls;ob>;+sip.instance="<urn:uuid:...>";reg-id=1``
    (with ``;expires=0`` for an unregistration); ``Supported: outbound, path``; ``Expires``.

    Args:
        aor: the address-of-record; via: the top Via (:meth:`SipEndpoint.via_for`);
        local: our (ip, port) on the flow; call_id, cseq (1..2**31-1), from_tag: as RFC 3261;
        instance_id: ``urn:uuid:...`` (RFC 5626 §4.1); expires: seconds (0 unregisters);
        authorization: an ``Authorization`` value (``Proxy-Authorization`` with ``proxy``).
    """
    domain = aor.host if aor.port is None else f"{aor.host}:{aor.port}"
    aor_text = f"sip:{aor.user}@{aor.host}"
    contact_uri = f"sip:{aor.user}@{_format_host(local[0])}:{local[1]};transport=tls;ob"
    contact = f'<{contact_uri}>;+sip.instance="<{instance_id}>";reg-id=1'
    if expires == 0:
        contact += ";expires=0"
    req = _request_to_self("REGISTER", f"sip:{domain}", aor_text, via, call_id, cseq, from_tag)
    req.add("Contact", contact)
    req.add("Supported", "outbound, path")
    req.add("Expires", str(expires))
    return _finish_request(req, authorization, proxy, user_agent)


def granted_expires(
    response: Response, instance_id: str, contact_uri: str | None = None
) -> int | None:
    """The expiry (seconds) the registrar granted our binding, from a ``200`` to REGISTER.

    Looks for our Contact -- same ``+sip.instance`` (with ``reg-id`` 1 or none), else the same
    URI (``contact_uri``, compared without parameters) -- and returns its ``expires``
    parameter, else the ``Expires`` header (RFC 3261 §10.2.4). ``None`` when the response does
    not list our Contact (the registration did not take) or gives no expiry.
    """
    try:
        contacts = response.contacts
    except SipParseError:
        return None
    header = None
    with contextlib.suppress(SipParseError):
        header = response.expires
    want = contact_uri.split(";", 1)[0].lower() if contact_uri else None
    for contact in contacts:
        if contact.wildcard:
            continue
        mine = False
        try:
            if contact.instance_id == instance_id and contact.reg_id in (None, 1):
                mine = True
        except SipParseError:
            pass
        if not mine and want is not None and isinstance(contact.uri, SipUri):
            got = str(contact.uri).split(";", 1)[0].lower()
            mine = got == want
        if mine:
            try:
                value = contact.expires
            except SipParseError:
                value = None
            return value if value is not None else header
    return None


def build_subscribe(
    *,
    aor: SipUri,
    via: str,
    contact: str,
    call_id: str,
    cseq: int,
    from_tag: str,
    expires: int,
    authorization: str | None = None,
    proxy: bool = False,
    user_agent: str = USER_AGENT,
) -> Request:
    """Build the initial SUBSCRIBE to the ``reg`` event package of our own AOR (RFC 3680 §4,
    RFC 6665 §4.1.2.1).

    Request-URI, To and From: the AOR (``sip:alice@contoso.com``; From with ``from_tag``, To
    without a tag); ``Contact: <contact>`` (the registration's Contact URI, so the FE notifies
    over the registration's flow); ``Event: reg``; ``Accept: application/reginfo+xml``;
    ``Expires``.

    Args:
        aor: the address-of-record; via: the top Via (:meth:`SipEndpoint.via_for`);
        contact: our Contact URI (``sip:alice@10.0.0.5:40000;transport=tls;ob``);
        call_id, cseq, from_tag: of the subscription (its own Call-ID, not the
        registration's); expires: seconds (0 fetches the state once, RFC 6665 §4.4.3);
        authorization: an ``Authorization`` value (``Proxy-Authorization`` with ``proxy``).
    """
    aor_text = f"sip:{aor.user}@{aor.host}"
    req = _request_to_self("SUBSCRIBE", aor_text, aor_text, via, call_id, cseq, from_tag)
    req.add("Contact", f"<{contact}>")
    req.add("Event", REG_EVENT)
    req.add("Accept", REGINFO_TYPE)
    req.add("Expires", str(expires))
    return _finish_request(req, authorization, proxy, user_agent)


class SubscriptionState(NamedTuple):
    """A ``Subscription-State`` header (RFC 6665 §8.2.3).

    Attributes:
        state: ``"active"``, ``"pending"``, ``"terminated"`` (lower case; another token as
            is; ``""`` when the header is absent).
        reason: the ``reason`` parameter in lower case (``"deactivated"``, ``"timeout"`` ...),
            or ``None``; expires, retry_after: those parameters in seconds, or ``None``.
    """

    state: str
    reason: str | None = None
    expires: int | None = None
    retry_after: int | None = None


def parse_subscription_state(value: str | None) -> SubscriptionState:
    """Parse a ``Subscription-State`` value, e.g. ``terminated;reason=deactivated``;
    lenient: unknown or malformed parameters are ignored (``None``)."""
    if value is None:
        return SubscriptionState("")
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, _, val = part.partition("=")
        key = key.strip().lower()
        if key:
            params[key] = val.strip().strip('"')

    def number(name: str) -> int | None:
        text = params.get(name)
        return int(text) if text is not None and text.isdigit() else None

    reason = params.get("reason")
    return SubscriptionState(
        head.strip().lower(),
        reason.lower() if reason else None,
        number("expires"),
        number("retry-after"),
    )


def _instance_key(value: str | None) -> str | None:
    """``+sip.instance`` in comparable form: no quotes, no angle brackets, lower case."""
    if not value:
        return None
    return value.strip().strip('"').strip().strip("<>").strip().lower() or None


def _uri_key(value: str) -> str:
    """A contact URI in comparable form: no angle brackets, no parameters, lower case."""
    return value.strip().strip("<>").split(";", 1)[0].strip().lower()


def _aor_key(value: str) -> str:
    """An AOR in comparable form (``sip:user@host``, lower case, no port or parameters)."""
    text = value.strip().strip("<>").split(";", 1)[0].lower()
    scheme, colon, rest = text.partition(":")
    if not colon:
        return text
    user, at, host = rest.rpartition("@")
    host = host.split(":", 1)[0] if not host.startswith("[") else host
    return f"sip:{user}{at}{host}" if scheme in ("sip", "sips") else text


def own_contacts(
    info: RegInfo, aor: str, instance_id: str, contact_uri: str | None = None
) -> list[ContactInfo]:
    """This client's contacts in a reginfo document (RFC 3680 §5.3).

    A contact is ours when it is listed under a ``<registration>`` of ``aor`` (compared as
    ``sip:user@host`` in lower case) and carries our ``+sip.instance`` (with ``reg-id`` 1 or
    none, RFC 5626 §4.2) or our contact URI (``contact_uri``, compared without parameters).
    Other UAs of the same user are never ours.

    Args:
        info: the parsed NOTIFY body (:func:`sipstack.reginfo.parse_reginfo`).
        aor: our AOR; instance_id: our ``urn:uuid:...``; contact_uri: our Contact URI.
    """
    want_aor = _aor_key(aor)
    want_instance = _instance_key(instance_id)
    want_uri = _uri_key(contact_uri) if contact_uri else None
    out: list[ContactInfo] = []
    for registration in info.registrations:
        if _aor_key(registration.aor) != want_aor:
            continue
        for contact in registration.contacts:
            instance = _instance_key(contact.instance)
            by_instance = instance == want_instance and contact.reg_id in (None, 1)
            if by_instance or (want_uri is not None and _uri_key(contact.uri) == want_uri):
                out.append(contact)
    return out


def parse_retry_after(response: Response) -> int | None:
    """``Retry-After`` in seconds (RFC 3261 §20.33: ``delta-seconds [comment] *(;param)``), or
    ``None`` when absent or malformed."""
    value = response.get("retry-after")
    if value is None:
        return None
    head = value.split(";", 1)[0].split("(", 1)[0].strip()
    return int(head) if head.isdigit() else None


def refresh_delay(expires: float, rng: random.Random | None = None) -> float:
    """Seconds after a successful registration at which to refresh it: a random point between
    70 % and 80 % of the granted ``expires`` (jitter spreads the refreshes of many clients)."""
    if expires <= 0:
        return 0.0
    return float(expires) * (rng or random).uniform(0.70, 0.80)


def backoff_delay(
    failures: int, rng: random.Random | None = None, base: float = 1.0, cap: float = 60.0
) -> float:
    """Seconds to wait before registering again after ``failures`` consecutive failures
    (0 = the first retry): ``min(cap, base * 2**failures)`` times a random factor in
    ``[0.5, 1.0]`` (RFC 5626 §4.5's shape with shorter defaults; the jitter keeps the clients
    of a failed FE from reconnecting all at once)."""
    ceiling = min(cap, base * (2 ** min(max(failures, 0), 30)))
    return ceiling * (rng or random).uniform(0.5, 1.0)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_aor(text: str) -> SipUri:
    value = text.strip()
    if ":" not in value.split("@", 1)[0]:
        value = "sip:" + value
    try:
        uri = parse_uri(value)
    except SipParseError as exc:
        raise ValueError(f"bad AOR {text!r}: {exc.reason}") from None
    if not isinstance(uri, SipUri) or not uri.user or not uri.host:
        raise ValueError(f"bad AOR {text!r}: expected sip:user@domain")
    return SipUri("sip", uri.user, None, uri.host.lower())


# ============================================================================ results


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    """A successful registration.

    Attributes:
        aor: the address-of-record (``sip:alice@contoso.com``).
        fe_fqdn: the FE that holds the registration: its certificate's common name (the FE FQDN,
            DESIGN.md §5), else the name we connected to.
        fe_ip: the FE's IP address; fe_port: its port.
        redirects: ``301``/``302`` followed to get there.
        expires: the expiry the registrar granted, in seconds.
        latency: seconds from the start of the registration (DNS included) to the ``200``.
        headers: every header field of the ``200 OK`` as ``(name, value)`` in wire order (e.g.
            ``X-Registrar-Mode`` for backup mode, ``Flow-Timer``).
        algorithm: the digest algorithm answered (``"SHA-256"``), ``None`` if not challenged.
        contact: the Contact URI we registered.
        registered_at: ``time.time()`` of the ``200``.
    """

    aor: str
    fe_fqdn: str
    fe_ip: str
    redirects: int
    expires: int
    latency: float
    headers: tuple[tuple[str, str], ...] = ()
    fe_port: int = 0
    algorithm: str | None = None
    contact: str = ""
    registered_at: float = 0.0

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive) in the ``200``, or ``None``."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def mode(self) -> str | None:
        """The ``X-Registrar-Mode`` value (``primary`` or ``backup;primary="fe2..."``, see
        ``registrar.pool.routing``), ``None`` when the registrar sent none."""
        return self.header("X-Registrar-Mode")

    @property
    def backup(self) -> bool:
        """True when the registrar said this is a backup-mode registration (DESIGN.md §4)."""
        mode = self.mode
        return mode is not None and mode.split(";", 1)[0].strip().lower() == "backup"

    @property
    def primary(self) -> str | None:
        """The primary FE named by a backup-mode ``X-Registrar-Mode``, else ``None``."""
        mode = self.mode
        if mode is None:
            return None
        for part in mode.split(";")[1:]:
            key, _, value = part.partition("=")
            if key.strip().lower() == "primary":
                return value.strip().strip('"') or None
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (latency in seconds, headers as ``[name, value]`` lists)."""
        return {
            "aor": self.aor,
            "fe_fqdn": self.fe_fqdn,
            "fe_ip": self.fe_ip,
            "fe_port": self.fe_port,
            "redirects": self.redirects,
            "expires": self.expires,
            "latency": round(self.latency, 6),
            "algorithm": self.algorithm,
            "contact": self.contact,
            "mode": self.mode,
            "backup": self.backup,
            "headers": [list(h) for h in self.headers],
        }

    def describe(self) -> str:
        """One line for people."""
        extra = ""
        if self.backup:
            extra = f", backup mode (primary {self.primary or '?'})"
        return (
            f"registered {self.aor} on {self.fe_fqdn} ({self.fe_ip}:{self.fe_port}), "
            f"expires {self.expires}s, {self.redirects} redirect(s), "
            f"{self.latency * 1000:.1f} ms{extra}"
        )


# =========================================================================== DNS


class PoolResolver:
    """Looks up the pool in one DNS server (the pool's embedded DNS server in development).

    Uses ``dns.asyncresolver.Resolver(configure=False)`` (dnspython): no ``/etc/resolv.conf``,
    only the given server, over UDP (TCP on truncation).

    Args:
        dns: the DNS server, ``"HOST[:PORT]"`` or ``(host, port)``.
        timeout: seconds per query attempt; lifetime: seconds for the whole look-up.
        cache: keep answers for their TTL (useful when many clients share the resolver).

    Raises:
        ValueError: a malformed ``dns`` address.
    """

    def __init__(
        self,
        dns: str | tuple[str, int],
        *,
        timeout: float = 2.0,
        lifetime: float = 5.0,
        cache: bool = False,
    ) -> None:
        host, port = parse_dns_address(dns)
        self.address = (host, port)
        resolver = dns_asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns_nameserver.Do53Nameserver(host, port)]
        resolver.timeout = timeout
        resolver.lifetime = lifetime
        if cache:
            resolver.cache = dns_resolver.Cache()
        self._resolver = resolver

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except (dns_resolver.NXDOMAIN, dns_resolver.NoAnswer):
            return []
        except dns_exception.Timeout:
            host, port = self.address
            raise DiscoveryError(
                f"DNS server {host}:{port} did not answer {rdtype} {name}"
            ) from None
        except dns_exception.DNSException as exc:
            raise DiscoveryError(f"DNS {rdtype} {name}: {exc}") from None
        return list(answer)

    async def srv(
        self, domain: str, names: Sequence[str] = DEFAULT_SRV_NAMES
    ) -> tuple[str, list[SrvRecord]]:
        """SRV records of the first name in ``names`` (``_sipinternaltls._tcp`` ...) under
        ``domain`` that has any. Returns ``(owner name, records)``.

        Raises:
            DiscoveryError: none of the names has SRV records, or DNS failed.
        """
        domain = _normal_name(domain)
        for prefix in names:
            owner = f"{prefix}.{domain}"
            rows = await self._query(owner, "SRV")
            if rows:
                records = [
                    SrvRecord(
                        int(r.priority),
                        int(r.weight),
                        int(r.port),
                        _normal_name(r.target.to_text(omit_final_dot=True)),
                    )
                    for r in rows
                ]
                return owner, records
        tried = ", ".join(f"{p}.{domain}" for p in names)
        raise DiscoveryError(f"no SRV record for the SIP domain {domain} (tried {tried})")

    async def addresses(self, host: str) -> list[str]:
        """The A records (IPv4 addresses) of ``host``, in the order DNS gave them; an IP
        literal is returned as is.

        Raises:
            DiscoveryError: no A record, or DNS failed.
        """
        if _is_ip(host):
            return [host]
        rows = await self._query(host, "A")
        if not rows:
            raise DiscoveryError(f"no A record for {host}")
        return [r.address for r in rows]


# =========================================================================== endpoint


class ClientHandler:
    """The request handler of a client endpoint (:func:`client_endpoint`).

    Requests from registrars arrive on the flows our clients opened: ``NOTIFY`` goes to the
    :class:`PoolClient` that owns the flow, which answers it (``200`` for its reg event
    subscription, ``481`` for a subscription it does not have, RFC 6665 §4.1.3; ``481`` too on
    an unknown flow); ``OPTIONS`` gets ``200``; ``ACK`` nothing; anything else ``405`` with
    ``Allow``. It also tells each client when its flow closes (an endpoint
    ``on_flow_closed_hooks`` entry).
    """

    ALLOW = "NOTIFY, OPTIONS"

    def __init__(self) -> None:
        self._clients: dict[int, PoolClient] = {}

    def attach(self, flow: Flow, client: PoolClient) -> None:
        """Route ``flow``'s requests and close to ``client``."""
        self._clients[flow.id] = client

    def detach(self, flow: Flow) -> None:
        """Forget ``flow``."""
        self._clients.pop(flow.id, None)

    def handle_request(self, request: Request, flow: Flow) -> Response | None:
        """Answer a request from a registrar (see the class docstring)."""
        method = request.method
        if method == "ACK":
            return None
        tag = uuid.uuid4().hex[:10]
        if method == "NOTIFY":
            client = self._clients.get(flow.id)
            if client is None:
                return make_response(request, 481, to_tag=tag)
            status = client._on_notify(request, flow)
            resp = make_response(request, status, to_tag=tag)
            if status == 489:
                resp.headers.insert(-1, ("allow-events", "Allow-Events", REG_EVENT))
            return resp
        if method == "OPTIONS":
            resp = make_response(request, 200, to_tag=tag)
        else:
            resp = make_response(request, 405, to_tag=tag)
        resp.headers.insert(-1, ("allow", "Allow", self.ALLOW))
        return resp

    def handle_response(self, response: Response, flow: Flow) -> None:
        """A response matching no transaction (a late retransmission): ignored."""
        log.debug("stray %s on %r ignored", response.status, flow)

    def on_flow_closed(self, flow: Flow) -> None:
        """Endpoint hook: tell the owning client its flow closed."""
        client = self._clients.pop(flow.id, None)
        if client is not None:
            client._on_flow_closed(flow)


def client_endpoint(
    ca: str | os.PathLike[str] | None,
    *,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    handshake_timeout: float = 10.0,
    idle_timeout: float = 86400.0,
) -> SipEndpoint:
    """A :class:`SipEndpoint` for pool clients: a :class:`ClientHandler` as its handler and a
    TLS client context that verifies the server chain against ``ca`` and the host name
    (:func:`sipstack.transport.tls.client_ssl_context`). Share one among many clients (load
    mode); each client still opens its own connection.

    Args:
        ca: PEM CA bundle (``certs/ca.crt``); ``None`` uses the system trust store.
        cert, key: a client certificate (not needed to register).
        handshake_timeout: seconds for a TLS handshake.
        idle_timeout: seconds of silence after which *we* close a connection (large: the
            client keeps its flows alive with keep-alives and refreshes).

    Raises:
        OSError, ssl.SSLError: the CA/cert files cannot be read.
    """
    handler = ClientHandler()
    config = EndpointConfig(
        limits=FramingLimits(idle_timeout=idle_timeout),
        client_ssl=client_ssl_context(ca, cert, key),
        handshake_timeout=handshake_timeout,
        warning_agent="registrar-client",
    )
    endpoint = SipEndpoint(handler, config)
    endpoint.on_flow_closed_hooks.append(handler.on_flow_closed)
    return endpoint


# ============================================================================ the client


@dataclass(slots=True)
class _Auth:
    """The challenge we answer on one flow, and its nonce count (RFC 7616 §3.4: ``nc``
    increments each time the same nonce is reused)."""

    challenge: DigestChallenge
    flow_id: int
    proxy: bool
    nc: int = 0


@dataclass(slots=True)
class _Outcome:
    flow: Flow
    response: Response
    redirects: int
    server_name: str
    algorithm: str | None = None
    contact: str = ""


@dataclass(eq=False, slots=True)
class _RegSub:
    """Our subscription to the ``reg`` event package of our AOR (RFC 6665 subscriber side).

    Attributes:
        flow: the registration's flow it lives on (it dies with it).
        call_id, from_tag: its identity until the dialog exists (a NOTIFY may arrive before
            the ``200``, RFC 6665 §4.1.2.4); cseq: CSeq of the last initial SUBSCRIBE.
        contact: our Contact URI (the registration's).
        fe_fqdn: the FE it was made with.
        dialog: the subscription dialog once the ``2xx`` came (RFC 3261 §12.1.2).
        expires: the duration granted by the last ``2xx``.
        version: the last reginfo ``version`` accepted (RFC 3680 §5.3: older ones are stale).
        terminated: the reason once a NOTIFY ended it (``Subscription-State: terminated``).
    """

    flow: Flow
    call_id: str
    from_tag: str
    contact: str
    fe_fqdn: str
    cseq: int = 0
    dialog: Dialog | None = None
    expires: int = 0
    version: int | None = None
    terminated: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(Call-ID, our tag)``: what a NOTIFY of this subscription carries (its To tag)."""
        return (self.call_id, self.from_tag)


@dataclass(frozen=True, slots=True)
class _Deactivation:
    """A reg event NOTIFY ended our contact with a re-register event (RFC 3680 §5.2).

    Attributes:
        flow_id: the registration's flow (the FE closes it next: that close is expected).
        cause: ``"deactivated"`` or ``"probation"``; delay: seconds to wait before
            registering again.
    """

    flow_id: int
    cause: str
    delay: float


class PoolClient:
    """One AOR registered through a DNS-load-balanced pool (see the module docstring).

    Args:
        aor: ``sip:alice@contoso.com`` (``alice@contoso.com`` is accepted).
        password: the digest password.
        dns: the DNS server, ``"HOST[:PORT]"`` or ``(host, port)``; ignored with ``resolver``.
        ca: PEM CA bundle that server certificates must chain to; ignored with ``endpoint``.
        trusted_domains: domains trusted besides the AOR's own domain (seed-excerpts §7).
        expires: expiry to ask for, in seconds (the registrar may grant less).
        username: digest user name (default: the AOR's user part).
        endpoint: a shared endpoint made by :func:`client_endpoint` (load mode: one endpoint,
            one connection per client); default: the client makes and owns one.
        on_event: ``on_event(name, info)`` progress hook (exceptions in it are logged and
            ignored). Names: ``dns``, ``untrusted``, ``connect-failed``, ``connected``,
            ``challenged``, ``redirected``, ``retry-after``, ``registered`` (``info["reason"]``:
            ``initial`` or why it was made again, :data:`REREGISTER_REASONS`), ``refreshed``
            (``info["moved"]``: a redirect took it to another FE), ``keepalive``,
            ``flow-lost``, ``failed``, ``notify``, ``subscribed``, ``subscribe-failed``,
            ``deactivated``, ``probation``, ``unsubscribed``, ``unregistered``.
        resolver: a shared :class:`PoolResolver`.
        srv_names: SRV prefixes to try (default :data:`DEFAULT_SRV_NAMES`).
        max_redirects: redirects followed per registration (default 10).
        max_retry_after: most ``503``/``Retry-After`` retries per registration (default 3);
            retry_after_cap: longest ``Retry-After`` honoured, in seconds (longer fails).
        connect_timeout: seconds for TCP connect + TLS handshake per address.
        request_timeout: seconds to wait for a final response (the transaction layer also
            gives up after Timer F, 32 s).
        retry_base, retry_cap: seconds, :func:`backoff_delay` after failures in :meth:`run`.
        max_failures: consecutive failed registrations after which :meth:`run` gives up and
            raises the last error (``None``: never).
        instance_id: ``urn:uuid:...`` of this UA instance (RFC 5626 §4.1; default: a new one).
        rng: randomness source (tests pass a seeded or scripted one).
        subscribe: after every registration, subscribe to the ``reg`` event package of the
            AOR over the registration's flow and register again when a NOTIFY deactivates
            our contact (module docstring, step 6).
        subscribe_expires: the subscription duration to ask for, in seconds.

    Raises:
        ValueError: a malformed AOR or DNS address, or an endpoint not made by
            :func:`client_endpoint`.
        OSError, ssl.SSLError: the CA file cannot be read.
    """

    def __init__(
        self,
        aor: str,
        password: str,
        dns: str | tuple[str, int] | None = None,
        ca: str | os.PathLike[str] | None = None,
        trusted_domains: Iterable[str] = (),
        expires: int = DEFAULT_EXPIRES,
        *,
        username: str | None = None,
        endpoint: SipEndpoint | None = None,
        on_event: EventCallback | None = None,
        resolver: PoolResolver | None = None,
        srv_names: Sequence[str] = DEFAULT_SRV_NAMES,
        max_redirects: int = MAX_REDIRECTS,
        max_retry_after: int = 3,
        retry_after_cap: float = 60.0,
        connect_timeout: float = 10.0,
        request_timeout: float = 40.0,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        max_failures: int | None = None,
        instance_id: str | None = None,
        rng: random.Random | None = None,
        subscribe: bool = False,
        subscribe_expires: int = DEFAULT_SUBSCRIBE_EXPIRES,
    ) -> None:
        self.uri = _parse_aor(aor)
        self.aor = f"sip:{self.uri.user}@{self.uri.host}"
        self.domain = self.uri.host
        self.password = password
        self.username = username if username is not None else str(self.uri.user)
        if resolver is None:
            if dns is None:
                raise ValueError("PoolClient needs a DNS server (dns=HOST:PORT) or a resolver")
            resolver = PoolResolver(dns)
        self.resolver = resolver
        self.trusted_domains = list(
            dict.fromkeys([self.domain, *map(_normal_name, trusted_domains)])
        )
        if expires < 0:
            raise ValueError("expires must be >= 0 seconds")
        self.expires = expires
        self._own_endpoint = endpoint is None
        if endpoint is None:
            endpoint = client_endpoint(ca)
        if not isinstance(endpoint.handler, ClientHandler):
            raise ValueError("a shared endpoint must come from registrar.client.client_endpoint()")
        self.endpoint = endpoint
        self._handler: ClientHandler = endpoint.handler
        self.on_event = on_event
        self.srv_names = tuple(srv_names)
        self.max_redirects = max_redirects
        self.max_retry_after = max_retry_after
        self.retry_after_cap = retry_after_cap
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.max_failures = max_failures
        self.instance_id = instance_id or f"urn:uuid:{uuid.uuid4()}"
        self.rng = rng or random.Random()
        self.call_id = f"{uuid.uuid4().hex}@registrar-client"
        self.from_tag = uuid.uuid4().hex[:12]
        self._cseq = 0
        self._auth: _Auth | None = None
        self._flow: Flow | None = None
        self._closing: set[int] = set()
        self._lock = asyncio.Lock()
        self._wakeup: asyncio.Event | None = None
        self._flow_lost = False
        self._result: RegistrationResult | None = None
        self._registered_mono = 0.0
        self._refresh_at = 0.0
        self._refresh_now = False
        if subscribe_expires < 0:
            raise ValueError("subscribe_expires must be >= 0 seconds")
        self.subscribe = subscribe
        self.subscribe_expires = subscribe_expires
        self._sub: _RegSub | None = None
        self._sub_next: float | None = None  # monotonic time of the next SUBSCRIBE
        self._sub_failures = 0
        self._sub_disabled: int | None = None  # flow id on which subscribing is pointless
        self._ended_subs: deque[tuple[str, str]] = deque(maxlen=8)
        self._deactivation: _Deactivation | None = None
        self._unregistering = False
        self.notifications: deque[Request] = deque(maxlen=32)
        """The last NOTIFY requests received (reg event, RFC 3680), newest last."""
        self.stats: Counter[str] = Counter()
        """Counts: ``registrations``, ``refreshes``, ``flow_losses``, ``failures``,
        ``redirects``, ``challenges``, ``subscriptions``, ``subscribe_failures``,
        ``notifies``, ``deactivations``."""
        self.reregistrations: Counter[str] = Counter()
        """Registrations made again, by reason (:data:`REREGISTER_REASONS`): a fresh
        registration after a deactivation or a lost flow, or a refresh that failed or moved
        to another FE."""

    # ------------------------------------------------------------------ properties
    @property
    def result(self) -> RegistrationResult | None:
        """The last successful registration (or refresh), ``None`` before the first one."""
        return self._result

    @property
    def flow(self) -> Flow | None:
        """The connection the registration lives on, ``None`` when not registered."""
        return self._flow

    @property
    def registered(self) -> bool:
        """True while the registration's flow is open, its expiry has not passed and no reg
        event NOTIFY deactivated it."""
        flow, result = self._flow, self._result
        if flow is None or flow.closed or result is None:
            return False
        deactivation = self._deactivation
        if deactivation is not None and deactivation.flow_id == flow.id:
            return False
        return time.monotonic() < self._registered_mono + result.expires

    @property
    def subscribed(self) -> bool:
        """True while a ``reg`` event subscription is established on the registration's
        flow (its ``2xx`` came and no NOTIFY ended it)."""
        sub, flow = self._sub, self._flow
        return (
            sub is not None
            and sub.dialog is not None
            and sub.terminated is None
            and sub.flow is flow
            and not sub.flow.closed
        )

    # --------------------------------------------------------------------- events
    def _emit(self, name: str, **info: Any) -> None:
        info["aor"] = self.aor
        log.debug("%s %s %s", self.aor, name, info)
        callback = self.on_event
        if callback is None:
            return
        try:
            callback(name, info)
        except Exception:
            log.exception("on_event callback failed for %s", name)

    def _wake(self) -> None:
        """Wake :meth:`run` (it re-reads the state)."""
        if self._wakeup is not None:
            self._wakeup.set()

    def _on_flow_closed(self, flow: Flow) -> None:
        if flow.id in self._closing:
            self._closing.discard(flow.id)
            return
        if flow is self._flow:
            deactivation = self._deactivation
            if deactivation is not None and deactivation.flow_id == flow.id:
                # Expected: a re-homing FE closes the flow after the deactivating NOTIFY
                # (DESIGN.md §4). The re-registration is already due; not a second reason.
                self._wake()
                return
            self._flow_lost = True
            self.stats["flow_losses"] += 1
            self._emit("flow-lost", fe_ip=flow.remote[0], fe_port=flow.remote[1])
            self._wake()

    def _on_notify(self, request: Request, flow: Flow) -> int:
        """A NOTIFY on one of our flows; returns the status to answer (RFC 6665 §4.1.3).

        Every NOTIFY is kept in :attr:`notifications`. One of our ``reg`` subscription
        (Call-ID and To tag = our tag) gets ``200``: its ``application/reginfo+xml`` body is
        read (stale versions ignored, a gap in versions asks for the full state again), our
        own contacts ended with a :data:`REREGISTER_EVENTS` event make the registration due
        again, and ``Subscription-State: terminated`` ends the subscription (re-subscribed
        at once after ``deactivated``/``timeout``, after ``retry-after`` for
        ``probation``/``giveup``, not on this flow otherwise). The final NOTIFY of a
        subscription we ended gets ``200``; any other NOTIFY ``481``.
        """
        self.notifications.append(request)
        try:
            key = (request.call_id, request.to.tag or "")
        except SipParseError:
            return 400
        sub = self._sub
        if sub is None or sub.key != key or sub.flow is not flow:
            known = key in self._ended_subs
            self._emit(
                "notify",
                event=request.get("event"),
                fe_ip=flow.remote[0],
                matched=False,
                subscription_state=request.get("subscription-state"),
            )
            return 200 if known else 481
        package = (request.get("event") or "").split(";", 1)[0].strip().lower()
        if package != REG_EVENT:
            return 489
        dialog = sub.dialog
        if dialog is not None:
            try:
                if not dialog.receive_request(request):
                    return 500  # CSeq out of order (RFC 3261 §12.2.2)
            except SipParseError:
                return 400
            with contextlib.suppress(DialogError, SipParseError):
                dialog.update_remote_target(request)
        state = parse_subscription_state(request.get("subscription-state"))
        self.stats["notifies"] += 1
        info, error = self._reginfo_of(request)
        fresh = info is not None
        if info is not None:
            last = sub.version
            if last is not None and info.version <= last:
                fresh = False  # an old or repeated document (RFC 3680 §5.3 version)
            else:
                if info.state == "partial" and (last is None or info.version != last + 1):
                    self._sub_next = time.monotonic()  # lost one: refresh for a full state
                    self._wake()
                sub.version = info.version
        own: list[ContactInfo] = []
        if fresh and info is not None:
            own = own_contacts(info, self.aor, self.instance_id, sub.contact)
        self._emit(
            "notify",
            event=request.get("event"),
            fe_ip=flow.remote[0],
            matched=True,
            subscription_state=state.state,
            reason=state.reason,
            version=info.version if info is not None else None,
            document=info.state if info is not None else None,
            contacts=[{"uri": c.uri, "state": c.state, "event": c.event} for c in own],
            error=error,
        )
        for contact in own:
            if contact.state == "terminated" and contact.event in REREGISTER_EVENTS:
                self._deactivate(flow, contact)
                break
        if state.state == "terminated":
            sub.terminated = state.reason or "noresource"
            self._retire_sub(polite=True)
            self._resubscribe_after(flow, state)
        return 200

    @staticmethod
    def _reginfo_of(request: Request) -> tuple[RegInfo | None, str | None]:
        """The reginfo document of a NOTIFY, or ``(None, reason)`` when it has none or it
        does not parse."""
        if not request.body:
            return None, None
        ctype = (request.get("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != REGINFO_TYPE:
            return None, f"unexpected Content-Type {ctype or '(none)'}"
        try:
            return parse_reginfo(request.body), None
        except SipParseError as exc:
            return None, exc.reason

    def _deactivate(self, flow: Flow, contact: ContactInfo) -> None:
        """Our contact was ended with ``deactivated`` or ``probation`` (RFC 3680 §5.2): the
        registration is due again -- :meth:`run` does it, from DNS."""
        if flow is not self._flow or self._unregistering or self._deactivation is not None:
            return
        cause = contact.event
        if cause == "deactivated":
            delay = self.rng.uniform(0.0, 0.5 * self.retry_base)  # spread a re-homed batch
        else:
            delay = float(contact.retry_after if contact.retry_after is not None else 0)
            delay = max(delay, self.retry_base)
        self._deactivation = _Deactivation(flow.id, cause, delay)
        self.stats["deactivations"] += 1
        result = self._result
        self._emit(
            cause,
            fe_fqdn=result.fe_fqdn if result is not None else None,
            fe_ip=flow.remote[0],
            fe_port=flow.remote[1],
            contact=contact.uri,
            retry_after=contact.retry_after,
        )
        self._wake()

    def _resubscribe_after(self, flow: Flow, state: SubscriptionState) -> None:
        """A NOTIFY ended our subscription: when to subscribe again (RFC 6665 §4.1.3)."""
        if flow is not self._flow or self._unregistering:
            return
        reason = state.reason
        if reason in (None, "deactivated", "timeout"):
            delay = 0.0
        elif reason in ("probation", "giveup"):
            delay = float(state.retry_after if state.retry_after is not None else 30)
        else:  # rejected, noresource, invariant, unknown: not again on this flow
            self._sub_disabled = flow.id
            self._sub_next = None
            return
        self._sub_next = time.monotonic() + delay
        self._wake()

    # ----------------------------------------------------------------- connections
    async def _open_flow(self, ip: str, port: int, server_name: str) -> Flow:
        """A new TLS connection (never a reused one: each client has its own flow) to
        ``ip:port``, verifying the certificate against ``server_name``."""
        endpoint = self.endpoint
        config = endpoint.config
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(
            lambda: StreamConnection(endpoint, "tls", config.limits),
            ip,
            port,
            ssl=config.client_ssl,
            server_hostname=server_name,
            ssl_handshake_timeout=config.handshake_timeout,
        )
        _, proto = await asyncio.wait_for(connect, self.connect_timeout)
        flow = proto.flow
        assert flow is not None
        if flow.closed:
            raise ConnectionError("connection closed during set-up")
        self._handler.attach(flow, self)
        self._emit("connected", fe_ip=ip, fe_port=port, server_name=server_name)
        return flow

    async def _connect_any(
        self, ips: list[str], port: int, server_name: str, errors: list[str]
    ) -> Flow | None:
        """Try ``ips`` in random order (seed-excerpts §1); the first verified TLS flow wins."""
        order = list(ips)
        self.rng.shuffle(order)
        for ip in order:
            try:
                return await self._open_flow(ip, port, server_name)
            except ssl.SSLCertVerificationError as exc:
                reason = f"{ip}:{port}: certificate not valid for {server_name}: " + (
                    exc.verify_message or str(exc)
                )
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                reason = f"{ip}:{port}: {exc or type(exc).__name__}"
            errors.append(reason)
            self._emit("connect-failed", fe_ip=ip, fe_port=port, error=reason)
        return None

    async def _connect_pool(self) -> tuple[Flow, str]:
        """DNS SRV → trust check → A records → a verified TLS flow to one FE of the pool."""
        owner, records = await self.resolver.srv(self.domain, self.srv_names)
        ordered = srv_order(records, self.rng)
        if not ordered:
            raise DiscoveryError(f"{owner}: the SIP service is not offered (SRV target '.')")
        errors: list[str] = []
        untrusted: list[str] = []
        for record in ordered:
            target = record.target
            if not trusted(target, self.trusted_domains):
                untrusted.append(target)
                self._emit("untrusted", server=target, trusted_domains=list(self.trusted_domains))
                continue
            try:
                ips = await self.resolver.addresses(target)
            except DiscoveryError as exc:
                errors.append(str(exc))
                continue
            self._emit("dns", srv=owner, target=target, port=record.port, addresses=ips)
            flow = await self._connect_any(ips, record.port, target, errors)
            if flow is not None:
                return flow, target
        if untrusted and len(untrusted) == len(ordered):
            names = ", ".join(sorted(set(untrusted)))
            raise UntrustedServerError(
                f"refusing {names} (found at {owner}): not in the trusted domains "
                f"{', '.join(self.trusted_domains)}; add it with --trusted-domain if it is yours"
            )
        raise ConnectError(
            f"no server of {owner} accepted a TLS connection: " + "; ".join(errors or ["none"])
        )

    async def _connect_redirect(self, host: str, port: int, maddr: str | None) -> Flow:
        """Connect to a redirect target: its A records (else ``maddr``), name = ``host``."""
        try:
            ips = await self.resolver.addresses(host)
        except DiscoveryError:
            if not maddr:
                raise
            ips = [maddr]
        errors: list[str] = []
        flow = await self._connect_any(ips, port, host, errors)
        if flow is None:
            raise ConnectError(f"redirect target {host}:{port} unreachable: " + "; ".join(errors))
        return flow

    def _close_flow(self, flow: Flow | None) -> None:
        """Close a flow on purpose (no ``flow-lost``)."""
        if flow is None:
            return
        if not flow.closed:
            self._closing.add(flow.id)
            flow.close()
        if self._flow is flow:
            self._flow = None
        if self._auth is not None and self._auth.flow_id == flow.id:
            self._auth = None
        if self._sub is not None and self._sub.flow is flow:
            self._sub = None  # it died with the flow
            self._sub_next = None

    # ---------------------------------------------------------------- transactions
    def _next_cseq(self) -> int:
        self._cseq = self._cseq + 1 if self._cseq < 2**31 - 1 else 1
        return self._cseq

    def _authorization(self, flow: Flow, method: str, uri: str) -> tuple[str, bool] | None:
        """``(credentials, proxy)`` answering the challenge we hold for ``flow`` (the next
        ``nc`` of its nonce, RFC 7616 §3.4), or ``None`` when we hold none for it. REGISTER and
        SUBSCRIBE share it; the client's lock keeps their ``nc`` in sending order."""
        auth = self._auth
        if auth is None or auth.flow_id != flow.id:
            return None
        auth.nc += 1
        credentials: Credentials = answer_challenge(
            auth.challenge,
            username=self.username,
            password=self.password,
            method=method,
            uri=uri,
            cnonce=uuid.uuid4().hex[:16],
            nc=auth.nc,
        )
        return format_credentials(credentials), auth.proxy

    def _request_for(self, flow: Flow, expires: int) -> tuple[Request, str]:
        answer = self._authorization(flow, "REGISTER", f"sip:{self.domain}")
        authorization, proxy = answer if answer is not None else (None, False)
        host, port = flow.local
        contact = f"sip:{self.uri.user}@{_format_host(host)}:{port};transport=tls;ob"
        req = build_register(
            aor=self.uri,
            via=SipEndpoint.via_for(flow),
            local=flow.local,
            call_id=self.call_id,
            cseq=self._next_cseq(),
            from_tag=self.from_tag,
            instance_id=self.instance_id,
            expires=expires,
            authorization=authorization,
            proxy=proxy,
        )
        return req, contact

    async def _send(self, req: Request, flow: Flow) -> Response:
        if flow.closed:
            raise FlowLostError(f"connection to {flow.remote[0]}:{flow.remote[1]} closed")
        try:
            resp = await asyncio.wait_for(self.endpoint.request(req, flow), self.request_timeout)
        except TimeoutError:
            raise FlowLostError(
                f"no answer from {flow.remote[0]}:{flow.remote[1]} in {self.request_timeout}s"
            ) from None
        if flow.closed and resp.status in (408, 503):
            raise FlowLostError(f"connection to {flow.remote[0]}:{flow.remote[1]} lost")
        if resp.status == 408:
            raise FlowLostError(f"{flow.remote[0]}:{flow.remote[1]}: request timed out (408)")
        return resp

    async def _transact(
        self, flow: Flow, server_name: str, expires: int, *, follow: bool = True
    ) -> _Outcome:
        """Send REGISTER on ``flow`` until a final answer we do not act on: answers digest
        challenges, follows redirects (closing the old flow), waits out ``Retry-After``.
        Returns the final response (2xx); raises :class:`ClientError` otherwise. On an error
        the flow in use is closed."""
        redirects = 0
        retry_after_count = 0
        auth_rounds = 0
        answered_fresh = False  # our last request answered the challenge of the response before
        interval_retry = False
        auth = self._auth
        algorithm = (
            (auth.challenge.algorithm or "MD5") if auth and auth.flow_id == flow.id else None
        )
        try:
            while True:
                req, contact = self._request_for(flow, expires)
                sent_auth = "authorization" in req or "proxy-authorization" in req
                resp = await self._send(req, flow)
                status = resp.status
                if status in (401, 407):
                    challenge = pick_challenge(resp)
                    if challenge is None:
                        raise AuthenticationError(
                            f"{status} from {server_name} without a Digest challenge this client "
                            "supports (MD5 or SHA-256 with qop=auth)",
                            status,
                        )
                    auth_rounds += 1
                    if (answered_fresh and sent_auth and not challenge.stale) or auth_rounds > 5:
                        raise AuthenticationError(
                            f"{server_name} rejected the credentials of {self.username} "
                            f"({status} {resp.reason}): wrong user name or password?",
                            status,
                        )
                    self._auth = _Auth(challenge, flow.id, status == 407)
                    algorithm = challenge.algorithm or "MD5"
                    answered_fresh = True
                    self.stats["challenges"] += 1
                    self._emit("challenged", algorithm=algorithm, stale=challenge.stale)
                    continue
                answered_fresh = False
                if status in (301, 302) and follow:
                    try:
                        host, port, transport = parse_redirect(resp)
                        maddr = redirect_maddr(resp)
                    except ValueError as exc:
                        raise RegistrationError(
                            f"bad redirect from {server_name}: {exc}", status
                        ) from None
                    if transport != "tls":
                        raise RegistrationError(
                            f"{server_name} redirected to {host}:{port} over {transport}; this "
                            "client only registers over TLS",
                            status,
                        )
                    redirects += 1
                    if redirects > self.max_redirects:
                        raise TooManyRedirectsError(
                            f"more than {self.max_redirects} redirects (last: {server_name} → "
                            f"{host}:{port})",
                            status,
                        )
                    self.stats["redirects"] += 1
                    self._emit(
                        "redirected",
                        source=server_name,
                        target=host,
                        port=port,
                        count=redirects,
                    )
                    new_flow = await self._connect_redirect(host, port, maddr)
                    self._close_flow(flow)
                    flow, server_name = new_flow, host
                    continue
                if status == 503:
                    delay = parse_retry_after(resp)
                    if (
                        delay is None
                        or retry_after_count >= self.max_retry_after
                        or delay > self.retry_after_cap
                    ):
                        raise RegistrationError(
                            f"{server_name}: 503 {resp.reason}"
                            + (f" (Retry-After {delay}s)" if delay is not None else ""),
                            status,
                        )
                    retry_after_count += 1
                    wait = delay * self.rng.uniform(1.0, 1.2)
                    self._emit("retry-after", seconds=delay, attempt=retry_after_count)
                    await asyncio.sleep(wait)
                    continue
                if status == 423 and not interval_retry and expires:
                    minimum = resp.get("min-expires")
                    if minimum is not None and minimum.strip().isdigit():
                        interval_retry = True
                        expires = max(expires, int(minimum.strip()))
                        continue
                if 200 <= status < 300:
                    return _Outcome(flow, resp, redirects, server_name, algorithm, contact)
                raise RegistrationError(
                    f"{server_name} answered {status} {resp.reason}".rstrip(), status
                )
        except BaseException:
            self._close_flow(flow)
            raise

    def _result_from(self, outcome: _Outcome, started: float) -> RegistrationResult:
        resp = outcome.response
        granted = granted_expires(resp, self.instance_id, outcome.contact)
        if granted is None:
            self._close_flow(outcome.flow)
            raise RegistrationError(
                f"{outcome.server_name}: 200 OK does not list our Contact; not registered",
                resp.status,
            )
        if granted <= 0:
            self._close_flow(outcome.flow)
            raise RegistrationError(f"{outcome.server_name}: registration granted 0 s", 200)
        flow = outcome.flow
        names = peer_identities(flow.peer_cert)
        return RegistrationResult(
            aor=self.aor,
            fe_fqdn=names[0] if names else outcome.server_name,
            fe_ip=flow.remote[0],
            redirects=outcome.redirects,
            expires=granted,
            latency=time.monotonic() - started,
            headers=tuple((name, value) for _, name, value in resp.headers),
            fe_port=flow.remote[1],
            algorithm=outcome.algorithm,
            contact=outcome.contact,
            registered_at=time.time(),
        )

    def _adopt(self, outcome: _Outcome, result: RegistrationResult) -> None:
        if self._flow is not None and self._flow is not outcome.flow:
            self._close_flow(self._flow)
        if self._sub is not None and self._sub.flow is not outcome.flow:
            self._retire_sub(polite=False)
        self._flow = outcome.flow
        self._flow_lost = False
        self._deactivation = None
        self._refresh_now = False
        self._result = result
        self._registered_mono = time.monotonic()
        self._refresh_at = self._registered_mono + refresh_delay(result.expires, self.rng)

    # --------------------------------------------------------------------- the API
    async def register(self) -> RegistrationResult:
        """Register from scratch: DNS, trust check, a new TLS connection to a random FE,
        REGISTER (digest, redirects, Retry-After). A previous flow of this client is closed
        first.

        Returns:
            The :class:`RegistrationResult` (also kept in :attr:`result`).

        Raises:
            DiscoveryError, UntrustedServerError, ConnectError, FlowLostError,
            AuthenticationError, TooManyRedirectsError, RegistrationError (all
            :class:`ClientError`).
        """
        return await self._register(None)

    async def _register(self, cause: str | None) -> RegistrationResult:
        """:meth:`register` under the lock; ``cause`` says why it is made again (``None``:
        the first registration)."""
        async with self._lock:
            return await self._register_fresh(cause)

    async def _register_fresh(self, cause: str | None = None) -> RegistrationResult:
        started = time.monotonic()
        self._close_flow(self._flow)
        self._result = None
        try:
            flow, name = await self._connect_pool()
            outcome = await self._transact(flow, name, self.expires)
            result = self._result_from(outcome, started)
        except ClientError as exc:
            self.stats["failures"] += 1
            self._emit("failed", error=str(exc), kind=type(exc).__name__)
            raise
        self._adopt(outcome, result)
        self.stats["registrations"] += 1
        if cause is not None:
            self.reregistrations[cause] += 1
        self._emit("registered", **result.to_json(), reason=cause or "initial")
        if self.subscribe:
            self._sub_failures = 0
            await self._subscribe_locked()
        return result

    async def refresh(self) -> RegistrationResult:
        """Refresh the registration over its current flow (following a redirect if the pool
        re-homed us). Raises :class:`ClientError` (the flow is then closed) or
        :class:`RuntimeError` when not registered."""
        async with self._lock:
            flow = self._flow
            if flow is None or flow.closed or self._result is None:
                raise RuntimeError(f"{self.aor} is not registered")
            started = time.monotonic()
            server_name = self._result.fe_fqdn
            try:
                outcome = await self._transact(flow, server_name, self.expires)
                result = self._result_from(outcome, started)
            except ClientError as exc:
                self._result = None
                self.stats["failures"] += 1
                self._emit("failed", error=str(exc), kind=type(exc).__name__, refresh=True)
                raise
            self._adopt(outcome, result)
            moved = outcome.flow is not flow
            self.stats["refreshes"] += 1
            if moved:
                self.reregistrations["refresh"] += 1
            self._emit("refreshed", **result.to_json(), moved=moved)
            if moved and self.subscribe:  # the old subscription died with the old flow
                self._sub_failures = 0
                await self._subscribe_locked()
            return result

    async def unregister(self) -> bool:
        """Remove our binding (REGISTER with ``Expires: 0``, RFC 3261 §10.2.2) over the current
        flow, then close it. Returns ``True`` when the registrar confirmed, ``False`` when
        there was nothing to unregister or it failed (the registrar also drops outbound
        bindings when the flow closes, RFC 5626 §7)."""
        async with self._lock:
            flow = self._flow
            if flow is None or flow.closed:
                self._result = None
                self._retire_sub(polite=True)
                return False
            server_name = self._result.fe_fqdn if self._result else self.domain
            self._unregistering = True
            try:
                await self._unsubscribe_locked()
                await self._transact(flow, server_name, 0, follow=False)
            except ClientError as exc:
                self._emit("failed", error=str(exc), kind=type(exc).__name__, unregister=True)
                return False
            finally:
                self._unregistering = False
                self._result = None
                self._close_flow(flow)
            self._emit("unregistered", fe_fqdn=server_name)
            return True

    async def close(self) -> None:
        """Close our flow (without unregistering) and the endpoint if we made it."""
        self._retire_sub(polite=False)
        self._close_flow(self._flow)
        self._result = None
        if self._wakeup is not None:
            self._wakeup.set()
        if self._own_endpoint:
            await self.endpoint.close()

    async def __aenter__(self) -> PoolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _keepalive_interval(self) -> float:
        result = self._result
        timer = result.header("Flow-Timer") if result is not None else None
        base = KEEPALIVE_INTERVAL
        if timer is not None and timer.strip().isdigit() and int(timer.strip()) > 0:
            base = float(timer.strip())
        return base * self.rng.uniform(0.8, 1.0)

    async def run(self, stop_event: asyncio.Event) -> None:
        """Keep the AOR registered until ``stop_event`` is set: register (unless already
        registered), refresh at 70-80 % of the granted expiry, send CRLF keep-alives
        (RFC 5626 §4.4.1; interval from ``Flow-Timer``, else ~120 s), keep the ``reg`` event
        subscription refreshed (``subscribe``), and register again from DNS -- one
        registration at a time -- when:

        * a NOTIFY deactivates our contact (after 0 to 0.5 ``retry_base`` s of jitter; the
          flow close the FE sends next is expected and not reported as ``flow-lost``);
        * the flow drops or a registration fails (after :func:`backoff_delay`);
        * a refresh fails (at once).

        It does not unregister when stopped: call :meth:`unregister` (or :meth:`close`).

        Raises:
            ClientError: a non-retryable failure (untrusted server, rejected credentials,
                ``403``/``404``), or ``max_failures`` consecutive failures.
        """
        wakeup = self._wakeup = asyncio.Event()

        async def watch_stop() -> None:
            await stop_event.wait()
            wakeup.set()

        watcher = asyncio.create_task(watch_stop())
        failures = 0
        cause: str | None = None  # why the next registration is made again
        try:
            while not stop_event.is_set():
                if not self.registered:
                    try:
                        await self._register(cause)
                        failures = 0
                        cause = None
                    except ClientError as exc:
                        failures += 1
                        if not exc.retryable or (
                            self.max_failures is not None and failures >= self.max_failures
                        ):
                            raise
                        delay = backoff_delay(
                            failures - 1, self.rng, self.retry_base, self.retry_cap
                        )
                        await self._sleep(delay, wakeup, stop_event)
                        continue
                reason = await self._hold(wakeup, stop_event)
                if reason == "stop":
                    break
                if reason == "deactivated":
                    deactivation = self._deactivation
                    assert deactivation is not None
                    cause = deactivation.cause
                    await self._sleep(deactivation.delay, wakeup, stop_event)
                    continue
                if reason == "lost":
                    cause = "flow-lost"
                    delay = backoff_delay(0, self.rng, self.retry_base, self.retry_cap)
                    await self._sleep(delay, wakeup, stop_event)
                    continue
                if reason == "subscribe":
                    async with self._lock:
                        await self._subscribe_locked()
                    continue
                try:
                    await self.refresh()
                except ClientError as exc:
                    if not exc.retryable:
                        raise
                    cause = "refresh"
                except RuntimeError:
                    cause = "flow-lost"  # the flow went away meanwhile: register again
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._wakeup = None

    @staticmethod
    async def _sleep(seconds: float, wakeup: asyncio.Event, stop_event: asyncio.Event) -> None:
        """Sleep ``seconds`` unless stopped first."""
        if stop_event.is_set():
            return
        wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), seconds)

    async def _hold(self, wakeup: asyncio.Event, stop_event: asyncio.Event) -> str:
        """Wait while registered; returns ``"stop"``, ``"deactivated"``, ``"lost"``,
        ``"refresh"`` or ``"subscribe"`` (a SUBSCRIBE is due). Sends keep-alives meanwhile."""
        next_ping = time.monotonic() + self._keepalive_interval()
        while True:
            # No await between these checks and the wait below: callbacks (NOTIFY, flow
            # closed) run only while we wait, and they set ``wakeup`` after changing state.
            wakeup.clear()
            if stop_event.is_set():
                return "stop"
            if self._deactivation is not None:
                return "deactivated"
            flow = self._flow
            if self._flow_lost or flow is None or flow.closed or self._result is None:
                return "lost"
            now = time.monotonic()
            if self._refresh_now or now >= self._refresh_at:
                return "refresh"
            sub_at = self._sub_next if self.subscribe else None
            if sub_at is not None and now >= sub_at:
                return "subscribe"
            if now >= next_ping:
                flow.send(b"\r\n\r\n")  # RFC 5626 §4.4.1 CRLF ping; the FE answers CRLF
                self._emit("keepalive", fe_ip=flow.remote[0])
                next_ping = now + self._keepalive_interval()
                continue
            deadline = min(self._refresh_at, next_ping, sub_at if sub_at is not None else next_ping)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), deadline - now)

    # ------------------------------------------------------------------ reg event
    def _retire_sub(self, *, polite: bool) -> None:
        """Forget our subscription. ``polite``: we ended it (or the FE did), so a late NOTIFY
        of it is still answered ``200``; otherwise such a NOTIFY gets ``481``, which ends it
        at the FE (RFC 6665 §4.1.3)."""
        sub = self._sub
        if sub is None:
            return
        if polite:
            self._ended_subs.append(sub.key)
        self._sub = None
        self._sub_next = None

    async def _subscribe_locked(self) -> None:
        """Subscribe to ``reg`` on the registration's flow, or refresh the subscription
        (RFC 6665 §4.1.2). Call with the lock held. Never raises :class:`ClientError`:
        failures are reported (``subscribe-failed``) and retried later, or not at all on this
        flow when the FE cannot serve the package (``489``, ``403`` ...)."""
        self._sub_next = None
        flow, result = self._flow, self._result
        if not self.subscribe or flow is None or flow.closed or result is None:
            return
        if self._unregistering or self._sub_disabled == flow.id:
            return
        for _ in range(2):  # a refresh answered 481 is followed by a new subscription
            sub = self._sub
            if sub is not None and (
                sub.flow is not flow or sub.terminated is not None or sub.dialog is None
            ):
                self._retire_sub(polite=False)
                sub = None
            refresh = sub is not None
            if sub is None:
                sub = self._sub = _RegSub(
                    flow,
                    call_id=f"{uuid.uuid4().hex}@registrar-client",
                    from_tag=uuid.uuid4().hex[:12],
                    contact=result.contact,
                    fe_fqdn=result.fe_fqdn,
                )
            try:
                req, resp = await self._subscribe_transact(sub, self.subscribe_expires)
            except ClientError as exc:
                self._subscribe_failed(sub, str(exc), getattr(exc, "status", 0), exc.retryable)
                return
            if self._sub is not sub:
                return  # a NOTIFY ended it meanwhile and scheduled what comes next
            status = resp.status
            if 200 <= status < 300:
                self._subscribed(sub, req, resp, refresh)
                return
            if status == 481 and refresh:
                self._retire_sub(polite=False)
                continue
            break
        reason = f"{sub.fe_fqdn} answered SUBSCRIBE {status} {resp.reason}".rstrip()
        if status in (301, 302):
            # The FE says the AOR lives elsewhere now: refresh the registration at once (it
            # follows the redirect); the new flow gets a new subscription.
            self._refresh_now = True
            self._wake()
        retryable = status not in SUBSCRIBE_PERMANENT_FAILURES
        self._subscribe_failed(sub, reason, status, retryable, parse_retry_after(resp))

    def _subscribed(self, sub: _RegSub, req: Request, resp: Response, refresh: bool) -> None:
        """A ``2xx`` to our SUBSCRIBE: the dialog, the granted duration, the next refresh."""
        try:
            if sub.dialog is None:
                sub.dialog = Dialog.from_uac(req, resp)
            else:
                sub.dialog.receive_response(req, resp)
        except (DialogError, SipParseError) as exc:
            self._subscribe_failed(sub, f"bad SUBSCRIBE answer: {exc}", resp.status, True)
            return
        try:
            granted = resp.expires
        except SipParseError:
            granted = None
        if granted is None:
            granted = self.subscribe_expires
        sub.expires = granted
        self._sub_failures = 0
        self.stats["subscriptions"] += 1
        self._sub_next = time.monotonic() + refresh_delay(granted, self.rng)
        self._emit(
            "subscribed",
            fe_fqdn=sub.fe_fqdn,
            fe_ip=sub.flow.remote[0],
            expires=granted,
            refresh=refresh,
        )

    def _subscribe_failed(
        self,
        sub: _RegSub,
        error: str,
        status: int,
        retryable: bool,
        retry_after: int | None = None,
    ) -> None:
        if self._sub is sub:
            self._retire_sub(polite=False)
        self.stats["subscribe_failures"] += 1
        delay: float | None = None
        if retryable:
            self._sub_failures += 1
            delay = backoff_delay(self._sub_failures - 1, self.rng, 2.0, 300.0)
            if retry_after is not None:
                delay = max(delay, float(retry_after))
            self._sub_next = time.monotonic() + delay
        else:
            self._sub_disabled = sub.flow.id
        self._emit(
            "subscribe-failed",
            fe_fqdn=sub.fe_fqdn,
            error=error,
            status=status,
            retry_in=round(delay, 3) if delay is not None else None,
        )

    def _subscribe_request(self, sub: _RegSub, expires: int) -> Request:
        """The next SUBSCRIBE of ``sub``: initial until the dialog exists, then in-dialog
        (RFC 3261 §12.2.1.1), with credentials for our challenge on the flow."""
        flow = sub.flow
        dialog = sub.dialog
        if dialog is None:
            sub.cseq += 1
            answer = self._authorization(flow, "SUBSCRIBE", self.aor)
            authorization, proxy = answer if answer is not None else (None, False)
            return build_subscribe(
                aor=self.uri,
                via=SipEndpoint.via_for(flow),
                contact=sub.contact,
                call_id=sub.call_id,
                cseq=sub.cseq,
                from_tag=sub.from_tag,
                expires=expires,
                authorization=authorization,
                proxy=proxy,
            )
        req = dialog.create_request("SUBSCRIBE", contact=f"<{sub.contact}>")
        req.remove("Content-Length")
        req.add("Via", SipEndpoint.via_for(flow), first=True)
        req.add("Event", REG_EVENT)
        req.add("Accept", REGINFO_TYPE)
        req.add("Expires", str(expires))
        answer = self._authorization(flow, "SUBSCRIBE", req.uri)
        if answer is not None:
            req.add("Proxy-Authorization" if answer[1] else "Authorization", answer[0])
        req.add("User-Agent", USER_AGENT)
        req.set_body(b"")
        return req

    async def _subscribe_transact(self, sub: _RegSub, expires: int) -> tuple[Request, Response]:
        """Send SUBSCRIBE until a final answer we do not act on: digest challenges are
        answered as for REGISTER (same nonce on the same flow), ``423`` is retried once with
        ``Min-Expires``. Returns the last request and its answer.

        Raises:
            FlowLostError: no answer, or the flow closed.
            AuthenticationError: credentials rejected, or no usable challenge.
        """
        answered_fresh = False
        rounds = 0
        interval_retry = False
        while True:
            req = self._subscribe_request(sub, expires)
            sent_auth = "authorization" in req or "proxy-authorization" in req
            resp = await self._send(req, sub.flow)
            status = resp.status
            if status in (401, 407):
                challenge = pick_challenge(resp)
                rounds += 1
                if (
                    challenge is None
                    or (answered_fresh and sent_auth and not challenge.stale)
                    or rounds > 5
                ):
                    raise AuthenticationError(
                        f"{sub.fe_fqdn} rejected the SUBSCRIBE credentials of {self.username} "
                        f"({status} {resp.reason})",
                        status,
                    )
                self._auth = _Auth(challenge, sub.flow.id, status == 407)
                answered_fresh = True
                self.stats["challenges"] += 1
                self._emit(
                    "challenged",
                    algorithm=challenge.algorithm or "MD5",
                    stale=challenge.stale,
                    method="SUBSCRIBE",
                )
                continue
            answered_fresh = False
            if status == 423 and expires and not interval_retry:
                minimum = (resp.get("min-expires") or "").strip()
                if minimum.isdigit():
                    interval_retry = True
                    expires = max(expires, int(minimum))
                    continue
            return req, resp

    async def _unsubscribe_locked(self) -> None:
        """End our subscription (``Expires: 0``, RFC 6665 §4.1.2.3) before unregistering;
        best effort, at most 5 s. Call with the lock held."""
        sub = self._sub
        self._retire_sub(polite=True)
        if sub is None or sub.dialog is None or sub.terminated is not None or sub.flow.closed:
            return
        try:
            await asyncio.wait_for(self._subscribe_transact(sub, 0), min(5.0, self.request_timeout))
        except (ClientError, TimeoutError):
            return
        self._emit("unsubscribed", fe_fqdn=sub.fe_fqdn)


# =============================================================================== CLI


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pool discovery and trust")
    g.add_argument(
        "--dns",
        metavar="HOST:PORT",
        help="the DNS server to ask (the pool's embedded DNS server, e.g. 127.0.1.53:5353)",
    )
    g.add_argument(
        "--ca", type=Path, metavar="FILE", help="PEM CA certificate that FE certificates chain to"
    )
    g.add_argument(
        "--topology",
        type=Path,
        metavar="FILE",
        help="take --dns and --ca defaults from this topology file",
    )
    g.add_argument(
        "--trusted-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="also trust servers in DOMAIN and its sub-domains (repeatable; the user's own "
        "SIP domain is always trusted)",
    )
    p.add_argument(
        "--expires",
        type=int,
        default=DEFAULT_EXPIRES,
        metavar="SECONDS",
        help=f"registration expiry to ask for (default {DEFAULT_EXPIRES})",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--subscribe",
        action="store_true",
        help="subscribe to the reg event package of the AOR after registering (RFC 3680) and "
        "register again from DNS when the FE deactivates the registration (re-homing)",
    )


def _add_password(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--password", metavar="P", help="the digest password (visible in ps)")
    g.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first stdin line"
    )


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``client`` command on an argparse subparsers object.

    Subcommands::

        client register AOR (--password P | --password-stdin) (--dns HOST:PORT --ca FILE |
                        --topology FILE) [--trusted-domain D ...] [--expires S] [--subscribe]
                        [--once] [--json]
        client load --users N [--first 1] [--prefix user] [--domain contoso.com] [--digits 4]
                    --password P ... [--concurrency 200] [--hold SECONDS] [--subscribe]
                    [--report-interval SECONDS] [--json]
        client resolve DOMAIN (--dns HOST:PORT | --topology FILE) [--trusted-domain D] [--json]

    The handler is stored as ``args.func`` (``func(args) -> int``): 0 success, 1 a
    registration failed, 2 bad usage. ``client`` alone prints help and returns 2.

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()`` of the main CLI.
    """
    sub = add_group(
        subparsers,
        "client",
        help="register through the pool like a SIP client (DNS SRV, TLS, digest, redirects)",
        description=(
            "A SIP client that finds the pool in DNS, checks it against the trusted domains, "
            "connects over TLS to a random FE and registers, following redirects. See "
            "docs/client.md."
        ),
    )

    reg = sub.add_parser(
        "register",
        help="register one AOR and keep it registered",
        description=(
            "Register one AOR through the pool. With --once: register, print the result, exit "
            "0 (registered) or 1. Otherwise keep it registered (refreshes, keep-alives, "
            "re-registration when the connection drops) until Ctrl-C or SIGTERM, then "
            "unregister."
        ),
    )
    reg.add_argument("aor", metavar="AOR", help="sip:user@domain")
    _add_password(reg)
    reg.add_argument("--username", help="digest user name (default: the AOR's user part)")
    _add_common(reg)
    reg.add_argument("--once", action="store_true", help="register once, print, exit")
    reg.set_defaults(func=_cmd_register)

    load = sub.add_parser(
        "load",
        help="register many users concurrently and report",
        description=(
            "Register PREFIX0001@DOMAIN ... concurrently, each over its own TLS connection, "
            "print progress every 10 %% and a report: successes, failures with reasons, "
            "redirects, registrations per FE, latency percentiles; with --hold, "
            "re-registrations by reason and where the users are registered at the end. Exit 0 "
            "when all registered."
        ),
    )
    load.add_argument("--users", type=int, required=True, metavar="N", help="how many users")
    load.add_argument("--first", type=int, default=1, metavar="K", help="first number (default 1)")
    load.add_argument("--prefix", default="user", help="user name prefix (default user)")
    load.add_argument("--domain", default="contoso.com", help="SIP domain (default contoso.com)")
    load.add_argument(
        "--digits", type=int, default=4, help="zero-padded width of the number (default 4)"
    )
    _add_password(load)
    _add_common(load)
    load.add_argument(
        "--concurrency",
        type=int,
        default=200,
        metavar="N",
        help="registrations in flight at once (default 200)",
    )
    load.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep them registered (refreshing) this long, then unregister; 0 = unregister "
        "right away (default); -1 = until Ctrl-C",
    )
    load.add_argument(
        "--report-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print a one-line live summary to stderr this often (registered now, per FE, "
        "re-registrations so far); 0 = never (default)",
    )
    load.set_defaults(func=_cmd_load)

    res = sub.add_parser(
        "resolve",
        help="show what the client finds in DNS for a SIP domain",
        description="Show the SRV records, A records and trust verdict for a SIP domain.",
    )
    res.add_argument("domain", metavar="DOMAIN")
    res.add_argument("--dns", metavar="HOST:PORT", help="the DNS server to ask")
    res.add_argument("--topology", type=Path, metavar="FILE", help="take --dns from this file")
    res.add_argument("--trusted-domain", action="append", default=[], metavar="DOMAIN")
    res.add_argument("--json", action="store_true", help="print JSON")
    res.set_defaults(func=_cmd_resolve)


class _UsageError(Exception):
    pass


def _defaults(args: argparse.Namespace, *, need_ca: bool = True) -> tuple[str, Path | None]:
    """``(dns, ca)`` from the options, falling back to ``--topology``."""
    dns = args.dns
    ca = getattr(args, "ca", None)
    if args.topology is not None and (dns is None or (need_ca and ca is None)):
        from .topology import load_topology  # lazy: only this option needs it

        try:
            topo = load_topology(args.topology)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"--topology {args.topology}: {exc}") from None
        if dns is None:
            host, port = topo.dns_listen
            dns = f"{host}:{port}"
        if need_ca and ca is None:
            ca = Path(topo.paths.certs) / "ca.crt"
    if dns is None:
        raise _UsageError("give the DNS server with --dns HOST:PORT (or --topology FILE)")
    try:
        parse_dns_address(dns)
    except ValueError as exc:
        raise _UsageError(f"--dns: {exc}") from None
    if need_ca:
        if ca is None:
            raise _UsageError("give the CA certificate with --ca FILE (or --topology FILE)")
        if not Path(ca).is_file():
            raise _UsageError(f"--ca {ca}: no such file")
    return dns, ca


def _password(args: argparse.Namespace) -> str:
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else args.password
    if not password:
        raise _UsageError("the password is empty")
    return str(password)


def _run(coro: Any) -> int:
    """Run a coroutine on uvloop when installed, else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _cmd_register(args: argparse.Namespace) -> int:
    try:
        dns, ca = _defaults(args)
        password = _password(args)
        _parse_aor(args.aor)
        if args.expires < 1:
            raise _UsageError("--expires must be at least 1 second")
    except (_UsageError, ValueError) as exc:
        print(f"registrar client register: {exc}", file=sys.stderr)
        return 2
    return _run(_register_main(args, dns, ca, password))


def _print_event(name: str, info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": name, **info}), flush=True)
        return
    if name in ("registered", "refreshed"):
        mode = f", mode {info['mode']}" if info.get("mode") else ""
        why = info.get("reason")
        after = f", after {why}" if why and why != "initial" else ""
        print(
            f"{name}: {info['aor']} on {info['fe_fqdn']} ({info['fe_ip']}:{info['fe_port']}), "
            f"expires {info['expires']}s, {info['redirects']} redirect(s){mode}{after}",
            flush=True,
        )
    elif name == "subscribed":
        verb = "refreshed the subscription" if info.get("refresh") else "subscribed"
        print(
            f"{verb} to reg events of {info['aor']} on {info['fe_fqdn']}, "
            f"expires {info['expires']}s",
            flush=True,
        )
    elif name in ("deactivated", "probation"):
        print(
            f"{info['fe_fqdn']} ended the registration of {info['aor']} ({name}, reg event); "
            "registering again from DNS",
            flush=True,
        )
    elif name == "subscribe-failed":
        retry = info.get("retry_in")
        later = f"; again in {retry:.0f}s" if retry is not None else "; not on this connection"
        print(f"subscribe-failed: {info['error']}{later}", file=sys.stderr, flush=True)
    elif name == "redirected":
        print(f"redirected by {info['source']} to {info['target']}:{info['port']}", flush=True)
    elif name == "flow-lost":
        print(
            f"connection to {info['fe_ip']}:{info['fe_port']} lost; registering again", flush=True
        )
    elif name in ("failed", "connect-failed", "untrusted"):
        detail = info.get("error") or info.get("server")
        print(f"{name}: {detail}", file=sys.stderr, flush=True)
    elif name == "unregistered":
        print(f"unregistered {info['aor']}", flush=True)


async def _register_main(args: argparse.Namespace, dns: str, ca: Path | None, password: str) -> int:
    once = args.once

    def on_event(name: str, info: dict[str, Any]) -> None:
        if once:
            if name in ("connect-failed", "untrusted") and not args.json:
                _print_event(name, info, False)
            return
        _print_event(name, info, args.json)

    try:
        client = PoolClient(
            args.aor,
            password,
            dns,
            ca,
            args.trusted_domain,
            args.expires,
            username=args.username,
            on_event=on_event,
            subscribe=args.subscribe,
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"registrar client register: {exc}", file=sys.stderr)
        return 2
    try:
        if once:
            try:
                result = await client.register()
            except ClientError as exc:
                if args.json:
                    print(json.dumps({"aor": client.aor, "error": str(exc)}))
                print(f"registrar client register: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(result.to_json(), indent=2) if args.json else result.describe())
            await client.unregister()
            return 0
        stop = asyncio.Event()
        _install_stop(stop)
        try:
            await client.run(stop)
        except ClientError as exc:
            print(f"registrar client register: {exc}", file=sys.stderr)
            return 1
        await asyncio.wait_for(client.unregister(), client.request_timeout + 5)
        return 0
    finally:
        await client.close()


def _cmd_load(args: argparse.Namespace) -> int:
    try:
        dns, ca = _defaults(args)
        password = _password(args)
        if args.users < 1:
            raise _UsageError("--users must be at least 1")
        if args.concurrency < 1:
            raise _UsageError("--concurrency must be at least 1")
        if args.expires < 1:
            raise _UsageError("--expires must be at least 1 second")
        if args.first < 0 or args.digits < 1:
            raise _UsageError("--first must be >= 0 and --digits >= 1")
        if args.hold < 0 and args.hold != -1:
            raise _UsageError("--hold must be >= 0, or -1 for until Ctrl-C")
        if args.report_interval < 0:
            raise _UsageError("--report-interval must be >= 0 seconds")
        _parse_aor(f"sip:{args.prefix}{args.first}@{args.domain}")
    except (_UsageError, ValueError) as exc:
        print(f"registrar client load: {exc}", file=sys.stderr)
        return 2
    return _run(_load_main(args, dns, ca, password))


def _pool_state(clients: Iterable[PoolClient]) -> dict[str, Any]:
    """Where the load clients are registered right now: ``registered`` (count), ``per_fe``
    (FE FQDN → count) and ``backup_mode`` (count), plus ``subscribed`` (count)."""
    per_fe: Counter[str] = Counter()
    backup = 0
    subscribed = 0
    for client in clients:
        result = client.result
        if client.registered and result is not None:
            per_fe[result.fe_fqdn] += 1
            backup += result.backup
            subscribed += client.subscribed
    return {
        "registered": sum(per_fe.values()),
        "per_fe": dict(sorted(per_fe.items())),
        "backup_mode": backup,
        "subscribed": subscribed,
    }


def _reregistrations(clients: Iterable[PoolClient]) -> dict[str, int]:
    """Re-registrations of all clients by reason; :data:`REREGISTER_REASONS` always listed."""
    total: Counter[str] = Counter(dict.fromkeys(REREGISTER_REASONS, 0))
    for client in clients:
        total.update(client.reregistrations)
    return dict(total)


def _live_line(
    state: dict[str, Any], again: dict[str, int], users: int, elapsed: float, subscribe: bool
) -> str:
    """The ``--report-interval`` line, e.g. ``live: 12.0s, registered 24/24, backup mode 0,
    subscribed 24; per FE: fe1.contoso.com 8, fe2.contoso.com 16; re-registrations:
    deactivated 5, flow-lost 0, refresh 0``."""
    per_fe = ", ".join(f"{fe} {n}" for fe, n in state["per_fe"].items()) or "-"
    reasons = ", ".join(f"{reason} {n}" for reason, n in again.items())
    subscribed = f", subscribed {state['subscribed']}" if subscribe else ""
    return (
        f"live: {elapsed:.1f}s, registered {state['registered']}/{users}, "
        f"backup mode {state['backup_mode']}{subscribed}; per FE: {per_fe}; "
        f"re-registrations: {reasons}"
    )


def _load_report(
    args: argparse.Namespace,
    results: list[RegistrationResult],
    failures: Counter[str],
    elapsed: float,
    events: Counter[str],
    unregistered: int,
    final: dict[str, Any] | None = None,
    again: dict[str, int] | None = None,
) -> dict[str, Any]:
    latencies = [r.latency * 1000 for r in results]
    redirect_hist = Counter(str(r.redirects) for r in results)
    by_reason = again if again is not None else dict.fromkeys(REREGISTER_REASONS, 0)
    return {
        "users": args.users,
        "succeeded": len(results),
        "failed": sum(failures.values()),
        "failures": dict(failures.most_common()),
        "redirects": sum(r.redirects for r in results),
        "redirect_histogram": dict(sorted(redirect_hist.items(), key=lambda kv: int(kv[0]))),
        "per_fe": dict(sorted(Counter(r.fe_fqdn for r in results).items())),
        "backup_mode": sum(1 for r in results if r.backup),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 3),
            "p90": round(percentile(latencies, 90), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(max(latencies, default=0.0), 3),
        },
        "elapsed": round(elapsed, 3),
        "rate": round(len(results) / elapsed, 1) if elapsed > 0 else 0.0,
        "subscribe": bool(getattr(args, "subscribe", False)),
        "hold": {
            "seconds": args.hold,
            "refreshes": events["refreshed"],
            "flow_losses": events["flow-lost"],
            "deactivations": events["deactivated"] + events["probation"],
            "reregistrations": sum(by_reason.values()),
            "reregistrations_by_reason": by_reason,
        },
        "final": final
        if final is not None
        else {"registered": 0, "per_fe": {}, "backup_mode": 0, "subscribed": 0},
        "unregistered": unregistered,
    }


def _print_load_report(report: dict[str, Any]) -> None:
    print(
        f"registered {report['succeeded']}/{report['users']} users in {report['elapsed']:.2f}s "
        f"({report['rate']}/s); {report['failed']} failed"
    )
    for reason, count in report["failures"].items():
        print(f"  failure x{count}: {reason}")
    hist = ", ".join(f"{k}: {v}" for k, v in report["redirect_histogram"].items())
    print(f"redirects followed: {report['redirects']} (per registration: {hist or '-'})")
    print("registrations per FE:")
    for fe, count in report["per_fe"].items():
        print(f"  {fe}: {count}")
    if report["backup_mode"]:
        print(f"backup mode: {report['backup_mode']}")
    lat = report["latency_ms"]
    print(
        f"latency ms: p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  "
        f"max {lat['max']:.1f}"
    )
    hold = report["hold"]
    if hold["seconds"]:
        by_reason = ", ".join(f"{k} {v}" for k, v in hold["reregistrations_by_reason"].items())
        print(
            f"hold: {hold['refreshes']} refreshes, {hold['flow_losses']} connections lost, "
            f"{hold['deactivations']} deactivated by reg event, "
            f"{hold['reregistrations']} re-registrations ({by_reason})"
        )
        final = report["final"]
        subscribed = f", {final['subscribed']} subscribed" if report["subscribe"] else ""
        print(
            f"registered at the end of the hold: {final['registered']}/{report['users']}, "
            f"{final['backup_mode']} in backup mode{subscribed}"
        )
        for fe, count in final["per_fe"].items():
            print(f"  {fe}: {count}")
    print(f"unregistered: {report['unregistered']}")


def _failure_reason(exc: ClientError) -> str:
    """A failure reason without per-user details (ports, user names), for grouping."""
    if isinstance(exc, RegistrationError) and exc.status:
        return f"{type(exc).__name__}: {exc.status}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


async def _load_main(args: argparse.Namespace, dns: str, ca: Path | None, password: str) -> int:
    stop = asyncio.Event()
    _install_stop(stop)
    try:
        endpoint = client_endpoint(ca)
    except (OSError, ssl.SSLError) as exc:
        print(f"registrar client load: --ca {ca}: {exc}", file=sys.stderr)
        return 2
    resolver = PoolResolver(dns, cache=True)
    events: Counter[str] = Counter()

    def on_event(name: str, info: dict[str, Any]) -> None:
        events[name] += 1

    clients = [
        PoolClient(
            f"sip:{args.prefix}{n:0{args.digits}d}@{args.domain}",
            password,
            resolver=resolver,
            trusted_domains=args.trusted_domain,
            expires=args.expires,
            endpoint=endpoint,
            on_event=on_event,
            subscribe=args.subscribe,
        )
        for n in range(args.first, args.first + args.users)
    ]
    results: list[RegistrationResult] = []
    failures: Counter[str] = Counter()
    registered: list[PoolClient] = []
    gate = asyncio.Semaphore(args.concurrency)
    total = len(clients)
    done = 0
    next_mark = 10
    started = time.monotonic()

    async def one(client: PoolClient) -> None:
        nonlocal done, next_mark
        async with gate:
            if stop.is_set():
                failures["stopped before registering"] += 1
            else:
                try:
                    results.append(await client.register())
                    registered.append(client)
                except ClientError as exc:
                    failures[_failure_reason(exc)] += 1
        done += 1
        percent = done * 100 // total
        if percent >= next_mark:  # one line per 10 % step crossed
            print(
                f"progress: {done}/{total} ({percent}%), {len(results)} registered, "
                f"{sum(failures.values())} failed, {time.monotonic() - started:.1f}s",
                file=sys.stderr,
                flush=True,
            )
            next_mark = (percent // 10 + 1) * 10

    async def live() -> None:
        while True:
            await asyncio.sleep(args.report_interval)
            line = _live_line(
                _pool_state(clients),
                _reregistrations(clients),
                total,
                time.monotonic() - started,
                args.subscribe,
            )
            print(line, file=sys.stderr, flush=True)

    reporter = asyncio.create_task(live()) if args.report_interval > 0 else None
    try:
        await asyncio.gather(*(one(c) for c in clients))
        elapsed = time.monotonic() - started
        if args.hold != 0 and registered and not stop.is_set():
            label = "until Ctrl-C" if args.hold < 0 else f"for {args.hold:g}s"
            print(f"holding {len(registered)} registrations {label}", file=sys.stderr, flush=True)
            runs = [asyncio.create_task(c.run(stop)) for c in registered]
            if args.hold > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.hold)
            else:
                await stop.wait()
            stop.set()
            outcomes = await asyncio.gather(*runs, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, ClientError):
                    failures["during hold: " + _failure_reason(outcome)] += 1
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            reporter = None
        final = _pool_state(clients)
        again = _reregistrations(clients)
        unregistered = 0

        async def unreg(client: PoolClient) -> None:
            nonlocal unregistered
            async with gate:
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(client.unregister(), client.request_timeout + 5):
                        unregistered += 1

        await asyncio.gather(*(unreg(c) for c in registered))
        report = _load_report(args, results, failures, elapsed, events, unregistered, final, again)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_load_report(report)
        return 0 if len(results) == total and not failures else 1
    finally:
        if reporter is not None:
            reporter.cancel()
        for client in clients:
            await client.close()
        await endpoint.close()


def _cmd_resolve(args: argparse.Namespace) -> int:
    try:
        dns, _ = _defaults(args, need_ca=False)
    except _UsageError as exc:
        print(f"registrar client resolve: {exc}", file=sys.stderr)
        return 2
    return _run(_resolve_main(args, dns))


async def _resolve_main(args: argparse.Namespace, dns: str) -> int:
    domain = _normal_name(args.domain)
    resolver = PoolResolver(dns)
    domains = [domain, *map(_normal_name, args.trusted_domain)]
    try:
        owner, records = await resolver.srv(domain)
    except DiscoveryError as exc:
        print(f"registrar client resolve: {exc}", file=sys.stderr)
        return 1
    rows = []
    for record in sorted(records):
        row: dict[str, Any] = {
            "srv": owner,
            "priority": record.priority,
            "weight": record.weight,
            "port": record.port,
            "target": record.target,
            "trusted": trusted(record.target, domains),
        }
        try:
            row["addresses"] = await resolver.addresses(record.target)
        except DiscoveryError as exc:
            row["addresses"] = []
            row["error"] = str(exc)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        verdict = "trusted" if row["trusted"] else "NOT trusted (the client refuses it)"
        print(
            f"{row['srv']} → {row['target']}:{row['port']} (priority {row['priority']}, "
            f"weight {row['weight']}), {verdict}"
        )
        addresses = ", ".join(row["addresses"]) or row.get("error", "none")
        print(f"  A: {addresses}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the ``client`` command (``python -m registrar.client``)."""
    parser = argparse.ArgumentParser(prog="registrar", description="the pool client")
    add_cli(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m registrar.client [client] COMMAND ...``; returns the exit
    code (the leading ``client`` may be left out)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] != "client":
        args_list.insert(0, "client")
    args = build_parser().parse_args(args_list)
    return int(args.func(args))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    sys.exit(main())
