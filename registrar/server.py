"""One front end (FE) process: the SIP endpoint, request inspection and the method dispatcher.

Services register per method (:meth:`Dispatcher.register`); a method nobody registered is
answered ``405 Method Not Allowed`` with ``Allow`` when it is a standard SIP method this FE
will not serve, and ``501 Not Implemented`` otherwise (RFC 3261 §8.2.1, §21.5.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import platform
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipstack.framing import FramingLimits
from sipstack.native import native_summary
from sipstack.transport.endpoint import EndpointConfig, SipEndpoint
from sipstack.transport.flows import ListenSpec
from sipstack.transport.tls import client_ssl_context, server_ssl_context

from . import __version__
from .admin import AdminServer, binding_json
from .checks import InspectionPolicy
from .dispatch import Dispatcher, Service
from .events import EventId, emit
from .location import LocationService
from .pool.heartbeat import HeartbeatService
from .pool.membership import Membership, PeerUp
from .pool.rehome import Rehomer
from .pool.routing import PoolRouter
from .register import RegisterService, RegistrarSettings
from .users import UserDirectory, normalize_aor

__all__ = ["Dispatcher", "FrontEnd", "FrontEndConfig", "Service", "run_frontend"]

log = logging.getLogger("registrar.server")

@dataclass(slots=True)
class FrontEndConfig:
    """Settings of one FE process.

    Attributes:
        listen: sockets to open (``tls:127.0.0.1:5061`` ...).
        fqdn: this FE's host name (used in ``Warning`` and to recognise its own URIs).
        cert, key: PEM files for TLS listeners; ca: PEM CA bundle that verifies client
            certificates (peers) when given.
        domains: SIP domains this FE serves (lower case). Without any, REGISTER is not served.
        limits: framing limits (bytes, seconds).
        users_db: the user directory (SQLite, ``registrar users ...``).
        state_dir: where the FE keeps its bindings (``location.db``) and nonce secret.
        registrar: REGISTER policy (expiry bounds, contact limit, auth on/off).
        admin: ``host:port`` of the admin API, or ``None`` for none.
        topology: the loaded :class:`registrar.topology.Topology` when this FE is part of a
            pool (``registrar serve --topology FILE --fe FQDN``); ``fqdn`` names this FE in it.
    """

    listen: list[ListenSpec]
    fqdn: str = field(default_factory=socket.getfqdn)
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    domains: list[str] = field(default_factory=list)
    limits: FramingLimits = field(default_factory=FramingLimits)
    users_db: Path | None = None
    state_dir: Path | None = None
    registrar: RegistrarSettings = field(default_factory=RegistrarSettings)
    admin: tuple[str, int] | None = None
    topology: Any = None


class FrontEnd:
    """One FE: its endpoint, dispatcher and services. :meth:`start`, then :meth:`stop`."""

    def __init__(self, config: FrontEndConfig) -> None:
        self.config = config
        self.started = time.time()
        # The FE's own identities (not its domains: a request for a domain's user would be
        # forwarded to the user's bindings, so Max-Forwards 0 gets 483, RFC 3261 §16.3).
        local = {config.fqdn.lower(), "localhost"}
        local.update(spec.host.lower() for spec in config.listen)
        self.policy = InspectionPolicy(local_hosts=local)
        self.server_header = f"registrar/{__version__}"
        self.dispatcher = Dispatcher(self.policy, self.server_header)
        server_ssl = None
        if any(spec.transport == "tls" for spec in config.listen):
            if config.cert is None or config.key is None:
                raise ValueError(
                    "a tls listener needs --cert and --key (make them with 'registrar certs init')"
                )
            server_ssl = server_ssl_context(config.cert, config.key, ca=config.ca)
        client_ssl = None
        if config.ca is not None:
            # Outgoing TLS (pool peers): verify against the pool CA, present our certificate.
            client_ssl = client_ssl_context(config.ca, config.cert, config.key)
        self.endpoint = SipEndpoint(
            self.dispatcher,
            EndpointConfig(
                limits=config.limits,
                server_ssl=server_ssl,
                client_ssl=client_ssl,
                warning_agent=config.fqdn,
            ),
        )
        state = config.state_dir
        self.location = LocationService(state / "location.db" if state is not None else None)
        self.users: UserDirectory | None = None
        self.register: RegisterService | None = None
        self.admin: AdminServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pool: Any = None
        self.regevent: Any = None
        self.rehomer: Rehomer | None = None
        self.draining = False
        self.stop_requested = asyncio.Event()
        self._topology_stat: tuple[int, int] | None = None
        self._reload_now = asyncio.Event()
        self.router: PoolRouter | None = None
        self.membership: Membership | None = None
        self.heartbeats: HeartbeatService | None = None

    async def start(self) -> None:
        """Restore bindings, load users, open every listener and the admin API.

        Raises:
            OSError: an address cannot be bound; ValueError: unusable state files.
        """
        config = self.config
        restored = await asyncio.to_thread(self.location.open)
        log.info("location service: %d bindings restored", restored)
        if config.domains:
            settings = config.registrar
            settings.domains = list(config.domains)
            if settings.auth == "off":
                log.warning("authentication is OFF: any client may register any AOR")
            else:
                if config.users_db is None:
                    raise ValueError("REGISTER with digest needs --users-db (or --auth off)")
                self.users = UserDirectory(config.users_db)
                count = await asyncio.to_thread(self.users.load)
                log.info("user directory %s: %d users", config.users_db, count)
                self._tasks.append(asyncio.create_task(self.users.watch(1.0)))
            self.register = RegisterService(
                settings,
                self.location,
                self.users,
                _nonce_secret(config.state_dir),
                server_header=self.server_header,
            )
            self.dispatcher.register("REGISTER", self.register)
            self.endpoint.on_flow_closed_hooks.append(self.register.on_flow_closed)
            from .regevent import RegEventService  # reg event package (RFC 3680)

            self.regevent = RegEventService(
                self.endpoint, self.location, self.register, server_header=self.server_header
            )
            self.dispatcher.register("SUBSCRIBE", self.regevent)
        if config.topology is not None:
            self._start_pool(config.topology)
        self._tasks.append(asyncio.create_task(self._sweep()))
        for spec in config.listen:
            bound = await self.endpoint.listen(spec)
            self.policy.local_hosts.add(bound[0])
            log.info("listening on %s (%s:%s)", spec, *bound)
        if config.admin is not None:
            self.admin = AdminServer(self.status, self.bindings_json, self._gauges())
            host, port = await self.admin.start(*config.admin)
            log.info("admin API on http://%s:%s/status", host, port)

    def _start_pool(self, topology: Any) -> None:
        """Membership, router and heartbeats for this FE's pool (DESIGN.md §4)."""
        fe = topology.fe(self.config.fqdn)
        pool = topology.pool(fe.pool)
        self.pool = pool
        settings = topology.settings
        self.membership = Membership(
            self_id=fe.server_id,
            commissioned={f.server_id: f.fqdn for f in pool.front_ends},
            interval=float(settings.heartbeat_interval),
            timeout=float(settings.heartbeat_timeout),
            started=time.monotonic(),
        )
        users = self.users
        self.router = PoolRouter(
            topology,
            pool,
            fe,
            self.membership,
            home_pool=(lambda aor: _home_pool(users, aor)) if users is not None else None,
        )
        if self.register is not None:
            self.register.router = self.router
        self.heartbeats = HeartbeatService(
            self.endpoint,
            self.membership,
            fe,
            {f.server_id: f for f in pool.front_ends if f.server_id != fe.server_id},
            topology_version=lambda: int(self.config.topology.version),
        )
        self.dispatcher.heartbeats = self.heartbeats
        self.heartbeats.on_events = self._on_membership
        self.heartbeats.on_topology_version = lambda version: self._reload_now.set()
        regevent = self.regevent

        async def notified(aors: list[str], timeout: float) -> None:
            if regevent is not None:
                await asyncio.gather(*(regevent.wait_idle(aor, timeout) for aor in aors))

        self.rehomer = Rehomer(
            self.location,
            self.router,
            close_flow=self._close_flow,
            notified=notified,
            batch_users=int(settings.rehome_batch_users),
            batch_interval=float(settings.rehome_batch_interval),
        )
        self.rehomer.start()
        self.heartbeats.start()
        self._topology_stat = _stat(topology.path)
        self._tasks.append(asyncio.create_task(self._watch_topology()))
        emit(
            EventId.TOPOLOGY_LOADED,
            path=str(topology.path),
            version=topology.version,
            pool=pool.fqdn,
            server_id=fe.server_id,
        )

    def _on_membership(self, events: list[Any]) -> None:
        """A peer came up: AORs whose current registrar it is now go home (re-homing)."""
        if self.rehomer is None:
            return
        for event in events:
            if isinstance(event, PeerUp):
                self.rehomer.trigger(f"peer up: {event.fqdn}")

    def _close_flow(self, flow_id: int) -> None:
        flow = self.endpoint.flows.get(flow_id)
        if flow is not None:
            flow.close()

    async def _watch_topology(self) -> None:
        """Reload the topology when its file changes (polled every second) or a peer runs a
        newer version; an invalid file is reported (event 32022) and the old one kept."""
        from .topology import TopologyError, load_topology

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_now.wait(), 1.0)
            self._reload_now.clear()
            path = self.config.topology.path
            stat = _stat(path)
            if stat == self._topology_stat:
                continue
            self._topology_stat = stat
            try:
                topology = await asyncio.to_thread(load_topology, path)
            except TopologyError as exc:
                emit(EventId.TOPOLOGY_INVALID, logging.ERROR, path=str(path), error=str(exc))
                continue
            if topology.version == self.config.topology.version:
                continue
            self._apply_topology(topology)

    def _apply_topology(self, topology: Any) -> None:
        """Switch to a new topology: peers, routing, re-homing; drain if we left it."""
        assert self.router is not None and self.membership is not None
        assert self.heartbeats is not None and self.rehomer is not None
        old_fe = topology_fe = None
        with contextlib.suppress(KeyError):
            topology_fe = topology.fe(self.config.fqdn)
        old_fe = self.router.self_fe
        pool_fqdn = topology_fe.pool if topology_fe is not None else self.pool.fqdn
        try:
            pool = topology.pool(pool_fqdn)
        except KeyError:
            emit(
                EventId.TOPOLOGY_INVALID,
                logging.ERROR,
                path=str(topology.path),
                error=f"pool {pool_fqdn} is gone",
            )
            return
        self.config.topology = topology
        self.pool = pool
        emit(
            EventId.TOPOLOGY_LOADED,
            path=str(topology.path),
            version=topology.version,
            pool=pool.fqdn,
            server_id=old_fe.server_id,
        )
        commissioned = {f.server_id: f.fqdn for f in pool.front_ends}
        if topology_fe is None:
            self._start_drain(topology, pool, old_fe)
            return
        self.router.update(topology, pool, topology_fe)
        events = self.membership.update_commissioned(commissioned, time.monotonic())
        self.heartbeats.set_peers(
            {f.server_id: f for f in pool.front_ends if f.server_id != topology_fe.server_id}
        )
        if events:
            self.heartbeats._publish(events)
        self.rehomer.trigger(f"topology v{topology.version}")

    def _start_drain(self, topology: Any, pool: Any, old_fe: Any) -> None:
        """This FE was decommissioned: redirect new REGISTERs, re-home every AOR in batches,
        then stop (exit 0)."""
        assert self.router is not None and self.rehomer is not None
        assert self.heartbeats is not None
        if self.draining:
            return
        self.draining = True
        self.heartbeats.frozen = True
        self.router.update(topology, pool, old_fe)
        self.rehomer.progress.draining = True
        log.warning("%s is no longer in the topology: draining", self.config.fqdn)
        self._tasks.append(asyncio.create_task(self._drain()))

    async def _drain(self) -> None:
        assert self.rehomer is not None
        interval = max(0.2, self.rehomer.batch_interval)
        while True:
            self.rehomer.trigger("decommission")
            if self.location.aor_count == 0 and self.rehomer.idle.is_set():
                break
            await asyncio.sleep(interval)
        log.warning("%s drained: every AOR re-homed; stopping", self.config.fqdn)
        self.stop_requested.set()

    async def _sweep(self) -> None:
        """Remove expired bindings every second (RFC 3261 §10.2.1: bindings time out)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                expired = self.location.sweep()
                if expired:
                    log.info("%d bindings expired", len(expired))
            except Exception:
                log.exception("binding sweep failed")

    def status(self) -> dict[str, Any]:
        """The ``/status`` JSON object of this FE."""
        location = self.location
        return {
            "fqdn": self.config.fqdn,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "listen": [str(spec) for spec, _ in self.endpoint.listening],
            "domains": self.config.domains,
            "aors": location.aor_count,
            "bindings": len(location),
            "connections": len(self.endpoint.flows),
            "transactions": len(self.endpoint.transactions),
            "users": len(self.users) if self.users is not None else None,
            "messages": dict(self.endpoint.stats),
            "register": dict(self.register.stats) if self.register is not None else None,
            "backup_mode": sum(
                1 for aor in location.aors() if any(b.backup for b in location.lookup(aor))
            ),
            "rehome_pending": self.rehomer.progress.pending if self.rehomer else 0,
            "rehome": self.rehomer.status() if self.rehomer else None,
            "draining": self.draining,
            "pool": self._pool_status(),
        }

    def _pool_status(self) -> dict[str, Any] | None:
        membership = self.membership
        if membership is None or self.pool is None:
            return None
        now = time.monotonic()
        return {
            "fqdn": self.pool.fqdn,
            "server_id": membership.self_id,
            "topology_version": int(self.config.topology.version),
            "up": list(membership.up_ids()),
            "quorum": membership.quorum(),
            "settled": membership.settled(now),
            "peers": [membership.peer_state(sid) for sid in sorted(membership.peers)],
            "router": dict(self.router.stats) if self.router is not None else None,
            "heartbeats": dict(self.heartbeats.stats) if self.heartbeats is not None else None,
        }

    def bindings_json(self, aor: str) -> list[dict[str, Any]]:
        """The ``/bindings`` answer. Raises ValueError for a malformed AOR."""
        now = time.time()
        return [binding_json(b, now) for b in self.location.lookup(normalize_aor(aor))]

    def _gauges(self) -> dict[str, tuple[str, Callable[[], float]]]:
        location = self.location
        endpoint = self.endpoint
        return {
            "registrar_aors": ("AORs with at least one binding", lambda: location.aor_count),
            "registrar_bindings": ("bindings in the location service", lambda: len(location)),
            "registrar_connections": ("open TCP/TLS connections", lambda: len(endpoint.flows)),
            "registrar_transactions": ("live SIP transactions", lambda: len(endpoint.transactions)),
            "registrar_messages_received": (
                "SIP messages received",
                lambda: endpoint.stats["received"],
            ),
            "registrar_messages_malformed": (
                "malformed SIP messages",
                lambda: endpoint.stats["malformed"],
            ),
        }

    async def stop(self) -> None:
        """Close listeners, connections and the admin API; flush the bindings to disk."""
        emit(EventId.FE_STOPPING, fqdn=self.config.fqdn)
        if self.heartbeats is not None:
            await self.heartbeats.stop()
        if self.rehomer is not None:
            await self.rehomer.stop()
        for task in self._tasks:
            task.cancel()
        if self.admin is not None:
            await self.admin.stop()
        await self.endpoint.close()
        await asyncio.to_thread(self.location.close)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _home_pool(users: UserDirectory, aor: str) -> str | None:
    record = users.get(aor)
    return record.home_pool if record is not None else None


def _nonce_secret(state_dir: Path | None) -> bytes:
    """The digest nonce MAC key, kept in ``state_dir/nonce.secret`` (0600) so nonces stay
    valid across restarts; random per process without a state directory."""
    if state_dir is None:
        return os.urandom(32)
    path = state_dir / "nonce.secret"
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    data = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return data


def tune_gc() -> None:
    """Make cyclic garbage collection rare and cheap on an FE.

    An FE keeps tens of thousands of live objects that are not garbage (bindings, and every
    UDP transaction for Timer J = 32 s: about 64,000 at 2,000 requests/s). With CPython's
    default thresholds a full collection walks all of them every few seconds, pausing the
    event loop for hundreds of milliseconds, longer than a UDP client's 500 ms retransmission
    timer. The request path creates few reference cycles, so: freeze everything allocated at
    start-up (never scanned again) and collect the young generation 50 times less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(35_000, 20, 50)


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
    tune_gc()
    summary, problem = native_summary()
    # The interpreter matters as much (docs/native.md, "Interpreter"): say which one runs.
    (log.warning if problem else log.info)(
        "%s; Python %s (%s)",
        summary,
        platform.python_version(),
        getattr(sys, "_base_executable", sys.executable),
    )
    stop = fe.stop_requested
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
