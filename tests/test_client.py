"""The pool client (registrar/client.py): pure helpers, then real FE processes on loopback.

Live tests run two FEs, ``fe1.contoso.com`` on 127.0.1.1 and ``fe2.contoso.com`` on 127.0.1.2,
on the same TLS port, a tiny DNS server (dnslib) on 127.0.1.53 serving the pool's SRV and A
records, and, for redirects, a fake registrar built on the project's own SipEndpoint.

Re-homing tests (reg event ``deactivated``, DESIGN.md §4) run a real pool of three FEs from a
topology (``registrar serve --topology FILE --fe FQDN``, :mod:`pooltools`) on ``127.0.44.x``,
with its own DNS server (``registrar dns serve``): user 1's primary FE is taken down, clients
register in backup mode, the primary comes back, and the backup FE's re-homing batch sends
them home. Every wait has a deadline (DESIGN.md §9); no assertion is about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from dnslib import QTYPE, RCODE, RR, SRV, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from pooltools import (
    DEMO_PASSWORD,
    FeInfo,
    LivePool,
    PoolLayout,
    PoolStartError,
    aor_of,
    write_topology,
)
from procs import REPO, FeProcess, free_port

from registrar.admin import fetch_json, quote
from registrar.client import (
    REREGISTER_REASONS,
    AuthenticationError,
    PoolClient,
    RegistrationError,
    RegistrationResult,
    SrvRecord,
    TooManyRedirectsError,
    UntrustedServerError,
    _RegSub,
    backoff_delay,
    build_register,
    build_subscribe,
    client_endpoint,
    granted_expires,
    own_contacts,
    parse_dns_address,
    parse_redirect,
    parse_retry_after,
    parse_subscription_state,
    percentile,
    pick_challenge,
    redirect_maddr,
    refresh_delay,
    srv_order,
    trusted,
)
from sipstack.auth import parse_credentials
from sipstack.message import Request, Response, make_response
from sipstack.parser import parse_message
from sipstack.reginfo import ContactInfo, RegInfo, Registration, parse_reginfo
from sipstack.transport.endpoint import EndpointConfig, SipEndpoint
from sipstack.transport.flows import Flow, ListenSpec
from sipstack.transport.tls import server_ssl_context
from sipstack.uri import SipUri

DEADLINE = 30.0  # seconds any live step may take before the test gives up (never asserted)
FE1, FE2 = "fe1.contoso.com", "fe2.contoso.com"
IP1, IP2, FAKE_IP, DNS_IP = "127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.53"
LOAD_USERS = 50


# ================================================================================ unit


def _response(status: int, *headers: tuple[str, str]) -> Response:
    resp = Response(status)
    for name, value in headers:
        resp.add(name, value)
    return resp


def test_trusted_follows_the_seed_rules() -> None:
    """seed-excerpts §7: equal to or a sub-domain of a trusted domain, label-wise."""
    domains = ["d.e", "h.i.j"]
    assert trusted("s1.b.c.d.e", domains)
    assert not trusted("s2.i.j", domains)
    assert trusted("h.i.j", domains)
    assert trusted("POOL.Contoso.COM.", ["contoso.com"])
    assert trusted("pool.contoso.com", ["contoso.com."])
    assert not trusted("evilcontoso.com", ["contoso.com"])
    assert not trusted("pool.contoso.com.evil.net", ["contoso.com"])
    assert not trusted("contoso.com", ["pool.contoso.com"])
    assert not trusted("127.0.1.1", ["contoso.com", "127.0.1.1"])
    assert not trusted("pool.contoso.com", ["", " "])


def test_srv_order_priority_then_weighted_random() -> None:
    records = [
        SrvRecord(20, 0, 5061, "backup.contoso.com"),
        SrvRecord(10, 90, 5061, "a.contoso.com"),
        SrvRecord(10, 10, 5061, "b.contoso.com"),
        SrvRecord(10, 0, 5061, "."),
    ]
    firsts = []
    rng = random.Random(7)
    for _ in range(400):
        order = srv_order(records, rng)
        assert [r.target for r in order][-1] == "backup.contoso.com"
        assert "." not in [r.target for r in order]
        assert len(order) == 3
        firsts.append(order[0].target)
    share_a = firsts.count("a.contoso.com") / len(firsts)
    assert 0.75 < share_a < 0.98, share_a  # ~90 % by weight
    assert "b.contoso.com" in firsts
    assert srv_order([SrvRecord(0, 0, 5061, ".")]) == []


def test_parse_redirect() -> None:
    resp = _response(301, ("Contact", "<sip:fe3.contoso.com:5061;transport=tls>"))
    assert parse_redirect(resp) == ("fe3.contoso.com", 5061, "tls")
    assert redirect_maddr(resp) is None
    resp = _response(301, ("Contact", "<sip:FE3.contoso.com;maddr=127.0.1.3>"))
    assert parse_redirect(resp) == ("fe3.contoso.com", 5061, "tls")
    assert redirect_maddr(resp) == "127.0.1.3"
    resp = _response(302, ("Contact", "<sip:fe4.contoso.com:5070;transport=TCP>"))
    assert parse_redirect(resp) == ("fe4.contoso.com", 5070, "tcp")
    resp = _response(301, ("Contact", "<sips:[::1]:5062>"))
    assert parse_redirect(resp) == ("::1", 5062, "tls")
    resp = _response(301, ("Contact", "<sip:low.contoso.com>;q=0.1, <sip:high.contoso.com>;q=0.9"))
    assert parse_redirect(resp)[0] == "high.contoso.com"
    with pytest.raises(ValueError, match="without a Contact"):
        parse_redirect(_response(301))
    with pytest.raises(ValueError, match="not a SIP URI"):
        parse_redirect(_response(301, ("Contact", "<tel:+15551234>")))


def test_pick_challenge_prefers_the_first_supported() -> None:
    sha = 'Digest realm="contoso.com", nonce="n1", algorithm=SHA-256, qop="auth"'
    md5 = 'Digest realm="contoso.com", nonce="n2", algorithm=MD5, qop="auth"'
    odd = 'Digest realm="contoso.com", nonce="n3", algorithm=SHA-512-256, qop="auth"'
    resp = _response(401, ("WWW-Authenticate", sha), ("WWW-Authenticate", md5))
    challenge = pick_challenge(resp)
    assert challenge is not None and challenge.algorithm == "SHA-256"
    resp = _response(401, ("WWW-Authenticate", odd), ("WWW-Authenticate", md5))
    challenge = pick_challenge(resp)
    assert challenge is not None and challenge.nonce == "n2"
    assert pick_challenge(_response(401, ("WWW-Authenticate", odd))) is None
    assert pick_challenge(_response(401, ("WWW-Authenticate", "Basic realm=x"))) is None
    assert pick_challenge(_response(401, ("WWW-Authenticate", "Digest ,,,=="))) is None


def test_build_register_round_trips() -> None:
    aor = SipUri("sip", "alice", None, "contoso.com")
    req = build_register(
        aor=aor,
        via="SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bKabc;rport",
        local=("127.0.0.1", 40000),
        call_id="cid@x",
        cseq=7,
        from_tag="ft",
        instance_id="urn:uuid:00000000-0000-0000-0000-000000000001",
        expires=300,
    )
    parsed = parse_message(req.encode())
    assert isinstance(parsed, Request)
    assert parsed.uri == "sip:contoso.com"
    assert parsed.to.uri == aor and parsed.from_.tag == "ft"
    assert parsed.cseq.number == 7 and parsed.cseq.method == "REGISTER"
    assert parsed.expires == 300
    (contact,) = parsed.contacts
    assert str(contact.uri) == "sip:alice@127.0.0.1:40000;transport=tls;ob"
    assert contact.instance_id == "urn:uuid:00000000-0000-0000-0000-000000000001"
    assert contact.reg_id == 1 and contact.expires is None
    assert {t.lower() for t in parsed.tokens("supported")} == {"outbound", "path"}
    gone = build_register(
        aor=aor,
        via="SIP/2.0/TLS [::1]:4;branch=z9hG4bKdef",
        local=("::1", 4),
        call_id="c",
        cseq=8,
        from_tag="f",
        instance_id="urn:uuid:x",
        expires=0,
        authorization='Digest username="alice"',
    )
    parsed = parse_message(gone.encode())
    assert parsed.contacts[0].expires == 0 and parsed.expires == 0
    assert str(parsed.contacts[0].uri).startswith("sip:alice@[::1]:4;")
    assert parsed.get("authorization") == 'Digest username="alice"'


def test_granted_expires_reads_our_contact() -> None:
    inst = "urn:uuid:1"
    mine = f'<sip:alice@127.0.0.1:5;transport=tls;ob>;expires=120;+sip.instance="<{inst}>";reg-id=1'
    other = '<sip:alice@10.0.0.9:7;transport=tls>;expires=3000;+sip.instance="<urn:uuid:2>"'
    resp = _response(200, ("Contact", other), ("Contact", mine), ("Expires", "999"))
    assert granted_expires(resp, inst) == 120
    by_uri = _response(200, ("Contact", "<sip:alice@127.0.0.1:5;transport=tls;ob>;expires=60"))
    assert granted_expires(by_uri, "urn:uuid:9", "sip:alice@127.0.0.1:5;transport=tls;ob") == 60
    assert granted_expires(_response(200, ("Contact", other)), inst) is None
    header_only = _response(
        200, ("Contact", f'<sip:a@b>;+sip.instance="<{inst}>"'), ("Expires", "77")
    )
    assert granted_expires(header_only, inst) == 77


def test_small_helpers() -> None:
    assert parse_retry_after(_response(503, ("Retry-After", "5"))) == 5
    assert parse_retry_after(_response(503, ("Retry-After", "18000;duration=3600"))) == 18000
    assert parse_retry_after(_response(503, ("Retry-After", "120 (I'm in a meeting)"))) == 120
    assert parse_retry_after(_response(503, ("Retry-After", "soon"))) is None
    assert parse_retry_after(_response(503)) is None
    rng = random.Random(1)
    for _ in range(200):
        assert 210 <= refresh_delay(300, rng) <= 240
        assert 0.5 <= backoff_delay(0, rng) <= 1.0
        assert 4.0 <= backoff_delay(3, rng) <= 8.0
        assert 30.0 <= backoff_delay(99, rng, cap=60) <= 60.0
    assert refresh_delay(0) == 0.0
    assert percentile([], 50) == 0.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile(values, 100) == 100 and percentile([3.0], 90) == 3.0
    assert parse_dns_address("127.0.1.53:5353") == ("127.0.1.53", 5353)
    assert parse_dns_address("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_dns_address("[::1]:5353") == ("::1", 5353)
    with pytest.raises(ValueError, match="HOST"):
        parse_dns_address(":53")
    with pytest.raises(ValueError, match="port"):
        parse_dns_address("127.0.0.1:http")


def test_result_reports_backup_mode() -> None:
    headers = (("X-Registrar-Mode", 'backup;primary="fe2.contoso.com"'), ("Server", "x"))
    result = RegistrationResult("sip:a@contoso.com", FE1, IP1, 0, 300, 0.01, headers)
    assert result.backup and result.primary == FE2 and result.header("server") == "x"
    assert result.to_json()["backup"] is True
    plain = RegistrationResult(
        "sip:a@contoso.com", FE1, IP1, 0, 300, 0.01, (("X-Registrar-Mode", "primary"),)
    )
    assert not plain.backup and plain.primary is None


def _flow(flow_id_local: int = 40000) -> Flow:
    return Flow("tls", ("127.0.0.1", flow_id_local), (IP1, 5061), lambda b: None, lambda: None)


async def test_nonce_count_increments_on_reuse() -> None:
    client = PoolClient("sip:alice@contoso.com", "secret", "127.0.0.1:9", None)
    try:
        flow = _flow()
        challenge_resp = _response(
            401,
            (
                "WWW-Authenticate",
                'Digest realm="contoso.com", nonce="abc", algorithm=SHA-256, qop="auth"',
            ),
        )
        challenge = pick_challenge(challenge_resp)
        assert challenge is not None
        from registrar.client import _Auth

        client._auth = _Auth(challenge, flow.id, False)
        first, _ = client._request_for(flow, 300)
        second, _ = client._request_for(flow, 300)
        c1 = parse_credentials(first.get("authorization") or "")
        c2 = parse_credentials(second.get("authorization") or "")
        assert (c1.nc, c2.nc) == ("00000001", "00000002")
        assert c1.algorithm == "SHA-256" and c1.uri == "sip:contoso.com" and c1.username == "alice"
        assert first.cseq.number + 1 == second.cseq.number and first.call_id == second.call_id
        other_flow = _flow(40001)
        third, _ = client._request_for(other_flow, 300)
        assert "authorization" not in third  # credentials are per connection (per server)
    finally:
        await client.close()


async def test_addresses_tried_in_random_order_until_one_works() -> None:
    """seed-excerpts §1: pick an address at random, continue down the list on failure."""
    client = PoolClient(
        "sip:alice@contoso.com", "secret", "127.0.0.1:9", None, rng=random.Random(3)
    )
    tried: list[list[str]] = []
    attempt: list[str] = []

    async def fake_open(ip: str, port: int, name: str) -> Flow:
        attempt.append(ip)
        if ip != "10.0.0.3":
            raise ConnectionRefusedError(111, "refused")
        return _flow()

    client._open_flow = fake_open  # type: ignore[method-assign]
    try:
        for _ in range(40):
            attempt.clear()
            errors: list[str] = []
            flow = await client._connect_any(
                ["10.0.0.1", "10.0.0.2", "10.0.0.3"], 5061, "p", errors
            )
            assert flow is not None and attempt[-1] == "10.0.0.3"
            assert len(errors) == len(attempt) - 1
            tried.append(list(attempt))
        assert len({t[0] for t in tried}) == 3, "every address should come first sometimes"
    finally:
        await client.close()


def test_build_subscribe_round_trips() -> None:
    """RFC 3680 §4 / RFC 6665 §4.1.2.1: our own AOR, Event reg, Accept reginfo, Expires."""
    aor = SipUri("sip", "alice", None, "contoso.com")
    req = build_subscribe(
        aor=aor,
        via="SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bKsub;rport",
        contact="sip:alice@127.0.0.1:40000;transport=tls;ob",
        call_id="sub@x",
        cseq=3,
        from_tag="ft",
        expires=600,
        authorization='Digest username="alice"',
    )
    parsed = parse_message(req.encode())
    assert isinstance(parsed, Request)
    assert parsed.method == "SUBSCRIBE" and parsed.uri == "sip:alice@contoso.com"
    assert parsed.to.uri == aor and parsed.to.tag is None
    assert parsed.from_.uri == aor and parsed.from_.tag == "ft"
    assert parsed.cseq.number == 3 and parsed.cseq.method == "SUBSCRIBE"
    assert parsed.get("event") == "reg" and parsed.get("accept") == "application/reginfo+xml"
    assert parsed.expires == 600 and parsed.call_id == "sub@x"
    (contact,) = parsed.contacts
    assert str(contact.uri) == "sip:alice@127.0.0.1:40000;transport=tls;ob"
    assert parsed.get("authorization") == 'Digest username="alice"'


def test_parse_subscription_state() -> None:
    state = parse_subscription_state("terminated;reason=deactivated")
    assert (state.state, state.reason, state.expires) == ("terminated", "deactivated", None)
    state = parse_subscription_state("Active ; expires=595")
    assert (state.state, state.reason, state.expires) == ("active", None, 595)
    state = parse_subscription_state("terminated;reason=probation;retry-after=30")
    assert (state.reason, state.retry_after) == ("probation", 30)
    assert parse_subscription_state("active;expires=soon").expires is None
    assert parse_subscription_state(None).state == ""


INSTANCE = "urn:uuid:00000000-0000-0000-0000-0000000000aa"
MY_CONTACT = "sip:alice@127.0.0.1:40000;transport=tls;ob"


def _contact(
    cid: str,
    state: str,
    event: str,
    uri: str = MY_CONTACT,
    instance: str | None = f"<{INSTANCE}>",
    **extra: Any,
) -> ContactInfo:
    return ContactInfo(cid, state, event, uri, instance=instance, reg_id=1, **extra)  # type: ignore[arg-type]


def _reginfo(version: int, state: str, *contacts: ContactInfo, aor: str = "") -> bytes:
    registration = Registration(aor or "sip:alice@contoso.com", "r1", "active", list(contacts))
    return RegInfo(version, state, [registration]).to_xml()  # type: ignore[arg-type]


def test_own_contacts_by_instance_or_uri() -> None:
    other_ua = _contact("2", "active", "registered", "sip:alice@10.0.0.9:5061", "<urn:uuid:zz>")
    mine = _contact("1", "terminated", "deactivated")
    info = parse_reginfo(_reginfo(3, "partial", other_ua, mine))
    assert [c.id for c in own_contacts(info, "sip:Alice@Contoso.com", INSTANCE, MY_CONTACT)] == [
        "1"
    ]
    # Without an instance, the contact URI decides (parameters and case ignored).
    bare = _contact("3", "active", "created", MY_CONTACT.upper(), None)
    info = parse_reginfo(_reginfo(4, "partial", bare))
    assert [c.id for c in own_contacts(info, "sip:alice@contoso.com", INSTANCE, MY_CONTACT)] == [
        "3"
    ]
    assert own_contacts(info, "sip:alice@contoso.com", INSTANCE, None) == []
    # Another AOR's registration is never ours.
    info = parse_reginfo(_reginfo(5, "partial", mine, aor="sip:bob@contoso.com"))
    assert own_contacts(info, "sip:alice@contoso.com", INSTANCE, MY_CONTACT) == []


async def test_deactivating_notify_makes_the_registration_due() -> None:
    """A NOTIFY of our subscription that ends *our* contact with ``deactivated``: 200, a
    ``deactivated`` event, no longer registered, and the flow close that follows is not a
    ``flow-lost``. Other UAs' contacts, stale versions and unknown subscriptions do nothing."""
    endpoint = client_endpoint(None)
    events = Recorder()
    client = PoolClient(
        "sip:alice@contoso.com",
        "x",
        "127.0.0.1:9",
        endpoint=endpoint,
        on_event=events,
        instance_id=INSTANCE,
        subscribe=True,
    )
    flow = _flow()
    endpoint.handler.attach(flow, client)
    client._flow = flow
    client._result = RegistrationResult(
        client.aor, FE1, IP1, 0, 300, 0.01, fe_port=5061, contact=MY_CONTACT
    )
    client._registered_mono = time.monotonic()
    client._sub = _RegSub(flow, "sub1", "ourtag", MY_CONTACT, FE1)
    cseq = iter(range(1, 100))

    def notify(body: bytes, state: str = "active;expires=590", call_id: str = "sub1") -> int:
        req = Request("NOTIFY", MY_CONTACT)
        for name, value in (
            ("Via", "SIP/2.0/TLS 127.0.1.1:5061;branch=z9hG4bKn" + str(next(cseq))),
            ("From", "<sip:alice@contoso.com>;tag=fe"),
            ("To", "<sip:alice@contoso.com>;tag=ourtag"),
            ("Call-ID", call_id),
            ("CSeq", f"{next(cseq)} NOTIFY"),
            ("Event", "reg"),
            ("Subscription-State", state),
        ):
            req.add(name, value)
        req.set_body(body, "application/reginfo+xml")
        resp = endpoint.handler.handle_request(req, flow)
        assert resp is not None
        return resp.status

    other_ua = "sip:alice@10.0.0.9:5061;transport=tls"
    assert notify(_reginfo(0, "full", _contact("1", "active", "registered"))) == 200
    assert client.registered
    gone = _contact("2", "terminated", "deactivated", other_ua, "<urn:uuid:other>")
    assert notify(_reginfo(1, "partial", gone)) == 200
    assert client.registered and "deactivated" not in events.names()
    assert notify(_reginfo(2, "partial", _contact("1", "terminated", "deactivated"))) == 200
    assert not client.registered
    (info,) = events.of("deactivated")
    assert info["fe_fqdn"] == FE1 and info["contact"] == MY_CONTACT
    notifies = events.of("notify")
    assert notifies[-1]["contacts"] == [
        {"uri": MY_CONTACT, "state": "terminated", "event": "deactivated"}
    ]
    assert notifies[0]["document"] == "full" and notifies[0]["version"] == 0
    assert client._deactivation is not None and client._deactivation.delay <= 0.5
    assert notify(_reginfo(2, "partial", _contact("1", "terminated", "deactivated"))) == 200
    assert len(events.of("deactivated")) == 1  # a repeated version is ignored
    # The FE closes the flow next: expected, not a flow loss.
    client._on_flow_closed(flow)
    assert "flow-lost" not in events.names() and client.stats["flow_losses"] == 0
    # The subscription ends: the last NOTIFY of it is still answered 200, unknown ones 481.
    assert notify(_reginfo(3, "full"), "terminated;reason=timeout") == 200
    assert client._sub is None
    assert notify(_reginfo(4, "full"), "terminated;reason=timeout") == 200
    assert notify(_reginfo(0, "full"), call_id="someone-else") == 481
    await client.close()
    await endpoint.close()


async def test_version_gap_asks_for_the_full_state() -> None:
    """RFC 3680 §5.3: a partial document after a missing version → refresh the subscription
    (its NOTIFY carries the full state); probation → registration due after retry-after."""
    endpoint = client_endpoint(None)
    client = PoolClient(
        "sip:alice@contoso.com", "x", "127.0.0.1:9", endpoint=endpoint, instance_id=INSTANCE,
        subscribe=True, retry_base=0.1,
    )  # fmt: skip
    flow = _flow()
    client._flow = flow
    client._result = RegistrationResult(client.aor, FE1, IP1, 0, 300, 0.01, contact=MY_CONTACT)
    client._registered_mono = time.monotonic()
    sub = client._sub = _RegSub(flow, "s", "t", MY_CONTACT, FE1)

    def notify(body: bytes, n: int) -> int:
        req = Request("NOTIFY", MY_CONTACT)
        for name, value in (
            ("Via", f"SIP/2.0/TLS 127.0.1.1:5061;branch=z9hG4bKg{n}"),
            ("From", "<sip:alice@contoso.com>;tag=fe"),
            ("To", "<sip:alice@contoso.com>;tag=t"),
            ("Call-ID", "s"),
            ("CSeq", f"{n} NOTIFY"),
            ("Event", "reg"),
            ("Subscription-State", "active;expires=100"),
        ):
            req.add(name, value)
        req.set_body(body, "application/reginfo+xml")
        return client._on_notify(req, flow)

    assert notify(_reginfo(0, "full", _contact("1", "active", "registered")), 1) == 200
    assert client._sub_next is None
    assert notify(_reginfo(3, "partial", _contact("1", "active", "refreshed")), 2) == 200
    assert client._sub_next is not None and client._sub_next <= time.monotonic()
    assert sub.version == 3
    probation = _contact("1", "terminated", "probation", retry_after=7)
    assert notify(_reginfo(4, "partial", probation), 3) == 200
    assert client._deactivation is not None
    assert (client._deactivation.cause, client._deactivation.delay) == ("probation", 7.0)
    assert not client.registered
    await client.close()
    await endpoint.close()


# ======================================================================= live fixtures


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """A tiny authoritative resolver over a mutable dict (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[tuple[str, str], list[Any]] = {}

    def set(self, name: str, rtype: str, values: list[Any]) -> None:
        with self.lock:
            self.records[(name.lower().rstrip("."), rtype)] = values

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            values = list(self.records.get((qname, qtype), []))
            known = any(name == qname for name, _ in self.records)
        for value in values:
            rdata = A(value) if qtype == "A" else SRV(*value)
            reply.add_answer(RR(request.q.qname, getattr(QTYPE, qtype), rdata=rdata, ttl=0))
        if not values and not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@dataclass
class Pool:
    """The live pool of the tests."""

    workdir: Path
    certs: Path
    users_db: Path
    port: int
    zone: ZoneResolver
    dns: str
    fes: dict[str, FeProcess] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    def default_zone(self) -> None:
        zone = self.zone
        with zone.lock:
            zone.records.clear()
        zone.set(
            "_sipinternaltls._tcp.contoso.com", "SRV", [(0, 0, self.port, "pool.contoso.com.")]
        )
        zone.set("pool.contoso.com", "A", [IP1, IP2])
        zone.set(FE1, "A", [IP1])
        zone.set(FE2, "A", [IP2])

    def fe_of(self, fqdn: str) -> FeProcess:
        return self.fes[fqdn]

    def other(self, fqdn: str) -> FeProcess:
        return self.fes[FE2 if fqdn == FE1 else FE1]

    def bindings(self, fqdn: str, aor: str) -> list[dict[str, Any]]:
        fe = self.fes[fqdn]
        assert fe.admin_addr is not None
        host, port = fe.admin_addr
        rows: list[dict[str, Any]] = fetch_json(f"{host}:{port}", f"/bindings?aor={quote(aor)}")
        return rows


def _run_cli(args: list[str]) -> None:
    """Run a ``registrar`` command in this process (faster than a subprocess)."""
    from registrar.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    assert code == 0, f"{args}: {out.getvalue()}{err.getvalue()}"


def _shared_port() -> int:
    for _ in range(50):
        port = free_port("tcp", IP1)
        with socket.socket() as sock:
            try:
                sock.bind((IP2, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no TCP port free on both 127.0.1.1 and 127.0.1.2")


@pytest.fixture(scope="module")
def live_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    work = tmp_path_factory.mktemp("pool")
    certs = work / "certs"
    for name, ip in ((FE1, IP1), (FE2, IP2)):
        _run_cli(
            [
                "certs",
                "init",
                "--out",
                str(certs),
                "--name",
                name,
                "--san",
                "pool.contoso.com",
                "--ip",
                ip,
            ]
        )
    users_db = work / "users.db"
    csv_path = work / "users.csv"
    rows = ["aor,password", "sip:mallory@contoso.com,right"]
    rows += [f"sip:user{n:04d}@contoso.com,demo" for n in range(1, LOAD_USERS + 1)]
    csv_path.write_text("\n".join(rows) + "\n")
    _run_cli(["users", "import", str(csv_path), "--users-db", str(users_db)])
    _run_cli(
        [
            "users",
            "add",
            "sip:alice@contoso.com",
            "--password",
            "secret",
            "--users-db",
            str(users_db),
        ]
    )

    zone = ZoneResolver()
    server = None
    for _ in range(10):
        dns_port = free_port("udp", DNS_IP)
        try:
            server = DNSServer(
                zone,
                address=DNS_IP,
                port=dns_port,
                logger=DNSLogger(
                    log="-request,-reply,-truncated,-error,-recv,-send,-data",
                    prefix=False,
                    logf=lambda s: None,
                ),
            )
        except OSError:
            continue
        break
    assert server is not None, "no UDP port for the test DNS server"
    server.start_thread()
    pool = Pool(work, certs, users_db, _shared_port(), zone, f"{DNS_IP}:{dns_port}")
    pool.default_zone()
    for fqdn, ip in ((FE1, IP1), (FE2, IP2)):
        pool.fes[fqdn] = FeProcess(
            work,
            certs_dir=certs,
            host=ip,
            transports=("tls",),
            fqdn=fqdn,
            ports={"tls": pool.port},
            admin=True,
            name=fqdn.split(".")[0],
            args=[
                "--domain", "contoso.com",
                "--users-db", str(users_db),
                "--digest-algorithms", "SHA-256,MD5",
                "--log-level", "warning",
            ],
        )  # fmt: skip
    try:
        yield pool
    finally:
        for fe in pool.fes.values():
            with contextlib.suppress(Exception):
                fe.stop(timeout=10)
        server.stop()


@pytest.fixture
def pool(live_pool: Pool) -> Pool:
    """The live pool with both FEs running and the default zone."""
    live_pool.default_zone()
    for fe in live_pool.fes.values():
        if not fe.running:
            fe.start_ready(timeout=DEADLINE)
    return live_pool


async def eventually(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = DEADLINE, message: str = ""
) -> Any:
    """Poll ``predicate`` until truthy (awaiting it when it is a coroutine), with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


class Recorder:
    """An ``on_event`` callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, info: dict[str, Any]) -> None:
        self.events.append((name, info))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [info for name, info in self.events if name == kind]


class InOrder(random.Random):
    """Randomness whose shuffle keeps the order: makes the address order deterministic."""

    def shuffle(self, x: Any) -> None:  # type: ignore[override]
        return None


def _bound_to(pool: Pool, fqdn: str, aor: str, contact: str) -> bool:
    return any(row["contact"] == contact for row in pool.bindings(fqdn, aor))


# ============================================================================ live tests


@pytest.mark.network
async def test_register_through_dns(pool: Pool) -> None:
    """SRV → pool A records → a random FE over verified TLS → SHA-256 digest → 200."""
    events = Recorder()
    async with PoolClient(
        "sip:alice@contoso.com", "secret", pool.dns, pool.ca, on_event=events
    ) as client:
        result = await client.register()
        assert result.fe_fqdn in (FE1, FE2)
        assert result.fe_ip == {FE1: IP1, FE2: IP2}[result.fe_fqdn]
        assert result.fe_port == pool.port
        assert result.algorithm == "SHA-256"
        assert result.redirects == 0 and result.expires == 300 and result.latency > 0
        assert result.header("Server") and client.registered
        rows = await asyncio.to_thread(pool.bindings, result.fe_fqdn, "sip:alice@contoso.com")
        mine = [r for r in rows if r["contact"] == result.contact]
        assert mine and mine[0]["instance_id"].strip("<>") == client.instance_id
        assert mine[0]["reg_id"] == 1
        assert events.of("dns")[0]["target"] == "pool.contoso.com"
        assert events.of("connected")[0]["server_name"] == "pool.contoso.com"
        assert "challenged" in events.names() and "registered" in events.names()

        assert await client.unregister() is True
        rows = await asyncio.to_thread(pool.bindings, result.fe_fqdn, "sip:alice@contoso.com")
        assert not [r for r in rows if r["contact"] == result.contact]
        assert not client.registered


@pytest.mark.network
async def test_untrusted_srv_target_is_refused_before_connecting(pool: Pool) -> None:
    """seed-excerpts §7: fabrikam.com's SRV points at pool.contoso.com, which is outside
    fabrikam.com: refused without a connection unless contoso.com is a trusted domain."""
    pool.zone.set(
        "_sipinternaltls._tcp.fabrikam.com", "SRV", [(0, 0, pool.port, "pool.contoso.com.")]
    )
    events = Recorder()
    async with PoolClient(
        "sip:bob@fabrikam.com", "pw", pool.dns, pool.ca, on_event=events
    ) as client:
        with pytest.raises(UntrustedServerError, match=r"pool\.contoso\.com") as info:
            await client.register()
        assert not info.value.retryable
        assert "connected" not in events.names() and "connect-failed" not in events.names()
        assert events.of("untrusted")[0]["server"] == "pool.contoso.com"
    events = Recorder()
    async with PoolClient(
        "sip:bob@fabrikam.com", "pw", pool.dns, pool.ca, ["contoso.com"], on_event=events
    ) as client:
        with pytest.raises(RegistrationError) as err:
            await client.register()  # trusted now: it connects, and the FE does not serve fabrikam
        assert not isinstance(err.value, UntrustedServerError)
        assert err.value.status == 404
        assert "connected" in events.names()


@pytest.mark.network
async def test_stopped_fe_is_skipped(pool: Pool) -> None:
    """fe1 is down: an address order that tries it first falls back to fe2; random orders all
    end on fe2 too."""
    assert pool.fe_of(FE1).stop() == 0
    events = Recorder()
    async with PoolClient(
        "sip:alice@contoso.com", "secret", pool.dns, pool.ca, on_event=events, rng=InOrder()
    ) as client:
        result = await client.register()
        assert result.fe_fqdn == FE2 and result.fe_ip == IP2
        failed = events.of("connect-failed")
        assert [f["fe_ip"] for f in failed] == [IP1]
    for _ in range(3):
        async with PoolClient("sip:alice@contoso.com", "secret", pool.dns, pool.ca) as client:
            assert (await client.register()).fe_fqdn == FE2


@pytest.mark.network
@pytest.mark.parametrize("subscribe", [False, True], ids=["plain", "subscribed"])
async def test_flow_loss_reregisters_from_dns_on_the_other_fe(pool: Pool, subscribe: bool) -> None:
    """SIGKILL the FE holding alice while run() keeps her registered: the client sees the
    connection drop and registers again, through DNS, on the surviving FE (and, subscribed,
    subscribes again there: the old subscription died with the old flow)."""
    events = Recorder()
    stop = asyncio.Event()
    client = PoolClient(
        "sip:alice@contoso.com", "secret", pool.dns, pool.ca, on_event=events, retry_base=0.2,
        subscribe=subscribe,
    )  # fmt: skip
    task = asyncio.create_task(client.run(stop))
    try:
        first = await eventually(
            lambda: (client.subscribed or not subscribe) and client.result,
            message=f"never registered: {events.names()}",
        )
        victim = pool.fe_of(first.fe_fqdn)
        survivor = pool.other(first.fe_fqdn)
        victim.kill()
        second = await eventually(
            lambda: client.registered and client.result.fe_fqdn == survivor.fqdn and client.result,
            message=f"not re-registered on {survivor.fqdn}: {events.names()}",
        )
        assert "flow-lost" in events.names()
        assert len(events.of("dns")) >= 2, "the re-registration must start from DNS"
        assert second.contact != first.contact  # a new connection, a new local port
        assert await asyncio.to_thread(_bound_to, pool, survivor.fqdn, client.aor, second.contact)
        assert events.of("registered")[-1]["reason"] == "flow-lost"
        assert client.reregistrations["flow-lost"] >= 1
        if subscribe:
            await eventually(
                lambda: (
                    client.subscribed and events.of("subscribed")[-1]["fe_fqdn"] == survivor.fqdn
                ),
                message=f"not subscribed on {survivor.fqdn}: {events.names()}",
            )
            assert events.of("subscribed")[0]["fe_fqdn"] == first.fe_fqdn
        else:
            assert "subscribed" not in events.names()
        assert not task.done()
    finally:
        await _end_run(client, stop, task)


async def _end_run(client: PoolClient, stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
    """End ``task`` (``client.run(stop)``) by setting ``stop``, then unregister and close."""
    stop.set()
    await asyncio.wait_for(task, DEADLINE)
    await client.unregister()
    await client.close()


def _full_notify_listing(client: PoolClient, contact: str) -> RegInfo | None:
    """The newest full reginfo document received that lists ``contact`` active."""
    for request in reversed(client.notifications):
        if not request.body:
            continue
        info = parse_reginfo(request.body)
        if info.state != "full":
            continue
        mine = own_contacts(info, client.aor, client.instance_id, contact)
        if any(c.state == "active" and c.uri == contact for c in mine):
            return info
    return None


@pytest.mark.network
async def test_subscribe_gets_the_full_state_and_keeps_it_refreshed(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the 200 to REGISTER the client SUBSCRIBEs to reg (digest on the same flow) and
    answers the first NOTIFY, which carries the full state listing its own contact; it
    refreshes the subscription in its dialog (a new full NOTIFY, next version) and ends it
    before unregistering."""
    events = Recorder()
    async with PoolClient(
        "sip:alice@contoso.com", "secret", pool.dns, pool.ca, on_event=events, subscribe=True,
        subscribe_expires=120,
    ) as client:  # fmt: skip
        result = await client.register()
        assert client.subscribed, events.names()
        (subscribed,) = events.of("subscribed")
        assert subscribed["fe_fqdn"] == result.fe_fqdn and subscribed["expires"] == 120
        assert subscribed["refresh"] is False
        assert events.names().index("registered") < events.names().index("subscribed")
        info = await eventually(
            lambda: _full_notify_listing(client, result.contact),
            message=f"no full NOTIFY listing {result.contact}: {list(client.notifications)}",
        )
        assert info.version == 0 and info.registrations[0].aor == client.aor
        (mine,) = own_contacts(info, client.aor, client.instance_id, result.contact)
        assert mine.event == "registered" and mine.instance == f"<{client.instance_id}>"
        notify = next(n for n in client.notifications if n.body)
        assert notify.get("subscription-state", "").startswith("active")
        assert client._sub is not None and notify.to.tag == client._sub.from_tag

        # The subscription is refreshed now, then at the (patched) refresh point.
        monkeypatch.setattr("registrar.client.refresh_delay", lambda expires, rng=None: 0.5)
        client._sub_next = time.monotonic()
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            await eventually(
                lambda: any(e["refresh"] for e in events.of("subscribed")),
                message=f"subscription never refreshed: {events.names()}",
            )
            await eventually(
                lambda: (i := _full_notify_listing(client, result.contact)) and i.version >= 1,
                message="no full NOTIFY after the refresh",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, DEADLINE)
        assert events.names().count("registered") == 1  # one registration throughout
        assert "failed" not in events.names() and "subscribe-failed" not in events.names()
        assert await client.unregister()
        assert "unsubscribed" in events.names()
        assert events.names().index("unsubscribed") < events.names().index("unregistered")


class FakeRegistrar:
    """A TLS SIP server (the project's SipEndpoint) answering every REGISTER with 301 to
    :attr:`contact`, after the scripted answers in :attr:`script` (status, headers) are used."""

    def __init__(self, contact: str) -> None:
        self.contact = contact
        self.requests: list[Request] = []
        self.script: list[tuple[int, list[tuple[str, str]]]] = []

    def handle_request(self, request: Request, flow: Flow) -> Response | None:
        if request.method == "ACK":
            return None
        self.requests.append(request)
        status, headers = self.script.pop(0) if self.script else (301, [("Contact", self.contact)])
        resp = make_response(request, status, to_tag="fake")
        for name, value in headers:
            resp.headers.insert(-1, (name.lower(), name, value))
        return resp

    def handle_response(self, response: Response, flow: Flow) -> None:
        pass


async def _fake(pool: Pool, contact: str) -> tuple[FakeRegistrar, SipEndpoint, int]:
    fake = FakeRegistrar(contact)
    ssl_ctx = server_ssl_context(pool.certs / f"{FE2}.crt", pool.certs / f"{FE2}.key")
    endpoint = SipEndpoint(fake, EndpointConfig(server_ssl=ssl_ctx))
    _, port = await endpoint.listen(ListenSpec("tls", FAKE_IP, 0))
    # DNS now sends the pool to the fake (it has fe2's certificate: SAN fe2 + pool FQDN).
    pool.zone.set("_sipinternaltls._tcp.contoso.com", "SRV", [(0, 0, port, "pool.contoso.com.")])
    pool.zone.set("pool.contoso.com", "A", [FAKE_IP])
    return fake, endpoint, port


@pytest.mark.network
async def test_redirect_is_followed(pool: Pool) -> None:
    fake, endpoint, _ = await _fake(pool, f"<sip:{FE1}:{pool.port};transport=tls>")
    events = Recorder()
    try:
        async with PoolClient(
            "sip:alice@contoso.com", "secret", pool.dns, pool.ca, on_event=events
        ) as client:
            result = await client.register()
            assert (result.fe_fqdn, result.fe_ip, result.redirects) == (FE1, IP1, 1)
            assert len(fake.requests) == 1
            (redirect,) = events.of("redirected")
            assert (redirect["target"], redirect["port"]) == (FE1, pool.port)
            connected = events.of("connected")
            assert [c["server_name"] for c in connected] == ["pool.contoso.com", FE1]
            assert await asyncio.to_thread(_bound_to, pool, FE1, client.aor, result.contact)
    finally:
        await endpoint.close()


@pytest.mark.network
async def test_more_than_ten_redirects_fail(pool: Pool) -> None:
    fake, endpoint, port = await _fake(pool, "")
    fake.contact = f"<sip:{FE2}:{port};transport=tls>"
    pool.zone.set(FE2, "A", [FAKE_IP])  # fe2 is the fake too: a redirect loop
    try:
        async with PoolClient("sip:alice@contoso.com", "secret", pool.dns, pool.ca) as client:
            with pytest.raises(TooManyRedirectsError, match="more than 10 redirects"):
                await client.register()
            assert len(fake.requests) == 11
            assert client.flow is None and not client.registered
    finally:
        await endpoint.close()


@pytest.mark.network
async def test_503_retry_after_is_waited_out(pool: Pool) -> None:
    """503 + Retry-After: wait, try again (bounded); 503 without it: a retryable failure."""
    fake, endpoint, _ = await _fake(pool, f"<sip:{FE1}:{pool.port};transport=tls>")
    fake.script = [(503, [("Retry-After", "1")])]
    events = Recorder()
    try:
        async with PoolClient(
            "sip:alice@contoso.com", "secret", pool.dns, pool.ca, on_event=events
        ) as client:
            started = time.monotonic()
            result = await client.register()
            assert time.monotonic() - started >= 1.0  # Retry-After honoured (a lower bound)
            assert (result.fe_fqdn, result.redirects) == (FE1, 1)
            assert [e["seconds"] for e in events.of("retry-after")] == [1]
            assert len(fake.requests) == 2
            fake.script = [(503, [])]
            with pytest.raises(RegistrationError) as info:
                await client.register()
            assert info.value.status == 503 and info.value.retryable
            fake.script = [(503, [("Retry-After", "1")])] * 5
            client.max_retry_after = 2
            with pytest.raises(RegistrationError, match="Retry-After"):
                await client.register()
    finally:
        await endpoint.close()


@pytest.mark.network
async def test_run_refreshes_and_sends_keepalives(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run(): refreshes over the same connection (pre-emptive digest, nc 2, 3 ...) at the
    refresh time, and CRLF keep-alives in between; the FE keeps the binding."""
    monkeypatch.setattr("registrar.client.refresh_delay", lambda expires, rng=None: 0.6)
    monkeypatch.setattr("registrar.client.KEEPALIVE_INTERVAL", 0.25)
    events = Recorder()
    stop = asyncio.Event()
    client = PoolClient("sip:alice@contoso.com", "secret", pool.dns, pool.ca, on_event=events)
    task = asyncio.create_task(client.run(stop))
    try:
        await eventually(lambda: client.stats["refreshes"] >= 2, message=str(events.names()))
        first = events.of("registered")[0]
        for refreshed in events.of("refreshed"):
            assert refreshed["contact"] == first["contact"]
            assert refreshed["fe_fqdn"] == first["fe_fqdn"]
            assert refreshed["algorithm"] == "SHA-256"
        assert events.names().count("challenged") == 1  # refreshes reuse the nonce
        assert events.names().count("connected") == 1
        assert "keepalive" in events.names()
        assert client.registered
        assert await asyncio.to_thread(
            _bound_to, pool, first["fe_fqdn"], client.aor, first["contact"]
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)
        assert await client.unregister()
        await client.close()


@pytest.mark.network
async def test_wrong_password_fails_without_retrying(pool: Pool) -> None:
    async with PoolClient("sip:mallory@contoso.com", "wrong", pool.dns, pool.ca) as client:
        with pytest.raises(AuthenticationError, match="rejected the credentials") as info:
            await client.register()
        assert not info.value.retryable
        stop = asyncio.Event()
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(client.run(stop), DEADLINE)


async def test_handler_answers_registrar_requests() -> None:
    """NOTIFY on a client's flow: kept, and 481 when it matches no subscription of the client
    (RFC 6665 §4.1.3), 200 when it does; OPTIONS → 200; others → 405 with Allow."""
    endpoint = client_endpoint(None)
    client = PoolClient("sip:alice@contoso.com", "x", "127.0.0.1:9", endpoint=endpoint)
    handler = endpoint.handler
    flow = _flow()
    handler.attach(flow, client)

    def request(method: str, *extra: tuple[str, str]) -> Request:
        req = Request(method, "sip:alice@127.0.0.1:40000;transport=tls")
        for name, value in (
            ("Via", "SIP/2.0/TLS 127.0.1.1:5061;branch=z9hG4bKn1"),
            ("From", "<sip:alice@contoso.com>;tag=s1"),
            ("To", "<sip:alice@contoso.com>;tag=c1"),
            ("Call-ID", "sub1"),
            ("CSeq", f"1 {method}"),
            *extra,
        ):
            req.add(name, value)
        return req

    notify = request("NOTIFY", ("Event", "reg"), ("Subscription-State", "active"))
    resp = handler.handle_request(notify, flow)
    assert resp is not None and resp.status == 481
    assert list(client.notifications) == [notify]
    client._sub = _RegSub(flow, "sub1", "c1", "sip:alice@127.0.0.1:40000;transport=tls", FE1)
    resp = handler.handle_request(notify, flow)
    assert resp is not None and resp.status == 200
    wrong = request("NOTIFY", ("Event", "presence"), ("Subscription-State", "active"))
    resp = handler.handle_request(wrong, flow)
    assert resp is not None and resp.status == 489 and resp.get("allow-events") == "reg"
    options = handler.handle_request(request("OPTIONS"), flow)
    assert (
        options is not None and options.status == 200 and "NOTIFY" in (options.get("allow") or "")
    )
    invite = handler.handle_request(request("INVITE"), flow)
    assert invite is not None and invite.status == 405 and invite.get("allow")
    assert handler.handle_request(request("ACK"), flow) is None
    stranger = handler.handle_request(request("NOTIFY"), _flow(40001))
    assert stranger is not None and stranger.status == 481
    await client.close()
    await endpoint.close()


async def test_shared_endpoint_opens_a_connection_per_client() -> None:
    endpoint = client_endpoint(None)
    a = PoolClient("sip:a@contoso.com", "x", "127.0.0.1:9", endpoint=endpoint)
    b = PoolClient("sip:b@contoso.com", "x", "127.0.0.1:9", endpoint=endpoint)
    assert a.endpoint is b.endpoint
    with pytest.raises(ValueError, match="client_endpoint"):
        PoolClient("sip:c@contoso.com", "x", "127.0.0.1:9", endpoint=SipEndpoint(FakeRegistrar("")))
    await a.close()
    await b.close()
    await endpoint.close()


# =================================================================================== CLI


def _client_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "registrar.client", *args]


def _run_client(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m registrar.client ARGS`` in the checkout, killed after ``timeout`` seconds;
    its exit code and output (not checked)."""
    return subprocess.run(
        _client_cmd(*args), capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


@pytest.mark.network
def test_cli_register_once(pool: Pool) -> None:
    proc = _run_client(
        "register", "sip:alice@contoso.com", "--password", "secret", "--dns", pool.dns,
        "--ca", str(pool.ca), "--once", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["fe_fqdn"] in (FE1, FE2) and result["algorithm"] == "SHA-256"
    proc = _run_client(
        "register", "sip:alice@contoso.com", "--password", "secret", "--dns", pool.dns,
        "--ca", str(pool.ca), "--once", "--subscribe",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("registered sip:alice@contoso.com on "), proc.stdout
    proc = _run_client(
        "register", "sip:bob@fabrikam.com", "--password", "x", "--dns", pool.dns,
        "--ca", str(pool.ca), "--once",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no SRV record" in proc.stderr
    proc = _run_client("register", "sip:alice@contoso.com", "--password", "x", "--once")
    assert proc.returncode == 2 and "--dns" in proc.stderr


@pytest.mark.network
def test_cli_register_keeps_registration_until_sigterm(pool: Pool) -> None:
    proc = subprocess.Popen(
        _client_cmd(
            "register", "sip:alice@contoso.com", "--password", "secret", "--dns", pool.dns,
            "--ca", str(pool.ca),
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        line = lines.get(timeout=DEADLINE)
        assert line.startswith("registered: sip:alice@contoso.com on "), line
        fqdn = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert fqdn in (FE1, FE2)
        assert pool.bindings(fqdn, "sip:alice@contoso.com")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
        rest = []
        with contextlib.suppress(queue.Empty):
            while True:
                rest.append(lines.get(timeout=2))
        assert "unregistered sip:alice@contoso.com\n" in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.network
def test_cli_load_registers_fifty_users(pool: Pool) -> None:
    proc = _run_client(
        "load", "--users", str(LOAD_USERS), "--password", "demo", "--dns", pool.dns,
        "--ca", str(pool.ca), "--concurrency", "20", "--hold", "1", "--json", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["succeeded"] == LOAD_USERS and report["failed"] == 0, report
    assert sum(report["per_fe"].values()) == LOAD_USERS
    assert set(report["per_fe"]) <= {FE1, FE2}
    assert report["unregistered"] == LOAD_USERS
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    progress = [line for line in proc.stderr.splitlines() if line.startswith("progress:")]
    assert len(progress) == 10 and "(100%)" in progress[-1], proc.stderr


# ============================================================ re-homing (a topology pool)

REHOME_BLOCK = "127.0.44"
REHOME_USERS = 40  # user0001 for the single-client test, the rest for `client load`


def _three_fe_layout(root: Path) -> PoolLayout:
    """``examples/contoso.toml`` for :data:`REHOME_BLOCK` (:func:`pooltools.write_topology`)
    cut down to its first three FEs -- the smallest pool where one FE down leaves a quorum
    (2 of 3), so the others accept backup mode -- with quick heartbeats and re-home batches."""
    layout = write_topology(root, REHOME_BLOCK, heartbeat_interval=0.5, heartbeat_timeout=2.0)
    doc = tomlkit.parse(layout.path.read_text())
    del doc["pools"][0]["front_ends"][3]
    doc["settings"]["rehome_batch_interval"] = 0.5
    layout.path.write_text(tomlkit.dumps(doc))
    layout.fes = layout.fes[:3]
    return layout


@pytest.fixture(scope="module")
def rehome_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePool]:
    """DNS + three FEs, each ``registrar serve --topology FILE --fe FQDN``; users 1-40."""
    root = tmp_path_factory.mktemp("rehome-pool")
    live = None
    for attempt in range(3):
        live = LivePool(_three_fe_layout(root / f"attempt{attempt + 1}"), users=REHOME_USERS)
        try:
            live.prepare()
            live.start()
            break
        except PoolStartError as exc:
            live.close()
            if "cannot listen" not in str(exc) or attempt == 2:
                raise
    assert live is not None
    try:
        yield live
    finally:
        live.close()


def _order(layout: PoolLayout, aor: str) -> list[FeInfo]:
    """The AOR's commissioned FEs in logical-sequence order (primary first)."""
    return [layout.fe(sid) for sid in layout.sequence(aor) if sid in layout.ids]


def _only_down(pool: LivePool, down: FeInfo) -> None:
    """Every FE running but ``down`` (SIGKILLed); wait until the others see exactly each other
    up and accept backup mode."""
    layout = pool.layout
    others = [fe for fe in layout.fes if fe.fqdn != down.fqdn]
    for fe in others:
        if not pool.running(fe.fqdn):
            pool.start_fe(fe.fqdn)
    if pool.running(down.fqdn):
        pool.kill_fe(down.fqdn)
    pool.wait_views(
        {fe.server_id for fe in others}, fes=[fe.fqdn for fe in others], timeout=30, settled=True
    )


class Prefer(random.Random):
    """Randomness whose shuffle puts one address first: the client tries that FE first."""

    def __init__(self, first: str) -> None:
        super().__init__(5)
        self.first = first

    def shuffle(self, x: Any) -> None:  # type: ignore[override]
        x.sort(key=lambda ip: ip != self.first)


@pytest.mark.network
async def test_deactivated_notify_sends_the_client_home_through_the_301(
    rehome_pool: LivePool,
) -> None:
    """user0001's primary FE is down: the client registers in backup mode on the next FE of
    its sequence and subscribes to reg there. The primary comes back: the backup FE re-homes
    (its batch removes the binding with reason deactivated, sends the NOTIFY, closes the
    flow); the client registers again from DNS -- the backup FE first, whose 301 sends it
    home -- exactly once, and ends registered on its primary, not in backup mode."""
    pool = rehome_pool
    layout = pool.layout
    aor = aor_of(1)
    home, backup, _ = _order(layout, aor)
    await asyncio.to_thread(_only_down, pool, home)
    events = Recorder()
    stop = asyncio.Event()
    client = PoolClient(
        aor, DEMO_PASSWORD, layout.dns_text, layout.ca, on_event=events, subscribe=True,
        rng=Prefer(backup.ip), retry_base=0.2,
    )  # fmt: skip
    task = asyncio.create_task(client.run(stop))
    try:
        first = await eventually(
            lambda: client.subscribed and client.result,
            message=f"never registered and subscribed: {events.names()}",
        )
        assert (first.fe_fqdn, first.backup, first.primary) == (backup.fqdn, True, home.fqdn)
        await eventually(
            lambda: _full_notify_listing(client, first.contact), message="no full NOTIFY"
        )
        rows = await asyncio.to_thread(pool.bindings_of, backup.fqdn, aor)
        assert [r["backup"] for r in rows if r["contact"] == first.contact] == [True], rows

        await asyncio.to_thread(pool.start_fe, home.fqdn)
        second = await eventually(
            lambda: (
                client.registered
                and client.result is not None
                and client.result.fe_fqdn == home.fqdn
                and client.result
            ),
            timeout=60,
            message=f"not re-homed to {home.fqdn}: {events.names()}\n{pool.log_tails()}",
        )
        names = events.names()
        moved_at = names.index("deactivated")
        (deactivated,) = events.of("deactivated")
        assert deactivated["fe_fqdn"] == backup.fqdn and deactivated["contact"] == first.contact
        after = events.events[moved_at:]
        assert [n for n, _ in after].count("registered") == 1, names
        (again,) = [info for name, info in after if name == "registered"]
        assert again["reason"] == "deactivated" and again["fe_fqdn"] == home.fqdn
        assert again["redirects"] == 1 and again["backup"] is False and again["mode"] == "primary"
        assert "dns" in [n for n, _ in after], "the re-registration must start from DNS"
        assert [i["source"] for n, i in after if n == "redirected"] == ["pool.contoso.com"]
        assert "flow-lost" not in names  # the close after the NOTIFY was expected
        assert client.reregistrations == {"deactivated": 1}
        assert second.contact != first.contact

        rows = await asyncio.to_thread(pool.bindings_of, home.fqdn, aor)
        assert [r["backup"] for r in rows if r["contact"] == second.contact] == [False], rows
        assert await asyncio.to_thread(pool.bindings_of, backup.fqdn, aor) == []
        await eventually(
            lambda: client.subscribed and events.of("subscribed")[-1]["fe_fqdn"] == home.fqdn,
            message=f"not subscribed again on {home.fqdn}: {events.names()}",
        )
        assert not task.done()
    finally:
        await _end_run(client, stop, task)


_LIVE = re.compile(
    r"^live: [\d.]+s, registered (\d+)/(\d+), backup mode (\d+), subscribed (\d+); "
    r"per FE: (.*); re-registrations: (.*)$"
)


def _parse_live(line: str) -> dict[str, Any] | None:
    """A ``--report-interval`` line as ``registered``, ``users``, ``backup``, ``subscribed``,
    ``per_fe`` and ``again`` (reason → count), or ``None`` for other lines."""
    match = _LIVE.match(line)
    if match is None:
        return None

    def pairs(text: str) -> dict[str, int]:
        out = {}
        for item in text.split(", "):
            if item and item != "-":
                key, _, value = item.rpartition(" ")
                out[key] = int(value)
        return out

    registered, users, backup, subscribed, per_fe, again = match.groups()
    return {
        "registered": int(registered),
        "users": int(users),
        "backup": int(backup),
        "subscribed": int(subscribed),
        "per_fe": pairs(per_fe),
        "again": pairs(again),
    }


@pytest.mark.network
def test_cli_load_subscribed_users_go_home_and_the_report_says_so(rehome_pool: LivePool) -> None:
    """``client load --subscribe --hold -1 --report-interval 0.5 --json`` with one FE down:
    its users register in backup mode; when it is back, the live line shows them going home
    (deactivated), and the final JSON report has the re-registrations by reason and the FE
    distribution at the end -- every user on its primary."""
    pool = rehome_pool
    layout = pool.layout
    home = _order(layout, aor_of(1))[0]
    _only_down(pool, home)
    first, count = 2, REHOME_USERS - 1
    aors = [aor_of(n) for n in range(first, first + count)]
    primaries = {aor: layout.primary(aor).fqdn for aor in aors}
    moving = [aor for aor, fqdn in primaries.items() if fqdn == home.fqdn]
    assert moving, "no test user has the stopped FE as primary"
    proc = subprocess.Popen(
        _client_cmd(
            "load", "--users", str(count), "--first", str(first), "--password", DEMO_PASSWORD,
            "--dns", layout.dns_text, "--ca", str(layout.ca), "--concurrency", "20",
            "--subscribe", "--hold", "-1", "--report-interval", "0.5", "--json",
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stderr is not None
    stderr = proc.stderr
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in stderr))
    reader.start()

    def latest() -> dict[str, Any] | None:
        for line in reversed(lines):
            parsed = _parse_live(line)
            if parsed is not None:
                return parsed
        return None

    def tail() -> str:
        return "\n".join(lines[-15:])

    try:
        before = wait_until_live(
            lambda: (s := latest()) and s["registered"] == count and s["subscribed"] == count and s,
            proc,
            f"the users never all registered and subscribed:\n{tail()}",
        )
        assert before["backup"] == len(moving), before
        assert home.fqdn not in before["per_fe"]

        pool.start_fe(home.fqdn)
        expected = dict(Counter(primaries.values()))
        after = wait_until_live(
            lambda: (
                (s := latest())
                and s["per_fe"] == expected
                and s["backup"] == 0
                and s["subscribed"] == count
                and s
            ),
            proc,
            f"never back home (want {expected}):\n{tail()}\n{pool.log_tails()}",
            timeout=90,
        )
        assert after["again"]["deactivated"] == len(moving), after
        assert list(after["again"])[:3] == list(REREGISTER_REASONS)
        rows = pool.bindings_many((home.fqdn, aor) for aor in moving)
        assert all(len(v) == 1 and v[0]["backup"] is False for v in rows.values()), rows
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        reader.join(10)
    assert proc.returncode == 0, out + tail()
    report = json.loads(out)
    assert report["failures"] == {} and report["succeeded"] == count, report
    assert report["subscribe"] is True and report["backup_mode"] == len(moving)
    hold = report["hold"]
    assert hold["reregistrations_by_reason"] == {
        "deactivated": len(moving), "flow-lost": 0, "refresh": 0,
    }, hold  # fmt: skip
    assert hold["reregistrations"] == len(moving) == hold["deactivations"]
    assert hold["flow_losses"] == 0, hold
    final = report["final"]
    assert final["per_fe"] == expected and final["registered"] == count, final
    assert final["backup_mode"] == 0 and final["subscribed"] == count, final
    assert report["unregistered"] == count


def wait_until_live(
    predicate: Callable[[], Any],
    proc: subprocess.Popen[str],
    message: str,
    timeout: float = 60.0,
) -> Any:
    """Poll ``predicate`` (a live line check) until truthy, the load client exits, or
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the load client exited with {proc.returncode}: {message}")
        if time.monotonic() >= deadline:
            raise AssertionError(message)
        time.sleep(0.1)
