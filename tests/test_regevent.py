"""The reg event package (RFC 3680 over RFC 6665): :mod:`registrar.regevent`.

Two levels:

* in process: :class:`RegEventService` with a real :class:`LocationService` and a fake
  endpoint that records NOTIFYs and answers them (coalescing, deactivated, 481, expiry,
  every SUBSCRIBE error answer, flow fallback);
* a real FE process (``registrar serve``) driven by a small asyncio SIP client over one TCP
  connection: REGISTER, SUBSCRIBE with digest, NOTIFYs for created/unregistered contacts,
  refresh and unsubscribe, and the authorisation and Event checks.

Every wait has a deadline (``asyncio.wait_for``); nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from procs import FeProcess, registrar_command

from registrar.location import Binding, LocationService
from registrar.regevent import RegEventService, RegEventSettings
from registrar.register import RegisterService, RegistrarSettings
from sipstack.auth import answer_challenge, format_credentials, parse_challenge
from sipstack.message import Request, Response, make_response
from sipstack.parser import parse_message
from sipstack.reginfo import CONTENT_TYPE, RegInfo, parse_reginfo
from sipstack.transport.endpoint import SipEndpoint
from sipstack.transport.flows import Address, Flow, FlowTable

DEADLINE = 10.0  # seconds any expected message may take (never asserted as speed)
AOR = "sip:alice@contoso.com"
_n = itertools.count(1)


# =============================================================================== in process


class FakeEndpoint:
    """Stands in for :class:`SipEndpoint`: records NOTIFYs, answers them with ``status``."""

    via_for = staticmethod(SipEndpoint.via_for)

    def __init__(self) -> None:
        self.flows = FlowTable()
        self.notifies: asyncio.Queue[tuple[Request, Flow]] = asyncio.Queue()
        self.status: Callable[[Request], int] = lambda req: 200
        self.gate: asyncio.Event | None = None
        self.connects: list[tuple[str, str, int]] = []
        self.udp: list[Address] = []

    async def request(self, request: Request, flow: Flow) -> Response:
        self.notifies.put_nowait((request, flow))
        if self.gate is not None:
            await self.gate.wait()
        return make_response(request, self.status(request))

    def udp_flow(self, dest: Address) -> Flow | None:
        self.udp.append(dest)
        return make_flow("udp", remote=dest)

    async def connect(
        self, transport: str, host: str, port: int, server_hostname: str | None = None
    ) -> Flow:
        self.connects.append((transport, host, port))
        flow = make_flow(transport, remote=(host, port))
        self.flows.add(flow)
        return flow


def make_flow(transport: str = "tcp", remote: Address = ("192.0.2.10", 40000)) -> Flow:
    def close() -> None:
        flow.closed = True

    flow = Flow(transport, ("127.0.0.1", 5060), remote, lambda data: None, close)
    return flow


def subscribe(
    *,
    ruri: str = AOR,
    expires: int | None = 600,
    event: str | None = "reg",
    to_tag: str | None = None,
    call_id: str | None = None,
    from_tag: str = "ftag",
    cseq: int = 1,
    contact: str | None = "<sip:alice@192.0.2.10:40000;transport=tcp>",
    extra: tuple[str, ...] = (),
) -> Request:
    lines = [
        f"SUBSCRIBE {ruri} SIP/2.0",
        f"Via: SIP/2.0/TCP 192.0.2.10:40000;branch=z9hG4bK{uuid.uuid4().hex[:12]}",
        "Max-Forwards: 70",
        f"From: <{AOR}>;tag={from_tag}",
        f"To: <{ruri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id or uuid.uuid4().hex}",
        f"CSeq: {cseq} SUBSCRIBE",
    ]
    if event is not None:
        lines.append(f"Event: {event}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += [*extra, "Content-Length: 0"]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def binding(contact: str, *, expires: float = 600, **kw: object) -> Binding:
    now = time.time()
    return Binding(
        aor=AOR,
        contact=contact,
        expires_at=now + expires,
        call_id="reg-call",
        cseq=next(_n),
        registered_at=now,
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class Harness:
    service: RegEventService
    location: LocationService
    endpoint: FakeEndpoint
    flow: Flow

    async def notify(self) -> tuple[Request, RegInfo]:
        req, _ = await asyncio.wait_for(self.endpoint.notifies.get(), DEADLINE)
        assert req.method == "NOTIFY"
        assert req.get("content-type") == CONTENT_TYPE
        return req, parse_reginfo(req.body)

    def no_notify_queued(self) -> bool:
        return self.endpoint.notifies.empty()

    async def subscribed(self, **kw: object) -> tuple[Response, Request, RegInfo]:
        resp = self.service(subscribe(**kw), self.flow)  # type: ignore[arg-type]
        assert resp.status == 200, resp
        req, info = await self.notify()
        return resp, req, info


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    location = LocationService(None)
    location.open()
    register = RegisterService(
        RegistrarSettings(domains=["contoso.com"], auth="off"), location, None, b"k" * 32
    )
    endpoint = FakeEndpoint()
    flow = make_flow()
    endpoint.flows.add(flow)
    service = RegEventService(
        endpoint,  # type: ignore[arg-type]
        location,
        register,
        RegEventSettings(min_expires=1, max_per_aor=3, max_total=5),
    )
    yield Harness(service, location, endpoint, flow)
    service.close()
    location.close()


async def test_subscribe_full_then_coalesced_partial(harness: Harness) -> None:
    """200 with Expires and a To tag, a full NOTIFY (version 0), then one partial NOTIFY for
    two contacts added in the same tick."""
    h = harness
    h.location.put(binding("sip:alice@192.0.2.10:40000;transport=tcp"))
    resp, req, info = await h.subscribed()
    assert resp.get("expires") == "600"
    assert resp.to.tag
    assert resp.contacts and "transport=tcp" in str(resp.contacts[0].uri)
    assert len(h.service) == 1
    # The NOTIFY belongs to the dialog: From tag = our To tag, To tag = the subscriber's tag.
    assert req.from_.tag == resp.to.tag and req.to.tag == "ftag"
    assert req.call_id == resp.call_id
    assert req.get("event") == "reg"
    state = req.get("subscription-state") or ""
    assert re.fullmatch(r"active;expires=(\d+)", state) and int(state.split("=")[1]) <= 600
    assert req.uri == "sip:alice@192.0.2.10:40000;transport=tcp"
    assert (info.version, info.state) == (0, "full")
    (reg,) = info.registrations
    assert (reg.aor, reg.state) == (AOR, "active")
    assert [(c.state, c.event) for c in reg.contacts] == [("active", "registered")]

    h.location.put(binding("sip:alice@192.0.2.20:1111"))
    h.location.put(binding("sip:alice@192.0.2.21:2222"))
    req, info = await h.notify()
    assert (info.version, info.state) == (1, "partial")
    contacts = info.registrations[0].contacts
    assert sorted(c.uri for c in contacts) == [
        "sip:alice@192.0.2.20:1111",
        "sip:alice@192.0.2.21:2222",
    ]
    assert {(c.state, c.event) for c in contacts} == {("active", "created")}
    assert all(c.expires and 590 <= c.expires <= 600 for c in contacts)
    await h.service.wait_idle(timeout=DEADLINE)
    assert h.no_notify_queued()


async def test_deactivated_contacts(harness: Harness) -> None:
    """Re-homing (DESIGN.md §4) removes bindings with reason "deactivated": one NOTIFY per
    subscription, contacts terminated/deactivated, registration terminated when none is left."""
    h = harness
    b1 = binding("sip:alice@192.0.2.10:40000;transport=tcp", instance_id="<urn:uuid:1>", reg_id=1)
    b2 = binding("sip:alice@192.0.2.11:40001;transport=tcp")
    h.location.put(b1)
    h.location.put(b2)
    _, _, info = await h.subscribed()
    assert len(info.registrations[0].contacts) == 2
    ids = {c.uri: c.id for c in info.registrations[0].contacts}

    h.location.remove(AOR, b2.key, reason="deactivated")
    _, info = await h.notify()
    (reg,) = info.registrations
    assert reg.state == "active"  # b1 is still there
    (c,) = reg.contacts
    assert (c.uri, c.state, c.event, c.id) == (
        b2.contact,
        "terminated",
        "deactivated",
        ids[b2.contact],
    )

    h.location.put(b2)
    h.location.remove_aor(AOR, reason="deactivated")
    _, info = await h.notify()
    (reg,) = info.registrations
    assert reg.state == "terminated"
    assert {(c.uri, c.state, c.event) for c in reg.contacts} == {
        (b1.contact, "terminated", "deactivated"),
        (b2.contact, "terminated", "deactivated"),
    }
    (inst,) = [c for c in reg.contacts if c.uri == b1.contact]
    assert (inst.instance, inst.reg_id) == ("<urn:uuid:1>", 1)
    # Re-adding b2 and removing both in one tick: one NOTIFY (version 2), b2's "created"
    # superseded by its removal.
    assert info.version == 2
    await h.service.wait_idle(timeout=DEADLINE)
    assert h.no_notify_queued()


async def test_one_notify_in_flight(harness: Harness) -> None:
    """Changes made while a NOTIFY waits for its answer go into the next NOTIFY."""
    h = harness
    await h.subscribed()
    h.endpoint.gate = asyncio.Event()
    h.location.put(binding("sip:alice@192.0.2.30:1"))
    _, info = await h.notify()
    assert [c.event for c in info.registrations[0].contacts] == ["created"]
    h.location.put(binding("sip:alice@192.0.2.31:1"))
    h.location.put(binding("sip:alice@192.0.2.32:1"))
    h.location.remove(AOR, "sip:alice@192.0.2.30:1", reason="unregistered")
    assert h.no_notify_queued()
    h.endpoint.gate.set()
    _, info = await h.notify()
    assert info.version == 2
    assert sorted((c.uri, c.event) for c in info.registrations[0].contacts) == [
        ("sip:alice@192.0.2.30:1", "unregistered"),
        ("sip:alice@192.0.2.31:1", "created"),
        ("sip:alice@192.0.2.32:1", "created"),
    ]


async def test_replaced_contact(harness: Harness) -> None:
    """An instance re-registering from a new URI: old contact terminated, new one created."""
    h = harness
    old = binding("sip:alice@192.0.2.10:1;transport=tcp", instance_id="<urn:uuid:9>")
    h.location.put(old)
    await h.subscribed()
    new = binding("sip:alice@192.0.2.99:2;transport=tcp", instance_id="<urn:uuid:9>")
    h.location.put(new, reason="replaced")
    _, info = await h.notify()
    got = sorted((c.uri, c.state, c.event) for c in info.registrations[0].contacts)
    assert got == [
        (old.contact, "terminated", "unregistered"),
        (new.contact, "active", "created"),
    ]


async def test_expired_binding(harness: Harness) -> None:
    h = harness
    h.location.put(binding("sip:alice@192.0.2.10:1", expires=0.2))
    await h.subscribed()
    h.location.sweep(time.time() + 1)
    _, info = await h.notify()
    ((uri, state, event),) = [(c.uri, c.state, c.event) for c in info.registrations[0].contacts]
    assert (uri, state, event) == ("sip:alice@192.0.2.10:1", "terminated", "expired")
    assert info.registrations[0].state == "terminated"


async def test_notify_481_ends_subscription(harness: Harness) -> None:
    h = harness
    await h.subscribed()
    h.endpoint.status = lambda req: 481
    h.location.put(binding("sip:alice@192.0.2.40:1"))
    await h.notify()
    await h.service.wait_idle(timeout=DEADLINE)
    assert len(h.service) == 0
    h.location.put(binding("sip:alice@192.0.2.41:1"))
    await h.service.wait_idle(timeout=DEADLINE)
    assert h.no_notify_queued()


@pytest.mark.parametrize("status", [408, 503])
async def test_notify_timeout_or_transport_error_ends_subscription(
    harness: Harness, status: int
) -> None:
    h = harness
    h.endpoint.status = lambda req: status
    await h.subscribed()
    await h.service.wait_idle(timeout=DEADLINE)
    assert len(h.service) == 0


async def test_notify_other_error_keeps_subscription(harness: Harness) -> None:
    h = harness
    h.endpoint.status = lambda req: 500
    await h.subscribed()
    await h.service.wait_idle(timeout=DEADLINE)
    assert len(h.service) == 1


async def test_expiry_sends_terminated_timeout(harness: Harness) -> None:
    h = harness
    await h.subscribed(expires=1)
    req, info = await h.notify()
    assert req.get("subscription-state") == "terminated;reason=timeout"
    assert info.version == 1 and info.state == "full"
    assert len(h.service) == 0


async def test_refresh_and_unsubscribe(harness: Harness) -> None:
    h = harness
    resp, _, _ = await h.subscribed(call_id="dlg-1")
    tag = resp.to.tag
    ok = h.service(subscribe(call_id="dlg-1", to_tag=tag, cseq=2, expires=120), h.flow)
    assert ok.status == 200 and ok.get("expires") == "120"
    req, info = await h.notify()
    assert (info.version, info.state) == (1, "full")
    assert req.get("subscription-state", "").startswith("active;expires=")
    # Out of order CSeq.
    assert h.service(subscribe(call_id="dlg-1", to_tag=tag, cseq=1), h.flow).status == 500
    # Unknown dialog, other event id.
    assert h.service(subscribe(call_id="nope", to_tag=tag, cseq=5), h.flow).status == 481
    assert (
        h.service(subscribe(call_id="dlg-1", to_tag=tag, cseq=5, event="reg;id=7"), h.flow).status
        == 481
    )
    bye = h.service(subscribe(call_id="dlg-1", to_tag=tag, cseq=6, expires=0), h.flow)
    assert bye.status == 200 and bye.get("expires") == "0"
    assert len(h.service) == 0
    req, info = await h.notify()
    assert req.get("subscription-state") == "terminated;reason=timeout"
    assert info.version == 2
    assert h.service(subscribe(call_id="dlg-1", to_tag=tag, cseq=7), h.flow).status == 481


async def test_fetch(harness: Harness) -> None:
    """Expires: 0 on a new SUBSCRIBE: 200 and one NOTIFY terminated (RFC 6665 §4.4.3)."""
    h = harness
    h.location.put(binding("sip:alice@192.0.2.10:1"))
    resp = h.service(subscribe(expires=0), h.flow)
    assert resp.status == 200 and resp.get("expires") == "0"
    req, info = await h.notify()
    assert req.get("subscription-state") == "terminated;reason=timeout"
    assert info.registrations[0].contacts[0].uri == "sip:alice@192.0.2.10:1"
    assert len(h.service) == 0


async def test_error_answers(harness: Harness) -> None:
    h = harness
    svc, flow = h.service, h.flow
    bad_event = svc(subscribe(event="presence"), flow)
    assert bad_event.status == 489 and bad_event.get("allow-events") == "reg"
    assert svc(subscribe(event=None), flow).status == 489
    assert svc(subscribe(ruri="sip:alice@fabrikam.com"), flow).status == 404
    short = svc(subscribe(expires=None), flow)  # no Expires: the default
    assert short.status == 200 and short.get("expires") == "3600"
    tiny = RegEventSettings(min_expires=60)
    svc.settings, saved = tiny, svc.settings
    too_short = svc(subscribe(expires=10), flow)
    assert too_short.status == 423 and too_short.get("min-expires") == "60"
    assert svc(subscribe(expires=99999), flow).get("expires") == "7200"
    svc.settings = saved
    not_acceptable = svc(subscribe(extra=("Accept: application/pidf+xml",)), flow)
    assert not_acceptable.status == 406 and not_acceptable.get("accept") == CONTENT_TYPE
    assert (
        svc(subscribe(extra=("Accept: application/reginfo+xml, text/plain",)), flow).status == 200
    )
    assert svc(subscribe(contact=None), flow).status == 400
    bad = svc(subscribe(expires=None, extra=("Expires: soon",)), flow)
    assert bad.status == 400 and (bad.get("warning") or "").startswith("399 ")
    assert svc(subscribe(contact="<sip:a@b>, <sip:c@d>"), flow).status == 400
    # max_per_aor = 3: three live already (default, 7200, Accept ok)
    assert len(svc) == 3
    assert svc(subscribe(), flow).status == 403
    # max_total = 5
    for user in ("bob", "carol"):
        assert svc(subscribe(ruri=f"sip:{user}@contoso.com"), flow).status == 200
    full = svc(subscribe(ruri="sip:dave@contoso.com"), flow)
    assert full.status == 503 and full.get("retry-after")


async def test_pool_router_redirects(harness: Harness) -> None:
    """In a pool, a subscription for an AOR served by another FE gets the router's 301."""
    seen: list[tuple[str, str]] = []

    class Router:
        def route(self, req: Request, aor: str, transport: str) -> Response | None:
            seen.append((aor, transport))
            if aor == "sip:bob@contoso.com":
                resp = make_response(req, 301)
                resp.add("Contact", "<sip:fe2.contoso.com:5061;transport=tls>")
                return resp
            return None

    h = harness
    h.service.register.router = Router()
    assert h.service(subscribe(ruri="sip:Bob@contoso.com"), h.flow).status == 301
    assert h.service(subscribe(), h.flow).status == 200
    assert seen == [("sip:bob@contoso.com", "tcp"), (AOR, "tcp")]


async def test_closed_flow_reconnects_to_contact(harness: Harness) -> None:
    h = harness
    await h.subscribed(contact="<sip:alice@192.0.2.50:5070;transport=tcp>")
    h.flow.close()
    h.endpoint.flows.remove(h.flow)
    h.location.put(binding("sip:alice@192.0.2.60:1"))
    _, flow = await asyncio.wait_for(h.endpoint.notifies.get(), DEADLINE)
    assert h.endpoint.connects == [("tcp", "192.0.2.50", 5070)]
    assert flow.remote == ("192.0.2.50", 5070)


async def test_udp_subscriber_notified_at_contact(harness: Harness) -> None:
    h = harness
    udp = make_flow("udp", remote=("192.0.2.70", 5099))
    resp = h.service(subscribe(contact="<sip:alice@192.0.2.71:5062>"), udp)
    assert resp.status == 200
    _, flow = await asyncio.wait_for(h.endpoint.notifies.get(), DEADLINE)
    assert flow.transport == "udp" and flow.remote == ("192.0.2.71", 5062)
    # A Contact with a host name: the source address instead.
    resp = h.service(subscribe(contact="<sip:alice@phone.example.com>"), udp)
    assert resp.status == 200
    _, flow = await asyncio.wait_for(h.endpoint.notifies.get(), DEADLINE)
    assert flow.remote == ("192.0.2.70", 5099)


def test_len_without_loop() -> None:
    """Location changes with no subscription cost one dict look-up and never need a loop."""
    location = LocationService(None)
    location.open()
    register = RegisterService(
        RegistrarSettings(domains=["contoso.com"], auth="off"), location, None, b"k" * 32
    )
    service = RegEventService(FakeEndpoint.__new__(FakeEndpoint), location, register)  # type: ignore[arg-type]
    location.put(binding("sip:alice@192.0.2.10:1"))
    assert len(service) == 0
    service.close()
    location.close()


# ============================================================================== live FE


@dataclass
class SipClient:
    """A tiny UAC/UAS over one asyncio TCP connection: sends requests (answering digest
    challenges), collects incoming requests (NOTIFY) and answers them."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    username: str
    password: str
    pending: dict[str, asyncio.Future[Response]] = field(default_factory=dict)
    incoming: asyncio.Queue[Request] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, addr: tuple[str, int], username: str, password: str) -> SipClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), DEADLINE)
        client = cls(reader, writer, username, password)
        client.task = asyncio.create_task(client._read())
        return client

    @property
    def local(self) -> tuple[str, int]:
        name = self.writer.get_extra_info("sockname")
        return name[0], name[1]

    async def _read(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await self._read_one()

    async def _read_one(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        head = head.lstrip(b"\r\n")
        if not head.strip():
            return
        m = re.search(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\d+)", head, re.IGNORECASE)
        body = await self.reader.readexactly(int(m.group(1))) if m else b""
        msg = parse_message(head + body)
        if isinstance(msg, Response):
            future = self.pending.get(msg.top_via.branch or "")
            if future is not None and not future.done() and msg.status >= 200:
                future.set_result(msg)
        else:
            self.incoming.put_nowait(msg)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def send(
        self,
        method: str,
        ruri: str,
        *,
        to: str,
        call_id: str,
        cseq: int,
        from_tag: str,
        to_tag: str | None = None,
        headers: tuple[str, ...] = (),
        authorization: str | None = None,
    ) -> Response:
        host, port = self.local
        branch = f"z9hG4bK{uuid.uuid4().hex}"
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/TCP {host}:{port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.username}@contoso.com>;tag={from_tag}",
            f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            *headers,
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines.append("Content-Length: 0")
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.pending[branch] = future
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            return await asyncio.wait_for(future, DEADLINE)
        finally:
            del self.pending[branch]

    async def send_auth(
        self, method: str, ruri: str, dialog: ClientDialog, **kw: object
    ) -> Response:
        """Send; on 401 answer the challenge (MD5) and send again with the next CSeq."""
        dialog.cseq += 1
        resp = await self.send(
            method, ruri, call_id=dialog.call_id, cseq=dialog.cseq, from_tag=dialog.from_tag,
            to=dialog.to, to_tag=dialog.to_tag, **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        if resp.status != 401:
            return resp
        challenges = [parse_challenge(v) for v in resp.get_all("www-authenticate")]
        challenge = next(c for c in challenges if (c.algorithm or "MD5").upper() == "MD5")
        creds = answer_challenge(
            challenge,
            username=self.username,
            password=self.password,
            method=method,
            uri=ruri,
            cnonce=uuid.uuid4().hex[:16],
        )
        dialog.cseq += 1
        return await self.send(
            method, ruri, call_id=dialog.call_id, cseq=dialog.cseq, from_tag=dialog.from_tag,
            to=dialog.to, to_tag=dialog.to_tag, authorization=format_credentials(creds),
            **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    async def next_request(self) -> Request:
        return await asyncio.wait_for(self.incoming.get(), DEADLINE)

    def answer(self, request: Request, status: int = 200) -> None:
        self.writer.write(make_response(request, status).encode())


@dataclass
class ClientDialog:
    to: str
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    from_tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    to_tag: str | None = None
    cseq: int = 0


def add_user(db: Path, aor: str, password: str) -> None:
    proc = subprocess.run(
        [*registrar_command(), "users", "add", aor, "--password", password, "--users-db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def reg_fe(tmp_path: Path, start_fe: Callable[..., FeProcess]) -> FeProcess:
    db = tmp_path / "users.db"
    add_user(db, AOR, "alice-pw")
    add_user(db, "sip:bob@contoso.com", "bob-pw")
    return start_fe(
        transports=("tcp", "udp"),
        admin=True,
        args=[
            "--domain", "contoso.com", "--users-db", str(db),
            "--digest-algorithms", "MD5,SHA-256",
        ],
    )  # fmt: skip


def _contact(client: SipClient, name: str) -> str:
    host, port = client.local
    return f"sip:{name}@{host}:{port};transport=tcp"


async def _notify(client: SipClient, dialog: ClientDialog) -> tuple[Request, RegInfo]:
    req = await client.next_request()
    assert req.method == "NOTIFY", req
    assert req.call_id == dialog.call_id
    assert req.to.tag == dialog.from_tag and req.from_.tag == dialog.to_tag
    assert req.get("event") == "reg"
    assert req.get("content-type") == CONTENT_TYPE
    client.answer(req, 200)
    return req, parse_reginfo(req.body)


@pytest.mark.network
async def test_live_reg_event(reg_fe: FeProcess) -> None:
    """REGISTER A, SUBSCRIBE (401, then 200), full NOTIFY with A; REGISTER B → partial
    NOTIFY B created; unregister A → A terminated/unregistered; refresh → full NOTIFY;
    unsubscribe → final NOTIFY terminated; the dialog is then gone (481)."""
    client = await SipClient.connect(reg_fe.addr("tcp"), "alice", "alice-pw")
    try:
        contact_a, contact_b = _contact(client, "alice-a"), _contact(client, "alice-b")
        registration = ClientDialog(to=AOR)
        ok = await client.send_auth(
            "REGISTER", "sip:contoso.com", registration,
            headers=(f"Contact: <{contact_a}>", "Expires: 600"),
        )  # fmt: skip
        assert ok.status == 200, ok

        sub = ClientDialog(to=AOR)
        resp = await client.send_auth(
            "SUBSCRIBE", AOR, sub,
            headers=(
                "Event: reg", "Accept: application/reginfo+xml", "Expires: 600",
                f"Contact: <{_contact(client, 'alice-a')}>",
            ),
        )  # fmt: skip
        assert resp.status == 200, resp
        assert resp.get("expires") == "600"
        sub.to_tag = resp.to.tag
        assert sub.to_tag

        req, info = await _notify(client, sub)
        assert re.fullmatch(r"active;expires=\d+", req.get("subscription-state") or "")
        assert (info.version, info.state) == (0, "full")
        (reg,) = info.registrations
        assert (reg.aor, reg.state) == (AOR, "active")
        assert [(c.uri, c.state) for c in reg.contacts] == [(contact_a, "active")]

        ok = await client.send_auth(
            "REGISTER", "sip:contoso.com", registration,
            headers=(f"Contact: <{contact_b}>", "Expires: 600"),
        )  # fmt: skip
        assert ok.status == 200, ok
        _, info = await _notify(client, sub)
        assert (info.version, info.state) == (1, "partial")
        (reg,) = info.registrations
        assert reg.state == "active"
        assert [(c.uri, c.state, c.event) for c in reg.contacts] == [
            (contact_b, "active", "created")
        ]

        ok = await client.send_auth(
            "REGISTER", "sip:contoso.com", registration,
            headers=(f"Contact: <{contact_a}>;expires=0",),
        )  # fmt: skip
        assert ok.status == 200, ok
        _, info = await _notify(client, sub)
        assert (info.version, info.state) == (2, "partial")
        (reg,) = info.registrations
        assert reg.state == "active"  # B is still registered
        assert [(c.uri, c.state, c.event) for c in reg.contacts] == [
            (contact_a, "terminated", "unregistered")
        ]

        refreshed = await client.send_auth(
            "SUBSCRIBE", _contact_uri(resp), sub, headers=("Event: reg", "Expires: 300"),
        )  # fmt: skip
        assert refreshed.status == 200, refreshed
        assert refreshed.get("expires") == "300"
        _, info = await _notify(client, sub)
        assert (info.version, info.state) == (3, "full")
        assert [c.uri for c in info.registrations[0].contacts] == [contact_b]

        bye = await client.send_auth(
            "SUBSCRIBE", _contact_uri(resp), sub, headers=("Event: reg", "Expires: 0"),
        )  # fmt: skip
        assert bye.status == 200, bye
        req, info = await _notify(client, sub)
        assert (req.get("subscription-state") or "").startswith("terminated")
        assert "reason=timeout" in (req.get("subscription-state") or "")
        assert info.version == 4

        gone = await client.send_auth(
            "SUBSCRIBE", _contact_uri(resp), sub, headers=("Event: reg", "Expires: 300"),
        )  # fmt: skip
        assert gone.status == 481, gone
        assert client.incoming.empty()
    finally:
        await client.close()


def _contact_uri(resp: Response) -> str:
    return str(resp.contacts[0].uri)


@pytest.mark.network
async def test_live_subscribe_refusals(reg_fe: FeProcess) -> None:
    """Alice's credentials do not let her watch bob (401 again); an unknown Event gets 489
    with Allow-Events; another domain 404."""
    client = await SipClient.connect(reg_fe.addr("tcp"), "alice", "alice-pw")
    try:
        contact = f"Contact: <{_contact(client, 'alice-a')}>"
        bob = "sip:bob@contoso.com"
        resp = await client.send_auth(
            "SUBSCRIBE", bob, ClientDialog(to=bob), headers=("Event: reg", contact),
        )  # fmt: skip
        assert resp.status == 401, resp

        resp = await client.send_auth(
            "SUBSCRIBE", AOR, ClientDialog(to=AOR), headers=("Event: presence", contact),
        )  # fmt: skip
        assert resp.status == 489, resp
        assert "reg" in (resp.get("allow-events") or "")

        other = "sip:alice@fabrikam.com"
        resp = await client.send_auth(
            "SUBSCRIBE", other, ClientDialog(to=other), headers=("Event: reg", contact),
        )  # fmt: skip
        assert resp.status == 404, resp
        assert client.incoming.empty()
    finally:
        await client.close()
