"""SIP transactions (RFC 3261 §17, RFC 6026), as pure state machines.

Sans-I/O in the style of h11/aioquic: nothing here opens a socket, starts a task or reads a
clock. Time is a float ``now`` in seconds (any monotonic origin) that the caller passes in;
every call returns a list of :class:`Event` objects for the caller to act on
(:class:`TransmitMessage` is "send these bytes", the others go to the transaction user, TU).

Pieces:

* :class:`TimerConfig` — T1/T2/T4 and the derived timers A-M of RFC 3261 Table 4 (RFC 6026
  adds L and M), collapsed on reliable transports (:meth:`TimerConfig.timers`).
* :class:`ClientTransaction` — INVITE (Calling/Proceeding/Accepted/Completed/Terminated,
  §17.1.1 with the RFC 6026 Accepted state) and non-INVITE (Trying/Proceeding/Completed/
  Terminated, §17.1.2). Generates the ACK for non-2xx final responses (§17.1.1.3).
* :class:`ServerTransaction` — INVITE (Proceeding/Accepted/Completed/Confirmed/Terminated,
  §17.2.1 + RFC 6026, automatic ``100 Trying`` after ``trying_delay``) and non-INVITE
  (Trying/Proceeding/Completed/Terminated, §17.2.2).
* :class:`TransactionLayer` — one per element: owns every transaction, matches incoming
  messages to them (§17.1.3, §17.2.3, RFC 2543 fallback), keeps one timer heap.

Driving it (an adapter's loop, in outline)::

    layer = TransactionLayer()
    events = layer.receive_request(req, source, now)    # or receive_response / send_* / tick
    for ev in events:
        if isinstance(ev, TransmitMessage): transport.send(ev.message.encode(), ev.dest)
        else: tu.handle(ev)
    sleep_until(layer.next_deadline()); layer.tick(now)

Memory bound: a transaction holds its request, its last response (and, for a client INVITE
that got a non-2xx answer, its ACK) — a few KiB. It leaves the table the moment it reaches
Terminated. Every state has a timer that ends it (B, D, F, H, I, J, K, L, M), except those
waiting on the TU (client INVITE Proceeding, server Proceeding/Trying), which the
``max_pending`` guard of :class:`TimerConfig` ends (default 600 s without progress). So the
table holds at most ``max_transactions`` (default 100 000) server transactions plus the
client transactions the TU itself started, each for a bounded time; beyond the cap, new
requests are answered with a stateless ``503`` + ``Retry-After`` and create no state.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import TransactionStateError
from .message import Request, Response, make_response

__all__ = [
    "MAGIC_COOKIE",
    "AckReceived",
    "CancelReceived",
    "ClientTransaction",
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "ServerTransaction",
    "StrayResponse",
    "TimerConfig",
    "Timers",
    "Transaction",
    "TransactionLayer",
    "TransactionState",
    "TransactionStateError",
    "TransactionTerminated",
    "TransactionTimeout",
    "TransactionTransportError",
    "TransmitMessage",
    "has_magic_cookie",
    "make_ack",
    "make_cancel",
    "new_branch",
]

MAGIC_COOKIE = "z9hG4bK"
"""The RFC 3261 §8.1.1.7 branch prefix: a branch starting with it is globally unique."""

UNRELIABLE_TRANSPORTS = frozenset({"UDP"})
"""Via transports on which requests and responses are retransmitted (RFC 3261 §17)."""


def new_branch() -> str:
    """A fresh Via ``branch`` value: the magic cookie plus 96 random bits (RFC 3261 §8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(12)


def has_magic_cookie(branch: str | None) -> bool:
    """True if ``branch`` is an RFC 3261 branch usable for matching (§17.2.3).

    A branch that is *only* the cookie (``z9hG4bK``, RFC 4475 §3.2.1 "badbranch") carries no
    unique part, so it is treated as no usable branch and RFC 2543 matching applies.
    """
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7


# ------------------------------------------------------------------------------------ timers


@dataclass(frozen=True, slots=True)
class Timers:
    """Timer durations in seconds for one kind of transport (RFC 3261 Table 4, RFC 6026).

    ``None`` means the timer is not used (retransmission timers A, E, G on reliable
    transports); ``0.0`` means "fire at once" (D, I, J, K on reliable transports).
    ``T2`` caps the E and G back-off.
    """

    A: float | None
    B: float
    D: float
    E: float | None
    F: float
    G: float | None
    H: float
    I: float  # noqa: E741 - RFC 3261 names it Timer I
    J: float
    K: float
    L: float
    M: float
    T2: float


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """Transaction timer configuration (RFC 3261 §17, Table 4). All values in seconds.

    Attributes:
        T1: RTT estimate (default 0.5 s); A, E, G start at T1; B, F, H, J, L, M are 64*T1.
        T2: maximum retransmit interval for non-INVITE requests and INVITE responses (4 s).
        T4: maximum time a message stays in the network (5 s); I and K on unreliable transports.
        D: Timer D on unreliable transports; RFC 3261 §17.1.1.2 asks for at least 32 s.
        trying_delay: an INVITE server transaction sends ``100 Trying`` by itself if the TU has
            sent no response this long after the INVITE arrived (§17.2.1: 200 ms).
        max_pending: not in RFC 3261 — a guard for the memory bound. A transaction that waits
            on the TU (client INVITE in Proceeding; server transaction before its final
            response) is timed out after this long without progress (each provisional
            response restarts it). ``None`` disables the guard.
    """

    T1: float = 0.5
    T2: float = 4.0
    T4: float = 5.0
    D: float = 32.0
    trying_delay: float = 0.2
    max_pending: float | None = 600.0

    def timers(self, reliable: bool) -> Timers:
        """The timer durations for a reliable (TCP, TLS, SCTP, WS) or unreliable (UDP)
        transport: on reliable transports A/E/G are not used and D/I/J/K are zero.

        Computed once per distinct configuration and transport kind (every transaction asks;
        :class:`Timers` is immutable, so one object is shared)."""
        cache_key = (self.T1, self.T2, self.T4, self.D, reliable)
        found = _TIMERS_CACHE.get(cache_key)
        if found is None:
            found = self._compute_timers(reliable)
            if len(_TIMERS_CACHE) < 64:
                _TIMERS_CACHE[cache_key] = found
        return found

    def _compute_timers(self, reliable: bool) -> Timers:
        t64 = 64 * self.T1
        if reliable:
            return Timers(
                A=None,
                B=t64,
                D=0.0,
                E=None,
                F=t64,
                G=None,
                H=t64,
                I=0.0,
                J=0.0,
                K=0.0,
                L=t64,
                M=t64,
                T2=self.T2,
            )
        return Timers(
            A=self.T1,
            B=t64,
            D=self.D,
            E=self.T1,
            F=t64,
            G=self.T1,
            H=t64,
            I=self.T4,
            J=t64,
            K=self.T4,
            L=t64,
            M=t64,
            T2=self.T2,
        )


_TIMERS_CACHE: dict[tuple[float, float, float, float, bool], Timers] = {}


# ------------------------------------------------------------------------------------ events


class Event:
    """Base class of the events returned by transactions and the :class:`TransactionLayer`."""

    __slots__ = ()


@dataclass(slots=True, init=False)
class TransmitMessage(Event):
    """Send ``message`` to ``dest``. ``dest`` is the opaque object the caller supplied: the
    ``source`` of the request for server transactions, the ``dest`` of
    :meth:`TransactionLayer.send_request` for client transactions."""

    message: Request | Response
    dest: Any
    reliable: bool

    def __init__(self, message: Request | Response, dest: Any, reliable: bool) -> None:
        self.message = message
        self.dest = dest
        self.reliable = reliable


@dataclass(slots=True, init=False)
class RequestReceived(Event):
    """A new request created server ``transaction``; the TU must answer it through
    :meth:`TransactionLayer.send_response`. Never emitted for retransmissions, ACK or CANCEL."""

    request: Request
    transaction: ServerTransaction

    def __init__(self, request: Request, transaction: ServerTransaction) -> None:
        self.request = request
        self.transaction = transaction


@dataclass(slots=True, init=False)
class AckReceived(Event):
    """An ACK that is not absorbed by a transaction: the ACK for a 2xx (RFC 3261 §13.3.1.4,
    §17.2.3), or any ACK matching no transaction. It goes to the TU / dialog (a proxy forwards
    it). ``source`` is where it came from."""

    request: Request
    source: Any = None

    def __init__(self, request: Request, source: Any = None) -> None:
        self.request = request
        self.source = source


@dataclass(slots=True, init=False)
class CancelReceived(Event):
    """A new CANCEL (RFC 3261 §9.2). ``transaction`` is the CANCEL's own non-INVITE server
    transaction (the TU answers it: 200, or 481 when ``invite_transaction`` is ``None``);
    ``invite_transaction`` is the INVITE server transaction it cancels, if any."""

    cancel: Request
    invite_transaction: ServerTransaction | None
    transaction: ServerTransaction

    def __init__(
        self,
        cancel: Request,
        invite_transaction: ServerTransaction | None,
        transaction: ServerTransaction,
    ) -> None:
        self.cancel = cancel
        self.invite_transaction = invite_transaction
        self.transaction = transaction


@dataclass(slots=True, init=False)
class ResponseReceived(Event):
    """A response for client ``transaction`` that the TU must see (RFC 3261 §17.1).
    Retransmissions of non-2xx final responses are absorbed; 2xx retransmissions (and 2xx
    from other forks) are passed up while the INVITE transaction is Accepted (RFC 6026)."""

    response: Response
    transaction: ClientTransaction

    def __init__(self, response: Response, transaction: ClientTransaction) -> None:
        self.response = response
        self.transaction = transaction


@dataclass(slots=True, init=False)
class StrayResponse(Event):
    """A response matching no client transaction (RFC 3261 §18.1.2): a proxy forwards it
    statelessly (RFC 3261 §16.7 step 3 does not apply), a UA drops it."""

    response: Response
    source: Any = None

    def __init__(self, response: Response, source: Any = None) -> None:
        self.response = response
        self.source = source


@dataclass(slots=True, init=False)
class TransactionTimeout(Event):
    """The transaction timed out: Timer B/F on a client transaction (the TU acts as if a 408
    arrived, §8.1.3.1), Timer H on an INVITE server transaction (no ACK came), or the
    ``max_pending`` guard. A :class:`TransactionTerminated` follows."""

    transaction: Transaction

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction


@dataclass(slots=True, init=False)
class TransactionTransportError(Event):
    """The transport failed for this transaction (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.4);
    a client TU treats it like a 503 (§8.1.3.1). A :class:`TransactionTerminated` follows."""

    transaction: Transaction

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction


@dataclass(slots=True, init=False)
class TransactionTerminated(Event):
    """The transaction reached Terminated and was removed from the layer."""

    transaction: Transaction

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction


# ------------------------------------------------------------------------ request building


def _raw_top_via(request: Request) -> str:
    vias = request.values("via")
    if not vias:
        request.top_via  # noqa: B018 - raises SipParseError("missing Via")
    return vias[0]


def make_ack(invite: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 response (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID, From and the CSeq number of the INVITE, CSeq method ``ACK``; the To
    of the response (with its tag); one Via equal to the INVITE's top Via (same branch); the
    INVITE's Route header fields; its Max-Forwards (70 if it had none); no body.

    Raises:
        SipParseError: the INVITE lacks Via or CSeq, or the response lacks To.
    """
    headers: list[tuple[str, str, str]] = [("via", "Via", _raw_top_via(invite))]
    headers.append(("max-forwards", "Max-Forwards", invite.get("max-forwards") or "70"))
    headers.extend(h for h in invite.headers if h[0] == "route")
    headers.append(("from", "From", invite.get("from") or ""))
    response.to  # noqa: B018 - raises SipParseError when To is missing or malformed
    headers.append(("to", "To", response.get("to") or ""))
    headers.append(("call-id", "Call-ID", invite.call_id))
    headers.append(("cseq", "CSeq", f"{invite.cseq.number} ACK"))
    headers.append(("content-length", "Content-Length", "0"))
    return Request("ACK", invite.uri, headers)


def make_cancel(request: Request) -> Request:
    """The CANCEL for a pending ``request`` (RFC 3261 §9.1): same Request-URI, Call-ID, To,
    From, CSeq number (method ``CANCEL``), one Via equal to the request's top Via (same branch,
    so it reaches the same server transaction), the same Route headers; no body.

    Send it with :meth:`TransactionLayer.send_request` to the request's destination; it is its
    own non-INVITE client transaction (its key differs from the INVITE's by the method).

    Raises:
        SipParseError: the request lacks Via or CSeq.
    """
    headers: list[tuple[str, str, str]] = [("via", "Via", _raw_top_via(request))]
    headers.append(("max-forwards", "Max-Forwards", request.get("max-forwards") or "70"))
    headers.extend(h for h in request.headers if h[0] == "route")
    headers.append(("from", "From", request.get("from") or ""))
    headers.append(("to", "To", request.get("to") or ""))
    headers.append(("call-id", "Call-ID", request.call_id))
    headers.append(("cseq", "CSeq", f"{request.cseq.number} CANCEL"))
    headers.append(("content-length", "Content-Length", "0"))
    return Request("CANCEL", request.uri, headers)


# ------------------------------------------------------------------------------ transactions


class TransactionState(StrEnum):
    """Transaction states (RFC 3261 Figures 5-8; ``Accepted`` from RFC 6026)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


S = TransactionState


def _client_key(request: Request) -> tuple[str, str]:
    """§17.1.3: a response matches by its top Via branch and its CSeq method."""
    return (request.top_via.branch or "", request.method)


def _sent_by(request: Request) -> str:
    via = request.top_via
    return via.host.lower() if via.port is None else f"{via.host.lower()}:{via.port}"


def _key_2543(request: Request, method: str) -> tuple[Hashable, ...]:
    """RFC 3261 §17.2.3 (backwards compatibility), §9.2: Request-URI, To tag, From tag,
    Call-ID, CSeq number + method, top Via."""
    return (
        "2543",
        method,
        request.uri.strip(),
        request.to.tag,
        request.from_.tag,
        request.call_id,
        request.cseq.number,
        str(request.top_via),
    )


def _ack_key_2543(request: Request) -> tuple[Hashable, ...]:
    """The 2543 ACK index: as :func:`_key_2543` without the To tag, which the ACK takes from
    the response (checked separately)."""
    return (
        "2543-ack",
        request.uri.strip(),
        request.from_.tag,
        request.call_id,
        request.cseq.number,
        str(request.top_via),
    )


def _server_key(request: Request, method: str | None = None) -> tuple[Hashable, ...]:
    """The server transaction key of ``request`` (RFC 3261 §17.2.3); ``method`` overrides the
    method part (ACK and CANCEL look up the INVITE with ``"INVITE"``).

    Raises:
        SipParseError: a header the key needs is missing or malformed.
    """
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    branch = request.top_via.branch
    if has_magic_cookie(branch):
        return ("3261", branch, _sent_by(request), method)
    return _key_2543(request, method)


class Transaction:
    """Common part of client and server transactions.

    Attributes:
        request: the request that created the transaction.
        method: its method; is_invite: ``method == "INVITE"``.
        key: the matching key (hashable; unique in a :class:`TransactionLayer`).
        dest: where messages of this transaction go (opaque, caller-supplied).
        reliable: whether the transport is reliable (no retransmissions, zero wait timers).
        state: a :class:`TransactionState`.
        last_response: the last response sent (server) or the final response received
            (client), or ``None``.
        timers: the :class:`Timers` in force.
    """

    __slots__ = (
        "_deadlines",
        "_interval",
        "_queued",
        "config",
        "dest",
        "is_invite",
        "key",
        "last_response",
        "method",
        "reliable",
        "request",
        "state",
        "timers",
    )

    def __init__(
        self,
        request: Request,
        dest: Any,
        reliable: bool,
        config: TimerConfig | None,
        key: Hashable,
        state: TransactionState,
        timers: Timers | None = None,
    ) -> None:
        self.request = request
        self.method = method = request.method
        self.is_invite = method == "INVITE"
        self.dest = dest
        self.reliable = reliable
        self.config = config = config if config is not None else TimerConfig()
        self.timers = timers if timers is not None else config.timers(reliable)
        self.key = key
        self.state = state
        self.last_response: Response | None = None
        self._deadlines: dict[str, float] = {}
        self._interval = 0.0
        self._queued: float | None = None  # TransactionLayer heap bookkeeping

    # ------------------------------------------------------------------------ timers
    @property
    def terminated(self) -> bool:
        """True once the transaction is in the Terminated state."""
        return self.state is S.TERMINATED

    def next_deadline(self) -> float | None:
        """The time (seconds, same clock as ``now``) at which :meth:`tick` has work, or None."""
        return min(self._deadlines.values()) if self._deadlines else None

    def tick(self, now: float) -> list[Event]:
        """Fire every timer due at ``now`` (seconds), earliest first; returns the events.
        Timers restarted while firing count from ``now``."""
        events: list[Event] = []
        while self._deadlines and self.state is not S.TERMINATED:
            name = min(self._deadlines, key=self._deadlines.__getitem__)
            if self._deadlines[name] > now:
                break
            del self._deadlines[name]
            events.extend(self._fire(name, now))
        return events

    def _fire(self, name: str, now: float) -> list[Event]:
        raise NotImplementedError

    def _start(self, name: str, delay: float, now: float) -> None:
        self._deadlines[name] = now + delay

    def _guard(self, now: float) -> None:
        if self.config.max_pending is not None:
            self._deadlines["pending"] = now + self.config.max_pending

    def _send(self, message: Request | Response) -> TransmitMessage:
        return TransmitMessage(message, self.dest, self.reliable)

    def _terminate(self) -> list[Event]:
        self.state = S.TERMINATED
        self._deadlines.clear()
        return [TransactionTerminated(self)]

    def _timeout(self) -> list[Event]:
        return [TransactionTimeout(self), *self._terminate()]

    def transport_error(self, now: float) -> list[Event]:
        """The transport could not deliver a message of this transaction (RFC 3261 §17.1.1.2,
        §17.2.4): :class:`TransactionTransportError` then :class:`TransactionTerminated`
        (nothing once terminated)."""
        if self.state is S.TERMINATED:
            return []
        return [TransactionTransportError(self), *self._terminate()]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state.value} {self.key!r}>"


class ClientTransaction(Transaction):
    """A client transaction (RFC 3261 §17.1; RFC 6026 Accepted state for INVITE).

    INVITE: Calling → (1xx) Proceeding → (2xx) Accepted → Timer M → Terminated, or
    (300-699) Completed, ACK sent, → Timer D → Terminated; Timer A retransmits (doubling,
    UDP only), Timer B times out Calling. Non-INVITE: Trying → (1xx) Proceeding → (final)
    Completed → Timer K → Terminated; Timer E retransmits (doubling, capped at T2; T2 in
    Proceeding), Timer F times out Trying/Proceeding.

    Attributes:
        ack: the ACK sent for a non-2xx final response, or ``None``.

    Use through :meth:`TransactionLayer.send_request`, or standalone: construct, call
    :meth:`start`, feed :meth:`receive_response` and :meth:`tick`.
    """

    __slots__ = ("ack",)

    def __init__(
        self,
        request: Request,
        dest: Any,
        reliable: bool,
        config: TimerConfig | None = None,
    ) -> None:
        """Raises ValueError for ACK (an ACK for a 2xx is sent by the TU, outside any
        transaction, RFC 3261 §17.1.1.3) and SipParseError for a request without Via."""
        if request.method == "ACK":
            raise ValueError("ACK is not sent in a client transaction (RFC 3261 §17)")
        initial = S.CALLING if request.method == "INVITE" else S.TRYING
        super().__init__(request, dest, reliable, config, _client_key(request), initial)
        self.ack: Request | None = None

    def start(self, now: float) -> list[Event]:
        """Send the request (at ``now``, seconds) and start Timers A+B or E+F."""
        t = self.timers
        if self.is_invite:
            if t.A is not None:
                self._interval = t.A
                self._start("A", t.A, now)
            self._start("B", t.B, now)
        else:
            if t.E is not None:
                self._interval = t.E
                self._start("E", t.E, now)
            self._start("F", t.F, now)
        return [self._send(self.request)]

    def receive_response(self, response: Response, now: float) -> list[Event]:
        """Feed a response matched to this transaction (RFC 3261 §17.1.1.2, §17.1.2.2)."""
        status = response.status
        state = self.state
        if self.is_invite:
            if state is S.CALLING or state is S.PROCEEDING:
                if status < 200:
                    self.state = S.PROCEEDING
                    self._deadlines.clear()  # A and B stop; the TU (CANCEL, Timer C) decides
                    self._guard(now)
                    return [ResponseReceived(response, self)]
                self._deadlines.clear()
                self.last_response = response
                if status < 300:
                    self.state = S.ACCEPTED
                    self._start("M", self.timers.M, now)
                    return [ResponseReceived(response, self)]
                self.state = S.COMPLETED
                self.ack = make_ack(self.request, response)
                events: list[Event] = [ResponseReceived(response, self), self._send(self.ack)]
                if self.timers.D > 0:
                    self._start("D", self.timers.D, now)
                else:
                    events.extend(self._terminate())
                return events
            if state is S.COMPLETED:
                if status >= 300 and self.ack is not None:
                    return [self._send(self.ack)]  # retransmitted final response: ACK again
                return []
            if state is S.ACCEPTED and 200 <= status < 300:
                return [ResponseReceived(response, self)]
            return []
        if state is S.TRYING or state is S.PROCEEDING:
            if status < 200:
                self.state = S.PROCEEDING
                return [ResponseReceived(response, self)]
            self._deadlines.clear()
            self.last_response = response
            self.state = S.COMPLETED
            events = [ResponseReceived(response, self)]
            if self.timers.K > 0:
                self._start("K", self.timers.K, now)
            else:
                events.extend(self._terminate())
            return events
        return []  # Completed: retransmissions absorbed

    def _fire(self, name: str, now: float) -> list[Event]:
        if name == "A":
            self._interval *= 2
            self._start("A", self._interval, now)
            return [self._send(self.request)]
        if name == "E":
            if self.state is S.TRYING:
                self._interval = min(2 * self._interval, self.timers.T2)
            else:
                self._interval = self.timers.T2
            self._start("E", self._interval, now)
            return [self._send(self.request)]
        if name in ("B", "F", "pending"):
            return self._timeout()
        return self._terminate()  # D, K, M


class ServerTransaction(Transaction):
    """A server transaction (RFC 3261 §17.2; RFC 6026 Accepted state for INVITE).

    INVITE: Proceeding (``100 Trying`` sent after ``trying_delay`` if the TU is silent) →
    (2xx from TU) Accepted → Timer L → Terminated, or (300-699) Completed → ACK → Confirmed →
    Timer I → Terminated; Timer G retransmits the final response (doubling, capped at T2,
    UDP only), Timer H gives up waiting for the ACK. Non-INVITE: Trying → (1xx) Proceeding →
    (final) Completed → Timer J → Terminated. Request retransmissions are answered with the
    last response sent (or absorbed).

    Use through :class:`TransactionLayer`, or standalone: construct, call :meth:`start`, feed
    :meth:`receive_request` (retransmissions and ACK), :meth:`send_response`, :meth:`tick`.
    """

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        source: Any,
        reliable: bool,
        config: TimerConfig | None = None,
        *,
        key: Hashable | None = None,
        timers: Timers | None = None,
    ) -> None:
        """Raises ValueError for ACK (never creates a transaction) and SipParseError when
        the headers the matching key needs are missing or malformed. ``key`` (the request's
        :func:`_server_key`) and ``timers`` (``config.timers(reliable)``) may be passed when
        the caller has them already (the :class:`TransactionLayer` does)."""
        method = request.method
        if method == "ACK":
            raise ValueError("ACK does not create a server transaction (RFC 3261 §17.2.3)")
        initial = S.PROCEEDING if method == "INVITE" else S.TRYING
        if key is None:
            key = _server_key(request)
        super().__init__(request, source, reliable, config, key, initial, timers)

    @classmethod
    def _create(
        cls,
        request: Request,
        source: Any,
        reliable: bool,
        config: TimerConfig,
        key: Hashable,
        timers: Timers,
        now: float,
    ) -> ServerTransaction:
        """``ServerTransaction(...)`` then :meth:`start`, for a non-ACK request whose key and
        timers the :class:`TransactionLayer` has computed already (this runs for every request
        an FE receives; compiled, the constructor chain costs native calls only)."""
        txn = cls(request, source, reliable, config, key=key, timers=timers)
        txn.start(now)
        return txn

    @property
    def rfc2543(self) -> bool:
        """True when the request's branch has no usable magic cookie, so the transaction is
        matched the RFC 2543 way (RFC 3261 §17.2.3)."""
        return not has_magic_cookie(self.request.top_via.branch)

    @property
    def source(self) -> Any:
        """Where the request came from (responses are sent there); same as ``dest``."""
        return self.dest

    def start(self, now: float) -> list[Event]:
        """Start the transaction's timers at ``now`` (seconds): the 100 Trying timer for
        INVITE, the ``max_pending`` guard. Returns no events."""
        if self.is_invite:
            self._start("trying", self.config.trying_delay, now)
        self._guard(now)
        return []

    def _trying(self) -> list[Event]:
        trying = make_response(self.request, 100)
        timestamp = self.request.get("timestamp")
        if timestamp is not None:  # RFC 3261 §8.2.6.1
            trying.headers.insert(len(trying.headers) - 1, ("timestamp", "Timestamp", timestamp))
        self.last_response = trying
        self._deadlines.pop("trying", None)
        return [self._send(trying)]

    def receive_request(self, request: Request, now: float) -> list[Event]:
        """Feed a retransmission of the request, or an ACK, matched to this transaction
        (RFC 3261 §17.2.1, §17.2.2). Retransmissions get the last response again; an ACK in
        Completed moves to Confirmed; an ACK in Accepted goes to the TU (:class:`AckReceived`).
        """
        state = self.state
        if request.method == "ACK":
            if not self.is_invite:
                return []
            if state is S.COMPLETED:
                self.state = S.CONFIRMED
                self._deadlines.clear()
                if self.timers.I > 0:
                    self._start("I", self.timers.I, now)
                    return []
                return self._terminate()
            if state is S.ACCEPTED:
                return [AckReceived(request, self.dest)]
            return []
        if self.is_invite:
            if state is S.PROCEEDING:
                if self.last_response is None:
                    return self._trying()  # the client is retransmitting: stop it now
                return [self._send(self.last_response)]
            if state is S.COMPLETED and self.last_response is not None:
                return [self._send(self.last_response)]
            return []  # Accepted, Confirmed: absorbed
        if (state is S.PROCEEDING or state is S.COMPLETED) and self.last_response is not None:
            return [self._send(self.last_response)]
        return []  # Trying: absorbed

    def send_response(self, response: Response, now: float) -> list[Event]:
        """Send a response from the TU (RFC 3261 §17.2.1, §17.2.2; RFC 6026 §8.5 lets the TU
        resend 2xx through an Accepted INVITE transaction).

        Raises:
            TransactionStateError: the state does not allow it (terminated, or a final
                response already sent — other than 2xx in Accepted).
            ValueError: a status outside 100..699.
        """
        status = response.status
        if not 100 <= status <= 699:
            raise ValueError(f"bad status code {status}")
        state = self.state
        if self.is_invite:
            if state is S.ACCEPTED and status >= 200 and status < 300:
                return [self._send(response)]
            if state is not S.PROCEEDING:
                raise TransactionStateError(f"cannot send {status} in state {state.value}")
            self._deadlines.pop("trying", None)
            self.last_response = response
            events: list[Event] = [self._send(response)]
            if status < 200:
                self._guard(now)
                return events
            self._deadlines.clear()
            if status < 300:
                self.state = S.ACCEPTED
                self._start("L", self.timers.L, now)
                return events
            self.state = S.COMPLETED
            if self.timers.G is not None:
                self._interval = self.timers.G
                self._start("G", self.timers.G, now)
            self._start("H", self.timers.H, now)
            return events
        if state is not S.TRYING and state is not S.PROCEEDING:
            raise TransactionStateError(f"cannot send {status} in state {state.value}")
        self.last_response = response
        events = [self._send(response)]
        if status < 200:
            self.state = S.PROCEEDING
            self._guard(now)
            return events
        self.state = S.COMPLETED
        self._deadlines.clear()
        if self.timers.J > 0:
            self._start("J", self.timers.J, now)
            # Completed only absorbs retransmissions (with last_response) for 64*T1: drop the
            # request's parsed views (they are re-parsed if asked for), so that the many
            # transactions waiting here hold a few objects each, not ~30 for the collector.
            self.request.invalidate()
        else:  # reliable transport: Timer J is zero, Terminated at once (_terminate inlined)
            self.state = S.TERMINATED
            events.append(TransactionTerminated(self))
        return events

    def _fire(self, name: str, now: float) -> list[Event]:
        if name == "trying":
            if self.state is S.PROCEEDING and self.last_response is None:
                return self._trying()
            return []
        if name == "G":
            self._interval = min(2 * self._interval, self.timers.T2)
            self._start("G", self._interval, now)
            assert self.last_response is not None
            return [self._send(self.last_response)]
        if name in ("H", "pending"):
            return self._timeout()
        return self._terminate()  # I, J, L


# ------------------------------------------------------------------------------------- layer


class TransactionLayer:
    """All transactions of one SIP element, and the matching of messages to them.

    Server side (RFC 3261 §17.2.3): a branch with the magic cookie matches on branch, top Via
    sent-by and method (ACK matches the INVITE; CANCEL is its own transaction). A branch
    without a usable cookie (absent, RFC 2543, or just ``z9hG4bK`` — RFC 4475 §3.2.1) matches
    on Request-URI, To tag, From tag, Call-ID, CSeq and top Via; an ACK then matches the
    INVITE whose response carried the ACK's To tag. Client side (§17.1.3): top Via branch and
    CSeq method.

    Args:
        config: timer configuration (default :class:`TimerConfig`).
        max_transactions: cap on live transactions (client + server; ``len(layer)``) beyond
            which a new request is answered with a stateless 503 and creates no state.
            ``None`` disables the cap. Client transactions are never refused.
        overload_retry_after: the ``Retry-After`` of that 503, in seconds.

    Attributes:
        overload_rejections: how many requests got the overload 503.
        server_table: the live server transactions by matching key; read it, never change it
            (the endpoint's compiled fast path tests it for emptiness, see
            :meth:`answers_at_once`). client_table: the same for client transactions.
    """

    def __init__(
        self,
        config: TimerConfig | None = None,
        *,
        max_transactions: int | None = 100_000,
        overload_retry_after: int = 5,
    ) -> None:
        self.config = config if config is not None else TimerConfig()
        self.max_transactions = max_transactions
        self.overload_retry_after = overload_retry_after
        self.overload_rejections = 0
        self.server_table: dict[Hashable, ServerTransaction] = {}
        self.client_table: dict[Hashable, ClientTransaction] = {}
        self._ack2543: dict[Hashable, ServerTransaction] = {}
        self._heap: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()
        # New server transactions whose deadlines are not in the heap yet: most are answered
        # before anyone asks for the next deadline (the TU answers at once), and a final
        # response on a reliable transport ends them, so their guard timer is never queued.
        # next_deadline() and tick() queue those still waiting (see _queue_new).
        self._unqueued: list[ServerTransaction] = []
        self._timers_for = {True: self.config.timers(True), False: self.config.timers(False)}

    def __len__(self) -> int:
        """The number of live (not yet terminated) transactions, client and server."""
        return len(self.server_table) + len(self.client_table)

    @property
    def server_transactions(self) -> list[ServerTransaction]:
        """A snapshot of the live server transactions."""
        return list(self.server_table.values())

    @property
    def client_transactions(self) -> list[ClientTransaction]:
        """A snapshot of the live client transactions."""
        return list(self.client_table.values())

    # ------------------------------------------------------------------ bookkeeping
    def _after(self, txn: Transaction) -> None:
        """Re-queue ``txn``'s deadline, or drop it from the tables once terminated."""
        if txn.state is S.TERMINATED:
            if isinstance(txn, ServerTransaction):
                if self.server_table.get(txn.key) is txn:
                    del self.server_table[txn.key]
                if txn.is_invite and txn.rfc2543:
                    ack_key = _ack_key_2543(txn.request)
                    if self._ack2543.get(ack_key) is txn:
                        del self._ack2543[ack_key]
            elif self.client_table.get(txn.key) is txn:
                del self.client_table[txn.key]
            txn._queued = None
            return
        deadline = txn.next_deadline()
        if deadline is not None and deadline != txn._queued:
            heapq.heappush(self._heap, (deadline, next(self._seq), txn))
        txn._queued = deadline
        if len(self._heap) > 2 * len(self) + 64:
            self._compact()

    def _queue_new(self) -> None:
        """Queue the deadlines of new server transactions not queued yet (see __init__)."""
        pending = self._unqueued
        if pending:
            self._unqueued = []
            for txn in pending:
                if txn.state is not S.TERMINATED:
                    self._after(txn)

    def _compact(self) -> None:
        heap: list[tuple[float, int, Transaction]] = []
        for txn in itertools.chain(self.server_table.values(), self.client_table.values()):
            deadline = txn.next_deadline()
            txn._queued = deadline
            if deadline is not None:
                heap.append((deadline, next(self._seq), txn))
        heapq.heapify(heap)
        self._heap = heap

    def _is_live(self, txn: Transaction) -> bool:
        table: dict[Hashable, Any] = (
            self.server_table if isinstance(txn, ServerTransaction) else self.client_table
        )
        return table.get(txn.key) is txn

    # ------------------------------------------------------------------ server side
    def answers_at_once(self, request: Request) -> bool:
        """True when the TU may answer ``request`` before a server transaction exists: over a
        *reliable* transport with any final response, over UDP with a challenge (401/407).

        RFC 3261 §17.2.2: on a reliable transport Timer J is zero, so a non-INVITE server
        transaction ends the moment its final response is sent; created and ended within one
        call it has nothing to absorb. Over UDP a server may challenge statelessly (§8.2.7):
        a retransmission of the request is challenged again. Either holds when the method is
        neither INVITE, ACK nor CANCEL (§17.2.1, §9.2), no live server transaction matches
        the request (a retransmission of one answered through a transaction still goes to it)
        and the table is under ``max_transactions`` (else the caller must take
        :meth:`receive_request`, which answers the overload 503). The caller sends the TU's
        final response itself; for anything else (no response, a provisional one, a final
        one other than a challenge over UDP) it falls back to :meth:`receive_request` and
        sends the response through the transaction.

        Raises:
            SipParseError: the request lacks a header the matching needs (as
                :meth:`receive_request`).
        """
        method = request.method
        if method == "INVITE" or method == "ACK" or method == "CANCEL":
            return False
        server = self.server_table
        if self.max_transactions is not None and len(server) + len(self.client_table) >= (
            self.max_transactions
        ):
            return False
        if not server:
            return True
        via = request.top_via
        branch = via.params.get("branch")
        if branch is not None and len(branch) > 7 and branch.startswith(MAGIC_COOKIE):
            host = via.host.lower()
            port = via.port
            key: Hashable = ("3261", branch, host if port is None else f"{host}:{port}", method)
        else:
            key = _key_2543(request, method)
        return key not in server

    def receive_request(
        self, request: Request, source: Any, now: float, *, reliable: bool | None = None
    ) -> list[Event]:
        """Feed a request from the transport (RFC 3261 §17.2.3).

        Args:
            request: a parsed (and preferably validated) request.
            source: opaque return address; responses are sent to it (TransmitMessage.dest).
            now: the current time in seconds.
            reliable: whether it came over a reliable transport; by default, from the top
                Via transport (UDP is unreliable, anything else reliable).

        Returns:
            Retransmission of an existing transaction: the last response again, or nothing.
            A new request: ``[RequestReceived]`` (``[CancelReceived]`` for CANCEL). An ACK not
            absorbed by an INVITE transaction: ``[AckReceived]``. Over the cap: a
            TransmitMessage of a 503.

        Raises:
            SipParseError: the request lacks a header the matching needs (Via, CSeq, Call-ID,
                From, To) or has a malformed one; the caller answers ``err.status``.
        """
        via = request.top_via
        if reliable is None:
            reliable = via.transport not in UNRELIABLE_TRANSPORTS
        method = request.method
        is_ack = method == "ACK"
        branch = via.params.get("branch")
        rfc3261 = branch is not None and len(branch) > 7 and branch.startswith(MAGIC_COOKIE)
        if rfc3261:  # _server_key(), inlined: this runs for every request
            host = via.host.lower()
            port = via.port
            key: Hashable = (
                "3261",
                branch,
                host if port is None else f"{host}:{port}",
                "INVITE" if is_ack else method,
            )
            txn = self.server_table.get(key)
        elif is_ack:
            txn = self._ack2543.get(_ack_key_2543(request))
            if txn is not None:
                last = txn.last_response
                if last is None or last.to.tag != request.to.tag:
                    txn = None
        else:
            key = _key_2543(request, method)
            txn = self.server_table.get(key)
        if txn is not None:
            events = txn.receive_request(request, now)
            self._after(txn)
            return events
        if is_ack:
            return [AckReceived(request, source)]
        server = self.server_table
        if self.max_transactions is not None and len(server) + len(self.client_table) >= (
            self.max_transactions
        ):
            self.overload_rejections += 1
            busy = make_response(request, 503, to_tag=secrets.token_hex(8))
            busy.headers.insert(
                len(busy.headers) - 1,
                ("retry-after", "Retry-After", str(self.overload_retry_after)),
            )
            return [TransmitMessage(busy, source, reliable)]
        txn = ServerTransaction._create(
            request, source, reliable, self.config, key, self._timers_for[reliable], now
        )
        server[key] = txn
        unqueued = self._unqueued
        unqueued.append(txn)  # queued by next_deadline()/tick() unless answered first
        if len(unqueued) > 256:  # a caller that never asks for deadlines: stay bounded
            self._queue_new()
        if method == "CANCEL":
            return [CancelReceived(request, self.find_invite_for_cancel(request), txn)]
        if method == "INVITE" and not rfc3261:
            self._ack2543[_ack_key_2543(request)] = txn
        return [RequestReceived(request, txn)]

    def find_invite_for_cancel(self, cancel: Request) -> ServerTransaction | None:
        """The live INVITE server transaction that ``cancel`` cancels (RFC 3261 §9.2): same
        branch and sent-by, or with a 2543 branch the same Request-URI, tags, Call-ID, CSeq
        number and top Via. ``None`` if there is none (the TU answers the CANCEL 481).

        Raises:
            SipParseError: the CANCEL lacks a header the matching needs.
        """
        txn = self.server_table.get(_server_key(cancel, "INVITE"))
        return txn if txn is not None and txn.is_invite else None

    def send_response(
        self, transaction: ServerTransaction | Hashable, response: Response, now: float
    ) -> list[Event]:
        """Send a TU response through a server transaction (given itself or by its key).

        Returns:
            ``[TransmitMessage]`` and, when the response ends the transaction at once
            (final response of a non-INVITE over a reliable transport),
            ``TransactionTerminated``.

        Raises:
            TransactionStateError: no such live transaction, or its state forbids it.
            ValueError: a status outside 100..699.
        """
        if isinstance(transaction, ServerTransaction):
            txn = transaction if self.server_table.get(transaction.key) is transaction else None
        else:
            txn = self.server_table.get(transaction)
        if txn is None:
            raise TransactionStateError("no such live server transaction")
        events = txn.send_response(response, now)
        self._after(txn)
        return events

    # ------------------------------------------------------------------ client side
    def send_request(
        self, request: Request, dest: Any, reliable: bool, now: float
    ) -> tuple[ClientTransaction, list[Event]]:
        """Start a client transaction for ``request`` (RFC 3261 §17.1).

        The TU must have put a top Via with a fresh branch (:func:`new_branch`) on the request.
        A CANCEL (:func:`make_cancel`) reuses the INVITE's branch; it is still its own
        transaction.

        Args:
            request: the request to send (not ACK: the ACK for a 2xx is sent by the TU directly).
            dest: opaque destination given back in every TransmitMessage.
            reliable: True for TCP/TLS/SCTP/WS (no retransmissions).
            now: the current time in seconds.

        Returns:
            The transaction and ``[TransmitMessage(request, dest, reliable)]``.

        Raises:
            ValueError: ACK, a branch without the magic cookie, or a branch+method already in
                use by a live client transaction.
            SipParseError: no top Via.
        """
        if request.method == "ACK":
            raise ValueError("ACK is not sent in a client transaction (RFC 3261 §17)")
        if not has_magic_cookie(request.top_via.branch):
            raise ValueError("the top Via needs a branch from new_branch() (RFC 3261 §8.1.1.7)")
        txn = ClientTransaction(request, dest, reliable, self.config)
        if txn.key in self.client_table:
            raise ValueError(f"a client transaction {txn.key!r} already exists")
        self.client_table[txn.key] = txn
        events = txn.start(now)
        self._after(txn)
        return txn, events

    def receive_response(self, response: Response, source: Any, now: float) -> list[Event]:
        """Feed a response from the transport (RFC 3261 §17.1.3).

        Returns:
            What the matching client transaction emits (``ResponseReceived``, an ACK
            TransmitMessage, ``TransactionTerminated`` ..., or nothing for absorbed
            retransmissions), or ``[StrayResponse(response, source)]`` when none matches.

        Raises:
            SipParseError: no top Via or no/malformed CSeq (the caller drops the response).
        """
        key = (response.top_via.branch or "", response.cseq.method)
        txn = self.client_table.get(key)
        if txn is None:
            return [StrayResponse(response, source)]
        events = txn.receive_response(response, now)
        self._after(txn)
        return events

    # ------------------------------------------------------------------ time and errors
    def next_deadline(self) -> float | None:
        """The earliest time (seconds) at which :meth:`tick` has work, or ``None``."""
        if self._unqueued:
            self._queue_new()
        heap = self._heap
        while heap:
            deadline, _, txn = heap[0]
            if txn._queued == deadline and self._is_live(txn):
                return deadline
            heapq.heappop(heap)
        return None

    def tick(self, now: float) -> list[Event]:
        """Fire every timer due at ``now`` (seconds) in deadline order; returns the events
        (retransmissions, timeouts, terminations). Calling it early or often is harmless."""
        if self._unqueued:
            self._queue_new()
        events: list[Event] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, txn = heapq.heappop(heap)
            if txn._queued != deadline or not self._is_live(txn):
                continue
            txn._queued = None
            events.extend(txn.tick(now))
            self._after(txn)
        return events

    def transport_error(self, key_or_dest: Any, now: float) -> list[Event]:
        """The transport failed: for one transaction (given itself or by key), or for a
        destination (every live transaction whose ``dest == key_or_dest``, e.g. a closed
        flow; a linear scan). Each gets :class:`TransactionTransportError` and
        :class:`TransactionTerminated` (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.4)."""
        targets: list[Transaction]
        if isinstance(key_or_dest, Transaction):
            targets = [key_or_dest] if self._is_live(key_or_dest) else []
        else:
            found: Transaction | None = None
            try:
                found = self.client_table.get(key_or_dest) or self.server_table.get(key_or_dest)
            except TypeError:  # unhashable destination
                found = None
            if found is not None:
                targets = [found]
            else:
                targets = [
                    t
                    for t in itertools.chain(self.client_table.values(), self.server_table.values())
                    if t.dest == key_or_dest
                ]
        events: list[Event] = []
        for txn in targets:
            events.extend(txn.transport_error(now))
            self._after(txn)
        return events
