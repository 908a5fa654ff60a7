"""The REGISTER service of a live FE, driven by real clients on loopback (RFC 3261 §10,
RFC 5626; DESIGN.md §5, §8, §9).

(a) sipp with digest authentication over TCP and UDP, users from a CSV: register, refresh,
    a second contact, unregister one contact, ``Contact: *``; after each step
    ``registrar bindings --json`` must show exactly the expected bindings.
(b) RFC 5626 outbound: two instances of one user hold two bindings; one reconnecting (new
    connection, Call-ID and contact port, same instance and reg-id) replaces only its own.
(c) Policy answers: 423 + Min-Expires, the Expires cap, 403 beyond --max-contacts, a query
    without Contact, 400 for an older CSeq of the same Call-ID, 404 for a foreign domain.
(d) 10,000 bindings survive SIGKILL (write-behind file) with their remaining expiry.
(e) Users added with ``registrar users add`` while the FE runs can register without a restart.

Every wait is a condition with a deadline; no assertion is about speed.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from procs import (
    REPO,
    FeProcess,
    SipStream,
    fe_bindings,
    fe_status,
    free_port,
    header_values,
    make_users_db,
    require_command,
    run_cli,
    run_sipp,
    status_of,
    wait_until,
)

from sipstack.auth import answer_challenge, parse_challenge

pytestmark = pytest.mark.network

DOMAIN = "contoso.com"
USERS = {"alice": "secret", "bob": "b0b-pw", "carol": "c4rol.pw"}
SIPP_DIR = REPO / "tests" / "sipp"
ANSWER = 10.0  # seconds an answer may take before a test gives up (never asserted as speed)
SLACK = 3  # seconds an "expires" may lag behind the requested value (registration + polling)


# ------------------------------------------------------------------------------ helpers


def digest_args(users_db: Path, *extra: str) -> list[str]:
    """``registrar serve`` arguments of a digest-authenticating registrar for contoso.com
    (MD5 first: sipp 3.6 answers only the first challenge and only MD5)."""
    return [
        "--domain", DOMAIN, "--users-db", str(users_db),
        "--digest-algorithms", "MD5,SHA-256", *extra,
    ]  # fmt: skip


def by_contact(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["contact"]: row for row in rows}


def assert_expires(row: dict[str, Any], wanted: int, since: float | None = None) -> None:
    """``row`` expires in ``wanted`` seconds, less the time elapsed ``since`` (``time.time()``
    before the REGISTER was sent) and the rounding down to whole seconds."""
    lag = SLACK if since is None else time.time() - since + 1
    assert wanted - lag <= row["expires"] <= wanted, (
        f"{row['contact']}: expires {row['expires']}, wanted {wanted} (less {lag:.1f} s)"
    )


class RegClient:
    """A minimal REGISTER client over one TCP connection, answering digest challenges with
    :func:`sipstack.auth.answer_challenge` (the first challenge offered).

    Each :meth:`register` sends the request, and on ``401`` the same request with credentials
    and the next CSeq; it returns the final response.
    """

    def __init__(
        self,
        fe: FeProcess,
        user: str,
        password: str | None,
        *,
        call_id: str | None = None,
        domain: str = DOMAIN,
    ) -> None:
        self.fe = fe
        self.user = user
        self.password = password
        self.domain = domain
        self.stream = SipStream("tcp", fe.addr("tcp"), timeout=ANSWER)
        self.call_id = call_id or f"{uuid.uuid4().hex}@test"
        self.cseq = 0
        self.tag = uuid.uuid4().hex[:10]

    @property
    def local(self) -> tuple[str, int]:
        return self.stream.local

    def contact(self, user: str | None = None, port: int | None = None, params: str = "") -> str:
        """``<sip:USER@127.0.0.1:PORT;transport=tcp>PARAMS`` (default: this connection)."""
        host, local_port = self.local
        return f"<sip:{user or self.user}@{host}:{port or local_port};transport=tcp>{params}"

    def request(
        self,
        contacts: Sequence[str],
        *,
        expires: int | None,
        cseq: int,
        headers: Sequence[str] = (),
        authorization: str | None = None,
        ruri: str | None = None,
    ) -> bytes:
        host, port = self.local
        lines = [
            f"REGISTER {ruri or f'sip:{self.domain}'} SIP/2.0",
            f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:20]};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{self.domain}>;tag={self.tag}",
            f"To: <sip:{self.user}@{self.domain}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} REGISTER",
            *(f"Contact: {c}" for c in contacts),
            *([f"Expires: {expires}"] if expires is not None else []),
            *headers,
            *([f"Authorization: {authorization}"] if authorization else []),
            "User-Agent: regclient",
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def exchange(self, data: bytes) -> bytes:
        """Send one request; its final response (provisional ones are skipped)."""
        self.stream.send(data)
        while True:
            resp = self.stream.recv_message(ANSWER)
            assert resp is not None, f"no answer to {data[:200]!r}"
            code = status_of(resp)
            assert code is not None, resp
            if code >= 200:
                return resp

    def register(
        self,
        contacts: Sequence[str] = (),
        *,
        expires: int | None = None,
        headers: Sequence[str] = (),
        cseq: int | None = None,
        ruri: str | None = None,
    ) -> bytes:
        """REGISTER (answering one digest challenge); the final response. ``cseq`` forces
        the CSeq of the first attempt (the authenticated one gets ``cseq + 1``)."""
        self.cseq = self.cseq + 1 if cseq is None else cseq
        ruri = ruri or f"sip:{self.domain}"
        resp = self.exchange(
            self.request(contacts, expires=expires, cseq=self.cseq, headers=headers, ruri=ruri)
        )
        if status_of(resp) != 401 or self.password is None:
            return resp
        challenge = parse_challenge(header_values(resp, "www-authenticate")[0])
        credentials = answer_challenge(
            challenge,
            username=self.user,
            password=self.password,
            method="REGISTER",
            uri=ruri,
            cnonce=uuid.uuid4().hex[:16],
        )
        self.cseq += 1
        return self.exchange(
            self.request(
                contacts,
                expires=expires,
                cseq=self.cseq,
                headers=headers,
                ruri=ruri,
                authorization=credentials.to_header(),
            )
        )

    def close(self) -> None:
        self.stream.close()


def contact_params(response: bytes) -> dict[str, str]:
    """Contact URI → its header parameters text, from a 200's Contact headers."""
    out = {}
    for value in header_values(response, "contact"):
        uri, _, params = value.partition(">")
        out[uri.lstrip("<")] = params
    return out


@pytest.fixture
def users_db(tmp_path: Path) -> Path:
    return make_users_db(tmp_path / "users", USERS, DOMAIN)


@pytest.fixture
def reg_fe(start_fe: Callable[..., FeProcess], users_db: Path) -> Callable[..., FeProcess]:
    """Factory: a digest registrar for contoso.com (tcp + udp, admin API on a free port)."""

    def start(*extra: str, transports: Sequence[str] = ("tcp", "udp")) -> FeProcess:
        return start_fe(args=digest_args(users_db, *extra), transports=transports, admin=True)

    return start


# ------------------------------------------------------------- (a) sipp, step by step


def _sipp_step(
    fe: FeProcess,
    transport: str,
    scenario: str,
    rows: list[list[str]],
    *,
    base_cseq: int,
    workdir: Path,
) -> None:
    """Run one sipp scenario, one call per row of the injection file, and require exit 0.

    Every run uses the Call-IDs ``reg-<call number>@test`` (stable per user across steps,
    as a real client keeps its Call-ID) and CSeqs counting up from ``base_cseq``.
    """
    sipp = require_command("sipp")
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"{Path(scenario).stem}-{transport}-{base_cseq}"
    inf = workdir / f"{name}.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(";".join(row) + "\n" for row in rows))
    errors = workdir / f"{name}-errors.log"
    host, port = fe.addr(transport)
    cmd = [
        sipp, "-sf", str(SIPP_DIR / scenario), "-inf", str(inf),
        "-t", "u1" if transport == "udp" else "t1",
        "-i", host, "-p", str(free_port(transport, host)),
        "-m", str(len(rows)), "-r", "50", "-l", "10",
        "-cid_str", "reg-%u@test", "-base_cseq", str(base_cseq),
        "-recv_timeout", "5000", "-timeout", "30s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", str(errors),
        f"{host}:{port}",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, errors="replace", timeout=60, check=False
    )
    detail = errors.read_text(errors="replace")[:3000] if errors.exists() else ""
    assert proc.returncode == 0, (
        f"sipp {scenario} ({transport}) exit {proc.returncode}\n{detail}\n{proc.stdout[-2000:]}"
        f"\n{proc.stderr[-1000:]}\n{fe.log_tail()}"
    )


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_sipp_register_lifecycle(
    reg_fe: Callable[..., FeProcess], transport: str, tmp_path: Path
) -> None:
    require_command("sipp")
    fe = reg_fe()
    tr = transport.upper()  # sipp's [transport]

    def auth(user: str) -> str:
        return f"[authentication username={user} password={USERS[user]}]"

    def step(expires: int, contact_user: str, port: int, base_cseq: int) -> float:
        """One reg_contact.xml run for every user; returns when it started."""
        rows = [
            [user, auth(user), DOMAIN, str(expires), f"{user}-{contact_user}", str(port)]
            for user in USERS
        ]
        started = time.time()
        _sipp_step(fe, transport, "reg_contact.xml", rows, base_cseq=base_cseq, workdir=tmp_path)
        return started

    def current(user: str) -> dict[str, dict[str, Any]]:
        """The user's bindings by contact (alice's through the CLI, the others' through the
        admin API the CLI reads)."""
        rows = fe_bindings(fe, user, cli=user == "alice")
        found = by_contact(rows)
        assert len(found) == len(rows), rows
        return found

    def desk(user: str) -> str:
        return f"sip:{user}-desk@127.0.0.1:5071;transport={tr}"

    def mobile(user: str) -> str:
        return f"sip:{user}-mobile@127.0.0.1:5072;transport={tr}"

    # 1. register the desk phone for an hour
    t_desk = step(3600, "desk", 5071, base_cseq=10)
    for call, user in enumerate(USERS, 1):
        rows = current(user)
        assert list(rows) == [desk(user)], rows
        row = rows[desk(user)]
        assert_expires(row, 3600, t_desk)
        assert row["call_id"] == f"reg-{call}@test"
        assert row["cseq"] == 11  # the authenticated REGISTER
        assert row["source"].startswith(f"{transport}:127.0.0.1:"), row
        assert row["user_agent"] == "sipp"
        assert row["instance_id"] is None and row["reg_id"] is None

    # 2. refresh it (same Call-ID, higher CSeq) for half an hour
    t_desk = step(1800, "desk", 5071, base_cseq=20)
    for user in USERS:
        rows = current(user)
        assert list(rows) == [desk(user)], rows
        assert_expires(rows[desk(user)], 1800, t_desk)
        assert rows[desk(user)]["cseq"] == 21

    # 3. a second contact: the first one stays as it was
    t_mobile = step(600, "mobile", 5072, base_cseq=30)
    for user in USERS:
        rows = current(user)
        assert set(rows) == {desk(user), mobile(user)}, rows
        assert_expires(rows[desk(user)], 1800, t_desk)
        assert rows[desk(user)]["cseq"] == 21  # untouched
        assert_expires(rows[mobile(user)], 600, t_mobile)
        assert rows[mobile(user)]["cseq"] == 31

    # 4. unregister the desk phone only (Expires: 0 on that contact)
    step(0, "desk", 5071, base_cseq=40)
    for user in USERS:
        rows = current(user)
        assert list(rows) == [mobile(user)], rows
        assert_expires(rows[mobile(user)], 600, t_mobile)
        assert rows[mobile(user)]["cseq"] == 31

    # 5. register the desk again, then remove everything with Contact: * and Expires: 0
    step(3600, "desk", 5071, base_cseq=50)
    for user in USERS:
        assert set(current(user)) == {desk(user), mobile(user)}
    assert fe_status(fe)["bindings"] == 2 * len(USERS)
    _sipp_step(
        fe,
        transport,
        "reg_wildcard.xml",
        [[user, auth(user), DOMAIN] for user in USERS],
        base_cseq=60,
        workdir=tmp_path,
    )
    for user in USERS:
        assert current(user) == {}
    assert fe_status(fe)["bindings"] == 0
    assert "Traceback" not in fe.log_text(), fe.log_tail()


# ------------------------------------------------------------------- (b) RFC 5626 outbound


def _outbound_contact(client: RegClient, instance: str) -> str:
    return client.contact(params=f';+sip.instance="<urn:uuid:{instance}>";reg-id=1')


def test_outbound_instances_replace_only_their_own_binding(
    reg_fe: Callable[..., FeProcess],
) -> None:
    fe = reg_fe(transports=("tcp",))
    inst_a, inst_b = str(uuid.uuid4()), str(uuid.uuid4())
    supported = ["Supported: outbound, path"]
    a1 = RegClient(fe, "alice", USERS["alice"])
    b = RegClient(fe, "alice", USERS["alice"])
    a2: RegClient | None = None
    try:
        for client, inst in ((a1, inst_a), (b, inst_b)):
            resp = client.register(
                [_outbound_contact(client, inst)], expires=600, headers=supported
            )
            assert status_of(resp) == 200, resp
            assert "outbound" in ",".join(header_values(resp, "require")).lower(), resp
        rows = {r["instance_id"]: r for r in fe_bindings(fe, "alice")}
        assert set(rows) == {f"<urn:uuid:{inst_a}>", f"<urn:uuid:{inst_b}>"}, rows
        old_a, old_b = rows[f"<urn:uuid:{inst_a}>"], rows[f"<urn:uuid:{inst_b}>"]
        assert old_a["reg_id"] == old_b["reg_id"] == 1
        assert old_a["contact"].endswith(f":{a1.local[1]};transport=tcp")
        assert old_a["flow_id"] != old_b["flow_id"]

        # A reconnects: new connection, new Call-ID, same instance and reg-id, new contact port.
        a2 = RegClient(fe, "alice", USERS["alice"])
        assert a2.local[1] != a1.local[1] and a2.call_id != a1.call_id
        resp = a2.register([_outbound_contact(a2, inst_a)], expires=600, headers=supported)
        assert status_of(resp) == 200, resp
        assert len(header_values(resp, "contact")) == 2, resp  # the 200 lists both bindings
        rows = {r["instance_id"]: r for r in fe_bindings(fe, "alice")}
        assert len(rows) == 2, rows
        new_a = rows[f"<urn:uuid:{inst_a}>"]
        assert new_a["contact"].endswith(f":{a2.local[1]};transport=tcp"), new_a
        assert new_a["call_id"] == a2.call_id
        assert new_a["flow_id"] not in (old_a["flow_id"], old_b["flow_id"])
        unchanged = rows[f"<urn:uuid:{inst_b}>"]
        assert unchanged == {**old_b, "expires": unchanged["expires"]}, (old_b, unchanged)

        # A's old connection closes: the binding now rides on the new flow and stays.
        connections = fe_status(fe)["connections"]
        a1.close()
        wait_until(
            lambda: fe_status(fe)["connections"] < connections, ANSWER, 0.05,
            "the FE did not notice the closed connection",
        )  # fmt: skip
        rows = {r["instance_id"]: r["contact"] for r in fe_bindings(fe, "alice")}
        assert rows == {
            f"<urn:uuid:{inst_a}>": new_a["contact"],
            f"<urn:uuid:{inst_b}>": old_b["contact"],
        }

        # B's flow fails: its outbound binding goes (RFC 5626 §7), A's stays.
        b.close()
        remaining = wait_until(
            lambda: (r := fe_bindings(fe, "alice")) and len(r) == 1 and r, ANSWER, 0.1,
            "B's binding was not removed when its flow closed",
        )  # fmt: skip
        assert remaining[0]["instance_id"] == f"<urn:uuid:{inst_a}>"
    finally:
        for client in (a1, b, a2):
            if client is not None:
                client.close()


# ------------------------------------------------------------------- (c) policy answers


def test_register_policy_answers(reg_fe: Callable[..., FeProcess]) -> None:
    fe = reg_fe(
        "--min-expires", "60", "--max-expires", "7200", "--default-expires", "3600",
        "--max-contacts", "3", transports=("tcp",),
    )  # fmt: skip
    alice = RegClient(fe, "alice", USERS["alice"])
    try:
        # 423 below --min-expires, with Min-Expires; nothing is stored.
        resp = alice.register([alice.contact("alice-0")], expires=30)
        assert status_of(resp) == 423, resp
        assert header_values(resp, "min-expires") == ["60"], resp
        assert fe_bindings(fe, "alice") == []

        # Longer than --max-expires: shortened to it; no Expires at all: --default-expires.
        t_cap = time.time()
        resp = alice.register([alice.contact("alice-0")], expires=99999)
        assert status_of(resp) == 200, resp
        granted = contact_params(resp)
        assert len(granted) == 1 and "expires=7200" in next(iter(granted.values())), granted
        assert_expires(fe_bindings(fe, "alice")[0], 7200, t_cap)
        t_default = time.time()
        resp = alice.register([alice.contact("alice-1")])
        assert status_of(resp) == 200, resp
        rows = by_contact(fe_bindings(fe, "alice"))
        assert_expires(rows[alice.contact("alice-1")[1:-1]], 3600, t_default)

        # A third contact fills --max-contacts 3; a fourth is refused with 403, atomically.
        resp = alice.register([alice.contact("alice-2")], expires=600)
        assert status_of(resp) == 200, resp
        before = fe_bindings(fe, "alice")
        assert len(before) == 3
        resp = alice.register([alice.contact("alice-3")], expires=600)
        assert status_of(resp) == 403, resp
        resp = alice.register([alice.contact("alice-0"), alice.contact("alice-3")], expires=900)
        assert status_of(resp) == 403, resp
        assert by_contact(fe_bindings(fe, "alice")).keys() == by_contact(before).keys()
        rows = by_contact(fe_bindings(fe, "alice"))
        assert_expires(rows[alice.contact("alice-0")[1:-1]], 7200, t_cap)  # not 900
        # Refreshing an existing one is no new binding: allowed.
        resp = alice.register([alice.contact("alice-2")], expires=1200)
        assert status_of(resp) == 200, resp

        # No Contact: a query (RFC 3261 §10.2.3), answered with every binding, changing nothing.
        before = fe_bindings(fe, "alice")
        resp = alice.register()
        assert status_of(resp) == 200, resp
        listed = contact_params(resp)
        assert set(listed) == {row["contact"] for row in before}, (listed, before)
        for row in before:
            left = int(listed[row["contact"]].split("expires=")[1].split(";")[0])
            assert row["expires"] - SLACK <= left <= row["expires"] + 1
        after = fe_bindings(fe, "alice")
        assert [(r["contact"], r["cseq"], r["expires_at"]) for r in after] == [
            (r["contact"], r["cseq"], r["expires_at"]) for r in before
        ]

        # An older CSeq under the same Call-ID: 400, nothing changes.
        stored = max(row["cseq"] for row in after)
        resp = alice.register([alice.contact("alice-2")], expires=300, cseq=stored - 3)
        assert status_of(resp) == 400, resp
        assert [(r["contact"], r["expires_at"]) for r in fe_bindings(fe, "alice")] == [
            (r["contact"], r["expires_at"]) for r in after
        ]

        # A domain this FE does not serve: 404, before any challenge.
        other = RegClient(fe, "alice", USERS["alice"], domain="example.org")
        try:
            resp = other.register([other.contact()], expires=600)
            assert status_of(resp) == 404, resp
        finally:
            other.close()
        # The served domain in the Request-URI but a foreign AOR in To: 404 as well.
        foreign_to = alice.request([alice.contact()], expires=600, cseq=alice.cseq + 10).replace(
            f"To: <sip:alice@{DOMAIN}>".encode(), b"To: <sip:alice@example.org>"
        )
        assert status_of(alice.exchange(foreign_to)) == 404
    finally:
        alice.close()
    assert "Traceback" not in fe.log_text(), fe.log_tail()


# ------------------------------------------------------------- (d) SIGKILL with 10,000


def rows_on_disk(state_dir: Path, scratch: Path) -> int:
    """Bindings committed to ``state_dir/location.db`` so far, as a crash would leave them.

    The FE holds its file with an exclusive lock (one FE per file), so it cannot be opened
    beside it: copy the database and its WAL and open the copy, which replays the committed
    WAL transactions exactly as a restart after SIGKILL does. A torn copy (a write in
    progress) reads as 0 or fewer rows; callers poll.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    for name in ("location.db-wal", "location.db"):
        (scratch / name).unlink(missing_ok=True)
    src = state_dir / "location.db"
    try:
        shutil.copyfile(src, scratch / "location.db")
        if (state_dir / "location.db-wal").exists():
            shutil.copyfile(state_dir / "location.db-wal", scratch / "location.db-wal")
        conn = sqlite3.connect(scratch / "location.db", timeout=1.0)
        try:
            return int(conn.execute("SELECT count(*) FROM bindings").fetchone()[0])
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return 0


def test_udp_challenge_stateless_and_200_absorbs_retransmission(
    reg_fe: Callable[..., FeProcess],
) -> None:
    """Over UDP the 401 is sent statelessly (RFC 3261 §8.2.7): a retransmission of the
    unauthenticated REGISTER is challenged afresh (a new nonce) and leaves no server
    transaction; the authenticated REGISTER's 200 goes through a transaction, which answers
    a retransmission with the same bytes instead of running the request again (its CSeq is
    not newer: §10.3 step 7 would reject it)."""
    fe = reg_fe()
    ruri = f"sip:{DOMAIN}"
    call_id = f"{uuid.uuid4().hex}@test"
    tag = uuid.uuid4().hex[:10]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(ANSWER)
        host, port = sock.getsockname()

        def register(cseq: int, authorization: str | None = None) -> bytes:
            lines = [
                f"REGISTER {ruri} SIP/2.0",
                f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:20]};rport",
                "Max-Forwards: 70",
                f"From: <sip:alice@{DOMAIN}>;tag={tag}",
                f"To: <sip:alice@{DOMAIN}>",
                f"Call-ID: {call_id}",
                f"CSeq: {cseq} REGISTER",
                f"Contact: <sip:alice@{host}:{port}>",
                "Expires: 600",
                *([f"Authorization: {authorization}"] if authorization else []),
                "Content-Length: 0",
            ]
            return ("\r\n".join(lines) + "\r\n\r\n").encode()

        def exchange(data: bytes) -> bytes:
            sock.sendto(data, fe.addr("udp"))
            while True:
                answer, _ = sock.recvfrom(65536)
                if (status_of(answer) or 0) >= 200:
                    return answer

        transactions_before = fe_status(fe)["transactions"]
        first = register(1)
        challenges = [exchange(first), exchange(first)]  # the same bytes: a retransmission
        assert [status_of(c) for c in challenges] == [401, 401]
        nonces = [
            parse_challenge(header_values(c, "www-authenticate")[0]).nonce for c in challenges
        ]
        assert nonces[0] != nonces[1], "the retransmission must be challenged afresh"
        # no transaction was made for the challenges (probes' transactions may end meanwhile)
        assert fe_status(fe)["transactions"] <= transactions_before

        credentials = answer_challenge(
            parse_challenge(header_values(challenges[1], "www-authenticate")[0]),
            username="alice",
            password=USERS["alice"],
            method="REGISTER",
            uri=ruri,
            cnonce=uuid.uuid4().hex[:16],
        )
        second = register(2, credentials.to_header())
        ok = exchange(second)
        assert status_of(ok) == 200, ok
        assert fe_status(fe)["transactions"] >= 1
        assert exchange(second) == ok, "a retransmission gets the transaction's response"
        assert [row["contact"] for row in fe_bindings(fe, "alice")] == [f"sip:alice@{host}:{port}"]


def test_sigkill_with_10000_bindings_restores_them(
    start_fe: Callable[..., FeProcess], tmp_path: Path
) -> None:
    require_command("sipp")
    total = 10_000
    fe = start_fe(
        args=["--domain", DOMAIN, "--auth", "off", "--max-expires", "7200"],
        transports=("tcp",),
        admin=True,
    )
    started = time.time()
    result = run_sipp(
        SIPP_DIR / "register_noauth.xml",
        fe.addr("tcp"),
        "tcp",
        rate=1000,
        calls=total,
        workdir=tmp_path / "sipp",
        service=DOMAIN,
        recv_timeout_ms=30_000,  # a busy machine may queue REGISTERs; none may be lost
    )
    registered = time.time()
    assert result.ok == total and result.returncode == 0, result.describe()
    assert fe_status(fe)["bindings"] == total
    sample = ["user1", "user2500", "user5000", "user7777", f"user{total}"]
    before = {user: fe_bindings(fe, user) for user in sample}
    for user, rows in before.items():
        assert len(rows) == 1 and rows[0]["contact"].startswith(f"sip:{user}@"), rows
        assert_expires(rows[0], 3600, started)

    # All of them committed to the write-behind file (every flush interval, 0.2 s).
    scratch = tmp_path / "copy"
    wait_until(
        lambda: rows_on_disk(fe.state_dir, scratch) == total, 30, 0.2,
        f"location.db never held {total} bindings",
    )  # fmt: skip
    on_disk = time.time()
    fe.kill()
    assert fe.returncode == -9
    fe.start_ready()
    restarted = time.time()
    body = fe_status(fe)
    assert body["bindings"] == total and body["aors"] == total, body
    for user, rows in before.items():
        after = fe_bindings(fe, user)
        assert len(after) == 1, after
        row = after[0]
        old = rows[0]
        for key in ("contact", "call_id", "cseq", "source", "user_agent"):
            assert row[key] == old[key], (key, old, row)
        assert abs(row["expires_at"] - old["expires_at"]) < 1e-3, (old, row)
        assert row["flow_id"] is None  # flows do not survive a restart
        # remaining = original - elapsed since the REGISTER (it went between started and
        # registered), give or take the rounding to whole seconds.
        now = time.time()
        assert 3600 - (now - started) - 1 <= row["expires"] <= 3600 - (restarted - registered) + 1
    print(
        f"SIGKILL restore: {total} bindings registered in {registered - started:.1f} s "
        f"(sipp {result.stat.get('CallRate(C)')}/s), all on disk {on_disk - registered:.1f} s "
        f"later; after SIGKILL ready again in {restarted - on_disk:.1f} s with {body['bindings']}, "
        f"sample remaining {fe_bindings(fe, 'user1')[0]['expires']} s "
        f"{time.time() - started:.1f} s after the first REGISTER"
    )
    assert "restored 10000 bindings" in fe.log_text(), fe.log_tail()


# ------------------------------------------------------------ (e) users added while running


def test_user_added_while_running_can_register(
    reg_fe: Callable[..., FeProcess], users_db: Path
) -> None:
    fe = reg_fe(transports=("tcp",))
    assert fe_status(fe)["users"] == len(USERS)
    dave = RegClient(fe, "dave", "d4ve-pw")
    try:
        resp = dave.register([dave.contact()], expires=600)
        assert status_of(resp) == 401, resp  # unknown: challenged again, like a wrong password
        run_cli("users", "add", f"sip:dave@{DOMAIN}", "--password", "d4ve-pw", "--users-db",
                str(users_db))  # fmt: skip
        added = time.monotonic()
        # The FE reloads the directory on its own (no restart, no signal).
        wait_until(
            lambda: fe_status(fe)["users"] == len(USERS) + 1, ANSWER, 0.1,
            "the FE did not load the new user",
        )  # fmt: skip
        noticed = time.monotonic() - added
        resp = dave.register([dave.contact()], expires=600)
        assert status_of(resp) == 200, resp
        rows = fe_bindings(fe, "dave")
        assert [r["contact"] for r in rows] == [dave.contact()[1:-1]], rows
        print(f"new user noticed {noticed:.2f} s after 'registrar users add'")
    finally:
        dave.close()
