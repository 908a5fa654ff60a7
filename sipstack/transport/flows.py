"""Flows and the flow table (RFC 5626 §3 "flow", RFC 5923 connection reuse).

A *flow* is the transport path a message arrived on: a TCP/TLS connection, or a UDP
(local socket, remote address) pair. Responses go back over the flow the request came on
(RFC 3261 §18.2.2) and later requests to a client reuse its flow (RFC 5626 §5.3, RFC 5923).

The :class:`FlowTable` indexes live stream flows by id and by remote address, plus aliases
(the address a client advertised in its Via or Contact).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Address", "Flow", "FlowTable", "ListenSpec", "parse_listen"]

Address = tuple[str, int]
"""(host, port): host is an IP address string (IPv6 without brackets)."""

_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Flow:
    """One flow.

    Attributes:
        transport: ``"udp"``, ``"tcp"`` or ``"tls"``.
        local: the local (ip, port); remote: the peer's (ip, port).
        send: writes bytes to the peer (never blocks; for streams it queues).
        close: closes the connection (no-op for UDP).
        id: a process-unique integer, stable for the life of the flow.
        peer_cert: for TLS, the peer certificate as returned by ``SSLSocket.getpeercert()``
            (empty when the client sent none).
        data: a dict for the layers above (e.g. registered AORs on this flow).
        closed: set once the connection has closed.
        origin: the transport object that made the flow (a UDP socket endpoint or a stream
            connection), used to open further flows from the same socket.
        reply_via: UDP only: the top Via of the request that arrived on this flow, as the
            endpoint rewrote it with ``received`` and ``rport`` (RFC 3581 §4); a response
            whose top Via is exactly this text goes back to ``remote`` without parsing it.
    """

    transport: str
    local: Address
    remote: Address
    send: Callable[[bytes], None]
    close: Callable[[], None]
    id: int = field(default_factory=lambda: next(_ids))
    peer_cert: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    origin: Any = None
    reply_via: str | None = field(default=None, repr=False)

    @property
    def reliable(self) -> bool:
        """True for TCP/TLS (RFC 3261 §17: timers collapse on reliable transports)."""
        return self.transport != "udp"

    @property
    def secure(self) -> bool:
        """True for TLS."""
        return self.transport == "tls"

    @property
    def via_transport(self) -> str:
        """The transport token of a Via header for this flow (``UDP``, ``TCP``, ``TLS``)."""
        return self.transport.upper()

    def __repr__(self) -> str:
        return f"<Flow {self.id} {self.transport} {self.remote[0]}:{self.remote[1]}>"


class FlowTable:
    """Live stream flows by id, by remote address and by alias. UDP flows are not stored.

    Memory: one entry per open connection plus its aliases; entries go when the connection
    closes (:meth:`remove`).
    """

    def __init__(self) -> None:
        self._by_id: dict[int, Flow] = {}
        self._by_addr: dict[tuple[str, str, int], Flow] = {}
        self._aliases: dict[tuple[str, str, int], Flow] = {}

    def add(self, flow: Flow) -> None:
        """Index a new connection."""
        self._by_id[flow.id] = flow
        self._by_addr[(flow.transport, flow.remote[0], flow.remote[1])] = flow

    def remove(self, flow: Flow) -> None:
        """Forget a closed connection and its aliases."""
        self._by_id.pop(flow.id, None)
        key = (flow.transport, flow.remote[0], flow.remote[1])
        if self._by_addr.get(key) is flow:
            del self._by_addr[key]
        for alias in flow.data.pop("_aliases", ()):
            if self._aliases.get(alias) is flow:
                del self._aliases[alias]

    def alias(self, flow: Flow, host: str, port: int) -> None:
        """Let requests to (transport, host, port) reuse ``flow`` (RFC 5923 §4)."""
        key = (flow.transport, host.lower(), port)
        self._aliases[key] = flow
        flow.data.setdefault("_aliases", []).append(key)

    def get(self, flow_id: int) -> Flow | None:
        """The open flow with this id, or ``None``."""
        return self._by_id.get(flow_id)

    def lookup(self, transport: str, host: str, port: int) -> Flow | None:
        """An open flow to (transport, host, port), by remote address or alias."""
        key = (transport, host.lower(), port)
        return self._by_addr.get(key) or self._aliases.get(key)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._by_id.values()))


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One listening socket: ``transport:host:port`` (``tls:127.0.0.1:5061``,
    ``udp:[::1]:5060``)."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


def parse_listen(text: str) -> ListenSpec:
    """Parse ``transport:host[:port]``; the port defaults to 5060 (UDP/TCP) or 5061 (TLS).

    Raises:
        ValueError: with a message naming the expected form.
    """
    transport, _, rest = text.partition(":")
    transport = transport.lower()
    if transport not in DEFAULT_PORTS or not rest:
        raise ValueError(
            f"bad listen address {text!r}: expected tls|tcp|udp:HOST[:PORT], "
            "e.g. tls:127.0.0.1:5061"
        )
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = rest.partition(":")
    if not host:
        raise ValueError(f"bad listen address {text!r}: missing host")
    try:
        port = int(port_text) if port_text else DEFAULT_PORTS[transport]
    except ValueError:
        raise ValueError(f"bad listen address {text!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad listen address {text!r}: port out of range")
    return ListenSpec(transport, host, port)
