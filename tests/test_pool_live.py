"""A whole pool on loopback: DNS-load-balanced registration, failover, the quorum guard, 301
details and ``registrar pool up`` (DESIGN.md §4, docs/pool.md).

The pool is ``examples/contoso.toml`` (fe1..fe4, server IDs 8, 9, 4, 2, ``max_servers`` 10)
copied into a temporary directory with its own loopback block — ``127.0.42.1``-``.4``, DNS on
``127.0.42.53`` — and ports free on all four addresses, so it never clashes with a dev pool
(``127.0.1.x``) or other test modules. ``registrar pool up`` gets ``127.0.43.x``. Heartbeats keep
the defaults (interval 1 s, timeout 3 s): on a loaded 2-core machine a shorter timeout risks
false "down" verdicts while 2,000 users register, and the failover bound we check is the
protocol's own (``timeout + interval``), whatever the values.

Every wait is a condition polled with a deadline (DESIGN.md §9); the only time assertion is the
failover detection bound of DESIGN.md §4 (``heartbeat_timeout + heartbeat_interval``) plus a
scheduling allowance (:data:`DETECTION_ALLOWANCE`).

Fixtures (module scope, to pay for the pool once): ``pool`` (DNS + four FEs this module starts
and owns, :class:`pooltools.LivePool`) and ``registered`` (users 1-1,000 through the pool client
over TLS via DNS, held by ``registrar client load --hold -1``; users 1,001-2,000 through sipp
over TCP, each sent to a random FE).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pooltools import (
    FeInfo,
    LivePool,
    LoadClient,
    PoolLayout,
    aor_of,
    parse_contact,
    run_pool_sipp,
    run_registrar,
    sip_register,
    start_pool,
    write_topology,
)
from procs import registrar_command, require_command, wait_until

pytestmark = pytest.mark.network

BLOCK = "127.0.42"
POOL_UP_BLOCK = "127.0.43"
USERS = 2000
CLIENT_USERS = 1000  # user0001..user1000 via the pool client; the rest via sipp
DETECTION_ALLOWANCE = 1.0
"""Seconds of scheduling allowance on top of ``heartbeat_timeout + heartbeat_interval`` for the
survivors to mark a killed FE down (the brief's 1 s; see the module docstring)."""
VICTIM = "fe2"  # the FE test 2 kills


def _seed() -> int:
    text = os.environ.get("POOL_TEST_SEED")
    return int(text) if text else random.randrange(2**32)


SEED = _seed()


def wait_for(predicate: Callable[[], Any], timeout: float, what: Callable[[], str] | str) -> Any:
    """Poll ``predicate`` until truthy (returned) or ``timeout`` seconds (AssertionError)."""
    return wait_until(predicate, timeout, 0.1, what, AssertionError)


def ensure_all_up(pool: LivePool) -> None:
    """Restart FEs that are not running, SIGCONT stopped ones, and wait until every FE sees
    every FE up and has settled (an earlier test may have failed half-way)."""
    for fe in pool.layout.fes:
        if not pool.running(fe.fqdn):
            pool.start_fe(fe.fqdn)
        elif fe.fqdn in pool.stopped:
            pool.resume_fe(fe.fqdn)
    pool.wait_views(pool.layout.ids, timeout=30, settled=True)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePool]:
    live = start_pool(tmp_path_factory.mktemp("pool-live"), BLOCK, users=USERS)
    layout = live.layout
    try:
        yield live
    finally:
        running = {fe.fqdn for fe in layout.fes if live.running(fe.fqdn)}
        codes = live.close()
    bad = {name: code for name, code in codes.items() if name in running and code != 0}
    assert not bad, f"FEs did not exit cleanly: {bad}\n{live.log_tails()}"


@dataclass
class Registered:
    """What the ``registered`` fixture did."""

    load: LoadClient
    client_aors: list[str]
    sipp_aors: list[str]
    client_counts: tuple[int, int]  # (registered, failed) by the pool client
    sipp_sent_to: dict[str, list[str]]  # FE FQDN → AORs sipp sent there first
    sipp_results: dict[str, Any]

    @property
    def aors(self) -> list[str]:
        return self.client_aors + self.sipp_aors


@pytest.fixture(scope="module")
def registered(pool: LivePool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """2,000 users registered through random FEs: 1,000 by the pool client (TLS, DNS SRV → A →
    random FE → 301 → digest), kept registered; 1,000 by sipp (TCP, each to a random FE)."""
    require_command("sipp")
    layout = pool.layout
    workdir = tmp_path_factory.mktemp("registrations")
    client_aors = [aor_of(n) for n in range(1, CLIENT_USERS + 1)]
    sipp_aors = [aor_of(n) for n in range(CLIENT_USERS + 1, USERS + 1)]
    rng = random.Random(SEED)
    sent_to: dict[str, list[str]] = {fe.fqdn: [] for fe in layout.fes}
    for aor in sipp_aors:
        sent_to[rng.choice(layout.fes).fqdn].append(aor)

    load = LoadClient(layout, users=CLIENT_USERS, first=1, expires=3600)
    load.start()
    try:
        with ThreadPoolExecutor(len(layout.fes)) as executor:
            futures = {
                fqdn: executor.submit(
                    run_pool_sipp, layout.fe(fqdn), aors, workdir, expires=3600, rate=50
                )
                for fqdn, aors in sent_to.items()
                if aors
            }
            sipp_results = {fqdn: future.result() for fqdn, future in futures.items()}
        counts = load.wait_holding(timeout=180)
        yield Registered(load, client_aors, sipp_aors, counts, sent_to, sipp_results)
    finally:
        load.stop()


# --------------------------------------------------------------------------------- tests


def test_2000_users_land_on_their_primary_registrars(
    pool: LivePool, registered: Registered
) -> None:
    layout = pool.layout
    context = f"(seed {SEED})"
    assert registered.client_counts == (CLIENT_USERS, 0), (
        f"pool client: {registered.client_counts}\n{registered.load.tail()}"
    )
    for fqdn, result in registered.sipp_results.items():
        sent = len(registered.sipp_sent_to[fqdn])
        assert (result.ok, result.failed) == (sent, 0), f"sipp via {fqdn}: {result.describe()}"

    # Every AOR has bindings on the FE logical_sequence predicts, and none is in backup mode.
    predicted = {aor: layout.primary(aor).fqdn for aor in registered.aors}
    rows = pool.bindings_many((fqdn, aor) for aor, fqdn in predicted.items())
    missing = [aor for aor, fqdn in predicted.items() if not rows[(fqdn, aor)]]
    assert not missing, f"{len(missing)} AORs not on their primary, e.g. {missing[:5]} {context}"
    backup = [aor for aor, fqdn in predicted.items() if any(b["backup"] for b in rows[(fqdn, aor)])]
    assert not backup, f"backup-mode bindings with every FE up: {backup[:5]}"
    one_each = [aor for aor, fqdn in predicted.items() if len(rows[(fqdn, aor)]) != 1]
    assert not one_each, f"AORs with other than one binding: {one_each[:5]}"

    # ... and nowhere else: the FEs' AOR counts add up to exactly 2,000.
    status = {fe.fqdn: pool.status(fe.fqdn) for fe in layout.fes}
    aors_per_fe = {fqdn: s["aors"] for fqdn, s in status.items() if s}
    assert sum(aors_per_fe.values()) == USERS, f"AORs per FE {aors_per_fe} {context}"
    assert aors_per_fe == dict(Counter(predicted.values())), aors_per_fe
    for fqdn, count in aors_per_fe.items():
        assert 0.20 * USERS <= count <= 0.30 * USERS, f"{fqdn} holds {count} of {USERS}"
        assert status[fqdn]["backup_mode"] == 0

    # user-pool-info (the CLI) agrees, for one AOR per FE (a CLI process each: slow-ish).
    sample = [next(aor for aor, fqdn in predicted.items() if fqdn == fe.fqdn) for fe in layout.fes]

    def info(aor: str) -> dict[str, Any]:
        done = run_registrar("user-pool-info", aor, "--topology", str(layout.path), "--json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert isinstance(data, dict)
        return data

    with ThreadPoolExecutor(4) as executor:
        infos = dict(zip(sample, executor.map(info, sample), strict=True))
    for aor, data in infos.items():
        sequence = list(layout.sequence(aor))
        assert data["logical_sequence"] == sequence, (aor, data)
        assert data["primary"] == predicted[aor] and data["current"] == predicted[aor], data
        assert data["primary_id"] == layout.fe(predicted[aor]).server_id
        assert data["registered"] is True and data["backup_mode"] is False, data


def test_killed_fe_users_fail_over_to_backup_registrars(
    pool: LivePool, registered: Registered, tmp_path: Path
) -> None:
    layout = pool.layout
    victim = layout.fe(VICTIM)
    survivors = [fe for fe in layout.fes if fe != victim]
    survivor_ids = {fe.server_id for fe in survivors}
    ensure_all_up(pool)

    victim_aors = [aor for aor in registered.aors if layout.primary(aor) == victim]
    kept = {aor: layout.primary(aor).fqdn for aor in registered.aors if aor not in victim_aors}
    # Their own FE holds each victim user now (test 1 checked all of them).
    before_victim = pool.bindings_many((victim.fqdn, aor) for aor in victim_aors)
    assert all(before_victim.values()), "victim's users are not registered on it"
    before = pool.bindings_many((fqdn, aor) for aor, fqdn in kept.items())

    # SIGKILL: the survivors must mark it down within heartbeat_timeout + interval.
    bound = layout.heartbeat_timeout + layout.heartbeat_interval
    killed = time.monotonic()  # before the kill: the measured time can only be longer
    pool.kill_fe(victim.fqdn)
    detected: dict[str, float] = {}

    def all_detected() -> bool:
        for fe in survivors:
            if fe.fqdn not in detected:
                view = pool.view(fe.fqdn)
                if view is not None and victim.server_id not in view:
                    detected[fe.fqdn] = time.monotonic() - killed
        return len(detected) == len(survivors)

    wait_for(
        all_detected,
        bound + DETECTION_ALLOWANCE + 10,
        lambda: f"survivors never marked {victim.fqdn} down: {detected}",
    )
    slowest = max(detected.values())
    print(f"{victim.fqdn} SIGKILLed; marked down after (s): {detected}")
    assert slowest <= bound + DETECTION_ALLOWANCE, (
        f"{victim.fqdn} marked down after {detected} (bound {bound} s + "
        f"{DETECTION_ALLOWANCE} s allowance)"
    )
    for fe in survivors:
        assert pool.view(fe.fqdn) == survivor_ids

    # `registrar status --json` shows the same.
    done = run_registrar("status", "--topology", str(layout.path), "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["fqdn"]: row for row in json.loads(done.stdout)["front_ends"]}
    assert rows[victim.fqdn]["state"] == "down" and rows[victim.fqdn]["seen_up_by"] == 0
    for fe in survivors:
        assert rows[fe.fqdn]["state"] == "up" and rows[fe.fqdn]["quorum"] is True
        assert sorted(rows[fe.fqdn]["up"]) == sorted(survivor_ids)

    # The victim's pool-client users re-register by themselves (their flows dropped); its
    # sipp users register again, each through a random survivor.
    rng = random.Random(SEED + 1)
    sipp_victims = [aor for aor in victim_aors if aor in set(registered.sipp_aors)]
    groups: dict[str, list[str]] = {fe.fqdn: [] for fe in survivors}
    for aor in sipp_victims:
        groups[rng.choice(survivors).fqdn].append(aor)
    with ThreadPoolExecutor(len(groups)) as executor:
        runs = {
            fqdn: executor.submit(run_pool_sipp, layout.fe(fqdn), aors, tmp_path, rate=50)
            for fqdn, aors in groups.items()
            if aors
        }
        for fqdn, run in runs.items():
            result = run.result()
            assert (result.ok, result.failed) == (len(groups[fqdn]), 0), result.describe()

    # Every victim user ends on the first live ID of its sequence, in backup mode.
    target = {aor: layout.current(aor, survivor_ids).fqdn for aor in victim_aors}
    pending = set(victim_aors)
    found: dict[str, list[dict[str, Any]]] = {}

    def all_moved() -> bool:
        rows = pool.bindings_many((target[aor], aor) for aor in sorted(pending))
        for (_, aor), bindings in rows.items():
            if bindings:
                found[aor] = bindings
                pending.discard(aor)
        return not pending

    wait_for(
        all_moved,
        90,
        lambda: (
            f"{len(pending)} users never re-registered on their backup, e.g. "
            f"{sorted(pending)[:5]}\n{registered.load.tail()}"
        ),
    )
    print(f"{len(victim_aors)} users failed over within {time.monotonic() - killed:.1f}s")
    for aor, bindings in found.items():
        assert all(b["backup"] for b in bindings), (aor, bindings)
        assert all(b["expires"] <= layout.backup_max_expires for b in bindings), bindings
    split = Counter(target.values())
    even = len(victim_aors) / len(survivors)
    for count in split.values():
        assert 0.8 * even <= count <= 1.2 * even, f"uneven failover split {dict(split)}"
    assert set(split) == {fe.fqdn for fe in survivors}

    # Nobody is registered twice: the survivors hold exactly the 2,000 users.
    counts = {fe.fqdn: pool.status(fe.fqdn)["aors"] for fe in survivors}  # type: ignore[index]
    assert sum(counts.values()) == USERS, counts
    backup_counts = {fe.fqdn: pool.status(fe.fqdn)["backup_mode"] for fe in survivors}  # type: ignore[index]
    assert backup_counts == dict(split), backup_counts

    # The 200 OK says backup mode (X-Registrar-Mode), here to a REGISTER query (no Contact),
    # for one user per survivor; user-pool-info agrees.
    for fqdn in split:
        aor = next(a for a, t in target.items() if t == fqdn)
        outcome = sip_register(layout.fe(fqdn), aor, contact=False, expires=None)
        assert outcome.status == 200, outcome.final
        assert outcome.header("X-Registrar-Mode") == f'backup;primary="{victim.fqdn}"'
    aor = victim_aors[0]
    done = run_registrar("user-pool-info", aor, "--topology", str(layout.path), "--json")
    data = json.loads(done.stdout)
    assert data["primary"] == victim.fqdn and data["current"] == target[aor], data
    assert data["backup_mode"] is True, data

    # The survivors' own users were never disturbed.
    after = pool.bindings_many((fqdn, aor) for aor, fqdn in kept.items())
    changed = [key[1] for key, rows in before.items() if _identity(rows) != _identity(after[key])]
    assert not changed, f"{len(changed)} survivors' users disturbed, e.g. {changed[:5]}"

    # The pool client saw exactly the victim's users lose their flow, and none failed.
    client_victims = [aor for aor in victim_aors if aor in set(registered.client_aors)]
    report = registered.load.stop()
    assert report is not None, registered.load.tail()
    assert report["failures"] == {}, report["failures"]
    assert report["hold"]["flow_losses"] == len(client_victims), report["hold"]
    assert report["hold"]["reregistrations"] == len(client_victims), report["hold"]
    assert report["unregistered"] == CLIENT_USERS, report

    # Leave the pool whole for the next tests.
    pool.start_fe(victim.fqdn)
    pool.wait_views(layout.ids, timeout=30, settled=True)


def _identity(bindings: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must not change while a binding is left alone: its Call-ID, CSeq, contact, expiry
    time and flow. (``/bindings`` has no ``registered_at``; an untouched ``expires_at``, CSeq
    and flow are the stronger test: no refresh, no re-registration, same connection.)"""
    keys = ("call_id", "cseq", "contact", "expires_at", "flow_id", "source", "backup")
    return sorted(tuple(b[k] for k in keys) for b in bindings)


def _second_in_sequence(layout: PoolLayout, first: FeInfo, second: FeInfo) -> list[str]:
    """Demo AORs whose logical sequence lists ``first`` then ``second`` before any other FE."""
    wanted = [first.server_id, second.server_id]
    out = []
    for n in range(1, USERS + 1):
        aor = aor_of(n)
        commissioned = [sid for sid in layout.sequence(aor) if sid in layout.ids]
        if commissioned[:2] == wanted:
            out.append(aor)
    return out


def test_quorum_guard_refuses_backup_mode_in_a_minority(pool: LivePool) -> None:
    layout = pool.layout
    ensure_all_up(pool)
    tested, other = layout.fe("fe1"), layout.fe("fe2")
    stop1, stop2 = layout.fe("fe3"), layout.fe("fe4")
    # Users of a stopped FE whose next FE is the tested one (it would take them in backup
    # mode), users of the tested FE, and users of a stopped FE whose next FE is the other one.
    backup1 = _second_in_sequence(layout, stop1, tested)[0]
    backup2 = _second_in_sequence(layout, stop2, tested)[0]
    own = next(aor_of(n) for n in range(1, USERS + 1) if layout.primary(aor_of(n)) == tested)
    elsewhere = _second_in_sequence(layout, stop1, other)[0]
    held_before = {aor: pool.bindings_of(tested.fqdn, aor) for aor in (backup1, backup2)}

    pool.pause_fe(stop1.fqdn)
    pool.pause_fe(stop2.fqdn)
    try:
        minority = {tested.server_id, other.server_id}
        wait = layout.heartbeat_timeout + layout.heartbeat_interval + 10
        pool.wait_views(minority, fes=[tested.fqdn, other.fqdn], timeout=wait)
        assert pool.status(tested.fqdn)["pool"]["quorum"] is False  # type: ignore[index]

        # Backup mode refused: 503 + Retry-After, before any challenge, nothing stored.
        for aor in (backup1, backup2):
            outcome = sip_register(tested, aor)
            assert outcome.statuses == [503], outcome.responses
            retry = outcome.header("Retry-After")
            assert retry is not None and retry.isdigit() and int(retry) >= 1, outcome.final
            assert pool.bindings_of(tested.fqdn, aor) == held_before[aor]
        # Its primary users are still served.
        outcome = sip_register(tested, own, expires=60)
        assert outcome.statuses == [401, 200], outcome.responses
        assert outcome.header("X-Registrar-Mode") == "primary"
        # A user whose current registrar is the other live FE is still redirected there.
        outcome = sip_register(tested, elsewhere)
        assert outcome.statuses == [301], outcome.responses
        assert parse_contact(outcome.header("Contact") or "")["host"] == other.fqdn

        # One stopped FE back: three of four up is a majority, backup mode is accepted again.
        pool.resume_fe(stop2.fqdn)
        majority = minority | {stop2.server_id}
        pool.wait_views(majority, fes=[tested.fqdn], timeout=wait)
        outcome = sip_register(tested, backup1, expires=60)
        assert outcome.statuses == [401, 200], outcome.responses
        assert outcome.header("X-Registrar-Mode") == f'backup;primary="{stop1.fqdn}"'
        rows = pool.bindings_of(tested.fqdn, backup1)
        assert rows and any(b["backup"] for b in rows), rows
    finally:
        pool.resume_fe(stop1.fqdn)
        pool.resume_fe(stop2.fqdn)

    # Both back: normal service, every user on its primary.
    pool.wait_views(layout.ids, timeout=30)
    assert pool.status(tested.fqdn)["pool"]["quorum"] is True  # type: ignore[index]
    for aor, primary in ((backup1, stop1), (backup2, stop2)):
        outcome = sip_register(tested, aor)
        assert outcome.statuses == [301], outcome.responses
        assert parse_contact(outcome.header("Contact") or "")["host"] == primary.fqdn
        outcome = sip_register(primary, aor, expires=60)
        assert outcome.statuses == [401, 200], outcome.responses
        assert outcome.header("X-Registrar-Mode") == "primary"
    outcome = sip_register(tested, own, expires=60)
    assert outcome.statuses == [401, 200] and outcome.header("X-Registrar-Mode") == "primary"


def test_redirect_names_the_current_registrar_without_challenge(pool: LivePool) -> None:
    layout = pool.layout
    ensure_all_up(pool)
    for registrar in layout.fes:
        aor = next(aor_of(n) for n in range(1, USERS + 1) if layout.primary(aor_of(n)) == registrar)
        for fe in layout.fes:
            if fe == registrar:
                continue
            stats_before = pool.status(fe.fqdn)
            held_before = pool.bindings_of(fe.fqdn, aor)
            # With credentials at hand, the client still gets no challenge: only the 301.
            outcome = sip_register(fe, aor)
            assert outcome.statuses == [301], outcome.responses
            final = outcome.final or b""
            assert b"WWW-Authenticate" not in final and b"www-authenticate" not in final
            contacts = [v for v in re.findall(rb"(?im)^(?:contact|m)[ \t]*:(.*)$", final)]
            assert len(contacts) == 1, final
            contact = parse_contact(contacts[0].decode())
            assert contact["host"] == registrar.fqdn, contact
            assert contact["port"] == str(registrar.tcp_port), contact
            assert contact["transport"] == "tcp", contact
            assert contact["maddr"] == registrar.ip, contact
            stats_after = pool.status(fe.fqdn)
            assert stats_before and stats_after
            before, after = stats_before["register"], stats_after["register"]
            assert after["challenged"] == before["challenged"], (before, after)
            assert after["registered"] == before["registered"], (before, after)
            redirected = stats_after["pool"]["router"]["redirected"]
            assert redirected == stats_before["pool"]["router"]["redirected"] + 1
            assert pool.bindings_of(fe.fqdn, aor) == held_before


class PoolUp:
    """``registrar pool up --topology FILE --users 2000`` as a subprocess, its output collected
    line by line; :meth:`close` makes sure nothing it started survives the test."""

    def __init__(self, layout: PoolLayout) -> None:
        self.proc = subprocess.Popen(
            [*registrar_command(), "pool", "up", "--topology", str(layout.path), "--users", "2000"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def pids(self) -> list[int]:
        """PIDs of the children it reported starting (DNS server and FEs)."""
        return [int(p) for p in re.findall(r"^started \S+ \(pid (\d+)\)", self.text, re.M)]

    def wait_line(self, predicate: Callable[[str], bool], timeout: float, what: str) -> None:
        wait_for(
            lambda: any(predicate(line) for line in self.lines) or self.proc.poll() is not None,
            timeout,
            lambda: f"pool up: no {what}:\n" + "\n".join(self.lines[-30:]),
        )
        assert self.proc.poll() is None, f"pool up exited {self.proc.returncode}:\n{self.text}"

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM; its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) registrar process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and b"registrar" in cmdline


def test_pool_up_runs_and_stops_the_whole_pool(tmp_path: Path) -> None:
    layout = write_topology(tmp_path / "pool", POOL_UP_BLOCK)
    children = 1 + len(layout.fes)  # the DNS server and every FE
    run = PoolUp(layout)
    try:
        run.wait_line(lambda line: line == "Ctrl-C stops the pool.", 90, "instructions")
        text = run.text
        assert "pool is up" in run.lines, text
        assert len(run.pids) == children, text
        # The client instructions: DNS address, the CA, the commands.
        assert f"DNS server: {layout.dns_text}" in text, text
        assert (
            f"registrar client register sip:user0001@contoso.com --password demo "
            f"--dns {layout.dns_text} --ca {layout.ca}" in text
        ), text
        assert "registrar client load --users 2000" in text
        for fe in layout.fes:
            assert f"{fe.fqdn} id {fe.server_id}: tls {fe.ip}:{fe.tls_port}" in text, text

        done = run_registrar("status", "--topology", str(layout.path), "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert all(row["state"] == "up" for row in status["front_ends"]), status
        fe_pids = {row["pid"] for row in status["front_ends"]}
        assert fe_pids <= set(run.pids) and len(fe_pids) == len(layout.fes), (status, run.pids)

        # A user registers through it (the instructions work).
        done = run_registrar(
            "client", "register", "sip:user0001@contoso.com", "--password", "demo",
            "--dns", layout.dns_text, "--ca", str(layout.ca), "--once", "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

        assert run.terminate() == 0, run.text
        assert "stopping the pool ..." in run.lines
        left = [pid for pid in run.pids if _alive(pid)]
        assert not left, f"processes left after SIGTERM: {left}"
    finally:
        run.close()

    # SIGTERM while it is still starting (right after it started the last FE, usually before
    # "pool is up"): it stops every child all the same, and exits 0.
    run = PoolUp(layout)
    try:
        run.wait_line(lambda line: line.startswith(f"started {layout.fes[-1].fqdn} "), 60, "start")
        assert run.terminate() == 0, run.text
        assert len(run.pids) == children, run.text
        left = [pid for pid in run.pids if _alive(pid)]
        assert not left, f"processes left after SIGTERM during start-up: {left}\n{run.text}"
    finally:
        run.close()

    # An unknown FE: exit 2, naming the FEs the topology has.
    done = run_registrar("serve", "--topology", str(layout.path), "--fe", "unknown.fqdn")
    assert done.returncode == 2, done.stdout + done.stderr
    for fe in layout.fes:
        assert fe.fqdn in done.stderr, done.stderr
    assert "unknown.fqdn" in done.stderr
