#!/usr/bin/env python3
"""Re-homing benchmarks (issue 5): re-home time, peak de-registration rate, longest time a
user was unregistered, during recovery, commission and decommission.

A 4-FE pool is started on its own loopback block (default ``127.0.51.x``) as the integration
tests do (``tests/pooltools.py``, see ``bench/pool.py``), with the settings of
``examples/contoso.toml``: ``rehome_batch_users = 50``, ``rehome_batch_interval = 1.0``,
heartbeat 1 s / timeout 3 s, ``backup_max_expires = 300``. The FEs log at ``info`` so that
their re-homing events (32040 ``rehome-batch``, with the number of AORs) are in their logs.

``--users`` AORs (default 10,000) are chosen so that the FE to be killed (``fe1``) is the
*primary* registrar of every one of them: ``user00001@contoso.com``, ``user00002`` ... are
kept when their logical registrar sequence (DESIGN.md §4,
``registrar.pool.sequence.logical_sequence``) puts ``fe1``'s server ID before the other
FEs' IDs. Only these users are in the user directory and registered.

Each user is one :class:`registrar.client.PoolClient` in this process (``run()``: register
from DNS over TLS, digest, follow ``301``, refresh, re-register from DNS when the flow drops
-- the pool client's own behaviour), all sharing one endpoint and a caching resolver. Every
client's ``on_event`` callback records, per user, when it lost its registration (the FE
closed its flow -- ``flow-lost`` -- or, with ``--subscribe``, a reg-event NOTIFY said its
binding was ``deactivated``) and when it was registered again (``registered``/``refreshed``);
that interval is the time the user was unregistered. It is also measured from the binding's
removal on the server: the time of the last 32040 batch event the user's old FE logged
before the flow was lost (FE log timestamps, millisecond resolution, same clock).

Phases, one after the other (each waits for its end condition with a deadline):

``failover``      SIGKILL ``fe1``; until every user is registered in backup mode on the
                  three survivors (their ``/status`` ``backup_mode`` sums to ``--users``).
                  This phase prepares the next one. By default (``--failover paced``) the
                  clients' own retry loops are stopped before the kill and, once every
                  survivor sees ``fe1`` down, this script registers the users again
                  ``--concurrency`` (100) at a time: 10,000 clients in one Python process
                  retrying at once (``--failover natural``) overload this process, the
                  pool's DNS server and the 2 CPUs they share with the FEs, so their TLS
                  handshakes time out and the exponential back-off (up to 60 s) stretches
                  the failover to many minutes -- a property of the test set-up, not of
                  the pool (``bench/pool.py`` part a measures natural failover of 2,000
                  users held by a separate ``registrar client load`` process).
``recovery``      restart ``fe1``; until every user is registered on ``fe1`` again in primary
                  mode (as the clients see it) and no survivor holds a backup registration.
                  **Re-home time** = restart → all home. Predicted: the survivors de-register
                  in parallel, each ``rehome_batch_users`` AORs per ``rehome_batch_interval``,
                  so ≈ (largest survivor share / 50) x 1 s, after ``fe1`` is seen up; also
                  printed: ``users / 50 x 1 s`` (one FE doing it all).
``commission``    ``registrar topology commission`` a fifth FE (``fe5``, ``.5`` of the
                  block, the free server ID that takes the most of these users), ``certs
                  init``, start it; until every user whose sequence now puts ``fe5`` first is
                  registered there.
``decommission``  ``registrar topology decommission`` ``fe5``: it drains (re-homes its users
                  to ``fe1`` in batches) and exits; until every user is on ``fe1`` again and
                  ``fe5`` has exited.

Figures per phase: its duration; the **peak de-registration rate** on the network, the
largest number of AORs in 32040 events of all FEs within any 1-second window (sliding, over
the event timestamps; also the busiest 10 s divided by 10), and the total; the first and last
batch; the **unregistered time** per user (count, median, p99, max, and which user); the
client events and failure reasons; and how many CPUs the machine, this process (the
clients), the FEs and everything else used (other work on the machine distorts timings).

Command line::

    .venv/bin/python bench/rehome.py [--users 10000] [--phases failover,recovery,commission,
        decommission] [--failover paced|natural] [--concurrency 100] [--subscribe]
        [--timeout 180] [--block 127.0.51] [--keep] [--json]

``--users 1000`` makes a quick run (a few minutes). Progress lines go to stderr; tables (or
``--json``) to stdout. Exit 1 when a phase missed its end condition. Standard library and the
project's own modules (and ``tests/pooltools.py``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import re
import resource
import shutil
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (BENCH, REPO / "tests", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import cpu  # noqa: E402
import pooltools  # noqa: E402
from cpu import Say, fmt, table  # noqa: E402
from pool import BenchPool, raise_nofile, start_bench_pool  # noqa: E402
from register import busy_cpus, check_quiet, machine_jiffies, say_stderr  # noqa: E402

from registrar.client import ClientError, PoolClient, PoolResolver, client_endpoint  # noqa: E402

PHASES = ("failover", "recovery", "commission", "decommission")
DOMAIN = pooltools.DOMAIN
PASSWORD = pooltools.DEMO_PASSWORD
EVENT_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*\bevent=32040\b.*?\baors=(\d+)", re.M
)


# ------------------------------------------------------------------------------ users


def choose_aors(layout: pooltools.PoolLayout, victim: str, count: int) -> list[str]:
    """The first ``count`` of ``sip:user00001@contoso.com`` ... whose primary is ``victim``."""
    chosen = []
    n = 0
    while len(chosen) < count:
        n += 1
        aor = f"sip:user{n:05d}@{DOMAIN}"
        if layout.primary(aor).fqdn == victim:
            chosen.append(aor)
    return chosen


def commission_id(layout: pooltools.PoolLayout, aors: Sequence[str], victim_id: int) -> int:
    """The free server ID that, once commissioned, becomes the current registrar of the most of
    ``aors`` (whose current registrar is ``victim_id``)."""
    used = layout.ids
    best, best_n = 0, -1
    for sid in range(1, layout.max_servers + 1):
        if sid in used:
            continue
        moved = sum(1 for a in aors if _first(layout.sequence(a), used | {sid}) == sid)
        if moved > best_n:
            best, best_n = sid, moved
    _ = victim_id
    return best


def _first(sequence: Sequence[int], ids: set[int]) -> int | None:
    for sid in sequence:
        if sid in ids:
            return sid
    return None


# ------------------------------------------------------------------------------ clients


@dataclass
class UserState:
    """What the on_event callback knows of one user."""

    down_since: float | None = None  # wall time the registration was lost
    down_reason: str = ""
    down_fe_ip: str | None = None
    gaps: list[tuple[float, float, str, str | None]] = field(default_factory=list)
    # (start wall, end wall, reason, fe ip it was lost from)


class Clients:
    """N :class:`PoolClient` objects in this process, with per-user unregistered intervals."""

    def __init__(
        self, layout: pooltools.PoolLayout, aors: Sequence[str], subscribe: bool, say: Say
    ) -> None:
        self.layout = layout
        self.say = say
        self.endpoint = client_endpoint(layout.ca)
        self.resolver = PoolResolver(layout.dns_text, cache=True)
        self.state = {aor: UserState() for aor in aors}
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []
        self.log: list[tuple[float, str, str]] = []  # (wall time, event, detail)
        kwargs: dict[str, Any] = {
            "resolver": self.resolver,
            "endpoint": self.endpoint,
            "expires": 3600,
        }
        params = inspect.signature(PoolClient).parameters
        self.subscribe = subscribe and "subscribe" in params
        if subscribe and not self.subscribe:
            say("this PoolClient has no 'subscribe' option; running without")
        if self.subscribe:
            kwargs["subscribe"] = True
        self.clients = [
            PoolClient(aor, PASSWORD, on_event=self._handler(aor), **kwargs) for aor in aors
        ]

    def _handler(self, aor: str) -> Callable[[str, dict[str, Any]], None]:
        st = self.state[aor]

        def on_event(name: str, info: dict[str, Any]) -> None:
            now = time.time()
            if name not in ("keepalive", "dns", "connected", "challenged"):
                self.log.append((now, name, _reason(name, info)))
            if name in ("flow-lost", "deactivated") or (name == "failed" and info.get("refresh")):
                if st.down_since is None:
                    st.down_since, st.down_reason = now, name
                    st.down_fe_ip = info.get("fe_ip")
            elif name in ("registered", "refreshed") and st.down_since is not None:
                st.gaps.append((st.down_since, now, st.down_reason, st.down_fe_ip))
                st.down_since = None

        return on_event

    async def register_all(self, concurrency: int = 200) -> tuple[int, int, float]:
        """Register every client that is not registered, ``concurrency`` at a time."""
        gate = asyncio.Semaphore(concurrency)
        ok = failed = 0
        started = time.monotonic()
        todo = [c for c in self.clients if not c.registered]
        total = len(todo)
        mark = max(1, total // 10)

        async def one(client: PoolClient) -> None:
            nonlocal ok, failed
            async with gate:
                try:
                    await client.register()
                    ok += 1
                except ClientError as exc:
                    failed += 1
                    self._error(f"{client.aor}: {exc}")
            if (ok + failed) % mark == 0:
                self.say(
                    f"registering: {ok + failed}/{total}, {ok} ok, {failed} failed, "
                    f"{time.monotonic() - started:.1f}s"
                )

        await asyncio.gather(*(one(c) for c in todo))
        return ok, failed, time.monotonic() - started

    async def _end_runs(self, timeout: float) -> None:
        """Set :attr:`stop`, give the ``run()`` tasks ``timeout`` seconds, cancel the rest."""
        self.stop.set()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=timeout)
        for task in self.tasks:
            task.cancel()

    async def pause(self) -> None:
        """Stop the ``run()`` loops (registrations and flows stay as they are)."""
        await self._end_runs(60)
        self.tasks = []
        self.stop = asyncio.Event()

    def start(self) -> None:
        """Keep every user registered (``PoolClient.run``) until :meth:`close`."""
        for client in self.clients:
            self.tasks.append(asyncio.create_task(self._run(client)))

    async def _run(self, client: PoolClient) -> None:
        try:
            await client.run(self.stop)
        except ClientError as exc:
            self._error(f"{client.aor} gave up: {exc}")
        except Exception as exc:  # a bug in the client must not stop the benchmark
            self._error(f"{client.aor} crashed: {type(exc).__name__}: {exc}")

    def _error(self, text: str) -> None:
        """Keep ``text`` in :attr:`errors` (the first 20 only)."""
        if len(self.errors) < 20:
            self.errors.append(text)

    def where(self) -> dict[str, int]:
        """Users registered per ``FE fqdn`` (``+backup`` suffix in backup mode), and
        ``unregistered``."""
        counts: dict[str, int] = {}
        for client in self.clients:
            result = client.result
            if client.registered and result is not None:
                key = result.fe_fqdn + ("+backup" if result.backup else "")
            else:
                key = "unregistered"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def on(self, fqdn: str, *, backup: bool | None = None, aors: set[str] | None = None) -> int:
        """How many (of ``aors``) are registered on ``fqdn`` (in that mode, if given)."""
        n = 0
        for client in self.clients:
            if aors is not None and client.aor not in aors:
                continue
            result = client.result
            if not client.registered or result is None or result.fe_fqdn != fqdn:
                continue
            if backup is None or result.backup == backup:
                n += 1
        return n

    async def close(self) -> None:
        await self._end_runs(30)
        for client in self.clients:
            with contextlib.suppress(TimeoutError, OSError, ClientError):
                await asyncio.wait_for(client.close(), 5)
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(self.endpoint.close(), 10)


def _reason(name: str, info: dict[str, Any]) -> str:
    """A short, groupable detail of a client event (failures: kind and status/message)."""
    if name in ("failed", "connect-failed", "subscribe-failed"):
        text = str(info.get("error", ""))
        text = re.sub(r"(\d+\.\d+\.\d+\.\d+):\d+", r"\1:PORT", text)
        text = re.sub(r"\('(\d+\.\d+\.\d+\.\d+)', \d+\)", r"\1", text)
        text = re.sub(r"user\d+", "userN", text)
        return f"{info.get('kind', '')}: {text[:110]}".strip(": ")
    if name == "redirected":
        return str(info.get("target", ""))
    if name == "retry-after":
        return f"{info.get('seconds')}s"
    return ""


# ------------------------------------------------------------------------------ FE logs


def rehome_events(log_dir: Path) -> list[tuple[float, str, int]]:
    """Every 32040 event in the FE logs: ``(unix time, fe name, aors)``, sorted by time."""
    events = []
    for path in sorted(log_dir.glob("fe*.log")):
        text = path.read_text(errors="replace")
        for m in EVENT_RE.finditer(text):
            stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            events.append((stamp + int(m.group(2)) / 1000, path.stem, int(m.group(3))))
    events.sort()
    return events


def peak_rate(events: Sequence[tuple[float, str, int]], window: float = 1.0) -> tuple[int, float]:
    """Largest AOR total of events within any ``window`` seconds: ``(aors, window start)``."""
    best, at, j, total = 0, 0.0, 0, 0
    for i, (t, _, n) in enumerate(events):
        total += n
        while events[j][0] <= t - window:
            total -= events[j][2]
            j += 1
        if total > best:
            best, at = total, events[j][0]
        _ = i
    return best, at


# ------------------------------------------------------------------------------ phases


def fe_cpu(pool: BenchPool) -> dict[int, float]:
    """CPU seconds used so far by every running FE, by PID."""
    return {pid: cpu.sample_cpu(pid).seconds for pid in pool.fe_pids().values()}


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _since(phase: Phase) -> float:
    """Seconds from the start of ``phase`` (its action: kill, restart, ...) until now."""
    return round(time.time() - phase.started, 2)


@dataclass
class Phase:
    name: str
    started: float  # wall time
    pool: BenchPool
    ended: float | None = None
    ok: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    _cpu0: tuple[tuple[int, int], float, dict[int, float]] | None = None

    def __post_init__(self) -> None:
        self._cpu0 = (machine_jiffies(), self_cpu(), fe_cpu(self.pool))

    def close(self) -> None:
        """End it: wall time, and the CPU the machine, the clients and the FEs used."""
        self.ended = time.time()
        assert self._cpu0 is not None
        machine0, self0, fes0 = self._cpu0
        machine = busy_cpus(machine0, machine_jiffies())
        wall = max(self.ended - self.started, 1e-6)
        fes1 = fe_cpu(self.pool)
        fe_used = sum(v - fes0.get(pid, 0.0) for pid, v in fes1.items()) / wall
        clients_used = (self_cpu() - self0) / wall
        self.info.update(
            machine_cpus=round(machine, 2),
            clients_cpus=round(clients_used, 2),
            fes_cpus=round(fe_used, 2),
            other_cpus=round(max(0.0, machine - clients_used - fe_used), 2),
        )


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def wait_for(
    cond: Callable[[], Any],
    timeout: float,
    say: Say,
    progress: Callable[[], str],
    every: float = 5.0,
    poll: float = 0.25,
) -> float | None:
    """Poll ``cond`` (may be a coroutine function) until true; seconds taken or None."""
    started = time.monotonic()
    last = started
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        now = time.monotonic()
        if value:
            return now - started
        if now - started > timeout:
            say(f"deadline ({timeout:.0f}s) passed: {progress()}")
            return None
        if now - last >= every:
            say(f"t+{now - started:5.1f}s: {progress()}")
            last = now
        await asyncio.sleep(poll)


async def status_sum(pool: BenchPool, names: Sequence[str], key: str) -> int:
    def get() -> int:
        return sum(int((pool.status(n) or {}).get(key) or 0) for n in names)

    return await blocking(get)


async def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    say = say_stderr("rehome")
    out: dict[str, Any] = {"users": args.users, "phases": []}
    out["background_cpus"] = round(await blocking(check_quiet, say), 2)
    # Topology first (to choose users), then the pool with exactly those users.
    probe = pooltools.write_topology(workdir / "probe", args.block)
    victim = probe.fes[0].fqdn
    t0 = time.monotonic()
    aors = choose_aors(probe, victim, args.users)
    say(f"{len(aors)} users whose primary is {victim} (scanned {aors[-1]}) in "
        f"{time.monotonic() - t0:.1f}s")  # fmt: skip
    pool = await blocking(
        start_bench_pool, workdir / "pool", args.block, aors, say, log_level="info"
    )
    layout = pool.layout
    settings = tomllib.loads(layout.path.read_text())["settings"]
    batch_users = int(settings.get("rehome_batch_users", 50))
    batch_interval = float(settings.get("rehome_batch_interval", 1.0))
    out.update(
        rehome_batch_users=batch_users,
        rehome_batch_interval=batch_interval,
        victim=victim,
        heartbeat_timeout=layout.heartbeat_timeout,
    )
    vfe = layout.fe(victim)
    survivors = [fe.fqdn for fe in layout.fes if fe.fqdn != victim]
    clients = Clients(layout, aors, args.subscribe, say_stderr("clients"))
    out["subscribe"] = clients.subscribe
    phases: list[Phase] = []
    try:
        ok, failed, took = await clients.register_all(args.concurrency)
        out["initial"] = {"registered": ok, "failed": failed, "seconds": round(took, 2)}
        say(f"registered {ok}, failed {failed} in {took:.1f}s ({ok / took:.0f}/s); "
            f"where: {clients.where()}")  # fmt: skip
        clients.start()
        all_aors = len(aors)
        deadline = args.timeout + 0.05 * all_aors  # seconds per phase, at least

        # ---------------------------------------------------------------- failover
        if "failover" in args.phases:
            paced = args.failover == "paced"
            if paced:
                await clients.pause()
            phase = Phase("failover", time.time(), pool)
            phases.append(phase)
            phase.info["mode"] = args.failover
            say(f"failover ({args.failover}): SIGKILL {victim}")
            await blocking(pool.kill_fe, victim)
            if paced:
                # The survivors must see it down first, or they redirect to the dead FE.
                await wait_for(
                    lambda: blocking(
                        lambda: all(vfe.server_id not in (pool.view(s) or ()) for s in survivors)
                    ),
                    60,
                    say,
                    lambda: "survivors still see it up",
                )
                phase.info["seen_down_after"] = round(time.time() - phase.started, 2)
                say(
                    f"failover: survivors see {victim} down after "
                    f"{phase.info['seen_down_after']}s; registering the users again, "
                    f"{args.concurrency} at a time"
                )
                ok, failed, took = await clients.register_all(args.concurrency)
                say(f"failover: {ok} registered, {failed} failed in {took:.1f}s")
                clients.start()

            async def all_backup() -> bool:
                return (
                    clients.on(vfe.fqdn) == 0
                    and sum(clients.on(s, backup=True) for s in survivors) == all_aors
                    and await status_sum(pool, survivors, "backup_mode") >= all_aors
                )

            took = await wait_for(
                all_backup,
                deadline,
                say,
                lambda: f"clients: {clients.where()}",
            )
            took = _since(phase) if took is not None else None
            phase.close()
            phase.ok = took is not None
            per_fe = {s: (pool.status(s) or {}).get("backup_mode") for s in survivors}
            phase.info.update(seconds=took, backup_per_fe=per_fe)
            say(f"failover: all {all_aors} in backup mode {took}s after the kill: {per_fe}")

        # ---------------------------------------------------------------- recovery
        if "recovery" in args.phases:
            if pool.running(victim):
                await blocking(pool.kill_fe, victim)
            shares = {s: clients.on(s, backup=True) for s in survivors}
            phase = Phase("recovery", time.time(), pool)
            phases.append(phase)
            say(f"recovery: restart {victim}; backup users per survivor: {shares}")
            await blocking(pool.start_fe, victim)
            seen = await wait_for(
                lambda: blocking(
                    lambda: all(vfe.server_id in (pool.view(s) or ()) for s in survivors)
                ),
                60,
                say,
                lambda: "survivors do not see it up yet",
            )
            seen_up = round(time.time() - phase.started, 2) if seen is not None else None

            async def all_home() -> bool:
                return (
                    clients.on(victim, backup=False) == all_aors
                    and await status_sum(pool, survivors, "backup_mode") == 0
                )

            took = await wait_for(
                all_home,
                deadline + 3 * all_aors / batch_users * batch_interval,
                say,
                lambda: f"clients: {clients.where()}",
            )
            took = _since(phase) if took is not None else None
            phase.close()
            phase.ok = took is not None
            largest = max(shares.values(), default=0)
            phase.info.update(
                seconds=took,
                seen_up_after=seen_up,
                shares=shares,
                predicted_parallel=round(largest / batch_users * batch_interval, 1),
                predicted_serial=round(all_aors / batch_users * batch_interval, 1),
            )
            say(f"recovery: all home {took}s after the restart (predicted ≈ "
                f"{phase.info['predicted_parallel']}s after it is seen up)")  # fmt: skip

        # ---------------------------------------------------------------- commission
        new_fe: pooltools.FeInfo | None = None
        if "commission" in args.phases:
            if not pool.running(victim):
                await blocking(pool.start_fe, victim)
            block = layout.fes[0].ip.rsplit(".", 1)[0]
            ip = f"{block}.5"
            ports_free = all(
                pooltools._port_free(ip, port, kind)
                for port, kinds in (
                    (vfe.tcp_port, (socket.SOCK_STREAM, socket.SOCK_DGRAM)),
                    (vfe.tls_port, (socket.SOCK_STREAM,)),
                    (vfe.admin_port, (socket.SOCK_STREAM,)),
                )
                for kind in kinds
            )
            sid = commission_id(layout, aors, vfe.server_id)
            ids = layout.ids | {sid}
            moving = {a for a in aors if _first(layout.sequence(a), ids) == sid}
            phase = Phase("commission", time.time(), pool)
            phases.append(phase)
            phase.info.update(server_id=sid, moving=len(moving))
            if not ports_free:
                phase.info["error"] = f"the pool's ports are not free on {ip}"
                say(f"commission: {phase.info['error']}; skipped")
            else:
                say(f"commission: fe5.contoso.com ({ip}) with server ID {sid}: "
                    f"{len(moving)} of the users move to it")  # fmt: skip
                done = await blocking(
                    pooltools.run_registrar,
                    "topology", "commission", str(layout.path), "--pool", "pool.contoso.com",
                    "--fqdn", "fe5.contoso.com", "--ip", ip,
                    "--tls-port", str(vfe.tls_port), "--tcp-port", str(vfe.tcp_port),
                    "--udp-port", str(vfe.udp_port), "--admin-port", str(vfe.admin_port),
                    "--server-id", str(sid),
                )  # fmt: skip
                if done.returncode != 0:
                    phase.info["error"] = f"commission: {done.stdout}{done.stderr}"
                else:
                    certs = await blocking(
                        pooltools.run_registrar, "certs", "init", "--topology", str(layout.path)
                    )
                    if certs.returncode != 0:
                        phase.info["error"] = f"certs init: {certs.stdout}{certs.stderr}"
                if "error" not in phase.info:
                    new_fe = pooltools.FeInfo(
                        fqdn="fe5.contoso.com", ip=ip, server_id=sid,
                        tls_port=vfe.tls_port, tcp_port=vfe.tcp_port,
                        udp_port=vfe.udp_port, admin_port=vfe.admin_port,
                    )  # fmt: skip
                    layout.fes.append(new_fe)
                    await blocking(pool.start_fe, new_fe.fqdn)

                    async def moved() -> bool:
                        return (
                            clients.on(new_fe.fqdn, backup=False) == len(moving)
                            and clients.on(victim, backup=False) == all_aors - len(moving)
                            and await status_sum(pool, [victim], "rehome_pending") == 0
                        )

                    took = await wait_for(
                        moved,
                        deadline + 3 * len(moving) / batch_users * batch_interval,
                        say,
                        lambda: f"clients: {clients.where()}",
                    )
                    took = _since(phase) if took is not None else None
                    phase.ok = took is not None
                    phase.info.update(
                        seconds=took,
                        predicted=round(len(moving) / batch_users * batch_interval, 1),
                    )
                    say(f"commission: {len(moving)} users on fe5 after {took}s")
                else:
                    say(f"commission FAILED: {phase.info['error']}")
            phase.close()

        # ---------------------------------------------------------------- decommission
        if "decommission" in args.phases and new_fe is not None:
            on_new = clients.on(new_fe.fqdn)
            phase = Phase("decommission", time.time(), pool)
            phases.append(phase)
            say(f"decommission: fe5.contoso.com ({on_new} users drain to {victim})")
            done = await blocking(
                pooltools.run_registrar,
                "topology", "decommission", str(layout.path), "--fqdn", new_fe.fqdn,
            )  # fmt: skip
            if done.returncode != 0:
                phase.info["error"] = f"decommission: {done.stdout}{done.stderr}"
                say(f"decommission FAILED: {phase.info['error']}")
            else:

                def drained() -> bool:
                    return clients.on(victim, backup=False) == all_aors and not pool.running(
                        new_fe.fqdn
                    )

                took = await wait_for(
                    drained,
                    deadline + 3 * on_new / batch_users * batch_interval,
                    say,
                    lambda: f"clients: {clients.where()}; fe5 running: {pool.running(new_fe.fqdn)}",
                )
                took = _since(phase) if took is not None else None
                phase.ok = took is not None
                phase.info.update(
                    seconds=took,
                    users=on_new,
                    predicted=round(on_new / batch_users * batch_interval, 1),
                    fe5_exit=pool.procs[new_fe.fqdn].popen.poll()  # type: ignore[union-attr]
                    if new_fe.fqdn in pool.procs
                    else None,
                )
                say(f"decommission: all on {victim} and fe5 gone after {took}s")
            phase.close()
    finally:
        say("stopping the clients")
        await clients.close()
        out["client_errors"] = clients.errors[:10]
        events = rehome_events(pool.log_dir)
        say("stopping the pool")
        await blocking(pool.close)

    # ---------------------------------------------------------------- figures
    ip_to_fe = {fe.ip: fe.name for fe in layout.fes}
    bounds = [p.started for p in phases] + [float("inf")]
    for i, phase in enumerate(phases):
        lo, hi = bounds[i], bounds[i + 1]
        evs = [e for e in events if lo <= e[0] < hi]
        peak, peak_at = peak_rate(evs)
        peak10, _ = peak_rate(evs, 10.0)
        per_fe: dict[str, int] = {}
        for _, fe_name, n in evs:
            per_fe[fe_name] = per_fe.get(fe_name, 0) + n
        gaps = []
        for aor, st in clients.state.items():
            for start, end, reason, fe_ip in st.gaps:
                if not lo <= start < hi:
                    continue
                fe_name = ip_to_fe.get(fe_ip or "")
                removal = max(
                    (t for t, name, _ in evs if name == fe_name and start - 10 <= t <= start),
                    default=None,
                )
                gaps.append(
                    {
                        "aor": aor,
                        "seconds": end - start,
                        "from_removal": end - removal if removal is not None else None,
                        "reason": reason,
                    }
                )
        client_events: dict[str, int] = {}
        failures: dict[str, int] = {}
        for t, name, detail in clients.log:
            if lo <= t < hi:
                client_events[name] = client_events.get(name, 0) + 1
                if name in ("failed", "connect-failed", "subscribe-failed"):
                    failures[f"{name}: {detail}"] = failures.get(f"{name}: {detail}", 0) + 1
        if evs:
            phase.info.update(
                first_batch_after=round(evs[0][0] - lo, 2),
                last_batch_after=round(evs[-1][0] - lo, 2),
            )
        phase.info.update(
            client_events=dict(sorted(client_events.items())),
            client_failures=dict(sorted(failures.items(), key=lambda kv: -kv[1])[:8]),
            rehome_events=len(evs),
            deregistered=sum(n for _, _, n in evs),
            deregistered_per_fe=per_fe,
            peak_deregistrations_per_second=peak,
            peak_deregistrations_per_second_10s=round(peak10 / 10, 1),
            peak_at=round(peak_at - phase.started, 2) if peak else None,
            gaps=_gap_stats(gaps),
        )
        out["phases"].append(
            {
                "name": phase.name,
                "ok": phase.ok,
                "duration": round((phase.ended or phase.started) - phase.started, 2),
                **phase.info,
            }
        )
    peak_all, _ = peak_rate(events)
    peak_all10, _ = peak_rate(events, 10.0)
    out["peak_deregistrations_per_second"] = peak_all
    out["peak_deregistrations_per_second_10s"] = round(peak_all10 / 10, 1)
    out["deregistered_total"] = sum(n for _, _, n in events)
    return out


def _gap_stats(gaps: list[dict[str, Any]]) -> dict[str, Any]:
    if not gaps:
        return {"users": 0}
    secs = sorted(g["seconds"] for g in gaps)
    worst = max(gaps, key=lambda g: g["seconds"])
    removal = sorted(g["from_removal"] for g in gaps if g["from_removal"] is not None)

    def pct(values: list[float], p: float) -> float:
        return round(values[min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1)], 3)

    stats: dict[str, Any] = {
        "users": len(gaps),
        "p50": pct(secs, 50),
        "p99": pct(secs, 99),
        "max": round(secs[-1], 3),
        "max_aor": worst["aor"],
        "reasons": dict(sorted(_count(g["reason"] for g in gaps).items())),
    }
    if removal:
        stats.update(
            from_removal_p50=pct(removal, 50),
            from_removal_p99=pct(removal, 99),
            from_removal_max=round(removal[-1], 3),
        )
    return stats


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


# ------------------------------------------------------------------------------ output


def render(out: dict[str, Any]) -> str:
    lines = [
        f"re-homing: {out['users']} users whose primary is {out['victim']}; batches of "
        f"{out['rehome_batch_users']} AORs every {out['rehome_batch_interval']:g}s per FE; "
        f"clients {'with' if out.get('subscribe') else 'without'} reg-event subscriptions"
    ]
    init = out.get("initial") or {}
    lines.append(
        f"initial registration: {init.get('registered')} ok, {init.get('failed')} failed in "
        f"{init.get('seconds')}s"
    )
    rows = []
    for p in out["phases"]:
        gaps = p.get("gaps") or {}
        predicted = p.get("predicted_parallel", p.get("predicted"))
        rows.append(
            [
                p["name"],
                "ok" if p["ok"] else "NO",
                fmt(p.get("seconds"), ".1f"),
                fmt(predicted, ".1f"),
                fmt(p.get("deregistered")),
                fmt(p.get("peak_deregistrations_per_second")),
                fmt(p.get("peak_deregistrations_per_second_10s"), ".0f"),
                fmt(gaps.get("users")),
                fmt(gaps.get("p50"), ".2f"),
                fmt(gaps.get("p99"), ".2f"),
                fmt(gaps.get("max"), ".2f"),
                fmt(gaps.get("from_removal_max"), ".2f"),
            ]
        )
    lines.append(
        table(
            [
                "phase",
                "done",
                "seconds",
                "predicted",
                "de-registered",
                "peak AORs/1s",
                "AORs/s 10s",
                "users down",
                "down p50 s",
                "down p99 s",
                "down max s",
                "max from removal",
            ],
            rows,
            left=2,
        )
    )
    for p in out["phases"]:
        if p["name"] == "recovery":
            lines.append(
                f"  recovery: re-home time (restart -> all home) {fmt(p.get('seconds'), '.1f')}s; "
                f"{out['victim']} seen up by the survivors after "
                f"{fmt(p.get('seen_up_after'), '.1f')}s; backup users per survivor "
                f"{p.get('shares')}; predicted {p.get('predicted_parallel')}s in parallel "
                f"(largest share / {out['rehome_batch_users']} x "
                f"{out['rehome_batch_interval']:g}s), {p.get('predicted_serial')}s serial "
                f"(users / {out['rehome_batch_users']} x {out['rehome_batch_interval']:g}s)"
            )
        if p["name"] == "commission":
            lines.append(
                f"  commission: server ID {p.get('server_id')}, {p.get('moving')} users move"
            )
        if p["name"] == "failover" and p.get("mode") == "paced":
            lines.append(
                f"  failover (paced): survivors saw it down after "
                f"{fmt(p.get('seen_down_after'))}s; users registered again by this script, "
                "--concurrency at a time"
            )
        elif p["name"] == "failover":
            lines.append("  failover (natural): every client retried on its own")
        if p.get("first_batch_after") is not None:
            lines.append(
                f"  {p['name']}: server side: first 32040 batch {p['first_batch_after']}s, "
                f"last {p['last_batch_after']}s after the phase began"
            )
        gaps = p.get("gaps") or {}
        if gaps.get("users"):
            lines.append(
                f"  {p['name']}: longest unregistered {gaps['max']:.2f}s ({gaps['max_aor']}); "
                f"lost by {gaps.get('reasons')}"
            )
        if p.get("machine_cpus") is not None:
            lines.append(
                f"  {p['name']}: CPUs busy: machine {p['machine_cpus']} of {os.cpu_count()}: "
                f"clients (this process) {p.get('clients_cpus')}, FEs {p.get('fes_cpus')}, "
                f"other work {p.get('other_cpus')} (DNS server, other programs)"
            )
        if p.get("client_events"):
            lines.append(f"  {p['name']}: client events {p['client_events']}")
        for reason, n in (p.get("client_failures") or {}).items():
            lines.append(f"      x{n} {reason}")
        if p.get("error"):
            lines.append(f"  {p['name']}: error: {p['error']}")
    lines.append(
        f"peak de-registrations on the network (32040 events, any 1 s window, all FEs): "
        f"{out.get('peak_deregistrations_per_second')} AORs/s "
        f"(busiest 10 s: {out.get('peak_deregistrations_per_second_10s')} AORs/s); "
        f"{out.get('deregistered_total')} de-registered in all"
    )
    lines.append("Kamailio: no equivalent (no pool, no re-homing)")
    if out.get("client_errors"):
        lines.append("client errors (first ones): " + "; ".join(out["client_errors"][:5]))
    if out.get("error"):
        lines.append(f"error: {out['error']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Re-homing: re-home time, peak de-registration rate, longest time "
        "unregistered (see bench/README.md).",
    )
    parser.add_argument("--users", type=int, default=10000, help="users (10000)")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated subset, in this order"
    )
    parser.add_argument(
        "--subscribe", action="store_true", help="clients subscribe to their reg event"
    )
    parser.add_argument(
        "--failover",
        choices=("paced", "natural"),
        default="paced",
        help="paced (default): after the kill, stop the clients' own retries, wait until the "
        "survivors see the FE down and register the users again --concurrency at a time; "
        "natural: let every client retry on its own (a thundering herd)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="registrations in flight when pacing (100)"
    )
    parser.add_argument("--block", default="127.0.51", help="loopback /24 prefix (127.0.51)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="deadline per phase: this many seconds + 0.05 s per user (+ 3x the predicted "
        "re-home time) (180)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    for p in args.phases:
        if p not in PHASES:
            parser.error(f"unknown phase {p!r}")
    if args.users < 1:
        parser.error("--users must be at least 1")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    nofile = raise_nofile()
    if nofile < args.users * 2 + 200:
        print(f"# open files limit {nofile} may be too low for {args.users} users", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="bench-rehome-"))
    try:
        out = asyncio.run(run_bench(args, workdir))
    except (RuntimeError, TimeoutError, OSError, AssertionError) as exc:
        out = {"error": f"{type(exc).__name__}: {exc}", "phases": []}
    finally:
        if args.keep:
            print(f"# work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
    elif "victim" in out:
        print()
        print(render(out))
    else:
        print(f"error: {out.get('error')}")
    failed = "error" in out or not out["phases"] or any(not p["ok"] for p in out["phases"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
