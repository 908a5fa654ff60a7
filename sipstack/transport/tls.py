"""TLS contexts for SIP over TLS listeners and connections (DESIGN.md §5).

Both helpers build :class:`ssl.SSLContext` objects that only negotiate TLS 1.2 or newer
(RFC 8996 deprecates TLS 1.0/1.1; RFC 3261 §26.3.1 mandates TLS for SIPS). They take file paths
to PEM files such as those written by ``registrar certs init`` (``registrar/certs.py``).

The same listener (port 5061) serves SIP clients and peer servers. Clients normally present no
certificate, so a front end's server context asks for one (``CERT_OPTIONAL``) whenever a CA is
configured, and verifies it against that CA if one is sent. Whether a verified peer counts as a
*server* (its CN/SAN names a Known Servers Table entry, DESIGN.md §5-6) is decided above this
layer, from :func:`peer_identities`.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

StrPath = str | os.PathLike[str]
"""A filesystem path accepted by the helpers in this module."""

__all__ = [
    "MINIMUM_TLS_VERSION",
    "StrPath",
    "client_ssl_context",
    "peer_identities",
    "server_ssl_context",
]

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2
"""Oldest protocol version either side accepts (DESIGN.md §5: "TLS ≥ 1.2")."""


def server_ssl_context(
    cert: StrPath,
    key: StrPath | None,
    ca: StrPath | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """Build the server-side TLS context of a SIP listener.

    Args:
        cert: PEM file with the FE's certificate (optionally followed by intermediates).
        key: PEM file with the certificate's private key (unencrypted), or ``None`` when the key
            is in ``cert``.
        ca: PEM file with the CA certificate(s) client certificates must chain to. With a CA and
            ``require_client_cert=False`` a client certificate is *requested* and, if sent,
            verified (``ssl.CERT_OPTIONAL``); without a CA none is requested.
        require_client_cert: demand a client certificate chained to ``ca`` (mutual TLS, used for
            server-to-server traffic, DESIGN.md §5); handshakes without one fail.

    Returns:
        A context with ``minimum_version = TLSv1_2``, suitable for
        ``asyncio.start_server(..., ssl=ctx)`` or ``ctx.wrap_socket(sock, server_side=True)``.

    Raises:
        ValueError: ``require_client_cert`` is set but no ``ca`` is given.
        OSError: a file cannot be read.
        ssl.SSLError: a file is not valid PEM, or the key does not match the certificate.
    """
    if require_client_cert and ca is None:
        raise ValueError("require_client_cert needs a CA file to verify client certificates")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_TLS_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME; already the default in CPython 3.10+
    ctx.load_cert_chain(certfile=cert, keyfile=key)
    if ca is not None:
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_ssl_context(
    ca: StrPath | None,
    cert: StrPath | None = None,
    key: StrPath | None = None,
) -> ssl.SSLContext:
    """Build the client-side TLS context used to connect to an FE or a peer server.

    The server's certificate must chain to ``ca`` and name the host passed as
    ``server_hostname`` (a DNS name matched against the SAN DNS entries, or an IP address matched
    against the SAN IP entries; RFC 5922 §7, RFC 6125). ``check_hostname`` is on.

    Args:
        ca: PEM file with the trusted CA certificate(s); ``None`` uses the system trust store.
        cert: PEM file with a client certificate to present (mutual TLS between FEs, DESIGN.md §5).
            FEs present the same certificate they serve with (it carries EKU clientAuth).
        key: PEM file with the client certificate's private key, or ``None`` when the key is in
            ``cert``. Ignored without ``cert``.

    Returns:
        A context with ``minimum_version = TLSv1_2``, ``verify_mode = CERT_REQUIRED`` and
        ``check_hostname = True``.

    Raises:
        ValueError: ``key`` is given without ``cert``.
        OSError: a file cannot be read.
        ssl.SSLError: a file is not valid PEM, or the key does not match the certificate.
    """
    if key is not None and cert is None:
        raise ValueError("a client key was given without a client certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MINIMUM_TLS_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca is not None:
        ctx.load_verify_locations(cafile=ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx


def peer_identities(peercert: dict[str, Any] | None) -> list[str]:
    """Names a verified peer certificate vouches for: its subject CN(s), then its SAN DNS names.

    Args:
        peercert: the dict returned by ``SSLSocket.getpeercert()`` /
            ``SSLObject.getpeercert()`` (only filled in for a *verified* certificate), or
            ``None``/``{}`` when the peer sent no certificate.

    Returns:
        Lower-cased names without duplicates, in certificate order; empty when there is no
        verified certificate. The KST check (DESIGN.md §5-6) compares these with its entries.
    """
    if not peercert:
        return []
    names: list[str] = []
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                names.append(str(value).lower())
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            names.append(str(value).lower())
    return list(dict.fromkeys(names))
