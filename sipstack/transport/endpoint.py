"""The asyncio SIP endpoint: listeners, the flow table, and the path from bytes to a request
handler and back (DESIGN.md §3 "path of a request").

``bytes → transport → framing → parser → validation → Via received/rport → handler →
response → serializer → transport``. The handler (the server's dispatcher) never touches a
socket; the transports never look inside messages beyond framing.

Malformed input never escapes as an exception (DESIGN.md §5): a request that fails parsing or
validation is answered with the :class:`~sipstack.errors.SipParseError` status when a response
can be addressed, otherwise dropped and logged; a malformed response is dropped and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import SipParseError
from ..framing import FramingLimits
from ..headers import split_commas
from ..message import FIRST_VALUES, Request, Response, make_response
from ..parser import parse_message, validate_request, validate_response
from ..transaction import (
    AckReceived,
    CancelReceived,
    ClientTransaction,
    Event,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    TransactionLayer,
    TransactionStateError,
    TransactionTerminated,
    TransactionTimeout,
    TransactionTransportError,
    TransmitMessage,
    new_branch,
)
from .datagram import DatagramEndpoint
from .flows import Address, Flow, FlowTable, ListenSpec
from .stream import StreamConnection

__all__ = ["EndpointConfig", "RequestHandler", "SipEndpoint"]

log = logging.getLogger("sipstack.endpoint")


class RequestHandler(Protocol):
    """The transaction user: the server's dispatcher."""

    def handle_request(self, request: Request, flow: Flow) -> Response | None:
        """Answer a valid request: return the response to send now, or ``None`` when there is
        no response (ACK) or it will be sent later with :meth:`SipEndpoint.send_response`."""

    def handle_response(self, response: Response, flow: Flow) -> None:
        """A valid response arrived (client transactions, heartbeats ...)."""


@dataclass(slots=True)
class EndpointConfig:
    """Endpoint settings.

    Attributes:
        limits: framing limits; ``limits.max_message_size`` (bytes) also bounds UDP datagrams.
        server_ssl: the TLS server context for ``tls`` listeners (DESIGN.md §5).
        client_ssl: the TLS client context for outgoing ``tls`` connections.
        handshake_timeout: seconds allowed for a TLS handshake.
        warning_agent: the host name put in ``Warning: 399`` headers of error responses.
    """

    limits: FramingLimits = field(default_factory=FramingLimits)
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    handshake_timeout: float = 10.0
    warning_agent: str = "registrar"


def _at_once_when_idle(transactions: TransactionLayer, method: str) -> bool:
    """The common case of :meth:`TransactionLayer.answers_at_once`, decided here in compiled
    code (the layer's method runs interpreted): a method other than INVITE, ACK and CANCEL
    while no server transaction is live, under the layer's cap. ``False`` means "ask the
    layer", not "no" (RFC 3261 §17.2.2; the rules and their tests are the layer's)."""
    if method == "INVITE" or method == "ACK" or method == "CANCEL" or transactions.server_table:
        return False
    cap = transactions.max_transactions
    return cap is None or len(transactions.client_table) < cap


class SipEndpoint:
    """Listens on TLS/TCP/UDP sockets and connects the transports to a :class:`RequestHandler`.

    Args:
        handler: the transaction user.
        config: :class:`EndpointConfig`.

    Counters in :attr:`stats` (``received``, ``malformed``, ``dropped``, ``sent``) are for
    the admin interface.
    """

    def __init__(self, handler: RequestHandler, config: EndpointConfig | None = None) -> None:
        self.handler = handler
        self.config = config or EndpointConfig()
        self.flows = FlowTable()
        self._servers: list[asyncio.AbstractServer] = []
        self._udp: dict[tuple[str, int], DatagramEndpoint] = {}
        self._streams: set[StreamConnection] = set()
        self.listening: list[tuple[ListenSpec, Address]] = []
        self.stats = {"received": 0, "malformed": 0, "dropped": 0, "sent": 0}
        self.on_flow_closed_hooks: list[Callable[[Flow], None]] = []
        self.transactions = TransactionLayer()
        self._pending: dict[ClientTransaction, asyncio.Future[Response]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------ listeners
    async def listen(self, spec: ListenSpec) -> Address:
        """Open one listening socket; returns the bound (ip, port) (port 0 picks one).

        Raises:
            OSError: the address cannot be bound.
            ValueError: a ``tls`` listener without ``config.server_ssl``.
        """
        loop = asyncio.get_running_loop()
        limits = self.config.limits
        if spec.transport == "udp":
            transport, proto = await loop.create_datagram_endpoint(
                lambda: DatagramEndpoint(self), local_addr=(spec.host, spec.port)
            )
            sock = transport.get_extra_info("socket")
            if sock is not None:
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            bound = transport.get_extra_info("sockname")
            self._udp[(bound[0], bound[1])] = proto
        else:
            ssl_ctx = None
            if spec.transport == "tls":
                ssl_ctx = self.config.server_ssl
                if ssl_ctx is None:
                    raise ValueError(f"listener {spec}: TLS needs a certificate (--cert/--key)")

            def factory() -> StreamConnection:
                conn = StreamConnection(self, spec.transport, limits)
                return conn

            server = await loop.create_server(
                factory,
                spec.host,
                spec.port,
                ssl=ssl_ctx,
                ssl_handshake_timeout=self.config.handshake_timeout if ssl_ctx else None,
                backlog=4096,
                reuse_address=True,
            )
            self._servers.append(server)
            listening: Any = server  # uvloop's .sockets is a list, asyncio's a tuple
            bound = listening.sockets[0].getsockname()
        address = (bound[0], bound[1])
        self.listening.append((spec, address))
        return address

    async def close(self) -> None:
        """Stop listening and close every connection."""
        for server in self._servers:
            server.close()
        for flow in self.flows:
            flow.close()
        for udp in self._udp.values():
            udp.close()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()
        self._udp.clear()

    # ---------------------------------------------------------------- FlowSink callbacks
    def on_flow_opened(self, flow: Flow) -> None:
        self.flows.add(flow)

    def on_flow_closed(self, flow: Flow) -> None:
        self.flows.remove(flow)
        self._process(self.transactions.transport_error(flow, self._now()), flow)
        for hook in self.on_flow_closed_hooks:
            hook(flow)

    def on_framing_error(self, flow: Flow, status: int, reason: str, head: bytes = b"") -> None:
        self.stats["malformed"] += 1
        log.warning(
            "framing error from %s %s:%s: %s %s", flow.transport, *flow.remote, status, reason
        )
        if head:  # the header block arrived whole: answer (513, 400) before the flow closes
            self._answer_from_head(head, flow, status, reason)

    def on_message(self, data: bytes, flow: Flow) -> None:
        """Parse, validate and dispatch one message. Never raises."""
        self.stats["received"] += 1
        datagram = flow.transport == "udp"
        try:
            msg = parse_message(data, datagram=datagram)
        except SipParseError as exc:
            self._reject_unparsable(data, flow, exc)
            return
        try:
            if type(msg) is Request:
                self._on_request(msg, flow, len(data))
            else:
                assert isinstance(msg, Response)
                try:
                    validate_response(msg)
                except SipParseError as exc:
                    self.stats["malformed"] += 1
                    log.info("dropped malformed response from %s:%s: %s", *flow.remote, exc.reason)
                    return
                self._process(self.transactions.receive_response(msg, flow, self._now()), flow)
        except Exception:  # a bug in a service must not stop the FE (DESIGN.md §5)
            log.exception("error handling a message from %s %s:%s", flow.transport, *flow.remote)
            if isinstance(msg, Request) and msg.method != "ACK":
                with contextlib.suppress(Exception):
                    self.send_response(make_response(msg, 500), flow)

    def _on_request(self, req: Request, flow: Flow, size: int) -> None:
        if size > self.config.limits.max_message_size:
            self.stats["malformed"] += 1
            self._answer_error(req, flow, SipParseError("Message Too Large", 513))
            return
        try:
            validate_request(req)
        except SipParseError as exc:
            self.stats["malformed"] += 1
            log.info(
                "malformed %s from %s %s:%s: %s",
                req.method,
                flow.transport,
                *flow.remote,
                exc.reason,
            )
            if req.method != "ACK":
                self._answer_error(req, flow, exc)
            return
        self._stamp_via(req, flow)
        reliable = flow.transport != "udp"
        transactions = self.transactions
        if _at_once_when_idle(transactions, req.method) or transactions.answers_at_once(req):
            # A non-INVITE request that no live server transaction matches: the TU answers
            # first. RFC 3261 §17.2.2: Timer J is zero on a reliable transport, so a final
            # response sent at once needs no transaction. Over UDP a challenge (401/407) is
            # sent statelessly too (§8.2.7, as a stateless UAS: a retransmission is simply
            # challenged again), so only requests that changed state hold a transaction for
            # Timer J. See TransactionLayer.answers_at_once.
            response = self.handler.handle_request(req, flow)
            if response is not None:
                status = response.status
                if (200 <= status <= 699 and reliable) or status == 401 or status == 407:
                    self._send_raw_response(response, flow)
                    return
            # no answer yet, a provisional one, or a final one over UDP: a transaction
            # carries it from here (and absorbs the request's retransmissions)
            loop = self._loop or self._get_loop()
            events = transactions.receive_request(req, flow, loop.time(), reliable=reliable)
            if response is not None:
                for event in events:
                    if type(event) is RequestReceived:
                        self._respond(event.transaction, response)  # type: ignore[attr-defined]
                        break
            self._arm()
            return
        loop = self._loop or self._get_loop()
        events = transactions.receive_request(req, flow, loop.time(), reliable=reliable)
        self._dispatch(events, flow)
        self._arm()

    # ----------------------------------------------------------------- transactions
    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        return loop

    def _now(self) -> float:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def _process(self, events: list[Event], flow: Flow) -> None:
        """Carry out the transaction layer's events (sans-I/O → I/O), then re-arm the timer."""
        self._dispatch(events, flow)
        self._arm()

    def _dispatch(self, events: list[Event], flow: Flow) -> None:
        """:meth:`_process` without re-arming the transaction timer (the caller does, once)."""
        for event in events:
            kind = type(event)
            if kind is TransmitMessage:
                message = event.message  # type: ignore[attr-defined]
                if type(message) is Response or isinstance(message, Response):
                    self._send_raw_response(message, event.dest)  # type: ignore[attr-defined]
                else:
                    self._send_request_bytes(message, event.dest)  # type: ignore[attr-defined]
            elif kind is RequestReceived:
                response = self.handler.handle_request(event.request, flow)  # type: ignore[attr-defined]
                if response is not None:
                    self._respond(event.transaction, response)  # type: ignore[attr-defined]
            elif kind is TransactionTerminated:
                txn = event.transaction  # type: ignore[attr-defined]
                if isinstance(txn, ClientTransaction):
                    self._resolve(txn, make_response(txn.request, 408))
            elif kind is AckReceived:
                assert isinstance(event, AckReceived)
                self.handler.handle_request(event.request, flow)
            elif kind is CancelReceived:
                assert isinstance(event, CancelReceived)
                self._on_cancel(event)
            elif kind is ResponseReceived:
                assert isinstance(event, ResponseReceived)
                if event.response.status >= 200:
                    self._resolve(event.transaction, event.response)
            elif kind is StrayResponse:
                assert isinstance(event, StrayResponse)
                self.handler.handle_response(event.response, flow)
            elif kind is TransactionTimeout or kind is TransactionTransportError:
                txn = event.transaction  # type: ignore[attr-defined]
                if isinstance(txn, ClientTransaction):
                    status = 408 if kind is TransactionTimeout else 503
                    self._resolve(txn, make_response(txn.request, status))

    def _on_cancel(self, event: CancelReceived) -> None:
        """RFC 3261 §9.2: 481 without a matching INVITE; else 200 to the CANCEL and, if the
        INVITE has no final response yet, 487 to the INVITE."""
        cancel = event.cancel
        invite = event.invite_transaction
        if invite is None:
            self.respond(event.transaction, make_response(cancel, 481))
            return
        self.respond(event.transaction, make_response(cancel, 200))
        last = invite.last_response
        if last is None or last.status < 200:
            with contextlib.suppress(TransactionStateError):
                self.respond(invite, make_response(invite.request, 487))

    def respond(self, transaction: ServerTransaction, response: Response) -> None:
        """Send ``response`` through a server transaction (retransmissions are then absorbed
        by resending it, RFC 3261 §17.2). A transaction that has ended is logged, not raised."""
        self._respond(transaction, response)
        self._arm()

    def _respond(self, transaction: ServerTransaction, response: Response) -> None:
        """:meth:`respond` without re-arming the transaction timer (the caller does)."""
        try:
            events = self.transactions.send_response(transaction, response, self._now())
        except TransactionStateError:
            log.debug("response %s for an ended transaction dropped", response.status)
            return
        self._dispatch(events, transaction.dest)

    def _resolve(self, txn: ClientTransaction, response: Response) -> None:
        future = self._pending.pop(txn, None)
        if future is not None and not future.done():
            future.set_result(response)

    def _arm(self) -> None:
        deadline = self.transactions.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self._process(self.transactions.tick(self._now()), None)  # type: ignore[arg-type]
        except Exception:
            log.exception("transaction timer failed")
            self._arm()

    async def request(self, request: Request, flow: Flow) -> Response:
        """Send a request in a client transaction over ``flow`` and wait for its final
        response. A timeout (Timer B/F) gives a synthesised ``408``, a transport failure a
        ``503`` (RFC 3261 §8.1.3.1). The request needs a top Via from :meth:`via_for`.
        A connection that has already closed is a transport failure at once (``503``), not
        a wait for Timer F."""
        if flow.closed:
            self.stats["dropped"] += 1
            return make_response(request, 503, "Flow Closed")
        txn, events = self.transactions.send_request(request, flow, flow.reliable, self._now())
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[txn] = future
        self._process(events, flow)
        return await future

    @staticmethod
    def via_for(flow: Flow) -> str:
        """A Via value for a request sent over ``flow``, with a fresh branch and ``rport``."""
        host, port = flow.local
        if ":" in host:
            host = f"[{host}]"
        return f"SIP/2.0/{flow.via_transport} {host}:{port};branch={new_branch()};rport"

    def _send_request_bytes(self, request: Request, flow: Flow) -> None:
        if flow.closed:
            self.stats["dropped"] += 1
            return
        flow.send(request.encode())
        self.stats["sent"] += 1

    def _stamp_via(self, req: Request, flow: Flow) -> None:
        """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via.

        The usual top Via ends with a bare ``;rport`` and has no ``received``: then the two
        parameters are appended to its text as received (no re-serialisation), and, on UDP,
        the flow remembers that a response with this top Via goes back to the source
        (:attr:`Flow.reply_via`)."""
        via = req.vias[0]
        src_ip, src_port = flow.remote
        params = via.params
        if "rport" in params and params["rport"] is None:
            fast = "received" not in params and next(reversed(params)) == "rport"
            params["rport"] = port = str(src_port)
            params["received"] = src_ip
        elif via.host != src_ip and params.get("received") != src_ip:
            params["received"] = src_ip
            fast = False
        else:
            return
        headers = req.headers
        for i, (key, name, value) in enumerate(headers):
            if key == "via":
                if fast and value[-6:] == ";rport" and "," not in value:
                    top = f"{value}={port};received={src_ip}"
                    headers[i] = (key, name, top)
                    if flow.transport == "udp":
                        flow.reply_via = top
                else:
                    parts = split_commas(value) if "," in value else [value]
                    parts[0] = str(via)
                    top = ", ".join(parts)
                    headers[i] = (key, name, top)
                    flow.reply_via = None
                first = req._cache.get(FIRST_VALUES)
                if first is not None:  # the first Via field line changed (Message.get)
                    first["via"] = top
                break

    def _answer_error(self, req: Request, flow: Flow, exc: SipParseError) -> None:
        # received/rport first, so that the error goes where a success would (RFC 3581 §4);
        # a Via too broken to stamp is answered to the source by _send_raw_response.
        with contextlib.suppress(SipParseError, IndexError, ValueError):
            self._stamp_via(req, flow)
        resp = make_response(req, exc.status)
        reason = exc.reason.replace('"', "'").replace("\\", "/")[:200]
        resp.add("Warning", f'399 {self.config.warning_agent} "{reason}"')
        self._send_raw_response(resp, flow)

    def _reject_unparsable(self, data: bytes, flow: Flow, exc: SipParseError) -> None:
        """The message could not be parsed at all. Requests get the status back over the same
        flow when their header block can still be read; everything else is dropped."""
        self.stats["malformed"] += 1
        log.info(
            "unparsable message from %s %s:%s: %s (%d bytes)",
            flow.transport,
            *flow.remote,
            exc.reason,
            len(data),
        )
        self._answer_from_head(data, flow, exc.status, exc.reason)

    def _answer_from_head(self, data: bytes, flow: Flow, status: int, reason: str) -> None:
        """Answer ``status`` to a request that cannot be parsed, copying the headers a response
        needs from its header block (``data`` may include a body). Responses are dropped."""
        head = data.split(b"\r\n\r\n", 1)[0]
        first = head.split(b"\r\n", 1)[0]
        if first.startswith(b"SIP/") or not first:
            return  # a response: discard (RFC 3261 §18.1.2)
        # Copy the headers a response needs, line by line, if they are readable.
        resp = Response(status)
        wanted = {b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"}
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if colon and name.strip().lower() in wanted:
                try:
                    resp.add(name.strip().decode("ascii"), value.strip().decode("utf-8"))
                except UnicodeDecodeError:
                    continue
        if "via" not in resp and flow.transport == "udp":
            return
        resp.add("Warning", f'399 {self.config.warning_agent} "{reason[:200]}"'.replace("\\", "/"))
        resp.add("Content-Length", "0")
        self._send_raw_response(resp, flow)

    # ---------------------------------------------------------------------- sending
    def send_response(self, response: Response, flow: Flow) -> None:
        """Send a response to a request received on ``flow`` (RFC 3261 §18.2.2).

        Reliable: over the same connection; if it has closed, over another open connection
        to the Via ``received``/sent-by address, else dropped (logged). UDP: to ``received``
        and ``rport`` (RFC 3581), else to ``received`` and the sent-by port (default 5060).
        """
        self._send_raw_response(response, flow)

    def _send_raw_response(self, response: Response, flow: Flow) -> None:
        data = response.encode()
        if flow.transport != "udp":
            if not flow.closed:
                flow.send(data)
                self.stats["sent"] += 1
                return
            try:
                via = response.top_via
                host = via.params.get("received") or via.host
                port = int(via.params.get("rport") or via.port or 5061)
            except (SipParseError, ValueError):
                host, port = flow.remote
            other = self.flows.lookup(flow.transport, host, port)
            if other is not None:
                other.send(data)
                self.stats["sent"] += 1
            else:
                self.stats["dropped"] += 1
                log.info(
                    "response %s dropped: connection to %s:%s closed", response.status, host, port
                )
            return
        reply_via = flow.reply_via
        if reply_via is not None:
            for key, _, value in response.headers:
                if key == "via":
                    if value == reply_via:  # stamped by _stamp_via: rport=source port
                        flow.send(data)
                        self.stats["sent"] += 1
                        return
                    break
        dest = flow.remote
        try:
            via = response.top_via
            received = via.params.get("received")
            rport = via.params.get("rport")
            if rport:
                dest = (received or flow.remote[0], int(rport))
            elif received:
                dest = (received, via.port or 5060)
            elif via.host != flow.remote[0]:
                dest = flow.remote  # sent-by unresolvable here; answer the source
            else:
                dest = (via.host, via.port or 5060)
        except (SipParseError, ValueError):
            dest = flow.remote
        origin = flow.origin
        if dest != flow.remote and isinstance(origin, DatagramEndpoint):
            origin.flow_to(dest).send(data)
        else:
            flow.send(data)
        self.stats["sent"] += 1

    def send_request(self, request: Request, flow: Flow) -> None:
        """Send a request over an existing flow (connection reuse, RFC 5923)."""
        flow.send(request.encode())
        self.stats["sent"] += 1

    def udp_flow(self, dest: Address) -> Flow | None:
        """A flow from our first UDP socket to ``dest``, or ``None`` without UDP listeners."""
        for udp in self._udp.values():
            return udp.flow_to(dest)
        return None

    async def connect(
        self, transport: str, host: str, port: int, server_hostname: str | None = None
    ) -> Flow:
        """Open (or reuse) a TCP/TLS connection to ``host:port`` and return its flow.

        Raises:
            OSError: the connection failed; ssl.SSLError: the TLS handshake failed.
        """
        existing = self.flows.lookup(transport, host, port)
        if existing is not None and not existing.closed:
            return existing
        loop = asyncio.get_running_loop()
        ssl_ctx = self.config.client_ssl if transport == "tls" else None
        if transport == "tls" and ssl_ctx is None:
            raise ValueError("TLS connections need a client TLS context")
        _, proto = await loop.create_connection(
            lambda: StreamConnection(self, transport, self.config.limits),
            host,
            port,
            ssl=ssl_ctx,
            server_hostname=(server_hostname or host) if ssl_ctx else None,
            ssl_handshake_timeout=self.config.handshake_timeout if ssl_ctx else None,
        )
        assert proto.flow is not None
        return proto.flow
