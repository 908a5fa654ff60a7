"""Test/pool PKI: a private CA and one TLS certificate per front end (DESIGN.md §5).

``registrar certs init`` writes into a directory (default ``certs/``; with ``--topology FILE``
the topology's ``paths.certs``, and one certificate per FE of the topology):

* ``ca.crt`` / ``ca.key`` — a self-signed CA (EC P-256), reused on later runs;
* ``<fqdn>.crt`` / ``<fqdn>.key`` — per FE: subject CN = the FE's FQDN (never a wildcard,
  ``reference/seed-excerpts.md`` §6), SAN = the FQDN, extra DNS names (the pool FQDN,
  ``localhost``) and IP addresses; EKU serverAuth *and* clientAuth because FEs present the same
  certificate on their listeners and as clients of mutual TLS between FEs.

Private keys are PKCS#8 PEM, unencrypted, file mode ``0600``; they are generated, never
committed. Certificates follow RFC 5280 profiles (basicConstraints, keyUsage, SKI/AKI), and SIP
peers match names as in RFC 5922 §7.1. Everything is done with the ``cryptography`` library.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .cliutil import add_group
from .topology import TopologyError, load_topology

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_FE_NAME",
    "DEFAULT_IPS",
    "DEFAULT_OUT_DIR",
    "DEFAULT_SANS",
    "CertSpec",
    "PrivateKey",
    "add_cli",
    "cert_paths",
    "create_ca",
    "init_certs",
    "issue_server_cert",
    "load_certificate",
    "load_private_key",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""Private key types this module generates (EC P-256) or accepts when loading (EC, RSA)."""

CertSpec = tuple[str, list[str], list[str]]
"""One FE certificate to issue: ``(fqdn, extra SAN DNS names, SAN IP addresses)``."""

CA_CERT_FILE = "ca.crt"
"""File name of the CA certificate inside the output directory."""
CA_KEY_FILE = "ca.key"
"""File name of the CA private key inside the output directory."""
DEFAULT_OUT_DIR = Path("certs")
"""Default output directory of ``registrar certs init`` (relative to the working directory)."""
DEFAULT_FE_NAME = "fe1.local"
"""FE FQDN used when ``--name`` is not given."""
DEFAULT_SANS: tuple[str, ...] = ("localhost",)
"""Extra SAN DNS names used when ``--san`` is not given."""
DEFAULT_IPS: tuple[str, ...] = ("127.0.0.1",)
"""SAN IP addresses used when ``--ip`` is not given."""

_CLOCK_SKEW = dt.timedelta(minutes=5)
"""notBefore is backdated by this much so peers with slightly slow clocks accept new certs."""
_RENEW_MARGIN = dt.timedelta(days=1)
"""An existing certificate expiring within this margin is reissued by :func:`init_certs`."""
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _check_days(days: int) -> None:
    if days < 1:
        raise ValueError(f"validity must be at least 1 day, got {days}")


def _normalize_dns(name: str, what: str) -> str:
    """Lower-case a DNS name, strip one trailing dot, and validate it (LDH labels, no '*')."""
    if "*" in name:
        raise ValueError(f"{what} {name!r}: wildcard names are not allowed (DESIGN.md §5)")
    norm = name.strip().lower().removesuffix(".")
    if not norm or len(norm) > 253 or not all(_LABEL.match(lbl) for lbl in norm.split(".")):
        raise ValueError(f"{what} {name!r} is not a valid DNS name")
    return norm


def create_ca(
    common_name: str = "SIP Pool Test CA", days: int = 3650
) -> tuple[x509.Certificate, PrivateKey]:
    """Create a self-signed CA certificate and its private key.

    Args:
        common_name: subject/issuer CN of the CA.
        days: validity in days from now (notBefore is backdated by 5 minutes for clock skew).

    Returns:
        ``(certificate, key)``: an EC P-256 key and a SHA-256-signed certificate with
        basicConstraints ``CA:TRUE, pathlen:0`` (critical), keyUsage keyCertSign+cRLSign
        (critical) and a subject key identifier (RFC 5280 §4.2.1).

    Raises:
        ValueError: ``common_name`` is empty or ``days < 1``.
    """
    if not common_name.strip():
        raise ValueError("the CA common name must not be empty")
    _check_days(days)
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SIP registrar pool"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    fqdn: str,
    san_dns: Sequence[str],
    san_ips: Sequence[str],
    days: int = 825,
) -> tuple[x509.Certificate, PrivateKey]:
    """Issue an FE certificate (new EC P-256 key) signed by the CA.

    Args:
        ca_cert: the issuing CA certificate (from :func:`create_ca` or :func:`load_certificate`).
        ca_key: the CA's private key.
        fqdn: the FE's FQDN; becomes the subject CN and the first SAN DNS entry. Lower-cased,
            one trailing dot stripped.
        san_dns: further SAN DNS names (e.g. the pool FQDN, ``localhost``); duplicates dropped.
        san_ips: SAN IP addresses (IPv4 or IPv6 literals, e.g. ``"127.0.0.1"``).
        days: validity in days from now (825 = the CA/Browser Forum maximum this profile follows).

    Returns:
        ``(certificate, key)`` with subject CN = ``fqdn``, SAN = DNS names + IP addresses,
        basicConstraints ``CA:FALSE`` (critical), keyUsage digitalSignature (+keyEncipherment for
        RSA keys) (critical), EKU serverAuth+clientAuth, subject and authority key identifiers.

    Raises:
        ValueError: ``fqdn`` or a SAN DNS name contains ``*`` (wildcards are refused, DESIGN.md §5,
            ``reference/seed-excerpts.md`` §6) or is not a valid DNS name; an IP address is
            invalid; ``days < 1``.
    """
    cn = _normalize_dns(fqdn, "FQDN")
    dns = list(dict.fromkeys([cn, *(_normalize_dns(n, "SAN DNS name") for n in san_dns)]))
    try:
        ips = list(dict.fromkeys(ipaddress.ip_address(ip.strip()) for ip in san_ips))
    except ValueError as exc:
        raise ValueError(f"invalid SAN IP address: {exc}") from None
    _check_days(days)

    key = _new_key()
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,  # RSA key transport; ECDHE+ECDSA only signs
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def load_certificate(path: Path) -> x509.Certificate:
    """Load a PEM certificate (the first one in the file).

    Raises:
        OSError: the file cannot be read.
        ValueError: the file holds no valid PEM certificate.
    """
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM private key (PKCS#8 or traditional).

    Raises:
        OSError: the file cannot be read.
        ValueError: not a valid unencrypted PEM key, or not an EC/RSA key.
        TypeError: the key is encrypted.
    """
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def cert_paths(out_dir: Path, fqdn: str) -> tuple[Path, Path]:
    """Return ``(certificate path, key path)`` of the FE ``fqdn`` inside ``out_dir``.

    Raises:
        ValueError: ``fqdn`` is not a valid non-wildcard DNS name.
    """
    name = _normalize_dns(fqdn, "FQDN")
    out = Path(out_dir)
    return out / f"{name}.crt", out / f"{name}.key"


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename; the file ends with ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; keys stay 0600 from the first byte
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.chmod(path, mode)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _load_ca(out: Path) -> tuple[x509.Certificate, PrivateKey] | None:
    """Load an existing usable CA from ``out``; ``None`` when neither file exists."""
    crt, key = out / CA_CERT_FILE, out / CA_KEY_FILE
    if not crt.exists() and not key.exists():
        return None
    if not (crt.exists() and key.exists()):
        present = crt if crt.exists() else key
        raise ValueError(f"{present} exists without its pair; use --force to create a new CA")
    ca_cert, ca_key = load_certificate(crt), load_private_key(key)
    if not _same_public_key(ca_cert, ca_key):
        raise ValueError(f"{key} does not match {crt}; use --force to create a new CA")
    if ca_cert.not_valid_after_utc <= _now() + _RENEW_MARGIN:
        raise ValueError(f"{crt} has expired or expires within a day; use --force")
    return ca_cert, ca_key


def _existing_cert_ok(
    crt: Path, key: Path, ca_cert: x509.Certificate, dns: Iterable[str], ips: Iterable[str]
) -> bool:
    """Whether ``crt``/``key`` exist, match, chain to ``ca_cert``, are current and cover names."""
    if not (crt.exists() and key.exists()):
        return False
    try:
        cert, fe_key = load_certificate(crt), load_private_key(key)
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    want_dns = {_normalize_dns(n, "SAN DNS name") for n in dns}
    want_ips = {ipaddress.ip_address(ip.strip()) for ip in ips}
    return (
        _same_public_key(cert, fe_key)
        and cert.not_valid_after_utc > _now() + _RENEW_MARGIN
        and want_dns <= have_dns
        and want_ips <= have_ips
    )


def init_certs(out_dir: Path, names: Sequence[CertSpec], force: bool = False) -> list[Path]:
    """Create (or complete) the CA and the FE certificates in ``out_dir``.

    Writes ``ca.crt``/``ca.key`` unless a matching, unexpired pair already exists, then
    ``<fqdn>.crt``/``<fqdn>.key`` for each ``(fqdn, san_dns, san_ips)`` of ``names``. An existing
    FE pair is kept when its key matches, it is signed by the CA in use, is not about to expire
    (1 day margin) and its SAN already covers ``fqdn`` + ``san_dns`` + ``san_ips``; otherwise it
    is reissued. A new CA therefore reissues every FE certificate. Files are replaced atomically;
    key files get mode ``0600``, certificates ``0644``. ``out_dir`` is created if missing.

    Args:
        out_dir: output directory.
        names: FE certificates to ensure, see :data:`CertSpec`.
        force: create a new CA and reissue every FE certificate even if the files are fine.

    Returns:
        The paths written, in writing order (empty when everything was already up to date).

    Raises:
        ValueError: an invalid/wildcard FQDN, SAN name or IP; two specs for one FQDN; an
            unusable existing CA (half of the pair missing, mismatched, expired) without
            ``force``.
        OSError: the directory or a file cannot be written.
    """
    out = Path(out_dir)
    specs: dict[str, CertSpec] = {}
    for fqdn, dns, ips in names:
        cn = _normalize_dns(fqdn, "FQDN")
        if cn in specs:
            raise ValueError(f"FQDN {cn!r} listed twice")
        specs[cn] = (cn, list(dns), list(ips))
        for n in dns:
            _normalize_dns(n, "SAN DNS name")
        for ip in ips:
            try:
                ipaddress.ip_address(ip.strip())
            except ValueError:
                raise ValueError(f"invalid SAN IP address {ip!r}") from None

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ca = None if force else _load_ca(out)
    new_ca = ca is None
    if ca is None:
        ca = create_ca()
        _write_atomic(out / CA_KEY_FILE, _key_pem(ca[1]), 0o600)
        _write_atomic(out / CA_CERT_FILE, _cert_pem(ca[0]), 0o644)
        written += [out / CA_CERT_FILE, out / CA_KEY_FILE]
    ca_cert, ca_key = ca

    for cn, dns, ips in specs.values():
        crt, key = cert_paths(out, cn)
        if not (force or new_ca) and _existing_cert_ok(crt, key, ca_cert, [cn, *dns], ips):
            continue
        cert, fe_key = issue_server_cert(ca_cert, ca_key, cn, dns, ips)
        _write_atomic(key, _key_pem(fe_key), 0o600)
        _write_atomic(crt, _cert_pem(cert), 0o644)
        written += [crt, key]
    return written


# --------------------------------------------------------------------------------------------
# CLI: ``registrar certs init``


def _names_from_args(args: argparse.Namespace) -> list[CertSpec]:
    """Turn parsed ``certs init`` options into the FE certificate specs to ensure.

    Without ``--topology``, every FE named by ``--name`` (default ``fe1.local``) gets the same
    ``--san`` DNS names and ``--ip`` addresses (defaults ``localhost``, ``127.0.0.1``).

    With ``--topology FILE``, every FE of the topology gets a certificate with SAN = its FQDN,
    its pool's FQDN and its IP address, plus any explicit ``--san``/``--ip``; FEs named by
    ``--name`` are added with the ``--san``/``--ip`` values (or the defaults).

    Raises:
        TopologyError: the topology file is invalid (a ValueError).
    """
    sans = args.san if args.san is not None else list(DEFAULT_SANS)
    ips = args.ip if args.ip is not None else list(DEFAULT_IPS)
    if getattr(args, "topology", None) is None:
        fqdns = args.name or [DEFAULT_FE_NAME]
        return [(fqdn, list(sans), list(ips)) for fqdn in fqdns]
    topo = load_topology(args.topology)
    specs: list[CertSpec] = [
        (fe.fqdn, [pool.fqdn, *(args.san or [])], [fe.ip, *(args.ip or [])])
        for pool in topo.pools
        for fe in pool.front_ends
    ]
    specs += [(fqdn, list(sans), list(ips)) for fqdn in args.name or []]
    return specs


def _out_dir(args: argparse.Namespace) -> Path:
    """``--out``, else the topology's ``paths.certs`` with ``--topology``, else ``certs/``."""
    if args.out is not None:
        return Path(args.out)
    if getattr(args, "topology", None) is not None:
        return load_topology(args.topology).paths.certs
    return DEFAULT_OUT_DIR


def _cmd_certs_init(args: argparse.Namespace) -> int:
    """Handler of ``registrar certs init``; returns the process exit code."""
    try:
        names = _names_from_args(args)
        args.out = _out_dir(args)
    except TopologyError as exc:
        print(f"registrar certs init: {exc}", file=sys.stderr)
        return 2
    try:
        written = init_certs(args.out, names, force=args.force)
    except (ValueError, OSError) as exc:
        print(f"registrar certs init: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([str(p) for p in written]))
    elif written:
        for path in written:
            print(f"wrote {path}")
    else:
        print(f"certificates in {args.out} are up to date; nothing written")
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``certs`` command (subcommand ``init``) on an argparse subparsers object.

    ``registrar certs init [--out DIR] [--topology FILE] [--name FQDN ...] [--san DNS ...]
    [--ip ADDR ...] [--force] [--json]``. The handler is stored as ``args.func``
    (``func(args) -> int`` exit code: 0 success, 1 error, 2 usage or an invalid topology);
    ``registrar certs`` alone prints help and returns 2.

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()`` of the main CLI.
    """
    sub = add_group(
        subparsers,
        "certs",
        help="manage the pool's TLS certificates (DESIGN.md §5)",
        description="Manage the CA and the per-FE TLS certificates.",
    )
    init = sub.add_parser(
        "init",
        help="create the CA and FE certificates (keeps valid existing ones)",
        description=(
            "Write ca.crt/ca.key and <fqdn>.crt/<fqdn>.key for each FE into DIR. Existing files "
            "that are still valid are kept unless --force. CN = FE FQDN (no wildcards); SAN = "
            "FQDN + --san names + --ip addresses; EKU serverAuth+clientAuth."
        ),
    )
    init.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"output directory (default: the topology's paths.certs with --topology, else "
        f"{DEFAULT_OUT_DIR})",
    )
    init.add_argument(
        "--name",
        action="append",
        metavar="FQDN",
        help=f"FE FQDN to issue a certificate for; repeatable (default: {DEFAULT_FE_NAME})",
    )
    init.add_argument(
        "--san",
        action="append",
        metavar="DNS",
        help="extra SAN DNS name for every FE, e.g. the pool FQDN; repeatable "
        f"(default: {' '.join(DEFAULT_SANS)})",
    )
    init.add_argument(
        "--ip",
        action="append",
        metavar="ADDR",
        help=f"SAN IP address for every FE; repeatable (default: {' '.join(DEFAULT_IPS)})",
    )
    init.add_argument(
        "--topology",
        type=Path,
        metavar="FILE",
        help="issue one certificate per FE of this topology file (SAN: FE FQDN, pool FQDN, "
        "FE IP, plus any --san/--ip) into its paths.certs directory unless --out is given",
    )
    init.add_argument(
        "--force", action="store_true", help="create a new CA and reissue all certificates"
    )
    init.add_argument("--json", action="store_true", help="print the written paths as a JSON list")
    init.set_defaults(func=_cmd_certs_init)
