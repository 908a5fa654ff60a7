#!/usr/bin/env python3
"""CPU cost of the SIP message layer: parse, validate and serialise one message.

For each sample message (a typical ~500-byte ``REGISTER`` as a softphone sends it, and a
typical ``OPTIONS`` keep-alive/heartbeat) this measures, in microseconds per message:

``parse+encode``
    :func:`sipstack.parser.parse_message` then :meth:`Message.encode` -- the framing cost a
    stateless element pays for every message it relays.
``parse+validate+encode``
    the same with :func:`sipstack.parser.validate_request` in between, which parses every
    header an element relies on (Via, From, To, Call-ID, CSeq, Max-Forwards, Contact,
    Expires, Request-URI) -- the cost a registrar pays before it looks at a ``REGISTER``.

Method: :mod:`timeit` runs each case ``--number`` times per repeat (every iteration parses
the bytes afresh, so no parsed view is reused), ``--repeat`` times; the figure reported is
the *minimum* over the repeats divided by ``--number`` (the least disturbed run -- on a busy
machine the mean mostly measures the other processes). The clock is the process's CPU time
(:func:`time.process_time`), so time spent descheduled on a loaded machine does not count.
Units: CPU µs per message, one thread, pure Python (no C extensions). Figures still vary
with the machine's load (shared caches, frequency): compare two versions in the same run.

``--sipstack DIR`` imports the ``sipstack`` package found in ``DIR`` instead of this
checkout's, to measure another version (e.g. an older copy) the same way.

Command line::

    python bench/parse.py [--number 20000] [--repeat 7] [--json] [--sipstack DIR]

``--json`` prints one JSON object ``{"python": ..., "unit": "cpu_us", "results": [{"message",
"bytes", "case", "us"}, ...]}`` instead of the table. Only the standard library and :mod:`sipstack`
are used. Tests never assert on these figures (DESIGN.md §9).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REGISTER = (
    b"REGISTER sip:contoso.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 192.0.2.15:49152;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Alice" <sip:alice@contoso.com>\r\n'
    b'From: "Alice" <sip:alice@contoso.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.contoso.com\r\n"
    b"CSeq: 314159 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.15:49152;transport=tls;ob>"
    b';+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1\r\n'
    b"Expires: 3600\r\n"
    b"Supported: path, outbound, gruu\r\n"
    b"User-Agent: ExamplePhone/1.2.3 (Linux)\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

OPTIONS = (
    b"OPTIONS sip:fe2.pool.contoso.com:5061;transport=tls SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS fe1.pool.contoso.com:5061;branch=z9hG4bKhjhs8ass877\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:fe2.pool.contoso.com>\r\n"
    b"From: <sip:fe1.pool.contoso.com>;tag=93810874\r\n"
    b"Call-ID: 843817637684230@fe1.pool.contoso.com\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Contact: <sip:fe1.pool.contoso.com:5061;transport=tls>\r\n"
    b"Accept: application/sdp\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

MESSAGES: dict[str, bytes] = {"REGISTER": REGISTER, "OPTIONS": OPTIONS}


def _cases() -> dict[str, Callable[[bytes], Callable[[], object]]]:
    """The measured cases, bound to the ``sipstack`` on ``sys.path`` (imported here)."""
    from sipstack.parser import parse_message, validate_request

    def parse_encode(data: bytes) -> Callable[[], object]:
        def run() -> object:
            return parse_message(data).encode()

        return run

    def parse_validate_encode(data: bytes) -> Callable[[], object]:
        def run() -> object:
            msg = parse_message(data)
            validate_request(msg)  # type: ignore[arg-type]
            return msg.encode()

        return run

    return {"parse+encode": parse_encode, "parse+validate+encode": parse_validate_encode}


def measure(func: Callable[[], object], number: int, repeat: int) -> float:
    """Minimum over ``repeat`` runs of ``number`` calls of ``func``: CPU µs per call."""
    func()  # warm caches and fail early on a broken message
    times = timeit.repeat(func, timer=time.process_time, number=number, repeat=repeat)
    return min(times) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=20000, help="calls per repeat")
    ap.add_argument("--repeat", type=int, default=7, help="repeats (the minimum is reported)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument(
        "--sipstack", type=Path, default=ROOT, help="directory holding the sipstack package"
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.sipstack.resolve()))
    cases = _cases()

    results = []
    for name, data in MESSAGES.items():
        for case, make in cases.items():
            us = measure(make(data), args.number, args.repeat)
            results.append({"message": name, "bytes": len(data), "case": case, "us": round(us, 2)})

    if args.json:
        doc = {"python": platform.python_version(), "unit": "cpu_us", "results": results}
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"Python {platform.python_version()}, CPU time, min of {args.repeat} x {args.number}"
            f" calls, sipstack from {args.sipstack}"
        )
        print(f"{'message':<10} {'bytes':>5}  {'case':<22} {'CPU µs/msg':>10}")
        for r in results:
            print(f"{r['message']:<10} {r['bytes']:>5}  {r['case']:<22} {r['us']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
