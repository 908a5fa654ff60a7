"""``registrar pool up``: a local pool on one machine, the project's main job.

It makes what is missing (certificates for every FE, a demo user directory), starts the
embedded DNS server and every FE as its own OS process (``registrar serve --topology FILE --fe
FQDN``), prints where everything listens and how to point clients at it, supervises them, and
stops them all on Ctrl-C or SIGTERM. A failed FE is *not* restarted unless
``--restart-failed`` is given, so failures can be observed; any FE can be started again by hand
with the ``registrar serve`` command it prints.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PoolSupervisor", "ensure_certs", "ensure_demo_users", "fe_command"]

DEMO_PASSWORD = "demo"


def fe_command(topology_path: Path, fqdn: str, extra: list[str] | None = None) -> list[str]:
    """The command line that runs FE ``fqdn`` of the topology."""
    return [
        sys.executable,
        "-m",
        "registrar",
        "serve",
        "--topology",
        str(topology_path),
        "--fe",
        fqdn,
        *(extra or []),
    ]


def ensure_certs(topology: Any) -> list[Path]:
    """Make the CA and one certificate per FE (CN = FE FQDN; SAN = FE FQDN, pool FQDN, FE IP)
    in the topology's certs directory when missing; returns the files written."""
    from ..certs import init_certs

    names = [(fe.fqdn, [pool.fqdn], [fe.ip]) for pool in topology.pools for fe in pool.front_ends]
    return init_certs(topology.paths.certs, names)


def ensure_demo_users(topology: Any, count: int = 2000, password: str = DEMO_PASSWORD) -> int:
    """Create ``sip:user0001@<domain>`` ... for the first domain of the first pool when the
    user directory does not exist yet; returns how many users were created (0 if it existed)."""
    from ..users import UserStore

    path: Path = topology.paths.users_db
    if path.exists():
        return 0
    domain = topology.pools[0].domains[0]
    rows = io.StringIO()
    rows.write("aor,password\n")
    for i in range(1, count + 1):
        rows.write(f"sip:user{i:04d}@{domain},{password}\n")
    rows.seek(0)
    store = UserStore(path)
    try:
        return store.import_csv(rows)
    finally:
        store.close()


@dataclass
class _Child:
    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    exited: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PoolSupervisor:
    """Starts and watches the DNS server and the FEs of a topology.

    Args:
        topology: the loaded topology; topology_path: its file.
        log_dir: where each child's output goes (``<name>.log``).
        restart_failed: restart an FE that exits (after 1 s), instead of only reporting it.
        out: where progress lines go.
    """

    def __init__(
        self,
        topology: Any,
        topology_path: Path,
        log_dir: Path,
        *,
        restart_failed: bool = False,
        out: Any = sys.stdout,
    ) -> None:
        self.topology = topology
        self.path = topology_path.resolve()
        self.log_dir = log_dir
        self.restart_failed = restart_failed
        self.out = out
        self.children: list[_Child] = []
        self._stop = False

    def say(self, text: str) -> None:
        """Print one progress line."""
        print(text, file=self.out, flush=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop = True

    def start(self) -> None:
        """Start the DNS server and every FE. SIGINT/SIGTERM are caught from here on (not only
        in :meth:`supervise`), so a signal during start-up still stops every child."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        dns_cmd = [sys.executable, "-m", "registrar", "dns", "serve", "--topology", str(self.path)]
        self.children.append(_Child("dns", dns_cmd, self.log_dir / "dns.log"))
        for pool in self.topology.pools:
            for fe in pool.front_ends:
                child = _Child(
                    fe.fqdn, fe_command(self.path, fe.fqdn), self.log_dir / f"{fe.fqdn}.log"
                )
                child.extra = {"fe": fe, "pool": pool}
                self.children.append(child)
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        log = open(child.log_path, "ab")  # noqa: SIM115 - owned by the child process
        child.process = subprocess.Popen(
            child.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        child.exited = None
        self.say(f"started {child.name} (pid {child.process.pid}), log {child.log_path}")

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait until every FE's admin API answers (deadline ``timeout`` seconds); gives up
        early (``False``) when SIGINT/SIGTERM asked the pool to stop."""
        deadline = time.monotonic() + timeout
        pending = [c for c in self.children if "fe" in c.extra]
        while pending and time.monotonic() < deadline and not self._stop:
            for child in list(pending):
                fe = child.extra["fe"]
                if child.process is not None and child.process.poll() is not None:
                    self.say(
                        f"{child.name} exited with {child.process.returncode}; see {child.log_path}"
                    )
                    pending.remove(child)
                    continue
                try:
                    with urllib.request.urlopen(
                        f"http://{fe.ip}:{fe.admin_port}/status", timeout=0.5
                    ):
                        pending.remove(child)
                except OSError:
                    pass
            if pending:
                time.sleep(0.1)
        return not pending

    def describe(self) -> str:
        """Where everything listens and how to point clients at it."""
        t = self.topology
        dns_host, dns_port = t.dns_listen
        lines = [f"DNS server: {dns_host}:{dns_port} (UDP and TCP)"]
        for pool in t.pools:
            lines.append(f"pool {pool.fqdn}: domains {', '.join(pool.domains)}")
            for fe in pool.front_ends:
                listens = [f"tls {fe.ip}:{fe.tls_port}"]
                if fe.tcp_port:
                    listens.append(f"tcp {fe.ip}:{fe.tcp_port}")
                if fe.udp_port:
                    listens.append(f"udp {fe.ip}:{fe.udp_port}")
                lines.append(
                    f"  {fe.fqdn} id {fe.server_id}: {', '.join(listens)}; "
                    f"admin http://{fe.ip}:{fe.admin_port}/status"
                )
        pool = t.pools[0]
        domain = pool.domains[0]
        fe = pool.front_ends[0]
        ca = t.paths.certs / "ca.crt"
        lines += [
            "",
            f"Users: sip:user0001@{domain} ... password '{DEMO_PASSWORD}' (demo directory "
            f"{t.paths.users_db}).",
            "Point a client at it:",
            f"  registrar client register sip:user0001@{domain} --password {DEMO_PASSWORD} "
            f"--dns {dns_host}:{dns_port} --ca {ca}",
            f"  registrar client load --users 2000 --password {DEMO_PASSWORD} --dns "
            f"{dns_host}:{dns_port} --ca {ca}",
            f"  registrar user-pool-info sip:user0001@{domain} --topology {self.path}",
            f"  registrar status --topology {self.path}",
        ]
        if fe.tcp_port:
            lines.append(
                f"  sipp -sf tests/sipp/pool_register.xml -inf users.csv -t tn "
                f"{fe.ip}:{fe.tcp_port}   (see tests/sipp/pool_register.xml)"
            )
        lines.append("Restart a stopped FE by hand with:")
        lines.append("  " + " ".join(fe_command(self.path, fe.fqdn)))
        lines.append("Ctrl-C stops the pool.")
        return "\n".join(lines)

    def supervise(self) -> int:
        """Watch the children until stopped (SIGINT/SIGTERM); returns the exit code."""

        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        while not self._stop:
            for child in self.children:
                proc = child.process
                if proc is None or child.exited is not None:
                    continue
                code = proc.poll()
                if code is None:
                    continue
                child.exited = code
                self.say(f"{child.name} exited with {code} (log {child.log_path})")
                if self.restart_failed and not self._stop:
                    child.restarts += 1
                    time.sleep(1.0)
                    self._spawn(child)
                elif "fe" in child.extra:
                    self.say("  restart it with: " + " ".join(child.command))
            time.sleep(0.2)
        self.stop_all()
        return 0

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child, then SIGKILL what is left after ``timeout`` seconds."""
        self.say("stopping the pool ...")
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            proc = child.process
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self.say(f"{child.name} stopped ({proc.returncode})")

    def status_json(self) -> str:
        """The children as JSON (name, pid, running)."""
        return json.dumps(
            [
                {
                    "name": c.name,
                    "pid": c.process.pid if c.process else None,
                    "running": c.process is not None and c.process.poll() is None,
                }
                for c in self.children
            ]
        )
