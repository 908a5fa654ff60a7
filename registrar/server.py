"""One front end (FE) process: the SIP endpoint, request inspection and the method dispatcher.

Services register per method (:meth:`Dispatcher.register`); a method nobody registered is
answered ``405 Method Not Allowed`` with ``Allow`` when it is a standard SIP method this FE
will not serve, and ``501 Not Implemented`` otherwise (RFC 3261 §8.2.1, §21.5.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sipstack.framing import FramingLimits
from sipstack.message import Request, Response, make_response
from sipstack.transport.endpoint import EndpointConfig, SipEndpoint
from sipstack.transport.flows import Flow, ListenSpec
from sipstack.transport.tls import server_ssl_context

from . import __version__
from .checks import UNDERSTOOD_BODIES, InspectionPolicy, inspect_request

__all__ = ["Dispatcher", "FrontEnd", "FrontEndConfig", "Service", "run_frontend"]

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


@dataclass(slots=True)
class FrontEndConfig:
    """Settings of one FE process.

    Attributes:
        listen: sockets to open (``tls:127.0.0.1:5061`` ...).
        fqdn: this FE's host name (used in ``Warning`` and to recognise its own URIs).
        cert, key: PEM files for TLS listeners; ca: PEM CA bundle that verifies client
            certificates (peers) when given.
        domains: SIP domains this FE serves (lower case).
        limits: framing limits (bytes, seconds).
    """

    listen: list[ListenSpec]
    fqdn: str = field(default_factory=socket.getfqdn)
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    domains: list[str] = field(default_factory=list)
    limits: FramingLimits = field(default_factory=FramingLimits)


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
        self.register("OPTIONS", self._options)

    def register(self, method: str, service: Service) -> None:
        """Serve ``method`` with ``service`` (replaces an earlier one)."""
        self.services[method] = service

    @property
    def allow(self) -> str:
        """The ``Allow`` header value: every method with a service, plus ACK/CANCEL."""
        return ", ".join(sorted(set(self.services) | {"ACK", "CANCEL"}))

    def handle_request(self, request: Request, flow: Flow) -> Response | None:
        """Inspect, then dispatch. ACK never gets a response (RFC 3261 §17.2.1)."""
        error = inspect_request(request, self.policy)
        if error is not None:
            return None if request.method == "ACK" else error
        service = self.services.get(request.method)
        if service is not None:
            return service(request, flow)
        method = request.method
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
        """OPTIONS (RFC 3261 §11.2): 200 with Allow, Accept, Supported."""
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
    return format(abs(hash((branch, request.cseq.number))) & 0xFFFFFFFF, "08x")


class FrontEnd:
    """One FE: its endpoint and dispatcher. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(self, config: FrontEndConfig) -> None:
        self.config = config
        local = {config.fqdn.lower(), "localhost", *(d.lower() for d in config.domains)}
        local.update(spec.host.lower() for spec in config.listen)
        self.policy = InspectionPolicy(local_hosts=local)
        self.dispatcher = Dispatcher(self.policy, f"registrar/{__version__}")
        server_ssl = None
        if any(spec.transport == "tls" for spec in config.listen):
            if config.cert is None or config.key is None:
                raise ValueError(
                    "a tls listener needs --cert and --key (make them with 'registrar certs init')"
                )
            server_ssl = server_ssl_context(config.cert, config.key, ca=config.ca)
        self.endpoint = SipEndpoint(
            self.dispatcher,
            EndpointConfig(limits=config.limits, server_ssl=server_ssl, warning_agent=config.fqdn),
        )

    async def start(self) -> None:
        """Open every listener. Raises OSError when an address cannot be bound."""
        for spec in self.config.listen:
            bound = await self.endpoint.listen(spec)
            self.policy.local_hosts.add(bound[0])
            log.info("listening on %s (%s:%s)", spec, *bound)

    async def stop(self) -> None:
        """Close listeners and connections."""
        await self.endpoint.close()


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


async def run_frontend(
    config: FrontEndConfig, ready: Callable[[FrontEnd], None] | None = None
) -> int:
    """Run an FE until SIGTERM or SIGINT; returns the process exit code (0 on a clean stop)."""
    raise_fd_limit()
    fe = FrontEnd(config)
    await fe.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("front end %s ready (pid %d)", config.fqdn, os.getpid())
    if ready is not None:
        ready(fe)
    await stop.wait()
    log.info("front end %s stopping", config.fqdn)
    await fe.stop()
    return 0
