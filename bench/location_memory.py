#!/usr/bin/env python3
"""Memory per binding of the location service (``registrar/location.py``; DESIGN.md §9).

Fills a :class:`~registrar.location.LocationService` with N bindings (default 100,000) of
realistic size and reports the bytes each binding costs, two ways, each in a fresh child
process so that one measurement does not disturb the other:

``rss``
    ``VmRSS`` from ``/proc/self/status`` after filling, minus ``VmRSS`` before (after the
    imports, the service's ``open()`` and a ``gc.collect()``), divided by N. This is what the
    operating system charges: it includes allocator slack, the index, the expiry buckets, the
    flow index, and (with persistence on) SQLite's page cache and WAL. Target: ≤ 1024 bytes.
``tracemalloc``
    Python heap bytes traced by :mod:`tracemalloc` (current, after filling) per binding, and
    the peak while filling. This excludes SQLite's own memory and allocator slack.

Field sizes per binding (generated, each a fresh string as a parser would produce): AOR
``sip:userNNNNNN@contoso.com`` (26 chars, shared by the AOR's bindings), contact ~70 chars,
Call-ID ~40, ``+sip.instance`` 47 (``<urn:uuid:...>``) with ``reg-id``, source ~25
(``tls:ip:port``), User-Agent ~20 (one of a few models), a distinct flow id per binding (a
TLS connection each), CSeq, q absent, no Path. ``--per-aor`` sets how many bindings each AOR
has (1 is the worst case for per-AOR overhead).

With persistence on (default) the bindings file lives in a temporary directory and the fill
calls ``flush()`` every 1,000 puts, as the writer thread would at ~5,000 REGISTER/s with its
0.2 s interval; the pending-change queue therefore stays small, as in production.

Usage::

    .venv/bin/python bench/location_memory.py [--bindings 100000] [--per-aor 1]
                                              [--no-persist] [--json]

Prints a table (or ``--json``) on stdout. Linux only (``/proc``). Never asserts on figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_BYTES = 1024
USER_AGENTS = (
    "Lync 2010 (4.0.7577)",
    "Yealink SIP-T46S 66",
    "Polycom/5.9.5 VVX",
    "baresip v3.10.1 (x)",
    "Zoiper rv2.10.19.4",
)


def vm_rss() -> int:
    """Resident set size of this process in bytes (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_binding(rng: random.Random, n: int, per_aor: int, now: float) -> Any:
    """The n-th binding: realistic field sizes, every string a fresh object."""
    from registrar.location import Binding

    user = n // per_aor
    a, b = rng.randrange(256), rng.randrange(1, 255)
    port = rng.randrange(1024, 65536)
    line = rng.getrandbits(32)
    return Binding(
        aor=f"sip:user{user:06d}@contoso.com",
        # ~70 chars: sip:user000042@198.51.100.27:50412;transport=tls;ob;line=7f3a9c01
        contact=f"sip:user{user:06d}@198.51.{a}.{b}:{port};transport=tls;ob;line={line:08x}",
        expires_at=now + 3600 + rng.random() * 600,
        call_id=f"{uuid.UUID(int=rng.getrandbits(128)).hex}@10.0.{a}.{b}",
        cseq=rng.randrange(1, 100_000),
        instance_id=f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}>",
        reg_id=1 + n % per_aor,
        flow_id=1_000_000 + n,
        source=f"tls:198.51.{a}.{b}:{port}",
        user_agent="".join(USER_AGENTS[n % len(USER_AGENTS)]),
        registered_at=now - rng.random() * 86400,
    )


def child(mode: str, bindings: int, per_aor: int, persist: bool) -> dict[str, Any]:
    """One measurement in this (fresh) process; returns its figures."""
    from registrar.location import LocationService

    rng = random.Random(5061)
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="location-bench-") as tmp:
        db = Path(tmp) / "bindings.sqlite" if persist else None
        store = LocationService(db)
        store.open()
        # warm-up, so that first-use allocations (code paths, caches) are not counted
        warm = [make_binding(rng, bindings + i, per_aor, now) for i in range(100)]
        for b in warm:
            store.put(b)
        for b in warm:
            store.remove_aor(b.aor)
        del warm, b
        store.flush()
        gc.collect()
        if mode == "tracemalloc":
            tracemalloc.start()
        before_traced = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else 0
        rss_before = vm_rss()
        t0 = time.process_time()
        for i in range(bindings):
            store.put(make_binding(rng, i, per_aor, now))
            if persist and i % 1000 == 999:
                store.flush()
        store.flush()
        fill_s = time.process_time() - t0
        gc.collect()
        rss_after = vm_rss()
        result: dict[str, Any] = {
            "mode": mode,
            "bindings": len(store),
            "aors": store.aor_count,
            "per_aor": per_aor,
            "persist": persist,
            "rss_before": rss_before,
            "rss_after": rss_after,
            "rss_bytes_per_binding": (rss_after - rss_before) / bindings,
            "fill_seconds": fill_s,
        }
        if mode == "tracemalloc":
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            result["traced_bytes_per_binding"] = (current - before_traced) / bindings
            result["traced_peak_bytes_per_binding"] = (peak - before_traced) / bindings
        if persist:
            assert db is not None
            store.close()
            result["db_bytes_per_binding"] = (
                sum(p.stat().st_size for p in db.parent.iterdir() if p.name.startswith(db.name))
                / bindings
            )
        else:
            store.close()
    return result


def speed_child(bindings: int, per_aor: int, persist: bool) -> dict[str, Any]:
    """CPU cost of the hot-path operations (µs each), bindings generated beforehand.

    Process CPU time (``time.process_time``: every thread, so the writer thread's share of
    persisting each change is included, as it is in production), not wall time, so that other
    load on the machine does not inflate the figures. ``flush()`` after each phase charges
    that phase with its own writes.
    """
    from registrar.location import LocationService

    rng = random.Random(5062)
    now = time.time()
    fresh = [make_binding(rng, i, per_aor, now) for i in range(bindings)]
    refresh = [make_binding(random.Random(5062), i, per_aor, now) for i in range(0, bindings, 10)]
    aors = [b.aor for b in fresh[:: max(1, bindings // 10_000)]]
    with tempfile.TemporaryDirectory(prefix="location-bench-") as tmp:
        store = LocationService(Path(tmp) / "bindings.sqlite" if persist else None)
        store.open()
        t0 = time.process_time()
        for b in fresh:
            store.put(b)
        store.flush()
        put_s = time.process_time() - t0
        t0 = time.process_time()
        for b in refresh:  # same aor/key: replaces (a REGISTER refresh)
            store.put(b)
        store.flush()
        refresh_s = time.process_time() - t0
        t0 = time.process_time()
        for aor in aors:
            store.lookup(aor)
        lookup_s = time.process_time() - t0
        # expire everything: sweep cost per expired binding
        t0 = time.process_time()
        swept = store.sweep(now + 10**6)
        store.flush()
        sweep_s = time.process_time() - t0
        t0 = time.process_time()
        store.close()
        close_s = time.process_time() - t0
    return {
        "put_us": put_s / bindings * 1e6,
        "refresh_put_us": refresh_s / len(refresh) * 1e6,
        "lookup_us": lookup_s / len(aors) * 1e6,
        "sweep_us_per_expired": sweep_s / max(1, len(swept)) * 1e6,
        "close_seconds": close_s,
    }


def run_child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter and return its JSON."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--bindings",
        str(args.bindings),
        "--per-aor",
        str(args.per_aor),
    ]
    if not args.persist:
        cmd.append("--no-persist")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", type=int, default=100_000, help="number of bindings")
    parser.add_argument("--per-aor", type=int, default=1, help="bindings per AOR (default 1)")
    parser.add_argument(
        "--no-persist", dest="persist", action="store_false", help="in memory only (no file)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", choices=("rss", "tracemalloc", "speed"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "speed":
        print(json.dumps(speed_child(args.bindings, args.per_aor, args.persist)))
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.bindings, args.per_aor, args.persist)))
        return 0
    rss = run_child("rss", args)
    traced = run_child("tracemalloc", args)
    speed = run_child("speed", args)
    figures = {
        "bindings": rss["bindings"],
        "aors": rss["aors"],
        "per_aor": args.per_aor,
        "persist": args.persist,
        "rss_bytes_per_binding": round(rss["rss_bytes_per_binding"], 1),
        "traced_bytes_per_binding": round(traced["traced_bytes_per_binding"], 1),
        "traced_peak_bytes_per_binding": round(traced["traced_peak_bytes_per_binding"], 1),
        "db_bytes_per_binding": round(rss.get("db_bytes_per_binding", 0.0), 1),
        "put_us": round(speed["put_us"], 2),
        "refresh_put_us": round(speed["refresh_put_us"], 2),
        "lookup_us": round(speed["lookup_us"], 2),
        "sweep_us_per_expired": round(speed["sweep_us_per_expired"], 2),
        "target_bytes_per_binding": TARGET_BYTES,
        "within_target": rss["rss_bytes_per_binding"] <= TARGET_BYTES,
        "python": sys.version.split()[0],
        "pid_rss": {"before": rss["rss_before"], "after": rss["rss_after"]},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    mode = "persisted (SQLite write-behind)" if args.persist else "in memory only"
    print(f"location service: {figures['bindings']} bindings, {figures['aors']} AORs, {mode}")
    print(f"  RSS delta          {figures['rss_bytes_per_binding']:8.1f} bytes/binding")
    print(f"  tracemalloc        {figures['traced_bytes_per_binding']:8.1f} bytes/binding")
    print(f"  tracemalloc peak   {figures['traced_peak_bytes_per_binding']:8.1f} bytes/binding")
    if args.persist:
        print(f"  bindings file      {figures['db_bytes_per_binding']:8.1f} bytes/binding")
    print(f"  put (new binding)  {figures['put_us']:8.2f} µs")
    print(f"  put (refresh)      {figures['refresh_put_us']:8.2f} µs")
    print(f"  lookup             {figures['lookup_us']:8.2f} µs")
    print(f"  sweep              {figures['sweep_us_per_expired']:8.2f} µs/expired binding")
    verdict = "within" if figures["within_target"] else "OVER"
    print(f"  target             {TARGET_BYTES:8d} bytes/binding ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
