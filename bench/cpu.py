#!/usr/bin/env python3
"""CPU cost per SIP request of our front end, beside Kamailio, in the same run.

For each *target* (a server command line) and transport, :func:`measure`:

1. starts the server in its own process group, on a loopback address/port;
2. waits until it answers an ``OPTIONS`` on every transport (a small built-in
   UDP/TCP probe, polled until a deadline -- no fixed sleeps);
3. samples the CPU time of the server's whole process tree
   (``utime + stime + cutime + cstime`` from ``/proc/PID/stat`` of the server
   and all its descendants -- Kamailio forks several processes);
4. runs ``sipp`` with a scenario from ``tests/sipp/`` at a fixed rate for a
   fixed number of calls (one TCP connection ``-t t1`` or one UDP socket
   ``-t u1``) and reads back sipp's final counts from its ``-trace_stat`` CSV;
5. samples the CPU time again, stops the server (SIGTERM to the group, then
   SIGKILL after a deadline) and returns the figures.

``cpu_us_per_request`` = (CPU seconds of the server tree during the sipp run)
/ (successful requests) x 10^6.

Command line::

    python bench/cpu.py options  [--rate 2000] [--duration 10] [--transports tcp,udp] [--json]
    python bench/cpu.py register [--rate 2000] [--duration 10] [--transports tcp,udp] [--json]

    other options: --targets ours,kamailio  --repeat N  --host 127.0.0.1  --ours-cmd '...'
                   --kamailio-memory tlsf|fm|qm (Kamailio's allocator; tlsf)

Only the standard library is used.  See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Transport = Literal["tcp", "udp"]
Say = Callable[[str], None]

REPO = Path(__file__).resolve().parent.parent
SIPP_DIR = REPO / "tests" / "sipp"
KAMAILIO_DIR = REPO / "bench" / "kamailio"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
VENV_BIN = REPO / ".venv" / "bin"

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Seconds to wait for a server to answer its first OPTIONS.
READY_TIMEOUT = 20.0
#: Seconds between SIGTERM and SIGKILL when stopping a server.
STOP_TIMEOUT = 5.0
#: sipp's per-message receive timeout (ms): an unanswered request fails its call.
RECV_TIMEOUT_MS = 5000


class BenchError(RuntimeError):
    """A target could not be measured (did not start, did not answer, sipp failed)."""


# --------------------------------------------------------------------------- modes, targets


@dataclass(frozen=True)
class Mode:
    """A benchmark mode: which sipp scenario, and which Kamailio config answers it."""

    name: str
    scenario: Path
    kamailio_cfg: Path
    kamailio_shm_mb: int
    service: str | None = None  # sipp -s value ([service] in the scenario)


MODES: dict[str, Mode] = {
    "options": Mode("options", SIPP_DIR / "options.xml", KAMAILIO_DIR / "options.cfg", 64),
    "register": Mode(
        "register",
        SIPP_DIR / "register_noauth.xml",
        KAMAILIO_DIR / "registrar.cfg",
        256,
        service="example.com",
    ),
}


def registrar_exe() -> str:
    """The ``registrar`` command of the checkout's ``.venv``, else ``registrar`` on PATH."""
    exe = VENV_BIN / "registrar"
    return str(exe) if exe.exists() else "registrar"


def ours_command(mode: Mode | None = None) -> list[str]:
    """Command line of our FE (placeholders ``{host}``, ``{port}``, ``{rundir}``; see
    :func:`measure`): no admin API (its default port would clash with another FE), state in
    ``{rundir}``, and for a mode with a ``service`` domain (``register``) that domain served
    with ``--auth off`` (the Kamailio configuration does not authenticate either)."""
    exe = registrar_exe()
    argv = [exe, "serve", "--listen", "tcp:{host}:{port}", "--listen", "udp:{host}:{port}"]
    argv += ["--admin", "off", "--state-dir", "{rundir}/state"]
    if mode is not None and mode.service and "." in mode.service:
        argv += ["--domain", mode.service, "--auth", "off"]
    return argv


KAMAILIO_MEMORY_MANAGERS = ("tlsf", "fm", "qm")
"""Kamailio's memory managers (``-x`` shared, ``-X`` private), fastest first."""


def kamailio_command(cfg: Path, shm_mb: int = 64, memory_manager: str = "tlsf") -> list[str]:
    """Command line of Kamailio in the foreground with ``cfg``, everything in ``{rundir}``.

    ``shm_mb`` is the shared memory in MiB (``-m``); ``memory_manager`` (one of
    :data:`KAMAILIO_MEMORY_MANAGERS`) is the allocator for shared and private memory
    (``-x``/``-X``). The default is ``tlsf``: Debian's build (``DBG_SR_MEMORY``) otherwise
    uses ``qm``, whose free-fragment search took half of Kamailio's CPU in a REGISTER run
    (bench/README.md, "Kamailio's memory manager"). Raises ``ValueError`` for an unknown
    manager.
    """
    if memory_manager not in KAMAILIO_MEMORY_MANAGERS:
        raise ValueError(
            f"unknown Kamailio memory manager {memory_manager!r}; "
            f"use one of {', '.join(KAMAILIO_MEMORY_MANAGERS)}"
        )
    # fmt: off
    return [
        shutil.which("kamailio") or "/usr/sbin/kamailio",
        "-f", str(cfg),
        "-DD", "-E",  # foreground (no daemon, no fork to background); log to stderr
        "-L", KAMAILIO_MODULES,
        "-l", "udp:{host}:{port}",
        "-l", "tcp:{host}:{port}",
        "-Y", "{rundir}",  # runtime dir: no /run/kamailio needed
        "-P", "{rundir}/kamailio.pid",
        "-w", "{rundir}",
        "-m", str(shm_mb),  # shared memory, MB
        "-M", "8",  # private memory per process, MB
        "-x", memory_manager,  # shared memory allocator
        "-X", memory_manager,  # private memory allocator
    ]
    # fmt: on


def targets_for(
    mode: Mode, ours_cmd: list[str] | None = None, kamailio_memory: str = "tlsf"
) -> dict[str, list[str]]:
    """The targets compared in ``mode``: ``ours`` and ``kamailio`` (allocator
    ``kamailio_memory``, see :func:`kamailio_command`), by name."""
    return {
        "ours": ours_cmd or ours_command(mode),
        "kamailio": kamailio_command(mode.kamailio_cfg, mode.kamailio_shm_mb, kamailio_memory),
    }


# --------------------------------------------------------------------------- /proc CPU accounting


def _read_stat(pid: int) -> tuple[int, int, int] | None:
    """``(ppid, pgid, utime+stime+cutime+cstime ticks)`` of ``pid``, or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(")") + 2 :].split()
    # fields[0] is field 3 (state); field N is fields[N - 3].
    ppid, pgid = int(fields[1]), int(fields[2])
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ppid, pgid, ticks


def _schedstat_ns(pid: int) -> int:
    """On-CPU nanoseconds of all live threads of ``pid`` (``/proc/PID/task/*/schedstat``)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _read_stat(int(entry))
        if st is not None:
            children.setdefault(st[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


@dataclass
class CpuSample:
    """CPU consumed so far by a process tree."""

    seconds: float  # from /proc/PID/stat (clock-tick resolution)
    sched_seconds: float  # from /proc/PID/task/*/schedstat (ns resolution, live threads only)
    processes: int


def sample_cpu(root: int) -> CpuSample:
    """CPU time used so far by ``root`` and all its descendants."""
    ticks = ns = n = 0
    for pid in process_tree(root):
        st = _read_stat(pid)
        if st is None:
            continue
        ticks += st[2]
        ns += _schedstat_ns(pid)
        n += 1
    return CpuSample(ticks / CLK_TCK, ns / 1e9, n)


# --------------------------------------------------------------------------- readiness probe


def _options_request(host: str, port: int, transport: Transport, local: tuple[str, int]) -> bytes:
    branch = "z9hG4bK-probe-" + uuid.uuid4().hex[:16]
    tag = uuid.uuid4().hex[:10]
    proto = transport.upper()
    return (
        f"OPTIONS sip:probe@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto} {local[0]}:{local[1]};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <sip:probe@{host}:{port}>\r\n"
        f"From: <sip:bench@{local[0]}:{local[1]}>;tag={tag}\r\n"
        f"Call-ID: {uuid.uuid4().hex}@bench\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Contact: <sip:bench@{local[0]}:{local[1]};transport={transport}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def probe_options(host: str, port: int, transport: Transport, timeout: float = 0.5) -> int | None:
    """Send one OPTIONS; return the final status code received, or None (no answer)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(family, kind) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            local = sock.getsockname()[:2]
            sock.sendall(_options_request(host, port, transport, local))
            buf = b""
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65535)
                if not chunk:
                    return None
                buf += chunk
                for m in re.finditer(rb"SIP/2\.0 (\d{3}) ", buf):
                    code = int(m.group(1))
                    if code >= 200:
                        return code
                if transport == "udp":
                    buf = b""
    except OSError:
        return None
    return None


def wait_ready(
    host: str,
    port: int,
    transports: Iterable[Transport],
    alive: Callable[[], bool],
    timeout: float = READY_TIMEOUT,
) -> float:
    """Poll with OPTIONS until the server answers (any final response) on every transport.

    Returns the seconds it took.  Raises :class:`BenchError` if ``alive()`` turns false
    or the deadline passes.
    """
    start = time.monotonic()
    deadline = start + timeout
    pending = list(transports)
    while pending:
        if not alive():
            raise BenchError("server exited before answering OPTIONS")
        if time.monotonic() > deadline:
            raise BenchError(f"server did not answer OPTIONS over {pending} within {timeout:g}s")
        if probe_options(host, port, pending[0], timeout=0.3) is not None:
            pending.pop(0)
        else:
            # Back off a little so a server that refuses connections is not hammered.
            time.sleep(0.05)
    return time.monotonic() - start


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free for both TCP and UDP on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise BenchError("no free TCP+UDP port found")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait4(pid: int, timeout: float) -> tuple[int, float] | None:
    """Reap child ``pid`` within ``timeout``: ``(returncode, its CPU seconds)`` or None."""
    deadline = time.monotonic() + timeout
    while True:
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it if still there after ``timeout``."""
    pgid = proc.pid  # started with start_new_session=True: pgid == pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    # Children that outlived the leader (same group): make sure they are gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class Server:
    """One server process (own process group, output to ``rundir/server.log``)."""

    name: str
    argv: list[str]
    rundir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, host: str, port: int, say: Say) -> float:
        """Start it and poll OPTIONS (UDP and TCP) until it answers; returns the seconds.

        Raises:
            BenchError: it cannot be started, exits, or does not answer within
                :data:`READY_TIMEOUT` (with the end of its output).
        """
        say(f"starting: {shlex.join(self.argv)}")
        log = self.rundir / "server.log"
        with log.open("wb") as fh:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    cwd=self.rundir,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BenchError(f"cannot start: {exc}") from exc
        try:
            return wait_ready(host, port, ("udp", "tcp"), self.alive)
        except BenchError as exc:
            raise BenchError(f"{exc}; server output:\n{self.log_tail()}") from exc

    def log_tail(self, lines: int = 15) -> str:
        return _tail(self.rundir / "server.log", lines)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)


@contextlib.contextmanager
def serving(
    server: Server, result: dict[str, Any], say: Say, failed: str = "FAILED"
) -> Iterator[Server]:
    """Run the ``with`` body on ``server``; then stop it and remove its ``rundir``.

    A :class:`BenchError` in the body ends it without propagating: the message becomes
    ``result["error"]`` and is said as ``"<failed>: <message>"``.
    """
    try:
        yield server
    except BenchError as exc:
        result["error"] = str(exc)
        say(f"{failed}: {exc}")
    finally:
        server.stop()
        shutil.rmtree(server.rundir, ignore_errors=True)


# --------------------------------------------------------------------------- sipp


def sipp_executable() -> str:
    """The path of ``sipp``. Raises :class:`BenchError` when it is not installed."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise BenchError("sipp not found (apt-get install sip-tester)")
    return sipp


def run_sipp_process(
    cmd: Sequence[str], workdir: Path, out_file: Path, timeout: float
) -> tuple[int, float, float, str]:
    """Run the sipp command line ``cmd`` in ``workdir`` with its stdout and stderr in
    ``out_file``, and reap it.

    Returns:
        ``(exit status, sipp's CPU seconds, wall seconds, its output text)``.

    Raises:
        BenchError: it did not end within ``timeout + 30`` seconds (``timeout`` is sipp's
            own global timeout); it is killed then.
    """
    t0 = time.monotonic()
    with out_file.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
        )
    reaped = _wait4(proc.pid, timeout + 30)
    if reaped is None:
        proc.kill()
        proc.wait()
        raise BenchError(f"sipp did not finish within {timeout + 30:.0f}s")
    proc.returncode = reaped[0]
    wall = time.monotonic() - t0
    return reaped[0], reaped[1], wall, out_file.read_text(errors="replace")


def sipp_outcome(
    row: dict[str, str] | None, text: str, err_file: Path, out_file: Path, returncode: int
) -> tuple[int, int, int, dict[str, int], str]:
    """What an ended sipp run achieved: ``(ok, failed, created, counters, errors)``.

    The counts come from ``row`` (the last row of its ``-trace_stat`` CSV; ``counters`` holds
    its non-zero cumulative ``(C)`` columns), else from the last statistics screen in its
    output ``text``; ``errors`` is :func:`_summarize_errors` of ``text`` and ``err_file``.

    Raises:
        BenchError: neither tells the counts (the message names ``returncode`` and the errors,
            else the end of ``out_file``).
    """
    counters: dict[str, int] = {}
    if row is not None:
        for name, value in row.items():
            if name.endswith("(C)") and value.isdigit() and int(value):
                counters[name[:-3]] = int(value)
        ok = int(row.get("SuccessfulCall(C)", "0") or 0)
        failed = int(row.get("FailedCall(C)", "0") or 0)
        created = int(row.get("TotalCallCreated", "0") or 0)
    errors = _summarize_errors(text, err_file, counters)
    if row is None:
        screen = _parse_screen(text)
        if "ok" not in screen:
            raise BenchError(
                f"could not read sipp statistics (exit {returncode}): {errors or _tail(out_file)}"
            )
        ok, failed = screen["ok"], screen.get("failed", 0)
        created = screen.get("created", ok + failed)
    return ok, failed, created, counters, errors


@dataclass
class SippResult:
    """sipp's final counts."""

    ok: int
    failed: int
    created: int
    returncode: int
    cpu_seconds: float
    wall_seconds: float
    errors: str = ""
    counters: dict[str, int] = field(default_factory=dict)


def _parse_stat_csv(path: Path) -> dict[str, str] | None:
    """The last row of a sipp ``-trace_stat`` CSV, as a dict by column name."""
    try:
        rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    except OSError:
        return None
    if len(rows) < 2:
        return None
    return dict(zip(rows[0], rows[-1], strict=False))


def _parse_screen(text: str) -> dict[str, int]:
    """Cumulative counts from the last statistics screen sipp printed to stdout."""
    found: dict[str, int] = {}
    for label, key in (
        ("Successful call", "ok"),
        ("Failed call", "failed"),
        ("Total Call created", "created"),
    ):
        hits = re.findall(rf"^\s*{label}\s*\|[^|]*\|\s*(\d+)", text, re.MULTILINE)
        if hits:
            found[key] = int(hits[-1])
    return found


def _summarize_errors(stdout: str, err_file: Path, counters: dict[str, int]) -> str:
    """Why calls failed, in a few lines: failure counters, unexpected responses, sipp errors."""
    lines = []
    reasons = {k: v for k, v in counters.items() if k.startswith("Failed") and k != "FailedCall"}
    if reasons:
        lines.append(", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    try:
        err_text = err_file.read_text(errors="replace")
    except OSError:
        err_text = ""
    unexpected = Counter(
        m.group(1).strip()
        for m in re.finditer(
            r"Aborting call on unexpected message.*?received '(SIP/2\.0 [^\r\n']*)", err_text
        )
    )
    if unexpected:
        lines.append("unexpected: " + ", ".join(f"{k} x{v}" for k, v in unexpected.most_common(5)))
    # sipp's own timestamped messages (connection refused, timeouts, ...), deduplicated.
    seen: dict[str, None] = {}
    for text in (stdout, err_text):
        # Messages start with "date<TAB>time<TAB>epoch: " (not always at a line start).
        for chunk in re.split(r"\d{4}-\d\d-\d\d\t[\d:.]+\t[\d.]+: ", text)[1:]:
            first = chunk.splitlines()[0] if chunk else ""
            msg = re.sub(r"'[^']*'|\d+-\d+@\S+", "...", first)[:160]
            if "unexpected message" not in msg and "Dead call" not in msg:
                seen.setdefault(msg)
    lines.extend(list(seen)[:5])
    return "\n".join(lines)


def run_sipp(
    scenario: Path | str,
    host: str,
    port: int,
    transport: Transport,
    rate: int,
    calls: int,
    workdir: Path,
    service: str | None = None,
    timeout: float | None = None,
) -> SippResult:
    """Run sipp (one connection/socket) and return its final counts."""
    sipp = sipp_executable()
    stat_file = workdir / f"sipp-{transport}-stat.csv"
    stat_file.unlink(missing_ok=True)
    duration = calls / rate
    timeout = timeout if timeout is not None else duration * 2 + RECV_TIMEOUT_MS / 1000 + 10
    err_file = workdir / f"sipp-{transport}-errors.log"
    # fmt: off
    cmd = [
        sipp, "-sf", str(scenario),
        "-t", "t1" if transport == "tcp" else "u1",
        "-i", host,
        "-r", str(rate), "-rp", "1000",
        "-m", str(calls),
        "-l", str(max(rate * 2, 100)),  # concurrent-call limit: 2 s of calls in flight
        "-nostdin",
        "-timeout", f"{timeout:.0f}s", "-timeout_error",
        "-recv_timeout", str(RECV_TIMEOUT_MS),
        "-trace_stat", "-stf", str(stat_file), "-fd", "60",
        "-trace_err", "-error_file", str(err_file),  # written only when calls fail
        "-f", "60",  # screen refresh period: keep stdout small
    ]
    # fmt: on
    if service:
        cmd += ["-s", service]
    cmd.append(f"{host}:{port}")
    out = workdir / f"sipp-{transport}.out"
    returncode, cpu_seconds, wall, text = run_sipp_process(cmd, workdir, out, timeout)
    row = _parse_stat_csv(stat_file)
    ok, failed, created, counters, errors = sipp_outcome(row, text, err_file, out, returncode)
    return SippResult(ok, failed, created, returncode, cpu_seconds, wall, errors, counters)


# --------------------------------------------------------------------------- measure


def measure(
    target_cmd: list[str],
    scenario: str,
    transport: Transport,
    rate: int,
    duration: float,
    port: int,
    *,
    host: str = "127.0.0.1",
    service: str | None = None,
    name: str = "target",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure the server CPU cost per request of ``target_cmd`` under a sipp load.

    ``target_cmd`` may contain the placeholders ``{host}``, ``{port}``, ``{repo}`` (the
    repository root) and ``{rundir}`` (a fresh temporary directory, the server's working
    directory, removed afterwards).  The server is started in its own
    process group, polled with OPTIONS until it answers on ``udp`` and ``tcp``, loaded
    with ``rate * duration`` calls of ``scenario`` over one ``transport`` connection, and
    stopped.  A target that fails to start or answer does not raise: the result carries
    ``"error"`` and zero successful requests.

    Returns a dict with ``requests_ok``, ``requests_failed``, ``cpu_seconds``,
    ``cpu_us_per_request`` (None when nothing succeeded), ``rate``, ``duration``,
    ``transport`` and details (``target``, ``sipp_*``, ``cpu_seconds_schedstat``, ...).
    """
    say = progress or (lambda msg: None)
    calls = max(1, round(rate * duration))
    result: dict[str, Any] = {
        "target": name,
        "transport": transport,
        "rate": rate,
        "duration": duration,
        "requests": calls,
        "requests_ok": 0,
        "requests_failed": calls,
        "cpu_seconds": None,
        "cpu_us_per_request": None,
    }
    rundir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-{transport}-"))
    argv = [arg.format(host=host, port=port, rundir=rundir, repo=REPO) for arg in target_cmd]
    result["command"] = shlex.join(argv)
    server = Server(name, argv, rundir)
    with serving(server, result, say):
        ready = server.start(host, port, say)
        say(
            f"answering OPTIONS after {ready:.2f}s; sipp {calls} calls at {rate}/s over {transport}"
        )

        before = sample_cpu(server.pid)
        sipp = run_sipp(scenario, host, port, transport, rate, calls, rundir, service=service)
        after = sample_cpu(server.pid)
        if not server.alive():
            sipp.errors += f"\nserver exited during the run (code {server.proc.returncode})"  # type: ignore[union-attr]

        cpu = after.seconds - before.seconds
        ok = sipp.ok
        failed = max(sipp.failed, calls - ok)
        result.update(
            requests_ok=ok,
            requests_failed=failed,
            cpu_seconds=round(cpu, 4),
            cpu_us_per_request=round(cpu / ok * 1e6, 2) if ok else None,
            cpu_seconds_schedstat=round(after.sched_seconds - before.sched_seconds, 4),
            server_processes=after.processes,
            sipp_returncode=sipp.returncode,
            sipp_cpu_seconds=round(sipp.cpu_seconds, 4),
            sipp_wall_seconds=round(sipp.wall_seconds, 3),
            achieved_rate=round(ok / sipp.wall_seconds, 1) if sipp.wall_seconds else None,
            sipp_counters=sipp.counters,
        )
        if sipp.failed or ok < calls or sipp.returncode not in (0, 1):
            result["error"] = (
                f"{failed} of {calls} requests failed (sipp exit {sipp.returncode})"
                + (f": {sipp.errors.strip()}" if sipp.errors.strip() else "")
            )
        say(
            f"done: ok={ok} failed={failed} cpu={cpu:.3f}s "
            f"({result['cpu_us_per_request']} us/request)"
        )
    return result


# --------------------------------------------------------------------------- CLI


def fmt(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec``, or ``-`` when it is None."""
    return "-" if value is None else format(value, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 3) -> str:
    """A plain text table; the first ``left`` columns left-aligned, the rest right-aligned."""
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate(all_rows):
        cells = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def errors_block(results: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> str:
    """``errors:`` and each result's ``error`` (first line and up to 8 last ones), named by
    ``key(result)``, after an empty line; ``""`` when no result has an error."""
    lines = []
    for r in results:
        if r.get("error"):
            first, *rest = r["error"].splitlines()
            lines.append(f"  {key(r)}: {first}")
            lines.extend(f"      {line}" for line in rest[-8:])
    return "\n".join(["", "errors:", *lines]) if lines else ""


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge repeated runs per (target, transport), in first-seen order.

    Counts and CPU seconds are summed; ``cpu_us_per_request`` is the median over the runs
    that had successful requests, with ``cpu_us_min``/``cpu_us_max`` beside it.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["target"], r["transport"]), []).append(r)
    summary = []
    for (target, transport), runs in groups.items():
        per_req = [r["cpu_us_per_request"] for r in runs if r["cpu_us_per_request"] is not None]
        cpu = [r["cpu_seconds"] for r in runs if r["cpu_seconds"] is not None]
        errors = [r["error"] for r in runs if r.get("error")]
        summary.append(
            {
                "target": target,
                "transport": transport,
                "runs": len(runs),
                "requests_ok": sum(r["requests_ok"] for r in runs),
                "requests_failed": sum(r["requests_failed"] for r in runs),
                "cpu_seconds": round(sum(cpu), 4) if cpu else None,
                "cpu_us_per_request": statistics.median(per_req) if per_req else None,
                "cpu_us_min": min(per_req) if per_req else None,
                "cpu_us_max": max(per_req) if per_req else None,
                **({"error": errors[0]} if errors else {}),
            }
        )
    return summary


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A text table: target, transport, ok, failed, CPU µs/request, ratio ours/kamailio.

    ``summary`` is the output of :func:`summarize` (or single runs of :func:`measure`).
    """
    base = {
        r["transport"]: r["cpu_us_per_request"]
        for r in summary
        if r["target"] == "kamailio" and r["cpu_us_per_request"]
    }
    spread = any(r.get("runs", 1) > 1 for r in summary)
    header = ("target", "transport", "ok", "failed", "CPU s", "CPU µs/req")
    header += ("min-max",) if spread else ()
    header += ("ours/kamailio",)
    rows = []
    for r in summary:
        us = r["cpu_us_per_request"]
        ratio = None
        if r["target"] != "kamailio" and us and base.get(r["transport"]):
            ratio = f"{us / base[r['transport']]:.2f}x"
        row = (
            r["target"],
            r["transport"],
            str(r["requests_ok"]),
            str(r["requests_failed"]),
            fmt(r["cpu_seconds"], ".3f"),
            fmt(us, ".1f"),
        )
        if spread:
            lo, hi = r.get("cpu_us_min"), r.get("cpu_us_max")
            row += (f"{lo:.0f}-{hi:.0f}" if lo is not None and hi is not None else "-",)
        rows.append((*row, ratio or "-"))
    errors = errors_block(summary, lambda r: f"{r['target']}/{r['transport']}")
    return table(header, rows, left=2) + (f"\n{errors}" if errors else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 if any target had errors)."""
    parser = argparse.ArgumentParser(
        description="CPU cost per SIP request of our FE beside Kamailio (see bench/README.md).",
    )
    parser.add_argument("mode", choices=sorted(MODES), help="scenario to run")
    parser.add_argument("--rate", type=int, default=2000, help="requests per second (2000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (10)")
    parser.add_argument("--transports", default="tcp,udp", help="comma-separated (tcp,udp)")
    parser.add_argument(
        "--targets", default="ours,kamailio", help="comma-separated subset of ours,kamailio"
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument(
        "--ours-cmd",
        help="our server's command line, with {host} {port} {repo} {rundir} placeholders; "
        "it runs in {rundir} (default: .venv/bin/registrar serve --listen ...)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per target and transport; median shown (1)"
    )
    parser.add_argument(
        "--kamailio-memory",
        choices=KAMAILIO_MEMORY_MANAGERS,
        default="tlsf",
        help="Kamailio's allocator, -x/-X (tlsf; Debian's default is qm, see bench/README.md)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    mode = MODES[args.mode]
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    for t in transports:
        if t not in ("tcp", "udp"):
            parser.error(f"unknown transport {t!r}")
    ours = shlex.split(args.ours_cmd) if args.ours_cmd else None
    available = targets_for(mode, ours, args.kamailio_memory)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    for n in names:
        if n not in available:
            parser.error(f"unknown target {n!r}")
    ncpu = os.cpu_count() or 0
    if ncpu < 4:
        print(f"# note: {ncpu} CPUs, shared by sipp and the server", file=sys.stderr)

    results = []
    for rep in range(1, args.repeat + 1):
        for transport in transports:
            for name in names:
                port = free_port(args.host)
                tag = f"{name}/{transport}" + (f" #{rep}" if args.repeat > 1 else "")

                def progress(msg: str, _tag: str = tag) -> None:
                    print(f"[{_tag}] {msg}", file=sys.stderr, flush=True)

                run = measure(
                    available[name],
                    str(mode.scenario),
                    transport,
                    args.rate,
                    args.duration,
                    port,
                    host=args.host,
                    service=mode.service,
                    name=name,
                    progress=progress,
                )
                results.append({**run, "run": rep})

    summary = summarize(results)
    if args.json:
        print(json.dumps({"mode": mode.name, "summary": summary, "runs": results}, indent=2))
    else:
        runs = f", {args.repeat} runs each" if args.repeat > 1 else ""
        print(f"\n{mode.name}: {args.rate} requests/s for {args.duration:g}s per run{runs}")
        print(format_table(summary))
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
