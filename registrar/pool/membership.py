"""Pool membership from heartbeats: which FEs are up, and the quorum (DESIGN.md §4).

A sans-I/O state machine, fed heartbeats and clock ticks (seconds, monotonic):

* every FE sends every other FE a heartbeat each ``heartbeat_interval``;
* a peer is **up** from its first valid heartbeat, and **down** after ``heartbeat_timeout``
  without one;
* a peer whose *incarnation* (boot identifier) changes has restarted: it stays up, and a
  :class:`PeerRestarted` event is emitted;
* the **quorum** holds while a strict majority of the pool's commissioned FEs (this FE included)
  is up;
* a starting FE accepts backup-mode registrations only after one ``heartbeat_timeout``
  (:meth:`Membership.settled`), so that it learns who is up before it takes anyone's users.

The adapter (:mod:`registrar.pool.heartbeat`) carries heartbeats as SIP OPTIONS over mutual TLS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "Heartbeat",
    "Membership",
    "MembershipEvent",
    "PeerDown",
    "PeerRestarted",
    "PeerUp",
    "QuorumChanged",
]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What one heartbeat says about its sender.

    Attributes:
        server_id: the sender's server ID; fqdn: its FQDN.
        incarnation: a boot identifier, new at every start of the sender.
        topology_version: the version of the topology the sender runs.
        up: the server IDs the sender sees up (itself included).
    """

    server_id: int
    fqdn: str
    incarnation: str
    topology_version: int
    up: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """Base of membership events."""


@dataclass(frozen=True, slots=True)
class PeerUp(MembershipEvent):
    """A peer's first valid heartbeat since it was down (or since we started)."""

    server_id: int
    fqdn: str


@dataclass(frozen=True, slots=True)
class PeerDown(MembershipEvent):
    """No heartbeat from a peer for ``heartbeat_timeout`` seconds (or it was decommissioned)."""

    server_id: int
    fqdn: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerRestarted(MembershipEvent):
    """A peer's incarnation changed without a timeout: it restarted quickly."""

    server_id: int
    fqdn: str


@dataclass(frozen=True, slots=True)
class QuorumChanged(MembershipEvent):
    """The quorum was gained (``True``) or lost (``False``)."""

    quorum: bool
    up: int
    commissioned: int


@dataclass(slots=True)
class _Peer:
    server_id: int
    fqdn: str
    up: bool = False
    last_heard: float | None = None
    incarnation: str | None = None
    topology_version: int | None = None
    view: tuple[int, ...] = ()
    since: float = 0.0


@dataclass(slots=True)
class Membership:
    """This FE's view of its pool.

    Args:
        self_id: this FE's server ID; commissioned: server ID → FQDN of every commissioned FE
            of the pool (this one included).
        interval, timeout: ``heartbeat_interval`` and ``heartbeat_timeout`` in seconds.
        started: the monotonic time this FE started.
    """

    self_id: int
    commissioned: dict[int, str]
    interval: float
    timeout: float
    started: float
    peers: dict[int, _Peer] = field(default_factory=dict)
    _quorum: bool = False

    def __post_init__(self) -> None:
        self.peers = {
            sid: _Peer(sid, fqdn, since=self.started)
            for sid, fqdn in self.commissioned.items()
            if sid != self.self_id
        }
        self._quorum = self.quorum()

    # ------------------------------------------------------------------------ queries
    def is_up(self, server_id: int) -> bool:
        """True for this FE and for peers currently up; False for unknown IDs."""
        if server_id == self.self_id:
            return True
        peer = self.peers.get(server_id)
        return peer is not None and peer.up

    def up_ids(self) -> tuple[int, ...]:
        """Every commissioned ID seen up (this FE included), sorted."""
        return tuple(sorted(sid for sid in self.commissioned if self.is_up(sid)))

    def quorum(self) -> bool:
        """A strict majority of the commissioned FEs is up (this FE included)."""
        return 2 * len(self.up_ids()) > len(self.commissioned)

    def settled(self, now: float) -> bool:
        """One ``heartbeat_timeout`` has passed since start: backup mode may be accepted."""
        return now >= self.started + self.timeout

    def peer_state(self, server_id: int) -> dict[str, object]:
        """A JSON-able description of one peer (for the admin API)."""
        peer = self.peers[server_id]
        return {
            "server_id": peer.server_id,
            "fqdn": peer.fqdn,
            "state": "up" if peer.up else "down",
            "incarnation": peer.incarnation,
            "topology_version": peer.topology_version,
            "view": list(peer.view),
        }

    # ------------------------------------------------------------------------ inputs
    def heartbeat(self, hb: Heartbeat, now: float) -> list[MembershipEvent]:
        """A valid heartbeat from a peer arrived at ``now``. Unknown senders are ignored
        (the caller has already checked the sender's certificate against the topology)."""
        peer = self.peers.get(hb.server_id)
        if peer is None or peer.fqdn != hb.fqdn:
            return []
        events: list[MembershipEvent] = []
        if not peer.up:
            peer.up = True
            peer.since = now
            events.append(PeerUp(peer.server_id, peer.fqdn))
        elif peer.incarnation is not None and peer.incarnation != hb.incarnation:
            peer.since = now
            events.append(PeerRestarted(peer.server_id, peer.fqdn))
        peer.last_heard = now
        peer.incarnation = hb.incarnation
        peer.topology_version = hb.topology_version
        peer.view = hb.up
        events.extend(self._quorum_events())
        return events

    def tick(self, now: float) -> list[MembershipEvent]:
        """Declare down every peer silent for ``timeout`` seconds."""
        events: list[MembershipEvent] = []
        for peer in self.peers.values():
            if peer.up and (peer.last_heard is None or now - peer.last_heard >= self.timeout):
                peer.up = False
                peer.since = now
                events.append(PeerDown(peer.server_id, peer.fqdn, "heartbeat timeout"))
        events.extend(self._quorum_events())
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`tick` may next change something (seconds, monotonic), or ``None``."""
        times = [p.last_heard + self.timeout for p in self.peers.values() if p.up and p.last_heard]
        return min(times) if times else None

    def update_commissioned(
        self, commissioned: Mapping[int, str], now: float
    ) -> list[MembershipEvent]:
        """The topology changed: add new peers (down until heard), drop removed ones."""
        events: list[MembershipEvent] = []
        for sid in list(self.peers):
            if commissioned.get(sid) != self.peers[sid].fqdn:
                peer = self.peers.pop(sid)
                if peer.up:
                    events.append(PeerDown(sid, peer.fqdn, "decommissioned"))
        for sid, fqdn in commissioned.items():
            if sid != self.self_id and sid not in self.peers:
                self.peers[sid] = _Peer(sid, fqdn, since=now)
        self.commissioned = dict(commissioned)
        events.extend(self._quorum_events())
        return events

    def _quorum_events(self) -> list[MembershipEvent]:
        quorum = self.quorum()
        if quorum == self._quorum:
            return []
        self._quorum = quorum
        return [QuorumChanged(quorum, len(self.up_ids()), len(self.commissioned))]
