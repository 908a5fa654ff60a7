"""The method dispatcher of an FE: inspection, then the service registered for the method.

Services register per method (:meth:`Dispatcher.register`); a method nobody registered is
answered ``405 Method Not Allowed`` with ``Allow`` when it is a standard SIP method this FE
will not serve, and ``501 Not Implemented`` otherwise (RFC 3261 §8.2.1, §21.5.2). Every request
an FE receives passes through :meth:`Dispatcher.handle_request`, so this module is compiled
with the hot path (``scripts/build_native.sh``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sipstack.message import Request, Response, make_response
from sipstack.transport.flows import Flow

from .checks import UNDERSTOOD_BODIES, InspectionPolicy, inspect_request

__all__ = ["KNOWN_METHODS", "Dispatcher", "Service"]

log = logging.getLogger("registrar.server")

Service = Callable[[Request, Flow], Response | None]
"""A method handler: returns the response to send now, or ``None`` (no response, or later)."""

# RFC 3261 and its extensions: methods an FE understands even when it does not serve them.
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)


class Dispatcher:
    """Routes valid requests to services by method after :func:`inspect_request`.

    Attributes:
        services: method → :data:`Service`.
        policy: the inspection policy (supported option tags, local hosts).
    """

    def __init__(self, policy: InspectionPolicy, server_header: str) -> None:
        self.services: dict[str, Service] = {}
        self.policy = policy
        self.server_header = server_header
        self.heartbeats: Any = None
        self._allow: tuple[int, str] = (-1, "")  # (len(services) it was built for, value)
        self.register("OPTIONS", self._options)

    def register(self, method: str, service: Service) -> None:
        """Serve ``method`` with ``service`` (replaces an earlier one)."""
        self.services[method] = service
        self._allow = (-1, "")

    @property
    def allow(self) -> str:
        """The ``Allow`` header value: every method with a service, plus ACK/CANCEL."""
        count, value = self._allow
        if count != len(self.services):  # built again after register() (or a direct edit)
            value = ", ".join(sorted(set(self.services) | {"ACK", "CANCEL"}))
            self._allow = (len(self.services), value)
        return value

    def handle_request(self, request: Request, flow: Flow) -> Response | None:
        """Inspect, then dispatch. ACK never gets a response (RFC 3261 §17.2.1)."""
        error = inspect_request(request, self.policy)
        method = request.method
        if error is not None:
            return None if method == "ACK" else error
        service = self.services.get(method)
        if service is not None:
            return service(request, flow)
        if method == "ACK":
            return None  # an ACK outside any transaction we know: absorb (§17.2.3)
        if method == "CANCEL":
            return make_response(request, 481)  # no INVITE transaction to cancel (§9.2)
        if method in KNOWN_METHODS:
            resp = make_response(request, 405)
            resp.add("Allow", self.allow)
            return resp
        resp = make_response(request, 501)
        resp.add("Allow", self.allow)
        return resp

    def handle_response(self, response: Response, flow: Flow) -> None:
        """Responses matching no client transaction are strays: dropped (RFC 3261 §18.1.2)."""
        log.debug("stray %s from %s:%s dropped", response.status, *flow.remote)

    def _options(self, request: Request, flow: Flow) -> Response:
        """OPTIONS (RFC 3261 §11.2): 200 with Allow, Accept, Supported; pool heartbeats
        (DESIGN.md §4) go to the heartbeat service."""
        heartbeats = self.heartbeats
        if heartbeats is not None and request.body and heartbeats.is_heartbeat(request):
            return heartbeats.handle(request, flow)  # type: ignore[no-any-return]
        resp = make_response(request, 200, to_tag=_tag(request))
        headers = resp.headers
        cl = headers.pop()  # keep Content-Length last
        headers.append(("allow", "Allow", self.allow))
        headers.append(("accept", "Accept", _ACCEPT))
        headers.append(("supported", "Supported", _SUPPORTED))
        headers.append(("server", "Server", self.server_header))
        headers.append(cl)
        return resp


_ACCEPT = ", ".join(sorted(UNDERSTOOD_BODIES))
_SUPPORTED = "path, outbound"


def _tag(request: Request) -> str:
    """A To tag derived from the request: retransmissions get the same tag (RFC 3261 §8.2.6.2)."""
    branch = request.top_via.branch or request.call_id
    return "%08x" % (hash((branch, request.cseq.number)) & 0xFFFFFFFF)
