"""The RFC 4475 torture messages against a running FE, over UDP and over TCP (DESIGN.md §9).

Every ``.dat`` file of the shared corpus is sent, byte for byte, to one FE process for the
whole module, and the answer is checked against the class in ``MANIFEST.toml``:

* ``valid`` requests are processed normally: a final response that is not 400/505 (OPTIONS
  gets 200; REGISTER for example.com, which the FE serves, is challenged with 401; methods
  this FE does not serve get 405/501).
* ``invalid`` requests get 400 (``badvers``: 505); where RFC 4475 allows leniency (``lwsstart``,
  ``trws``, ``baddate``, ``badaspec``) any answer below 500 is accepted.
* ``semantic`` requests get exactly the manifest status.
* Responses in the corpus are discarded: nothing comes back.

Over UDP a response to a request that parsed goes to the Via ``received`` address and the Via
sent-by port (RFC 3261 §18.2.2), 5060 for most of the corpus. The client therefore sends from a
loopback address of its own (``127.66.x.y``, so that port 5060 is free there; a new one for
each file) and listens on every port the message's Via header fields name.
"""

from __future__ import annotations

import random
import re
import select
import socket
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import FeProcess, SipStream, header_values, options_request, sip_request, status_of

CORPUS = Path(__file__).resolve().parents[2] / "shared/conformance/rfc4475"
MANIFEST: dict[str, dict[str, object]] = (
    tomllib.loads((CORPUS / "MANIFEST.toml").read_text())
    if (CORPUS / "MANIFEST.toml").is_file()
    else {}
)
NAMES = sorted(MANIFEST)

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(not MANIFEST, reason=f"RFC 4475 corpus not found at {CORPUS}"),
]

HEADER_TIMEOUT = 2.0  # --header-timeout of the module's FE (clerr over TCP waits for it)
ANSWER_TIMEOUT = 5.0  # generous: an answer that comes at all comes at once
SILENCE = 0.5  # window in which nothing may arrive (asserting absence)

RESPONSES = {"unreason", "noreason", "scalarlg", "bigcode", "bcast"}  # discard, never answer
LENIENT = {"lwsstart", "trws", "baddate", "badaspec"}  # RFC 4475 allows accepting these


def _load(name: str) -> bytes:
    return (CORPUS / f"{name}.dat").read_bytes()


def _expectation(name: str) -> str:
    entry = MANIFEST[name]
    if name in RESPONSES:
        return "no answer"
    if name in LENIENT:
        return "any answer < 500"
    cls = entry["class"]
    if cls == "valid":
        return "processed"
    if cls == "invalid":
        return "505" if name == "badvers" else "400"
    return str(entry["status"])


def _check(name: str, response: bytes | None, transport: str) -> None:
    """Assert the FE's answer to corpus file ``name`` matches the manifest."""
    expect = _expectation(name)
    status = status_of(response)
    shown = response[:300] if response else response
    where = f"{name} over {transport}: expected {expect}, got {shown!r}"
    if expect == "no answer":
        assert response is None, where
        return
    assert status is not None, where
    assert status >= 200, where  # a final response
    if expect == "processed":
        assert status not in (400, 505), where
        assert status < 500 or status == 501, where  # never 500 (a crash) or 513
        if MANIFEST_METHOD.get(name) == "OPTIONS":
            assert status == 200, where
    elif expect == "any answer < 500":
        assert status < 500, where
    else:
        assert status == int(expect), where
        if name == "bext01":
            assert header_values(response or b"", "Unsupported"), f"{where}: no Unsupported"


def _method(data: bytes) -> str:
    return data.split(b" ", 1)[0].decode("ascii", "replace")


MANIFEST_METHOD = {name: _method(_load(name)) for name in NAMES} if MANIFEST else {}


# --------------------------------------------------------------------------------- fixtures


_TOP_VIA = re.compile(
    rb"^(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*[!-~]+[ \t]+([^;,\s]+)([^\r\n]*)",
    re.IGNORECASE | re.MULTILINE,
)


def _transaction_key(data: bytes) -> tuple[bytes, ...] | None:
    """Roughly the RFC 3261 §17.2.3 server transaction key: top Via branch and sent-by, and
    the method. ``None`` when there is no such Via (those files never collide)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    via = _TOP_VIA.search(head)
    if via is None:
        return None
    branch = re.search(rb";[ \t]*branch[ \t]*=[ \t]*([^;,\s]+)", via.group(2), re.IGNORECASE)
    method = head.split(b" ", 1)[0]
    return (branch.group(1) if branch else b"", via.group(1).lower(), method)


def _rounds() -> dict[str, int]:
    """Which FE of its transport each file goes to: files sharing a transaction key go to
    different FEs.

    RFC 4475 reuses branch values: ``cparam01``/``cparam02``, ``escnull``/``regescrt`` and
    ``unkscm``/``novelsc`` have the same branch, sent-by and method. The FE matches server
    transactions by exactly those (RFC 3261 §17.2.3), so the second of a pair sent to the same
    FE within a transaction's lifetime (32 s) is, correctly, a retransmission of the first:
    absorbed, and answered over the first one's flow.
    """
    seen: dict[tuple[bytes, ...], int] = {}
    rounds = {}
    for name in NAMES:
        key = _transaction_key(_load(name))
        rounds[name] = seen.get(key, 0) if key is not None else 0
        if key is not None:
            seen[key] = rounds[name] + 1
    return rounds


ROUNDS = _rounds() if MANIFEST else {}


class CorpusFes:
    """FEs for the corpus, started on first use: one per (transport under test, round).

    The same file goes to different FEs over UDP and over TCP for the same reason as in
    :func:`_rounds`: by RFC 3261 §17.2.3 the TCP copy would match the UDP copy's transaction.
    Each FE listens on TCP and UDP (for the final OPTIONS check) with ``--header-timeout 2``.
    """

    def __init__(self, workdir: Path, certs_dir: Path) -> None:
        self.workdir = workdir
        self.certs_dir = certs_dir
        self.fes: dict[tuple[str, int], FeProcess] = {}

    def get(self, transport: str, round_: int = 0) -> FeProcess:
        key = (transport, round_)
        if key not in self.fes:
            fe = FeProcess(
                self.workdir,
                certs_dir=self.certs_dir,
                transports=("tcp", "udp"),
                # The corpus REGISTERs are for example.com: serve it, with digest and an
                # empty user directory, so they are challenged (RFC 4475 §3.3.7: 401).
                args=[
                    "--header-timeout", str(HEADER_TIMEOUT),
                    "--domain", "example.com",
                    "--users-db", str(self.workdir / f"users-{transport}-{round_}.db"),
                ],
                name=f"fe-conformance-{transport}-{round_}",
            )
            self.fes[key] = fe
            fe.start_ready()
        return self.fes[key]

    def for_file(self, transport: str, name: str) -> FeProcess:
        return self.get(transport, ROUNDS[name])


@pytest.fixture(scope="module")
def corpus_fes(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[CorpusFes]:
    fes = CorpusFes(tmp_path_factory.mktemp("conformance"), certs_dir)
    try:
        yield fes
    finally:
        codes = {fe.name: (fe.stop(), fe) for fe in fes.fes.values() if fe.proc is not None}
    bad = {name: fe.log_tail() for name, (code, fe) in codes.items() if code != 0}
    assert not bad, f"FEs exited with a non-zero code: {bad}"


_used_ips: set[str] = set()


def fresh_client_ip() -> str:
    """A loopback address not used before in this run, where UDP port 5060 is free.

    Each UDP exchange uses its own: an INVITE's final response is retransmitted until an ACK
    arrives (RFC 3261 §17.2.1), and those retransmissions must not reach a later test.
    """
    rng = random.Random()
    for _ in range(100):
        ip = f"127.66.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"
        if ip in _used_ips:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((ip, 5060))
        except OSError:
            continue
        _used_ips.add(ip)
        return ip
    pytest.skip("no loopback address with UDP port 5060 free")


_VIA_PORT = re.compile(rb"^(?:via|v)[ \t]*:.*?$", re.IGNORECASE | re.MULTILINE)


def _via_ports(data: bytes) -> set[int]:
    """Ports a response may be sent to: 5060 and every explicit sent-by port in Via lines."""
    ports = {5060}
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in _VIA_PORT.findall(head):
        for match in re.finditer(rb"[\w.\]-]:(\d{2,5})\b", line.split(b":", 1)[1]):
            port = int(match.group(1))
            if 1024 <= port <= 65535:
                ports.add(port)
    return ports


def udp_exchange(
    ip: str, fe_addr: tuple[str, int], data: bytes, timeout: float, linger: float = 0.0
) -> list[bytes]:
    """Send ``data`` from ``(ip, 5060)``; collect datagrams arriving on any Via port of ``ip``.

    Returns after the first datagram plus ``linger`` seconds, or after ``timeout`` seconds
    without any.
    """
    socks = []
    try:
        for port in sorted(_via_ports(data)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind((ip, port))
        sender = next(s for s in socks if s.getsockname()[1] == 5060)
        sender.sendto(data, fe_addr)
        received: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return received
            ready, _, _ = select.select(socks, [], [], remaining)
            for sock in ready:
                received.append(sock.recv(65536))
            if received and deadline > time.monotonic() + linger:
                deadline = time.monotonic() + linger
    finally:
        for sock in socks:
            sock.close()


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", NAMES)
def test_udp(name: str, corpus_fes: CorpusFes) -> None:
    fe = corpus_fes.for_file("udp", name)
    data = _load(name)
    expect = _expectation(name)
    client_ip = fresh_client_ip()
    if expect == "no answer":
        got = udp_exchange(client_ip, fe.addr("udp"), data, timeout=SILENCE)
        assert got == [], f"{name} over udp: a response was answered: {got[0][:200]!r}"
        return
    # dblreq: only the first message of the datagram counts; wait a little for a second answer.
    linger = SILENCE if name == "dblreq" else 0.0
    got = udp_exchange(client_ip, fe.addr("udp"), data, ANSWER_TIMEOUT, linger)
    assert got, f"{name} over udp: no answer (expected {expect})"
    if name == "dblreq":
        assert len(got) == 1, f"dblreq over udp: {len(got)} answers, expected exactly one"
    _check(name, got[0], "udp")


@pytest.mark.parametrize("name", NAMES)
def test_tcp(name: str, corpus_fes: CorpusFes) -> None:
    fe = corpus_fes.for_file("tcp", name)
    data = _load(name)
    if b"\r\n\r\n" not in data:
        # baddn.dat is printed in RFC 4475 without the empty line that ends its header block
        # (it has no body). A datagram ends the message anyway, but on a stream the FE would
        # wait for the rest until its header timeout: complete the header block.
        data += b"\r\n"
    with SipStream("tcp", fe.addr("tcp")) as stream:
        stream.send(data)
        if name == "clerr":
            # Content-Length 9999 with fewer bytes sent: the FE waits for the body, then gives
            # up after its header timeout and closes without answering (RFC 4475 §3.1.2.2).
            closed = stream.wait_closed(HEADER_TIMEOUT + 3.0)
            assert closed, "clerr over tcp: connection still open after the header timeout"
            assert stream.recv_message(0.01) is None, (
                f"clerr over tcp: unexpected answer {bytes(stream.buffer)[:200]!r}"
            )
            return
        if _expectation(name) == "no answer":
            _check(name, stream.recv_message(SILENCE), "tcp")
            return
        _check(name, stream.recv_message(ANSWER_TIMEOUT), "tcp")


def test_still_serving_after_corpus(corpus_fes: CorpusFes) -> None:
    """Runs after the parametrized tests (file order): every corpus FE answers OPTIONS over
    both transports and logged no traceback."""
    assert corpus_fes.fes, "no corpus FE ran"
    for fe in corpus_fes.fes.values():
        assert fe.running, f"{fe.name} died:\n{fe.log_tail()}"
        for transport in ("udp", "tcp"):
            addr = fe.addr(transport)
            msg = options_request(transport, addr)
            response = sip_request(transport, addr, msg, ANSWER_TIMEOUT)
            assert status_of(response) == 200, f"{fe.name}: OPTIONS over {transport}: {response!r}"
        log = fe.log_text()
        assert "Traceback" not in log, log[-3000:]
