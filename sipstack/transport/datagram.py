"""UDP as an asyncio datagram protocol (RFC 3261 §18.1.1, §18.2.1).

Each datagram is one message. A datagram made only of CR/LF is a keep-alive and is ignored
(RFC 5626 §4.4.1 uses STUN on UDP; a bare CRLF is the common legacy form). A datagram larger
than ``max_message_size`` bytes is answered 513 by the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from .flows import Address, Flow
from .stream import FlowSink

__all__ = ["DatagramEndpoint"]

log = logging.getLogger("sipstack.transport")

_MAX_FLOWS = 4096
"""Peers whose flow is kept for reuse (the cache is emptied when full)."""


class DatagramEndpoint(asyncio.DatagramProtocol):
    """One UDP socket. A flow is a (socket, remote address) pair (RFC 5626 §3): the flow of a
    peer is made at its first datagram and reused for the next ones (UDP has no connection;
    the most recent :data:`_MAX_FLOWS` peers are remembered, so that a busy peer costs no
    allocation per datagram).

    Args:
        sink: receives messages (it enforces the size limit).
    """

    def __init__(self, sink: FlowSink) -> None:
        self._sink = sink
        self._transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("0.0.0.0", 0)
        self._flows: dict[Address, Flow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("sockname")
        self.local = (sock[0], sock[1])

    def flow_to(self, addr: Address) -> Flow:
        """The flow from this socket to ``addr`` (for sending requests or responses)."""
        assert self._transport is not None
        flows = self._flows
        flow = flows.get(addr)
        if flow is None:
            if len(flows) >= _MAX_FLOWS:
                flows.clear()
            flow = flows[addr] = Flow(
                "udp", self.local, addr, partial(self._send, addr), _noop, origin=self
            )
        return flow

    def _send(self, addr: Address, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        if data[:1] in b"\r\n" and not data.strip(b"\r\n"):
            return  # keep-alive (or empty)
        flow = self._flows.get(addr)  # (host, port); flow_to() for the rest (IPv6: 4-tuple)
        self._sink.on_message(data, flow if flow is not None else self.flow_to(addr[:2]))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error on %s:%s: %s", *self.local, exc)

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()


def _noop() -> None:
    return None
