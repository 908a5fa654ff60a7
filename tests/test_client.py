"""The pool client (registrar/client.py): pure helpers, then real FE processes on loopback.

Live tests run two FEs, ``fe1.contoso.com`` on 127.0.1.1 and ``fe2.contoso.com`` on 127.0.1.2,
on the same TLS port, a tiny DNS server (dnslib) on 127.0.1.53 serving the pool's SRV and A
records, and, for redirects, a fake registrar built on the project's own SipEndpoint. Every
wait has a deadline (DESIGN.md §9); no assertion is about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, SRV, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from procs import REPO, FeProcess, free_port

from registrar.admin import fetch_json, quote
from registrar.client import (
    AuthenticationError,
    PoolClient,
    RegistrationError,
    RegistrationResult,
    SrvRecord,
    TooManyRedirectsError,
    UntrustedServerError,
    backoff_delay,
    build_register,
    client_endpoint,
    granted_expires,
    parse_dns_address,
    parse_redirect,
    parse_retry_after,
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
async def test_flow_loss_reregisters_from_dns_on_the_other_fe(pool: Pool) -> None:
    """SIGKILL the FE holding alice while run() keeps her registered: the client sees the
    connection drop and registers again, through DNS, on the surviving FE."""
    events = Recorder()
    stop = asyncio.Event()
    client = PoolClient(
        "sip:alice@contoso.com", "secret", pool.dns, pool.ca, on_event=events, retry_base=0.2
    )
    task = asyncio.create_task(client.run(stop))
    try:
        first = await eventually(lambda: client.result, message="never registered")
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
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)
        await client.unregister()
        await client.close()


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
    """NOTIFY on a client's flow → 200 and kept; OPTIONS → 200; others → 405 with Allow."""
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
    assert resp is not None and resp.status == 200
    assert list(client.notifications) == [notify]
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


@pytest.mark.network
def test_cli_register_once(pool: Pool) -> None:
    proc = subprocess.run(
        _client_cmd(
            "register", "sip:alice@contoso.com", "--password", "secret", "--dns", pool.dns,
            "--ca", str(pool.ca), "--once", "--json",
        ),
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["fe_fqdn"] in (FE1, FE2) and result["algorithm"] == "SHA-256"
    proc = subprocess.run(
        _client_cmd(
            "register", "sip:bob@fabrikam.com", "--password", "x", "--dns", pool.dns,
            "--ca", str(pool.ca), "--once",
        ),
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no SRV record" in proc.stderr
    proc = subprocess.run(
        _client_cmd("register", "sip:alice@contoso.com", "--password", "x", "--once"),
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
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
    proc = subprocess.run(
        _client_cmd(
            "load", "--users", str(LOAD_USERS), "--password", "demo", "--dns", pool.dns,
            "--ca", str(pool.ca), "--concurrency", "20", "--hold", "1", "--json",
        ),
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
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
