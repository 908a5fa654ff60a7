"""Tests for registrar.certs (PKI, ``certs init`` CLI) and sipstack.transport.tls contexts."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import socket
import ssl
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registrar import certs
from sipstack.transport.tls import client_ssl_context, peer_identities, server_ssl_context

FE = "fe1.local"
FE2 = "fe2.local"
POOL = "pool.local"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cert dir with a CA, two FEs (SAN: pool FQDN, localhost, 127.0.0.1) and a foreign CA."""
    out = tmp_path_factory.mktemp("pki")
    spec = [POOL, "localhost"], ["127.0.0.1", "::1"]
    certs.init_certs(out, [(FE, *spec), (FE2, *spec)])
    certs.init_certs(out / "other", [("rogue.local", ["localhost"], ["127.0.0.1"])])
    return out


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="registrar")
    sub = parser.add_subparsers(dest="command", required=True)
    certs.add_cli(sub)
    args = parser.parse_args(argv)
    return args.func(args)


# ------------------------------------------------------------------------------ certificates


def test_ca_certificate(pki: Path) -> None:
    ca = certs.load_certificate(pki / "ca.crt")
    assert ca.subject == ca.issuer
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    ca.verify_directly_issued_by(ca)
    assert isinstance(certs.load_private_key(pki / "ca.key"), ec.EllipticCurvePrivateKey)


def test_server_certificate_profile(pki: Path) -> None:
    ca = certs.load_certificate(pki / "ca.crt")
    cert = certs.load_certificate(pki / f"{FE}.crt")
    cert.verify_directly_issued_by(ca)

    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == [FE]

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [FE, POOL, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]

    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign

    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - now
    assert dt.timedelta(days=824) < lifetime <= dt.timedelta(days=825)

    key = certs.load_private_key(pki / f"{FE}.key")
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_issue_server_cert_expiry_and_normalisation() -> None:
    ca_cert, ca_key = certs.create_ca("Test CA", days=30)
    cert, _ = certs.issue_server_cert(
        ca_cert, ca_key, "FE9.Example.COM.", ["fe9.example.com"], [], days=7
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fe9.example.com"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fe9.example.com"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=7) < lifetime <= dt.timedelta(days=7, minutes=6)
    # never outlives its CA
    long, _ = certs.issue_server_cert(ca_cert, ca_key, "fe9.example.com", [], [], days=825)
    assert long.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_key_files_are_private(pki: Path) -> None:
    for name in ("ca.key", f"{FE}.key", f"{FE2}.key"):
        assert stat.S_IMODE((pki / name).stat().st_mode) == 0o600, name
    for name in ("ca.crt", f"{FE}.crt"):
        assert stat.S_IMODE((pki / name).stat().st_mode) == 0o644, name
    assert not list(pki.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("fqdn", "dns", "ips"),
    [
        ("*.pool.local", [], []),
        ("fe1.local", ["*.pool.local"], []),
        ("", [], []),
        ("../etc/passwd", [], []),
        ("fe1.local", [], ["not-an-ip"]),
    ],
)
def test_invalid_names_refused(fqdn: str, dns: list[str], ips: list[str]) -> None:
    ca_cert, ca_key = certs.create_ca()
    with pytest.raises(ValueError):
        certs.issue_server_cert(ca_cert, ca_key, fqdn, dns, ips)


def test_wildcard_refused_by_init_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wildcard"):
        certs.init_certs(tmp_path / "c", [("*.pool.local", [], [])])
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------ init_certs


def test_init_certs_idempotent_and_force(tmp_path: Path) -> None:
    spec = [(FE, ["localhost"], ["127.0.0.1"])]
    first = certs.init_certs(tmp_path, spec)
    assert sorted(p.name for p in first) == ["ca.crt", "ca.key", f"{FE}.crt", f"{FE}.key"]
    before = {p.name: p.read_bytes() for p in first}

    assert certs.init_certs(tmp_path, spec) == []
    assert {p.name: p.read_bytes() for p in first} == before

    # a new FE reuses the CA
    added = certs.init_certs(tmp_path, [*spec, (FE2, [], ["127.0.1.2"])])
    assert sorted(p.name for p in added) == [f"{FE2}.crt", f"{FE2}.key"]
    fe2 = certs.load_certificate(tmp_path / f"{FE2}.crt")
    fe2.verify_directly_issued_by(certs.load_certificate(tmp_path / "ca.crt"))

    # a wider SAN than the existing cert has forces a reissue of that cert only
    wider = certs.init_certs(tmp_path, [(FE, ["localhost", POOL], ["127.0.0.1"])])
    assert sorted(p.name for p in wider) == [f"{FE}.crt", f"{FE}.key"]

    forced = certs.init_certs(tmp_path, spec, force=True)
    assert sorted(p.name for p in forced) == ["ca.crt", "ca.key", f"{FE}.crt", f"{FE}.key"]
    assert (tmp_path / "ca.key").read_bytes() != before["ca.key"]
    assert (tmp_path / f"{FE}.crt").read_bytes() != before[f"{FE}.crt"]


def test_init_certs_new_ca_reissues_fe(tmp_path: Path) -> None:
    spec = [(FE, [], ["127.0.0.1"])]
    certs.init_certs(tmp_path, spec)
    (tmp_path / "ca.crt").unlink()
    with pytest.raises(ValueError, match="force"):
        certs.init_certs(tmp_path, spec)
    (tmp_path / "ca.key").unlink()
    written = certs.init_certs(tmp_path, spec)
    assert {p.name for p in written} == {"ca.crt", "ca.key", f"{FE}.crt", f"{FE}.key"}


def test_init_certs_duplicate_fqdn(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        certs.init_certs(tmp_path, [(FE, [], []), (FE.upper(), [], [])])


# ------------------------------------------------------------------------------ CLI


def test_cli_defaults_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert _cli(["certs", "init", "--out", str(out), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert sorted(Path(p).name for p in written) == ["ca.crt", "ca.key", f"{FE}.crt", f"{FE}.key"]
    cert = certs.load_certificate(out / f"{FE}.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [FE, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]

    assert _cli(["certs", "init", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_options_and_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["certs", "init", "--out", str(tmp_path), "--name", "a.example", "--name", "b.example"]
    argv += ["--san", POOL, "--ip", "127.0.1.1", "--ip", "::1"]
    assert _cli(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(line.startswith("wrote ") for line in lines)
    b = certs.load_certificate(tmp_path / "b.example.crt")
    san = b.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["b.example", POOL]
    assert len(san.get_values_for_type(x509.IPAddress)) == 2

    again = ["certs", "init", "--out", str(tmp_path), "--name", "a.example", "--san", POOL]
    assert _cli([*again, "--ip", "::1", "--ip", "127.0.1.1"]) == 0
    assert "nothing written" in capsys.readouterr().out
    # the defaults (SAN localhost, IP 127.0.0.1) are not covered by a.example's cert: reissued
    assert _cli(["certs", "init", "--out", str(tmp_path), "--name", "a.example"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert _cli([*argv, "--force"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["certs", "init", "--out", str(tmp_path), "--name", "*.pool.local"]) == 1
    assert "wildcard" in capsys.readouterr().err
    assert _cli(["certs", "init", "--out", str(tmp_path), "--ip", "300.1.1.1"]) == 1
    assert "IP" in capsys.readouterr().err
    assert _cli(["certs"]) == 2


# ------------------------------------------------------------------------------ TLS handshakes


@dataclass
class _Side:
    error: BaseException | None = None
    version: str | None = None
    peercert: dict[str, Any] | None = None
    data: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


def _handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str = FE,
) -> tuple[_Side, _Side]:
    """Run one TLS connection over loopback TCP; the server sends b"ok" after the handshake."""
    srv, cli = _Side(), _Side()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                srv.version = tls.version()
                srv.peercert = tls.getpeercert()
                tls.sendall(b"ok")
                srv.data = tls.recv(16)  # wait for the client's reply (or its close)
        except (OSError, ssl.SSLError) as exc:
            srv.error = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            cli.version = tls.version()
            cli.peercert = tls.getpeercert()
            cli.data = tls.recv(16)
            if cli.data:
                tls.sendall(b"bye")
    except (OSError, ssl.SSLError) as exc:
        cli.error = exc
    finally:
        thread.join(10)
        listener.close()
    assert not thread.is_alive()
    return srv, cli


def _rogue_client(pki: Path) -> ssl.SSLContext:
    """A client presenting a certificate from a different CA (it trusts our CA)."""
    other = pki / "other"
    return client_ssl_context(pki / "ca.crt", other / "rogue.local.crt", other / "rogue.local.key")


def _fe_server_ctx(pki: Path, **kw: Any) -> ssl.SSLContext:
    return server_ssl_context(pki / f"{FE}.crt", pki / f"{FE}.key", **kw)


def test_tls_handshake_server_auth(pki: Path) -> None:
    srv, cli = _handshake(_fe_server_ctx(pki), client_ssl_context(pki / "ca.crt"))
    assert srv.error is None and cli.error is None
    assert cli.data == b"ok" and srv.data == b"bye"
    assert cli.version in ("TLSv1.2", "TLSv1.3")
    assert peer_identities(cli.peercert) == [FE, POOL, "localhost"]
    assert peer_identities(srv.peercert) == []  # plain client, no certificate


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", POOL])
def test_tls_hostname_matches_san(pki: Path, host: str) -> None:
    _, cli = _handshake(_fe_server_ctx(pki), client_ssl_context(pki / "ca.crt"), host)
    assert cli.error is None and cli.data == b"ok"


def test_tls_wrong_hostname_refused(pki: Path) -> None:
    _, cli = _handshake(_fe_server_ctx(pki), client_ssl_context(pki / "ca.crt"), "other.local")
    assert isinstance(cli.error, ssl.SSLCertVerificationError)


def test_tls_untrusted_server_refused(pki: Path) -> None:
    _, cli = _handshake(_fe_server_ctx(pki), client_ssl_context(pki / "other" / "ca.crt"))
    assert isinstance(cli.error, ssl.SSLCertVerificationError)


def test_tls12_only_client_accepted(pki: Path) -> None:
    client = client_ssl_context(pki / "ca.crt")
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    srv, cli = _handshake(_fe_server_ctx(pki), client)
    assert cli.error is None and cli.version == "TLSv1.2" and srv.version == "TLSv1.2"


def _tls11_client(pki: Path) -> ssl.SSLContext:
    """A client that only speaks TLS 1.0/1.1 (security level lowered so OpenSSL 3 allows it)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pki / "ca.crt")
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    return client


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_client_refused(pki: Path) -> None:
    # Control: a permissive server does complete a TLS 1.1 handshake with this client, so the
    # refusal below comes from our server's minimum version, not from the client's OpenSSL.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(pki / f"{FE}.crt", pki / f"{FE}.key")
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    _, control = _handshake(permissive, _tls11_client(pki))
    if control.error is not None or control.version != "TLSv1.1":
        pytest.skip(f"this OpenSSL cannot negotiate TLS 1.1 at all: {control.error}")

    srv, cli = _handshake(_fe_server_ctx(pki), _tls11_client(pki))
    assert cli.error is not None and cli.data == b""
    assert isinstance(srv.error, ssl.SSLError) and srv.version is None
    assert "protocol" in str(srv.error).lower()


def test_mutual_tls_between_fes(pki: Path) -> None:
    server = _fe_server_ctx(pki, ca=pki / "ca.crt", require_client_cert=True)
    client = client_ssl_context(pki / "ca.crt", pki / f"{FE2}.crt", pki / f"{FE2}.key")
    srv, cli = _handshake(server, client)
    assert srv.error is None and cli.error is None and cli.data == b"ok"
    assert peer_identities(srv.peercert) == [FE2, POOL, "localhost"]


def _expect_client_refused(srv: _Side, cli: _Side) -> None:
    # TLS 1.3: the client may finish its side before the server rejects its certificate, so it
    # sees the alert on its first read; the server never completes the handshake.
    assert isinstance(srv.error, ssl.SSLError)
    assert srv.version is None and srv.peercert is None
    assert cli.data == b""


def test_mutual_tls_foreign_ca_refused(pki: Path) -> None:
    server = _fe_server_ctx(pki, ca=pki / "ca.crt", require_client_cert=True)
    client = _rogue_client(pki)
    srv, cli = _handshake(server, client)
    _expect_client_refused(srv, cli)
    assert "certificate" in str(srv.error).lower() or "unknown ca" in str(srv.error).lower()


def test_mutual_tls_missing_client_cert_refused(pki: Path) -> None:
    server = _fe_server_ctx(pki, ca=pki / "ca.crt", require_client_cert=True)
    srv, cli = _handshake(server, client_ssl_context(pki / "ca.crt"))
    _expect_client_refused(srv, cli)


def test_optional_client_cert(pki: Path) -> None:
    server = _fe_server_ctx(pki, ca=pki / "ca.crt")
    srv, cli = _handshake(server, client_ssl_context(pki / "ca.crt"))
    assert srv.error is None and cli.data == b"ok" and peer_identities(srv.peercert) == []
    client = client_ssl_context(pki / "ca.crt", pki / f"{FE2}.crt", pki / f"{FE2}.key")
    srv, cli = _handshake(server, client)
    assert srv.error is None and peer_identities(srv.peercert)[0] == FE2
    # a foreign-CA certificate that *is* sent must still verify
    client = _rogue_client(pki)
    srv, cli = _handshake(server, client)
    _expect_client_refused(srv, cli)


def test_context_settings(pki: Path) -> None:
    server = _fe_server_ctx(pki)
    client = client_ssl_context(pki / "ca.crt")
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_NONE
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert _fe_server_ctx(pki, ca=pki / "ca.crt").verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ValueError):
        server_ssl_context(pki / f"{FE}.crt", pki / f"{FE}.key", require_client_cert=True)
    with pytest.raises(ValueError):
        client_ssl_context(pki / "ca.crt", key=pki / f"{FE}.key")
    with pytest.raises(ssl.SSLError):  # key of another certificate
        server_ssl_context(pki / f"{FE}.crt", pki / f"{FE2}.key")
