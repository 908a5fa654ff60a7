"""UDP as an asyncio datagram protocol (RFC 3261 §18.1.1, §18.2.1).

Each datagram is one message. A datagram made only of CR/LF is a keep-alive and is ignored
(RFC 5626 §4.4.1 uses STUN on UDP; a bare CRLF is the common legacy form). A datagram larger
than ``max_message_size`` bytes is answered 513 by the endpoint.
"""

from __future__ import annotations

import asyncio
import logging

from .flows import Address, Flow
from .stream import FlowSink

__all__ = ["DatagramEndpoint"]

log = logging.getLogger("sipstack.transport")


class DatagramEndpoint(asyncio.DatagramProtocol):
    """One UDP socket. Flows are (socket, remote address) pairs, made per datagram and not
    stored (UDP has no connection to reuse).

    Args:
        sink: receives messages (it enforces the size limit).
    """

    def __init__(self, sink: FlowSink) -> None:
        self._sink = sink
        self._transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("0.0.0.0", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("sockname")
        self.local = (sock[0], sock[1])

    def flow_to(self, addr: Address) -> Flow:
        """A flow from this socket to ``addr`` (for sending requests or responses)."""
        transport = self._transport
        assert transport is not None

        def send(data: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(data, addr)

        return Flow("udp", self.local, addr, send, _noop, origin=self)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        if not data.strip(b"\r\n"):
            return  # keep-alive
        self._sink.on_message(data, self.flow_to((addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error on %s:%s: %s", *self.local, exc)

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()


def _noop() -> None:
    return None
