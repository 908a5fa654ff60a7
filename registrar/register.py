"""The REGISTER service: RFC 3261 §10.3 step by step, with RFC 5626 outbound, RFC 3327 Path
and digest authentication (RFC 3261 §22, RFC 8760).

Steps, as numbered in RFC 3261 §10.3:

1. The Request-URI must name a domain this FE serves, else ``404`` (it would be proxied; a
   registrar pool does not proxy REGISTER).
2. ``Require`` is handled before (``registrar.checks``).
3. Authentication: digest with ``qop=auth``, realm = the domain; no or unusable credentials
   (unknown scheme, RFC 4475 §3.3.7) → ``401`` with a SHA-256 and an MD5 challenge; a stale
   nonce → ``401`` with ``stale=true``. Unknown users and wrong passwords get the same answer.
   Failures are counted per source address and per AOR (:mod:`registrar.ratelimit`); a blocked
   key gets ``403`` for the cool-down.
4. Authorisation: the credentials must be those of the To AOR's user (checked inside the
   digest verification, so a mismatch looks like a wrong password).
5. The To AOR must be a SIP URI in a served domain, else ``404``.
6. Contact ``*``: only with ``Expires: 0`` and alone, else ``400``; removes every binding whose
   Call-ID differs or whose CSeq is lower.
7. Each Contact: expiry from its ``expires`` parameter, else ``Expires``, else the default;
   below ``min_expires`` (and not 0) → ``423`` with ``Min-Expires``; capped at
   ``max_expires``. A binding with the same key (instance-id + reg-id under outbound, else the
   instance-id, else the contact URI) is refreshed or removed; with the same Call-ID its CSeq
   must be higher, else ``400``. More than ``max_contacts`` bindings → ``403``.
8. ``200 OK`` lists every current binding with its remaining ``expires``, and a ``Date``.

A REGISTER without Contact is a query (RFC 3261 §10.2.3): it changes nothing and returns the
current bindings.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sipstack.auth import (
    AuthStatus,
    DigestVerifier,
    NonceCountTracker,
    NonceManager,
    parse_credentials,
)
from sipstack.errors import SipParseError
from sipstack.headers import NameAddr
from sipstack.message import Request, Response, make_response
from sipstack.transport.flows import Flow
from sipstack.uri import SipUri

from .location import Binding, Event, LocationService, contact_key
from .ratelimit import FailureLimiter
from .users import UserDirectory

__all__ = ["RegisterService", "RegistrarSettings"]

log = logging.getLogger("registrar.register")

# _update builds bindings with positional arguments (a third of the cost of keywords, on the
# path of every REGISTER); this guards against a change of the field order in location.py.
# It passes all but the last, row_id, which the location store sets when it stores the binding.
_BINDING_FIELDS = (
    "aor", "contact", "expires_at", "call_id", "cseq", "q", "instance_id", "reg_id", "flow_id",
    "source", "path", "user_agent", "backup", "registered_at", "row_id",
)  # fmt: skip
if tuple(f.name for f in dataclasses.fields(Binding)) != _BINDING_FIELDS:
    raise ImportError("registrar.register: Binding fields changed; update RegisterService._update")


@dataclass(slots=True)
class RegistrarSettings:
    """Registrar policy (seconds unless noted).

    Attributes:
        domains: SIP domains served (lower case).
        min_expires: shortest non-zero expiry accepted (``423`` below it, RFC 3261 §10.3 step 7).
        max_expires: longest expiry granted (longer requests are shortened).
        default_expires: expiry when neither the Contact nor the request gives one.
        max_contacts: bindings per AOR (``403`` beyond).
        auth: ``"digest"`` or ``"off"``.
        digest_algorithms: challenge algorithms, most preferred first (RFC 8760 §2.4):
            ``("SHA-256", "MD5")`` by default; clients that read only the first challenge and
            know only MD5 (sipp 3.6, older phones) need ``("MD5", ...)`` first.
        max_failures, failure_window, cooldown: authentication failure rate limit, per source
            address (``max_failures * 5``) and per AOR (``max_failures``).
    """

    domains: list[str] = field(default_factory=list)
    min_expires: int = 60
    max_expires: int = 7200
    default_expires: int = 3600
    max_contacts: int = 10
    auth: str = "digest"
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    max_failures: int = 10
    failure_window: float = 60.0
    cooldown: float = 60.0


def _unquote(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


class RegisterService:
    """Serves REGISTER for the FE's domains.

    Args:
        settings: :class:`RegistrarSettings`.
        location: the bindings store.
        users: the user directory (digest HA1s), read in memory.
        nonce_secret: MAC key for stateless nonces (keep it across restarts so outstanding
            nonces stay valid).
        clock: wall clock in seconds (``time.time``).
        server_header: the ``Server`` header value of responses.

    Attributes:
        router: the pool's :class:`registrar.pool.routing.PoolRouter`, or ``None`` for a
            standalone FE. Its ``route(req, aor, transport)`` runs *before* authentication
            (a redirecting FE challenges nobody, DESIGN.md §4 step 4); a non-None response
            (``301``, ``503``) is returned as is. ``backup_primary(aor)`` marks backup-mode
            registrations, whose expiry is capped at ``router.backup_max_expires``.
    """

    def __init__(
        self,
        settings: RegistrarSettings,
        location: LocationService,
        users: UserDirectory | None,
        nonce_secret: bytes,
        *,
        clock: Callable[[], float] = time.time,
        server_header: str = "registrar",
    ) -> None:
        self.settings = settings
        self.location = location
        self.users = users
        self.clock = clock
        self.server_header = server_header
        self.domains = {d.lower() for d in settings.domains}
        nonces = NonceManager(nonce_secret)
        tracker = NonceCountTracker()
        self._verifiers = {
            d: DigestVerifier(nonces, d, tracker=tracker, algorithms=settings.digest_algorithms)
            for d in self.domains
        }
        self.aor_limiter = FailureLimiter(
            settings.max_failures, settings.failure_window, settings.cooldown
        )
        self.src_limiter = FailureLimiter(
            settings.max_failures * 5, settings.failure_window, settings.cooldown
        )
        self.router: Any = None
        self.stats = {"registered": 0, "backup": 0, "challenged": 0, "failed": 0, "blocked": 0}

    # -------------------------------------------------------------------- entry point
    def __call__(self, req: Request, flow: Flow) -> Response:
        """Handle one REGISTER (a :data:`registrar.server.Service`)."""
        ruri = req.request_uri
        domains = self.domains
        if not isinstance(ruri, SipUri) or ruri.host.lower() not in domains:
            return make_response(req, 404, "Domain Not Served Here")
        to_uri = req.to.uri
        if not isinstance(to_uri, SipUri):
            return make_response(req, 404, "Not Found")
        realm = to_uri.host.lower()
        if realm not in domains:
            return make_response(req, 404, "Not Found")
        aor = to_uri.aor()
        if to_uri.scheme == "sips":
            aor = "sip:" + aor[5:]
        router = self.router
        backup_of: str | None = None
        if router is not None:
            decide = getattr(router, "route_register", None)
            if decide is not None:  # one pool decision for the redirect and the backup mode
                redirect, backup_of = decide(req, aor, flow.transport)
            else:
                redirect = router.route(req, aor, flow.transport)
                if redirect is None:
                    backup_of = router.backup_primary(aor)
            if redirect is not None:
                return redirect  # type: ignore[no-any-return]
        now = self.clock()
        if self.settings.auth != "off":
            denied = self.authenticate(req, flow, aor, realm, now)
            if denied is not None:
                return denied
        return self._update(req, flow, aor, now, backup_of)

    # ------------------------------------------------------------------ authentication
    def authenticate(
        self, req: Request, flow: Flow, aor: str, realm: str, now: float
    ) -> Response | None:
        """Digest-authenticate ``req`` as the user of ``aor`` (RFC 3261 §22; realm = domain).

        Returns ``None`` when authenticated, else the response to send: ``401`` with fresh
        challenges (no, unusable, wrong or stale credentials; unknown users look the same),
        or ``403`` while the source address or the AOR is blocked by the failure limit.
        Also used by SUBSCRIBE to the reg event package (a user may watch only its own AOR).
        """
        src_limiter = self.src_limiter
        aor_limiter = self.aor_limiter
        src_key = f"src:{flow.remote[0]}"
        aor_key = f"aor:{aor}"
        if src_limiter.blocked(src_key, now) or aor_limiter.blocked(aor_key, now):
            self.stats["blocked"] += 1
            return make_response(req, 403, "Forbidden")
        verifier = self._verifiers[realm]
        credentials = None
        for value in req.get_all("authorization"):
            try:
                parsed = parse_credentials(value)
            except SipParseError:
                continue
            if parsed.scheme.lower() == "digest" and parsed.realm == realm:
                credentials = parsed
                break
        if credentials is None:
            self.stats["challenged"] += 1
            return self._challenge(req, verifier, now, stale=False)
        users = self.users
        record = None
        if users is not None:
            record = users.snapshot.by_aor.get(aor)
            if record is None:
                record = users.get(aor)  # another spelling of a stored AOR, or unknown

        def ha1(username: str, algorithm: str) -> str | None:
            if record is None or record.username != username:
                return None
            return record.ha1_sha256 if algorithm == "SHA-256" else record.ha1_md5

        result = verifier.verify(credentials, req.method, ha1, now)
        if result.status is AuthStatus.OK:
            aor_limiter.success(aor_key)
            return None
        if result.status is AuthStatus.STALE:
            return self._challenge(req, verifier, now, stale=True)
        self.stats["failed"] += 1
        blocked = aor_limiter.failure(aor_key, now)
        blocked = src_limiter.failure(src_key, now) or blocked
        log.warning(
            "authentication failed for %s from %s %s:%s (%s)%s",
            aor,
            flow.transport,
            *flow.remote,
            result.reason,
            "; now blocked" if blocked else "",
        )
        return self._challenge(req, verifier, now, stale=False)

    def _challenge(
        self, req: Request, verifier: DigestVerifier, now: float, stale: bool
    ) -> Response:
        resp = make_response(req, 401, to_tag=_to_tag(req))
        cl = resp.headers.pop()
        for value in verifier.challenges(now, stale, order=self.settings.digest_algorithms):
            resp.headers.append(("www-authenticate", "WWW-Authenticate", value))
        resp.headers.append(cl)
        return resp

    # ---------------------------------------------------------------------- bindings
    def _update(
        self, req: Request, flow: Flow, aor: str, now: float, backup_of: str | None = None
    ) -> Response:
        """Steps 6-8 for an authorised REGISTER; ``backup_of`` is the primary FE's FQDN when
        this FE serves ``aor`` in pool backup mode (from the router), else ``None``."""
        settings = self.settings
        contacts = req.contacts  # parsed by validate_request; [] without a Contact
        call_id = req.call_id
        cseq = req.cseq.number
        location = self.location
        for contact in contacts:
            if contact.wildcard:
                return self._unregister_all(req, aor, now, contacts, call_id, cseq, backup_of)

        if "supported" in req:  # (a dict look-up after validate_request)
            supported = {t.lower() for t in req.tokens("supported")}
            outbound = "outbound" in supported
        else:
            supported = set()
            outbound = False
        header_expires = req.expires
        max_expires = settings.max_expires
        if backup_of is not None:
            max_expires = min(max_expires, self.router.backup_max_expires)
        min_expires = settings.min_expires
        changes: list[tuple[str, NameAddr, int, str]] = []
        for contact in contacts:
            params = contact.params
            value = params.get("expires") if params else None
            if value is not None:
                expires = int(value)
            elif header_expires is not None:
                expires = header_expires
            else:
                expires = settings.default_expires
            if 0 < expires < min_expires:
                resp = make_response(req, 423)
                resp.headers.insert(-1, ("min-expires", "Min-Expires", str(min_expires)))
                return resp
            if expires > max_expires:
                expires = max_expires
            uri = contact.uri_text or str(contact.uri)
            changes.append((self._key(contact, outbound, uri), contact, expires, uri))

        # Validate the whole request before changing anything (RFC 3261 §10.3: all or nothing).
        current = location.lookup(aor)
        existing = {b.key: b for b in current} if current else {}
        if existing:
            for key, _, _, _ in changes:
                old = existing.get(key)
                if old is not None and old.call_id == call_id and cseq <= old.cseq:
                    return make_response(req, 400, "CSeq Out Of Order")
        if len(existing) + len(changes) > settings.max_contacts:
            after = set(existing)
            for key, _, expires, _ in changes:
                if expires == 0:
                    after.discard(key)
                else:
                    after.add(key)
            if len(after) > settings.max_contacts:
                return make_response(
                    req, 403, f"Too Many Contacts (limit {settings.max_contacts})"
                )

        if not changes:
            return self._ok(req, aor, now, outbound=False, backup_of=backup_of)
        path = tuple(req.values("path")) if "path" in req else ()
        user_agent = req.get("user-agent")
        remote = flow.remote
        source = f"{flow.transport}:{remote[0]}:{remote[1]}"
        flow_id = flow.id if flow.transport != "udp" else None
        backup = backup_of is not None
        used_outbound = False
        for key, contact, expires, uri in changes:
            old = existing.get(key) if existing else None
            if expires == 0:
                if old is not None:
                    location.remove(aor, key, reason="unregistered")
                continue
            params = contact.params
            if params:
                instance = _unquote(params.get("+sip.instance"))
                reg_id = params.get("reg-id")
                reg_id_num = int(reg_id) if reg_id is not None and reg_id.isdigit() else None
                if outbound and instance is not None and reg_id_num is not None:
                    used_outbound = True
                q_text = params.get("q")
                try:
                    q = float(q_text) if q_text is not None else None
                except ValueError:
                    return make_response(req, 400, "Bad q Value")
            else:
                instance = reg_id_num = q = None
            expires_at = now + expires
            binding = Binding(
                aor,
                uri,
                expires_at,
                call_id,
                cseq,
                q,
                instance,
                reg_id_num,
                flow_id,
                source,
                path,
                user_agent,
                backup,
                old.registered_at if old is not None else now,
            )
            reason: Event
            if old is None:
                reason = "created"
            elif old.expires_at > expires_at:
                reason = "shortened"
            else:
                reason = "refreshed" if old.contact == uri else "replaced"
            location.put(binding, reason=reason, key=key)
        stats = self.stats
        stats["registered"] += 1
        if backup:
            stats["backup"] += 1
        return self._ok(
            req,
            aor,
            now,
            outbound=used_outbound,
            path=path if "path" in supported else (),
            backup_of=backup_of,
        )

    def _unregister_all(
        self,
        req: Request,
        aor: str,
        now: float,
        contacts: list[NameAddr],
        call_id: str,
        cseq: int,
        backup_of: str | None,
    ) -> Response:
        """``Contact: *`` (RFC 3261 §10.3 step 6): only alone and with ``Expires: 0``."""
        if len(contacts) != 1 or req.expires != 0:
            return make_response(req, 400, "Wildcard Needs Expires 0 Alone")
        location = self.location
        for binding in location.lookup(aor):
            if binding.call_id == call_id and cseq <= binding.cseq:
                return make_response(req, 400, "CSeq Out Of Order")
        location.remove_aor(aor, reason="unregistered")
        log.info("%s: all bindings removed (wildcard)", aor)
        return self._ok(req, aor, now, outbound=False, backup_of=backup_of)

    @staticmethod
    def _key(contact: NameAddr, outbound: bool, uri: str | None = None) -> str:
        """The key :attr:`Binding.key` will have for this contact (same rules); ``uri`` is
        ``str(contact.uri)`` when the caller has it already."""
        params = contact.params
        instance = _unquote(params.get("+sip.instance")) if params else None
        if instance is None:
            return contact_key(str(contact.uri) if uri is None else uri)
        reg_id = params.get("reg-id")
        if reg_id is None or not reg_id.isdigit():
            return instance
        return f"{instance};{int(reg_id)}"

    def _ok(
        self,
        req: Request,
        aor: str,
        now: float,
        *,
        outbound: bool,
        path: tuple[str, ...] = (),
        backup_of: str | None = None,
    ) -> Response:
        resp = make_response(req, 200, to_tag=_to_tag(req))
        headers = resp.headers
        cl = headers.pop()
        for binding in self.location.lookup(aor):
            left = binding.expires_at - now
            params = f";expires={int(left) if left > 0 else 0}"
            if binding.q is not None:
                params += f";q={binding.q:g}"
            if binding.instance_id is not None:
                params += f';+sip.instance="{binding.instance_id}"'
                if binding.reg_id is not None:
                    params += f";reg-id={binding.reg_id}"
            headers.append(("contact", "Contact", f"<{binding.contact}>{params}"))
        for value in path:
            headers.append(("path", "Path", value))
        if outbound:
            headers.append(("require", "Require", "outbound"))
        if self.router is not None:
            mode = "primary" if backup_of is None else f'backup;primary="{backup_of}"'
            headers.append(("x-registrar-mode", "X-Registrar-Mode", mode))
        headers.append(("supported", "Supported", "path, outbound"))
        headers.append(("date", "Date", _http_date(now)))
        headers.append(("server", "Server", self.server_header))
        headers.append(cl)
        return resp

    def on_flow_closed(self, flow: Flow) -> None:
        """RFC 5626 §7: bindings that depend on a failed flow (outbound, reg-id) are removed;
        the client re-registers over a new flow."""
        for binding in self.location.by_flow(flow.id):
            if binding.reg_id is not None:
                self.location.remove(binding.aor, binding.key, reason="deactivated")


_date_cache: tuple[int, str] = (0, "")


def _http_date(now: float) -> str:
    """RFC 1123 date for the ``Date`` header (RFC 3261 §20.17), cached per second."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, usegmt=True))
    return _date_cache[1]


def _to_tag(req: Request) -> str:
    """A To tag derived from the request: retransmissions get the same tag (RFC 3261 §8.2.6.2)."""
    branch = req.top_via.branch or req.call_id
    return f"{(hash(branch) ^ req.cseq.number) & 0xFFFFFFFF:08x}"
