"""Shared fixtures for tests that run real FE processes (DESIGN.md §9); the harness is
:mod:`procs`.

Fixtures:
    certs_dir   session: ``registrar certs init`` once (CA + ``fe1.local``).
    fe          one FE (tls + tcp + udp on free ports on 127.0.0.1), stopped at teardown with
                an exit-code-0 check. ``@pytest.mark.fe_args("--header-timeout", "2")`` adds
                arguments to its command line.
    start_fe    factory: ``start_fe(args=[...], transports=..., host=...)`` starts more FEs,
                each stopped (exit code 0 checked) at teardown.
    sipp, sipsak, openssl
                path of the command, or the test is skipped when it is not installed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import FeProcess, registrar_command, require_command


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "network: starts real processes on loopback")
    config.addinivalue_line(
        "markers", "fe_args(*args): extra 'registrar serve' arguments for the fe fixture"
    )


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the ``fe1.local`` certificate (SAN: fe1.local, localhost, 127.0.0.1)."""
    out = tmp_path_factory.mktemp("certs")
    proc = subprocess.run(
        [*registrar_command(), "certs", "init", "--out", str(out), "--name", "fe1.local"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"certs init failed: {proc.stdout}{proc.stderr}"
    for name in ("ca.crt", "fe1.local.crt", "fe1.local.key"):
        assert (out / name).is_file(), f"certs init did not write {name}"
    return out


def _stop_checked(fe: FeProcess) -> None:
    if fe.proc is None:
        return
    code = fe.stop(timeout=10)
    assert code == 0, f"{fe.name} exited with {code}:\n{fe.log_tail()}"


@pytest.fixture
def start_fe(tmp_path: Path, certs_dir: Path) -> Iterator[Callable[..., FeProcess]]:
    """Factory of ready FEs; each is stopped at teardown and must exit 0."""
    started: list[FeProcess] = []

    def start(**kwargs: Any) -> FeProcess:
        kwargs.setdefault("certs_dir", certs_dir)
        kwargs.setdefault("name", f"fe-{len(started) + 1}")
        fe = FeProcess(tmp_path, **kwargs)
        started.append(fe)
        return fe.start_ready()

    yield start
    errors = []
    for fe in started:
        try:
            _stop_checked(fe)
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


@pytest.fixture
def fe(request: pytest.FixtureRequest, start_fe: Callable[..., FeProcess]) -> FeProcess:
    """One ready FE with tls, tcp and udp listeners on 127.0.0.1 (stopped by ``start_fe``)."""
    marker = request.node.get_closest_marker("fe_args")
    args = [str(a) for a in marker.args] if marker else []
    return start_fe(args=args, name="fe1")


@pytest.fixture
def sipp() -> str:
    return require_command("sipp")


@pytest.fixture
def sipsak() -> str:
    return require_command("sipsak")


@pytest.fixture
def openssl() -> str:
    return require_command("openssl")
