"""Tests for registrar.topology: loading and validating the topology file, commission and
decommission (tomlkit edits that keep comments), the ``registrar topology`` CLI, and
``registrar certs init --topology``."""

from __future__ import annotations

import argparse
import copy
import json
import random
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from cryptography import x509

from registrar import certs, topology
from registrar.topology import TopologyError, commission, decommission, load_topology

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "contoso.toml"

# Server IDs written in examples/contoso.toml (drawn once by commission()).
EXAMPLE_IDS = {
    "fe1.contoso.com": 8,
    "fe2.contoso.com": 9,
    "fe3.contoso.com": 4,
    "fe4.contoso.com": 2,
}


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="registrar")
    sub = parser.add_subparsers(dest="command", required=True)
    topology.add_cli(sub)
    certs.add_cli(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of examples/contoso.toml (in ``tmp_path/examples/``, so its relative
    paths point into ``tmp_path/run/``)."""
    path = tmp_path / "examples" / "contoso.toml"
    path.parent.mkdir()
    path.write_bytes(EXAMPLE.read_bytes())
    return path


def _raw() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "contoso.toml"
    path.write_text(tomlkit.dumps(data))
    return path


def _error(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> TopologyError:
    data = _raw()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    return info.value


def _fe(data: dict[str, Any], index: int) -> dict[str, Any]:
    fe: dict[str, Any] = data["pools"][0]["front_ends"][index]
    return fe


# ------------------------------------------------------------------------------ the example


def test_example_loads() -> None:
    topo = load_topology(EXAMPLE)
    assert topo.version >= 1
    assert topo.path == EXAMPLE
    (pool,) = topo.pools
    assert pool.fqdn == "pool.contoso.com"
    assert pool.domains == ("contoso.com",)
    assert pool.max_servers == 10
    assert pool.site == "redmond"
    assert [s.name for s in topo.sites] == ["redmond"]
    assert {fe.fqdn: fe.server_id for fe in pool.front_ends} == EXAMPLE_IDS
    assert len(set(EXAMPLE_IDS.values())) == 4
    for n, fe in enumerate(pool.front_ends, 1):
        assert fe.fqdn == f"fe{n}.contoso.com"
        assert fe.ip == f"127.0.1.{n}"
        assert (fe.tls_port, fe.tcp_port, fe.udp_port, fe.admin_port) == (5061, 5060, 5060, 5080)
        assert fe.site == "redmond" and fe.pool == "pool.contoso.com"
        assert fe.listeners() == [
            ("tls", fe.ip, 5061),
            ("tcp", fe.ip, 5060),
            ("udp", fe.ip, 5060),
        ]
    assert topo.settings.digest_algorithms == ("MD5", "SHA-256")
    assert topo.dns_listen == ("127.0.1.53", 5353)
    assert topo.paths.certs == ROOT / "run" / "certs"
    assert topo.paths.users_db == ROOT / "run" / "users.db"
    assert topo.paths.state_dir == ROOT / "run" / "state"
    assert topo.state_dir_for("FE2.contoso.com") == ROOT / "run" / "state" / "fe2.contoso.com"


def test_helpers() -> None:
    topo = load_topology(EXAMPLE)
    pool = topo.pool("POOL.contoso.com.")
    assert pool.by_id[8].fqdn == "fe1.contoso.com"
    assert sorted(pool.by_id) == sorted(EXAMPLE_IDS.values())
    assert pool.free_ids == sorted(set(range(1, 11)) - set(EXAMPLE_IDS.values()))
    assert pool.fe("fe3.contoso.com").server_id == EXAMPLE_IDS["fe3.contoso.com"]
    assert topo.fe("Fe4.Contoso.Com").ip == "127.0.1.4"
    assert topo.pool_for_domain("Contoso.COM") is pool
    assert topo.pool_for_domain("fabrikam.com") is None
    assert [fe.fqdn for fe in topo.all_front_ends()] == list(EXAMPLE_IDS)
    with pytest.raises(KeyError):
        topo.fe("fe9.contoso.com")
    with pytest.raises(KeyError):
        topo.pool("other.contoso.com")
    with pytest.raises(KeyError):
        pool.fe("nope.contoso.com")


def test_defaults(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[[sites]]\nname = "s"\n[[pools]]\nfqdn = "pool.example.com"\ndomains = ["example.com"]\n'
        '[[pools.front_ends]]\nfqdn = "fe1.example.com"\nserver_id = 3\nip = "127.0.0.1"\n'
    )
    topo = load_topology(path)
    assert topo.version == 1
    assert topo.settings == topology.Settings()
    assert topo.settings.digest_algorithms == ("SHA-256", "MD5")
    assert topo.dns_listen == ("127.0.1.53", 5353)
    assert topo.paths == topology.Paths(
        tmp_path / "certs", tmp_path / "state" / "users.db", tmp_path / "state"
    )
    fe = topo.fe("fe1.example.com")
    assert (fe.tls_port, fe.tcp_port, fe.udp_port, fe.admin_port) == (5061, 0, 0, 5080)
    assert fe.site == "s" and topo.pools[0].site == "s"  # the only site is the default
    assert fe.listeners() == [("tls", "127.0.0.1", 5061)]
    # enable_tcp turns TCP 5060 on for FEs without tcp_port (an explicit 0 stays off)
    path.write_text("[settings]\nenable_tcp = true\n" + path.read_text())
    assert load_topology(path).fe("fe1.example.com").tcp_port == 5060


def test_digest_is_semantic(tmp_path: Path) -> None:
    topo = load_topology(EXAMPLE)
    assert len(topo.digest()) == 16
    # the same content without comments and in another layout: the same digest
    same = _write(tmp_path, _raw())
    assert "#" not in same.read_text()
    assert load_topology(same).digest() == topo.digest()
    # different content: a different digest
    data = _raw()
    data["version"] += 1
    other = tmp_path / "other.toml"
    other.write_text(tomlkit.dumps(data))
    assert load_topology(other).digest() != topo.digest()
    data = _raw()
    data["settings"]["backup_max_expires"] = 120
    other.write_text(tomlkit.dumps(data))
    assert load_topology(other).digest() != topo.digest()


def test_dataclasses_are_frozen() -> None:
    topo = load_topology(EXAMPLE)
    with pytest.raises(AttributeError):
        topo.version = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        topo.pools[0].front_ends[0].server_id = 1  # type: ignore[misc]
    assert hash(topo.pools[0].front_ends[0])


# ------------------------------------------------------------------------------ validation


def test_error_format(tmp_path: Path) -> None:
    def bad_id(d: dict[str, Any]) -> None:
        _fe(d, 2)["server_id"] = 11

    err = _error(tmp_path, bad_id)
    assert err.key == "pools[0].front_ends[2].server_id"
    assert err.message == "11 is outside 1..10 (max_servers)"
    assert str(err).startswith(
        f"{tmp_path / 'contoso.toml'}: pools[0].front_ends[2].server_id: 11 is outside 1..10 "
        "(max_servers); fix: pick a free ID in 1..10"
    )
    assert "(free: 1, 3, 4, 5, 6, 7, 10)" in str(err)  # every ID no FE of the pool declares
    assert "registrar topology commission" in str(err)
    assert isinstance(err, ValueError)
    assert err.to_dict()["key"] == err.key and err.to_dict()["error"] == str(err)


def test_toml_syntax_error_has_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("version = 1\n\n[settings]\nheartbeat_interval = = 1\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    err = info.value
    assert err.key is None
    assert (err.line, err.column) == (4, 22)
    assert "line 4, column 22" in str(err) and "TOML syntax error" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "nope.toml")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets ``a.b[0].c`` style ``path`` to ``value``."""

    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        parts = path.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        parts = path.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return mutate


def _second_pool(**overrides: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        pool = {
            "fqdn": "pool2.contoso.com",
            "domains": ["fabrikam.com"],
            "site": "redmond",
            "front_ends": [
                {"fqdn": "fe5.contoso.com", "server_id": 1, "ip": "127.0.2.1"},
            ],
        }
        for key, value in overrides.items():
            if key.startswith("fe_"):
                pool["front_ends"][0][key[3:]] = value  # type: ignore[index]
            else:
                pool[key] = value
        data["pools"].append(pool)

    return mutate


def _trusted(**overrides: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        app = {"fqdn": "vm.contoso.com", "version": 6, "pool": "pool.contoso.com", "port": 5061}
        app.update(overrides)
        data.setdefault("trusted_applications", []).append(app)

    return mutate


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)

    return mutate


FE0 = "pools[0].front_ends[0]"
FE1 = "pools[0].front_ends[1]"

ERROR_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # (id, mutation, key named, text in the message or fix)
    ("unknown top key", _set("verison", 2), "verison", "did you mean 'version'"),
    (
        "unknown settings key",
        _set("settings.heartbeat_intervl", 1.0),
        "settings.heartbeat_intervl",
        "did you mean 'heartbeat_interval'",
    ),
    ("unknown FE key", _set(f"{FE0}.tls_prot", 5061), f"{FE0}.tls_prot", "did you mean 'tls_port'"),
    (
        "unknown pool key",
        _set("pools[0].max_server", 10),
        "pools[0].max_server",
        "did you mean 'max_servers'",
    ),
    ("unknown path key", _set("paths.cert", "c"), "paths.cert", "did you mean 'certs'"),
    (
        "front_ends at top",
        _set("front_ends", [{"fqdn": "x.y.z"}]),
        "front_ends",
        "[[pools.front_ends]]",
    ),
    ("version type", _set("version", "2"), "version", "expected an integer"),
    ("version zero", _set("version", 0), "version", "outside"),
    ("server_id type", _set(f"{FE0}.server_id", "7"), f"{FE0}.server_id", "expected an integer"),
    ("server_id bool", _set(f"{FE0}.server_id", True), f"{FE0}.server_id", "expected an integer"),
    ("server_id missing", _delete(f"{FE0}.server_id"), f"{FE0}.server_id", "missing"),
    (
        "interval type",
        _set("settings.heartbeat_interval", "1s"),
        "settings.heartbeat_interval",
        "expected a number",
    ),
    ("interval zero", _set("settings.heartbeat_interval", 0), "settings.heartbeat_interval", "> 0"),
    ("enable_tcp type", _set("settings.enable_tcp", "yes"), "settings.enable_tcp", "true or false"),
    ("settings not a table", _set("settings", 5), "settings", "expected a table"),
    ("pools not an array", _set("pools", {"fqdn": "pool.contoso.com"}), "pools", "array of tables"),
    (
        "timeout <= interval",
        _set("settings.heartbeat_timeout", 1.0),
        "settings.heartbeat_timeout",
        "greater than heartbeat_interval",
    ),
    (
        "timeout < interval",
        _both(_set("settings.heartbeat_interval", 5.0), _set("settings.heartbeat_timeout", 3.0)),
        "settings.heartbeat_timeout",
        "greater than heartbeat_interval",
    ),
    (
        "max < min expires",
        _set("settings.max_expires", 30),
        "settings.max_expires",
        "less than min_expires",
    ),
    (
        "default expires out of range",
        _set("settings.default_expires", 9000),
        "settings.default_expires",
        "outside",
    ),
    (
        "backup expires out of range",
        _set("settings.backup_max_expires", 10),
        "settings.backup_max_expires",
        "outside",
    ),
    ("max_contacts zero", _set("settings.max_contacts", 0), "settings.max_contacts", "outside"),
    (
        "batch users zero",
        _set("settings.rehome_batch_users", 0),
        "settings.rehome_batch_users",
        "outside",
    ),
    (
        "batch interval negative",
        _set("settings.rehome_batch_interval", -1.0),
        "settings.rehome_batch_interval",
        ">= 0",
    ),
    (
        "bad digest algorithm",
        _set("settings.digest_algorithms", ["SHA1"]),
        "settings.digest_algorithms[0]",
        "SHA-256",
    ),
    (
        "duplicate digest algorithm",
        _set("settings.digest_algorithms", ["MD5", "md5"]),
        "settings.digest_algorithms[1]",
        "twice",
    ),
    (
        "empty digest algorithms",
        _set("settings.digest_algorithms", []),
        "settings.digest_algorithms",
        "non-empty",
    ),
    (
        "duplicate server ID",
        _set(f"{FE1}.server_id", EXAMPLE_IDS["fe1.contoso.com"]),
        f"{FE1}.server_id",
        "already used by fe1.contoso.com",
    ),
    ("server ID too big", _set(f"{FE0}.server_id", 11), f"{FE0}.server_id", "outside 1..10"),
    ("server ID zero", _set(f"{FE0}.server_id", 0), f"{FE0}.server_id", "outside 1..10"),
    (
        "server ID above max_servers",
        _set("pools[0].max_servers", 5),
        "pools[0].front_ends[0].server_id",
        "outside 1..5 (max_servers)",
    ),
    ("max_servers 11", _set("pools[0].max_servers", 11), "pools[0].max_servers", "outside 1..10"),
    ("max_servers 0", _set("pools[0].max_servers", 0), "pools[0].max_servers", "outside 1..10"),
    (
        "duplicate FE fqdn",
        _set(f"{FE1}.fqdn", "FE1.contoso.com"),
        f"{FE1}.fqdn",
        "already defined at pools[0].front_ends[0]",
    ),
    (
        "duplicate FE fqdn across pools",
        _second_pool(fe_fqdn="fe2.contoso.com"),
        "pools[1].front_ends[0].fqdn",
        "already defined",
    ),
    (
        "FE fqdn is the pool fqdn",
        _set(f"{FE0}.fqdn", "pool.contoso.com"),
        f"{FE0}.fqdn",
        "FQDN of a pool",
    ),
    (
        "duplicate pool fqdn",
        _second_pool(fqdn="pool.contoso.com"),
        "pools[1].fqdn",
        "already defined",
    ),
    (
        "same ip:tls port",
        _set(f"{FE1}.ip", "127.0.1.1"),
        f"{FE1}.tls_port",
        "127.0.1.1:5061/tcp is already used by fe1.contoso.com tls_port",
    ),
    (
        "admin port = tls port",
        _set(f"{FE0}.admin_port", 5061),
        f"{FE0}.admin_port",
        "already used by fe1.contoso.com tls_port",
    ),
    (
        "tcp port = admin port",
        _set(f"{FE0}.tcp_port", 5080),
        f"{FE0}.admin_port",
        "already used by fe1.contoso.com tcp_port",
    ),
    (
        "udp clash across FEs",
        _both(
            _set(f"{FE1}.ip", "127.0.1.1"),
            _set(f"{FE1}.tls_port", 6061),
            _set(f"{FE1}.tcp_port", 6060),
            _set(f"{FE1}.admin_port", 6080),
        ),
        f"{FE1}.udp_port",
        "127.0.1.1:5060/udp",
    ),
    (
        "ipv6 spelled twice",
        _both(_set(f"{FE0}.ip", "::1"), _set(f"{FE1}.ip", "0:0::1")),
        f"{FE1}.tls_port",
        "[::1]:5061/tcp",
    ),
    ("tls port too big", _set(f"{FE0}.tls_port", 70000), f"{FE0}.tls_port", "outside 1..65535"),
    ("tls port zero", _set(f"{FE0}.tls_port", 0), f"{FE0}.tls_port", "outside 1..65535"),
    ("tcp port negative", _set(f"{FE0}.tcp_port", -1), f"{FE0}.tcp_port", "outside 0..65535"),
    (
        "admin port type",
        _set(f"{FE0}.admin_port", "5080"),
        f"{FE0}.admin_port",
        "expected an integer",
    ),
    ("FE site unknown", _set(f"{FE0}.site", "redmnd"), f"{FE0}.site", "did you mean 'redmond'"),
    (
        "pool site unknown",
        _set("pools[0].site", "dublin"),
        "pools[0].site",
        "not defined in [[sites]]",
    ),
    ("no sites", _set("sites", []), "sites", "no site"),
    ("duplicate site", _set("sites", [{"name": "a"}, {"name": "a"}]), "sites[1].name", "twice"),
    ("bad site name", _set("sites", [{"name": "a b"}]), "sites[0].name", "not a valid site"),
    (
        "domain of two pools",
        _second_pool(domains=["Contoso.com"]),
        "pools[1].domains[0]",
        "already served by pool pool.contoso.com",
    ),
    ("no domains", _set("pools[0].domains", []), "pools[0].domains", "non-empty"),
    ("domains missing", _delete("pools[0].domains"), "pools[0].domains", "missing"),
    (
        "bad domain",
        _set("pools[0].domains", ["con toso.com"]),
        "pools[0].domains[0]",
        "not a valid DNS name",
    ),
    ("bad ip", _set(f"{FE0}.ip", "127.0.1.256"), f"{FE0}.ip", "not an IP address"),
    ("ip is a name", _set(f"{FE0}.ip", "fe1.contoso.com"), f"{FE0}.ip", "not an IP address"),
    ("unspecified ip", _set(f"{FE0}.ip", "0.0.0.0"), f"{FE0}.ip", "cannot be an FE address"),
    ("bad fqdn", _set(f"{FE0}.fqdn", "fe_1.contoso.com"), f"{FE0}.fqdn", "not a valid DNS name"),
    ("unqualified fqdn", _set(f"{FE0}.fqdn", "fe1"), f"{FE0}.fqdn", "not fully qualified"),
    ("wildcard fqdn", _set("pools[0].fqdn", "*.contoso.com"), "pools[0].fqdn", "wildcard"),
    ("ip as fqdn", _set(f"{FE0}.fqdn", "127.0.1.1"), f"{FE0}.fqdn", "looks like an IP"),
    ("fqdn type", _set(f"{FE0}.fqdn", 5), f"{FE0}.fqdn", "expected a string"),
    (
        "trusted app version",
        _trusted(version=4),
        "trusted_applications[0].version",
        "not a known server version",
    ),
    (
        "trusted app is an FE",
        _trusted(fqdn="fe3.contoso.com"),
        "trusted_applications[0].fqdn",
        "is an FE",
    ),
    (
        "trusted app is the pool",
        _trusted(fqdn="pool.contoso.com"),
        "trusted_applications[0].fqdn",
        "is a pool",
    ),
    (
        "trusted app pool unknown",
        _trusted(pool="pool9.contoso.com"),
        "trusted_applications[0].pool",
        "not defined",
    ),
    (
        "trusted app twice",
        _both(_trusted(), _trusted()),
        "trusted_applications[1].fqdn",
        "already trusted",
    ),
    (
        "trusted app two versions",
        _both(_second_pool(), _trusted(), _trusted(pool="pool2.contoso.com", version=5)),
        "trusted_applications[1].version",
        "one server has one version",
    ),
    (
        "trusted app unknown key",
        _trusted(versoin=6),
        "trusted_applications[0].versoin",
        "did you mean 'version'",
    ),
    ("dns listen no port", _set("dns.listen", "127.0.1.53"), "dns.listen", "IP:PORT"),
    ("dns listen bad ip", _set("dns.listen", "dns.local:53"), "dns.listen", "not an IP address"),
    (
        "dns listen on an FE port",
        _set("dns.listen", "127.0.1.1:5060"),
        "dns.listen",
        "fe1.contoso.com",
    ),
    ("path type", _set("paths.certs", 1), "paths.certs", "expected a string"),
]


@pytest.mark.parametrize(
    ("mutate", "key", "text"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_validation_errors(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], key: str, text: str
) -> None:
    err = _error(tmp_path, mutate)
    assert err.key == key, str(err)
    assert text in str(err)
    assert err.fix, "every error suggests a fix"
    assert str(err).startswith(f"{tmp_path / 'contoso.toml'}: {key}: ")


def test_valid_variants(tmp_path: Path) -> None:
    """Things that look odd but are allowed."""
    data = _raw()
    # tcp and udp on one number; another FE on the same IP with other ports
    _fe(data, 1).update(
        ip="127.0.1.1", tls_port=6061, tcp_port=6060, udp_port=6060, admin_port=6080
    )
    _fe(data, 2)["udp_port"] = 0  # 0 = off
    _second_pool(fe_ip="::1")(data)
    _trusted(version=0)(data)
    _trusted(pool="pool2.contoso.com", version=0)(data)  # one app, two pools, one version
    topo = load_topology(_write(tmp_path, data))
    assert topo.fe("fe5.contoso.com").ip == "::1"
    assert topo.fe("fe3.contoso.com").udp_port == 0
    assert [a.pool for a in topo.trusted_applications] == ["pool.contoso.com", "pool2.contoso.com"]
    assert topo.pool_for_domain("fabrikam.com") is topo.pool("pool2.contoso.com")


# ------------------------------------------------------------------------------ commission


def _comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_commission_picks_a_free_random_id(example: Path) -> None:
    before = example.read_text()
    topo, sid = commission(
        example, "pool.contoso.com", "fe5.contoso.com", "127.0.1.5", rng=random.Random(7)
    )
    assert sid in set(range(1, 11)) - set(EXAMPLE_IDS.values())
    assert topo.version == load_topology(EXAMPLE).version + 1
    fe = topo.fe("fe5.contoso.com")
    assert (fe.server_id, fe.ip, fe.tls_port, fe.tcp_port, fe.udp_port, fe.admin_port) == (
        sid,
        "127.0.1.5",
        5061,
        0,
        0,
        5080,
    )
    assert fe.site == "redmond"
    after = example.read_text()
    assert load_topology(example) == topo
    # every comment survives, the rest of the file is untouched
    assert _comments(after) == _comments(before)
    assert after.count("[[pools.front_ends]]") == 5
    for name, old in EXAMPLE_IDS.items():
        assert topo.fe(name).server_id == old


def test_commission_ids_are_random(tmp_path: Path) -> None:
    seen = set()
    for seed in range(40):
        path = tmp_path / f"c{seed}.toml"
        path.write_bytes(EXAMPLE.read_bytes())
        _, sid = commission(
            path, "pool.contoso.com", "fe5.contoso.com", "127.0.1.5", rng=random.Random(seed)
        )
        seen.add(sid)
    assert seen == set(range(1, 11)) - set(EXAMPLE_IDS.values())
    # the default RNG is the system's
    path = tmp_path / "sys.toml"
    path.write_bytes(EXAMPLE.read_bytes())
    _, sid = commission(path, "pool.contoso.com", "fe5.contoso.com", "127.0.1.5")
    assert sid not in EXAMPLE_IDS.values()


def test_commission_with_ports_site_and_id(example: Path) -> None:
    free = load_topology(example).pools[0].free_ids
    topo, sid = commission(
        example,
        "POOL.contoso.com",
        "FE5.contoso.com",
        "127.0.1.5",
        tls_port=5071,
        tcp_port=5070,
        udp_port=5070,
        admin_port=5090,
        site="redmond",
        server_id=free[-1],
    )
    assert sid == free[-1]
    fe = topo.fe("fe5.contoso.com")
    assert (fe.tls_port, fe.tcp_port, fe.udp_port, fe.admin_port) == (5071, 5070, 5070, 5090)
    assert 'fqdn = "fe5.contoso.com"' in example.read_text()


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"server_id": EXAMPLE_IDS["fe2.contoso.com"]}, "already used by fe2.contoso.com"),
        ({"server_id": 11}, "outside 1..10"),
        ({"ip": "127.0.1.1"}, "127.0.1.1:5061/tcp is already used by fe1.contoso.com"),
        ({"ip": "not-an-ip"}, "not an IP address"),
        ({"fqdn": "fe1.contoso.com"}, "already commissioned"),
        ({"fqdn": "fe_5.contoso.com"}, "not a valid DNS name"),
        ({"pool": "pool9.contoso.com"}, "no pool 'pool9.contoso.com'"),
        ({"site": "dublin"}, "not defined in [[sites]]"),
        ({"tls_port": 0}, "outside 1..65535"),
    ],
)
def test_commission_refused_leaves_the_file(
    example: Path, kwargs: dict[str, Any], text: str
) -> None:
    before = example.read_bytes()
    args = {"pool": "pool.contoso.com", "fqdn": "fe5.contoso.com", "ip": "127.0.1.5"}
    for key in ("pool", "fqdn", "ip"):
        if key in kwargs:
            args[key] = kwargs.pop(key)
    with pytest.raises(TopologyError) as info:
        commission(example, args["pool"], args["fqdn"], args["ip"], **kwargs)
    assert text in str(info.value)
    assert info.value.fix
    assert example.read_bytes() == before
    assert sorted(p.name for p in example.parent.iterdir()) == ["contoso.toml"]  # no temp file


def test_pool_full(tmp_path: Path) -> None:
    data = _raw()
    data["pools"][0]["max_servers"] = 4
    for fe in data["pools"][0]["front_ends"]:
        fe["server_id"] = int(fe["fqdn"][2])  # fe1 -> 1 ... fe4 -> 4
    path = _write(tmp_path, data)
    before = path.read_bytes()
    with pytest.raises(TopologyError) as info:
        commission(path, "pool.contoso.com", "fe5.contoso.com", "127.0.1.5")
    err = info.value
    assert err.key == "pools[0].front_ends"
    assert "pool pool.contoso.com is full: all 4 server IDs (max_servers) are in use" in str(err)
    assert "decommission" in err.fix and "raise max_servers" in err.fix  # type: ignore[operator]
    assert path.read_bytes() == before


def test_commission_fills_the_last_id(tmp_path: Path) -> None:
    data = _raw()
    data["pools"][0]["max_servers"] = 5
    for fe in data["pools"][0]["front_ends"]:
        fe["server_id"] = int(fe["fqdn"][2])
    path = _write(tmp_path, data)
    _, sid = commission(path, "pool.contoso.com", "fe5.contoso.com", "127.0.1.5")
    assert sid == 5


def test_commission_refuses_an_invalid_file(example: Path) -> None:
    example.write_text(
        example.read_text().replace("heartbeat_timeout = 3.0", "heartbeat_timeout = 0.5")
    )
    before = example.read_bytes()
    with pytest.raises(TopologyError) as info:
        commission(example, "pool.contoso.com", "fe5.contoso.com", "127.0.1.5")
    assert info.value.key == "settings.heartbeat_timeout"
    assert "must be valid before an edit" in str(info.value)
    assert example.read_bytes() == before


def test_commission_into_empty_pool_and_without_version(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    text = (
        '# sites\n[[sites]]\nname = "s"\n\n# the pool\n[[pools]]\nfqdn = "pool.example.com"\n'
        'domains = ["example.com"]  # served\n\n# the second pool\n[[pools]]\n'
        'fqdn = "pool2.example.com"\ndomains = ["example.org"]\n'
    )
    path.write_text(text)
    topo, sid = commission(path, "pool.example.com", "fe1.example.com", "127.0.0.1", udp_port=5060)
    assert topo.version == 2
    assert topo.pool("pool.example.com").by_id[sid].udp_port == 5060
    assert topo.pool("pool2.example.com").front_ends == ()
    after = path.read_text()
    assert _comments(after) == _comments(text)
    # the new FE sits between its pool and the comment of the next pool
    assert after.index("fe1.example.com") < after.index("# the second pool")
    assert after.index("# the second pool") < after.index("pool2.example.com")
    assert after.startswith("version = 2\n")


# ------------------------------------------------------------------------------ decommission


def test_decommission(example: Path) -> None:
    before = example.read_text()
    topo = decommission(example, "FE2.contoso.com")
    assert topo.version == load_topology(EXAMPLE).version + 1
    assert [fe.fqdn for fe in topo.all_front_ends()] == [
        "fe1.contoso.com",
        "fe3.contoso.com",
        "fe4.contoso.com",
    ]
    assert EXAMPLE_IDS["fe2.contoso.com"] in topo.pools[0].free_ids
    after = example.read_text()
    assert _comments(after) == _comments(before)
    assert "fe2.contoso.com" not in after
    assert load_topology(example) == topo
    # remove the rest, one by one: the pool ends up with no FE and the comments stay
    for name in ("fe4.contoso.com", "fe1.contoso.com", "fe3.contoso.com"):
        topo = decommission(example, name)
    assert topo.pools[0].front_ends == ()
    assert _comments(example.read_text()) == _comments(before)


def test_decommission_unknown_fe(example: Path) -> None:
    before = example.read_bytes()
    with pytest.raises(TopologyError) as info:
        decommission(example, "fe9.contoso.com")
    assert "no front end 'fe9.contoso.com'" in str(info.value)
    assert "fe1.contoso.com" in str(info.value.fix)
    assert example.read_bytes() == before


def test_decommission_comment_ownership(tmp_path: Path) -> None:
    """Comments inside an FE's table or glued to its header go with it; a comment glued to the
    next header stays with that next FE."""
    path = tmp_path / "t.toml"
    path.write_text(
        '[[sites]]\nname = "s"\n\n[[pools]]\nfqdn = "pool.example.com"\n'
        'domains = ["example.com"]\n\n# about all FEs\n\n# glued to fe1\n[[pools.front_ends]]\n'
        '# inside fe1\nfqdn = "fe1.example.com"\nserver_id = 1\nip = "127.0.0.1"\n\n'
        '# glued to fe2\n[[pools.front_ends]]\nfqdn = "fe2.example.com"\nserver_id = 2\n'
        'ip = "127.0.0.2"\n'
    )
    decommission(path, "fe1.example.com")
    text = path.read_text()
    assert _comments(text) == ["# about all FEs", "# glued to fe2"]
    assert '# glued to fe2\n[[pools.front_ends]]\nfqdn = "fe2.example.com"' in text


def test_commission_then_decommission_round_trip(example: Path) -> None:
    before = example.read_text()
    version = load_topology(example).version
    commission(example, "pool.contoso.com", "fe5.contoso.com", "127.0.1.5", udp_port=5060)
    decommission(example, "fe5.contoso.com")
    assert example.read_text() == before.replace(
        f"\nversion = {version}\n", f"\nversion = {version + 2}\n"
    )


def test_file_mode_is_kept(example: Path) -> None:
    example.chmod(0o640)
    commission(example, "pool.contoso.com", "fe5.contoso.com", "127.0.1.5")
    assert example.stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------------------------ CLI


def test_cli_validate(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["topology", "validate", str(example)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "1 pool(s), 4 front end(s)" in out

    assert _cli(["topology", "validate", str(example), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    topo = load_topology(example)
    assert result == {
        "ok": True,
        "path": str(example),
        "version": topo.version,
        "digest": topo.digest(),
        "pools": 1,
        "front_ends": 4,
    }


def test_cli_validate_error(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example.write_text(example.read_text().replace("server_id = 9", "server_id = 12"))
    assert _cli(["topology", "validate", str(example)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "pools[0].front_ends[1].server_id: 12 is outside 1..10 (max_servers); fix:" in (
        captured.err
    )

    assert _cli(["topology", "validate", str(example), "--json"]) == 2
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert set(result["error"]) == {"path", "key", "message", "fix", "line", "column", "error"}
    assert result["error"]["key"] == "pools[0].front_ends[1].server_id"


def test_cli_show(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["topology", "show", str(example)]) == 0
    out = capsys.readouterr().out
    assert "pool pool.contoso.com" in out
    for name, sid in EXAMPLE_IDS.items():
        assert any(line.split()[:2] == [str(sid), name] for line in out.splitlines())
    assert "free IDs:" in out and "heartbeat_interval = 1.0" in out

    assert _cli(["topology", "show", str(example), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {
        "path",
        "digest",
        "version",
        "settings",
        "dns",
        "sites",
        "pools",
        "trusted_applications",
        "paths",
    }
    assert data["settings"]["digest_algorithms"] == ["MD5", "SHA-256"]
    assert data["settings"]["heartbeat_timeout"] == 3.0
    assert data["dns"] == {"listen": "127.0.1.53:5353"}
    assert data["sites"] == [{"name": "redmond"}]
    (pool,) = data["pools"]
    assert set(pool) == {"fqdn", "domains", "max_servers", "site", "front_ends", "free_ids"}
    assert [fe["server_id"] for fe in pool["front_ends"]] == sorted(EXAMPLE_IDS.values())
    assert set(pool["front_ends"][0]) == {
        "fqdn",
        "server_id",
        "ip",
        "tls_port",
        "tcp_port",
        "udp_port",
        "admin_port",
        "site",
        "pool",
    }
    assert data["paths"]["state_dir"] == str(example.parent.parent / "run" / "state")


def _commission_argv(example: Path, fqdn: str, ip: str, *options: str) -> list[str]:
    """``registrar topology commission`` arguments: FE ``fqdn`` at ``ip`` into the example's
    pool.contoso.com, then ``options``."""
    pool = ["--pool", "pool.contoso.com"]
    return ["topology", "commission", str(example), *pool, "--fqdn", fqdn, "--ip", ip, *options]


def test_cli_commission_and_decommission(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _commission_argv(
        example, "fe5.contoso.com", "127.0.1.5", "--udp-port", "5060", "--tcp-port", "0"
    )
    assert _cli([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    topo = load_topology(example)
    assert result == {
        "ok": True,
        "fqdn": "fe5.contoso.com",
        "pool": "pool.contoso.com",
        "server_id": topo.fe("fe5.contoso.com").server_id,
        "version": topo.version,
        "digest": topo.digest(),
    }
    assert topo.fe("fe5.contoso.com").udp_port == 5060

    # again: refused (already commissioned), exit 2, file unchanged
    before = example.read_bytes()
    assert _cli(argv) == 2
    assert "already commissioned" in capsys.readouterr().err
    assert example.read_bytes() == before

    free = str(topo.pools[0].free_ids[0])
    assert _cli(_commission_argv(example, "fe6.contoso.com", "127.0.1.6", "--server-id", free)) == 0
    out = capsys.readouterr().out
    assert f"with server ID {topo.pools[0].free_ids[0]}" in out

    assert (
        _cli(["topology", "decommission", str(example), "--fqdn", "fe5.contoso.com", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["fqdn"] == "fe5.contoso.com" and result["ok"] is True
    assert result["version"] == topo.version + 2
    assert _cli(["topology", "decommission", str(example), "--fqdn", "fe6.contoso.com"]) == 0
    assert "decommissioned fe6.contoso.com" in capsys.readouterr().out
    assert _cli(["topology", "decommission", str(example), "--fqdn", "fe6.contoso.com"]) == 2
    assert "no front end" in capsys.readouterr().err


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["topology"]) == 2
    assert "validate" in capsys.readouterr().err


# ------------------------------------------------------------------------------ certs --topology


def test_certs_init_topology(example: Path, tmp_path: Path) -> None:
    assert _cli(["certs", "init", "--topology", str(example), "--json"]) == 0
    out_dir = tmp_path / "run" / "certs"  # paths.certs = "../run/certs" from the file's dir
    topo = load_topology(example)
    ca = certs.load_certificate(out_dir / "ca.crt")
    for fe in topo.all_front_ends():
        cert = certs.load_certificate(out_dir / f"{fe.fqdn}.crt")
        cert.verify_directly_issued_by(ca)
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == fe.fqdn
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [fe.fqdn, "pool.contoso.com"]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [fe.ip]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["ca.crt", "ca.key"]
        + [f"{fe.fqdn}.{ext}" for fe in topo.all_front_ends() for ext in ("crt", "key")]
    )


def test_certs_init_topology_out_and_errors(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "elsewhere"
    assert (
        _cli(
            [
                "certs",
                "init",
                "--topology",
                str(example),
                "--out",
                str(out_dir),
                "--name",
                "extra.local",
            ]
        )
        == 0
    )
    assert (out_dir / "fe4.contoso.com.crt").is_file()
    assert (out_dir / "extra.local.crt").is_file()
    assert not (tmp_path / "run").exists()
    bad = copy.copy(example.read_text()).replace("server_id = 9", "server_id = 99")
    example.write_text(bad)
    assert _cli(["certs", "init", "--topology", str(example)]) == 2
    assert "server_id: 99 is outside" in capsys.readouterr().err


def test_inline_pools_cannot_be_edited(tmp_path: Path) -> None:
    path = tmp_path / "inline.toml"
    path.write_text(
        'sites = [{name = "s"}]\npools = [{fqdn = "pool.example.com", domains = ["example.com"],'
        ' front_ends = [{fqdn = "fe1.example.com", server_id = 1, ip = "127.0.0.1"}]}]\n'
    )
    assert load_topology(path).fe("fe1.example.com").server_id == 1  # valid to read
    before = path.read_bytes()
    with pytest.raises(TopologyError, match=r"written inline"):
        commission(path, "pool.example.com", "fe2.example.com", "127.0.0.2")
    with pytest.raises(TopologyError, match=r"written inline"):
        decommission(path, "fe1.example.com")
    assert path.read_bytes() == before
