"""Third-party SIP clients against a live FE (DESIGN.md §5, §9): a softphone that registers
over TLS (baresip), and the SIPVicious attack tools (svwar enumerates users, svcrack guesses
passwords).

Findings these tests encode (Debian 12 packages):

* baresip 1.0.0 (libre 1.1.0) answers only MD5 challenges, and its digest code gives up on the
  whole 401 ("Register: Function not implemented", ENOSYS) when ANY WWW-Authenticate in it
  names another algorithm, even if an MD5 challenge comes first. So the FE it talks to runs
  with ``--digest-algorithms MD5``. baresip 1.0 also loads ``sip_cafile`` but does not verify
  the server certificate with it (it registers with a foreign CA too); the test cannot show
  verification, only that the TLS registration works with our CA configured.
* sipvicious 0.3.3 speaks UDP only (``tcp://`` targets are refused: "not supported in
  SIPVicious OSS"), and svcrack answers the first challenge with MD5 whatever its algorithm, so
  its FE offers MD5 first (``--digest-algorithms MD5,SHA-256``, as for sipp).

Every run of an external tool is bounded; every wait is a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from procs import (
    FeProcess,
    SipStream,
    fe_bindings,
    fe_status,
    free_port,
    header_values,
    make_users_db,
    require_command,
    status_of,
    wait_until,
)

from sipstack.auth import answer_challenge, parse_challenge

pytestmark = pytest.mark.network

DOMAIN = "contoso.com"
USERS = {"alice": "secret", "bob": "b0b-pw", "carol": "c4rol-pw"}
ANSWER = 10.0  # seconds an answer may take before a test gives up (never asserted as speed)
MAX_FAILURES = 10  # RegistrarSettings.max_failures: failed authentications per AOR per window


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def users_db(tmp_path: Path) -> Path:
    """A user directory with :data:`USERS` (``registrar users import``)."""
    return make_users_db(tmp_path / "users", USERS, DOMAIN)


def register_tcp(fe: FeProcess, user: str, password: str, expires: int = 600) -> bytes:
    """One REGISTER over a new TCP connection, answering one digest challenge; the final
    response."""
    with SipStream("tcp", fe.addr("tcp"), timeout=ANSWER) as stream:
        host, port = stream.local
        call_id = f"{uuid.uuid4().hex}@test"

        def send(cseq: int, extra: Sequence[str] = ()) -> bytes:
            lines = [
                f"REGISTER sip:{DOMAIN} SIP/2.0",
                f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
                "Max-Forwards: 70",
                f"From: <sip:{user}@{DOMAIN}>;tag={call_id[:8]}",
                f"To: <sip:{user}@{DOMAIN}>",
                f"Call-ID: {call_id}",
                f"CSeq: {cseq} REGISTER",
                f"Contact: <sip:{user}@{host}:{port};transport=tcp>",
                f"Expires: {expires}",
                *extra,
                "Content-Length: 0",
            ]
            resp = stream.request(("\r\n".join(lines) + "\r\n\r\n").encode(), ANSWER)
            assert resp is not None, "no answer"
            return resp

        resp = send(1)
        if status_of(resp) != 401:
            return resp
        challenge = parse_challenge(header_values(resp, "www-authenticate")[0])
        creds = answer_challenge(
            challenge,
            username=user,
            password=password,
            method="REGISTER",
            uri=f"sip:{DOMAIN}",
            cnonce=uuid.uuid4().hex[:16],
        )
        return send(2, [f"Authorization: {creds.to_header()}"])


@contextlib.contextmanager
def background(cmd: Sequence[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own session with output to ``log``; on exit SIGINT it, then
    SIGKILL its process group if it has not ended within 15 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


# ---------------------------------------------------------------------- (a) baresip over TLS


def _baresip_config(directory: Path, ca: Path, fe: FeProcess, password: str) -> Path:
    """A headless baresip 1.0 configuration: no audio/video, no console (stdio.so would need
    a terminal), only the account module; SIP on an ephemeral loopback port."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text(
        "poll_method\t\tepoll\n"
        "sip_listen\t\t127.0.0.1:0\n"
        f"sip_cafile\t\t{ca}\n"
        "module_path\t\t/usr/lib/baresip/modules\n"
        "module_tmp\t\taccount.so\n"
    )
    host, port = fe.addr("tls")
    (directory / "accounts").write_text(
        f"<sip:alice@{DOMAIN};transport=tls>;auth_pass={password};"
        f'outbound="sip:{host}:{port};transport=tls";regint=60\n'
    )
    return directory


def test_baresip_registers_over_tls_and_unregisters(
    start_fe: Callable[..., FeProcess], users_db: Path, certs_dir: Path, tmp_path: Path
) -> None:
    baresip = require_command("baresip")
    fe = start_fe(
        args=["--domain", DOMAIN, "--users-db", str(users_db), "--digest-algorithms", "MD5"],
        transports=("tls",),
        admin=True,
    )
    config = _baresip_config(tmp_path / "baresip", certs_dir / "ca.crt", fe, USERS["alice"])
    log = tmp_path / "baresip.log"

    def output() -> str:
        return log.read_text(errors="replace")[-4000:]

    with background([baresip, "-f", str(config), "-s"], log) as proc:

        def registered() -> list[dict[str, Any]]:
            if proc.poll() is not None:
                raise AssertionError(f"baresip exited with {proc.returncode}:\n{output()}")
            return fe_bindings(fe, "alice")

        rows = wait_until(registered, 20, 0.1, f"baresip did not register:\n{output()}")
        rows = fe_bindings(fe, "alice", cli=True)
        assert len(rows) == 1, rows
        row = rows[0]
        assert re.fullmatch(r"sip:alice-[0-9a-fx]+@127\.0\.0\.1:\d+;transport=tls", row["contact"])
        assert row["source"].startswith("tls:127.0.0.1:"), row
        assert row["user_agent"].startswith("baresip"), row
        assert 50 <= row["expires"] <= 60, row  # regint=60
        assert "200 OK" in output()

        # Quit: baresip unregisters (Expires 0, authenticated) before it exits.
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"baresip did not quit:\n{output()}") from None
        assert code == 0, output()
    assert fe_bindings(fe, "alice", cli=True) == []
    assert "expires=0" in output()
    assert "Traceback" not in fe.log_text(), fe.log_tail()


# ------------------------------------------------------------------------- (b) sipvicious


@pytest.fixture
def vicious_fe(start_fe: Callable[..., FeProcess], users_db: Path) -> FeProcess:
    """A digest registrar (udp + tcp) offering MD5 first, which svcrack needs."""
    return start_fe(
        args=["--domain", DOMAIN, "--users-db", str(users_db), "--digest-algorithms",
              "MD5,SHA-256"],
        transports=("udp", "tcp"),
        admin=True,
    )  # fmt: skip


def _svtool(tool: str, fe: FeProcess, *args: str, timeout: float = 60) -> str:
    """Run svwar/svcrack against the FE's UDP listener (own source port, Via naming it);
    return its output (exit code 0 asserted)."""
    path = require_command(tool)
    host, port = fe.addr("udp")
    cmd = [
        path, "-x", "127.0.0.1", "-b", "127.0.0.1", "-P", str(free_port("udp")),
        "-p", str(port), "--domain", DOMAIN, *args, host,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exit {proc.returncode}:\n{output}"
    return output


_DEBUG_PACKET = re.compile(r"^b'(SIP/2\.0 .*)'$", re.MULTILINE)


def _responses(output: str) -> dict[str, str]:
    """svwar ``--debug`` output: the user of each response's To → the response with every
    per-request value (user, tags, branch, Call-ID, nonce) masked."""
    found = {}
    for match in _DEBUG_PACKET.finditer(output):
        text = match.group(1).encode().decode("unicode_escape")
        user = re.search(r"\r\nTo: \"?([^\"<]*)\"?<sip:([^@>]+)@", text)
        assert user is not None, text
        name = user.group(2)
        masked = text.replace(name, "USER")
        masked = re.sub(r"(tag|branch|nonce|rport)=\"?[^;,\"\r]+\"?", r"\1=X", masked)
        masked = re.sub(r"Call-ID: \S+", "Call-ID: X", masked)
        found[name] = masked
    return found


def test_svwar_cannot_tell_users_apart(vicious_fe: FeProcess, tmp_path: Path) -> None:
    fe = vicious_fe
    # REGISTER over a range, as svwar is normally run: the FE challenges svwar's probe of a
    # random (nonexistent) extension, so svwar gives up at once and reports nothing.
    out = _svtool("svwar", fe, "-m", "REGISTER", "-e", "100-130")
    assert "authentication request for an unknown extension" in out, out
    assert "found nothing" in out, out

    # Forced, with a dictionary holding real users: each answer is svwar's "bad user" answer
    # (the one its random probe got), so nothing is reported; the answers themselves are the
    # same, byte for byte once per-request values are masked.
    dictionary = tmp_path / "users.txt"
    dictionary.write_text("alice\nnobody\nbob\n100\n")
    out = _svtool(
        "svwar", fe, "-m", "REGISTER", "-d", str(dictionary), "--force", "--debug",
        "-t", "0.0001",
    )  # fmt: skip
    assert "found nothing" in out, out
    assert "exists" not in out, out
    answers = _responses(out)
    probe = [name for name in answers if name.isdigit() and name != "100"]
    assert probe, f"svwar's probe of a random extension got no answer:\n{out}"
    assert answers[probe[0]].startswith("SIP/2.0 401 Unauthorized\r\n"), answers
    tried = {name: text for name, text in answers.items() if name in ("alice", "nobody", "bob")}
    assert "alice" in tried, f"svwar did not try alice:\n{out}"
    for name, text in tried.items():
        assert text == answers[probe[0]], (name, text, answers[probe[0]])

    # OPTIONS is answered 200 for any user part (the FE answers for itself): nothing either.
    out = _svtool(
        "svwar", fe, "-m", "OPTIONS", "-d", str(dictionary), "--debug", "-t", "0.0001"
    )  # fmt: skip
    assert "found nothing" in out, out
    answers = _responses(out)
    assert {"alice", "nobody", "bob", "100"} <= set(answers), out
    assert len({text for text in answers.values()}) == 1, answers
    assert next(iter(answers.values())).startswith("SIP/2.0 200 OK\r\n")


def _blocked_count(fe: FeProcess) -> int:
    return int(fe_status(fe)["register"]["blocked"])


def _svcrack_until_blocked(fe: FeProcess, user: str, words: list[str], tmp_path: Path) -> str:
    """Run svcrack on ``user`` with ``words``; once the FE has blocked the AOR and svcrack
    has been refused a few more times (it never stops on its own then: every request gets
    403 and it asks again), interrupt it. Returns its output."""
    svcrack = require_command("svcrack")
    wordlist = tmp_path / f"{user}-words.txt"
    wordlist.write_text("\n".join(words) + "\n")
    host, port = fe.addr("udp")
    log = tmp_path / f"svcrack-{user}.log"
    blocked_before = _blocked_count(fe)
    cmd = [
        svcrack, "-x", "127.0.0.1", "-b", "127.0.0.1", "-P", str(free_port("udp")),
        "-p", str(port), "--domain", DOMAIN, "-u", user, "-d", str(wordlist), "-vv", host,
    ]  # fmt: skip
    with background(cmd, log) as proc:
        wait_until(
            lambda: proc.poll() is not None or _blocked_count(fe) >= blocked_before + 5,
            60, 0.05, f"svcrack was never refused:\n{log.read_text(errors='replace')[-3000:]}",
        )  # fmt: skip
    return log.read_text(errors="replace")


def test_svcrack_is_blocked_after_the_failure_threshold(
    vicious_fe: FeProcess, tmp_path: Path
) -> None:
    fe = vicious_fe
    # Control: svcrack does crack a password it reaches before the threshold.
    out = _svtool("svcrack", fe, "-u", "carol", "-d", str(_words(tmp_path, "carol",
                  ["123456", "password", USERS["carol"], "letmein"])), "-v")  # fmt: skip
    assert f"The password for carol is {USERS['carol']}" in out, out

    # A wordlist without the password: nothing found, and after MAX_FAILURES failures every
    # request for alice gets 403 (logged with svcrack's source address).
    wrong = [f"guess{i:02d}" for i in range(MAX_FAILURES + 5)]
    out = _svcrack_until_blocked(fe, "alice", wrong, tmp_path)
    assert "The password for" not in out, out
    tried = re.findall(r"trying (\S+)", out)
    assert tried[:MAX_FAILURES] == wrong[:MAX_FAILURES], tried
    log = fe.log_text()
    blocked = re.findall(
        rf"authentication failed for sip:alice@{DOMAIN} from udp 127\.0\.0\.1:\d+ .*now blocked",
        log,
    )
    assert blocked, fe.log_tail()
    assert log.count(f"authentication failed for sip:alice@{DOMAIN} ") == MAX_FAILURES, log

    # The right password does not help while blocked; other users are not affected.
    assert status_of(register_tcp(fe, "alice", USERS["alice"])) == 403
    assert status_of(register_tcp(fe, "carol", USERS["carol"])) == 200

    # The password in the list, but after the threshold: svcrack never gets to use it.
    words = [f"try{i:02d}" for i in range(MAX_FAILURES + 2)] + [USERS["bob"], "zzz", "yyy"]
    out = _svcrack_until_blocked(fe, "bob", words, tmp_path)
    assert "The password for" not in out, out
    assert f"trying {USERS['bob']}" not in out, out
    assert status_of(register_tcp(fe, "bob", USERS["bob"])) == 403
    assert fe_bindings(fe, "bob") == []
    assert "Traceback" not in fe.log_text(), fe.log_tail()


def _words(tmp_path: Path, name: str, words: list[str]) -> Path:
    path = tmp_path / f"{name}-words.txt"
    path.write_text("\n".join(words) + "\n")
    return path
