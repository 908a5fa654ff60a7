#!/usr/bin/env python3
"""Pool benchmarks (issue 4): failover time, the cost of a redirect, aggregate REGISTER/s.

A 4-FE pool is started on a loopback block of its own (default ``127.0.50.x``: FEs on
``.1``-``.4``, DNS on ``.53``) the way the integration tests start one
(``tests/pooltools.py``: ``certs init``, ``users import`` of ``user0001@contoso.com`` ...
with password ``demo``, ``dns serve``, one ``registrar serve --topology --fe`` per FE, waiting
on every FE's admin ``/status`` until all see all up and have settled). Settings are those of
``examples/contoso.toml`` (heartbeat 1 s, timeout 3 s, backup_max_expires 300 s).

Parts (``--parts b,a,c``, run in that order):

``a`` **Failover time.** ``registrar client load --users N --hold -1`` (TLS, DNS SRV,
    digest, following 301; default N = 2,000) registers and holds N users. The FE holding
    the most of them is SIGKILLed; the survivors' admin ``/status`` is polled every 50 ms
    (``backup_mode``: AORs registered there in backup mode; ``pool.up``: their view). Figures,
    from the SIGKILL: when every survivor saw the FE down (``heartbeat_timeout`` bounds it),
    and when 50 / 90 / 99 / 100 % of the dead FE's users were registered again in backup
    mode. The dead FE is then restarted (its users go home by re-homing) before part ``c``.

``b`` **Cost of a redirect.** On one FE (``fe1``), with no clients registered: sipp sends
    REGISTERs over one TCP connection (``-t t1``) at ``--redirect-rate`` (default 1,000/s)
    for ``--duration`` s, for AORs whose current registrar is another FE
    (``tests/sipp/bench_redirect.xml``: each must get ``301``), then for AORs whose current
    registrar is this FE, without credentials (``tests/sipp/bench_challenge.xml``: ``401``).
    The CPU of that FE's process is sampled around each run as ``bench/cpu.py`` does;
    ``µs/request = CPU s / requests x 10^6``, also with the FE's idle CPU (heartbeats: measured
    over ``--duration`` s with no load just before) subtracted. Kamailio, measured in the
    same run: ``bench/kamailio/registrar_auth.cfg`` answers the same scenarios, ``401`` with
    ``www_challenge`` and, started with ``-A BENCH_REDIRECT``, ``301`` with a Contact.

``c`` **Aggregate REGISTER/s.** sipp (``tests/sipp/bench_pool_register.xml``, ``-t tn``: a
    TCP connection per registration) registers distinct users, each sent to a random FE of
    the pool (the injection file names it), following the ``301`` when that FE is not the
    user's registrar, then ``401`` → digest MD5 → ``200``: what a client of the pool does,
    without TLS. Offered rates ``--rates`` (default 200,400,800,1600 registrations/s), each for
    ``--duration`` s, one after the other (the pool is let go idle in between), by ``--sipp``
    (4) sipp processes at once, each offering its share with its own slice of users from its
    own loopback address (one address would run out of ephemeral ports: ~1.75 connections
    per registration, each left in TIME_WAIT by sipp). Figure per rate: completed
    registrations per second over the offered window (sipp's ``-trace_stat`` rows every
    second, the first 2 s left out, summed over the sipps), and the CPU the four FEs, sipp
    and everything else used. When the offered rate exceeds capacity the completed rate is
    the pool's capacity on this machine (everything shares its CPUs: 4 FEs, DNS, sipp).

Command line::

    .venv/bin/python bench/pool.py [--parts b,a,c] [--users 2000] [--duration 10]
        [--redirect-rate 1000] [--rates 200,400,800,1600] [--sipp 4] [--block 127.0.50]
        [--no-kamailio] [--keep] [--json]

Progress lines go to stderr; tables (or ``--json``) to stdout. Exit 1 when a part failed.
Standard library, the project's own modules (and ``tests/pooltools.py``), sipp, kamailio.
Bounded: every wait has a deadline. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (BENCH, REPO / "tests", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import cpu  # noqa: E402
import pooltools  # noqa: E402  (tests/pooltools.py: topology, pool processes, load client)
from cpu import Say, Server, errors_block, fmt, table  # noqa: E402
from register import busy_cpus, check_quiet, machine_jiffies, run_sipp, say_stderr  # noqa: E402

SIPP_DIR = cpu.SIPP_DIR
SCENARIO_REDIRECT = SIPP_DIR / "bench_redirect.xml"
SCENARIO_CHALLENGE = SIPP_DIR / "bench_challenge.xml"
SCENARIO_POOL = SIPP_DIR / "bench_pool_register.xml"
DOMAIN = pooltools.DOMAIN
PASSWORD = pooltools.DEMO_PASSWORD


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one (many TCP/TLS connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------------------ the pool


class BenchPool(pooltools.LivePool):
    """:class:`pooltools.LivePool` with a chosen list of AORs in the user directory and a
    chosen FE log level (``info`` keeps the re-homing events 32040 in the logs)."""

    def __init__(
        self, layout: pooltools.PoolLayout, aors: Sequence[str], log_level: str = "warning"
    ) -> None:
        super().__init__(layout, users=len(aors))
        self.aors = list(aors)
        self.log_level = log_level

    def prepare(self) -> None:
        lay = self.layout
        done = pooltools.run_registrar("certs", "init", "--topology", str(lay.path))
        if done.returncode != 0:
            raise RuntimeError(f"certs init: {done.stdout}{done.stderr}")
        rows = lay.root / "users.csv"
        with rows.open("w") as fh:
            fh.write("aor,password\n")
            for aor in self.aors:
                fh.write(f"{aor},{PASSWORD}\n")
        done = pooltools.run_registrar(
            "users", "import", "--users-db", str(lay.users_db), str(rows), timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"users import: {done.stdout}{done.stderr}")

    def start_fe(self, fqdn: str, wait: bool = True, timeout: float = 30.0) -> None:
        fe = self.layout.fe(fqdn)
        proc = self.procs.get(fe.fqdn)
        if proc is not None and proc.running:
            raise RuntimeError(f"{fe.fqdn} is already running")
        command = [
            *pooltools.registrar_command(),
            "serve", "--topology", str(self.layout.path), "--fe", fe.fqdn,
            "--log-level", self.log_level,
        ]  # fmt: skip
        proc = pooltools._Proc(fe.fqdn, command, self.log_dir / f"{fe.name}.log")
        self.procs[fe.fqdn] = proc
        self.stopped.discard(fe.fqdn)
        proc.start()
        if wait:
            deadline = time.monotonic() + timeout
            while self.status(fe.fqdn) is None:
                if not proc.running:
                    raise RuntimeError(f"{fe.fqdn} exited:\n{proc.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{fe.fqdn} admin API not answering:\n{proc.log_tail()}")
                time.sleep(0.05)

    def fe_pids(self) -> dict[str, int]:
        """PID of every running FE, by FQDN."""
        return {fe.fqdn: self.pid(fe.fqdn) for fe in self.layout.fes if self.running(fe.fqdn)}


def start_bench_pool(
    root: Path,
    block: str,
    aors: Sequence[str],
    say: Say,
    *,
    log_level: str = "warning",
    attempts: int = 3,
    **topology: Any,
) -> BenchPool:
    """Write the topology, prepare and start the pool; fresh ports on a port clash."""
    for attempt in range(1, attempts + 1):
        layout = pooltools.write_topology(root / f"attempt{attempt}", block, **topology)
        pool = BenchPool(layout, aors, log_level)
        say(
            f"starting a pool on {block}.1-4 (DNS {layout.dns_text}), "
            f"{len(aors)} users in the directory"
        )
        try:
            started = time.monotonic()
            pool.prepare()
            pool.start()
            say(f"pool up and settled in {time.monotonic() - started:.1f}s")
            return pool
        except pooltools.PoolStartError as exc:
            pool.close()
            if "cannot listen" not in str(exc) or attempt == attempts:
                raise
            say("a port was taken meanwhile; again with fresh ports")
    raise AssertionError("unreachable")


def write_pool_injection(
    path: Path, users: Sequence[str], entries: Sequence[tuple[str, int]] = (), seed: int = 1
) -> Path:
    """``user;[authentication ...];domain;expires[;entry-ip;entry-port]`` (random entry FE)."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        fh.write("SEQUENTIAL\n")
        for user in users:
            line = f"{user};[authentication username={user} password={PASSWORD}];{DOMAIN};3600"
            if entries:
                ip, port = rng.choice(entries)
                line += f";{ip};{port}"
            fh.write(line + "\n")
    return path


def user_of(aor: str) -> str:
    return aor.split(":", 1)[1].split("@", 1)[0]


def wait_idle(pids: Sequence[int], say: Say, limit: float = 0.15, timeout: float = 30.0) -> float:
    """Wait until the processes together use less than ``limit`` of a CPU over 1 s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(cpu.sample_cpu(p).seconds for p in pids)
        time.sleep(1.0)
        used = sum(cpu.sample_cpu(p).seconds for p in pids) - before
        if used < limit:
            return time.monotonic() - started
    say(f"still busy after {timeout:g}s; going on")
    return time.monotonic() - started


# ------------------------------------------------------------------------------ part a


def part_failover(pool: BenchPool, users: int, workdir: Path, say: Say) -> dict[str, Any]:
    """Load client holds ``users``; SIGKILL the FE holding most; time until they are back."""
    lay = pool.layout
    result: dict[str, Any] = {"users": users}
    load = pooltools.LoadClient(lay, users=users, expires=3600)
    say(f"registering {users} users with 'registrar client load --hold -1' (TLS)")
    started = time.monotonic()
    load.start()
    try:
        registered, failed = load.wait_holding(timeout=max(120.0, users / 10))
        result["register_seconds"] = round(time.monotonic() - started, 2)
        result["registered"], result["register_failed"] = registered, failed
        say(f"{registered} registered, {failed} failed in {result['register_seconds']}s")
        counts = {fe.fqdn: (pool.status(fe.fqdn) or {}).get("aors", 0) for fe in lay.fes}
        result["per_fe"] = counts
        victim = max(counts, key=lambda k: counts[k])
        survivors = [fe.fqdn for fe in lay.fes if fe.fqdn != victim]
        dead_users = counts[victim]
        vid = lay.fe(victim).server_id
        result.update(victim=victim, victim_users=dead_users)
        say(f"per FE: {counts}; SIGKILL {victim} ({dead_users} users)")
        marks = {50: None, 90: None, 99: None, 100: None}
        seen_down: dict[str, float] = {}
        first_backup: float | None = None
        timeline: list[tuple[float, int]] = []
        t0 = time.monotonic()
        os.killpg(pool.pid(victim), signal.SIGKILL)
        kill_wall = time.time()
        deadline = t0 + 120.0
        last_print = t0
        backup = 0
        while time.monotonic() < deadline:
            now = time.monotonic() - t0
            backup = 0
            for name in survivors:
                st = pool.status(name, timeout=1.0) or {}
                backup += int(st.get("backup_mode") or 0)
                up = (st.get("pool") or {}).get("up")
                if up is not None and vid not in up and name not in seen_down:
                    seen_down[name] = now
            timeline.append((round(now, 3), backup))
            if backup and first_backup is None:
                first_backup = now
            for pct in marks:
                if marks[pct] is None and dead_users and backup * 100 >= pct * dead_users:
                    marks[pct] = now
            if marks[100] is not None:
                break
            if now - (last_print - t0) >= 2.0:
                say(f"t+{now:5.1f}s: {backup}/{dead_users} in backup mode")
                last_print = time.monotonic()
            time.sleep(0.05)
        pool.procs[victim].kill()  # reap it
        result.update(
            killed_at=kill_wall,
            detected_down={k: round(v, 3) for k, v in seen_down.items()},
            detected_by_all=round(max(seen_down.values()), 3)
            if len(seen_down) == len(survivors)
            else None,
            first_backup=round(first_backup, 3) if first_backup is not None else None,
            **{f"t{pct}": round(v, 3) if v is not None else None for pct, v in marks.items()},
            backup_at_end=backup,
            timeline=timeline[:: max(1, len(timeline) // 200)],
        )
        if marks[99] is None:
            result["error"] = (
                f"only {backup}/{dead_users} in backup mode after {deadline - t0:.0f}s"
            )
        say(
            f"down seen by all survivors after {result['detected_by_all']}s; backup mode: "
            f"99 % after {result['t99']}s, 100 % after {result['t100']}s"
        )
    except (TimeoutError, AssertionError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {result['error']}")
    finally:
        say("stopping the load client (its users unregister)")
        report = load.stop(timeout=120)
        if report:
            result["load_report"] = {
                k: report.get(k) for k in ("succeeded", "failed", "failures", "hold", "rate")
            }
    # Bring the pool back to four FEs for the next part.
    victim = result.get("victim")
    if victim and not pool.running(victim):
        say(f"restarting {victim}")
        pool.start_fe(victim)
        pool.wait_views(lay.ids, timeout=60, settled=True)
    return result


# ------------------------------------------------------------------------------ part b


def _cpu_run(
    pid: int,
    scenario: Path,
    remote: str,
    inf: Path,
    *,
    rate: float,
    duration: float,
    workdir: Path,
    tag: str,
    local_ip: str,
) -> dict[str, Any]:
    calls = max(1, round(rate * duration))
    before = cpu.sample_cpu(pid)
    run = run_sipp(
        scenario, remote, mode="t1", rate=rate, calls=calls, workdir=workdir, tag=tag,
        inf=inf, local_ip=local_ip, extra=["-timeout_error"],
    )  # fmt: skip
    after = cpu.sample_cpu(pid)
    used = after.seconds - before.seconds
    out: dict[str, Any] = {
        "requests": calls,
        "ok": run.ok,
        "failed": max(run.failed, calls - run.ok),
        "cpu_seconds": round(used, 4),
        "wall_seconds": round(run.wall_seconds, 3),
        "cpu_us_per_request": round(used / run.ok * 1e6, 2) if run.ok else None,
        "achieved_rate": round(run.ok / run.wall_seconds, 1) if run.wall_seconds else None,
    }
    if out["failed"]:
        out["error"] = f"{out['failed']} of {calls} failed: {run.errors.strip()[:300]}"
    return out


def part_redirect(
    pool: BenchPool, rate: float, duration: float, workdir: Path, say: Say, kamailio: bool
) -> dict[str, Any]:
    lay = pool.layout
    fe = lay.fes[0]
    pid = pool.pid(fe.fqdn)
    others = [a for a in pool.aors if lay.current(a).fqdn != fe.fqdn]
    own = [a for a in pool.aors if lay.current(a).fqdn == fe.fqdn]
    result: dict[str, Any] = {"fe": fe.fqdn, "rate": rate, "duration": duration, "rows": []}
    if not others or not own:
        result["error"] = "no AORs on one side (too few users)"
        return result
    redirect_inf = write_pool_injection(workdir / "redirect.csv", [user_of(a) for a in others])
    own_inf = write_pool_injection(workdir / "own.csv", [user_of(a) for a in own])
    local_ip = f"{fe.ip.rsplit('.', 1)[0]}.200"
    remote = f"{fe.ip}:{fe.tcp_port}"
    wait_idle(list(pool.fe_pids().values()), say)
    before = cpu.sample_cpu(pid)
    t0 = time.monotonic()
    time.sleep(duration)
    idle = (cpu.sample_cpu(pid).seconds - before.seconds) / (time.monotonic() - t0)
    result["idle_cpu_per_second"] = round(idle, 5)
    say(f"{fe.fqdn} idle: {idle * 1000:.1f} ms CPU per second (heartbeats)")
    for what, scenario, inf, count in (
        ("301 redirect", SCENARIO_REDIRECT, redirect_inf, len(others)),
        ("401 challenge", SCENARIO_CHALLENGE, own_inf, len(own)),
    ):
        say(f"ours: {what}: {rate:g}/s for {duration:g}s over TCP to {remote} ({count} AORs)")
        row = _cpu_run(
            pid, scenario, remote, inf, rate=rate, duration=duration, workdir=workdir,
            tag=f"ours-{what.split()[0]}", local_ip=local_ip,
        )  # fmt: skip
        row.update(target="ours", kind=what)
        if row["ok"]:
            row["cpu_us_idle_subtracted"] = round(
                (row["cpu_seconds"] - idle * row["wall_seconds"]) / row["ok"] * 1e6, 2
            )
        result["rows"].append(row)
        say(f"ours: {what}: ok={row['ok']} failed={row['failed']} {row['cpu_us_per_request']} µs")
    if kamailio:
        for what, scenario, inf, defines in (
            ("301 redirect", SCENARIO_REDIRECT, redirect_inf, ["-A", "BENCH_REDIRECT"]),
            ("401 challenge", SCENARIO_CHALLENGE, own_inf, []),
        ):
            rundir = Path(tempfile.mkdtemp(prefix="bench-pool-kamailio-"))
            host = "127.0.0.1"
            port = cpu.free_port(host)
            argv = [
                a.format(host=host, port=port, rundir=rundir, repo=REPO)
                for a in cpu.kamailio_command(cpu.KAMAILIO_DIR / "registrar_auth.cfg", 64)
            ] + defines
            server = Server("kamailio", argv, rundir)
            row = {"target": "kamailio", "kind": what}
            with cpu.serving(server, row, say, "kamailio FAILED"):
                server.start(host, port, say)
                say(f"kamailio: {what}: {rate:g}/s for {duration:g}s over TCP")
                row.update(
                    _cpu_run(
                        server.pid,
                        scenario,
                        f"{host}:{port}",
                        inf,
                        rate=rate,
                        duration=duration,
                        workdir=rundir,
                        tag="kam",
                        local_ip=host,
                    )
                )
                say(
                    f"kamailio: {what}: ok={row['ok']} failed={row['failed']} "
                    f"{row['cpu_us_per_request']} µs"
                )
            result["rows"].append(row)
    return result


# ------------------------------------------------------------------------------ part c


def _elapsed(text: str) -> float | None:
    """sipp's ``ElapsedTime(C)`` (``HH:MM:SS:uuuuuu`` or ``HH:MM:SS``) in seconds."""
    parts = text.strip().split(":")
    try:
        h, m, s = int(parts[0]), int(parts[1]), float(parts[2])
        frac = float("0." + parts[3]) if len(parts) > 3 else 0.0
    except (ValueError, IndexError):
        return None
    return h * 3600 + m * 60 + s + frac


def _steady_rate(rows: Sequence[dict[str, str]], lo: float, hi: float) -> float | None:
    """Completed calls per second between sipp elapsed times ``lo`` and ``hi`` (stat rows)."""
    points = [
        (t, int(r.get("SuccessfulCall(C)") or 0))
        for r in rows
        if (t := _elapsed(r.get("ElapsedTime(C)", ""))) is not None
    ]
    window = [(t, n) for t, n in points if lo <= t <= hi]
    if len(window) >= 2 and window[-1][0] > window[0][0]:
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
    return None


def part_throughput(
    pool: BenchPool,
    rates: Sequence[float],
    duration: float,
    workdir: Path,
    say: Say,
    instances: int = 4,
) -> dict[str, Any]:
    """Offer each rate with ``instances`` sipp processes in parallel (``rate / instances``
    each, a distinct slice of users and a local address of its own: sipp binds every
    connection to its ``-i`` address before connecting, and a few thousand connections a
    second leave enough sockets in TIME_WAIT on one address to exhaust its ephemeral ports
    -- sipp then spins in ``bind()``)."""
    lay = pool.layout
    entries = [(fe.ip, fe.tcp_port) for fe in lay.fes]
    pids = list(pool.fe_pids().values())
    result: dict[str, Any] = {"duration": duration, "instances": instances, "rows": []}
    block = lay.fes[0].ip.rsplit(".", 1)[0]
    for step, rate in enumerate(rates, 1):
        calls = max(1, round(rate * duration))
        users = [user_of(a) for a in pool.aors[:calls]]
        if len(users) < calls:
            say(f"only {len(users)} users for {calls} calls: sipp reuses them")
        slices = [users[k::instances] for k in range(instances)]
        infs = [
            write_pool_injection(
                workdir / f"pool-{step}-{k}.csv", part, entries, seed=step * 10 + k
            )
            for k, part in enumerate(slices)
        ]
        wait_idle(pids, say)
        say(
            f"offered {rate:g} registrations/s for {duration:g}s ({calls} users, random FE, "
            f"{instances} sipp)"
        )
        before = {p: cpu.sample_cpu(p).seconds for p in pids}
        machine0 = machine_jiffies()
        t0 = time.monotonic()
        row: dict[str, Any] = {"offered": rate, "calls": calls}

        def one(
            k: int,
            _step: int = step,
            _rate: float = rate,
            _slices: list[list[str]] = slices,
            _infs: list[Path] = infs,
        ) -> Any:
            n = len(_slices[k])
            return run_sipp(
                SCENARIO_POOL, f"{lay.fes[0].ip}:{lay.fes[0].tcp_port}", mode="tn",
                rate=_rate / instances, calls=n, workdir=workdir, tag=f"pool-{_step}-{k}",
                inf=_infs[k], local_ip=f"{block}.{100 + (_step * instances + k) % 150}",
                limit=max(int(_rate / instances * 10), 100), timeout=duration + 25,
                recv_timeout_ms=10000, stat_period=1,
            )  # fmt: skip

        try:
            with ThreadPoolExecutor(instances) as ex:
                runs = list(ex.map(one, range(instances)))
        except cpu.BenchError as exc:
            row["error"] = str(exc)
            result["rows"].append(row)
            say(f"FAILED: {exc}")
            continue
        wall = time.monotonic() - t0
        machine = busy_cpus(machine0, machine_jiffies())
        fe_cpu = sum(cpu.sample_cpu(p).seconds - before[p] for p in pids)
        rates_k = [_steady_rate(r.rows, 2.0, duration + 0.5) for r in runs]
        steady = sum(rates_k) if all(x is not None for x in rates_k) else None  # type: ignore[misc]
        ok = sum(r.ok for r in runs)
        failed = sum(r.failed for r in runs)
        sipp_cpu = sum(r.cpu_seconds for r in runs)
        row.update(
            ok=ok,
            failed=failed,
            unfinished=max(0, calls - ok - failed),
            completed_per_second=round(steady, 1) if steady is not None else None,
            overall_per_second=round(ok / wall, 1) if wall else None,
            fe_cpu_seconds=round(fe_cpu, 2),
            fe_cpu_cores=round(fe_cpu / wall, 2) if wall else None,
            sipp_cpu_seconds=round(sipp_cpu, 2),
            machine_cpus=round(machine, 2),
            other_cpus=round(max(0.0, machine - (fe_cpu + sipp_cpu) / wall), 2) if wall else None,
            wall_seconds=round(wall, 2),
            counters=[r.counters for r in runs],
        )
        reasons = "; ".join(r.errors.strip()[:200] for r in runs if r.failed and r.errors.strip())
        if reasons:
            row["failure_reasons"] = reasons[:600]
        result["rows"].append(row)
        say(
            f"offered {rate:g}/s: completed {row['completed_per_second']}/s in the window, "
            f"ok={ok} failed={failed}; FEs used {row['fe_cpu_cores']} CPUs, sipp "
            f"{sipp_cpu / wall:.2f} CPUs"
        )
    done = [r["completed_per_second"] for r in result["rows"] if r.get("completed_per_second")]
    result["capacity"] = max(done) if done else None
    return result


# ------------------------------------------------------------------------------ output


def format_failover(a: dict[str, Any]) -> str:
    lines = [
        f"(a) failover: {a.get('registered')} users held by 'registrar client load'; "
        f"SIGKILL {a.get('victim')} holding {a.get('victim_users')} of them"
    ]
    rows = [
        ["every survivor sees it down", fmt(a.get("detected_by_all"), ".2f")],
        ["first user in backup mode", fmt(a.get("first_backup"), ".2f")],
        ["50 % in backup mode", fmt(a.get("t50"), ".2f")],
        ["90 % in backup mode", fmt(a.get("t90"), ".2f")],
        ["99 % in backup mode", fmt(a.get("t99"), ".2f")],
        ["100 % in backup mode", fmt(a.get("t100"), ".2f")],
    ]
    lines.append(table(["after SIGKILL", "seconds"], rows, left=1))
    lines.append("  Kamailio: no equivalent (not a pool)")
    return "\n".join(lines)


def format_redirect(b: dict[str, Any]) -> str:
    lines = [
        f"(b) cost of a redirect on {b.get('fe')}: {b.get('rate'):g} REGISTER/s for "
        f"{b.get('duration'):g}s over one TCP connection; idle CPU "
        f"{b.get('idle_cpu_per_second', 0) * 1000:.1f} ms/s"
    ]
    rows = []
    base = {r["kind"]: r.get("cpu_us_per_request") for r in b["rows"] if r["target"] == "kamailio"}
    for r in b["rows"]:
        us = r.get("cpu_us_per_request")
        k = base.get(r["kind"])
        rows.append(
            [
                r["target"],
                r["kind"],
                fmt(r.get("ok")),
                fmt(r.get("failed")),
                fmt(us, ".1f"),
                fmt(r.get("cpu_us_idle_subtracted"), ".1f"),
                f"{us / k:.2f}x" if r["target"] == "ours" and us and k else "-",
            ]
        )
    lines.append(
        table(
            ["target", "answer", "ok", "failed", "µs/request", "minus idle", "ours/kamailio"],
            rows,
            left=2,
        )
    )
    ours = {r["kind"]: r.get("cpu_us_idle_subtracted") for r in b["rows"] if r["target"] == "ours"}
    if ours.get("301 redirect") and ours.get("401 challenge"):
        lines.append(
            f"  a redirect costs {ours['301 redirect'] / ours['401 challenge']:.2f}x a "
            "401 challenge on the same FE"
        )
    return "\n".join(lines)


def format_throughput(c: dict[str, Any]) -> str:
    lines = [
        f"(c) aggregate REGISTER/s of the 4-FE pool (sipp, TCP, random entry FE, 301 followed, "
        f"digest MD5), {c['duration']:g}s per offered rate, {os.cpu_count()} CPUs for everything"
    ]
    rows = []
    for r in c["rows"]:
        rows.append(
            [
                f"{r['offered']:g}",
                fmt(r.get("completed_per_second"), ".1f"),
                fmt(r.get("ok")),
                fmt(r.get("failed")),
                fmt(r.get("unfinished")),
                fmt(r.get("fe_cpu_cores"), ".2f"),
                fmt(r.get("sipp_cpu_seconds"), ".1f"),
                fmt(r.get("other_cpus"), ".2f"),
            ]
        )
    lines.append(
        table(
            [
                "offered/s",
                "completed/s",
                "ok",
                "failed",
                "unfinished",
                "FE CPUs",
                "sipp CPU s",
                "other CPUs",
            ],
            rows,
            left=0,
        )
    )
    lines.append(f"  capacity (highest completed/s): {fmt(c.get('capacity'), '.1f')}")
    lines.append("  Kamailio: no equivalent (not a pool); see bench/register.py for one server")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Pool benchmarks: failover time, redirect cost, aggregate REGISTER/s "
        "(see bench/README.md).",
    )
    parser.add_argument("--parts", default="b,a,c", help="which parts, in order b,a,c (all)")
    parser.add_argument("--users", type=int, default=2000, help="users held in part a (2000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load (10)")
    parser.add_argument(
        "--redirect-rate", type=float, default=1000, help="REGISTER/s in part b (1000)"
    )
    parser.add_argument(
        "--rates", default="200,400,800,1600", help="offered registrations/s in part c"
    )
    parser.add_argument(
        "--sipp", type=int, default=4, help="sipp processes in parallel in part c (4)"
    )
    parser.add_argument("--block", default="127.0.50", help="loopback /24 prefix (127.0.50)")
    parser.add_argument("--no-kamailio", action="store_true", help="part b without Kamailio")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p not in ("a", "b", "c"):
            parser.error(f"unknown part {p!r}")
    order = [p for p in ("b", "a", "c") if p in parts]
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    nofile = raise_nofile()
    say = say_stderr("pool")
    say(f"{os.cpu_count()} CPUs; open files limit {nofile}")
    background = check_quiet(say)

    thr_users = int(max(rates, default=0) * args.duration) if "c" in parts else 0
    count = max(args.users, thr_users, 2000)
    aors = [pooltools.aor_of(n) for n in range(1, count + 1)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    out: dict[str, Any] = {"cpus": os.cpu_count(), "background_cpus": round(background, 2)}
    pool: BenchPool | None = None
    try:
        pool = start_bench_pool(workdir / "pool", args.block, aors, say)
        for part in order:
            if part == "b":
                out["redirect"] = part_redirect(
                    pool,
                    args.redirect_rate,
                    args.duration,
                    workdir,
                    say_stderr("pool b"),
                    not args.no_kamailio,
                )
            elif part == "a":
                out["failover"] = part_failover(pool, args.users, workdir, say_stderr("pool a"))
            else:
                out["throughput"] = part_throughput(
                    pool, rates, args.duration, workdir, say_stderr("pool c"), args.sipp
                )
    except (RuntimeError, TimeoutError, AssertionError, OSError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {out['error']}")
        if pool is not None:
            say(pool.log_tails(10))
    finally:
        if pool is not None:
            say("stopping the pool")
            pool.close()
        if args.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print()
        if "redirect" in out:
            print(format_redirect(out["redirect"]))
            print(errors_block(out["redirect"]["rows"], lambda r: f"b/{r['target']}/{r['kind']}"))
        if "failover" in out:
            print(format_failover(out["failover"]))
            print(errors_block([out["failover"]], lambda r: "a"))
        if "throughput" in out:
            print(format_throughput(out["throughput"]))
        if "error" in out:
            print(f"\nerror: {out['error']}")
    failed = "error" in out or any(
        isinstance(v, dict) and (v.get("error") or any(r.get("error") for r in v.get("rows", [])))
        for v in out.values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
