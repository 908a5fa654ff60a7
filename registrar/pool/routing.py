"""Registrar routing in a pool: redirect, backup mode, quorum guard (DESIGN.md §4 steps 1-5).

For a REGISTER of AOR ``U`` arriving at FE ``X``:

1. ``U``'s domain is served by another pool of the topology, or ``U``'s home pool (user
   directory) is another pool → ``301`` to that pool's FQDN.
2. ``cur`` = the first commissioned-and-up ID of ``U``'s logical registrar sequence.
3. ``cur == X``: process here; if ``X`` is not ``U``'s primary, the registration is in **backup
   mode** (expiry capped at ``backup_max_expires``; the 200 OK says so in ``X-Registrar-Mode``).
4. ``cur != X``: ``301`` with ``Contact: <sip:{fqdn of cur}:{port};transport=...;maddr={ip}>``
   (the transport and port of the request's own transport when ``cur`` offers it, else TLS;
   ``maddr`` lets clients that cannot resolve FE names, such as sipp, follow it).
5. Quorum guard: backup mode only while this FE sees a strict majority of the pool up, and
   only once it has *settled* (one ``heartbeat_timeout`` after start); else ``503`` with
   ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipstack.message import Request, Response, make_response

from .membership import Membership
from .sequence import current_registrar, logical_sequence, primary_registrar

__all__ = ["BACKUP_HEADER", "PoolRouter", "RouteDecision"]

BACKUP_HEADER = "X-Registrar-Mode"
"""Header of the 200 OK to REGISTER: ``primary`` or ``backup; primary="fe2.contoso.com"``."""


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where an AOR's registrations belong, as this FE sees the pool now.

    Attributes:
        kind: ``"local"`` (this FE is the primary), ``"backup"`` (this FE serves it in backup
            mode), ``"redirect"`` (another FE of the pool), ``"other-pool"``,
            ``"unavailable"`` (quorum lost or not settled, or no FE up).
        target: the FE spec to redirect to (``redirect``), or ``None``.
        primary: the primary FE spec (``None`` when no ID of the sequence is commissioned).
        pool_fqdn: the pool to redirect to (``other-pool``).
        retry_after: seconds, for ``unavailable``.
        current_id, primary_id: server IDs (``None`` when none).
    """

    kind: str
    target: Any = None
    primary: Any = None
    pool_fqdn: str | None = None
    retry_after: int | None = None
    current_id: int | None = None
    primary_id: int | None = None


class PoolRouter:
    """Decides for one FE (DESIGN.md §4). Topology objects are those of
    :mod:`registrar.topology` (``PoolSpec``, ``FrontEndSpec``).

    Args:
        topology: the loaded topology; pool: this FE's pool; self_fe: this FE's spec.
        membership: this FE's :class:`Membership`.
        home_pool: ``aor -> pool FQDN or None`` from the user directory.
        clock: monotonic seconds (the membership's clock).
    """

    def __init__(
        self,
        topology: Any,
        pool: Any,
        self_fe: Any,
        membership: Membership,
        *,
        home_pool: Callable[[str], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topology = topology
        self.pool = pool
        self.self_fe = self_fe
        self.membership = membership
        self.home_pool = home_pool
        self.clock = clock
        self.by_id: dict[int, Any] = {fe.server_id: fe for fe in pool.front_ends}
        self.backup_max_expires: int = int(topology.settings.backup_max_expires)
        self.stats = {"redirected": 0, "backup": 0, "unavailable": 0, "other_pool": 0}

    def update(self, topology: Any, pool: Any, self_fe: Any) -> None:
        """A new topology was loaded (commission/decommission). When this FE is no longer in
        ``pool`` (it is being decommissioned), it is never the current registrar: every AOR
        is redirected to its next registrar."""
        self.topology = topology
        self.pool = pool
        self.self_fe = self_fe
        self.by_id = {fe.server_id: fe for fe in pool.front_ends}
        self.backup_max_expires = int(topology.settings.backup_max_expires)

    # --------------------------------------------------------------------- decisions
    def decide(self, aor: str) -> RouteDecision:
        """The :class:`RouteDecision` for a normalised AOR."""
        domain = aor.rpartition("@")[2]
        if domain not in self.pool.domains:
            other = self.topology.pool_for_domain(domain)
            if other is not None and other.fqdn != self.pool.fqdn:
                return RouteDecision("other-pool", pool_fqdn=other.fqdn)
        if self.home_pool is not None:
            home = self.home_pool(aor)
            if home and home.lower() != self.pool.fqdn.lower():
                return RouteDecision("other-pool", pool_fqdn=home.lower())
        sequence = logical_sequence(aor, self.pool.max_servers)
        by_id = self.by_id
        primary_id = primary_registrar(sequence, by_id)
        membership = self.membership
        current_id = current_registrar(sequence, lambda sid: sid in by_id and membership.is_up(sid))
        primary = by_id.get(primary_id) if primary_id is not None else None
        self_id = self.self_fe.server_id
        if current_id is None:
            return RouteDecision(
                "unavailable", primary=primary, retry_after=5, primary_id=primary_id
            )
        if current_id != self_id:
            return RouteDecision(
                "redirect",
                target=by_id[current_id],
                primary=primary,
                current_id=current_id,
                primary_id=primary_id,
            )
        if primary_id == self_id:
            return RouteDecision(
                "local", primary=primary, current_id=current_id, primary_id=primary_id
            )
        now = self.clock()
        if not membership.settled(now):
            wait = membership.started + membership.timeout - now
            return RouteDecision(
                "unavailable",
                primary=primary,
                retry_after=max(1, math.ceil(wait) + 1),
                current_id=current_id,
                primary_id=primary_id,
            )
        if not membership.quorum():
            return RouteDecision(
                "unavailable",
                primary=primary,
                retry_after=max(1, math.ceil(membership.timeout)),
                current_id=current_id,
                primary_id=primary_id,
            )
        return RouteDecision(
            "backup", primary=primary, current_id=current_id, primary_id=primary_id
        )

    # ------------------------------------------------- the RegisterService router hooks
    def route(self, req: Request, aor: str, transport: str) -> Response | None:
        """``None`` to process here; else the ``301``/``503`` response (no state changes)."""
        return self.route_register(req, aor, transport)[0]

    def route_register(
        self, req: Request, aor: str, transport: str
    ) -> tuple[Response | None, str | None]:
        """:meth:`route` and :meth:`backup_primary` from one :meth:`decide`: ``(None,
        None)`` to process here as the primary, ``(None, primary FQDN)`` to process here in
        backup mode, else ``(the 301/503 response, None)``. The REGISTER service calls this
        once per request instead of deciding three times."""
        decision = self.decide(aor)
        kind = decision.kind
        if kind == "local":
            return None, None
        if kind == "backup":
            return None, decision.primary.fqdn if decision.primary is not None else ""
        return self._refuse(req, decision, transport), None

    def _refuse(self, req: Request, decision: RouteDecision, transport: str) -> Response:
        """The ``301``/``503`` response for a decision that is neither local nor backup."""
        kind = decision.kind
        if kind == "redirect":
            self.stats["redirected"] += 1
            resp = make_response(req, 301)
            resp.headers.insert(
                -1, ("contact", "Contact", self.contact_for(decision.target, transport))
            )
            return resp
        if kind == "other-pool":
            self.stats["other_pool"] += 1
            resp = make_response(req, 301)
            resp.headers.insert(
                -1, ("contact", "Contact", f"<sip:{decision.pool_fqdn};transport=tls>")
            )
            return resp
        self.stats["unavailable"] += 1
        resp = make_response(req, 503)
        resp.headers.insert(-1, ("retry-after", "Retry-After", str(decision.retry_after or 5)))
        return resp

    def backup_primary(self, aor: str) -> str | None:
        """The primary FE's FQDN when this FE serves ``aor`` in backup mode, else ``None``."""
        decision = self.decide(aor)
        if decision.kind == "backup":
            return decision.primary.fqdn if decision.primary is not None else ""
        return None

    @staticmethod
    def contact_for(fe: Any, transport: str) -> str:
        """The redirect Contact for FE spec ``fe``, keeping the client's transport when the FE
        offers it (TCP → ``tcp_port``, UDP → ``udp_port``), else TLS."""
        if transport == "tcp" and fe.tcp_port:
            port, name = fe.tcp_port, "tcp"
        elif transport == "udp" and fe.udp_port:
            port, name = fe.udp_port, "udp"
        else:
            port, name = fe.tls_port, "tls"
        return f"<sip:{fe.fqdn}:{port};transport={name};maddr={fe.ip}>"
