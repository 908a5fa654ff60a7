"""A live FE process under hostile and ordinary clients (DESIGN.md §5 "bad input never crashes
or blocks an FE", §9): oversized messages, slowloris, idle connections, a thousand idle TLS
connections, keep-alives, TLS versions (openssl s_client), sipsak, SIGTERM and bad command
lines. Every wait has a deadline; no assertion is about speed.
"""

from __future__ import annotations

import contextlib
import re
import resource
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from procs import (
    FeProcess,
    SipStream,
    free_port,
    header_values,
    options_request,
    read_message,
    registrar_command,
    sip_request,
    status_of,
)

pytestmark = pytest.mark.network

ANSWER = 10.0  # seconds an answer may take before the test gives up (never asserted as speed)
COPIED = ("Via", "From", "To", "Call-ID", "CSeq")


def _options(fe: FeProcess, transport: str, timeout: float = ANSWER) -> int | None:
    addr = fe.addr(transport)
    ctx = fe.ssl_context() if transport == "tls" else None
    return status_of(
        sip_request(
            transport,
            addr,
            options_request(transport, addr),
            timeout,
            ssl_context=ctx,
            server_hostname=fe.fqdn if ctx else None,
        )
    )


def _stream(fe: FeProcess, transport: str) -> SipStream:
    ctx = fe.ssl_context() if transport == "tls" else None
    return SipStream(
        transport, fe.addr(transport), ssl_context=ctx, server_hostname=fe.fqdn if ctx else None
    )


def _assert_copied(request: bytes, response: bytes) -> None:
    """The response carries the request's Via, From, To, Call-ID and CSeq."""
    for name in COPIED:
        sent = header_values(request, name)
        got = header_values(response, name)
        assert got, f"{name} missing from {response[:400]!r}"
        if name == "Via":
            # The FE may add received/rport to the top Via; the branch must survive.
            branch = re.search(r"branch=([^;,\s]+)", sent[0])
            assert branch and branch.group(1) in got[0], (sent, got)
        elif name == "To":
            assert got[0].startswith(sent[0]), (sent, got)  # a To tag may be added
        else:
            assert got == sent, (name, sent, got)


# ---------------------------------------------------------------------------- (a) 513


def test_oversized_tcp_message_gets_513(fe: FeProcess) -> None:
    """70,000 body bytes with a correct Content-Length exceed the default 65,536-byte limit:
    513 with the request's Via/From/To/Call-ID/CSeq, then the FE closes the connection."""
    addr = fe.addr("tcp")
    with SipStream("tcp", addr) as stream:
        request = options_request("tcp", addr, local=stream.local, body=b"x" * 70_000)
        # The FE may answer and close as soon as it has the header block; the 513 is then
        # already on its way even if the rest of the body can no longer be sent.
        with contextlib.suppress(OSError):
            stream.send(request)
        response = stream.recv_message(ANSWER)
        assert status_of(response) == 513, response
        assert response is not None
        _assert_copied(request, response)
        assert stream.wait_closed(ANSWER), "FE kept the connection open after a 513"
    assert _options(fe, "tcp") == 200


def test_oversized_udp_datagram_gets_513(start_fe: Callable[..., FeProcess]) -> None:
    """A 64,000-byte datagram against --max-message-size 8192: 513, sent back to the source
    port (rport) with the request's Via/From/To/Call-ID/CSeq."""
    fe = start_fe(transports=("udp",), args=["--max-message-size", "8192"])
    addr = fe.addr("udp")
    request = options_request("udp", addr, body=b"y" * 64_000)
    assert len(request) > 64_000
    response = sip_request("udp", addr, request, ANSWER)
    assert status_of(response) == 513, response
    assert response is not None
    _assert_copied(request, response)
    assert _options(fe, "udp") == 200


# ---------------------------------------------------------------- (b) slowloris, (c) idle


@pytest.mark.fe_args("--header-timeout", "2")
@pytest.mark.parametrize(("transport", "pace"), [("tcp", "stall"), ("tls", "trickle")])
def test_slowloris_closed_after_header_timeout(fe: FeProcess, transport: str, pace: str) -> None:
    """Half a header block, then nothing (or one byte every 0.25 s): the FE closes the
    connection once --header-timeout (2 s) has passed since the first octet, and serves
    others meanwhile."""
    timeout = 2.0
    with _stream(fe, transport) as stream:
        request = options_request(transport, fe.addr(transport))
        head = request[: request.index(b"\r\n\r\n")]
        half, rest = head[: len(head) // 2], head[len(head) // 2 :]
        start = time.monotonic()
        stream.send(half)
        # Others are served while the connection stalls.
        assert _options(fe, "udp") == 200
        assert _options(fe, transport) == 200
        if pace == "stall":
            assert not stream.wait_closed(timeout * 0.5), "closed long before the header timeout"
            closed = stream.wait_closed(timeout + 3.0 - (time.monotonic() - start))
        else:
            closed = False
            for byte in rest:
                if time.monotonic() - start > timeout + 3.0:
                    break
                try:
                    stream.send(bytes([byte]))
                except OSError:
                    closed = True
                    break
                if stream.wait_closed(0.25):
                    closed = True
                    break
            else:
                closed = stream.wait_closed(timeout + 3.0 - (time.monotonic() - start))
        elapsed = time.monotonic() - start
        assert closed, f"{transport} connection still open {elapsed:.1f}s after the first octet"
        assert elapsed >= timeout * 0.5, f"closed after {elapsed:.2f}s, before the header timeout"
        assert not stream.buffer, f"unexpected answer: {bytes(stream.buffer)[:200]!r}"
    assert "header timeout" in fe.log_text()


@pytest.mark.fe_args("--idle-timeout", "2")
def test_idle_connection_closed(fe: FeProcess) -> None:
    """A connection that says nothing, and one silent after a request, are closed after
    --idle-timeout (2 s)."""
    with SipStream("tcp", fe.addr("tcp")) as silent, SipStream("tcp", fe.addr("tcp")) as used:
        assert status_of(used.request(options_request("tcp", fe.addr("tcp")), ANSWER)) == 200
        assert not silent.wait_closed(1.0), "closed long before the idle timeout"
        assert silent.wait_closed(5.0), "silent connection still open after the idle timeout"
        assert used.wait_closed(5.0), "used connection still open after the idle timeout"
    assert "idle timeout" in fe.log_text()


# ------------------------------------------------------------------ (d) 1000 idle TLS


@pytest.fixture
def nofile_limit() -> Iterator[int]:
    """Raise this process's open-files limit to the hard limit for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_thousand_idle_tls_connections(fe: FeProcess, nofile_limit: int) -> None:
    """1000 TLS connections with complete handshakes stay open and idle while another client's
    OPTIONS over TLS and UDP is answered."""
    count = 1000
    if nofile_limit < count + 200:
        pytest.skip(f"open-files limit {nofile_limit} is too low for {count} connections")
    ctx = fe.ssl_context()
    addr = fe.addr("tls")

    def connect(_: int) -> ssl.SSLSocket:
        raw = socket.create_connection(addr, timeout=30)
        try:
            return ctx.wrap_socket(raw, server_hostname=fe.fqdn)  # handshake completes here
        except BaseException:
            raw.close()
            raise

    held: list[ssl.SSLSocket] = []
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            held.extend(pool.map(connect, range(count)))
        assert len(held) == count
        assert all(s.version() in ("TLSv1.2", "TLSv1.3") for s in held)
        # Another client is served while they are all open.
        assert _options(fe, "tls") == 200
        assert _options(fe, "udp") == 200
        # The idle connections are alive: the first and the last still get answers.
        for sock in (held[0], held[-1]):
            sock.sendall(options_request("tls", addr))
            assert status_of(read_message(sock, ANSWER)) == 200
        assert fe.running
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()


# ------------------------------------------------------------------------ (e) keep-alive


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_crlf_keepalive_ping_gets_pong(fe: FeProcess, transport: str) -> None:
    """RFC 5626 §3.5.1: a CRLFCRLF ping is answered with one CRLF; the flow keeps working."""
    with _stream(fe, transport) as stream:
        for _ in range(2):
            stream.send(b"\r\n\r\n")
            pong = stream.recv_raw(ANSWER)
            assert pong == b"\r\n", pong
        response = stream.request(options_request(transport, fe.addr(transport)), ANSWER)
        assert status_of(response) == 200, response


# ---------------------------------------------------------------------- (f) TLS versions


def _s_client(openssl: str, fe: FeProcess, *version: str) -> subprocess.CompletedProcess[str]:
    host, port = fe.addr("tls")
    assert fe.ca is not None
    return subprocess.run(
        [
            openssl,
            "s_client",
            "-connect",
            f"{host}:{port}",
            "-servername",
            fe.fqdn,
            "-CAfile",
            str(fe.ca),
            *version,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_openssl_handshake(fe: FeProcess, openssl: str, version: str) -> None:
    proc = _s_client(openssl, fe, f"-tls{version.replace('.', '_')}")
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"New, TLSv{version}, Cipher is " in out, out
    assert re.search(r"Cipher is (?!\(NONE\))\S+", out), out
    assert "Verify return code: 0 (ok)" in out, out
    if version == "1.2":
        assert re.search(rf"Protocol\s*:\s*TLSv{version}", out), out


def test_openssl_tls11_refused_by_server(fe: FeProcess, openssl: str) -> None:
    """TLS 1.1 is refused by the FE. SECLEVEL=0 lets OpenSSL 3's client offer TLS 1.1 at all,
    so the ClientHello demonstrably goes out and the refusal is the server's."""
    proc = _s_client(openssl, fe, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    out, err = proc.stdout, proc.stderr
    assert proc.returncode != 0, out + err
    assert "no protocols available" not in err, f"the client refused TLS 1.1 itself:\n{err}"
    written = re.search(r"handshake has read (\d+) bytes and written (\d+) bytes", out)
    assert written and int(written.group(2)) > 0, f"no ClientHello was sent:\n{out}"
    assert "Cipher is (NONE)" in out, out
    # The FE answers a TLS 1.1 ClientHello with a protocol_version alert or by closing.
    assert re.search(r"alert protocol version|unexpected eof while reading", err), err
    assert _options(fe, "tls") == 200


# ----------------------------------------------------------------------------- (g) sipsak


def test_sipsak_options_over_udp(fe: FeProcess, sipsak: str) -> None:
    host, port = fe.addr("udp")
    proc = subprocess.run(
        [sipsak, "-s", f"sip:ping@{host}:{port}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- (h) SIGTERM


def test_sigterm_with_open_connections_exits_0(start_fe: Callable[..., FeProcess]) -> None:
    """SIGTERM while TCP and TLS connections are open (idle, mid-message, after a request):
    the FE closes them and exits 0 within the stop deadline."""
    fe = start_fe(name="fe-sigterm")
    streams = [_stream(fe, t) for t in ("tcp", "tls", "tcp", "tls")]
    try:
        streams[0].send(b"OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1")
        for stream in streams[1:3]:
            addr = fe.addr(stream.transport)
            assert status_of(stream.request(options_request(stream.transport, addr), ANSWER)) == 200
        assert fe.stop(timeout=10) == 0, fe.log_tail()
        for stream in streams:
            assert stream.wait_closed(ANSWER), f"{stream.transport} connection left open"
    finally:
        for stream in streams:
            stream.close()


# ------------------------------------------------------------------------- (i) bad config


def _serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*registrar_command(), "serve", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--listen", "bogus"], "--listen"),
        (["--listen", "tcp:127.0.0.1:notaport"], "--listen"),
        (["--listen", "tls:127.0.0.1:0"], "--cert"),
        (["--listen", "tcp:127.0.0.1:0", "--max-message-size", "0"], "--max-message-size"),
        (["--listen", "tcp:127.0.0.1:0", "--header-timeout", "0"], "--header-timeout"),
    ],
)
def test_bad_configuration_exits_2(args: list[str], option: str) -> None:
    proc = _serve(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert option in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_missing_cert_file_exits_2(tmp_path: Path) -> None:
    proc = _serve(
        "--listen",
        "tls:127.0.0.1:0",
        "--cert",
        str(tmp_path / "no.crt"),
        "--key",
        str(tmp_path / "no.key"),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--cert" in proc.stderr, proc.stderr


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", free_port("tcp")))
        taken.listen()
        port = taken.getsockname()[1]
        # (its own state directory: the default, ./state, would be the caller's working tree)
        proc = _serve("--listen", f"tcp:127.0.0.1:{port}", "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot listen" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_sigint_also_stops_cleanly(start_fe: Callable[..., FeProcess]) -> None:
    fe = start_fe(transports=("udp",), name="fe-sigint")
    assert fe.proc is not None
    fe.signal(signal.SIGINT)
    assert fe.proc.wait(ANSWER) == 0, fe.log_tail()
