"""Sustained load on one FE: sipp sends OPTIONS at 2000 calls/s for 20 s (40,000 calls) over
one TCP connection and over one UDP socket; every call must succeed (DESIGN.md §9).

A call fails when its 200 does not arrive within sipp's receive timeout (5 s) or another
answer comes, so the assertion is about correctness under load (no lost, late-beyond-5-s or
wrong answers), never about a measured speed. The FE's CPU time per request is recorded as a
line of test output (``pytest -rA``) for information only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import (
    REPO,
    FeProcess,
    cpu_seconds,
    options_request,
    run_sipp,
    sip_request,
    status_of,
)

pytestmark = pytest.mark.network

RATE = 2000  # calls per second
DURATION = 20  # seconds
SCENARIO = REPO / "tests" / "sipp" / "options.xml"


@pytest.fixture(scope="module")
def load_fe(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[FeProcess]:
    fe = FeProcess(
        tmp_path_factory.mktemp("load"),
        certs_dir=certs_dir,
        transports=("tcp", "udp"),
        name="fe-load",
    )
    fe.start_ready()
    yield fe
    code = fe.stop()
    assert code == 0, f"FE exited with {code}:\n{fe.log_tail()}"


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_sipp_options_load(
    load_fe: FeProcess,
    transport: str,
    sipp: str,
    tmp_path: Path,
) -> None:
    calls = RATE * DURATION
    cpu_before = cpu_seconds(load_fe.pid)
    result = run_sipp(
        SCENARIO, load_fe.addr(transport), transport, rate=RATE, calls=calls, workdir=tmp_path
    )
    cpu = cpu_seconds(load_fe.pid) - cpu_before
    # Figures for the log (pytest -rA shows them), never asserted.
    print(
        f"{transport}: FE CPU {cpu:.2f}s = {cpu / max(result.ok, 1) * 1e6:.0f} us/request; "
        f"sipp rate {result.stat.get('CallRate(C)')}/s, "
        f"retransmissions {result.counters.get('Retransmissions', 0)}"
    )
    assert load_fe.running, f"FE died under load:\n{load_fe.log_tail()}"
    assert result.stat, f"no sipp statistics: {result.describe()}"
    assert result.created == calls, result.describe()
    assert result.failed == 0, result.describe()
    assert result.ok == calls, result.describe()
    assert result.returncode == 0, result.describe()
    # Still serving, and nothing went wrong inside.
    addr = load_fe.addr(transport)
    assert status_of(sip_request(transport, addr, options_request(transport, addr), 10)) == 200
    assert "Traceback" not in load_fe.log_text(), load_fe.log_tail()
