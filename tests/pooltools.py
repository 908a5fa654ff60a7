"""Helpers for tests that run a whole pool (DNS server + FEs as separate processes) on loopback.

* :func:`write_topology` — copy ``examples/contoso.toml`` into a test directory with absolute
  ``[paths]``, a loopback block of its own (``127.0.X.1``..``127.0.X.4``, DNS on
  ``127.0.X.53``) and ports that are free on every address of the block; returns a
  :class:`PoolLayout` (FEs, server IDs, ports) that also predicts where an AOR registers
  (:meth:`PoolLayout.current`, DESIGN.md §4 via :func:`registrar.pool.sequence.logical_sequence`).
* :func:`start_pool` / :class:`LivePool` — starts the pieces by hand (``registrar certs
  init``, ``users import``, ``dns serve``, one ``registrar serve --topology --fe`` per FE) so
  tests can SIGKILL, SIGSTOP, SIGCONT and restart single FEs; waits on the FEs' own views
  (admin ``/status``), never on fixed sleeps. :func:`start_pool` retries with fresh ports when
  one was taken between choosing and binding.
* Admin API access (:func:`admin_get`, :meth:`LivePool.bindings_of`) with a small thread pool
  for checking thousands of AORs.
* :func:`sip_register` — a small synchronous REGISTER client over TCP (digest MD5/SHA-256,
  optional, no redirect following) for deterministic checks against one FE.
* :func:`run_pool_sipp` — ``tests/sipp/pool_register.xml`` with ``-t tn`` against one FE.
* :class:`LoadClient` — ``registrar client load ... --hold -1`` as a background process: its
  users stay registered (and re-register from DNS when their flow drops) until :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from procs import (
    REPO,
    SipStream,
    header_values,
    read_message,
    registrar_command,
    run_sipp_command,
    status_of,
    wait_until,
)

from registrar.pool.sequence import logical_sequence
from registrar.users import normalize_aor
from sipstack.auth import answer_challenge, format_credentials, parse_challenge

__all__ = [
    "DEMO_PASSWORD",
    "DOMAIN",
    "FeInfo",
    "LivePool",
    "LoadClient",
    "PoolLayout",
    "PoolStartError",
    "RegisterOutcome",
    "admin_get",
    "aor_of",
    "common_free_ports",
    "parse_contact",
    "run_pool_sipp",
    "run_registrar",
    "sip_register",
    "start_pool",
    "write_topology",
]

DOMAIN = "contoso.com"
DEMO_PASSWORD = "demo"
EXAMPLE = REPO / "examples" / "contoso.toml"
SIPP_SCENARIO = REPO / "tests" / "sipp" / "pool_register.xml"


def aor_of(n: int) -> str:
    """``sip:user0001@contoso.com`` for ``n = 1`` (the demo user directory's names)."""
    return f"sip:user{n:04d}@{DOMAIN}"


# ------------------------------------------------------------------------------ topology


@dataclass(frozen=True)
class FeInfo:
    """One FE of the test topology."""

    fqdn: str
    ip: str
    server_id: int
    tls_port: int
    tcp_port: int
    udp_port: int
    admin_port: int

    @property
    def admin(self) -> str:
        return f"{self.ip}:{self.admin_port}"

    @property
    def name(self) -> str:
        """``fe1`` for ``fe1.contoso.com``."""
        return self.fqdn.split(".", 1)[0]


@dataclass
class PoolLayout:
    """The topology a test wrote (see :func:`write_topology`)."""

    path: Path
    root: Path
    fes: list[FeInfo]
    dns: tuple[str, int]
    max_servers: int
    heartbeat_interval: float
    heartbeat_timeout: float
    backup_max_expires: int

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    @property
    def users_db(self) -> Path:
        return self.root / "users.db"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def dns_text(self) -> str:
        return f"{self.dns[0]}:{self.dns[1]}"

    @property
    def ids(self) -> set[int]:
        return {fe.server_id for fe in self.fes}

    def fe(self, key: str | int) -> FeInfo:
        """The FE by FQDN, short name (``fe2``) or server ID."""
        for fe in self.fes:
            if key in (fe.fqdn, fe.name, fe.server_id):
                return fe
        raise KeyError(key)

    def sequence(self, aor: str) -> tuple[int, ...]:
        return logical_sequence(normalize_aor(aor), self.max_servers)

    def current(self, aor: str, up: Iterable[int] | None = None) -> FeInfo:
        """The AOR's current registrar when the IDs ``up`` are up (default: every FE): the
        first commissioned-and-up ID of its logical sequence (DESIGN.md §4)."""
        alive = self.ids if up is None else set(up) & self.ids
        for sid in self.sequence(aor):
            if sid in alive:
                return self.fe(sid)
        raise LookupError(f"no FE up for {aor}")

    def primary(self, aor: str) -> FeInfo:
        return self.current(aor)


def _port_free(ip: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def common_free_ports(ips: Sequence[str], count: int, *, udp: bool = False) -> list[int]:
    """``count`` distinct ports that are free right now on every address of ``ips`` for TCP
    (and UDP too with ``udp``). The kernel proposes them (bind to port 0 on the first address)."""
    ports: list[int] = []
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((ips[0], 0))
            port = int(probe.getsockname()[1])
        if port in ports:
            continue
        kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
        if all(_port_free(ip, port, kind) for ip in ips for kind in kinds):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} ports free on all of {ips}")


def write_topology(
    root: Path,
    block: str,
    *,
    heartbeat_interval: float = 1.0,
    heartbeat_timeout: float = 3.0,
    backup_max_expires: int = 300,
) -> PoolLayout:
    """Copy ``examples/contoso.toml`` to ``root/topology.toml`` for the loopback block ``block``
    (``"127.0.42"``: FEs on ``.1``-``.4`` in file order, DNS on ``.53``), with absolute paths
    under ``root`` and ports free on every address of the block (one SIP port for TCP and UDP,
    one TLS port, one admin port, shared by the four FEs as in the example)."""
    root.mkdir(parents=True, exist_ok=True)
    doc = tomlkit.parse(EXAMPLE.read_text())
    settings = doc["settings"]
    settings["heartbeat_interval"] = heartbeat_interval
    settings["heartbeat_timeout"] = heartbeat_timeout
    settings["backup_max_expires"] = backup_max_expires
    paths = doc["paths"]
    paths["certs"] = str(root / "certs")
    paths["users_db"] = str(root / "users.db")
    paths["state_dir"] = str(root / "state")
    pool = doc["pools"][0]
    front_ends = pool["front_ends"]
    ips = [f"{block}.{i + 1}" for i in range(len(front_ends))]
    dns_ip = f"{block}.53"
    sip_port, tls_port, admin_port = common_free_ports(ips, 3, udp=True)
    (dns_port,) = common_free_ports([dns_ip], 1, udp=True)
    doc["dns"]["listen"] = f"{dns_ip}:{dns_port}"
    fes = []
    for ip, fe in zip(ips, front_ends, strict=True):
        fe["ip"] = ip
        fe["tls_port"] = tls_port
        fe["tcp_port"] = sip_port
        fe["udp_port"] = sip_port
        fe["admin_port"] = admin_port
        fes.append(
            FeInfo(
                fqdn=str(fe["fqdn"]),
                ip=ip,
                server_id=int(fe["server_id"]),
                tls_port=tls_port,
                tcp_port=sip_port,
                udp_port=sip_port,
                admin_port=admin_port,
            )
        )
    path = root / "topology.toml"
    path.write_text(tomlkit.dumps(doc))
    return PoolLayout(
        path=path,
        root=root,
        fes=fes,
        dns=(dns_ip, dns_port),
        max_servers=int(pool["max_servers"]),
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        backup_max_expires=backup_max_expires,
    )


def run_registrar(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``registrar ARGS`` to completion (output captured, never raises on exit status)."""
    return subprocess.run(
        [*registrar_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------------------- admin API


def admin_get(address: str, path: str, timeout: float = 2.0) -> Any:
    """GET ``http://ADDRESS/PATH`` and decode the JSON. Raises OSError (unreachable) or
    ValueError (not JSON / HTTP error)."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"{address}{path}: HTTP {exc.code}") from None


# --------------------------------------------------------------------------- processes


def _wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    message: str | Callable[[], str],
    poll: float = 0.05,
) -> Any:
    """:func:`procs.wait_until` polling every ``poll`` seconds (TimeoutError past ``timeout``)."""
    return wait_until(predicate, timeout, poll, message)


@dataclass
class _Proc:
    name: str
    command: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"=== {' '.join(self.command)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGCONT + SIGTERM, SIGKILL past ``timeout``; returns the exit status."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(10)
        return popen.returncode

    def kill(self) -> None:
        popen = self.popen
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class PoolStartError(RuntimeError):
    """A process of the pool exited while the pool was starting (its log tail is the message)."""


def start_pool(
    root: Path,
    block: str,
    users: int = 2000,
    attempts: int = 3,
    *,
    layout: Callable[[Path, str], PoolLayout] = write_topology,
    pool_class: type[LivePool] | None = None,
) -> LivePool:
    """``layout(root / "attemptN", block)`` (default :func:`write_topology`) + ``pool_class``
    (default :class:`LivePool`) :meth:`~LivePool.prepare` + :meth:`~LivePool.start`, again with
    fresh ports (up to ``attempts`` times) when a port was taken between choosing and binding."""
    for attempt in range(attempts):
        live = (pool_class or LivePool)(layout(root / f"attempt{attempt + 1}", block), users=users)
        try:
            live.prepare()
            live.start()
            return live
        except PoolStartError as exc:
            live.close()
            if "cannot listen" not in str(exc) or attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


class LivePool:
    """A pool whose DNS server and FEs this test process starts and owns (see module doc).

    Args:
        layout: from :func:`write_topology`.
        users: demo users to import (``user0001..``, password ``demo``).
    """

    fe_log_level = "warning"
    """``--log-level`` of the FEs :meth:`start_fe` starts."""

    def __init__(self, layout: PoolLayout, users: int = 2000) -> None:
        self.layout = layout
        self.users = users
        self.log_dir = layout.root / "logs"
        self.procs: dict[str, _Proc] = {}
        self.stopped: set[str] = set()  # FQDNs currently SIGSTOPped

    # --------------------------------------------------------------------- set-up
    def prepare(self) -> None:
        """Certificates for every FE and the demo user directory."""
        lay = self.layout
        done = run_registrar("certs", "init", "--topology", str(lay.path))
        assert done.returncode == 0, f"certs init: {done.stdout}{done.stderr}"
        rows = lay.root / "users.csv"
        with rows.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["aor", "password"])
            for n in range(1, self.users + 1):
                writer.writerow([aor_of(n), DEMO_PASSWORD])
        done = run_registrar("users", "import", "--users-db", str(lay.users_db), str(rows))
        assert done.returncode == 0, f"users import: {done.stdout}{done.stderr}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the DNS server and every FE; wait until every FE sees every FE up and has
        settled (accepts backup mode)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lay = self.layout
        dns = _Proc(
            "dns",
            [*registrar_command(), "dns", "serve", "--topology", str(lay.path)],
            self.log_dir / "dns.log",
        )
        self.procs["dns"] = dns
        dns.start()
        for fe in lay.fes:
            self.start_fe(fe.fqdn, wait=False)
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.procs.values():
                if not proc.running:
                    raise PoolStartError(f"{proc.name} exited while starting:\n{proc.log_tail()}")
            try:
                self.wait_views(lay.ids, timeout=0.5, settled=True)
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
        self.wait_dns(timeout=timeout)

    def start_fe(self, fqdn: str, wait: bool = True, timeout: float = 30.0) -> None:
        """Start (or restart) one FE: ``registrar serve --topology FILE --fe FQDN``."""
        fe = self.layout.fe(fqdn)
        proc = self.procs.get(fe.fqdn)
        if proc is not None and proc.running:
            raise RuntimeError(f"{fe.fqdn} is already running")
        proc = _Proc(
            fe.fqdn,
            [
                *registrar_command(),
                "serve",
                "--topology",
                str(self.layout.path),
                "--fe",
                fe.fqdn,
                "--log-level",
                self.fe_log_level,
            ],
            self.log_dir / f"{fe.name}.log",
        )
        self.procs[fe.fqdn] = proc
        self.stopped.discard(fe.fqdn)
        proc.start()
        if wait:
            _wait_until(
                lambda: self.status(fe.fqdn) is not None or not proc.running,
                timeout,
                lambda: f"{fe.fqdn} admin API not answering:\n{proc.log_tail()}",
            )
            assert proc.running, f"{fe.fqdn} exited:\n{proc.log_tail()}"

    def wait_dns(self, timeout: float = 20.0) -> None:
        """Until the DNS server answers an A query for the pool FQDN."""
        import dns.message
        import dns.query

        def answers() -> bool:
            query = dns.message.make_query("pool.contoso.com", "A")
            try:
                resp = dns.query.udp(
                    query, self.layout.dns[0], port=self.layout.dns[1], timeout=0.5
                )
            except (OSError, dns.exception.DNSException):
                return False
            return bool(resp.answer)

        _wait_until(answers, timeout, lambda: f"DNS not answering:\n{self.procs['dns'].log_tail()}")

    def pid(self, fqdn: str) -> int:
        proc = self.procs[self.layout.fe(fqdn).fqdn]
        assert proc.popen is not None
        return proc.popen.pid

    def kill_fe(self, fqdn: str) -> None:
        """SIGKILL one FE (and reap it)."""
        self.procs[self.layout.fe(fqdn).fqdn].kill()

    def pause_fe(self, fqdn: str) -> None:
        """SIGSTOP one FE."""
        name = self.layout.fe(fqdn).fqdn
        self.procs[name].signal(signal.SIGSTOP)
        self.stopped.add(name)

    def resume_fe(self, fqdn: str) -> None:
        """SIGCONT one FE."""
        name = self.layout.fe(fqdn).fqdn
        self.procs[name].signal(signal.SIGCONT)
        self.stopped.discard(name)

    def running(self, fqdn: str) -> bool:
        proc = self.procs.get(self.layout.fe(fqdn).fqdn)
        return proc is not None and proc.running

    def close(self) -> dict[str, int | None]:
        """Stop everything (SIGCONT first for stopped FEs); returns each exit status."""
        codes = {}
        for name, proc in self.procs.items():
            codes[name] = proc.stop()
        return codes

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {n}\n{p.log_tail(lines)}" for n, p in self.procs.items())

    # --------------------------------------------------------------------- views
    def status(self, fqdn: str, timeout: float = 1.0) -> dict[str, Any] | None:
        """The FE's admin ``/status``, or ``None`` when it does not answer."""
        fe = self.layout.fe(fqdn)
        try:
            data = admin_get(fe.admin, "/status", timeout)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def view(self, fqdn: str) -> set[int] | None:
        """The server IDs the FE sees up (``pool.up`` of its ``/status``), ``None`` if silent."""
        status = self.status(fqdn)
        if status is None or not status.get("pool"):
            return None
        return set(status["pool"]["up"])

    def wait_views(
        self,
        up: Iterable[int],
        *,
        fes: Iterable[str] | None = None,
        timeout: float = 30.0,
        settled: bool = False,
    ) -> float:
        """Wait until every FE of ``fes`` (default: those whose ID is in ``up``) sees exactly
        ``up`` as up (and, with ``settled``, accepts backup mode); returns the seconds waited."""
        want = set(up)
        names = (
            [self.layout.fe(f).fqdn for f in fes]
            if fes is not None
            else [self.layout.fe(sid).fqdn for sid in sorted(want)]
        )
        started = time.monotonic()
        last: dict[str, Any] = {}

        def ok() -> bool:
            for name in names:
                status = self.status(name)
                pool = (status or {}).get("pool") or {}
                last[name] = pool.get("up")
                if set(pool.get("up") or ()) != want or (settled and not pool.get("settled")):
                    return False
            return True

        _wait_until(
            ok,
            timeout,
            lambda: f"views never became {sorted(want)}: {last}\n{self.log_tails()}",
            poll=0.05,
        )
        return time.monotonic() - started

    def bindings_of(self, fqdn: str, aor: str) -> list[dict[str, Any]]:
        fe = self.layout.fe(fqdn)
        rows = admin_get(fe.admin, "/bindings?aor=" + urllib.parse.quote(aor, safe=""), 5.0)
        assert isinstance(rows, list)
        return rows

    def bindings_many(
        self, pairs: Iterable[tuple[str, str]], workers: int = 16
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """``/bindings`` for many ``(fe fqdn, aor)`` pairs, a few requests at a time."""
        items = list(pairs)
        with ThreadPoolExecutor(workers) as pool:
            rows = list(pool.map(lambda pair: self.bindings_of(*pair), items))
        return dict(zip(items, rows, strict=True))


# ------------------------------------------------------------------------------ SIP


@dataclass
class RegisterOutcome:
    """What :func:`sip_register` saw: every response, in order."""

    responses: list[bytes] = field(default_factory=list)

    @property
    def statuses(self) -> list[int | None]:
        return [status_of(r) for r in self.responses]

    @property
    def final(self) -> bytes | None:
        return self.responses[-1] if self.responses else None

    @property
    def status(self) -> int | None:
        return status_of(self.final)

    def header(self, name: str) -> str | None:
        values = header_values(self.final or b"", name)
        return values[0] if values else None


def _digest(challenge: str, *, user: str, password: str, uri: str, method: str) -> str:
    """An ``Authorization`` value answering one ``WWW-Authenticate`` (qop=auth, MD5/SHA-256)."""
    parsed = parse_challenge(challenge)
    credentials = answer_challenge(
        parsed,
        username=user,
        password=password,
        method=method,
        uri=uri,
        cnonce=secrets.token_hex(8),
        nc=1,
    )
    return format_credentials(credentials)


def sip_register(
    fe: FeInfo,
    aor: str,
    *,
    password: str | None = DEMO_PASSWORD,
    expires: int | None = 600,
    contact: bool = True,
    timeout: float = 5.0,
) -> RegisterOutcome:
    """Send REGISTER for ``aor`` to ``fe`` over one TCP connection; answer one ``401`` with
    digest when ``password`` is given. Redirects are *not* followed. ``contact=False`` sends a
    query (no Contact: RFC 3261 §10.2.3). The binding's contact is this TCP connection's
    address, so it does not collide with other clients."""
    user = aor.split(":", 1)[1].split("@", 1)[0]
    outcome = RegisterOutcome()
    with SipStream("tcp", (fe.ip, fe.tcp_port), timeout=timeout) as stream:
        lhost, lport = stream.local
        call_id = f"{secrets.token_hex(10)}@{lhost}"
        tag = secrets.token_hex(5)
        authorization: str | None = None
        for cseq in (1, 2):
            lines = [
                f"REGISTER sip:{DOMAIN} SIP/2.0",
                f"Via: SIP/2.0/TCP {lhost}:{lport};branch=z9hG4bK{secrets.token_hex(8)};rport",
                "Max-Forwards: 70",
                f"From: <{aor}>;tag={tag}",
                f"To: <{aor}>",
                f"Call-ID: {call_id}",
                f"CSeq: {cseq} REGISTER",
            ]
            if contact:
                lines.append(f"Contact: <sip:{user}@{lhost}:{lport};transport=tcp>")
            if expires is not None:
                lines.append(f"Expires: {expires}")
            if authorization:
                lines.append(f"Authorization: {authorization}")
            lines += ["User-Agent: pooltools", "Content-Length: 0"]
            stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
            resp = read_message(stream.sock, timeout, stream.buffer)
            if resp is None:
                raise TimeoutError(f"no answer from {fe.fqdn} to REGISTER {aor}")
            outcome.responses.append(resp)
            if status_of(resp) != 401 or password is None or authorization:
                break
            challenges = header_values(resp, "www-authenticate")
            usable = [c for c in challenges if re.search(r"algorithm=\"?(MD5|SHA-256)\b", c, re.I)]
            authorization = _digest(
                (usable or challenges)[0],
                user=user,
                password=password,
                uri=f"sip:{DOMAIN}",
                method="REGISTER",
            )
    return outcome


def parse_contact(value: str) -> dict[str, str]:
    """``<sip:fe1.contoso.com:5060;transport=tcp;maddr=1.2.3.4>`` → ``host``, ``port`` and
    every URI parameter."""
    match = re.match(r"\s*<?sips?:([^:;>]+)(?::(\d+))?([^>]*)>?", value)
    assert match, value
    params = {}
    for part in match.group(3).split(";"):
        if part:
            key, _, val = part.partition("=")
            params[key.strip().lower()] = val.strip()
    return {"host": match.group(1), "port": match.group(2) or "", **params}


# ------------------------------------------------------------------------------ sipp


@dataclass
class PoolSippResult:
    ok: int
    failed: int
    returncode: int
    output: str
    errors: str

    def describe(self) -> str:
        return (
            f"sipp exit {self.returncode}: {self.ok} ok, {self.failed} failed\n"
            f"{self.errors[:1500]}\n{self.output[-1500:]}"
        )


def run_pool_sipp(
    fe: FeInfo,
    aors: Sequence[str],
    workdir: Path,
    *,
    expires: int = 3600,
    rate: int = 100,
    password: str = DEMO_PASSWORD,
    timeout: float = 120.0,
) -> PoolSippResult:
    """Register ``aors`` with ``tests/sipp/pool_register.xml`` sent to ``fe`` over TCP
    (``-t tn``: one connection per user; the scenario follows the ``301`` to ``maddr``).
    Returns the final counts from sipp's ``-trace_stat`` file."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{fe.name}-{secrets.token_hex(3)}"
    inf = workdir / f"users-{tag}.csv"
    with inf.open("w") as fh:
        fh.write("SEQUENTIAL\n")
        for aor in aors:
            user = aor.split(":", 1)[1].split("@", 1)[0]
            fh.write(
                f"{user};[authentication username={user} password={password}];{DOMAIN};{expires}\n"
            )
    stat = workdir / f"stat-{tag}.csv"
    errors = workdir / f"errors-{tag}.log"
    cmd = [
        "sipp", "-sf", str(SIPP_SCENARIO), "-inf", str(inf), "-t", "tn",
        "-max_socket", "5000", "-r", str(rate), "-m", str(len(aors)),
        "-l", str(max(rate * 5, 100)), "-i", fe.ip,
        "-recv_timeout", "10000", "-timeout", f"{timeout:.0f}s", "-timeout_error",
        "-trace_stat", "-stf", str(stat), "-fd", "60",
        "-trace_err", "-error_file", str(errors),
        "-nostdin", f"{fe.ip}:{fe.tcp_port}",
    ]  # fmt: skip
    run = run_sipp_command(cmd, workdir, stat, errors, timeout + 30)
    return PoolSippResult(
        ok=int(run.stat.get("SuccessfulCall(C)") or 0),
        failed=int(run.stat.get("FailedCall(C)") or 0),
        returncode=run.returncode,
        output=run.output,
        errors=run.errors,
    )


# ------------------------------------------------------------------------ load client


class LoadClient:
    """``registrar client load --users N --first K --hold -1 --json`` in the background.

    Its clients register through DNS (TLS to a random FE, following ``301``), then hold their
    registrations and re-register from DNS when their flow drops, until :meth:`stop`
    (SIGINT: they unregister and the JSON report is printed)."""

    def __init__(self, layout: PoolLayout, users: int, first: int = 1, expires: int = 3600) -> None:
        self.cmd = [
            *registrar_command(), "client", "load", "--users", str(users), "--first", str(first),
            "--password", DEMO_PASSWORD, "--dns", layout.dns_text, "--ca", str(layout.ca),
            "--expires", str(expires), "--hold", "-1", "--json", "--concurrency", "100",
        ]  # fmt: skip
        self.users = users
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.report: dict[str, Any] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_holding(self, timeout: float) -> tuple[int, int]:
        """Wait until the registration phase ended; returns ``(registered, failed)`` from the
        last progress line."""
        proc = self.proc
        assert proc is not None

        def holding() -> bool:
            return proc.poll() is not None or any(line.startswith("holding") for line in self.lines)

        _wait_until(holding, timeout, lambda: "load client still registering:\n" + self.tail())
        assert proc.poll() is None, f"load client exited {proc.returncode}:\n{self.tail()}"
        progress = [line for line in self.lines if line.startswith("progress:")]
        match = re.search(r"(\d+) registered, (\d+) failed", progress[-1] if progress else "")
        assert match, self.tail()
        return int(match.group(1)), int(match.group(2))

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.lines[-lines:])

    def stop(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """SIGINT (clients unregister), then the JSON report (``None`` if none came)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        with contextlib.suppress(ValueError):
            start = out.index("{")
            self.report = json.loads(out[start:])
        return self.report
