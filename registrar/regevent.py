"""The ``reg`` event package (RFC 3680) over SIP-specific event notification (RFC 6665).

A user agent subscribes to its own AOR's registrations (``SUBSCRIBE sip:alice@contoso.com``,
``Event: reg``) and is told of every change of its bindings: a NOTIFY with the full state
first, then a partial NOTIFY per change. The pool uses it to tell clients that their
registration was moved away (re-homing, DESIGN.md §4: bindings removed with the reason
``"deactivated"`` become ``<contact state="terminated" event="deactivated">``).

SUBSCRIBE (RFC 6665 §4.2.1, RFC 3680 §4):

1. ``Event`` must name the ``reg`` package, else ``489 Bad Event`` with ``Allow-Events: reg``
   (RFC 6665 §8.2.1; a missing Event too).
2. A request with a To tag is in-dialog (refresh or unsubscribe, step 8); one matching no
   subscription gets ``481``.
3. The Request-URI (or, when it has no user part, the To URI) is the AOR; its domain must be
   served here, else ``404``.
   In a pool, a new subscription must reach the AOR's current registrar (where its
   bindings are): the REGISTER service's pool router answers ``301`` to it (or ``503``)
   exactly as for REGISTER, before authentication (DESIGN.md §4).
4. The subscriber must authenticate as that AOR's user (digest through
   :meth:`RegisterService.authenticate`, realm = the domain): ``401``/``403`` otherwise, and
   someone else's credentials look like a wrong password (RFC 3680 §6 authorisation: only
   the AOR's owner may watch it). Not asked when the registrar runs with ``--auth off``.
5. ``Accept``, when present, must allow ``application/reginfo+xml``, else ``406``.
6. ``Expires``: absent → ``default_expires``; below ``min_expires`` (and not 0) → ``423``
   with ``Min-Expires``; above ``max_expires`` → shortened. ``Expires: 0`` on a new
   subscription is a fetch (RFC 6665 §4.4.3): ``200`` and one NOTIFY with the state and
   ``Subscription-State: terminated;reason=timeout``.
7. Limits: ``max_per_aor`` subscriptions per AOR → ``403``; ``max_total`` in all → ``503``
   with ``Retry-After``. A SUBSCRIBE needs one Contact (the dialog's remote target), else
   ``400``. The answer is ``200`` (RFC 6665 §4.2.1.1 allows 200 or 202) with ``Expires``,
   a To tag and a Contact; the subscription dialog is created (RFC 3261 §12.1.1) and the
   first NOTIFY (version 0, full state, ``Subscription-State: active;expires=N``) follows.
8. In-dialog SUBSCRIBE: authenticated again; CSeq lower than the last one → ``500``
   (RFC 3261 §12.2.2); ``Expires: 0`` unsubscribes (``200``, then a final NOTIFY with
   ``terminated;reason=timeout``, RFC 6665 §4.2.1.4); otherwise the expiry is reset and a
   full NOTIFY is sent (RFC 6665 §4.2.1.2).

NOTIFY (RFC 6665 §4.2.2, RFC 3680 §5):

* Changes come from the location service listener (``callback(event, aor, binding)``);
  every change of one event-loop tick is coalesced into one partial NOTIFY per subscription
  (scheduled with ``loop.call_soon``), so a REGISTER touching several contacts, or an AOR
  re-homed as a whole, yields one NOTIFY. A subscription has at most one NOTIFY in flight;
  changes that arrive meanwhile go into the next one. ``version`` counts up from 0 per
  subscription.
* Contact events: ``created``, ``refreshed``, ``shortened`` (state active); ``expired``,
  ``unregistered``, ``deactivated`` (state terminated). A binding whose contact URI was
  replaced under the same key (RFC 5626 §6) is reported as the old contact ``terminated``/
  ``unregistered`` and the new one ``active``/``created``. A contact's ``id`` is a hash of
  the AOR, its binding key and its URI: the same contact keeps its id in every NOTIFY.
* The registration element is ``active`` while the AOR has an active contact, else
  ``terminated`` in a partial document and ``init`` in a full one.
* Transport: over the TCP/TLS connection the SUBSCRIBE (or its latest refresh) came on while
  it is open (connection reuse, RFC 5923 / RFC 5626 §5.3); else over an open connection to,
  or a new one to, the dialog's next hop (first Route, else the remote target). UDP
  subscriptions are notified at the remote target (the Contact) when its host is an IP
  address, else at the SUBSCRIBE's source address.
* A NOTIFY answered ``481``, timing out (``408``), failing in transport (``503``), or
  answered with another status that ends a dialog usage (RFC 5057 §5.2: 404, 405, 410, 416,
  480, 482-485, 489, 501, 604) ends the subscription without further NOTIFY.
* Expiry of a subscription sends a final NOTIFY ``terminated;reason=timeout`` (RFC 6665
  §4.2.2).

The service keeps everything in memory: subscriptions do not survive a restart (clients
re-subscribe when a NOTIFY or refresh fails, RFC 6665 §4.1.2.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol

from sipstack.dialog import Dialog, DialogError, DialogId
from sipstack.errors import SipParseError
from sipstack.headers import parse_name_addr, parse_params
from sipstack.message import Request, Response, make_response
from sipstack.reginfo import CONTENT_TYPE, ContactInfo, RegInfo, Registration
from sipstack.transport.flows import Address, Flow, FlowTable
from sipstack.uri import SipUri, parse_uri

from .location import Binding, LocationService
from .register import RegisterService

__all__ = ["PACKAGE", "RegEventService", "RegEventSettings", "Subscription"]

log = logging.getLogger("registrar.regevent")

PACKAGE = "reg"
"""The event package name (RFC 3680 §3.1)."""

TERMINATING_STATUSES = frozenset(
    {404, 405, 408, 410, 416, 480, 481, 482, 483, 484, 485, 489, 501, 503, 604}
)
"""NOTIFY answers that end the subscription (RFC 6665 §4.2.2: 481 and timeouts; RFC 5057
§5.2: statuses that end the dialog usage; 503 is what a transport failure synthesises)."""

_ACCEPTABLE = frozenset({CONTENT_TYPE, "application/*", "*/*"})
_ACTIVE_EVENTS = frozenset({"created", "refreshed", "shortened", "replaced"})


@dataclass(slots=True)
class RegEventSettings:
    """Policy of the reg event package (seconds unless noted).

    Attributes:
        default_expires: subscription duration when SUBSCRIBE has no ``Expires``.
        min_expires: shortest non-zero duration accepted (``423`` with ``Min-Expires`` below).
        max_expires: longest duration granted (longer requests are shortened).
        max_per_aor: subscriptions per AOR (``403`` beyond).
        max_total: subscriptions on this FE (``503`` with ``Retry-After`` beyond).
        retry_after: the ``Retry-After`` of that ``503``.
        connect_timeout: seconds to open a connection to a subscriber whose connection closed.
        contact_host: host to put in our Contact when the local address of the subscriber's
            flow is a wildcard (``0.0.0.0``); ``None``: the Request-URI's host.
    """

    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 7200
    max_per_aor: int = 10
    max_total: int = 10000
    retry_after: int = 60
    connect_timeout: float = 5.0
    contact_host: str | None = None


class NotifyEndpoint(Protocol):
    """What the service needs of :class:`sipstack.transport.endpoint.SipEndpoint`."""

    flows: FlowTable

    async def request(self, request: Request, flow: Flow) -> Response:
        """Send ``request`` in a client transaction and return the final response."""
        ...

    @staticmethod
    def via_for(flow: Flow) -> str:
        """A Via value with a fresh branch for a request sent over ``flow``."""
        ...

    def udp_flow(self, dest: Address) -> Flow | None:
        """A UDP flow to ``dest`` from the first UDP socket."""
        ...

    async def connect(
        self, transport: str, host: str, port: int, server_hostname: str | None = None
    ) -> Flow:
        """Open (or reuse) a TCP/TLS connection."""
        ...


@dataclass(eq=False, slots=True)
class Subscription:
    """One reg event subscription (RFC 6665 §4.1; notifier side).

    Attributes:
        aor: normalised AOR watched, ``"sip:alice@contoso.com"``.
        dialog: the subscription dialog (we are its UAS).
        event_id: the ``id`` parameter of the SUBSCRIBE's Event header, or ``None``.
        flow: the flow the SUBSCRIBE (or its latest refresh) arrived on.
        contact: our Contact header value for this dialog.
        expires_at: event-loop time (``loop.time()`` seconds) when it expires.
        version: the version of the next reginfo document (0 for the first NOTIFY).
        full_pending: the next NOTIFY carries the full state.
        final_reason: set once the subscription ends: the next NOTIFY is the last one, with
            ``Subscription-State: terminated;reason=<final_reason>``.
        pending: changed contacts for the next partial NOTIFY, by contact id.
    """

    aor: str
    dialog: Dialog
    event_id: str | None
    flow: Flow
    contact: str
    expires_at: float
    version: int = 0
    full_pending: bool = True
    final_reason: str | None = None
    pending: dict[str, ContactInfo] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    scheduled: bool = False

    @property
    def event_header(self) -> str:
        """The Event header value of its NOTIFYs (``reg``, or ``reg;id=...``)."""
        return PACKAGE if self.event_id is None else f"{PACKAGE};id={self.event_id}"


@dataclass(slots=True)
class _Watched:
    """The subscriptions of one AOR and the bindings last seen (key -> binding), which tell
    the old contact URI of a ``replaced`` binding."""

    subs: list[Subscription] = field(default_factory=list)
    bindings: dict[str, Binding] = field(default_factory=dict)


class RegEventService:
    """Serves SUBSCRIBE to the ``reg`` event package and sends its NOTIFYs.

    Args:
        endpoint: the FE's :class:`~sipstack.transport.endpoint.SipEndpoint` (NOTIFYs are its
            client transactions).
        location: the location service; the service adds a listener to it.
        register_service: the REGISTER service: its domains, its ``settings.auth`` and its
            :meth:`~registrar.register.RegisterService.authenticate`.
        settings: :class:`RegEventSettings` (defaults when ``None``).
        server_header: the ``Server`` header value of responses.

    ``len(service)`` is the number of live subscriptions. Call :meth:`close` at shutdown.
    """

    def __init__(
        self,
        endpoint: NotifyEndpoint,
        location: LocationService,
        register_service: RegisterService,
        settings: RegEventSettings | None = None,
        *,
        server_header: str = "registrar",
    ) -> None:
        self.endpoint = endpoint
        self.location = location
        self.register = register_service
        self.settings = settings or RegEventSettings()
        self.server_header = server_header
        self._by_dialog: dict[DialogId, Subscription] = {}
        self._by_aor: dict[str, _Watched] = {}
        self._busy: set[Subscription] = set()
        self.stats = {"subscribed": 0, "notified": 0, "notify_failed": 0, "terminated": 0}
        # Only the changes of watched AORs reach _on_change (the location store checks).
        location.add_listener(self._on_change, self._by_aor)

    def __len__(self) -> int:
        """Number of live subscriptions (ended ones still sending their last NOTIFY excluded)."""
        return len(self._by_dialog)

    def subscriptions(self, aor: str | None = None) -> list[Subscription]:
        """The live subscriptions, of one normalised AOR or of all."""
        if aor is None:
            return list(self._by_dialog.values())
        watched = self._by_aor.get(aor)
        return list(watched.subs) if watched is not None else []

    # ------------------------------------------------------------------ SUBSCRIBE
    def __call__(self, req: Request, flow: Flow) -> Response:
        """Handle one SUBSCRIBE (a :data:`registrar.server.Service`).

        A malformed header the answer depends on (Event, Expires, Contact, Accept ...) gets
        the :class:`~sipstack.errors.SipParseError` status (``400``) with a ``Warning``.
        """
        try:
            package, event_id = _parse_event(req.get("event"))
            if package != PACKAGE:
                resp = make_response(req, 489)
                _add(resp, "Allow-Events", PACKAGE)
                return resp
            if req.to.tag is not None:
                return self._in_dialog(req, flow, event_id)
            return self._initial(req, flow, event_id)
        except SipParseError as exc:
            resp = make_response(req, exc.status)
            reason = exc.reason.replace('"', "'").replace("\\", "/")[:200]
            _add(resp, "Warning", f'399 {self.server_header.split("/")[0]} "{reason}"')
            return resp

    def _initial(self, req: Request, flow: Flow, event_id: str | None) -> Response:
        domains = self.register.domains
        ruri = req.request_uri
        if not isinstance(ruri, SipUri) or ruri.host.lower() not in domains:
            return make_response(req, 404, "Domain Not Served Here")
        uri = ruri if ruri.user else req.to.uri
        if not isinstance(uri, SipUri) or not uri.user or uri.host.lower() not in domains:
            return make_response(req, 404, "Not Found")
        aor = "sip:" + uri.aor().split(":", 1)[1]
        realm = uri.host.lower()
        router = getattr(self.register, "router", None)
        if router is not None:  # the bindings live on the AOR's current registrar
            redirect: Response | None = router.route(req, aor, flow.transport)
            if redirect is not None:
                return redirect
        denied = self._authenticate(req, flow, aor, realm)
        if denied is not None:
            return denied
        if "accept" in req:
            types = {v.split(";", 1)[0].strip().lower() for v in req.values("accept")}
            if not types & _ACCEPTABLE:
                resp = make_response(req, 406)
                _add(resp, "Accept", CONTENT_TYPE)
                return resp
        expires = self._expires(req)
        if isinstance(expires, Response):
            return expires
        contacts = req.contacts if "contact" in req else []
        if len(contacts) != 1 or contacts[0].wildcard:
            return make_response(req, 400, "SUBSCRIBE Needs One Contact")
        settings = self.settings
        if expires > 0:
            watched = self._by_aor.get(aor)
            if watched is not None and len(watched.subs) >= settings.max_per_aor:
                return make_response(
                    req, 403, f"Too Many Subscriptions (limit {settings.max_per_aor})"
                )
            if len(self._by_dialog) >= settings.max_total:
                resp = make_response(req, 503)
                _add(resp, "Retry-After", str(settings.retry_after))
                return resp
        resp = make_response(req, 200, to_tag=secrets.token_hex(8))
        for route in req.values("record-route"):
            _add(resp, "Record-Route", route)  # RFC 3261 §12.1.1
        contact = self._our_contact(flow, ruri)
        _add(resp, "Expires", str(expires))
        _add(resp, "Contact", contact)
        _add(resp, "Server", self.server_header)
        try:
            dialog = Dialog.from_uas(req, resp)
        except DialogError as exc:
            return make_response(req, 400, f"Bad Dialog ({exc})"[:100])
        loop = asyncio.get_running_loop()
        sub = Subscription(
            aor=aor,
            dialog=dialog,
            event_id=event_id,
            flow=flow,
            contact=contact,
            expires_at=loop.time() + expires,
        )
        if expires == 0:  # a fetch (RFC 6665 §4.4.3): one NOTIFY, then done
            sub.final_reason = "timeout"
            log.info("%s: reg state fetched from %s %s:%s", aor, flow.transport, *flow.remote)
        else:
            self._index(sub)
            sub.timer = loop.call_at(sub.expires_at, self._on_expired, sub)
            self.stats["subscribed"] += 1
            log.info(
                "%s: reg subscription from %s %s:%s for %ds",
                aor,
                flow.transport,
                *flow.remote,
                expires,
            )
        self._schedule(sub)
        return resp

    def _in_dialog(self, req: Request, flow: Flow, event_id: str | None) -> Response:
        key = (req.call_id, req.to.tag or "", req.from_.tag or "")
        sub = self._by_dialog.get(key)
        if sub is None or sub.event_id != event_id:
            return make_response(req, 481, "Subscription Does Not Exist")
        realm = sub.aor.rsplit("@", 1)[1]
        denied = self._authenticate(req, flow, sub.aor, realm)
        if denied is not None:
            return denied
        if not sub.dialog.receive_request(req):
            return make_response(req, 500, "CSeq Out Of Order")
        expires = self._expires(req)
        if isinstance(expires, Response):
            return expires
        resp = make_response(req, 200)
        _add(resp, "Expires", str(expires))
        _add(resp, "Contact", sub.contact)
        _add(resp, "Server", self.server_header)
        if expires == 0:
            log.info("%s: reg subscription ended by the subscriber", sub.aor)
            self._end(sub, "timeout")
            return resp
        try:
            sub.dialog.update_remote_target(req)
        except DialogError as exc:
            return make_response(req, 400, f"Bad Contact ({exc})"[:100])
        sub.flow = flow
        loop = asyncio.get_running_loop()
        sub.expires_at = loop.time() + expires
        if sub.timer is not None:
            sub.timer.cancel()
        sub.timer = loop.call_at(sub.expires_at, self._on_expired, sub)
        sub.full_pending = True
        sub.pending.clear()
        self._schedule(sub)
        return resp

    def _authenticate(self, req: Request, flow: Flow, aor: str, realm: str) -> Response | None:
        if self.register.settings.auth == "off":
            return None
        return self.register.authenticate(req, flow, aor, realm, time.time())

    def _expires(self, req: Request) -> int | Response:
        """The granted duration in seconds, or the ``423`` to send."""
        settings = self.settings
        expires = req.expires
        if expires is None:
            expires = settings.default_expires
        if 0 < expires < settings.min_expires:
            resp = make_response(req, 423)
            _add(resp, "Min-Expires", str(settings.min_expires))
            return resp
        return min(expires, settings.max_expires)

    def _our_contact(self, flow: Flow, ruri: SipUri) -> str:
        host, port = flow.local
        if host in ("0.0.0.0", "::", ""):
            host = self.settings.contact_host or ruri.host
            port = 0
        elif ":" in host:
            host = f"[{host}]"
        hostport = f"{host}:{port}" if port else host
        return f"<sip:{hostport};transport={flow.transport}>"

    # ------------------------------------------------------------------ bookkeeping
    def _index(self, sub: Subscription) -> None:
        self._by_dialog[sub.dialog.dialog_id] = sub
        watched = self._by_aor.get(sub.aor)
        if watched is None:
            watched = self._by_aor[sub.aor] = _Watched()
            watched.bindings = {b.key: b for b in self.location.lookup(sub.aor)}
        watched.subs.append(sub)

    def _unindex(self, sub: Subscription) -> bool:
        """Forget a subscription; False if it was not live."""
        if self._by_dialog.pop(sub.dialog.dialog_id, None) is None:
            return False
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        watched = self._by_aor.get(sub.aor)
        if watched is not None:
            with contextlib.suppress(ValueError):
                watched.subs.remove(sub)
            if not watched.subs:
                del self._by_aor[sub.aor]
        self.stats["terminated"] += 1
        return True

    def _end(self, sub: Subscription, reason: str) -> None:
        """End a live subscription with a final NOTIFY (``terminated;reason=...``)."""
        if self._unindex(sub):
            sub.final_reason = reason
            sub.pending.clear()
            self._schedule(sub)

    def _on_expired(self, sub: Subscription) -> None:
        sub.timer = None
        log.info("%s: reg subscription expired", sub.aor)
        self._end(sub, "timeout")

    # ------------------------------------------------------------------ location changes
    def _on_change(self, event: str, aor: str, binding: Binding) -> None:
        """Location listener: queue the change for every subscription of ``aor``."""
        watched = self._by_aor.get(aor)
        if watched is None:
            return
        now = time.time()
        key = binding.key
        infos: list[ContactInfo] = []
        if event in _ACTIVE_EVENTS:
            old = watched.bindings.get(key)
            watched.bindings[key] = binding
            if old is not None and old.contact != binding.contact:
                infos.append(_contact_info(aor, old, "terminated", "unregistered", now))
                infos.append(_contact_info(aor, binding, "active", "created", now))
            else:
                name = "created" if event == "replaced" else event
                infos.append(_contact_info(aor, binding, "active", name, now))
        else:  # expired, unregistered, deactivated
            old = watched.bindings.get(key)
            if old is not None and old.contact == binding.contact:
                del watched.bindings[key]
            infos.append(_contact_info(aor, binding, "terminated", event, now))
        for sub in watched.subs:
            if sub.full_pending or sub.final_reason is not None:
                continue  # the next NOTIFY reads the whole state anyway
            pending = sub.pending
            for info in infos:
                prev = pending.get(info.id)
                if prev is not None and prev.event == "created" and info.state == "active":
                    info = dataclasses.replace(info, event="created")
                pending[info.id] = info
            self._schedule(sub)

    # ------------------------------------------------------------------ NOTIFY
    def _schedule(self, sub: Subscription) -> None:
        """Start the subscription's sender on the next loop iteration (changes of this tick
        coalesce), unless it runs already (it picks up the changes when its NOTIFY is done)."""
        if sub.task is not None or sub.scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tests driving the location service alone): nothing to send
        sub.scheduled = True
        self._busy.add(sub)
        loop.call_soon(self._start, sub)

    def _start(self, sub: Subscription) -> None:
        sub.scheduled = False
        if sub.task is None:
            sub.task = asyncio.get_running_loop().create_task(self._pump(sub))
        else:
            self._busy.discard(sub)

    async def _pump(self, sub: Subscription) -> None:
        """Send NOTIFYs one at a time until nothing is pending."""
        try:
            while True:
                final = sub.final_reason
                if final is not None:
                    body = self._full(sub)
                    state = f"terminated;reason={final}"
                elif sub.full_pending:
                    sub.full_pending = False
                    sub.pending.clear()
                    body = self._full(sub)
                    state = self._active_state(sub)
                elif sub.pending:
                    body = self._partial(sub)
                    state = self._active_state(sub)
                else:
                    return
                status = await self._notify(sub, body, state)
                if final is not None:
                    return
                if status in TERMINATING_STATUSES:
                    if self._unindex(sub):
                        log.info("%s: reg subscription ended: NOTIFY answered %d", sub.aor, status)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: reg NOTIFY failed; subscription ended", sub.aor)
            self._unindex(sub)
        finally:
            sub.task = None
            if not sub.scheduled:
                self._busy.discard(sub)

    def _active_state(self, sub: Subscription) -> str:
        left = sub.expires_at - asyncio.get_running_loop().time()
        return f"active;expires={max(int(left), 0)}"

    def _registration_id(self, aor: str) -> str:
        return _digest(aor)

    def _full(self, sub: Subscription) -> bytes:
        """The full-state document (RFC 3680 §5.3): every active contact, ``registered``."""
        now = time.time()
        aor = sub.aor
        bindings = self.location.lookup(aor)
        contacts = [_contact_info(aor, b, "active", "registered", now) for b in bindings]
        registration = Registration(
            aor, self._registration_id(aor), "active" if contacts else "init", contacts
        )
        version = sub.version
        sub.version += 1
        return RegInfo(version, "full", [registration]).to_xml()

    def _partial(self, sub: Subscription) -> bytes:
        """A partial document with the contacts changed since the last NOTIFY."""
        contacts = list(sub.pending.values())
        sub.pending.clear()
        aor = sub.aor
        state = "active" if self.location.count(aor) else "terminated"
        registration = Registration(aor, self._registration_id(aor), state, contacts)
        version = sub.version
        sub.version += 1
        return RegInfo(version, "partial", [registration]).to_xml()

    async def _notify(self, sub: Subscription, body: bytes, state: str) -> int:
        """Send one NOTIFY in the subscription dialog; returns the final status (503 when no
        flow to the subscriber can be had)."""
        flow = await self._flow_for(sub)
        if flow is None:
            self.stats["notify_failed"] += 1
            log.info("%s: no flow to the reg subscriber %s", sub.aor, sub.dialog.remote_target)
            return 503
        req = sub.dialog.create_request("NOTIFY", contact=sub.contact)
        req.remove("Content-Length")
        req.add("Via", self.endpoint.via_for(flow), first=True)
        req.add("Event", sub.event_header)
        req.add("Subscription-State", state)
        req.add("User-Agent", self.server_header)
        req.set_body(body, CONTENT_TYPE)
        response = await self.endpoint.request(req, flow)
        if 200 <= response.status < 300:
            self.stats["notified"] += 1
        else:
            self.stats["notify_failed"] += 1
            log.info(
                "%s: reg NOTIFY to %s answered %d",
                sub.aor,
                sub.dialog.remote_target,
                response.status,
            )
        return response.status

    async def _flow_for(self, sub: Subscription) -> Flow | None:
        """The flow to send the subscription's next NOTIFY over (see the module docstring)."""
        flow = sub.flow
        endpoint = self.endpoint
        if flow.reliable and not flow.closed and endpoint.flows.get(flow.id) is flow:
            return flow
        hop = _next_hop(sub.dialog, flow.transport)
        if hop is None or hop[0] == "udp":
            if hop is not None and _is_ip(hop[1]):
                dest: Address = (hop[1], hop[2])
            elif flow.transport == "udp":
                dest = flow.remote  # the Contact names no address: the source
            else:
                return None
            origin = flow.origin
            if flow.transport == "udp" and hasattr(origin, "flow_to"):
                return origin.flow_to(dest)  # type: ignore[no-any-return]  # same socket
            return endpoint.udp_flow(dest)
        transport, host, port = hop
        existing = endpoint.flows.lookup(transport, host, port)
        if existing is not None and not existing.closed:
            sub.flow = existing
            return existing
        try:
            new = await asyncio.wait_for(
                endpoint.connect(transport, host, port), self.settings.connect_timeout
            )
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
            log.info("%s: cannot connect to %s %s:%s: %s", sub.aor, transport, host, port, exc)
            return None
        sub.flow = new
        return new

    # ------------------------------------------------------------------ lifecycle
    async def wait_idle(self, aor: str | None = None, timeout: float | None = None) -> bool:
        """Wait until the NOTIFYs queued so far (of ``aor``, or of all AORs) are answered.

        For callers that must not pull the rug before the subscriber is told, e.g. re-homing
        (DESIGN.md §4): remove the bindings with reason ``"deactivated"``, ``await
        wait_idle(aor)``, then close the flow.

        Args:
            aor: a normalised AOR, or ``None`` for every subscription.
            timeout: seconds to wait at most (``None``: no limit).

        Returns:
            True when idle, False when ``timeout`` passed first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            await asyncio.sleep(0)  # let scheduled senders start
            tasks = [
                s.task for s in self._busy if s.task is not None and (aor is None or s.aor == aor)
            ]
            waiting = any(s.scheduled and (aor is None or s.aor == aor) for s in self._busy)
            if not tasks and not waiting:
                return True
            if tasks:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return False
                await asyncio.wait(tasks, timeout=left)
            if deadline is not None and loop.time() >= deadline:
                return False

    def close(self) -> None:
        """Stop: cancel timers and NOTIFYs in flight, forget every subscription, and stop
        listening to the location service. Subscribers are not told (they re-subscribe)."""
        self.location.remove_listener(self._on_change)
        for sub in list(self._by_dialog.values()):
            if sub.timer is not None:
                sub.timer.cancel()
        for sub in list(self._busy):
            if sub.task is not None:
                sub.task.cancel()
        self._by_dialog.clear()
        self._by_aor.clear()
        self._busy.clear()


# ------------------------------------------------------------------------------ helpers


def _add(resp: Response, name: str, value: str) -> None:
    """Add a header before the trailing Content-Length of a :func:`make_response` response."""
    resp.add(name, value)
    headers = resp.headers
    for i, (key, _, _) in enumerate(headers):
        if key == "content-length" and i != len(headers) - 1:
            headers.append(headers.pop(i))
            resp.invalidate()
            break


def _parse_event(value: str | None) -> tuple[str | None, str | None]:
    """``(package, id)`` of an Event header (RFC 6665 §8.2.1); ``(None, None)`` if absent.

    The package is lower-cased (event-type tokens compare case-insensitively in practice;
    RFC 6665 §8.2.1 makes them case-sensitive, and every registered name is lower case).
    """
    if value is None:
        return None, None
    package, semi, rest = value.partition(";")
    params = parse_params(semi + rest) if semi else {}
    event_id = next((v for k, v in params.items() if k.lower() == "id"), None)
    return package.strip().lower(), event_id


def _digest(*parts: str) -> str:
    data = "\x00".join(parts).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=6).hexdigest()


def _contact_info(aor: str, b: Binding, state: str, event: str, now: float) -> ContactInfo:
    """The ``<contact>`` of binding ``b`` (RFC 3680 §5.3)."""
    return ContactInfo(
        id=_digest(aor, b.key, b.contact),
        state=state,  # type: ignore[arg-type]
        event=event,  # type: ignore[arg-type]
        uri=b.contact,
        expires=b.remaining(now) if state == "active" else 0,
        q=b.q,
        callid=b.call_id,
        cseq=b.cseq,
        instance=b.instance_id,
        reg_id=b.reg_id,
        duration_registered=max(int(now - b.registered_at), 0) if b.registered_at else None,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _next_hop(dialog: Dialog, default_transport: str) -> tuple[str, str, int] | None:
    """``(transport, host, port)`` of the first Route, else the remote target; ``None`` when
    it does not parse as a SIP URI."""
    try:
        if dialog.route_set:
            uri = parse_name_addr(dialog.route_set[0]).uri
        else:
            uri = parse_uri(dialog.remote_target)
    except SipParseError:
        return None
    if not isinstance(uri, SipUri):
        return None
    transport = uri.transport or ("tls" if uri.scheme == "sips" else default_transport)
    if transport not in ("udp", "tcp", "tls"):
        return None
    host = uri.host.strip("[]")
    port = uri.port or (5061 if transport == "tls" else 5060)
    return transport, host, port
