"""DNS for a pool: the zone that makes DNS load balancing work, and an embedded DNS server.

DNS load balancing (DESIGN.md §1, ``reference/seed-excerpts.md`` §1): a client looks up the SRV
record of its SIP domain (RFC 3263 §4.2, RFC 2782), which names the **pool FQDN**; the pool FQDN
has **one A record per front end (FE)**; the client tries those addresses in random order and
moves to the next one when a connection fails. The FE it reaches then redirects it (``301``) to
the user's registrar (DESIGN.md §4). See ``docs/dns.md``.

This module has three layers, each usable alone:

* **Zone model** (pure data, no I/O): :class:`ZoneFrontEnd`, :class:`ZonePool` in;
  :func:`build_zone` out: a :class:`Zone` of :class:`ZoneRecord`\\ s, one or more zone origins.
  :func:`zone_text` / :func:`zone_texts` render BIND master files. :func:`zone_from_topology`
  adapts a ``registrar.topology.Topology``.
* **Embedded server**: :class:`DnsServer` — one asyncio loop on UDP and TCP answering with
  :class:`ZoneResolver` (dnslib packs and parses; common replies are packed ahead),
  authoritative for the zone only (never recursive), reloadable.
* **CLI**: :func:`add_cli` adds ``registrar dns zone`` and ``registrar dns serve``; the module
  also runs as ``python -m registrar.dns ...`` (:func:`main`).

Records (for every SIP domain ``D`` of a pool ``P``; RFC 3263 §4.1 service names):

==============================  ==========================================================
``_sipinternaltls._tcp.D``      SRV → ``P`` TLS port (the record Lync clients look up first)
``_sips._tcp.D``                SRV → ``P`` TLS port (RFC 3263 for ``sips:`` URIs)
``_sip._tls.D``                 SRV → ``P`` TLS port (Lync automatic sign-in)
``_sip._tcp.D``                 SRV → ``P`` TCP port, only when an FE of ``P`` has TCP on
``_sip._udp.D``                 SRV → ``P`` UDP port, only when an FE of ``P`` has UDP on
``P``                           A (AAAA for IPv6) — one per FE: the DNS load balancing
each FE FQDN                    one A (AAAA)
==============================  ==========================================================

NAPTR records (RFC 3263 §4.1) are not generated: clients fall back to the SRV lookups above
when there are none, and Lync clients never query NAPTR for sign-in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import logging
import math
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSRecord
from dnslib.server import DNSLogger

from .cliutil import add_group

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_TTL",
    "ORDER_VARIANTS",
    "SRV_SERVICES",
    "UDP_RCVBUF",
    "DnsServer",
    "Zone",
    "ZoneError",
    "ZoneFrontEnd",
    "ZonePool",
    "ZoneRecord",
    "ZoneResolver",
    "add_cli",
    "build_zone",
    "main",
    "zone_from_topology",
    "zone_text",
    "zone_texts",
]

_log = logging.getLogger("registrar.dns")

DEFAULT_TTL = 60
"""TTL of every record, in seconds. Small, so that adding, removing or re-addressing an FE
reaches clients within a minute (a client that cached a dead FE's address still moves on to the
next address; the TTL bounds how long it keeps trying it first)."""

DEFAULT_LISTEN = ("127.0.1.53", 5353)
"""Where ``registrar dns serve`` listens when neither ``--listen`` nor the topology says."""

SOA_TIMERS = (300, 60, 604800, DEFAULT_TTL)
"""SOA refresh, retry, expire, minimum (negative-caching TTL, RFC 2308) in seconds."""

SRV_SERVICES: Mapping[str, tuple[str, ...]] = {
    "tls": ("_sipinternaltls._tcp", "_sips._tcp", "_sip._tls"),
    "tcp": ("_sip._tcp",),
    "udp": ("_sip._udp",),
}
"""SRV owner-name prefixes per transport (RFC 3263 §4.1; ``_sipinternaltls`` is Lync's)."""

SERIAL_MODULUS = 2**32
"""SOA serials are 32-bit (RFC 1982); the topology version is taken modulo this."""

TCP_TIMEOUT = 5.0
"""Seconds the embedded server waits for a TCP client to send its query."""

EDNS_UDP_SIZE = 1232
"""UDP payload size the embedded server advertises and honours with EDNS(0) (RFC 6891)."""

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class ZoneError(ValueError):
    """The pools cannot be expressed as a consistent zone (bad name, address, port, or a
    conflict such as one FQDN with two addresses). The message names the pool/FE and the fix."""


# --------------------------------------------------------------------------- zone model


@dataclass(frozen=True, slots=True)
class ZoneFrontEnd:
    """One FE as DNS sees it.

    Attributes:
        fqdn: the FE's host name (``fe1.contoso.com``); case and a trailing dot are ignored.
        ip: its IPv4 or IPv6 address (an A or AAAA record).
        tls_port: SIP over TLS port (1..65535), normally 5061.
        tcp_port: SIP over TCP port, or ``None`` (or 0, as in the topology file) when TCP is off
            (the default, DESIGN.md §5).
        udp_port: SIP over UDP port, or ``None`` (or 0) when UDP is off.
    """

    fqdn: str
    ip: str
    tls_port: int
    tcp_port: int | None = None
    udp_port: int | None = None


@dataclass(frozen=True, slots=True)
class ZonePool:
    """One pool as DNS sees it.

    Attributes:
        fqdn: the pool FQDN that SRV records point at (``pool.contoso.com``).
        domains: the SIP domains the pool serves (``contoso.com``); each gets SRV records.
        front_ends: the pool's FEs: :class:`ZoneFrontEnd` objects, or plain
            ``(fqdn, ip, tls_port, tcp_port, udp_port)`` tuples (converted).
    """

    fqdn: str
    domains: tuple[str, ...]
    front_ends: tuple[ZoneFrontEnd, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.domains, str):
            raise TypeError("ZonePool.domains must be a sequence of domain names, not a string")
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(
            self,
            "front_ends",
            tuple(
                fe if isinstance(fe, ZoneFrontEnd) else ZoneFrontEnd(*fe) for fe in self.front_ends
            ),
        )


@dataclass(frozen=True, slots=True)
class ZoneRecord:
    """One resource record.

    Attributes:
        name: owner name, absolute, lower case, without the trailing dot.
        rtype: ``SOA``, ``NS``, ``A``, ``AAAA`` or ``SRV``.
        rdata: the record data in master-file (presentation) form, names absolute with a
            trailing dot, e.g. ``0 0 5061 pool.contoso.com.``.
        ttl: time to live in seconds.
    """

    name: str
    rtype: str
    rdata: str
    ttl: int = DEFAULT_TTL

    def line(self, width: int = 0) -> str:
        """The record as a master-file line: ``name. ttl IN type rdata``."""
        return f"{(self.name + '.').ljust(width)} {self.ttl:<5} IN {self.rtype:<5} {self.rdata}"


@dataclass(frozen=True, slots=True)
class Zone:
    """The DNS data of one or more pools: zone origins and their records.

    Built by :func:`build_zone`; immutable, so a server can swap it atomically.

    Attributes:
        origins: the zone apexes (lower case, no trailing dot), sorted; no origin lies under
            another one.
        records: every record, each in exactly one origin (SOA and NS first per origin).
        serial: SOA serial (0..2**32-1), from the topology version.
        ttl: the TTL of every record, seconds.
        notes: per origin, comment lines for the master file (e.g. why SRV records name FEs).
    """

    origins: tuple[str, ...]
    records: tuple[ZoneRecord, ...]
    serial: int
    ttl: int = DEFAULT_TTL
    notes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def origin_of(self, name: str) -> str | None:
        """The origin (zone apex) ``name`` belongs to, or ``None`` when it is outside them all."""
        name = _norm(name)
        for origin in self.origins:
            if name == origin or name.endswith("." + origin):
                return origin
        return None

    def records_in(self, origin: str) -> tuple[ZoneRecord, ...]:
        """The records of one origin, in master-file order.

        Raises:
            KeyError: ``origin`` is not one of :attr:`origins`.
        """
        origin = _norm(origin)
        if origin not in self.origins:
            raise KeyError(origin)
        return tuple(r for r in self.records if self.origin_of(r.name) == origin)

    def lookup(self, name: str, rtype: str) -> tuple[ZoneRecord, ...]:
        """Records of ``name`` and type ``rtype`` (``ANY``: all types), in zone order."""
        name = _norm(name)
        return tuple(
            r for r in self.records if r.name == name and (rtype == "ANY" or r.rtype == rtype)
        )


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _check_host(name: str, what: str) -> str:
    """A host or domain name, normalised; at least two labels. Raises ZoneError."""
    norm = _norm(name)
    labels = norm.split(".")
    if len(labels) < 2 or len(norm) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ZoneError(
            f"{what} {name!r} is not a fully qualified domain name (labels of letters, digits "
            "and hyphens, at least two labels, e.g. pool.contoso.com)"
        )
    return norm


def _check_port(port: Any, what: str, *, optional: bool) -> int | None:
    if optional and (port is None or port == 0):
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ZoneError(f"{what} {port!r} is not a port number (1..65535)")
    return port


def _parent(name: str) -> str:
    return name.split(".", 1)[1]


def build_zone(
    pools: Sequence[ZonePool],
    *,
    serial: int = 1,
    ttl: int = DEFAULT_TTL,
    nameserver_ip: str | None = None,
) -> Zone:
    """Build the DNS zone(s) for ``pools``.

    Origins: every SIP domain and the parent domain of every pool and FE FQDN, minus those
    that lie under another one (``pool.contoso.com`` and ``fe1.contoso.com`` both live in
    ``contoso.com``; ``fabrikam.com`` is a zone of its own holding only SRV records).

    SRV (RFC 2782, service names of RFC 3263 §4.1, see :data:`SRV_SERVICES`), per domain and
    transport: when every FE of a pool listens on that transport on one same port, one record
    ``0 0 <port> <pool fqdn>.`` (the pool FQDN's A records do the load balancing); when the
    FEs' ports differ, or only some FEs have the transport on, one record per FE that has it,
    naming the FE's own FQDN and port (a single port could not be right for every address of
    the pool FQDN). When a domain's SRV set has several records (several pools serve it, or
    per-FE records), all get priority 0 and weight 1, so clients pick uniformly at random
    (RFC 2782: weight 0 is for "no selection to do").

    Address records: the pool FQDN gets one A (AAAA for IPv6) per distinct FE address; each FE
    FQDN one. Each origin gets an SOA (``ns.<origin>.`` / ``hostmaster.<origin>.``, timers
    :data:`SOA_TIMERS`) and an NS ``ns.<origin>.``, with an A/AAAA ``nameserver_ip`` for that
    name when given (the address the authoritative server answers on).

    Args:
        pools: the pools; FE and pool FQDNs must be distinct across all pools.
        serial: SOA serial; the topology version (>= 0), taken modulo 2**32 (RFC 1982).
        ttl: TTL of every record, seconds (>= 0), default :data:`DEFAULT_TTL`.
        nameserver_ip: address of the zones' name server, or ``None`` to leave ``ns.<origin>``
            without an address (add one in the real DNS server).

    Returns:
        the :class:`Zone`.

    Raises:
        ZoneError: a bad FQDN, address or port; a pool without FEs; one FQDN used twice
            (two FEs, or an FE and a pool); a negative serial or TTL.
    """
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 0:
        raise ZoneError(f"serial (topology version) {serial!r} must be an integer >= 0")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise ZoneError(f"ttl {ttl!r} must be an integer number of seconds >= 0")
    ns_addr = _check_ip(nameserver_ip, "name server address") if nameserver_ip else None

    hosts: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
    owners: dict[str, str] = {}  # host name -> what it is, for conflict messages
    srv: dict[str, list[tuple[str, int]]] = {}  # SRV owner -> [(target, port)]
    notes: dict[str, list[str]] = {}
    candidates: set[str] = set()

    def claim(name: str, what: str) -> None:
        if name in owners:
            raise ZoneError(f"{what} {name} is also {owners[name]}; every FQDN must be unique")
        owners[name] = what

    for pool in pools:
        pool_fqdn = _check_host(pool.fqdn, "pool FQDN")
        claim(pool_fqdn, f"pool {pool_fqdn}")
        candidates.add(_parent(pool_fqdn))
        if not pool.front_ends:
            raise ZoneError(
                f"pool {pool_fqdn} has no front ends: its FQDN would have no address; "
                "add an FE or remove the pool"
            )
        domains = [_check_host(d, f"pool {pool_fqdn}: SIP domain") for d in pool.domains]
        candidates.update(domains)
        fes: list[tuple[str, dict[str, int | None]]] = []
        pool_hosts = hosts.setdefault(pool_fqdn, [])
        for fe in pool.front_ends:
            fe_fqdn = _check_host(fe.fqdn, f"pool {pool_fqdn}: FE FQDN")
            claim(fe_fqdn, f"FE {fe_fqdn} of pool {pool_fqdn}")
            candidates.add(_parent(fe_fqdn))
            addr = _check_ip(fe.ip, f"FE {fe_fqdn}: ip")
            hosts[fe_fqdn] = [addr]
            if addr not in pool_hosts:
                pool_hosts.append(addr)
            ports = {
                "tls": _check_port(fe.tls_port, f"FE {fe_fqdn}: tls_port", optional=False),
                "tcp": _check_port(fe.tcp_port, f"FE {fe_fqdn}: tcp_port", optional=True),
                "udp": _check_port(fe.udp_port, f"FE {fe_fqdn}: udp_port", optional=True),
            }
            fes.append((fe_fqdn, ports))
        for transport, services in SRV_SERVICES.items():
            on = [(name, ports[transport]) for name, ports in fes if ports[transport] is not None]
            if not on:
                continue
            distinct = {port for _, port in on}
            if len(on) == len(fes) and len(distinct) == 1:
                targets = [(pool_fqdn, on[0][1])]
            else:
                targets = [(name, port) for name, port in on if port is not None]
                why = "uses different ports" if len(distinct) > 1 else "is on only some FEs"
                for domain in domains:
                    notes.setdefault(domain, []).append(
                        f"pool {pool_fqdn}: {transport.upper()} {why}, so its "
                        f"{transport.upper()} SRV records name each FE, not the pool FQDN"
                    )
            for domain in domains:
                for service in services:
                    owner = f"{service}.{domain}"
                    for target in targets:
                        if target not in srv.setdefault(owner, []):
                            srv[owner].append(target)

    # Zone origins: drop candidates that lie under another candidate.
    origins = tuple(
        sorted(c for c in candidates if not any(c != o and c.endswith("." + o) for o in candidates))
    )

    def origin_of(name: str) -> str:
        return next(o for o in origins if name == o or name.endswith("." + o))

    service_rank = {s: i for i, s in enumerate(s for group in SRV_SERVICES.values() for s in group)}

    def srv_order(owner: str) -> tuple[str, int]:
        first, second, domain = owner.split(".", 2)
        return (domain, service_rank[f"{first}.{second}"])

    records: list[ZoneRecord] = []
    mname_for = {o: f"ns.{o}" for o in origins}
    for origin in origins:
        ns = mname_for[origin]
        refresh, retry, expire, minimum = SOA_TIMERS
        records.append(
            ZoneRecord(
                origin,
                "SOA",
                f"{ns}. hostmaster.{origin}. {serial % SERIAL_MODULUS} "
                f"{refresh} {retry} {expire} {min(minimum, ttl)}",
                ttl,
            )
        )
        records.append(ZoneRecord(origin, "NS", f"{ns}.", ttl))
        if ns_addr is not None and ns not in hosts:
            records.append(ZoneRecord(ns, _addr_type(ns_addr), str(ns_addr), ttl))
        elif ns_addr is None and ns not in hosts:
            notes.setdefault(origin, []).append(
                f"{ns} has no address: add an A record for the server that serves this zone"
            )
        for owner in sorted((o for o in srv if origin_of(o) == origin), key=srv_order):
            targets = srv[owner]
            weight = 0 if len(targets) == 1 else 1
            for target, port in targets:
                records.append(ZoneRecord(owner, "SRV", f"0 {weight} {port} {target}.", ttl))
        for host in (h for h in hosts if origin_of(h) == origin):  # pools, then their FEs
            for addr in hosts[host]:
                records.append(ZoneRecord(host, _addr_type(addr), str(addr), ttl))

    notes_by_origin: dict[str, list[str]] = {}
    for key in sorted(notes):
        notes_by_origin.setdefault(origin_of(key), []).extend(notes[key])
    return Zone(
        origins=origins,
        records=tuple(records),
        serial=serial % SERIAL_MODULUS,
        ttl=ttl,
        notes={k: tuple(dict.fromkeys(v)) for k, v in notes_by_origin.items()},
    )


def _check_ip(ip: Any, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        addr = ipaddress.ip_address(str(ip).strip())
    except ValueError:
        raise ZoneError(f"{what} {ip!r} is not an IPv4 or IPv6 address") from None
    if addr.is_unspecified or addr.is_multicast:
        raise ZoneError(f"{what} {ip!r} is not a unicast address clients can connect to")
    return addr


def _addr_type(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return "A" if addr.version == 4 else "AAAA"


def zone_texts(zone: Zone) -> dict[str, str]:
    """One BIND master file per origin: ``{origin: text}``.

    Each text is a complete zone file (``$ORIGIN``, ``$TTL``, SOA, NS, records; absolute names)
    that ``named-checkzone <origin> <file>`` and ``dns.zone.from_text`` accept.
    """
    texts: dict[str, str] = {}
    for origin in zone.origins:
        records = zone.records_in(origin)
        width = max(len(r.name) + 1 for r in records)
        lines = [
            f"; zone {origin}. -- SIP pool DNS (generated by 'registrar dns zone'; docs/dns.md)",
            f"; serial {zone.serial} = topology version; TTL {zone.ttl} s",
            "; SRV per RFC 2782 / RFC 3263; the pool FQDN has one address record per front end",
            "; (DNS load balancing: clients try them in random order). No NAPTR (optional).",
        ]
        lines += [f"; note: {note}" for note in zone.notes.get(origin, ())]
        lines += [f"$ORIGIN {origin}.", f"$TTL {zone.ttl}"]
        lines += [r.line(width) for r in records]
        texts[origin] = "\n".join(lines) + "\n"
    return texts


def zone_text(zone: Zone, origin: str | None = None) -> str:
    """The BIND master-file text of ``zone``.

    With ``origin``, that one zone's file (see :func:`zone_texts`). Without, every zone's file
    one after the other, separated by a blank line: each section starts at its own
    ``$ORIGIN`` line with its own SOA. (That concatenation is for reading and for the embedded
    server; a real DNS server loads one file per zone — ``registrar dns zone --out DIR``.)

    Raises:
        KeyError: ``origin`` is not one of ``zone.origins``.
    """
    texts = zone_texts(zone)
    if origin is not None:
        return texts[_norm(origin)]
    return "\n".join(texts[o] for o in zone.origins)


def zone_from_topology(topology: Any, *, nameserver_ip: str | None = None) -> Zone:
    """Adapt a ``registrar.topology.Topology`` to :func:`build_zone`.

    Reads (by attribute name) ``topology.pools`` → ``fqdn``, ``domains``, ``front_ends`` →
    ``fqdn``, ``ip``, ``tls_port``, ``tcp_port``, ``udp_port`` (0 or ``None``: that transport
    is off); ``topology.version`` (the
    serial); ``topology.dns_listen`` (``(host, port)``): when ``nameserver_ip`` is ``None`` and
    that host is a concrete address, it becomes the name server's address.

    Raises:
        ZoneError: as :func:`build_zone`.
    """
    pools = [
        ZonePool(
            fqdn=pool.fqdn,
            domains=tuple(pool.domains),
            front_ends=tuple(
                ZoneFrontEnd(
                    fqdn=fe.fqdn,
                    ip=str(fe.ip),
                    tls_port=fe.tls_port,
                    tcp_port=getattr(fe, "tcp_port", None) or None,
                    udp_port=getattr(fe, "udp_port", None) or None,
                )
                for fe in pool.front_ends
            ),
        )
        for pool in getattr(topology, "pools", ())
    ]
    if nameserver_ip is None:
        listen = getattr(topology, "dns_listen", None)
        if listen:
            with contextlib.suppress(ValueError):
                addr = ipaddress.ip_address(str(listen[0]))
                if not addr.is_unspecified:
                    nameserver_ip = str(addr)
    return build_zone(
        pools, serial=int(getattr(topology, "version", 1)), nameserver_ip=nameserver_ip
    )


# --------------------------------------------------------------------------- resolver

PREBUILT_QTYPES: tuple[int, ...] = (
    QTYPE.A,
    QTYPE.AAAA,
    QTYPE.SRV,
    QTYPE.NAPTR,
    QTYPE.NS,
    QTYPE.SOA,
)
"""Query types whose replies :class:`ZoneResolver` packs ahead for every name of the zone."""

ORDER_VARIANTS = 24
"""How many orders of a shuffled answer are packed ahead: every order of up to four addresses
(4! = 24), else this many random orders. Each reply is one of them, picked at random."""

LEARNED_MAX = 4096
"""At most this many replies to other queries are added to a zone's table as they are asked
(and as many queries waiting for their :data:`ORDER_VARIANTS` orders); then no more until the
next reload. Bounds the memory a stream of distinct queries can take."""


class _Order:
    """Orders an address record set: at random (``variant`` ``None``), or as pre-built variant
    ``variant`` (every order in turn when there are at most :data:`ORDER_VARIANTS`). Notes
    whether a set of two or more records went through it (then the reply varies)."""

    __slots__ = ("variant", "varied")

    def __init__(self, variant: int | None = None) -> None:
        self.variant = variant
        self.varied = False

    def __call__(self, rrs: list[RR]) -> list[RR]:
        if len(rrs) < 2:
            return rrs
        self.varied = True
        count = math.factorial(len(rrs))
        if self.variant is None or count > ORDER_VARIANTS:
            random.shuffle(rrs)
            return rrs
        return list(next(itertools.islice(itertools.permutations(rrs), self.variant % count, None)))


@dataclass(slots=True)
class _Peer:
    """What dnslib's resolver hook and logger read from a request handler."""

    protocol: str
    client_address: tuple[Any, ...] = ("-", 0)


class _Index:
    """A :class:`Zone` compiled for lookups: dnslib RRs by (name, qtype), and the packed
    replies of :class:`ZoneResolver` (filled by it) by protocol and query bytes after the ID,
    with the orders collected so far for shuffled replies not packed ahead (``pending``)."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.by_key: dict[tuple[str, int], list[RR]] = {}
        self.names: set[str] = set()
        self.soa: dict[str, RR] = {}
        self.packed: dict[str, dict[bytes, tuple[bytes, ...]]] = {"udp": {}, "tcp": {}}
        self.pending: dict[str, dict[bytes, list[bytes]]] = {"udp": {}, "tcp": {}}
        self.learned = 0
        for record in zone.records:
            (rr,) = RR.fromZone(record.line())
            self.by_key.setdefault((record.name, rr.rtype), []).append(rr)
            if record.rtype == "SOA":
                self.soa[record.name] = rr
            # The owner and its ancestors up to the origin exist (empty non-terminals such as
            # _tcp.contoso.com answer NOERROR with no data, not NXDOMAIN).
            origin = zone.origin_of(record.name) or record.name
            name = record.name
            while True:
                self.names.add(name)
                if name == origin or "." not in name:
                    break
                name = _parent(name)

    def rrs(self, name: str, qtype: int) -> list[RR]:
        if qtype == QTYPE.ANY:
            return [rr for (n, _), rrs in self.by_key.items() if n == name for rr in rrs]
        return list(self.by_key.get((name, qtype), ()))

    def addresses(self, name: str, order: _Order) -> list[RR]:
        return order(self.rrs(name, QTYPE.A) + self.rrs(name, QTYPE.AAAA))


_DEBUG_LOGGER = DNSLogger(
    log="request,reply,error", prefix=False, logf=lambda text: _log.debug("%s", text)
)
"""dnslib's per-query log lines, sent to ``logging`` at debug level (``--log-level debug``)."""


class ZoneResolver:
    """Answers DNS queries from a :class:`Zone`, authoritatively and never recursively.

    * A name in one of the zone's origins with records of the asked type: those records
      (``aa`` set, ``ra`` clear). Address record sets are shuffled per answer. SRV answers carry
      the targets' A/AAAA records in the additional section, NS answers the name server's.
    * A name in an origin without records of that type: NOERROR, no answer, the SOA in the
      authority section (RFC 2308 NODATA); a name with no records at all: NXDOMAIN with the SOA.
    * A name outside every origin, a class other than IN, or a zone transfer: REFUSED.
    * Opcode other than QUERY: NOTIMP; not exactly one question: FORMERR; an internal error:
      SERVFAIL (logged).
    * UDP answers fit 512 bytes, or the EDNS(0) size the client advertises (at most
      :data:`EDNS_UDP_SIZE`): the additional section is dropped first, then the answer is sent
      empty with TC set so that the client retries over TCP (RFC 1035 §4.2.1, RFC 7766).

    Two entry points: :meth:`resolve`, dnslib's resolver hook (a parsed request in, a reply
    record out), and :meth:`answer`, packed query in, packed reply out, which the server uses.
    :meth:`answer` serves queries from a table of replies packed by dnslib, keyed by protocol
    and the query's bytes after its 2-byte ID (the reply gets the query's ID). At construction
    and on :meth:`reload` the table gets, for every name of the zone and every type of
    :data:`PREBUILT_QTYPES`, the reply to a stub resolver's query (RD set, no EDNS: what
    dnspython, the pool client and glibc send), for UDP and TCP; a shuffled answer is packed in
    :data:`ORDER_VARIANTS` orders, one picked at random per reply. Any other query (other
    case, flags, EDNS, types) is parsed and answered as in :meth:`resolve`, and its reply added
    to the table: at once when it cannot vary, once :data:`ORDER_VARIANTS` random orders have
    been built for it when it is shuffled (at most :data:`LEARNED_MAX` such replies per zone).
    At debug log level every query is parsed, answered and logged instead.

    Thread safe: :meth:`reload` swaps one reference; each query reads it once.

    Attributes:
        table_hits: replies sent from the packed table (a counter, for logs and tests).
        table_misses: replies built per query (queries not in the table, or debug logging).
    """

    def __init__(self, zone: Zone) -> None:
        self._index = self._compile(zone)
        self.table_hits = 0
        self.table_misses = 0

    @property
    def zone(self) -> Zone:
        """The zone being served."""
        return self._index.zone

    @property
    def table_size(self) -> int:
        """Number of packed replies in the table (UDP and TCP, every order counted)."""
        return sum(len(v) for table in self._index.packed.values() for v in table.values())

    def reload(self, zone: Zone) -> None:
        """Serve ``zone`` from the next query on (queries in flight finish with the old one).

        Packs the new table before the swap (tens of milliseconds for a pool).
        """
        self._index = self._compile(zone)

    def answer(
        self, data: bytes, protocol: str = "udp", client: tuple[Any, ...] | None = None
    ) -> bytes | None:
        """The packed reply to the packed query ``data``.

        Args:
            data: the query as received (over TCP, without the 2-byte length prefix).
            protocol: ``"udp"`` (the reply fits the client's UDP size) or ``"tcp"``.
            client: the client's address, for debug logs only.

        Returns:
            the reply's bytes, or ``None`` when ``data`` is not a DNS message dnslib can parse
            (nothing to answer; logged at debug level).

        Raises:
            ValueError: ``protocol`` is neither ``"udp"`` nor ``"tcp"``.
        """
        index = self._index
        try:
            table = index.packed[protocol]
        except KeyError:
            raise ValueError(f"protocol {protocol!r} is not 'udp' or 'tcp'") from None
        if not _log.isEnabledFor(logging.DEBUG):
            variants = table.get(data[2:])
            if variants is not None:
                self.table_hits += 1
                tail = variants[0] if len(variants) == 1 else random.choice(variants)
                return data[:2] + tail  # the query's ID, then the packed reply
        self.table_misses += 1
        debug = _log.isEnabledFor(logging.DEBUG)
        peer = _Peer(protocol, client or ("-", 0))
        try:
            request = DNSRecord.parse(data)
        except Exception as exc:  # DNSError, or worse on garbage: no reply, as dnslib does
            if debug:
                _DEBUG_LOGGER.log_error(peer, exc)
            return None
        if debug:
            _DEBUG_LOGGER.log_request(peer, request)
        order = _Order()
        reply, wire = self._reply(request, protocol, index, order)
        if debug:
            _DEBUG_LOGGER.log_reply(peer, reply)
        elif reply.header.rcode != RCODE.SERVFAIL:  # SERVFAIL: a bug, logged; keep trying
            self._learn(index, protocol, data[2:], wire[2:], varied=order.varied)
        return wire

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        """dnslib's resolver hook: the reply to ``request`` (``handler.protocol`` is
        ``"udp"`` or ``"tcp"``; UDP replies are fitted to the client's size)."""
        protocol = getattr(handler, "protocol", "udp")
        reply, _ = self._reply(request, protocol, self._index, _Order())
        return reply

    @classmethod
    def _reply(
        cls, request: DNSRecord, protocol: str, index: _Index, order: _Order
    ) -> tuple[DNSRecord, bytes]:
        """The reply record and its bytes (fitted to the client's UDP size for ``udp``)."""
        try:
            reply = cls._answer(request, index, order)
        except Exception:  # a bug must not kill the server or go unanswered
            _log.exception("DNS query %s failed", request.q.qname)
            reply = request.reply(ra=0, aa=0)
            reply.header.rcode = RCODE.SERVFAIL
        wire = bytes(reply.pack())
        if protocol == "udp":
            wire = cls._fit(request, reply, wire)
        return reply, wire

    @classmethod
    def _compile(cls, zone: Zone) -> _Index:
        """Index ``zone`` and pack its table (see the class docstring)."""
        index = _Index(zone)
        udp, tcp = index.packed["udp"], index.packed["tcp"]
        for name in sorted(index.names):
            for qtype in PREBUILT_QTYPES:
                request = DNSRecord.question(name, QTYPE[qtype])  # RD set, no EDNS
                request.header.id = 0
                key = bytes(request.pack()[2:])
                over_udp: list[bytes] = []
                over_tcp: list[bytes] = []
                for variant in range(ORDER_VARIANTS):
                    order = _Order(variant)
                    reply, wire = cls._reply(request, "tcp", index, order)
                    over_tcp.append(wire[2:])
                    over_udp.append(cls._fit(request, reply, wire)[2:])
                    if not order.varied:
                        break
                udp[key] = tuple(over_udp)
                tcp[key] = tuple(over_tcp)
        return index

    @staticmethod
    def _learn(index: _Index, protocol: str, key: bytes, tail: bytes, *, varied: bool) -> None:
        """Add a reply built for a query missing from the table (see the class docstring)."""
        if index.learned >= LEARNED_MAX:
            return
        if not varied:
            index.packed[protocol][key] = (tail,)
            index.learned += 1
            return
        pending = index.pending[protocol]
        orders = pending.get(key)
        if orders is None:
            if len(pending) >= LEARNED_MAX:
                return
            orders = pending[key] = []
        orders.append(tail)
        if len(orders) >= ORDER_VARIANTS:
            index.packed[protocol][key] = tuple(orders)
            pending.pop(key, None)
            index.learned += 1

    @staticmethod
    def _answer(request: DNSRecord, index: _Index, order: _Order) -> DNSRecord:
        reply = request.reply(ra=0, aa=1)
        edns = any(rr.rtype == QTYPE.OPT for rr in request.ar)
        if edns:
            reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
        if request.header.opcode != 0:  # QUERY
            reply.header.aa = 0
            reply.header.rcode = RCODE.NOTIMP
            return reply
        if len(request.questions) != 1:
            reply.header.aa = 0
            reply.header.rcode = RCODE.FORMERR
            return reply
        q = request.q
        name = _norm(str(q.qname))
        origin = index.zone.origin_of(name)
        if (
            origin is None
            or q.qclass not in (1, 255)  # IN, ANY
            or q.qtype in (QTYPE.AXFR, QTYPE.IXFR)
        ):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return reply
        if name not in index.names:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(index.soa[origin])
            return reply
        answers = index.rrs(name, q.qtype)
        if q.qtype in (QTYPE.A, QTYPE.AAAA):
            answers = order(answers)
        if not answers:
            reply.add_auth(index.soa[origin])
            return reply
        reply.add_answer(*answers)
        seen: set[str] = set()
        for rr in answers:
            if rr.rtype == QTYPE.SRV:
                target = _norm(str(rr.rdata.target))
            elif rr.rtype == QTYPE.NS:
                target = _norm(str(rr.rdata.label))
            else:
                continue
            if target not in seen:
                seen.add(target)
                reply.add_ar(*index.addresses(target, order))
        return reply

    @staticmethod
    def _fit(request: DNSRecord, reply: DNSRecord, wire: bytes) -> bytes:
        """``wire`` (``reply`` packed) cut to the client's UDP size; trims ``reply`` to match."""
        limit = 512
        for rr in request.ar:
            if rr.rtype == QTYPE.OPT:
                limit = max(512, min(int(rr.rclass), EDNS_UDP_SIZE))
        if len(wire) <= limit:
            return wire
        reply.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        wire = bytes(reply.pack())
        if len(wire) <= limit:
            return wire
        reply.rr = []
        reply.auth = []
        reply.header.tc = 1
        return bytes(reply.pack())


# --------------------------------------------------------------------------- server

UDP_RCVBUF = 8 * 1024 * 1024
"""Bytes asked for the UDP socket's receive buffer (``SO_RCVBUF``; ``--udp-rcvbuf``). A burst
of queries waits there while the server works through it: the kernel's default (about 208 KiB
on Linux) holds only ~250 queries and drops the rest. Linux caps the size at
``net.core.rmem_max`` unless the process may use ``SO_RCVBUFFORCE`` (CAP_NET_ADMIN)."""

UDP_BATCH = 256
"""Datagrams read per wake-up of the event loop before it looks at TCP again."""

TCP_BACKLOG = 128
"""Pending TCP connections the kernel queues for the server."""


class DnsServer:
    """The embedded authoritative DNS server for a :class:`Zone`, on UDP and TCP.

    One thread runs an asyncio event loop: the UDP socket (a large receive buffer,
    :data:`UDP_RCVBUF`) is read in batches and every query answered on the spot by
    :meth:`ZoneResolver.answer`, mostly from its table of packed replies — no thread per
    query; TCP connections (clients retrying a truncated answer) are served by the same loop,
    several queries per connection (RFC 7766), each read within :data:`TCP_TIMEOUT` seconds.
    dnslib packs and parses. For development and tests; production uses a real DNS server
    loaded with :func:`zone_texts` (``docs/dns.md``).

    Args:
        zone: the zone to serve.
        address: IPv4/IPv6 address to listen on (default ``127.0.1.53``; any ``127.x`` address
            works on Linux without setup).
        port: UDP and TCP port (default 5353); 0 picks a port free for both (see :attr:`port`).
        tcp: also listen on TCP (default true; needed for truncated answers).
        udp_rcvbuf: bytes asked for the UDP receive buffer (default :data:`UDP_RCVBUF`; the
            kernel may grant less, see :attr:`udp_rcvbuf`); 0 keeps the kernel's default.

    Raises:
        ValueError: ``udp_rcvbuf`` is negative.

    Use :meth:`start` / :meth:`stop`, or ``with DnsServer(...) as server:``.
    """

    def __init__(
        self,
        zone: Zone,
        address: str = DEFAULT_LISTEN[0],
        port: int = DEFAULT_LISTEN[1],
        *,
        tcp: bool = True,
        udp_rcvbuf: int = UDP_RCVBUF,
    ) -> None:
        if udp_rcvbuf < 0:
            raise ValueError(f"udp_rcvbuf {udp_rcvbuf!r} must be >= 0")
        self.resolver = ZoneResolver(zone)
        self.address = address
        self._requested_port = port
        self._port: int | None = None
        self._tcp = tcp
        self._rcvbuf_wanted = udp_rcvbuf
        self._rcvbuf: int | None = None
        self._sockets: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[asyncio.Task[None], socket.socket] = {}
        self._lock = threading.Lock()

    @property
    def zone(self) -> Zone:
        """The zone being served."""
        return self.resolver.zone

    @property
    def port(self) -> int:
        """The port serving UDP (and TCP). Raises RuntimeError before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("DnsServer not started")
        return self._port

    @property
    def udp_rcvbuf(self) -> int:
        """The UDP receive buffer in bytes as the kernel reports it (Linux reports twice the
        size granted, the other half being its bookkeeping). Raises RuntimeError before
        :meth:`start`."""
        if self._rcvbuf is None:
            raise RuntimeError("DnsServer not started")
        return self._rcvbuf

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None

    def reload(self, zone: Zone) -> None:
        """Serve ``zone`` instead of the current one, atomically (no restart, no lost query).

        The new zone's replies are packed first (see :class:`ZoneResolver`); until the swap,
        queries get the old zone's.
        """
        old = self.resolver.zone.serial
        self.resolver.reload(zone)
        _log.info("DNS zone reloaded: serial %s -> %s", old, zone.serial)

    def start(self) -> None:
        """Bind UDP (and TCP) and serve from a background thread (``dns-server``).

        Raises:
            OSError: the address cannot be bound (in use, not local, permission).
            RuntimeError: already started.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("DnsServer already started")
            sockets = self._bind()
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(
                target=self._run,
                args=(loop, sockets, ready, failure),
                name="dns-server",
                daemon=True,
            )
            thread.start()
            ready.wait()
            if failure:
                thread.join()
                for sock in sockets:
                    sock.close()
                raise failure[0]
            self._sockets, self._loop, self._thread = sockets, loop, thread
        granted = self.udp_rcvbuf // 2 if sys.platform.startswith("linux") else self.udp_rcvbuf
        short = self._rcvbuf_wanted and granted < self._rcvbuf_wanted
        _log.info(
            "DNS server on %s port %s (%s), zones %s serial %s; %s packed replies; "
            "UDP receive buffer %s bytes%s",
            self.address,
            self._port,
            "udp+tcp" if self._tcp else "udp",
            ", ".join(self.zone.origins),
            self.zone.serial,
            self.resolver.table_size,
            granted,
            f" (asked {self._rcvbuf_wanted}: capped by net.core.rmem_max)" if short else "",
        )

    def _bind(self) -> list[socket.socket]:
        attempts = 20 if self._requested_port == 0 else 1
        last: OSError | None = None
        for _ in range(attempts):
            udp = self._socket(socket.SOCK_DGRAM, self._requested_port)
            port = int(udp.getsockname()[1])
            if not self._tcp:
                self._port = port
                return [udp]
            try:
                tcp = self._socket(socket.SOCK_STREAM, port)
            except OSError as exc:  # port 0: the TCP side of the UDP port is taken; try again
                udp.close()
                last = exc
                continue
            self._port = port
            return [udp, tcp]
        assert last is not None
        raise last

    def _socket(self, kind: socket.SocketKind, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # UDP: no SO_REUSEADDR; on Linux it would let a second server bind the port silently.
            else:
                self._set_rcvbuf(sock)
            sock.bind((self.address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        wanted = self._rcvbuf_wanted
        if wanted:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
            force = getattr(socket, "SO_RCVBUFFORCE", None)
            if force is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < wanted:
                with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN; else keep the cap
                    sock.setsockopt(socket.SOL_SOCKET, force, wanted)
        self._rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        ready: threading.Event,
        failure: list[BaseException],
    ) -> None:
        """The server thread: set up the loop, signal ``ready``, serve until :meth:`stop`."""
        asyncio.set_event_loop(loop)
        try:
            loop.add_reader(sockets[0].fileno(), self._on_udp, sockets[0])
            if len(sockets) > 1:
                loop.add_reader(sockets[1].fileno(), self._on_accept, sockets[1], loop)
        except BaseException as exc:
            failure.append(exc)
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            for sock in sockets:
                loop.remove_reader(sock.fileno())
            loop.run_until_complete(self._drop_connections())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)

    def _on_udp(self, sock: socket.socket) -> None:
        """The UDP socket is readable: answer up to :data:`UDP_BATCH` queued queries."""
        answer = self.resolver.answer
        for _ in range(UDP_BATCH):
            try:
                data, client = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                _log.debug("DNS udp receive: %s", exc)
                return
            try:
                reply = answer(data, "udp", client)
                if reply is not None:
                    sock.sendto(reply, client)
            except OSError as exc:
                _log.debug("DNS udp reply to %s: %s", client, exc)
            except Exception:  # a bug must not stop the server
                _log.exception("DNS udp query from %s failed", client)

    def _on_accept(self, listener: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        """The TCP socket is readable: take the waiting connections, one task each."""
        for _ in range(TCP_BACKLOG):
            try:
                conn, client = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: leave it queued for now
                _log.warning("DNS tcp accept: %s", exc)
                return
            conn.setblocking(False)
            task = loop.create_task(self._on_tcp(conn, client))
            self._connections[task] = conn

    async def _on_tcp(self, conn: socket.socket, client: tuple[Any, ...]) -> None:
        """One TCP connection: length-prefixed queries (RFC 1035 §4.2.2), answered in turn,
        each to be received and answered within :data:`TCP_TIMEOUT` seconds."""
        loop = asyncio.get_running_loop()

        async def read(size: int) -> bytes:
            data = b""
            while len(data) < size:
                chunk = await loop.sock_recv(conn, size - len(data))
                if not chunk:
                    break
                data += chunk
            return data

        try:
            while True:
                async with asyncio.timeout(TCP_TIMEOUT):
                    head = await read(2)
                    if len(head) < 2:
                        if head:
                            _log.debug("DNS tcp client %s: query cut short", client)
                        return
                    (length,) = struct.unpack("!H", head)
                    data = await read(length)
                    if len(data) < length:
                        _log.debug("DNS tcp client %s: query cut short", client)
                        return
                    reply = self.resolver.answer(data, "tcp", client)
                    if reply is None:
                        return
                    await loop.sock_sendall(conn, struct.pack("!H", len(reply)) + reply)
        except TimeoutError:
            _log.debug("DNS tcp client %s: timed out", client)
        except OSError as exc:  # reset by the client
            _log.debug("DNS tcp client %s: %s", client, exc)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._connections.pop(task, None)
            conn.close()

    async def _drop_connections(self) -> None:
        """Cancel the TCP connections' tasks and close their sockets (also of tasks cancelled
        before they ran)."""
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the sockets; waits for the server thread up to ``timeout``
        seconds. Idempotent."""
        with self._lock:
            thread, loop, sockets = self._thread, self._loop, self._sockets
            if thread is None or loop is None:
                return
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            for sock in sockets:
                sock.close()
            self._thread, self._loop, self._sockets = None, None, []
        _log.info(
            "DNS server on %s port %s stopped (%s replies from the packed table, %s built)",
            self.address,
            self._port,
            self.resolver.table_hits,
            self.resolver.table_misses,
        )

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


def _parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → ``(host, port)``. Raises ValueError."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.1.53:5353)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def _load(path: Path) -> tuple[Any, Zone]:
    """Load the topology and build its zone. Raises TopologyError or ZoneError."""
    from .topology import load_topology

    topology = load_topology(path)
    return topology, zone_from_topology(topology)


def _config_errors() -> tuple[type[Exception], ...]:
    from .topology import TopologyError

    return (TopologyError, ZoneError, OSError)


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``dns`` command on an argparse subparsers object.

    Subcommands::

        dns zone  --topology FILE [--out DIR]
        dns serve --topology FILE [--listen HOST:PORT] [--poll-interval SECONDS]
                  [--udp-rcvbuf BYTES] [--log-level LEVEL]

    ``zone`` prints the zone file text (every zone, see :func:`zone_text`), or with ``--out``
    writes one BIND file per zone, ``DIR/db.<origin>``, and prints their paths.
    ``serve`` runs :class:`DnsServer` until SIGTERM/SIGINT (then exit 0), listening on
    ``--listen``, else the topology's ``[dns] listen``, else :data:`DEFAULT_LISTEN`; it polls
    the topology file's mtime/size/inode every second and reloads on change; a bad topology on
    reload is logged and the old zone kept.

    The handler is ``args.func`` (``func(args) -> int``): 0 success; 1 runtime error (cannot
    listen, cannot write); 2 bad usage or configuration (bad topology at start — the
    TopologyError message on stderr —, bad ``--listen``). ``dns`` alone prints help, returns 2.

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()`` of the main CLI.
    """
    sub = add_group(
        subparsers,
        "dns",
        help="the pool's DNS: zone file, embedded DNS server (docs/dns.md)",
        description=(
            "DNS load balancing for the pool: SRV records of each SIP domain name the pool "
            "FQDN, whose A records list every front end. 'zone' prints the zone file; 'serve' "
            "runs an authoritative DNS server for it (development and tests)."
        ),
        metavar="SUBCOMMAND",
    )

    zone = sub.add_parser(
        "zone",
        help="print the zone file(s) for the topology",
        description="Print the BIND zone file(s) of the topology's pools (SRV, A, SOA, NS).",
    )
    zone.add_argument("--topology", type=Path, required=True, help="topology TOML file")
    zone.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write one file per zone, DIR/db.<origin>, instead of printing",
    )
    zone.set_defaults(func=_cmd_zone)

    serve = sub.add_parser(
        "serve",
        help="serve the topology's zone(s) over UDP and TCP",
        description=(
            "Serve the topology's zones authoritatively (no recursion: other names get "
            "REFUSED). Reloads when the topology file changes; SIGTERM or SIGINT stops it."
        ),
    )
    serve.add_argument("--topology", type=Path, required=True, help="topology TOML file")
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="UDP and TCP address (default: the topology's [dns] listen, else "
        f"{DEFAULT_LISTEN[0]}:{DEFAULT_LISTEN[1]})",
    )
    serve.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to check the topology file for changes (default 1)",
    )
    serve.add_argument(
        "--udp-rcvbuf",
        type=int,
        default=UDP_RCVBUF,
        metavar="BYTES",
        help="UDP receive buffer to ask the kernel for, so bursts of queries are not dropped "
        f"(default {UDP_RCVBUF}; capped by net.core.rmem_max; 0: the kernel's default)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level; debug logs every query (default info)",
    )
    serve.set_defaults(func=_cmd_serve)


def _cmd_zone(args: argparse.Namespace) -> int:
    try:
        _, zone = _load(args.topology)
    except _config_errors() as exc:
        print(f"registrar dns zone: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(zone_text(zone))
        return 0
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for origin, text in zone_texts(zone).items():
            path = args.out / f"db.{origin}"
            path.write_text(text, encoding="utf-8")
            print(path)
    except OSError as exc:
        print(f"registrar dns zone: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    return 0


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _describe(zone: Zone) -> str:
    names = {r.name for r in zone.records}
    return (
        f"zones {', '.join(o + '.' for o in zone.origins)} serial {zone.serial} "
        f"({len(zone.records)} records, {len(names)} names)"
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    prog = "registrar dns serve"
    if args.poll_interval <= 0:
        print(f"{prog}: --poll-interval must be > 0", file=sys.stderr)
        return 2
    if args.udp_rcvbuf < 0:
        print(f"{prog}: --udp-rcvbuf must be >= 0", file=sys.stderr)
        return 2
    try:
        listen = _parse_listen(args.listen) if args.listen else None
    except ValueError as exc:
        print(f"{prog}: --listen: {exc}", file=sys.stderr)
        return 2
    errors = _config_errors()
    signature = _file_signature(args.topology)
    try:
        topology, zone = _load(args.topology)
    except errors as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if listen is None:
        listen = tuple(getattr(topology, "dns_listen", None) or DEFAULT_LISTEN)  # type: ignore[assignment]
    assert listen is not None
    server = DnsServer(zone, listen[0], int(listen[1]), udp_rcvbuf=args.udp_rcvbuf)
    try:
        server.start()
    except OSError as exc:
        print(f"{prog}: cannot listen on {listen[0]}:{listen[1]}: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(
        f"{prog}: serving {_describe(zone)} on {server.address}:{server.port} udp+tcp "
        f"from {args.topology}",
        flush=True,
    )
    width = max(len(r.name) + 1 for r in zone.records)
    for record in zone.records:
        print(f"  {record.line(width)}", flush=True)
    try:
        while not stop.wait(args.poll_interval):
            current = _file_signature(args.topology)
            if current == signature:
                continue
            signature = current
            try:
                topology, new_zone = _load(args.topology)
            except errors as exc:
                _log.error(
                    "topology %s changed but is not valid; still serving serial %s: %s",
                    args.topology,
                    server.zone.serial,
                    exc,
                )
                continue
            server.reload(new_zone)
            _log.info("topology %s changed: now serving %s", args.topology, _describe(new_zone))
            new_listen = getattr(topology, "dns_listen", None)
            if args.listen is None and new_listen and tuple(new_listen) != tuple(listen):
                _log.warning(
                    "topology [dns] listen changed to %s:%s; restart to listen there "
                    "(still on %s:%s)",
                    new_listen[0],
                    new_listen[1],
                    server.address,
                    server.port,
                )
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"{prog}: stopped", flush=True)
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m registrar.dns zone|serve ...`` (same as ``registrar dns ...``)."""
    parser = argparse.ArgumentParser(prog="registrar", description="SIP pool DNS")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_cli(sub)
    args = parser.parse_args(["dns", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
