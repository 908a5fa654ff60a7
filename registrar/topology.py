"""The pool topology: a TOML file of pools, front ends, server IDs and settings (DESIGN.md §8).

The topology is the management store's description of the deployment (the role Lync's Central
Management Store plays, ``reference/seed-excerpts.md`` §8): sites, pools with their SIP domains,
each pool's front ends (FEs) with their **server IDs** (DESIGN.md §2, §4), trusted applications
for the Known Servers Table (DESIGN.md §6), pool-wide settings, paths and the embedded DNS
server's address. Every FE loads it at start and compares its ``version`` (and
:meth:`Topology.digest`) with its peers in heartbeats.

Reading uses :mod:`tomllib`; :func:`load_topology` validates everything an operator can get
wrong and raises :class:`TopologyError` naming the file, the key (``pools[0].front_ends[2]
.server_id``), the problem and a fix. :func:`commission` and :func:`decommission` edit the
file with ``tomlkit`` so comments and formatting survive, bump ``version``, validate the result
and replace the file atomically only when it is valid. The schema, defaults and rules are
documented for operators in ``docs/topology.md``; ``examples/contoso.toml`` is a full example.

Command line (:func:`add_cli`)::

    registrar topology validate FILE [--json]
    registrar topology show FILE [--json]
    registrar topology commission FILE --pool P --fqdn F --ip A [--tls-port N] [--tcp-port N]
                                  [--udp-port N] [--admin-port N] [--site S] [--server-id N]
                                  [--json]
    registrar topology decommission FILE --fqdn F [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import ipaddress
import json
import os
import random
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomlkit
import tomlkit.items

from .cliutil import add_group

__all__ = [
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_DNS_LISTEN",
    "DEFAULT_TCP_PORT",
    "DEFAULT_TLS_PORT",
    "MAX_SERVERS_LIMIT",
    "TRUSTED_APP_VERSIONS",
    "FrontEndSpec",
    "Paths",
    "PoolSpec",
    "Settings",
    "SiteSpec",
    "Topology",
    "TopologyError",
    "TrustedApplication",
    "add_cli",
    "commission",
    "decommission",
    "load_topology",
    "parse_topology",
]

MAX_SERVERS_LIMIT = 10
"""Largest ``max_servers`` of a pool: the field's convention (at most 10 FEs per pool, and the
hash space of the logical registrar sequence, ``reference/seed-excerpts.md`` §1)."""
DEFAULT_TLS_PORT = 5061
"""SIP over TLS port of an FE when ``tls_port`` is absent (DESIGN.md §5)."""
DEFAULT_TCP_PORT = 5060
"""SIP over TCP port of an FE without ``tcp_port`` when ``settings.enable_tcp`` is true."""
DEFAULT_ADMIN_PORT = 5080
"""Admin HTTP API port of an FE when ``admin_port`` is absent."""
DEFAULT_DNS_LISTEN = "127.0.1.53:5353"
"""``dns.listen`` default: where ``registrar dns serve`` answers."""
TRUSTED_APP_VERSIONS = frozenset({0, 5, 6})
"""Valid trusted-application versions (DESIGN.md §6): 6 = 2013-class, 5 = 2010-class, 0 = any."""
DIGEST_ALGORITHMS = ("MD5", "SHA-256")
"""Digest algorithms the registrar can challenge with (RFC 3261 §22, RFC 8760)."""

_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_T = TypeVar("_T")


# ============================================================================================
# Errors


class TopologyError(ValueError):
    """A topology file (or an edit of it) is invalid.

    Attributes:
        path: the topology file, as given (``None`` when parsing text without a file).
        key: where the problem is, as a TOML key path such as
            ``pools[0].front_ends[2].server_id`` (``None`` for whole-file problems such as a
            missing file or a TOML syntax error).
        message: what is wrong, including the offending value.
        fix: what the operator should do about it (``None`` when nothing useful can be said).
        line, column: 1-based position of a TOML syntax error, else ``None``.

    ``str()`` is one line: ``contoso.toml: pools[0].front_ends[2].server_id: 11 is outside
    1..10 (max_servers); fix: pick a free ID in 1..10 or run 'registrar topology commission'``.
    """

    def __init__(
        self,
        path: Path | str | None,
        key: str | None,
        message: str,
        fix: str | None = None,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = path
        self.key = key
        self.message = message
        self.fix = fix
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [str(self.path) if self.path is not None else "<topology>"]
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        text = ": ".join(parts)
        return f"{text}; fix: {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"path", "key", "message", "fix", "line", "column", "error"}`` where
        ``error`` is ``str(self)``."""
        return {
            "path": None if self.path is None else str(self.path),
            "key": self.key,
            "message": self.message,
            "fix": self.fix,
            "line": self.line,
            "column": self.column,
            "error": str(self),
        }


# ============================================================================================
# Model


@dataclass(frozen=True, slots=True)
class Settings:
    """Pool-wide settings (table ``[settings]``; every key optional, defaults below).

    Times are seconds (floats allowed where noted), expiries are whole seconds.
    """

    heartbeat_interval: float = 1.0
    """Seconds between heartbeats an FE sends each peer (DESIGN.md §4)."""
    heartbeat_timeout: float = 3.0
    """Seconds without a heartbeat after which a peer is down; > ``heartbeat_interval``."""
    backup_max_expires: int = 300
    """Expiry cap (s) of backup-mode registrations; bounds how long a re-home can take."""
    min_expires: int = 60
    """Shortest registration (s) accepted; shorter requests get 423 (RFC 3261 §10.3 step 7)."""
    max_expires: int = 7200
    """Longest registration (s) granted; longer requests are shortened."""
    default_expires: int = 3600
    """Expiry (s) used when the REGISTER states none."""
    max_contacts: int = 10
    """Bindings per AOR."""
    rehome_batch_users: int = 50
    """AORs de-registered per re-home batch (all bindings of an AOR in the same batch)."""
    rehome_batch_interval: float = 1.0
    """Seconds between re-home batches."""
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    """Digest challenge order (``WWW-Authenticate`` headers, first = most preferred)."""
    enable_tcp: bool = False
    """Whether FEs without ``tcp_port`` listen on SIP over TCP 5060 (DESIGN.md §5)."""


@dataclass(frozen=True, slots=True)
class Paths:
    """Absolute paths from ``[paths]`` (relative values are resolved against the directory of
    the topology file)."""

    certs: Path
    """Directory of ``ca.crt`` and the per-FE ``<fqdn>.crt``/``<fqdn>.key``."""
    users_db: Path
    """The user directory (SQLite, :mod:`registrar.users`)."""
    state_dir: Path
    """Parent of the per-FE state directories ``state_dir/<fe fqdn>/``."""


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """A site (``[[sites]]``): a named location holding pools and FEs."""

    name: str


@dataclass(frozen=True, slots=True)
class FrontEndSpec:
    """One front end of a pool (``[[pools.front_ends]]``).

    Ports are integers in 1..65535; ``tcp_port`` and ``udp_port`` are 0 when that transport is
    off. ``fqdn`` is lower case; ``ip`` is the canonical text of the address.
    """

    fqdn: str
    server_id: int
    ip: str
    tls_port: int
    tcp_port: int
    udp_port: int
    admin_port: int
    site: str
    pool: str
    """FQDN of the pool the FE belongs to."""

    def listeners(self) -> list[tuple[str, str, int]]:
        """The SIP listeners as ``(transport, ip, port)``: TLS first, then TCP and UDP when on."""
        out = [("tls", self.ip, self.tls_port)]
        if self.tcp_port:
            out.append(("tcp", self.ip, self.tcp_port))
        if self.udp_port:
            out.append(("udp", self.ip, self.udp_port))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form (keys as in the TOML file, plus ``pool``)."""
        return {
            "fqdn": self.fqdn,
            "server_id": self.server_id,
            "ip": self.ip,
            "tls_port": self.tls_port,
            "tcp_port": self.tcp_port,
            "udp_port": self.udp_port,
            "admin_port": self.admin_port,
            "site": self.site,
            "pool": self.pool,
        }


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A pool (``[[pools]]``): one FQDN, its SIP domains and up to ``max_servers`` FEs."""

    fqdn: str
    domains: tuple[str, ...]
    max_servers: int
    site: str
    front_ends: tuple[FrontEndSpec, ...]

    @property
    def by_id(self) -> dict[int, FrontEndSpec]:
        """Server ID → FE, for the commissioned IDs (the physical registrar sequence's map).
        Built on each access (at most 10 entries): keep a reference in hot paths."""
        return {fe.server_id: fe for fe in self.front_ends}

    @property
    def free_ids(self) -> list[int]:
        """Server IDs in ``1..max_servers`` not assigned to an FE, ascending."""
        used = {fe.server_id for fe in self.front_ends}
        return [i for i in range(1, self.max_servers + 1) if i not in used]

    def fe(self, fqdn: str) -> FrontEndSpec:
        """The FE of this pool named ``fqdn`` (case-insensitive, trailing dot ignored).

        Raises:
            KeyError: no such FE in this pool.
        """
        name = _fold(fqdn)
        for fe in self.front_ends:
            if fe.fqdn == name:
                return fe
        raise KeyError(f"no front end {fqdn!r} in pool {self.fqdn}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``fqdn``, ``domains``, ``max_servers``, ``site``, ``front_ends`` (in
        server ID order, each :meth:`FrontEndSpec.to_dict`) and ``free_ids``."""
        return {
            "fqdn": self.fqdn,
            "domains": list(self.domains),
            "max_servers": self.max_servers,
            "site": self.site,
            "front_ends": [
                fe.to_dict() for fe in sorted(self.front_ends, key=lambda f: f.server_id)
            ],
            "free_ids": self.free_ids,
        }


@dataclass(frozen=True, slots=True)
class TrustedApplication:
    """A trusted application (``[[trusted_applications]]``), a KST entry (DESIGN.md §6).

    ``version``: 6 = 2013-class, 5 = 2010-class, 0 = any version.
    """

    fqdn: str
    version: int
    pool: str
    """FQDN of the pool that trusts it."""
    port: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form (keys as in the TOML file)."""
        return {"fqdn": self.fqdn, "version": self.version, "pool": self.pool, "port": self.port}


@dataclass(frozen=True, slots=True)
class Topology:
    """A validated topology (see :func:`load_topology`).

    Attributes:
        path: the file it was loaded from (absolute).
        version: the topology version, bumped by every commission/decommission.
        settings: :class:`Settings`.
        paths: :class:`Paths` (absolute).
        dns_listen: ``(ip, port)`` of the embedded DNS server.
        sites, pools, trusted_applications: in file order.
    """

    path: Path
    version: int
    settings: Settings
    paths: Paths
    dns_listen: tuple[str, int]
    sites: tuple[SiteSpec, ...]
    pools: tuple[PoolSpec, ...]
    trusted_applications: tuple[TrustedApplication, ...] = field(default=())

    def pool(self, fqdn: str) -> PoolSpec:
        """The pool named ``fqdn`` (case-insensitive). Raises KeyError when there is none."""
        name = _fold(fqdn)
        for pool in self.pools:
            if pool.fqdn == name:
                return pool
        raise KeyError(f"no pool {fqdn!r} in {self.path}")

    def fe(self, fqdn: str) -> FrontEndSpec:
        """The FE named ``fqdn`` in any pool (case-insensitive). Raises KeyError."""
        name = _fold(fqdn)
        for fe in self.all_front_ends():
            if fe.fqdn == name:
                return fe
        raise KeyError(f"no front end {fqdn!r} in {self.path}")

    def pool_for_domain(self, domain: str) -> PoolSpec | None:
        """The pool serving the SIP domain ``domain`` (case-insensitive), or ``None``."""
        name = _fold(domain)
        for pool in self.pools:
            if name in pool.domains:
                return pool
        return None

    def all_front_ends(self) -> list[FrontEndSpec]:
        """Every FE of every pool, pools in file order, FEs in file order."""
        return [fe for pool in self.pools for fe in pool.front_ends]

    def state_dir_for(self, fe_fqdn: str) -> Path:
        """The FE's own state directory: ``paths.state_dir / <fe fqdn>`` (lower case)."""
        return self.paths.state_dir / _fold(fe_fqdn)

    def to_dict(self, *, local: bool = True) -> dict[str, Any]:
        """JSON form (``registrar topology show --json``).

        Keys: ``path``, ``version``, ``digest``, ``settings`` (every setting, defaults filled
        in), ``paths`` (absolute), ``dns`` (``{"listen": "ip:port"}``), ``sites``
        (``[{"name"}]``), ``pools`` (:meth:`PoolSpec.to_dict`), ``trusted_applications``.
        With ``local=False``, ``path``, ``paths`` and ``digest`` are left out (what
        :meth:`digest` hashes: the content every FE must agree on, not where files live).
        """
        s = self.settings
        settings = {name: getattr(s, name) for name in Settings.__dataclass_fields__}
        settings["digest_algorithms"] = list(s.digest_algorithms)
        host, port = self.dns_listen
        out: dict[str, Any] = {
            "version": self.version,
            "settings": settings,
            "dns": {"listen": _join_host_port(host, port)},
            "sites": [{"name": site.name} for site in self.sites],
            "pools": [pool.to_dict() for pool in self.pools],
            "trusted_applications": [app.to_dict() for app in self.trusted_applications],
        }
        if local:
            out = {
                "path": str(self.path),
                "digest": self.digest(),
                **out,
                "paths": {
                    "certs": str(self.paths.certs),
                    "users_db": str(self.paths.users_db),
                    "state_dir": str(self.paths.state_dir),
                },
            }
        return out

    def digest(self) -> str:
        """A short stable hash (16 hex digits) of the semantic content: version, settings, DNS,
        sites, pools and trusted applications — not comments, formatting, key order or local
        paths. FEs compare it in heartbeats to detect two files with one version."""
        canon = json.dumps(self.to_dict(local=False), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


# ============================================================================================
# Parsing and validation


def load_topology(path: Path | str) -> Topology:
    """Read and validate a topology file.

    Args:
        path: the TOML file; relative ``[paths]`` entries are resolved against its directory.

    Returns:
        The :class:`Topology`.

    Raises:
        TopologyError: the file cannot be read, is not UTF-8, is not valid TOML (the error has
            ``line``/``column``) or breaks a rule of ``docs/topology.md``; the error names the
            key and a fix.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TopologyError(
            path,
            None,
            f"cannot read the topology file: {exc.strerror or exc}",
            "check the path (examples/contoso.toml is a complete example)",
        ) from None
    return parse_topology(data, path)


def parse_topology(data: bytes | str, path: Path | str) -> Topology:
    """Validate topology text as if it were the file ``path`` (which need not exist).

    Raises:
        TopologyError: as :func:`load_topology`.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TopologyError(
                path, None, f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8"
            ) from None
    else:
        text = data
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        line = column = None
        m = _TOML_POS_RE.search(msg)
        if m:
            line, column = int(m.group(1)), int(m.group(2))
            msg = msg[: m.start()]
        where = f"line {line}, column {column}: " if line is not None else ""
        raise TopologyError(
            path,
            None,
            f"{where}TOML syntax error: {msg}",
            "correct the TOML at that position (strings in quotes, arrays in [..], each key "
            "once per table)",
            line=line,
            column=column,
        ) from None
    return _Validator(Path(path), path).topology(raw)


_TOP_KEYS = ("version", "settings", "paths", "dns", "sites", "pools", "trusted_applications")
_PATH_KEYS = {"certs": "certs", "users_db": "state/users.db", "state_dir": "state"}
_SITE_KEYS = ("name",)
_POOL_KEYS = ("fqdn", "domains", "max_servers", "site", "front_ends")
_FE_KEYS = (
    "fqdn",
    "server_id",
    "ip",
    "tls_port",
    "tcp_port",
    "udp_port",
    "admin_port",
    "site",
)
_APP_KEYS = ("fqdn", "version", "pool", "port")
_HINTS = {
    "front_ends": "front ends go under their pool as [[pools.front_ends]] after its [[pools]]",
    "fe": "front ends go under their pool as [[pools.front_ends]]",
    "frontends": "front ends go under their pool as [[pools.front_ends]]",
    "pool": "pools are an array of tables: write [[pools]]",
    "site": 'sites are an array of tables: write [[sites]] with name = "..."',
}


def _fold(name: str) -> str:
    return name.strip().lower().removesuffix(".")


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _key_path(where: str, name: str) -> str:
    """The TOML key path of ``name`` in the table at ``where`` (``""`` = the top level)."""
    return f"{where}.{name}" if where else name


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Validator:
    """Turns the ``tomllib`` dict into a :class:`Topology`, raising on the first problem."""

    def __init__(self, path: Path, shown: Path | str) -> None:
        self.path = path
        self.shown = shown

    # -- helpers ---------------------------------------------------------------------------

    def fail(self, key: str | None, message: str, fix: str | None = None) -> TopologyError:
        return TopologyError(self.shown, key, message, fix)

    def keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key in allowed:
                continue
            full = _key_path(where, key)
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                fix = f"did you mean '{close[0]}'?"
            elif key in _HINTS:
                fix = _HINTS[key]
            else:
                fix = "remove it; valid keys here: " + ", ".join(allowed)
            raise self.fail(full, f"unknown key '{key}'", fix)

    def absent(self, key: str, default: _T | None, fix: str) -> _T:
        """The value of the absent key ``key``: ``default``.

        Raises:
            TopologyError: there is no default (``"missing"``, with ``fix``).
        """
        if default is None:
            raise self.fail(key, "missing", fix)
        return default

    def table(self, value: object, key: str, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_type_name(value)}", what)
        return value

    def tables(self, value: object, key: str, header: str) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(
                key,
                f"expected an array of tables, got {_type_name(value)}",
                f"write each entry as a [[{header}]] table",
            )
        return value

    def integer(
        self,
        table: Mapping[str, Any],
        name: str,
        where: str,
        default: int | None,
        lo: int,
        hi: int | None = None,
        fix: str | None = None,
    ) -> int:
        key = _key_path(where, name)
        if name not in table:
            return self.absent(key, default, fix or f"add '{name} = ...'")
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(
                key,
                f"expected an integer, got {_type_name(value)} ({value!r})",
                f"write a whole number without quotes, e.g. {name} = {max(lo, default or lo)}",
            )
        if value < lo or (hi is not None and value > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.fail(key, f"{value} is outside {rng}", fix or f"use a value in {rng}")
        return value

    def number(
        self,
        table: Mapping[str, Any],
        name: str,
        where: str,
        default: float,
        *,
        positive: bool = True,
    ) -> float:
        key = f"{where}.{name}"
        if name not in table:
            return default
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(
                key,
                f"expected a number of seconds, got {_type_name(value)} ({value!r})",
                f"write a number without quotes, e.g. {name} = {default}",
            )
        if value != value or value in (float("inf"), float("-inf")):
            raise self.fail(key, f"{value} is not a finite number", f"e.g. {name} = {default}")
        if (positive and value <= 0) or value < 0:
            bound = "> 0" if positive else ">= 0"
            raise self.fail(key, f"{value} must be {bound}", f"e.g. {name} = {default}")
        return float(value)

    def string(
        self,
        table: Mapping[str, Any],
        name: str,
        where: str,
        default: str | None = None,
        fix: str | None = None,
    ) -> str:
        key = _key_path(where, name)
        if name not in table:
            return self.absent(key, default, fix or f"add '{name} = \"...\"'")
        value = table[name]
        if not isinstance(value, str):
            raise self.fail(
                key,
                f"expected a string, got {_type_name(value)} ({value!r})",
                f'put the value in double quotes: {name} = "..."',
            )
        if not value.strip():
            raise self.fail(key, "must not be empty", fix)
        return value

    def dns_name(self, value: str, key: str, *, fqdn: bool) -> str:
        name = _fold(value)
        labels = name.split(".")
        problem = None
        if "*" in name:
            problem = "wildcards are not allowed (DESIGN.md §5)"
        elif len(name) > 253 or not all(_LABEL_RE.match(lbl) for lbl in labels):
            problem = "is not a valid DNS name (letters, digits and '-' in dot-separated labels)"
        elif labels[-1].isdigit():
            problem = "looks like an IP address, not a DNS name"
        elif fqdn and len(labels) < 2:
            problem = "is not fully qualified (expected host.domain, e.g. fe1.contoso.com)"
        if problem:
            raise self.fail(key, f"{value!r} {problem}", "write a DNS name such as fe1.contoso.com")
        return name

    def fqdn(self, t: Mapping[str, Any], where: str, example: str) -> str:
        """The required key ``fqdn`` of the table ``t`` at ``where``: a fully qualified DNS
        name, folded to lower case (``example`` is shown in the fix when it is missing)."""
        text = self.string(t, "fqdn", where, fix=f'add fqdn = "{example}"')
        return self.dns_name(text, f"{where}.fqdn", fqdn=True)

    def define(self, seen: dict[str, str], fqdn: str, where: str, what: str, fix: str) -> None:
        """Record that the table at ``where`` defines ``fqdn`` (``seen``: FQDN -> key path of
        the table that defined it first).

        Raises:
            TopologyError: ``fqdn`` is in ``seen`` already (``"<what> <fqdn> is already
                defined at <key path>"``, with ``fix``).
        """
        if fqdn in seen:
            raise self.fail(
                f"{where}.fqdn", f"{what} {fqdn} is already defined at {seen[fqdn]}", fix
            )
        seen[fqdn] = where

    def ip(self, value: str, key: str) -> str:
        try:
            addr = ipaddress.ip_address(value.strip())
        except ValueError:
            raise self.fail(
                key,
                f"{value!r} is not an IP address",
                'write an IPv4 or IPv6 literal, e.g. "127.0.1.1"',
            ) from None
        if addr.is_unspecified or addr.is_multicast:
            raise self.fail(
                key,
                f"{value!r} cannot be an FE address (it is published in DNS)",
                "use the FE's own unicast address",
            )
        return str(addr)

    # -- sections --------------------------------------------------------------------------

    def topology(self, raw: dict[str, Any]) -> Topology:
        self.keys(raw, _TOP_KEYS, "")
        version = self.integer(raw, "version", "", 1, 1)
        settings = self.settings(raw.get("settings", {}))
        paths = self.paths(raw.get("paths", {}))
        dns_listen = self.dns(raw.get("dns", {}))
        sites = self.sites(raw.get("sites", []))
        pools = self.pools(raw.get("pools", []), sites, settings)
        apps = self.apps(raw.get("trusted_applications", []), pools)
        self.check_dns_collision(dns_listen, pools)
        return Topology(
            path=self.path.absolute(),
            version=version,
            settings=settings,
            paths=paths,
            dns_listen=dns_listen,
            sites=tuple(sites),
            pools=tuple(pools),
            trusted_applications=tuple(apps),
        )

    def settings(self, value: object) -> Settings:
        t = self.table(value, "settings", "write [settings] followed by key = value lines")
        d = Settings()
        self.keys(t, tuple(Settings.__dataclass_fields__), "settings")
        w = "settings"
        interval = self.number(t, "heartbeat_interval", w, d.heartbeat_interval)
        timeout = self.number(t, "heartbeat_timeout", w, d.heartbeat_timeout)
        if timeout <= interval:
            raise self.fail(
                "settings.heartbeat_timeout",
                f"{timeout:g} s must be greater than heartbeat_interval ({interval:g} s)",
                "use about 3 times heartbeat_interval so one lost heartbeat does not mark a peer "
                "down",
            )
        min_e = self.integer(t, "min_expires", w, d.min_expires, 1, 2**32 - 1)
        max_e = self.integer(t, "max_expires", w, d.max_expires, 1, 2**32 - 1)
        order = "make min_expires <= default_expires <= max_expires"
        if max_e < min_e:
            raise self.fail(
                "settings.max_expires", f"{max_e} is less than min_expires ({min_e})", order
            )
        bounds = (min_e, max_e)
        default_e = self.expiry_between(t, "default_expires", d.default_expires, bounds, order)
        backup = self.expiry_between(
            t,
            "backup_max_expires",
            d.backup_max_expires,
            bounds,
            "use a value in that range (it caps backup-mode registrations and so bounds "
            "how long a re-home takes)",
        )
        max_contacts = self.integer(t, "max_contacts", w, d.max_contacts, 1, 1000)
        batch_users = self.integer(t, "rehome_batch_users", w, d.rehome_batch_users, 1)
        batch_interval = self.number(
            t, "rehome_batch_interval", w, d.rehome_batch_interval, positive=False
        )
        algorithms = d.digest_algorithms
        if "digest_algorithms" in t:
            algorithms = self.algorithms(t["digest_algorithms"])
        enable_tcp = d.enable_tcp
        if "enable_tcp" in t:
            enable_tcp = t["enable_tcp"]
            if not isinstance(enable_tcp, bool):
                raise self.fail(
                    "settings.enable_tcp",
                    f"expected true or false, got {_type_name(enable_tcp)}",
                    "write enable_tcp = true or enable_tcp = false (no quotes)",
                )
        return Settings(
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            backup_max_expires=backup,
            min_expires=min_e,
            max_expires=max_e,
            default_expires=default_e,
            max_contacts=max_contacts,
            rehome_batch_users=batch_users,
            rehome_batch_interval=batch_interval,
            digest_algorithms=algorithms,
            enable_tcp=enable_tcp,
        )

    def expiry_between(
        self, t: Mapping[str, Any], name: str, default: int, bounds: tuple[int, int], fix: str
    ) -> int:
        """The expiry setting ``name`` (whole seconds, ``default`` when absent), which must lie
        in ``bounds`` = ``(min_expires, max_expires)``.

        Raises:
            TopologyError: not an integer >= 1, or outside ``bounds`` (with ``fix``).
        """
        value = self.integer(t, name, "settings", default, 1)
        lo, hi = bounds
        if not lo <= value <= hi:
            raise self.fail(
                f"settings.{name}",
                f"{value} is outside min_expires..max_expires ({lo}..{hi})",
                fix,
            )
        return value

    def algorithms(self, value: object) -> tuple[str, ...]:
        key = "settings.digest_algorithms"
        fix = 'e.g. digest_algorithms = ["SHA-256", "MD5"]'
        if not isinstance(value, list) or not value:
            raise self.fail(key, "expected a non-empty array of algorithm names", fix)
        out: list[str] = []
        for i, item in enumerate(value):
            name = item.strip().upper() if isinstance(item, str) else None
            if name not in DIGEST_ALGORITHMS:
                raise self.fail(
                    f"{key}[{i}]",
                    f"{item!r} is not a supported digest algorithm",
                    'use "SHA-256" and/or "MD5"',
                )
            if name in out:
                raise self.fail(f"{key}[{i}]", f"{name} is listed twice", "list each once")
            out.append(name)
        return tuple(out)

    def paths(self, value: object) -> Paths:
        t = self.table(value, "paths", 'write [paths] followed by key = "path" lines')
        self.keys(t, tuple(_PATH_KEYS), "paths")
        base = self.path.absolute().parent
        resolved = {}
        for name, default in _PATH_KEYS.items():
            text = self.string(t, name, "paths", default, 'give a path, e.g. "state"')
            resolved[name] = Path(os.path.normpath(base / Path(text).expanduser()))
        return Paths(**resolved)

    def dns(self, value: object) -> tuple[str, int]:
        t = self.table(value, "dns", 'write [dns] followed by listen = "ip:port"')
        self.keys(t, ("listen",), "dns")
        text = self.string(t, "listen", "dns", DEFAULT_DNS_LISTEN)
        host, sep, port = text.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        fix = f'write listen = "IP:PORT", e.g. "{DEFAULT_DNS_LISTEN}"'
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise self.fail("dns.listen", f"{text!r} is not IP:PORT with a port in 1..65535", fix)
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise self.fail("dns.listen", f"{host!r} is not an IP address", fix) from None
        return str(addr), int(port)

    def sites(self, value: object) -> list[SiteSpec]:
        out: list[SiteSpec] = []
        for i, t in enumerate(self.tables(value, "sites", "sites")):
            where = f"sites[{i}]"
            self.keys(t, _SITE_KEYS, where)
            name = self.string(t, "name", where, fix='add name = "redmond"')
            if not _SITE_RE.match(name):
                raise self.fail(
                    f"{where}.name",
                    f"{name!r} is not a valid site name",
                    "use letters, digits, '.', '_' or '-' (at most 63)",
                )
            if any(s.name == name for s in out):
                raise self.fail(
                    f"{where}.name",
                    f"site {name!r} is defined twice",
                    "remove one of the [[sites]] entries",
                )
            out.append(SiteSpec(name))
        if not out:
            raise self.fail(
                "sites",
                "no site is defined",
                'add [[sites]] with name = "..." (e.g. the data centre\'s name) before the pools',
            )
        return out

    def site_ref(
        self, t: Mapping[str, Any], where: str, sites: list[SiteSpec], default: str | None
    ) -> str:
        names = [s.name for s in sites]
        if "site" not in t and default is None:
            if len(names) == 1:
                return names[0]
            raise self.fail(
                f"{where}.site",
                "missing (there are several sites)",
                "add site = one of: " + ", ".join(names),
            )
        name = self.string(t, "site", where, default)
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise self.fail(
                f"{where}.site",
                f"site {name!r} is not defined in [[sites]]",
                f"{hint}use one of: {', '.join(names)}, or add a [[sites]] entry",
            )
        return name

    def pools(self, value: object, sites: list[SiteSpec], settings: Settings) -> list[PoolSpec]:
        pools: list[PoolSpec] = []
        fe_seen: dict[str, str] = {}  # fqdn -> key path of its first use
        ports_seen: dict[tuple[str, str, int], str] = {}  # (layer, ip, port) -> "fe key"
        domains_seen: dict[str, str] = {}
        pool_seen: dict[str, str] = {}
        for p, t in enumerate(self.tables(value, "pools", "pools")):
            where = f"pools[{p}]"
            self.keys(t, _POOL_KEYS, where)
            fqdn = self.fqdn(t, where, "pool.contoso.com")
            self.define(pool_seen, fqdn, where, "pool", "give every pool its own FQDN")
            domains = self.domains(t, where, fqdn, domains_seen)
            max_servers = self.integer(
                t,
                "max_servers",
                where,
                MAX_SERVERS_LIMIT,
                1,
                MAX_SERVERS_LIMIT,
                fix=f"use 1..{MAX_SERVERS_LIMIT} (a pool has at most {MAX_SERVERS_LIMIT} FEs; "
                "the logical registrar sequences hash over this many IDs)",
            )
            site = self.site_ref(t, where, sites, None)
            front_ends: list[FrontEndSpec] = []
            fes = self.tables(t.get("front_ends", []), f"{where}.front_ends", "pools.front_ends")
            declared = {
                ft["server_id"]
                for ft in fes
                if isinstance(ft.get("server_id"), int) and not isinstance(ft["server_id"], bool)
            }
            free = [i for i in range(1, max_servers + 1) if i not in declared]
            ids: dict[int, str] = {}
            for f, ft in enumerate(fes):
                fe = self.front_end(
                    ft,
                    f"{where}.front_ends[{f}]",
                    fqdn,
                    max_servers,
                    site,
                    sites,
                    settings,
                    ids,
                    free,
                    fe_seen,
                    ports_seen,
                )
                front_ends.append(fe)
            pools.append(PoolSpec(fqdn, domains, max_servers, site, tuple(front_ends)))
        for pool in pools:
            for fe in pool.front_ends:
                if fe.fqdn in pool_seen:
                    raise self.fail(
                        fe_seen[fe.fqdn] + ".fqdn",
                        f"{fe.fqdn} is also the FQDN of a pool ({pool_seen[fe.fqdn]})",
                        "an FE needs its own FQDN, distinct from the pool FQDN",
                    )
        return pools

    def domains(
        self, t: Mapping[str, Any], where: str, pool: str, seen: dict[str, str]
    ) -> tuple[str, ...]:
        key = f"{where}.domains"
        fix = 'e.g. domains = ["contoso.com"]'
        if "domains" not in t:
            raise self.fail(key, "missing (the SIP domains this pool serves)", f"add {fix}")
        value = t["domains"]
        if not isinstance(value, list) or not value:
            raise self.fail(key, "expected a non-empty array of domain names", fix)
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", f"expected a string, got {_type_name(item)}", fix)
            name = self.dns_name(item, f"{key}[{i}]", fqdn=False)
            if name in seen:
                raise self.fail(
                    f"{key}[{i}]",
                    f"domain {name} is already served by {seen[name]}",
                    "a SIP domain belongs to one pool: remove it from one of them",
                )
            seen[name] = f"pool {pool} ({where})"
            out.append(name)
        return tuple(out)

    def port(
        self, t: Mapping[str, Any], name: str, where: str, default: int, *, allow_zero: bool = False
    ) -> int:
        lo = 0 if allow_zero else 1
        fix = "use 1..65535" + (" (0 = off)" if allow_zero else "")
        return self.integer(t, name, where, default, lo, 65535, fix=fix)

    def front_end(
        self,
        t: Mapping[str, Any],
        where: str,
        pool: str,
        max_servers: int,
        pool_site: str,
        sites: list[SiteSpec],
        settings: Settings,
        ids: dict[int, str],
        free: list[int],
        fe_seen: dict[str, str],
        ports_seen: dict[tuple[str, str, int], str],
    ) -> FrontEndSpec:
        """One FE; ``ids`` (server ID -> who uses it), ``fe_seen`` and ``ports_seen`` collect
        what earlier FEs took; ``free`` lists the IDs no FE of the pool declares."""
        self.keys(t, _FE_KEYS, where)
        fqdn = self.fqdn(t, where, "fe1.contoso.com")
        self.define(
            fe_seen, fqdn, where, "FE", "FE FQDNs are unique across all pools; remove or rename one"
        )
        free_text = ", ".join(map(str, free)) if free else "none"
        fix_id = (
            f"pick a free ID in 1..{max_servers} (free: {free_text}) or run 'registrar "
            "topology commission'"
        )
        if "server_id" not in t:
            raise self.fail(f"{where}.server_id", "missing", fix_id)
        server_id = t["server_id"]
        if isinstance(server_id, bool) or not isinstance(server_id, int):
            raise self.fail(
                f"{where}.server_id",
                f"expected an integer, got {_type_name(server_id)} ({server_id!r})",
                fix_id,
            )
        if not 1 <= server_id <= max_servers:
            raise self.fail(
                f"{where}.server_id",
                f"{server_id} is outside 1..{max_servers} (max_servers)",
                fix_id,
            )
        if server_id in ids:
            raise self.fail(
                f"{where}.server_id", f"{server_id} is already used by {ids[server_id]}", fix_id
            )
        ids[server_id] = f"{fqdn} ({where})"
        ip = self.ip(self.string(t, "ip", where, fix='add ip = "127.0.1.1"'), f"{where}.ip")
        tls_port = self.port(t, "tls_port", where, DEFAULT_TLS_PORT)
        tcp_default = DEFAULT_TCP_PORT if settings.enable_tcp else 0
        tcp_port = self.port(t, "tcp_port", where, tcp_default, allow_zero=True)
        udp_port = self.port(t, "udp_port", where, 0, allow_zero=True)
        admin_port = self.port(t, "admin_port", where, DEFAULT_ADMIN_PORT)
        site = self.site_ref(t, where, sites, pool_site)
        sockets = [("tcp", "tls_port", tls_port), ("tcp", "admin_port", admin_port)]
        if tcp_port:
            sockets.insert(1, ("tcp", "tcp_port", tcp_port))
        if udp_port:
            sockets.append(("udp", "udp_port", udp_port))
        for layer, name, port in sockets:
            slot = (layer, ip, port)
            if slot in ports_seen:
                raise self.fail(
                    f"{where}.{name}",
                    f"{_join_host_port(ip, port)}/{layer} is already used by {ports_seen[slot]}",
                    "give each listener its own IP:port (TLS, TCP and admin share the TCP port "
                    "space; only a TCP and a UDP listener may share a number)",
                )
            ports_seen[slot] = f"{fqdn} {name}"
        return FrontEndSpec(
            fqdn, server_id, ip, tls_port, tcp_port, udp_port, admin_port, site, pool
        )

    def apps(self, value: object, pools: list[PoolSpec]) -> list[TrustedApplication]:
        out: list[TrustedApplication] = []
        fes = {fe.fqdn for pool in pools for fe in pool.front_ends}
        pool_names = [p.fqdn for p in pools]
        for i, t in enumerate(self.tables(value, "trusted_applications", "trusted_applications")):
            where = f"trusted_applications[{i}]"
            self.keys(t, _APP_KEYS, where)
            fqdn = self.fqdn(t, where, "vm.contoso.com")
            if fqdn in fes or fqdn in pool_names:
                what = "an FE" if fqdn in fes else "a pool"
                raise self.fail(
                    f"{where}.fqdn",
                    f"{fqdn} is {what} of this topology",
                    "FEs are known servers already; a trusted application needs its own FQDN",
                )
            version = self.integer(
                t, "version", where, None, 0, fix="use 6 (2013-class), 5 (2010-class) or 0 (any)"
            )
            if version not in TRUSTED_APP_VERSIONS:
                raise self.fail(
                    f"{where}.version",
                    f"{version} is not a known server version",
                    "use 6 (2013-class), 5 (2010-class) or 0 (any)",
                )
            pool = _fold(self.string(t, "pool", where, fix='add pool = "<pool fqdn>"'))
            if pool not in pool_names:
                raise self.fail(
                    f"{where}.pool",
                    f"pool {pool!r} is not defined in [[pools]]",
                    "use one of: " + (", ".join(pool_names) or "(no pools defined)"),
                )
            port = self.port(t, "port", where, DEFAULT_TLS_PORT)
            for j, other in enumerate(out):
                if other.fqdn != fqdn:
                    continue
                if other.pool == pool:
                    raise self.fail(
                        f"{where}.fqdn",
                        f"{fqdn} is already trusted by pool {pool} (trusted_applications[{j}])",
                        "remove one of the entries",
                    )
                if other.version != version:
                    raise self.fail(
                        f"{where}.version",
                        f"{fqdn} has version {version} here but "
                        f"{other.version} at trusted_applications[{j}]",
                        "one server has one version: make them equal",
                    )
            out.append(TrustedApplication(fqdn, version, pool, port))
        return out

    def check_dns_collision(self, listen: tuple[str, int], pools: list[PoolSpec]) -> None:
        ip, port = listen
        for pool in pools:
            for fe in pool.front_ends:
                if fe.ip == ip and port in (fe.udp_port, fe.tls_port, fe.tcp_port, fe.admin_port):
                    raise self.fail(
                        "dns.listen",
                        f"{_join_host_port(ip, port)} is also a port of FE {fe.fqdn}",
                        "give the DNS server its own address, e.g. 127.0.1.53:5353",
                    )


# ============================================================================================
# Editing: commission / decommission (tomlkit keeps comments and formatting)


def _read_for_edit(path: Path | str) -> tuple[bytes, Topology, tomlkit.TOMLDocument]:
    """Read the file, require it to be valid as it stands, and parse it with tomlkit."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TopologyError(
            path, None, f"cannot read the topology file: {exc.strerror or exc}", "check the path"
        ) from None
    try:
        topo = parse_topology(data, path)
    except TopologyError as exc:
        exc.fix = (exc.fix + "; " if exc.fix else "") + "the file must be valid before an edit"
        raise
    return data, topo, tomlkit.parse(data.decode("utf-8"))


def _write_atomic(path: Path | str, original: bytes, text: str) -> None:
    """Replace ``path`` by ``text`` (temp file in the same directory + ``os.replace``), keeping
    its mode; refuse if the file changed since it was read (``original``)."""
    target = Path(path)
    try:
        if target.read_bytes() != original:
            raise TopologyError(
                path, None, "the file changed while it was being edited", "run the command again"
            )
        mode = target.stat().st_mode & 0o7777
        fd, tmp = tempfile.mkstemp(
            dir=target.absolute().parent, prefix=f".{target.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise TopologyError(
            path,
            None,
            f"cannot write the topology file: {exc.strerror or exc}",
            "check the file's permissions and free space",
        ) from None


def _render(doc: tomlkit.TOMLDocument, current: int) -> tuple[str, int]:
    """Bump ``version`` (a new ``version = N`` line goes first when the file had none) and
    render the document; returns ``(text, new version)``."""
    new = current + 1
    if "version" in doc:
        doc["version"] = new
        return tomlkit.dumps(doc).rstrip("\n") + "\n", new
    return f"version = {new}\n\n" + tomlkit.dumps(doc).rstrip("\n") + "\n", new


def _save_edit(
    path: Path | str,
    original: bytes,
    doc: tomlkit.TOMLDocument,
    old: Topology,
    intended: Callable[[Topology], bool],
) -> Topology:
    """Bump the version of the edited ``doc`` (:func:`_render`), validate the result, check
    that it says what the edit ``intended`` (a predicate on the new topology) and write it
    atomically over ``path`` (:func:`_write_atomic`; ``original`` is what was read).

    Returns:
        The new :class:`Topology`.

    Raises:
        TopologyError: the edited file is invalid, does not say what was intended (an internal
            error), or cannot be written; nothing is written then.
    """
    text, new_version = _render(doc, old.version)
    new = parse_topology(text, path)
    if new.version != new_version or not intended(new):
        raise TopologyError(
            path,
            None,
            "internal error: the edited file does not say what was intended; nothing was written",
            "report this as a bug",
        )
    _write_atomic(path, original, text)
    return new


def _find_pool_table(doc: tomlkit.TOMLDocument, fqdn: str, path: Path | str) -> Any:
    """The tomlkit table of pool ``fqdn``; pools and their FEs must be written as
    ``[[pools]]`` / ``[[pools.front_ends]]`` tables (not inline) for an edit."""
    fix = (
        "write pools and front ends as [[pools]] and [[pools.front_ends]] tables (see "
        "examples/contoso.toml), then run the command again"
    )
    pools = doc.get("pools")
    if not isinstance(pools, tomlkit.items.AoT):
        raise TopologyError(path, "pools", "pools are written inline; cannot edit them", fix)
    for i, table in enumerate(pools):
        if _fold(str(table.get("fqdn", ""))) == fqdn:
            fes = table.get("front_ends")
            if fes is not None and not isinstance(fes, tomlkit.items.AoT):
                raise TopologyError(
                    path,
                    f"pools[{i}].front_ends",
                    "front ends are written inline; cannot edit them",
                    fix,
                )
            return table
    raise AssertionError(f"pool {fqdn} vanished from the parsed document")  # pragma: no cover


def _blank_prefix(lines: list[str]) -> int:
    n = 0
    for line in lines:
        if line.strip():
            break
        n += 1
    return n


def _detach_tail(container: Any, stop: int) -> tuple[Any, str]:
    """Detach the comments and blank lines right before ``body[stop]`` (or the end) of a
    tomlkit container: they are replaced by ``Null`` items (indices stay valid) and returned
    as text, with the last key/value item before them (``None`` when there is none)."""
    body = container.body
    j = stop - 1
    parts: list[str] = []
    while j >= 0 and body[j][0] is None:
        item = body[j][1]
        if isinstance(item, tomlkit.items.Whitespace | tomlkit.items.Comment):
            parts.append(item.as_string())
            body[j] = (None, tomlkit.items.Null())
        elif not isinstance(item, tomlkit.items.Null):
            break
        j -= 1
    last = body[j][1] if j >= 0 and body[j][0] is not None else None
    if isinstance(last, tomlkit.items.Table | tomlkit.items.AoT):
        last = None
    return last, "".join(reversed(parts))


def _append_trail(item: Any, text: str) -> None:
    trail = item.trivia.trail
    if not trail.endswith("\n"):
        trail += "\n"
    item.trivia.trail = trail + text


def _last_key_item(table: Any) -> Any:
    body = table.value.body
    for key, item in reversed(body):
        if key is not None and not isinstance(item, tomlkit.items.Table | tomlkit.items.AoT):
            return item
    return None


def commission(
    path: Path | str,
    pool_fqdn: str,
    fe_fqdn: str,
    ip: str,
    *,
    tls_port: int = DEFAULT_TLS_PORT,
    tcp_port: int | None = None,
    udp_port: int | None = None,
    admin_port: int = DEFAULT_ADMIN_PORT,
    site: str | None = None,
    server_id: int | None = None,
    rng: random.Random | None = None,
) -> tuple[Topology, int]:
    """Add an FE to a pool of the topology file and give it a server ID (DESIGN.md §2, §4).

    The ID is ``server_id`` when given (it must be free and in ``1..max_servers``), else a
    random free one (``rng``, default :class:`random.SystemRandom`). The FE is appended to the
    pool's ``[[pools.front_ends]]`` with ``site`` defaulting to the pool's site; ``tcp_port`` /
    ``udp_port`` are written only when given (``None`` = absent). ``version`` is bumped. The
    result is validated like :func:`load_topology` and written atomically (temp file +
    ``os.replace``) only if valid; comments and formatting are kept.

    Returns:
        ``(the new Topology, the assigned server ID)``.

    Raises:
        TopologyError: the file is invalid as it stands; no such pool; the FE FQDN exists; the
            pool is full (all ``max_servers`` IDs used); ``server_id`` out of range or in use;
            the new FE breaks a rule (bad IP, a port clash, unknown site ...); the file cannot
            be written. Nothing is written then.
    """
    data, topo, doc = _read_for_edit(path)
    pool_name = _fold(pool_fqdn)
    try:
        pool = topo.pool(pool_name)
    except KeyError:
        names = ", ".join(p.fqdn for p in topo.pools) or "(none)"
        raise TopologyError(
            path, "pools", f"no pool {pool_fqdn!r}", f"use one of: {names}"
        ) from None
    p_index = topo.pools.index(pool)
    where = f"pools[{p_index}]"
    name = _fold(fe_fqdn)
    for other in topo.all_front_ends():
        if other.fqdn == name:
            raise TopologyError(
                path,
                f"{where}.front_ends",
                f"FE {name} is already commissioned in pool {other.pool} with "
                f"server ID {other.server_id}",
                "decommission it first, or choose another FQDN",
            )
    free = pool.free_ids
    if not free:
        fix = "decommission an FE of the pool first"
        if pool.max_servers < MAX_SERVERS_LIMIT:
            fix += f", or raise max_servers (at most {MAX_SERVERS_LIMIT})"
        raise TopologyError(
            path,
            f"{where}.front_ends",
            f"pool {pool.fqdn} is full: all {pool.max_servers} server IDs (max_servers) are in use",
            fix,
        )
    if server_id is None:
        server_id = (rng or random.SystemRandom()).choice(free)
    elif server_id not in free:
        why = (
            f"is outside 1..{pool.max_servers} (max_servers)"
            if not 1 <= server_id <= pool.max_servers
            else f"is already used by {pool.by_id[server_id].fqdn}"
        )
        raise TopologyError(
            path,
            f"{where}.front_ends",
            f"server ID {server_id} {why}",
            f"pick a free ID (free: {', '.join(map(str, free))}) or leave "
            "--server-id out for a random one",
        )

    fe = tomlkit.table()
    fe.add("fqdn", name)
    fe.add("server_id", server_id)
    with contextlib.suppress(ValueError):  # a bad IP is written as given and reported below
        ip = str(ipaddress.ip_address(ip.strip()))
    fe.add("ip", ip.strip())
    fe.add("tls_port", tls_port)
    if tcp_port is not None:
        fe.add("tcp_port", tcp_port)
    if udp_port is not None:
        fe.add("udp_port", udp_port)
    fe.add("admin_port", admin_port)
    fe.add("site", site if site is not None else pool.site)

    table = _find_pool_table(doc, pool.fqdn, path)
    aot = table.get("front_ends")
    if aot is not None and len(aot):
        keep_item, tail = _detach_tail(aot[-1].value, len(aot[-1].value.body))
    else:
        keep_item, tail = _detach_tail(table.value, len(table.value.body))
    lines = tail.splitlines(keepends=True)
    blank = _blank_prefix(lines)
    gap, rest = "".join(lines[:blank]) or "\n", "".join(lines[blank:])
    if aot is None:
        fe.trivia.indent = gap  # blank line(s) above the new [[pools.front_ends]] header
        aot = tomlkit.aot()
        aot.append(fe)
        table.append("front_ends", aot)
    else:
        if keep_item is not None:
            _append_trail(keep_item, gap)
        aot.append(fe)
    new_last = _last_key_item(aot[-1])
    if new_last is not None and rest:
        _append_trail(new_last, "\n" + rest)
    new = _save_edit(
        path, data, doc, topo, lambda new: new.pool(pool.fqdn).fe(name).server_id == server_id
    )
    return new, server_id


def decommission(path: Path | str, fe_fqdn: str) -> Topology:
    """Remove an FE from the topology file and bump ``version`` (DESIGN.md §2, §4).

    This edits the file only. In a running pool the FE drains first (stops accepting, re-homes
    its AORs, then exits; DESIGN.md §4) — run that before or after this edit as documented in
    ``docs/topology.md``. Comments inside the FE's table and the comment lines directly above
    its ``[[pools.front_ends]]`` header go with it; every other comment stays. The server ID
    becomes free.

    Returns:
        The new :class:`Topology`.

    Raises:
        TopologyError: the file is invalid as it stands; no such FE; the file cannot be
            written. Nothing is written then.
    """
    data, topo, doc = _read_for_edit(path)
    name = _fold(fe_fqdn)
    try:
        fe = topo.fe(name)
    except KeyError:
        names = ", ".join(f.fqdn for f in topo.all_front_ends()) or "(none)"
        raise TopologyError(
            path, "pools", f"no front end {fe_fqdn!r} in the topology", f"commissioned FEs: {names}"
        ) from None
    table = _find_pool_table(doc, fe.pool, path)
    aot = table["front_ends"]
    index = next(i for i, t in enumerate(aot) if _fold(str(t.get("fqdn", ""))) == name)

    removed = aot[index]
    _, moved = _detach_tail(removed.value, len(removed.value.body))
    if index > 0:
        prev = aot[index - 1].value
        keep_item, before = _detach_tail(prev, len(prev.body))
    else:
        stop = next(
            i
            for i, (k, _) in enumerate(table.value.body)
            if k is not None and k.key == "front_ends"
        )
        keep_item, before = _detach_tail(table.value, stop)
    # Drop the comment block glued to the removed header (no blank line in between).
    lines = before.splitlines(keepends=True)
    while lines and lines[-1].lstrip().startswith("#"):
        lines.pop()
    after = moved.splitlines(keepends=True)
    trailing_blank = 0
    for line in reversed(lines):
        if line.strip():
            break
        trailing_blank += 1
    leading_blank = _blank_prefix(after)
    joined = (
        lines[: len(lines) - trailing_blank]
        + ["\n"] * max(trailing_blank, leading_blank)
        + after[leading_blank:]
    )
    if keep_item is not None:
        _append_trail(keep_item, "".join(joined))
    del aot[index]
    if not len(aot):
        table.remove("front_ends")
    return _save_edit(
        path, data, doc, topo, lambda new: not any(f.fqdn == name for f in new.all_front_ends())
    )


# ============================================================================================
# CLI: ``registrar topology ...``


def _fail(args: argparse.Namespace, exc: TopologyError) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": exc.to_dict()}, indent=2))
    print(f"registrar topology {args.topology_command}: {exc}", file=sys.stderr)
    return 2


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        topo = load_topology(args.file)
    except TopologyError as exc:
        return _fail(args, exc)
    fes = len(topo.all_front_ends())
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "path": str(topo.path),
                    "version": topo.version,
                    "digest": topo.digest(),
                    "pools": len(topo.pools),
                    "front_ends": fes,
                },
                indent=2,
            )
        )
    else:
        print(
            f"{args.file}: valid (version {topo.version}, digest {topo.digest()}, "
            f"{len(topo.pools)} pool(s), {fes} front end(s))"
        )
    return 0


def _show_lines(topo: Topology) -> Iterator[str]:
    yield f"topology {topo.path}  version {topo.version}  digest {topo.digest()}"
    yield f"sites: {', '.join(s.name for s in topo.sites)}"
    for pool in topo.pools:
        yield ""
        yield (
            f"pool {pool.fqdn}  site {pool.site}  domains {', '.join(pool.domains)}  "
            f"max_servers {pool.max_servers}"
        )
        head = f"  {'ID':>3}  {'FE':<28} {'IP':<16} {'TLS':>5} {'TCP':>5} {'UDP':>5} {'ADMIN':>5}"
        yield head + "  SITE"
        for fe in sorted(pool.front_ends, key=lambda f: f.server_id):
            tcp = fe.tcp_port or "-"
            udp = fe.udp_port or "-"
            yield (
                f"  {fe.server_id:>3}  {fe.fqdn:<28} {fe.ip:<16} {fe.tls_port:>5} {tcp:>5} "
                f"{udp:>5} {fe.admin_port:>5}  {fe.site}"
            )
        if not pool.front_ends:
            yield "  (no front ends commissioned)"
        yield f"  free IDs: {' '.join(map(str, pool.free_ids)) or 'none (pool full)'}"
    if topo.trusted_applications:
        yield ""
        yield "trusted applications:"
        for app in topo.trusted_applications:
            yield f"  {app.fqdn}:{app.port}  version {app.version}  trusted by {app.pool}"
    yield ""
    s = topo.settings
    yield "settings:"
    for name in Settings.__dataclass_fields__:
        value = getattr(s, name)
        if isinstance(value, tuple):
            value = ", ".join(value)
        elif isinstance(value, bool):
            value = str(value).lower()
        yield f"  {name} = {value}"
    yield "paths:"
    yield f"  certs = {topo.paths.certs}"
    yield f"  users_db = {topo.paths.users_db}"
    yield f"  state_dir = {topo.paths.state_dir}"
    yield f"dns listen {_join_host_port(*topo.dns_listen)}"


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        topo = load_topology(args.file)
    except TopologyError as exc:
        return _fail(args, exc)
    if args.json:
        print(json.dumps(topo.to_dict(), indent=2))
    else:
        print("\n".join(_show_lines(topo)))
    return 0


def _print_edit_json(fe: FrontEndSpec, server_id: int, topo: Topology) -> None:
    """Print the ``--json`` result of a commission or decommission of ``fe`` (``server_id``:
    the ID it got or gave back; ``topo``: the topology after the edit)."""
    result = {
        "ok": True,
        "fqdn": fe.fqdn,
        "pool": fe.pool,
        "server_id": server_id,
        "version": topo.version,
        "digest": topo.digest(),
    }
    print(json.dumps(result, indent=2))


def _cmd_commission(args: argparse.Namespace) -> int:
    try:
        topo, server_id = commission(
            args.file,
            args.pool,
            args.fqdn,
            args.ip,
            tls_port=args.tls_port,
            tcp_port=args.tcp_port,
            udp_port=args.udp_port,
            admin_port=args.admin_port,
            site=args.site,
            server_id=args.server_id,
        )
    except TopologyError as exc:
        return _fail(args, exc)
    fe = topo.fe(args.fqdn)
    if args.json:
        _print_edit_json(fe, server_id, topo)
    else:
        print(
            f"commissioned {fe.fqdn} in pool {fe.pool} with server ID {server_id} "
            f"(topology version {topo.version})"
        )
        print(f"next: registrar certs init --topology {args.file}   (its certificate)")
    return 0


def _cmd_decommission(args: argparse.Namespace) -> int:
    try:
        old = load_topology(args.file)
        topo = decommission(args.file, args.fqdn)
    except TopologyError as exc:
        return _fail(args, exc)
    fe = old.fe(args.fqdn)  # decommission() found it there
    if args.json:
        _print_edit_json(fe, fe.server_id, topo)
    else:
        print(
            f"decommissioned {fe.fqdn} (server ID {fe.server_id} of pool {fe.pool} is free; "
            f"topology version {topo.version})"
        )
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``topology`` command on an argparse subparsers object.

    Subcommands::

        topology validate FILE [--json]       exit 0 valid, 2 invalid (error on stderr)
        topology show FILE [--json]           pools, FEs (IDs, IPs, ports), settings, paths
        topology commission FILE --pool P --fqdn F --ip A [--tls-port N] [--tcp-port N]
                            [--udp-port N] [--admin-port N] [--site S] [--server-id N] [--json]
        topology decommission FILE --fqdn F [--json]

    The handler is stored as ``args.func`` (``func(args) -> int``): 0 success, 2 invalid file
    or refused edit (one line on stderr naming file, key, problem and fix; with ``--json`` also
    ``{"ok": false, "error": {...}}`` on stdout, see :meth:`TopologyError.to_dict`).
    ``topology`` alone prints help and returns 2. JSON shapes are in ``docs/topology.md``.

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()`` of the main CLI.
    """
    sub = add_group(
        subparsers,
        "topology",
        help="validate, show and edit the topology file (pools, FEs, server IDs; DESIGN.md §8)",
        description="Validate, show and edit the topology TOML file (docs/topology.md).",
    )

    def command(
        name: str,
        help_text: str,
        description: str,
        func: Callable[[argparse.Namespace], int],
        json_help: str = "print the result as JSON",
        options: Callable[[argparse.ArgumentParser], object] = lambda _p: None,
    ) -> None:
        """Add ``topology NAME FILE`` with its ``options`` and then ``--json``."""
        p = sub.add_parser(name, help=help_text, description=description)
        p.add_argument("file", type=Path, metavar="FILE", help="the topology TOML file")
        options(p)
        p.add_argument("--json", action="store_true", help=json_help)
        p.set_defaults(func=func)

    command(
        "validate",
        "check a topology file",
        "Check a topology file; exit 0 if valid, else 2 with the key, the problem and a fix.",
        _cmd_validate,
    )
    command(
        "show",
        "print pools, FEs, server IDs, ports and settings",
        "Print the validated topology with defaults filled in.",
        _cmd_show,
        json_help="print JSON (docs/topology.md)",
    )
    command(
        "commission",
        "add an FE to a pool with a random free server ID",
        "Add an FE to a pool: assigns a random free server ID (or --server-id), bumps the "
        "topology version, validates and rewrites the file atomically keeping its comments. "
        "Prints the assigned ID.",
        _cmd_commission,
        options=_commission_options,
    )
    command(
        "decommission",
        "remove an FE from the topology file",
        "Remove an FE from the topology file and bump the version. In a running pool the FE "
        "drains first (stops accepting, re-homes its users, exits); this command edits the file.",
        _cmd_decommission,
        options=lambda p: p.add_argument(
            "--fqdn", required=True, metavar="FQDN", help="the FE to remove"
        ),
    )


def _commission_options(com: argparse.ArgumentParser) -> None:
    """The options of ``topology commission`` after FILE (see :func:`commission`)."""
    com.add_argument("--pool", required=True, metavar="FQDN", help="the pool's FQDN")
    com.add_argument("--fqdn", required=True, metavar="FQDN", help="the new FE's FQDN")
    com.add_argument("--ip", required=True, metavar="ADDR", help="the new FE's IP address")
    com.add_argument(
        "--tls-port",
        type=int,
        default=DEFAULT_TLS_PORT,
        metavar="N",
        help=f"SIP over TLS port (default {DEFAULT_TLS_PORT})",
    )
    com.add_argument(
        "--tcp-port",
        type=int,
        metavar="N",
        help="SIP over TCP port; 0 = off (default: absent, i.e. settings.enable_tcp)",
    )
    com.add_argument(
        "--udp-port",
        type=int,
        metavar="N",
        help="SIP over UDP port; 0 = off (default: absent = off)",
    )
    com.add_argument(
        "--admin-port",
        type=int,
        default=DEFAULT_ADMIN_PORT,
        metavar="N",
        help=f"admin HTTP API port (default {DEFAULT_ADMIN_PORT})",
    )
    com.add_argument("--site", metavar="NAME", help="the FE's site (default: the pool's)")
    com.add_argument(
        "--server-id", type=int, metavar="N", help="use this free server ID instead of a random one"
    )
