"""Properties of the logical registrar sequence (DESIGN.md §4) over 100,000 synthetic AORs, and
``registrar user-pool-info`` (registrar.poolinfo)."""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from registrar import poolinfo
from registrar.pool.sequence import current_registrar, logical_sequence, primary_registrar, score
from registrar.poolinfo import PoolInfoError, pool_info, query_live
from registrar.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "contoso.toml"
N = 100_000
MAX = 10


def reference_sequence(aor: str, max_servers: int = MAX) -> list[int]:
    """DESIGN.md §4, transcribed from the text::

    score(aor, id) = int.from_bytes(blake2b(f"{aor}#{id}".encode(), digest_size=8).digest(),
                                    "big")
    sequence(aor)  = sorted(range(1, max_servers + 1), key=lambda id: score(aor, id),
                            reverse=True)
    """

    def ref_score(server_id: int) -> int:
        digest = hashlib.blake2b(f"{aor}#{server_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return sorted(range(1, max_servers + 1), key=ref_score, reverse=True)


@pytest.fixture(scope="module")
def aors() -> list[str]:
    return [f"sip:user{i:06d}@contoso.com" for i in range(N)]


@pytest.fixture(scope="module")
def sequences(aors: list[str]) -> list[tuple[int, ...]]:
    return [logical_sequence(aor, MAX) for aor in aors]


@pytest.fixture(scope="module")
def contoso_ids() -> set[int]:
    """The server IDs commissioned in examples/contoso.toml (four FEs)."""
    ids = set(load_topology(EXAMPLE).pools[0].by_id)
    assert len(ids) == 4
    return ids


def _primaries(sequences: list[tuple[int, ...]], ids: set[int]) -> list[int | None]:
    return [primary_registrar(seq, ids) for seq in sequences]


# ------------------------------------------------------------------------------ the formula


def test_matches_the_design_formula(aors: list[str], sequences: list[tuple[int, ...]]) -> None:
    for aor, seq in zip(aors, sequences, strict=True):
        assert list(seq) == reference_sequence(aor)
    for aor in aors[:50]:
        for server_id in range(1, MAX + 1):
            digest = hashlib.blake2b(f"{aor}#{server_id}".encode(), digest_size=8).digest()
            assert score(aor, server_id) == int.from_bytes(digest, "big")


def test_deterministic_and_pinned(aors: list[str], sequences: list[tuple[int, ...]]) -> None:
    logical_sequence.cache_clear()
    assert [logical_sequence(a, MAX) for a in aors[:1000]] == sequences[:1000]
    # pinned values: a change of the hash would silently move every user of a running pool
    assert list(logical_sequence("sip:alice@contoso.com")) == [1, 8, 10, 5, 4, 3, 9, 6, 7, 2]
    assert reference_sequence("sip:alice@contoso.com") == [1, 8, 10, 5, 4, 3, 9, 6, 7, 2]


def test_sequences_are_permutations(aors: list[str], sequences: list[tuple[int, ...]]) -> None:
    assert all(sorted(seq) == list(range(1, MAX + 1)) for seq in sequences)
    for max_servers in (1, 4, 7):
        for aor in aors[:200]:
            seq = logical_sequence(aor, max_servers)
            assert sorted(seq) == list(range(1, max_servers + 1))
            assert list(seq) == reference_sequence(aor, max_servers)


# ------------------------------------------------------------------------------ balance


def test_each_id_primary_for_a_tenth(sequences: list[tuple[int, ...]]) -> None:
    counts = Counter(seq[0] for seq in sequences)
    assert set(counts) == set(range(1, MAX + 1))
    for server_id, count in counts.items():
        assert abs(count / N - 0.10) <= 0.005, (server_id, count)


def test_four_fes_each_primary_for_a_quarter(
    sequences: list[tuple[int, ...]], contoso_ids: set[int]
) -> None:
    counts = Counter(_primaries(sequences, contoso_ids))
    assert set(counts) == contoso_ids
    for server_id, count in counts.items():
        assert abs(count / N - 0.25) <= 0.015, (server_id, count)


def test_a_down_fe_spreads_evenly(sequences: list[tuple[int, ...]], contoso_ids: set[int]) -> None:
    before = _primaries(sequences, contoso_ids)
    for down in sorted(contoso_ids):
        survivors = contoso_ids - {down}
        moved: Counter[int] = Counter()
        for seq, cur in zip(sequences, before, strict=True):
            new = current_registrar(seq, survivors.__contains__)
            if cur == down:
                assert new in survivors
                moved[new] += 1  # type: ignore[index]
            else:
                assert new == cur  # users of live FEs stay where they are
        total = sum(moved.values())
        assert set(moved) == survivors
        for server_id, count in moved.items():
            assert abs(count - total / 3) <= 0.20 * total / 3, (down, server_id, moved)


def test_adding_an_fe_moves_only_users_that_prefer_it(
    aors: list[str], sequences: list[tuple[int, ...]], contoso_ids: set[int]
) -> None:
    before = _primaries(sequences, contoso_ids)
    for new_id in sorted(set(range(1, MAX + 1)) - contoso_ids):
        after = _primaries(sequences, contoso_ids | {new_id})
        moved = 0
        for seq, old, new in zip(sequences, before, after, strict=True):
            assert old is not None
            if seq.index(new_id) < seq.index(old):
                assert new == new_id
                moved += 1
            else:
                assert new == old
        # the new FE takes its even share (1/5) from the others, nobody else moves
        assert abs(moved / N - 0.20) <= 0.015, (new_id, moved)
    # and no sequence changed: the sequence does not depend on which IDs are commissioned
    assert [logical_sequence(a, MAX) for a in aors[:1000]] == sequences[:1000]


# ------------------------------------------------------------------------------ user-pool-info

INFO_KEYS = {
    "aor",
    "normalized",
    "pool",
    "logical_sequence",
    "servers",
    "primary",
    "primary_id",
    "up",
    "current",
    "current_id",
    "registered",
    "backup_mode",
}


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="registrar")
    sub = parser.add_subparsers(dest="command", required=True)
    poolinfo.add_cli(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_pool_info_offline() -> None:
    topo = load_topology(EXAMPLE)
    info = pool_info(topo, "sip:Alice@Contoso.COM;transport=tls")
    assert set(info) == INFO_KEYS
    assert info["aor"] == "sip:Alice@Contoso.COM;transport=tls"
    assert info["normalized"] == "sip:alice@contoso.com"
    assert info["pool"] == "pool.contoso.com"
    seq = logical_sequence("sip:alice@contoso.com")
    assert info["logical_sequence"] == list(seq)
    by_id = topo.pools[0].by_id
    assert info["servers"] == {
        str(i): (by_id[i].fqdn if i in by_id else None) for i in range(1, 11)
    }
    primary = primary_registrar(seq, by_id)
    assert info["primary_id"] == primary
    assert info["primary"] == by_id[primary].fqdn  # type: ignore[index]
    assert info["current"] is None and info["current_id"] is None
    assert info["backup_mode"] is None and info["registered"] is None and info["up"] is None
    json.dumps(info)


def test_pool_info_unknown_domain_and_bad_aor() -> None:
    topo = load_topology(EXAMPLE)
    with pytest.raises(PoolInfoError, match=r"'fabrikam\.com'"):
        pool_info(topo, "sip:bob@fabrikam.com")
    with pytest.raises(PoolInfoError, match="bad AOR"):
        pool_info(topo, "tel:+1555")


class FakePool:
    """A fetcher that answers for the FEs whose IPs are ``up``; ``bindings`` per IP."""

    def __init__(self, up: set[str], bindings: dict[str, list[dict[str, Any]]]) -> None:
        self.up = up
        self.bindings = bindings
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, ip: str, port: int, path: str, timeout: float) -> Any:
        self.calls.append((ip, port, path))
        assert timeout <= 2.0
        if ip not in self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        if path == "/status":
            return {"fqdn": "x", "pid": 1}
        assert path.startswith("/bindings?aor=sip%3Aalice%40contoso.com")
        return self.bindings.get(ip, [])


def test_pool_info_live_backup_mode() -> None:
    topo = load_topology(EXAMPLE)
    pool = topo.pools[0]
    seq = logical_sequence("sip:alice@contoso.com")
    fes = [pool.by_id[i] for i in seq if i in pool.by_id]
    primary, backup = fes[0], fes[1]
    fetch = FakePool(
        up={fe.ip for fe in fes[1:]}, bindings={backup.ip: [{"backup": True}, {"backup": False}]}
    )
    info = pool_info(topo, "sip:alice@contoso.com", fetch=fetch)
    assert info["primary"] == primary.fqdn
    assert info["current"] == backup.fqdn and info["current_id"] == backup.server_id
    assert info["up"] == sorted(fe.server_id for fe in fes[1:])
    assert info["registered"] is True and info["backup_mode"] is True
    assert (backup.ip, backup.admin_port, "/bindings?aor=sip%3Aalice%40contoso.com") in fetch.calls

    # the same through a snapshot (what query_live returns)
    live = query_live(pool, "sip:alice@contoso.com", fetch=fetch)
    assert pool_info(topo, "sip:alice@contoso.com", live=live) == info


def test_pool_info_live_primary_and_not_running() -> None:
    topo = load_topology(EXAMPLE)
    all_ips = {fe.ip for fe in topo.all_front_ends()}
    seq = logical_sequence("sip:alice@contoso.com")
    primary = next(topo.pools[0].by_id[i] for i in seq if i in topo.pools[0].by_id)

    info = pool_info(
        topo, "sip:alice@contoso.com", fetch=FakePool(all_ips, {primary.ip: [{"backup": False}]})
    )
    assert info["current"] == info["primary"] == primary.fqdn
    assert info["registered"] is True and info["backup_mode"] is False

    info = pool_info(topo, "sip:alice@contoso.com", fetch=FakePool(all_ips, {}))
    assert info["registered"] is False and info["backup_mode"] is False

    info = pool_info(topo, "sip:alice@contoso.com", fetch=FakePool(set(), {}))
    assert info["up"] == [] and info["current"] is None and info["backup_mode"] is None


def test_cli_offline_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        _cli(
            [
                "user-pool-info",
                "sip:Alice@contoso.com",
                "--topology",
                str(EXAMPLE),
                "--offline",
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert set(info) == INFO_KEYS
    assert info["aor"] == "sip:Alice@contoso.com"
    assert info["current"] is None and info["backup_mode"] is None
    assert info == pool_info(load_topology(EXAMPLE), "sip:Alice@contoso.com")

    assert (
        _cli(["user-pool-info", "alice@contoso.com", "--topology", str(EXAMPLE), "--offline"]) == 0
    )
    out = capsys.readouterr().out
    assert "normalized        sip:alice@contoso.com" in out
    assert f"primary registrar {info['primary']} (ID {info['primary_id']})" in out
    assert "not commissioned" in out


def test_cli_live_text(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    topo = load_topology(EXAMPLE)
    fetch = FakePool({fe.ip for fe in topo.all_front_ends()}, {})
    monkeypatch.setattr(poolinfo, "http_fetcher", fetch)
    assert _cli(["user-pool-info", "sip:alice@contoso.com", "--topology", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "current registrar" in out and "registered        no" in out


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        _cli(["user-pool-info", "sip:bob@fabrikam.com", "--topology", str(EXAMPLE), "--offline"])
        == 2
    )
    assert "domain 'fabrikam.com'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("version = ")
    assert _cli(["user-pool-info", "sip:bob@contoso.com", "--topology", str(bad)]) == 2
    assert "TOML syntax error" in capsys.readouterr().err


# ------------------------------------------------------------------------------ real HTTP


class _Admin(BaseHTTPRequestHandler):
    bindings: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/status":
            body: Any = {"fqdn": "fe", "pid": 1}
        elif url.path == "/bindings" and parse_qs(url.query).get("aor"):
            body = self.bindings
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def admin_api() -> Iterator[int]:
    """One fake FE admin API on 127.0.0.1 (a free port); yields the port."""
    _Admin.bindings = [{"contact": "sip:a@127.0.0.1", "backup": False}]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_fetcher_against_an_admin_api(tmp_path: Path, admin_api: int) -> None:
    path = tmp_path / "one.toml"
    path.write_text(
        '[[sites]]\nname = "s"\n[[pools]]\nfqdn = "pool.example.com"\ndomains = ["example.com"]\n'
        f'[[pools.front_ends]]\nfqdn = "fe1.example.com"\nserver_id = 5\nip = "127.0.0.1"\n'
        f"tls_port = 1\nadmin_port = {admin_api}\n"
    )
    topo = load_topology(path)
    info = pool_info(topo, "sip:carol@example.com", fetch=poolinfo.http_fetcher)
    assert info["current"] == info["primary"] == "fe1.example.com"
    assert info["registered"] is True and info["backup_mode"] is False
