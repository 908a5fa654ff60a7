"""Process and client harness for tests that run real FE processes on loopback (DESIGN.md §9).

* :func:`free_port` — a port the kernel says is free for a transport on a loopback address.
* :class:`FeProcess` — one ``registrar serve`` subprocess: own process group, output to a log
  file, :meth:`FeProcess.wait_ready` (real SIP OPTIONS until ``200``), :meth:`FeProcess.stop`
  (SIGTERM, then SIGKILL past a deadline), :meth:`FeProcess.kill`.
* A small synchronous SIP client: :func:`options_request`, :func:`sip_request`,
  :class:`SipStream` (one TCP/TLS connection), :func:`read_message`, :func:`status_of`,
  :func:`header_values`.
* The ``registrar`` CLI and an FE's admin API: :func:`run_cli`, :func:`make_users_db`,
  :func:`admin_address`, :func:`fe_bindings`, :func:`fe_status`.
* :func:`wait_until` — poll a condition with a deadline.

Everything waits on conditions with deadlines; nothing sleeps a fixed time to synchronise.
Pools of several FEs use distinct loopback addresses (``127.0.1.x``), which Linux routes to
``lo`` without configuration.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "REPO",
    "FeProcess",
    "SipStream",
    "SippResult",
    "SippRun",
    "admin_address",
    "client_ssl_context",
    "cpu_seconds",
    "fe_bindings",
    "fe_status",
    "free_port",
    "header_values",
    "make_users_db",
    "options_request",
    "read_message",
    "registrar_command",
    "require_command",
    "run_cli",
    "run_sipp",
    "run_sipp_command",
    "sip_request",
    "status_of",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]

T = TypeVar("T")

_STREAM = {"tcp", "tls"}
_counter = itertools.count(1)


# ------------------------------------------------------------------------------ utilities


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
    error: type[Exception] = TimeoutError,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value; return it.

    Raises:
        TimeoutError (or ``error``): still falsy after ``timeout`` seconds; ``message`` (a
            string, or a function called then) says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise error(text or f"condition not met within {timeout}s")
        time.sleep(interval)


def free_port(transport: str = "udp", host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free right now for ``transport`` (``udp``, ``tcp``, ``tls``).

    The kernel picks it (bind to port 0); another process may still take it before the FE
    binds, which :meth:`FeProcess.start_ready` handles by retrying with fresh ports.
    """
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_command(name: str) -> str:
    """Path of command ``name``; skips the calling test when it is not installed."""
    import pytest

    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (scripts/setup.sh installs it; CI has it)")
    return path


def registrar_command() -> list[str]:
    """The ``registrar`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "registrar"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "registrar.cli"]


def client_ssl_context(ca: Path | str | None) -> ssl.SSLContext:
    """A TLS client context trusting ``ca`` (certificate and host name checked), or, without a
    CA, one that checks nothing (for tests that only need a handshake)."""
    if ca is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(ca))


# ---------------------------------------------------------------------------- SIP client


def options_request(
    transport: str,
    addr: tuple[str, int],
    *,
    local: tuple[str, int] | None = None,
    user: str = "ping",
    headers: Sequence[str] = (),
    body: bytes = b"",
    method: str = "OPTIONS",
) -> bytes:
    """A well-formed request (OPTIONS unless ``method`` says otherwise) to ``addr``.

    Every call gets a unique branch, Call-ID and From tag. The Via carries ``rport`` so that a
    UDP answer comes back to the socket it was sent from whatever ``local`` says (RFC 3581).
    ``headers`` are extra ``"Name: value"`` lines; ``body`` gets a ``Content-Type: text/plain``
    unless a Content-Type is among ``headers``.
    """
    host, port = addr
    lhost, lport = local or ("127.0.0.1", 5060)
    n = next(_counter)
    token = uuid.uuid4().hex
    lines = [
        f"{method} sip:{user}@{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {lhost}:{lport};branch=z9hG4bK{token[:16]}{n};rport",
        "Max-Forwards: 70",
        f"To: <sip:{user}@{host}:{port}>",
        f"From: <sip:tester@{lhost}>;tag={token[16:26]}",
        f"Call-ID: {token}@{lhost}",
        f"CSeq: {n} {method}",
        f"Contact: <sip:tester@{lhost}:{lport};transport={transport}>",
        "Accept: application/sdp",
        *headers,
    ]
    if body and not any(h.lower().startswith(("content-type:", "c:")) for h in headers):
        lines.append("Content-Type: text/plain")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _content_length(head: bytes) -> int:
    match = re.search(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\d+)", head, re.IGNORECASE)
    return int(match.group(1)) if match else 0


def read_message(
    sock: socket.socket, timeout: float, buffer: bytearray | None = None
) -> bytes | None:
    """Read one SIP message (header block + Content-Length body) from a stream socket.

    ``buffer`` holds bytes already read and receives any surplus (pass the same one for
    back-to-back messages). Leading CRLFs (keep-alive pongs) are skipped. Returns ``None`` if
    nothing complete arrived within ``timeout`` seconds or the peer closed first; a partial
    message stays in ``buffer``.
    """
    buf = buffer if buffer is not None else bytearray()
    deadline = time.monotonic() + timeout
    while True:
        while buf.startswith(b"\r\n"):
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            total = end + 4 + _content_length(bytes(buf[: end + 2]))
            if len(buf) >= total:
                message = bytes(buf[:total])
                del buf[:total]
                return message
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except (ConnectionError, ssl.SSLError, OSError):
            return None
        if not chunk:
            return None
        buf += chunk


class SipStream:
    """One client TCP or TLS connection to an FE, with a receive buffer.

    Args:
        transport: ``"tcp"`` or ``"tls"``.
        addr: the FE's (ip, port).
        ssl_context: client context for TLS (default: trust nothing, check nothing).
        server_hostname: SNI and the name the certificate must match (TLS).
        timeout: connect (and TLS handshake) timeout, seconds.
        source: local address to bind before connecting (e.g. ``("127.0.0.1", 0)``).
    """

    def __init__(
        self,
        transport: str,
        addr: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 5.0,
        source: tuple[str, int] | None = None,
    ) -> None:
        if transport not in _STREAM:
            raise ValueError(f"SipStream needs tcp or tls, not {transport!r}")
        self.transport = transport
        self.addr = addr
        raw = socket.create_connection(addr, timeout=timeout, source_address=source)
        if transport == "tls":
            ctx = ssl_context or client_ssl_context(None)
            try:
                raw = ctx.wrap_socket(raw, server_hostname=server_hostname or addr[0])
            except BaseException:
                raw.close()
                raise
        self.sock: socket.socket = raw
        self.buffer = bytearray()

    @property
    def local(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return (name[0], name[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_message(self, timeout: float) -> bytes | None:
        """The next complete message, or ``None`` (timeout or closed)."""
        return read_message(self.sock, timeout, self.buffer)

    def recv_raw(self, timeout: float) -> bytes | None:
        """Whatever bytes arrive next (buffered ones first): ``b""`` when the peer closed,
        ``None`` when nothing arrived within ``timeout`` seconds."""
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except (ConnectionError, ssl.SSLError):
            return b""

    def wait_closed(self, timeout: float) -> bool:
        """Read until the peer closes (True) or ``timeout`` seconds pass (False); data that
        arrives meanwhile goes to the buffer."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except (ConnectionError, ssl.SSLError, OSError):
                return True
            if not chunk:
                return True
            self.buffer += chunk

    def request(self, data: bytes, timeout: float = 5.0) -> bytes | None:
        """Send ``data``; return the next complete message (or ``None``)."""
        self.send(data)
        return self.recv_message(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> SipStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sip_request(
    transport: str,
    addr: tuple[str, int],
    message: bytes,
    timeout: float = 5.0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    source: tuple[str, int] | None = None,
) -> bytes | None:
    """Send one message over a fresh socket/connection and return the first complete message
    that comes back, or ``None`` if none came within ``timeout`` seconds (or the FE closed).

    UDP binds ``source`` (default: an ephemeral port on 127.0.0.1) and returns the first
    datagram received; the request should carry ``rport`` or a Via naming that socket.
    """
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(source or ("127.0.0.1", 0))
            sock.sendto(message, addr)
            sock.settimeout(timeout)
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                return None
            except ConnectionRefusedError:
                return None
            return data
    try:
        stream = SipStream(
            transport,
            addr,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            timeout=timeout,
            source=source,
        )
    except (OSError, ssl.SSLError):
        return None
    with stream:
        try:
            return stream.request(message, timeout)
        except OSError:
            return None


def status_of(message: bytes | None) -> int | None:
    """The status code of a response, or ``None`` (no message, or not a response)."""
    if not message:
        return None
    match = re.match(rb"SIP/2\.0 (\d{3}) ", message)
    return int(match.group(1)) if match else None


_COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "l": "content-length",
    "c": "content-type",
    "m": "contact",
    "k": "supported",
}


def header_values(message: bytes, name: str) -> list[str]:
    """The values of header field ``name`` (long or compact form) in ``message``'s header
    block, one per header line, in order."""
    wanted = name.lower()
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    values = []
    for line in head.split("\r\n")[1:]:
        field, colon, value = line.partition(":")
        key = field.strip().lower()
        if colon and _COMPACT.get(key, key) == wanted:
            values.append(value.strip())
    return values


# ------------------------------------------------------------------------------ FE process


class FeProcess:
    """One ``registrar serve`` process.

    Args:
        workdir: directory for the log file (``<name>.log``).
        certs_dir: directory written by ``registrar certs init`` (needed for ``tls``).
        host: loopback address to listen on (``127.0.0.1``, ``127.0.1.x`` ...).
        transports: listeners to open, each on a free port (or ``ports[transport]``).
        fqdn: ``--fqdn``; also names the certificate files ``<fqdn>.crt``/``.key``.
        args: further command-line arguments (``--header-timeout 2`` ...).
        name: label of the log file and of the state directory.
        admin: serve the admin API on a free port (:attr:`admin_addr`); else ``--admin off``
            (the default 127.0.0.1:5080 would clash between FEs).
        state_dir: ``--state-dir`` (default ``workdir/<name>-state``, one per FE).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        certs_dir: Path | None = None,
        host: str = "127.0.0.1",
        transports: Iterable[str] = ("tls", "tcp", "udp"),
        fqdn: str = "fe1.local",
        args: Sequence[str] = (),
        name: str | None = None,
        ports: dict[str, int] | None = None,
        env: dict[str, str] | None = None,
        admin: bool = False,
        state_dir: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.certs_dir = Path(certs_dir) if certs_dir is not None else None
        self.host = host
        self.transports = tuple(transports)
        self.fqdn = fqdn
        self.args = list(args)
        self.name = name or fqdn
        self.fixed_ports = dict(ports or {})
        self.env = env
        self.ports: dict[str, int] = {}
        self.admin = admin
        self.admin_addr: tuple[str, int] | None = None
        self.state_dir = Path(state_dir) if state_dir else self.workdir / f"{self.name}-state"
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_start = 0  # offset of the current start's output in the log file

    # ----------------------------------------------------------------- addresses
    def addr(self, transport: str) -> tuple[str, int]:
        """The (ip, port) of the ``transport`` listener."""
        return (self.host, self.ports[transport])

    @property
    def ca(self) -> Path | None:
        return self.certs_dir / "ca.crt" if self.certs_dir else None

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context trusting this FE's CA."""
        return client_ssl_context(self.ca)

    def command(self) -> list[str]:
        cmd = [*registrar_command(), "serve", "--fqdn", self.fqdn]
        cmd += ["--state-dir", str(self.state_dir)]
        if self.admin_addr is not None:
            cmd += ["--admin", f"{self.admin_addr[0]}:{self.admin_addr[1]}"]
        else:
            cmd += ["--admin", "off"]
        for transport in self.transports:
            cmd += ["--listen", f"{transport}:{self.host}:{self.ports[transport]}"]
        if "tls" in self.transports:
            if self.certs_dir is None:
                raise ValueError("a tls listener needs certs_dir")
            cmd += [
                "--cert",
                str(self.certs_dir / f"{self.fqdn}.crt"),
                "--key",
                str(self.certs_dir / f"{self.fqdn}.key"),
            ]
        return cmd + self.args

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> FeProcess:
        """Start the process (ports not fixed by the caller are picked now)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.ports = {
            t: self.fixed_ports.get(t) or free_port(t, self.host) for t in self.transports
        }
        if self.admin:
            self.admin_addr = (self.host, free_port("tcp", self.host))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            log.write(f"=== start {self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
                env=env,
            )
        return self

    def start_ready(self, timeout: float = 20.0, attempts: int = 3) -> FeProcess:
        """Start and :meth:`wait_ready`; retry with fresh ports when a port was taken meanwhile."""
        for attempt in range(attempts):
            self.start()
            try:
                return self.wait_ready(timeout)
            except RuntimeError:
                if attempt + 1 < attempts and "cannot listen" in self.log_text(since_start=True):
                    self.kill()
                    continue
                raise
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def probe(self, timeout: float = 0.3) -> int | None:
        """Status of one OPTIONS over UDP (else TCP, else TLS), or ``None``."""
        for transport in ("udp", "tcp", "tls"):
            if transport in self.transports:
                addr = self.addr(transport)
                msg = options_request(transport, addr)
                ctx = self.ssl_context() if transport == "tls" else None
                return status_of(
                    sip_request(
                        transport,
                        addr,
                        msg,
                        timeout,
                        ssl_context=ctx,
                        server_hostname=self.fqdn if ctx else None,
                    )
                )
        raise ValueError("no listener to probe")

    def wait_ready(self, timeout: float = 20.0) -> FeProcess:
        """Poll with real OPTIONS until one is answered ``200``.

        Raises:
            RuntimeError: the process exited (its log tail is in the message).
            TimeoutError: not answering within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with {self.returncode} before answering:\n"
                    + self.log_tail()
                )
            if self.probe(timeout=0.2) == 200:
                return self
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} did not answer OPTIONS within {timeout}s:\n" + self.log_tail()
                )
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait up to ``timeout`` seconds; SIGKILL the group past that.
        Returns the exit code (negative: killed by that signal)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the process."""
        if self.proc is None or self.proc.poll() is not None:
            return  # never started, or already reaped: its pid may belong to another process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def log_text(self, since_start: bool = False) -> str:
        """The FE's output (every start, or only the latest with ``since_start``)."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._log_start if since_start else 0 :].decode(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> FeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.stop()

    def __repr__(self) -> str:
        return f"<FeProcess {self.name} {self.host} {self.ports}>"


# ------------------------------------------------------------- registrar CLI, admin API


def run_cli(*args: str) -> str:
    """Run ``registrar ARGS``; its stdout (exit code 0 asserted)."""
    proc = subprocess.run(
        [*registrar_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"registrar {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def make_users_db(directory: Path, users: dict[str, str], domain: str = "contoso.com") -> Path:
    """A user directory ``directory/users.db`` holding ``users`` (user part → password) of
    ``domain``, made with ``registrar users import`` from a CSV with the header
    ``aor,password`` (``directory`` is created when missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "users.db"
    csv_path = directory / "users.csv"
    lines = ["aor,password"] + [f'sip:{u}@{domain},"{p}"' for u, p in users.items()]
    csv_path.write_text("\n".join(lines) + "\n")
    run_cli("users", "import", str(csv_path), "--users-db", str(db))
    return db


def admin_address(fe: FeProcess) -> str:
    """``HOST:PORT`` of the FE's admin API (the FE must run with ``admin=True``)."""
    assert fe.admin_addr is not None, "start the FE with admin=True"
    return f"{fe.admin_addr[0]}:{fe.admin_addr[1]}"


def fe_bindings(
    fe: FeProcess,
    user: str,
    *,
    cli: bool = False,
    domain: str = "contoso.com",
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """The bindings of ``sip:USER@DOMAIN`` on a running FE: with ``cli``, what ``registrar
    bindings AOR --json`` prints (a process start, about a second), else the admin API's
    ``/bindings`` answer that the command prints (waiting at most ``timeout`` seconds)."""
    aor = f"sip:{user}@{domain}"
    if cli:
        rows: list[dict[str, Any]] = json.loads(
            run_cli("bindings", aor, "--admin", admin_address(fe), "--json")
        )
        return rows
    url = f"http://{admin_address(fe)}/bindings?aor={urllib.parse.quote(aor, safe='')}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        rows = json.loads(resp.read())
    return rows


def fe_status(fe: FeProcess, timeout: float = 10.0) -> dict[str, Any]:
    """The FE's admin ``/status`` object (waiting at most ``timeout`` seconds)."""
    url = f"http://{admin_address(fe)}/status"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


# ------------------------------------------------------------------------------------ sipp


@dataclass
class SippResult:
    """sipp's final counts (the last row of its ``-trace_stat`` CSV) and how it ended.

    Attributes:
        ok, failed, created: ``SuccessfulCall(C)``, ``FailedCall(C)``, ``TotalCallCreated``.
        returncode: sipp's exit status (0: every call succeeded, 1: some failed).
        counters: every non-zero cumulative ``(C)`` column (``FailedTimeoutOnRecv`` ...).
        stat: the whole last CSV row; output: sipp's stdout/stderr; errors: the start of its
            ``-trace_err`` file (empty when no call failed).
    """

    ok: int
    failed: int
    created: int
    returncode: int
    counters: dict[str, int] = field(default_factory=dict)
    stat: dict[str, str] = field(default_factory=dict)
    output: str = ""
    errors: str = ""

    def describe(self) -> str:
        """A few lines for an assertion message."""
        failures = {k: v for k, v in self.counters.items() if k.startswith("Failed")}
        return (
            f"sipp exit {self.returncode}: {self.ok} ok, {self.failed} failed of {self.created} "
            f"created; {failures}; rate {self.stat.get('CallRate(C)', '?')}/s over "
            f"{self.stat.get('ElapsedTime(C)', '?')}\n{self.errors[:1500]}\n{self.output[-1500:]}"
        )


def run_sipp(
    scenario: Path,
    target: tuple[str, int],
    transport: str,
    *,
    rate: int,
    calls: int,
    workdir: Path,
    service: str | None = None,
    recv_timeout_ms: int = 5000,
    extra: Sequence[str] = (),
) -> SippResult:
    """Run sipp as a UAC over one TCP connection (``-t t1``) or one UDP socket (``-t u1``) and
    return its final counts, read from the last row of its ``-trace_stat`` CSV, the approach
    of ``bench/cpu.py`` (sipp 3.6 writes that row when it ends).

    The run is bounded: sipp's own ``-timeout`` (twice the nominal duration plus margins) and a
    hard subprocess deadline after it. A call fails if any response takes longer than
    ``recv_timeout_ms``. sipp binds a free port of its own on the target's address.
    """
    sipp = shutil.which("sipp")
    if sipp is None:
        raise FileNotFoundError("sipp not installed (apt-get install sip-tester)")
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"sipp-{transport}-{next(_counter)}"
    stat_file = workdir / f"{tag}-stat.csv"
    err_file = workdir / f"{tag}-errors.log"
    limit = calls / rate * 2 + recv_timeout_ms / 1000 + 10
    host, port = target
    local_port = free_port("udp" if transport == "udp" else "tcp", host)
    cmd = [
        sipp, "-sf", str(scenario), "-t", "u1" if transport == "udp" else "t1",
        "-i", host, "-p", str(local_port),
        "-r", str(rate), "-rp", "1000", "-m", str(calls),
        "-l", str(max(rate * 5, 100)),  # concurrent calls: never the bottleneck
        "-nostdin", "-timeout", f"{limit:.0f}s", "-timeout_error",
        "-recv_timeout", str(recv_timeout_ms),
        "-trace_stat", "-stf", str(stat_file), "-fd", "60",
        "-trace_err", "-error_file", str(err_file),
        "-f", "60",
        *(["-s", service] if service else []),
        *extra,
        f"{host}:{port}",
    ]  # fmt: skip
    run = run_sipp_command(cmd, workdir, stat_file, err_file, limit + 30)
    stat = run.stat
    counters = {
        name[:-3]: int(value)
        for name, value in stat.items()
        if name.endswith("(C)") and value.isdigit() and int(value)
    }
    return SippResult(
        ok=int(stat.get("SuccessfulCall(C)") or 0),
        failed=int(stat.get("FailedCall(C)") or 0),
        created=int(stat.get("TotalCallCreated") or 0),
        returncode=run.returncode,
        counters=counters,
        stat=stat,
        output=run.output,
        errors=run.errors,
    )


class SippRun(NamedTuple):
    """How a sipp run ended (:func:`run_sipp_command`).

    Attributes:
        returncode: sipp's exit status (-9 when it was killed at the deadline).
        output: its stdout and stderr.
        stat: the last row of its ``-trace_stat`` CSV by column name (empty when none).
        errors: the first 4,000 characters of its ``-trace_err`` file (empty when none).
    """

    returncode: int
    output: str
    stat: dict[str, str]
    errors: str


def run_sipp_command(
    cmd: Sequence[str], workdir: Path, stat_file: Path, err_file: Path, timeout: float
) -> SippRun:
    """Run the sipp command line ``cmd`` in ``workdir``, killed after ``timeout`` seconds, and
    read its ``-trace_stat`` file ``stat_file`` and ``-trace_err`` file ``err_file``."""
    try:
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode = -9
        output = f"sipp killed after {timeout:.0f}s\n{exc.stdout or ''}"
    stat: dict[str, str] = {}
    with contextlib.suppress(OSError):
        rows = list(csv.reader(stat_file.read_text(errors="replace").splitlines(), delimiter=";"))
        if len(rows) >= 2:
            stat = dict(zip(rows[0], rows[-1], strict=False))
    errors = ""
    with contextlib.suppress(OSError), err_file.open(errors="replace") as fh:
        errors = fh.read(4000)
    return SippRun(returncode, output if isinstance(output, str) else str(output), stat, errors)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
