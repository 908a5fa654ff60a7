"""Heartbeats between the FEs of a pool: SIP OPTIONS over mutual TLS (DESIGN.md §4, §5).

Every ``heartbeat_interval`` this FE sends each peer an OPTIONS over a TLS connection it opened
itself, presenting its own certificate (mutual TLS) and verifying the peer's (chain to the pool CA,
host name = the peer FE's FQDN). The body (``application/vnd.registrar.heartbeat+json``) carries
the sender's server ID, FQDN, incarnation, topology version and its view of the pool; the 200
answer carries the same about the answering FE, so both directions prove life.

An incoming heartbeat is accepted only over TLS from a peer whose certificate names an FE of
this pool (CN/SAN, checked against the topology); anything else gets ``403`` and event 32010.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from sipstack.message import Request, Response, make_response
from sipstack.transport.endpoint import SipEndpoint
from sipstack.transport.flows import Flow
from sipstack.transport.tls import peer_identities

from ..events import EventId, emit
from .membership import (
    Heartbeat,
    Membership,
    MembershipEvent,
    PeerDown,
    PeerRestarted,
    PeerUp,
    QuorumChanged,
)

__all__ = ["HEARTBEAT_TYPE", "HeartbeatService", "decode_heartbeat", "encode_heartbeat"]

log = logging.getLogger("registrar.pool")

HEARTBEAT_TYPE = "application/vnd.registrar.heartbeat+json"


def encode_heartbeat(hb: Heartbeat) -> bytes:
    """The JSON body of a heartbeat."""
    return json.dumps(
        {
            "server_id": hb.server_id,
            "fqdn": hb.fqdn,
            "incarnation": hb.incarnation,
            "topology_version": hb.topology_version,
            "up": list(hb.up),
        },
        separators=(",", ":"),
    ).encode()


def decode_heartbeat(body: bytes) -> Heartbeat:
    """Parse a heartbeat body. Raises ValueError when it is malformed."""
    try:
        data = json.loads(body)
        return Heartbeat(
            server_id=int(data["server_id"]),
            fqdn=str(data["fqdn"]).lower(),
            incarnation=str(data["incarnation"]),
            topology_version=int(data["topology_version"]),
            up=tuple(int(i) for i in data.get("up", ())),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed heartbeat: {exc}") from None


class HeartbeatService:
    """Sends and receives heartbeats for one FE and keeps its :class:`Membership` current.

    Args:
        endpoint: the FE's SIP endpoint (its ``config.client_ssl`` presents the FE certificate).
        membership: the state machine to feed.
        self_fe: this FE's topology spec; peers: server ID → peer FE spec (``fqdn``, ``ip``,
            ``tls_port``).
        topology_version: returns the version of the topology this FE runs.
        on_events: called with the membership events (after they are logged).

    Attributes:
        frozen: stop timing peers out (set while draining).
        on_topology_version: called when a peer runs a newer topology version than ours.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        endpoint: SipEndpoint,
        membership: Membership,
        self_fe: Any,
        peers: dict[int, Any],
        topology_version: Callable[[], int],
        on_events: Callable[[list[MembershipEvent]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.membership = membership
        self.self_fe = self_fe
        self.peers = dict(peers)
        self.topology_version = topology_version
        self.on_events = on_events
        self.clock = clock
        self.incarnation = f"{int(time.time())}-{secrets.token_hex(4)}"
        self._flows: dict[int, Flow] = {}
        self._connecting: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.frozen = False
        self.on_topology_version: Callable[[int], None] | None = None
        self.stats = {"sent": 0, "received": 0, "refused": 0}

    # --------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the send loop (and the timeout checks)."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop sending and close the peer connections."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._inflight):
            task.cancel()
        for flow in self._flows.values():
            flow.close()

    def set_peers(self, peers: dict[int, Any]) -> None:
        """The topology changed: heartbeat these peers from now on."""
        for sid in list(self._flows):
            if sid not in peers or peers[sid].fqdn != self.peers.get(sid, peers[sid]).fqdn:
                self._flows.pop(sid).close()
        self.peers = dict(peers)

    def heartbeat(self) -> Heartbeat:
        """This FE's heartbeat now."""
        return Heartbeat(
            server_id=self.self_fe.server_id,
            fqdn=self.self_fe.fqdn,
            incarnation=self.incarnation,
            topology_version=self.topology_version(),
            up=self.membership.up_ids(),
        )

    # -------------------------------------------------------------------- receiving
    def is_heartbeat(self, req: Request) -> bool:
        """True when an OPTIONS carries a heartbeat body."""
        return bool(req.body) and req.content_type == HEARTBEAT_TYPE

    def handle(self, req: Request, flow: Flow) -> Response:
        """Answer an incoming heartbeat OPTIONS (200 with ours, or 403)."""
        try:
            hb = decode_heartbeat(req.body)
        except ValueError as exc:
            return make_response(req, 400, str(exc)[:80])
        if not self._trusted(flow, hb):
            self.stats["refused"] += 1
            emit(
                EventId.PEER_REFUSED,
                logging.WARNING,
                claimed=hb.fqdn,
                source=f"{flow.transport}:{flow.remote[0]}:{flow.remote[1]}",
                reason="certificate does not name an FE of this pool",
            )
            return make_response(req, 403, "Not A Known Server")
        self.stats["received"] += 1
        self._feed(hb)
        resp = make_response(req, 200)
        resp.headers.pop()
        resp.set_body(encode_heartbeat(self.heartbeat()), HEARTBEAT_TYPE)
        return resp

    def _trusted(self, flow: Flow, hb: Heartbeat) -> bool:
        if flow.transport != "tls" or not flow.peer_cert:
            return False
        peer = self.peers.get(hb.server_id)
        if peer is None or peer.fqdn != hb.fqdn:
            return False
        return hb.fqdn in {name.lower() for name in peer_identities(flow.peer_cert)}

    def _feed(self, hb: Heartbeat) -> None:
        events = self.membership.heartbeat(hb, self.clock())
        if hb.topology_version > self.topology_version() and self.on_topology_version:
            self.on_topology_version(hb.topology_version)
        if events:
            self._publish(events)

    def _publish(self, events: list[MembershipEvent]) -> None:
        for event in events:
            if isinstance(event, PeerUp):
                emit(EventId.PEER_UP, server_id=event.server_id, fqdn=event.fqdn)
            elif isinstance(event, PeerDown):
                emit(
                    EventId.PEER_DOWN,
                    logging.WARNING,
                    server_id=event.server_id,
                    fqdn=event.fqdn,
                    reason=event.reason,
                )
            elif isinstance(event, PeerRestarted):
                emit(EventId.PEER_RESTARTED, server_id=event.server_id, fqdn=event.fqdn)
            elif isinstance(event, QuorumChanged):
                emit(
                    EventId.QUORUM_GAINED if event.quorum else EventId.QUORUM_LOST,
                    logging.INFO if event.quorum else logging.WARNING,
                    up=event.up,
                    commissioned=event.commissioned,
                )
        if self.on_events is not None:
            self.on_events(events)

    # ---------------------------------------------------------------------- sending
    async def _loop(self) -> None:
        interval = self.membership.interval
        while not self._stopping:
            started = self.clock()
            # A draining FE has left the topology: its peers stop answering it, so it keeps
            # the last view it had instead of timing them out (DESIGN.md §4 decommission).
            events = [] if self.frozen else self.membership.tick(started)
            if events:
                self._publish(events)
            for sid, peer in self.peers.items():
                if sid != self.self_fe.server_id:
                    self._send(sid, peer)
            # Sleep until the next interval, waking early for a timeout check.
            deadline = started + interval
            # Frozen, nobody is timed out: waking for an overdue timeout would spin at 20 Hz.
            timeout_at = None if self.frozen else self.membership.next_deadline()
            if timeout_at is not None:
                deadline = min(deadline, max(timeout_at, self.clock() + 0.05))
            await asyncio.sleep(max(0.0, deadline - self.clock()))

    def _send(self, sid: int, peer: Any) -> None:
        flow = self._flows.get(sid)
        if flow is None or flow.closed:
            self._flows.pop(sid, None)
            if sid not in self._connecting:
                self._connecting.add(sid)
                self._spawn(self._connect(sid, peer))
            return
        self._spawn(self._exchange(sid, flow))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _connect(self, sid: int, peer: Any) -> None:
        try:
            flow = await asyncio.wait_for(
                self.endpoint.connect("tls", peer.ip, peer.tls_port, server_hostname=peer.fqdn),
                timeout=max(0.5, self.membership.interval),
            )
        except (TimeoutError, OSError, ValueError) as exc:
            log.debug("heartbeat connection to %s failed: %s", peer.fqdn, exc)
            return
        finally:
            self._connecting.discard(sid)
        if self._stopping or sid not in self.peers:
            flow.close()
            return
        self._flows[sid] = flow
        await self._exchange(sid, flow)

    async def _exchange(self, sid: int, flow: Flow) -> None:
        peer = self.peers.get(sid)
        if peer is None:
            return
        req = Request("OPTIONS", f"sip:{peer.fqdn}:{peer.tls_port};transport=tls")
        req.add("Via", self.endpoint.via_for(flow))
        req.add("Max-Forwards", "70")
        req.add("From", f"<sip:{self.self_fe.fqdn}>;tag={secrets.token_hex(4)}")
        req.add("To", f"<sip:{peer.fqdn}>")
        req.add("Call-ID", secrets.token_hex(12))
        req.add("CSeq", "1 OPTIONS")
        req.set_body(encode_heartbeat(self.heartbeat()), HEARTBEAT_TYPE)
        self.stats["sent"] += 1
        try:
            resp = await asyncio.wait_for(
                self.endpoint.request(req, flow), timeout=self.membership.timeout
            )
        except TimeoutError:
            return
        if resp.status == 200 and resp.content_type == HEARTBEAT_TYPE:
            try:
                hb = decode_heartbeat(resp.body)
            except ValueError:
                return
            if hb.server_id == sid and hb.fqdn == peer.fqdn:
                self._feed(hb)
        elif resp.status == 403:
            log.warning("peer %s refused our heartbeat (403): check its topology", peer.fqdn)
