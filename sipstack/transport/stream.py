"""TCP and TLS connections as asyncio protocols over the sans-I/O :mod:`sipstack.framing`.

Each connection owns one :class:`~sipstack.framing.StreamFramer` and at most one timer
(the framer's next deadline: header/slowloris or idle timeout), so thousands of idle
connections cost one heap entry each and never slow the others down (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from ..framing import (
    FramingError,
    FramingLimits,
    KeepAlivePing,
    MessageBytes,
    StreamFramer,
    Timeout,
)
from .flows import Flow

__all__ = ["FlowSink", "StreamConnection"]

log = logging.getLogger("sipstack.transport")


class FlowSink(Protocol):
    """What a transport delivers to (the :class:`~sipstack.transport.endpoint.SipEndpoint`)."""

    def on_message(self, data: bytes, flow: Flow) -> None:
        """One complete message arrived on ``flow``."""

    def on_framing_error(self, flow: Flow, status: int, reason: str, head: bytes = b"") -> None:
        """A fatal framing error: answer ``status`` if possible (``head`` is the offending
        message's header block when it arrived whole, else ``b""``); the flow is then closed."""

    def on_flow_opened(self, flow: Flow) -> None:
        """A connection was accepted or established."""

    def on_flow_closed(self, flow: Flow) -> None:
        """A connection closed (by either side)."""


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection (server-accepted or client-initiated).

    Args:
        sink: receives messages and flow events.
        transport_name: ``"tcp"`` or ``"tls"``.
        limits: framing limits (sizes in bytes, timeouts in seconds).
    """

    __slots__ = (
        "_deadline", "_framer", "_loop", "_out", "_sink", "_timer", "_transport", "flow", "name",
    )

    def __init__(self, sink: FlowSink, transport_name: str, limits: FramingLimits) -> None:
        self._sink = sink
        self.name = transport_name
        self._framer = StreamFramer(limits)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        # While data_received runs: what the messages it delivers write back, sent in one
        # transport write at its end (one syscall for a burst of pipelined requests).
        self._out: list[bytes] | None = None
        self.flow: Flow | None = None

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        sock = transport.get_extra_info("sockname") or ("?", 0)
        cert = None
        if self.name == "tls":
            ssl_object = transport.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert() if ssl_object is not None else None
        self.flow = Flow(
            self.name,
            (sock[0], sock[1]),  # local
            (peer[0], peer[1]),  # remote
            self._write,
            self.close,
            peer_cert=cert,
        )
        self._framer.tick(self._loop.time())  # start the idle timer (feed(b"") does not)
        self._schedule()
        self._sink.on_flow_opened(self.flow)

    def data_received(self, data: bytes) -> None:
        flow = self.flow
        assert flow is not None
        events = self._framer.feed(data, self._loop.time())
        if events:
            sink = self._sink
            self._out = out = []
            try:
                for event in events:
                    kind = type(event)
                    if kind is MessageBytes:
                        sink.on_message(event.data, flow)  # type: ignore[union-attr]
                    elif kind is KeepAlivePing:
                        out.append(b"\r\n")
                    elif kind is FramingError:
                        sink.on_framing_error(flow, event.status, event.reason, event.head)  # type: ignore[union-attr]
                        self.close()
                        return
            finally:
                self._out = None
                if out:
                    self._flush(out)
        self._schedule()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        flow = self.flow
        if flow is not None and not flow.closed:
            flow.closed = True
            self._sink.on_flow_closed(flow)

    # ------------------------------------------------------------------------ internals
    def _write(self, data: bytes) -> None:
        out = self._out
        if out is not None:  # inside data_received: written once at its end, in order
            out.append(data)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _flush(self, out: list[bytes]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Close the connection after flushing what was written."""
        out = self._out
        if out:  # closed while data_received runs: what was written so far goes first
            pending = out[:]
            out.clear()
            self._flush(pending)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _schedule(self) -> None:
        deadline = self._framer.next_deadline()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._deadline = None
            return
        # Keep an earlier timer: when it fires we look again (lazy rescheduling, cheap).
        if self._timer is not None and self._deadline is not None and self._deadline <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._deadline = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._deadline = None
        for event in self._framer.tick(self._loop.time()):
            if isinstance(event, Timeout):
                log.info(
                    "closing %s flow %s:%s: %s timeout",
                    self.name,
                    *(self.flow.remote if self.flow else ("?", 0)),
                    event.kind,
                )
                self.close()
                return
        self._schedule()
