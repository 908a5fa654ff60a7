"""docker-compose.yml is written and validated, not run (no Docker engine in CI).

Checks that it agrees with examples/contoso-docker.toml (one service per FE with the FE's IP
and ``--fe``, the DNS service on the topology's DNS address) and, where Debian's
``docker-compose`` is installed, that ``docker-compose config`` accepts it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from registrar.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
TOPOLOGY = ROOT / "examples" / "contoso-docker.toml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_fe_has_a_service_with_its_ip() -> None:
    compose = _compose()
    topology = load_topology(TOPOLOGY)
    services = compose["services"]
    for fe in topology.all_front_ends():
        name = fe.fqdn.split(".")[0]
        service = services[name]
        assert service["command"][-2:] == ["--fe", fe.fqdn]
        assert service["networks"]["pool"]["ipv4_address"] == fe.ip
        assert str(Path("/opt/registrar/examples/contoso-docker.toml")) in service["command"]


def test_dns_service_matches_topology() -> None:
    compose = _compose()
    topology = load_topology(TOPOLOGY)
    host, port = topology.dns_listen
    dns = compose["services"]["dns"]
    assert dns["networks"]["pool"]["ipv4_address"] == host
    assert port == 53


def test_compose_state_paths_are_in_the_volume() -> None:
    topology = load_topology(TOPOLOGY)
    for path in (topology.paths.certs, topology.paths.users_db, topology.paths.state_dir):
        assert str(path).startswith("/var/lib/registrar")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
