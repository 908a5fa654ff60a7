#!/usr/bin/env python3
"""REGISTER cost (CPU µs per REGISTER) and memory per binding, our FE beside Kamailio.

Issue 3. Everything runs on loopback, each figure beside Kamailio measured in the same run
(DESIGN.md §9). Tests never run this; it never asserts on speed.

**CPU per REGISTER.** One sipp scenario, the same for both servers, registers ``--aors``
distinct AORs (default 10,000) read from an injection CSV (``user00001@example.com`` ...
``user10000@example.com``, one per call, every AOR once) at a fixed offered rate (default
1,000 registrations/s, which our FE sustains), over one TCP connection (``sipp -t t1``) and
over one UDP socket (``-t u1``), in two modes:

``noauth``  ``tests/sipp/bench_register.xml``: REGISTER → 200.
            ours: ``registrar serve --domain example.com --auth off``;
            Kamailio: ``bench/kamailio/registrar.cfg`` (usrloc in memory).
``auth``    ``tests/sipp/bench_register_auth.xml``: REGISTER → 401 → REGISTER with digest
            credentials (MD5, qop=auth: sipp 3.6 answers MD5 only) → 200.
            ours: the 10,000 users imported with ``registrar users import`` into a users DB
            (one password), ``--auth digest --digest-algorithms MD5``;
            Kamailio: ``bench/kamailio/registrar_auth.cfg`` (``pv_www_authenticate`` with
            one password for every user, no database).
            Before the measured run each server is checked to answer a wrong password with a
            second 401 (the call must fail), so neither accepts anything.

For each (mode, transport, target) a fresh server is started, polled with OPTIONS until it
answers, and the CPU time of its whole process tree is sampled around the sipp run
(``bench/cpu.py``: ``utime+stime+cutime+cstime`` of ``/proc/PID/stat``, imported from there)::

    µs per REGISTER     = server CPU seconds / (successful calls x REGISTERs per call) x 10^6
    µs per registration = server CPU seconds / successful calls x 10^6

(REGISTERs per call: 1 without auth, 2 with auth: the challenged one and the answered one.)

**Memory per binding.** Our FE with ``--auth off`` over one TCP connection (TCP: no
transaction lingers after the 200, unlike UDP's 32 s Timer J): 1,000 warm-up registrations
(other AORs; first-use allocations, imports), then ``VmRSS`` (``/proc/PID/status``), then
``--bindings`` AORs (default 100,000) registered at ``--memory-rate`` (default 2,000/s), then
``VmRSS`` again once it is stable (polled until two samples 0.5 s apart differ by < 0.2 %,
at most 10 s)::

    bytes per binding = (VmRSS after - VmRSS before) / bindings registered

Target: ≤ 1 KiB per binding. The binding count is read back from the FE's admin ``/status``.
Kamailio gets the same treatment, but its bindings live in shared memory mapped by every one
of its processes, so its figure is the change of the summed ``Pss`` (proportional set size,
``/proc/PID/smaps_rollup``) of its process tree, which counts each shared page once. Ours is
one process, so its ``Pss`` equals its ``VmRSS`` up to shared libraries; both are printed.

Command line::

    .venv/bin/python bench/register.py [--aors 10000] [--rate 1000] [--auth-rate R]
        [--modes noauth,auth] [--transports tcp,udp] [--targets ours,kamailio]
        [--repeat 1] [--bindings 100000] [--memory-rate 2000] [--no-memory]
        [--kamailio-memory tlsf|fm|qm] [--json]

Progress lines go to stderr; the tables (or ``--json``) to stdout. Exit 1 when a run failed.
Standard library and the project's own modules only; Linux (``/proc``); sipp and kamailio.
See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import cpu  # noqa: E402  (bench/cpu.py: CPU sampling, readiness probe, sipp result parsing)
from cpu import Say, Server, errors_block, fmt, table  # noqa: E402

REPO = cpu.REPO
SIPP_DIR = cpu.SIPP_DIR
KAMAILIO_DIR = cpu.KAMAILIO_DIR
SCENARIO_NOAUTH = SIPP_DIR / "bench_register.xml"
SCENARIO_AUTH = SIPP_DIR / "bench_register_auth.xml"
DOMAIN = "example.com"
PASSWORD = "bench-password"  # = BENCH_PASSWORD's default in bench/kamailio/registrar_auth.cfg
TARGET_BYTES_PER_BINDING = 1024
WARMUP_AORS = 1000


def say_stderr(tag: str) -> Say:
    """A progress printer: ``[tag] message`` on stderr."""

    def say(msg: str) -> None:
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)

    return say


# ------------------------------------------------------------------------------ files


def user_name(n: int, width: int = 5) -> str:
    """``user00001`` for ``n = 1``."""
    return f"user{n:0{width}d}"


def write_injection(
    path: Path,
    users: Sequence[str],
    *,
    domain: str = DOMAIN,
    password: str = PASSWORD,
    expires: int = 3600,
) -> Path:
    """A sipp injection file: ``SEQUENTIAL`` then ``user;[authentication ...];domain;expires``."""
    with path.open("w") as fh:
        fh.write("SEQUENTIAL\n")
        for user in users:
            fh.write(
                f"{user};[authentication username={user} password={password}];{domain};{expires}\n"
            )
    return path


def import_users(db: Path, users: Sequence[str], password: str, domain: str = DOMAIN) -> float:
    """``registrar users import`` of ``sip:USER@domain`` with one password; returns seconds."""
    rows = db.with_suffix(".csv")
    with rows.open("w") as fh:
        fh.write("aor,password\n")
        for user in users:
            fh.write(f"sip:{user}@{domain},{password}\n")
    started = time.monotonic()
    done = subprocess.run(
        [cpu.registrar_exe(), "users", "import", "--users-db", str(db), str(rows)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    if done.returncode != 0:
        raise cpu.BenchError(f"users import failed: {done.stdout}{done.stderr}")
    return time.monotonic() - started


# ------------------------------------------------------------------------------ /proc memory


def _proc_kib_field(path: str, name: str) -> int | None:
    """The ``name:`` line (``NNN kB``) of the ``/proc`` file ``path`` in bytes, None if the
    file is unreadable or has no such line."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) * 1024
    return None


def vm_rss(pid: int) -> int | None:
    """``VmRSS`` of ``pid`` in bytes (``/proc/PID/status``), None if gone."""
    return _proc_kib_field(f"/proc/{pid}/status", "VmRSS")


def pss(pid: int) -> int | None:
    """``Pss`` of ``pid`` in bytes (``/proc/PID/smaps_rollup``), None if unreadable."""
    return _proc_kib_field(f"/proc/{pid}/smaps_rollup", "Pss")


def machine_jiffies() -> tuple[int, int]:
    """``(busy, total)`` CPU jiffies of the whole machine, all CPUs (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def busy_cpus(before: tuple[int, int], after: tuple[int, int]) -> float:
    """CPUs' worth of work the whole machine did between two :func:`machine_jiffies`."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * (os.cpu_count() or 1) if total > 0 else 0.0


def check_quiet(say: Say, seconds: float = 2.0) -> float:
    """How many CPUs the machine keeps busy before we start (other work distorts timings:
    say so when it is more than 0.2 CPU). Returns that figure."""
    before = machine_jiffies()
    time.sleep(seconds)
    busy = busy_cpus(before, machine_jiffies())
    if busy > 0.2:
        say(
            f"WARNING: the machine is already busy ({busy:.2f} of {os.cpu_count()} CPUs) "
            "before the benchmark starts; timings will be distorted"
        )
    return busy


def tree_memory(root: int) -> dict[str, int]:
    """Summed ``VmRSS`` and ``Pss`` (bytes) of ``root`` and its live descendants."""
    rss_total = pss_total = 0
    pids = cpu.process_tree(root)
    for pid in pids:
        rss_total += vm_rss(pid) or 0
        pss_total += pss(pid) or 0
    return {"rss": rss_total, "pss": pss_total, "processes": len(pids)}


def stable_memory(root: int, timeout: float = 10.0) -> dict[str, int]:
    """:func:`tree_memory` once two samples 0.5 s apart differ by < 0.2 % (or at the
    deadline)."""
    deadline = time.monotonic() + timeout
    last = tree_memory(root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_memory(root)
        if abs(now["rss"] - last["rss"]) < 0.002 * max(last["rss"], 1):
            return now
        last = now
    return last


# ------------------------------------------------------------------------------ servers


def ours_argv(
    host: str, port: int, rundir: Path, *, auth: bool, users_db: Path | None, admin: int | None
) -> list[str]:
    """Our FE serving ``example.com`` (digest MD5 with ``users_db``, or ``--auth off``)."""
    argv = [
        cpu.registrar_exe(), "serve",
        "--listen", f"tcp:{host}:{port}", "--listen", f"udp:{host}:{port}",
        "--fqdn", "bench.example.com", "--domain", DOMAIN,
        "--state-dir", str(rundir / "state"),
        "--admin", f"{host}:{admin}" if admin else "off",
        "--log-level", "warning",
    ]  # fmt: skip
    if auth:
        assert users_db is not None
        argv += ["--auth", "digest", "--users-db", str(users_db), "--digest-algorithms", "MD5"]
    else:
        argv += ["--auth", "off"]
    return argv


def kamailio_argv(
    host: str, port: int, rundir: Path, *, auth: bool, memory_manager: str = "tlsf"
) -> list[str]:
    """Kamailio's command line (``registrar_auth.cfg`` or ``registrar.cfg``, 256 MiB of shared
    memory, allocator ``memory_manager``: see :func:`cpu.kamailio_command`)."""
    cfg = KAMAILIO_DIR / ("registrar_auth.cfg" if auth else "registrar.cfg")
    argv = cpu.kamailio_command(cfg, 256, memory_manager)
    return [a.format(host=host, port=port, rundir=rundir, repo=REPO) for a in argv]


def target_server(
    target: str,
    host: str,
    port: int,
    rundir: Path,
    *,
    auth: bool,
    users_db: Path | None = None,
    admin: int | None = None,
    kamailio_memory: str = "tlsf",
) -> Server:
    """The server of ``target`` (``ours``: :func:`ours_argv`, else :func:`kamailio_argv` with
    allocator ``kamailio_memory``) on ``host:port``, to run in ``rundir`` (not started)."""
    if target == "ours":
        argv = ours_argv(host, port, rundir, auth=auth, users_db=users_db, admin=admin)
    else:
        argv = kamailio_argv(host, port, rundir, auth=auth, memory_manager=kamailio_memory)
    return Server(target, argv, rundir)


# ------------------------------------------------------------------------------ sipp


@dataclass
class SippRun(cpu.SippResult):
    """sipp's final counts (and every row of its ``-trace_stat`` file)."""

    rows: list[dict[str, str]] = field(default_factory=list)


def run_sipp(
    scenario: Path,
    remote: str,
    *,
    mode: str,
    rate: float,
    calls: int,
    workdir: Path,
    tag: str,
    inf: Path | None = None,
    local_ip: str | None = None,
    limit: int | None = None,
    timeout: float | None = None,
    recv_timeout_ms: int = cpu.RECV_TIMEOUT_MS,
    stat_period: int = 60,
    extra: Sequence[str] = (),
) -> SippRun:
    """Run sipp to completion (``mode``: ``t1``, ``u1`` or ``tn``) and read back its counts.

    ``timeout`` is sipp's global timeout (default: twice the planned duration + 15 s); a run
    that sipp ends at its global timeout is not an error by itself (its rows tell how far it
    got). Raises :class:`cpu.BenchError` when sipp cannot be run or reports nothing.
    """
    sipp = cpu.sipp_executable()
    stat_file = workdir / f"sipp-{tag}-stat.csv"
    err_file = workdir / f"sipp-{tag}-errors.log"
    out_file = workdir / f"sipp-{tag}.out"
    for f in (stat_file, err_file, out_file):
        f.unlink(missing_ok=True)
    duration = calls / rate if rate else 0
    if timeout is None:
        timeout = duration * 2 + recv_timeout_ms / 1000 + 15
    cmd = [
        sipp, "-sf", str(scenario), "-t", mode,
        "-r", f"{rate:g}", "-rp", "1000", "-m", str(calls),
        "-l", str(limit or max(int(rate * 2), 100)),
        "-nostdin", "-timeout", f"{timeout:.0f}s",
        "-recv_timeout", str(recv_timeout_ms),
        "-trace_stat", "-stf", str(stat_file), "-fd", str(stat_period),
        "-trace_err", "-error_file", str(err_file),
        "-f", "60",
    ]  # fmt: skip
    if inf is not None:
        cmd += ["-inf", str(inf)]
    if local_ip:
        cmd += ["-i", local_ip]
    if mode == "tn":
        cmd += ["-max_socket", "20000"]
    cmd += [*extra, remote]
    returncode, cpu_seconds, wall, text = cpu.run_sipp_process(cmd, workdir, out_file, timeout)
    rows = _stat_rows(stat_file)
    ok, failed, created, counters, errors = cpu.sipp_outcome(
        rows[-1] if rows else None, text, err_file, out_file, returncode
    )
    return SippRun(ok, failed, created, returncode, cpu_seconds, wall, errors, counters, rows)


def _stat_rows(path: Path) -> list[dict[str, str]]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    if len(lines) < 2:
        return []
    header = lines[0].split(";")
    return [dict(zip(header, line.split(";"), strict=False)) for line in lines[1:] if line]


# ------------------------------------------------------------------------------ CPU runs


def check_rejects_wrong_password(
    host: str, port: int, transport: str, workdir: Path, say: Say
) -> str | None:
    """One auth call with a wrong password: it must fail on a second 401. Returns an error
    text when the server accepted it (or answered something else), else None."""
    inf = write_injection(workdir / "wrong.csv", ["nosuchpw"], password="wrong-password")
    run = run_sipp(
        SCENARIO_AUTH,
        f"{host}:{port}",
        mode="t1" if transport == "tcp" else "u1",
        rate=10,
        calls=1,
        workdir=workdir,
        tag=f"wrongpw-{transport}",
        inf=inf,
        timeout=15,
        extra=["-timeout_error"],
    )
    if run.ok:
        return "accepted a wrong password (200)"
    if "401" not in run.errors:
        return f"wrong password: expected a second 401, got: {run.errors.strip()[:200]}"
    say("auth check: wrong password -> 401 again (rejected), as expected")
    return None


def measure_cpu(
    target: str,
    mode: str,
    transport: str,
    *,
    host: str,
    aors: int,
    rate: float,
    users_db: Path | None,
    inf: Path,
    say: Say,
    kamailio_memory: str = "tlsf",
) -> dict[str, Any]:
    """One fresh server, one sipp run of ``aors`` registrations; the figures as a dict."""
    auth = mode == "auth"
    per_call = 2 if auth else 1
    result: dict[str, Any] = {
        "target": target,
        "mode": mode,
        "transport": transport,
        "rate": rate,
        "calls": aors,
        "registers_per_call": per_call,
        "ok": 0,
        "failed": aors,
        "cpu_seconds": None,
        "cpu_us_per_register": None,
        "cpu_us_per_registration": None,
    }
    rundir = Path(tempfile.mkdtemp(prefix=f"bench-register-{target}-{mode}-{transport}-"))
    port = cpu.free_port(host)
    server = target_server(
        target, host, port, rundir, auth=auth, users_db=users_db, kamailio_memory=kamailio_memory
    )
    result["command"] = shlex.join(server.argv)
    with cpu.serving(server, result, say):
        ready = server.start(host, port, say)
        say(f"answering OPTIONS after {ready:.2f}s")
        if auth:
            problem = check_rejects_wrong_password(host, port, transport, rundir, say)
            if problem:
                raise cpu.BenchError(problem)
        say(f"sipp: {aors} registrations at {rate:g}/s over {transport}")
        before = cpu.sample_cpu(server.pid)
        machine0 = machine_jiffies()
        run = run_sipp(
            SCENARIO_AUTH if auth else SCENARIO_NOAUTH,
            f"{host}:{port}",
            mode="t1" if transport == "tcp" else "u1",
            rate=rate,
            calls=aors,
            workdir=rundir,
            tag=transport,
            inf=inf,
            local_ip=host,
            extra=["-timeout_error"],
        )
        after = cpu.sample_cpu(server.pid)
        machine = busy_cpus(machine0, machine_jiffies())
        if not server.alive():
            run.errors += f"\nserver exited during the run (code {server.proc.returncode})"  # type: ignore[union-attr]
        used = after.seconds - before.seconds
        ok = run.ok
        failed = max(run.failed, aors - ok)
        result.update(
            ok=ok,
            failed=failed,
            cpu_seconds=round(used, 4),
            cpu_seconds_schedstat=round(after.sched_seconds - before.sched_seconds, 4),
            cpu_us_per_register=round(used / (ok * per_call) * 1e6, 2) if ok else None,
            cpu_us_per_registration=round(used / ok * 1e6, 2) if ok else None,
            server_processes=after.processes,
            sipp_cpu_seconds=round(run.cpu_seconds, 4),
            sipp_wall_seconds=round(run.wall_seconds, 3),
            achieved_rate=round(ok / run.wall_seconds, 1) if run.wall_seconds else None,
            sipp_counters=run.counters,
            machine_busy_cpus=round(machine, 2),
            other_cpus=round(
                max(0.0, machine - (used + run.cpu_seconds) / max(run.wall_seconds, 1e-6)), 2
            ),
        )
        if failed or run.returncode not in (0, 1):
            result["error"] = f"{failed} of {aors} calls failed (sipp exit {run.returncode})" + (
                f": {run.errors.strip()}" if run.errors.strip() else ""
            )
        say(
            f"done: ok={ok} failed={failed} cpu={used:.3f}s "
            f"({result['cpu_us_per_register']} µs/REGISTER)"
        )
    return result


# ------------------------------------------------------------------------------ memory


def _admin_bindings(address: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{address}/status", timeout=5) as resp:
            return int(json.loads(resp.read())["bindings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure_memory(
    target: str,
    *,
    host: str,
    bindings: int,
    rate: float,
    workdir: Path,
    say: Say,
    kamailio_memory: str = "tlsf",
) -> dict[str, Any]:
    """Register ``bindings`` AORs over one TCP connection; memory before/after."""
    result: dict[str, Any] = {"target": target, "bindings_planned": bindings, "rate": rate}
    rundir = Path(tempfile.mkdtemp(prefix=f"bench-register-mem-{target}-"))
    port = cpu.free_port(host)
    admin = cpu.free_port(host) if target == "ours" else None
    server = target_server(
        target, host, port, rundir, auth=False, admin=admin, kamailio_memory=kamailio_memory
    )
    result["command"] = shlex.join(server.argv)
    width = max(6, len(str(bindings)))
    warm = write_injection(
        workdir / "warmup.csv", [f"warm{n:05d}" for n in range(1, WARMUP_AORS + 1)]
    )
    inf = workdir / f"mem-{bindings}.csv"
    if not inf.exists():
        write_injection(inf, [user_name(n, width) for n in range(1, bindings + 1)])
    with cpu.serving(server, result, say):
        server.start(host, port, say)
        common = {"mode": "t1", "workdir": rundir, "local_ip": host, "extra": ["-timeout_error"]}
        say(f"warm-up: {WARMUP_AORS} registrations")
        run_sipp(
            SCENARIO_NOAUTH, f"{host}:{port}", rate=1000, calls=WARMUP_AORS, tag="warm",
            inf=warm, **common,
        )  # fmt: skip
        before = stable_memory(server.pid)
        say(
            f"before: VmRSS {before['rss'] / 2**20:.1f} MiB, Pss {before['pss'] / 2**20:.1f} MiB "
            f"({before['processes']} processes); sipp: {bindings} registrations at {rate:g}/s"
        )
        run = run_sipp(
            SCENARIO_NOAUTH, f"{host}:{port}", rate=rate, calls=bindings, tag="mem",
            inf=inf, limit=max(int(rate * 5), 1000), **common,
        )  # fmt: skip
        after = stable_memory(server.pid)
        held = _admin_bindings(f"{host}:{admin}") if admin else None
        count = run.ok if held is None else held - WARMUP_AORS
        result.update(
            ok=run.ok,
            failed=run.failed,
            bindings_held=held,
            bindings=count,
            rss_before=before["rss"],
            rss_after=after["rss"],
            pss_before=before["pss"],
            pss_after=after["pss"],
            processes=after["processes"],
            achieved_rate=round(run.ok / run.wall_seconds, 1) if run.wall_seconds else None,
        )
        if count > 0:
            result["rss_bytes_per_binding"] = round((after["rss"] - before["rss"]) / count, 1)
            result["pss_bytes_per_binding"] = round((after["pss"] - before["pss"]) / count, 1)
        if run.failed or run.ok < bindings:
            result["error"] = f"{bindings - run.ok} of {bindings} registrations failed" + (
                f": {run.errors.strip()}" if run.errors.strip() else ""
            )
        say(
            f"after: VmRSS {after['rss'] / 2**20:.1f} MiB, Pss {after['pss'] / 2**20:.1f} MiB; "
            f"{count} bindings; RSS/binding {result.get('rss_bytes_per_binding')} B, "
            f"Pss/binding {result.get('pss_bytes_per_binding')} B"
        )
    return result


# ------------------------------------------------------------------------------ tables


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats per (mode, transport, target), in first-seen order."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["mode"], r["transport"], r["target"]), []).append(r)
    out = []
    for (mode, transport, target), runs in groups.items():
        per_reg = [r["cpu_us_per_register"] for r in runs if r["cpu_us_per_register"]]
        errors = [r["error"] for r in runs if r.get("error")]
        out.append(
            {
                "mode": mode,
                "transport": transport,
                "target": target,
                "runs": len(runs),
                "ok": sum(r["ok"] for r in runs),
                "failed": sum(r["failed"] for r in runs),
                "rate": runs[0]["rate"],
                "registers_per_call": runs[0]["registers_per_call"],
                "cpu_us_per_register": statistics.median(per_reg) if per_reg else None,
                "cpu_us_min": min(per_reg) if per_reg else None,
                "cpu_us_max": max(per_reg) if per_reg else None,
                "other_cpus": max((r.get("other_cpus") or 0.0 for r in runs), default=None),
                **({"error": errors[0]} if errors else {}),
            }
        )
    return out


def format_cpu_table(summary: Sequence[dict[str, Any]]) -> str:
    base = {
        (r["mode"], r["transport"]): r["cpu_us_per_register"]
        for r in summary
        if r["target"] == "kamailio" and r["cpu_us_per_register"]
    }
    spread = any(r["runs"] > 1 for r in summary)
    header = ["mode", "transport", "target", "rate/s", "ok", "failed", "µs/REGISTER"]
    header += ["min-max"] if spread else []
    header += ["µs/registration", "ours/kamailio", "other load CPUs"]
    rows = []
    for r in summary:
        us = r["cpu_us_per_register"]
        k = base.get((r["mode"], r["transport"]))
        ratio = f"{us / k:.2f}x" if r["target"] != "kamailio" and us and k else "-"
        row = [
            r["mode"],
            r["transport"],
            r["target"],
            f"{r['rate']:g}",
            str(r["ok"]),
            str(r["failed"]),
            fmt(us, ".1f"),
        ]
        if spread:
            lo, hi = r["cpu_us_min"], r["cpu_us_max"]
            row.append(f"{lo:.0f}-{hi:.0f}" if lo is not None and hi is not None else "-")
        row += [
            fmt(us * r["registers_per_call"] if us else None, ".1f"),
            ratio,
            fmt(r.get("other_cpus"), ".2f"),
        ]
        rows.append(row)
    return table(header, rows)


def format_memory_table(mem: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in mem:
        rows.append(
            [
                r["target"],
                fmt(r.get("bindings")),
                fmt(r.get("rss_before") and r["rss_before"] / 2**20, ".1f"),
                fmt(r.get("rss_after") and r["rss_after"] / 2**20, ".1f"),
                fmt(r.get("rss_bytes_per_binding"), ".0f"),
                fmt(r.get("pss_bytes_per_binding"), ".0f"),
                f"≤ {TARGET_BYTES_PER_BINDING}" if r["target"] == "ours" else "-",
            ]
        )
    header = [
        "target",
        "bindings",
        "RSS before MiB",
        "RSS after MiB",
        "RSS B/binding",
        "Pss B/binding",
        "target B",
    ]
    return table(header, rows, left=1)


# ------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CPU per REGISTER (no auth / digest MD5, TCP / UDP) and memory per binding, "
        "our FE beside Kamailio (see bench/README.md).",
    )
    parser.add_argument("--aors", type=int, default=10000, help="distinct AORs per run (10000)")
    parser.add_argument(
        "--rate", type=float, default=1000, help="registrations per second offered (1000)"
    )
    parser.add_argument(
        "--auth-rate", type=float, help="registrations per second with auth (default: --rate)"
    )
    parser.add_argument("--modes", default="noauth,auth", help="comma-separated (noauth,auth)")
    parser.add_argument("--transports", default="tcp,udp", help="comma-separated (tcp,udp)")
    parser.add_argument("--targets", default="ours,kamailio", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per combination (1)")
    parser.add_argument(
        "--bindings", type=int, default=100000, help="bindings for the memory figure (100000)"
    )
    parser.add_argument(
        "--memory-rate", type=float, default=2000, help="registrations/s when filling (2000)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory figure")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU figures")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (127.0.0.1)")
    parser.add_argument(
        "--kamailio-memory",
        choices=cpu.KAMAILIO_MEMORY_MANAGERS,
        default="tlsf",
        help="Kamailio's allocator, -x/-X (tlsf; Debian's default is qm, see bench/README.md)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    def split(text: str, allowed: set[str], what: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        for item in items:
            if item not in allowed:
                parser.error(f"unknown {what} {item!r}")
        return items

    modes = split(args.modes, {"noauth", "auth"}, "mode")
    transports = split(args.transports, {"tcp", "udp"}, "transport")
    targets = split(args.targets, {"ours", "kamailio"}, "target")
    if args.aors < 1 or args.bindings < 1:
        parser.error("--aors and --bindings must be at least 1")
    ncpu = os.cpu_count() or 0
    print(f"# {ncpu} CPUs, shared by sipp and the server", file=sys.stderr)
    background = check_quiet(say_stderr("register"))

    workdir = Path(tempfile.mkdtemp(prefix="bench-register-"))
    results: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    try:
        users = [user_name(n, max(5, len(str(args.aors)))) for n in range(1, args.aors + 1)]
        inf = write_injection(workdir / "aors.csv", users)
        users_db: Path | None = None
        if not args.no_cpu and "auth" in modes and "ours" in targets:
            users_db = workdir / "users.db"
            took = import_users(users_db, users, PASSWORD)
            print(f"# imported {len(users)} users into {users_db} in {took:.1f}s", file=sys.stderr)
        if not args.no_cpu:
            for rep in range(1, args.repeat + 1):
                for mode in modes:
                    rate = args.auth_rate if mode == "auth" and args.auth_rate else args.rate
                    for transport in transports:
                        for target in targets:
                            tag = f"{mode}/{transport}/{target}" + (
                                f" #{rep}" if args.repeat > 1 else ""
                            )
                            run = measure_cpu(
                                target,
                                mode,
                                transport,
                                host=args.host,
                                aors=args.aors,
                                rate=rate,
                                users_db=users_db,
                                inf=inf,
                                say=say_stderr(tag),
                                kamailio_memory=args.kamailio_memory,
                            )
                            results.append({**run, "run": rep})
        if not args.no_memory:
            for target in targets:
                memory.append(
                    measure_memory(
                        target,
                        host=args.host,
                        bindings=args.bindings,
                        rate=args.memory_rate,
                        workdir=workdir,
                        say=say_stderr(f"memory/{target}"),
                        kamailio_memory=args.kamailio_memory,
                    )
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(results)
    if args.json:
        print(
            json.dumps(
                {
                    "aors": args.aors,
                    "kamailio_memory": args.kamailio_memory,
                    "background_cpus": round(background, 2),
                    "summary": summary,
                    "runs": results,
                    "memory": memory,
                    "target_bytes_per_binding": TARGET_BYTES_PER_BINDING,
                },
                indent=2,
            )
        )
    else:
        if summary:
            print(
                f"\nCPU per REGISTER: {args.aors} distinct AORs per run, one sipp connection "
                "(tcp: -t t1, udp: -t u1); auth = 401 + 200, digest MD5; "
                f"Kamailio's allocator: {args.kamailio_memory}"
            )
            print(format_cpu_table(summary))
            print(errors_block(summary, lambda r: f"{r['mode']}/{r['transport']}/{r['target']}"))
        if memory:
            print(
                f"\nMemory per binding: {args.bindings} AORs over one TCP connection, --auth off; "
                "ours: VmRSS delta; kamailio: summed Pss delta (shared memory counted once)"
            )
            print(format_memory_table(memory))
            print(errors_block(memory, lambda r: f"memory/{r['target']}"))
    failed = any(r.get("error") for r in [*results, *memory])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
