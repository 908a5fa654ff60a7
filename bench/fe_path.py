#!/usr/bin/env python3
"""CPU cost of the whole in-process FE path, without sockets.

``bytes → framing (TCP) → parse → validate → Via stamp → transaction layer → dispatcher →
inspection → service (OPTIONS, REGISTER) → location store → response → encode → transport
write``, driven exactly as asyncio drives it: a real :class:`registrar.server.FrontEnd`
(started with no listeners, so its object graph is the production one, including the
location store's SQLite write-behind thread), a :class:`StreamConnection` or
:class:`DatagramEndpoint` given a fake asyncio transport that only counts the bytes written.

The requests are those of ``tests/sipp/options.xml``, ``register_noauth.xml`` and
``bench_register_auth.xml`` as sipp 3.6 sends them (same headers, same spelling,
``transport=TCP`` in upper case ...), each one distinct (fresh branch and Call-ID; REGISTER: a
new AOR ``sip:user<run>x<N>@example.com``), so no parsed view or binding is reused, and the
transaction table grows as it does under sipp (UDP: 32 s of server transactions).

``auth`` is ``bench/register.py``'s digest scenario: per AOR a REGISTER without credentials
(answered 401 with an MD5 challenge, ``--digest-algorithms MD5``) and one with sipp's
``Authorization`` (MD5, ``qop=auth``, ``nc=00000001``) answered 200; figures are per
REGISTER, as there. The users are imported into a user directory before the FE starts; the
second REGISTER's nonce is made with the FE's own nonce secret when the requests are built,
outside the measured run (the client's digest is not the server's cost).

Figures, in µs per request, over ``--repeat`` runs of ``--number`` requests each:

``cpu`` (best run) and ``mean`` (all runs)
    :func:`time.process_time` over the run, divided by the request count: CPU of every
    thread of the process, so the location writer thread's SQLite work is included (the
    run ends with :meth:`LocationService.flush`, so that its writes land inside the run).
    Garbage collection makes UDP runs uneven (a full collection lands in one run), so
    compare UDP figures by ``mean``.
``gc mean``
    the part of ``mean`` spent in the cyclic garbage collector (:data:`gc.callbacks`).
``wall``
    :func:`time.perf_counter` over the run, divided by the request count.

Command line::

    python bench/fe_path.py [register|auth|options|all] [--transport tcp,udp] [--number 20000]
                            [--repeat 5] [--warmup N] [--rate R] [--batch 1] [--profile]
                            [--no-persist] [--default-gc] [--json]

``--warmup N`` sets the requests of the unmeasured first run (default ``min(2000, number)``).
``--rate R`` paces the measured runs at about R requests per second (an asyncio sleep after
each: the CPU idles between requests as a server under sipp does and its caches go cold,
which is closer to ``bench/cpu.py`` and slower to run; the figures then include the event
loop's own cost of each sleep and wake-up, tens of µs on a VM). ``--batch N`` feeds N requests per
``data_received`` call (TCP pipelining; 1 = one request per read, as at a moderate rate).
``--profile`` runs one pass under :mod:`cProfile` and prints the top functions by own time.
``--no-persist`` keeps bindings in memory only. The FE's garbage-collector tuning
(``registrar.server.tune_gc``, as ``run_frontend`` applies it) is applied after start-up
when it exists; ``--default-gc`` keeps CPython's defaults.
Tests never assert on these figures (DESIGN.md §9).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registrar import server
from registrar.register import RegistrarSettings
from registrar.server import FrontEnd, FrontEndConfig
from registrar.users import UserStore
from sipstack.auth import compute_ha1, compute_response
from sipstack.transport.datagram import DatagramEndpoint
from sipstack.transport.stream import StreamConnection

LOCAL = ("127.0.0.1", 5060)
PEER = ("127.0.0.1", 40000)

_REGISTER = (  # as tests/sipp/register_noauth.xml sends it (sipp 3.6)
    "REGISTER sip:example.com SIP/2.0\r\n"
    "Via: SIP/2.0/{T} 127.0.0.1:40000;branch=z9hG4bK-{run}-{n}-0;rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: <sip:user{run}x{n}@example.com>\r\n"
    "From: <sip:user{run}x{n}@example.com>;tag={run}SIPpTag00{n}\r\n"
    "Call-ID: {n}-{run}@127.0.0.1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:user{run}x{n}@127.0.0.1:40000;transport={T}>\r\n"
    "Expires: 3600\r\n"
    "User-Agent: sipp-bench\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)
_OPTIONS = (  # as tests/sipp/options.xml sends it (sipp 3.6)
    "OPTIONS sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/{T} 127.0.0.1:40000;branch=z9hG4bK-{run}-{n}-0;rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: <sip:service@127.0.0.1:5060>\r\n"
    "From: <sip:sipp@127.0.0.1:40000>;tag={run}SIPpTag00{n}\r\n"
    "Call-ID: {n}-{run}@127.0.0.1\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Contact: <sip:sipp@127.0.0.1:40000;transport={T}>\r\n"
    "Accept: application/sdp\r\n"
    "User-Agent: sipp-bench\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)
_REGISTER_AUTH = _REGISTER.replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER").replace(
    "Expires: 3600\r\n", "{auth}Expires: 3600\r\n"
)
TEMPLATES = {"register": _REGISTER, "options": _OPTIONS}
REALM = "example.com"
PASSWORD = "bench-password"


class GcTimer:
    """CPU seconds spent in the cyclic garbage collector (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.seconds += time.process_time() - self._start


GC = GcTimer()


class FakeStreamTransport:
    """Enough of asyncio.Transport for StreamConnection: counts writes and bytes."""

    def __init__(self) -> None:
        self.writes = 0
        self.nbytes = 0
        self.last = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": PEER, "sockname": LOCAL}.get(name, default)

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.nbytes += len(data)
        self.last = data

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class FakeDatagramTransport(FakeStreamTransport):
    """Enough of asyncio.DatagramTransport for DatagramEndpoint."""

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.write(data)


def make_requests(
    mode: str, transport: str, run: int, number: int, fe: FrontEnd | None = None
) -> list[bytes]:
    """``number`` requests of ``mode`` for ``transport``; ``auth``: ``number // 2`` AORs,
    each a REGISTER without and one with credentials (a nonce from ``fe``'s verifier)."""
    t = transport
    if mode != "auth":
        template = TEMPLATES[mode]
        return [template.format(T=t.upper(), t=t, run=run, n=n).encode() for n in range(number)]
    assert fe is not None and fe.register is not None
    nonces = fe.register._verifiers[REALM].nonces
    requests = []
    for n in range(number // 2):
        user = f"user{run}x{n}"
        ha1 = compute_ha1(user, REALM, PASSWORD, "MD5")
        nonce = nonces.make(time.time(), REALM)
        cnonce = f"{n:08x}"
        response = compute_response(
            ha1, "REGISTER", "sip:example.com", nonce, "00000001", cnonce, "auth", "MD5"
        )
        auth = (  # as sipp 3.6 writes it
            f'Authorization: Digest username="{user}",realm="{REALM}",cnonce="{cnonce}",'
            f'nc=00000001,qop=auth,uri="sip:example.com",nonce="{nonce}",'
            f'response="{response}",algorithm=MD5\r\n'
        )
        fields = {"T": t.upper(), "t": t, "run": run, "n": n}
        requests.append(_REGISTER.format(**fields).encode())
        requests.append(_REGISTER_AUTH.format(auth=auth, **fields).encode())
    return requests


def write_users(path: Path, runs: int, number: int) -> int:
    """Import the AORs of ``auth`` runs ``0 .. runs - 1`` (``number // 2`` each) into a new
    user directory at ``path``; returns the count."""
    with tempfile.NamedTemporaryFile("w", suffix=".csv", newline="", delete=False) as f:
        f.write("aor,password\n")
        for run in range(runs):
            for n in range(number // 2):
                f.write(f"sip:user{run}x{n}@{REALM},{PASSWORD}\n")
    try:
        with UserStore(path) as store:
            return store.import_csv(f.name)
    finally:
        Path(f.name).unlink()


async def _start(
    persist: bool, state: Path, tune_gc: bool = True, users_db: Path | None = None
) -> FrontEnd:
    if users_db is not None:
        settings = RegistrarSettings(auth="digest", digest_algorithms=("MD5",))
    else:
        settings = RegistrarSettings(auth="off")
    config = FrontEndConfig(
        listen=[],
        fqdn="fe.example.com",
        domains=["example.com"],
        state_dir=state if persist else None,
        users_db=users_db,
        registrar=settings,
    )
    fe = FrontEnd(config)
    fe.policy.local_hosts.add("127.0.0.1")
    await fe.start()
    if tune_gc and hasattr(server, "tune_gc"):
        server.tune_gc()  # as run_frontend() does
    return fe


async def _one_run(
    fe: FrontEnd,
    mode: str,
    transport: str,
    run: int,
    number: int,
    batch: int,
    profile: cProfile.Profile | None = None,
    pace_s: float = 0.0,
) -> dict[str, float]:
    requests = make_requests(mode, transport, run, number, fe)
    endpoint = fe.endpoint
    if transport == "udp":
        fake = FakeDatagramTransport()
        udp = DatagramEndpoint(endpoint)
        udp.connection_made(fake)  # type: ignore[arg-type]
        recv = udp.datagram_received
        chunks = requests

        def feed(data: bytes) -> None:
            recv(data, PEER)
    else:
        fake = FakeStreamTransport()
        conn = StreamConnection(endpoint, transport, fe.config.limits)
        conn.connection_made(fake)  # type: ignore[arg-type]
        feed = conn.data_received  # type: ignore[assignment]
        chunks = [b"".join(requests[i : i + batch]) for i in range(0, number, batch)]
    await asyncio.sleep(0)
    if profile is not None:
        profile.enable()
    gc0 = GC.seconds
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    pace = pace_s
    for i, chunk in enumerate(chunks):
        feed(chunk)
        if pace:
            await asyncio.sleep(pace)  # --rate: one request per tick, caches go cold between
        elif i & 255 == 255:
            await asyncio.sleep(0)  # let call_soon work (e.g. uvloop write flushes) run
    await asyncio.sleep(0)
    if fe.location is not None:
        await asyncio.to_thread(fe.location.flush)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    if profile is not None:
        profile.disable()
    expected = b"SIP/2.0 200 OK"
    if fake.writes == 0 or not fake.last.startswith(expected):
        raise SystemExit(f"{mode}/{transport}: unexpected answer {fake.last[:200]!r}")
    if transport != "udp":
        conn.connection_lost(None)
    return {
        "gc_us": (GC.seconds - gc0) / number * 1e6,
        "cpu_us": cpu / number * 1e6,
        "wall_us": wall / number * 1e6,
        "writes_per_req": fake.writes / number,
        "bytes_per_req": fake.nbytes / number,
    }


async def _bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    modes = ["options", "register", "auth"] if args.mode == "all" else [args.mode]
    run = 0
    for mode in modes:
        for transport in args.transport.split(","):
            # A fresh FE per (mode, transport), as bench/cpu.py starts a fresh server.
            with tempfile.TemporaryDirectory(prefix="fe_path-") as tmp:
                users_db = None
                if mode == "auth":  # every run's AORs (warm-up, measured runs, profile)
                    users_db = Path(tmp) / "users.sqlite"
                    await asyncio.to_thread(
                        write_users, users_db, run + args.repeat + 2, args.number
                    )
                fe = await _start(
                    not args.no_persist, Path(tmp) / "state", not args.default_gc, users_db
                )
                try:
                    runs = []
                    # warm-up (imports, caches)
                    warmup = min(2000, args.number) if args.warmup is None else args.warmup
                    if warmup:
                        await _one_run(fe, mode, transport, run, warmup, args.batch)
                    run += 1
                    for _ in range(args.repeat):
                        runs.append(
                            await _one_run(
                                fe,
                                mode,
                                transport,
                                run,
                                args.number,
                                args.batch,
                                pace_s=1.0 / args.rate if args.rate else 0.0,
                            )
                        )
                        run += 1
                    best = min(runs, key=lambda r: r["cpu_us"])
                    results.append(
                        {
                            "mode": mode,
                            "transport": transport,
                            "cpu_us": best["cpu_us"],
                            "wall_us": min(r["wall_us"] for r in runs),
                            "cpu_us_mean": sum(r["cpu_us"] for r in runs) / len(runs),
                            "gc_us_mean": sum(r["gc_us"] for r in runs) / len(runs),
                            "writes_per_req": best["writes_per_req"],
                            "bytes_per_req": best["bytes_per_req"],
                        }
                    )
                    if args.profile:
                        prof = cProfile.Profile()
                        await _one_run(
                            fe, mode, transport, run, args.number, args.batch, profile=prof
                        )
                        run += 1
                        print(f"\n=== profile {mode}/{transport} ===", file=sys.stderr)
                        stats = pstats.Stats(prof, stream=sys.stderr)
                        stats.sort_stats("tottime").print_stats(args.profile_top)
                finally:
                    await fe.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "mode", nargs="?", default="all", choices=["all", "options", "register", "auth"]
    )
    parser.add_argument("--transport", default="tcp,udp")
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-top", type=int, default=40)
    parser.add_argument("--no-persist", action="store_true")
    parser.add_argument("--default-gc", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.no_uvloop:
        results = asyncio.run(_bench(args))
    else:
        import uvloop

        results = uvloop.run(_bench(args))
    if args.json:
        print(json.dumps({"python": platform.python_version(), "results": results}, indent=1))
        return 0
    print(
        f"{'mode':<9} {'transport':<9} {'cpu µs/req':>10} {'mean':>8} {'gc mean':>8} "
        f"{'wall µs':>8} {'writes/req':>10}"
    )
    for r in results:
        print(
            f"{r['mode']:<9} {r['transport']:<9} {r['cpu_us']:>10.1f} {r['cpu_us_mean']:>8.1f} "
            f"{r['gc_us_mean']:>8.1f} {r['wall_us']:>8.1f} {r['writes_per_req']:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
