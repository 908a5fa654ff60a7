"""The pool's DNS (registrar/dns.py, docs/dns.md): zone text, the embedded server, the CLI.

The live tests run :class:`registrar.dns.DnsServer` on ``127.0.1.53`` (routed to ``lo`` on
Linux without setup) on a free port and query it with dnspython.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.zone
import pytest
from dnslib import DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import REPO, wait_until

import registrar.dns
from registrar.dns import (
    ORDER_VARIANTS,
    DnsServer,
    ZoneError,
    ZoneFrontEnd,
    ZonePool,
    ZoneResolver,
    add_cli,
    build_zone,
    zone_from_topology,
    zone_text,
    zone_texts,
)

HOST = "127.0.1.53"
IPS = ["192.168.1.1", "192.168.1.2", "192.168.1.3", "192.168.1.4"]


def four_fe_pool(
    tcp: int | None = None, udp: int | None = None, domains: tuple[str, ...] = ("contoso.com",)
) -> ZonePool:
    return ZonePool(
        "pool.contoso.com",
        domains,
        tuple(
            ZoneFrontEnd(f"fe{i}.contoso.com", ip, 5061, tcp, udp) for i, ip in enumerate(IPS, 1)
        ),
    )


def parsed(text: str, origin: str) -> dns.zone.Zone:
    """The zone text as a real zone parser reads it (SOA and NS at the origin are checked)."""
    return dns.zone.from_text(text, origin=origin, relativize=False, check_origin=True)


def rdatas(zone: dns.zone.Zone, name: str, rtype: str) -> list[str]:
    rdataset = zone.get_rdataset(name, rtype)
    return [] if rdataset is None else sorted(r.to_text() for r in rdataset)


# ------------------------------------------------------------------------------ zone text


def test_zone_text_four_fe_pool_tls_only() -> None:
    zone = build_zone([four_fe_pool()], serial=1)
    text = zone_text(zone)
    assert "$ORIGIN contoso.com." in text
    z = parsed(text, "contoso.com.")
    for service in ("_sipinternaltls._tcp", "_sips._tcp", "_sip._tls"):
        assert rdatas(z, f"{service}.contoso.com.", "SRV") == ["0 0 5061 pool.contoso.com."]
    # DNS load balancing: the pool FQDN lists every FE's address.
    assert rdatas(z, "pool.contoso.com.", "A") == IPS
    for i, ip in enumerate(IPS, 1):
        assert rdatas(z, f"fe{i}.contoso.com.", "A") == [ip]
    # TCP and UDP are off: no SRV for them.
    assert rdatas(z, "_sip._tcp.contoso.com.", "SRV") == []
    assert rdatas(z, "_sip._udp.contoso.com.", "SRV") == []
    assert "_sip._tcp" not in text
    # SOA/NS at the origin, small TTLs everywhere.
    assert rdatas(z, "contoso.com.", "NS") == ["ns.contoso.com."]
    soa = z.get_rdataset("contoso.com.", "SOA")[0]
    assert soa.serial == 1
    assert all(rds.ttl == 60 for _, rds in z.iterate_rdatasets())


def test_zone_text_tcp_and_udp_srv_when_on() -> None:
    z = parsed(zone_text(build_zone([four_fe_pool(tcp=5060, udp=5060)])), "contoso.com.")
    assert rdatas(z, "_sip._tcp.contoso.com.", "SRV") == ["0 0 5060 pool.contoso.com."]
    assert rdatas(z, "_sip._udp.contoso.com.", "SRV") == ["0 0 5060 pool.contoso.com."]
    assert rdatas(z, "_sipinternaltls._tcp.contoso.com.", "SRV") == ["0 0 5061 pool.contoso.com."]


def test_zone_srv_order_lync_record_first() -> None:
    text = zone_text(build_zone([four_fe_pool(tcp=5060)]))
    positions = [
        text.index(s) for s in ("_sipinternaltls._tcp", "_sips._tcp", "_sip._tls", "_sip._tcp")
    ]
    assert positions == sorted(positions)


def test_zone_tcp_on_some_fes_names_those_fes() -> None:
    fes = [ZoneFrontEnd(f"fe{i}.contoso.com", ip, 5061) for i, ip in enumerate(IPS, 1)]
    fes[0] = ZoneFrontEnd("fe1.contoso.com", IPS[0], 5061, tcp_port=5060)
    fes[2] = ZoneFrontEnd("fe3.contoso.com", IPS[2], 5061, tcp_port=5070)
    zone = build_zone([ZonePool("pool.contoso.com", ("contoso.com",), tuple(fes))])
    text = zone_text(zone)
    z = parsed(text, "contoso.com.")
    assert rdatas(z, "_sip._tcp.contoso.com.", "SRV") == [
        "0 1 5060 fe1.contoso.com.",
        "0 1 5070 fe3.contoso.com.",
    ]
    assert "TCP SRV records name each FE" in text
    assert rdatas(z, "_sips._tcp.contoso.com.", "SRV") == ["0 0 5061 pool.contoso.com."]


def test_zone_tls_ports_differ_names_each_fe() -> None:
    fes = tuple(ZoneFrontEnd(f"fe{i}.contoso.com", "127.0.0.1", 5060 + i) for i in (1, 2))
    zone = build_zone([ZonePool("pool.contoso.com", ("contoso.com",), fes)])
    z = parsed(zone_text(zone), "contoso.com.")
    assert rdatas(z, "_sipinternaltls._tcp.contoso.com.", "SRV") == [
        "0 1 5061 fe1.contoso.com.",
        "0 1 5062 fe2.contoso.com.",
    ]
    # One address, listed once for the pool.
    assert rdatas(z, "pool.contoso.com.", "A") == ["127.0.0.1"]


def test_zone_several_domains_and_origins() -> None:
    pool = ZonePool(
        "pool.contoso.com",
        ("contoso.com", "fabrikam.com"),
        (
            ZoneFrontEnd("fe1.contoso.com", "10.0.0.1", 5061),
            ZoneFrontEnd("fe2.dc2.example.net", "2001:db8::2", 5061),
        ),
    )
    zone = build_zone([pool], serial=42, nameserver_ip="127.0.1.53")
    assert zone.origins == ("contoso.com", "dc2.example.net", "fabrikam.com")
    texts = zone_texts(zone)
    assert set(texts) == set(zone.origins)
    assert zone_text(zone) == "\n".join(texts[o] for o in zone.origins)
    assert zone_text(zone, "fabrikam.com.") == texts["fabrikam.com"]
    contoso = parsed(texts["contoso.com"], "contoso.com.")
    fabrikam = parsed(texts["fabrikam.com"], "fabrikam.com.")
    net = parsed(texts["dc2.example.net"], "dc2.example.net.")
    assert rdatas(fabrikam, "_sipinternaltls._tcp.fabrikam.com.", "SRV") == [
        "0 0 5061 pool.contoso.com."
    ]
    assert rdatas(contoso, "pool.contoso.com.", "A") == ["10.0.0.1"]
    assert rdatas(contoso, "pool.contoso.com.", "AAAA") == ["2001:db8::2"]
    assert rdatas(net, "fe2.dc2.example.net.", "AAAA") == ["2001:db8::2"]
    for z, origin in (
        (contoso, "contoso.com."),
        (fabrikam, "fabrikam.com."),
        (net, "dc2.example.net."),
    ):
        assert z.get_rdataset(origin, "SOA")[0].serial == 42
        assert rdatas(z, f"ns.{origin}", "A") == ["127.0.1.53"]
    with pytest.raises(KeyError):
        zone_text(zone, "example.org")


def test_zone_subdomain_origins_merge() -> None:
    pool = ZonePool(
        "pool.sip.contoso.com",
        ("contoso.com",),
        (ZoneFrontEnd("fe1.lab.sip.contoso.com", "10.0.0.1", 5061),),
    )
    assert build_zone([pool]).origins == ("contoso.com",)


def test_two_pools_serving_one_domain_share_the_srv_set() -> None:
    other = ZonePool(
        "pool2.contoso.com", ("contoso.com",), (("fe9.contoso.com", "10.9.9.9", 5061, None, None),)
    )
    z = parsed(zone_text(build_zone([four_fe_pool(), other])), "contoso.com.")
    assert rdatas(z, "_sip._tls.contoso.com.", "SRV") == [
        "0 1 5061 pool.contoso.com.",
        "0 1 5061 pool2.contoso.com.",
    ]


def test_serial_is_the_topology_version() -> None:
    assert build_zone([four_fe_pool()], serial=7).serial == 7
    assert build_zone([four_fe_pool()], serial=2**32 + 5).serial == 5
    text = zone_text(build_zone([four_fe_pool()], serial=9))
    assert parsed(text, "contoso.com.").get_rdataset("contoso.com.", "SOA")[0].serial == 9


def test_names_are_normalised() -> None:
    pool = ZonePool("Pool.Contoso.COM.", ("CONTOSO.com",), (("FE1.contoso.com", "10.0.0.1", 5061),))
    text = zone_text(build_zone([pool]))
    assert "_sip._tls.contoso.com. " in text and "pool.contoso.com." in text
    assert "Pool" not in text and "FE1" not in text


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ([ZonePool("pool.contoso.com", ("contoso.com",), ())], "no front ends"),
        (
            [ZonePool("pool.contoso.com", (), (("fe1.contoso.com", "10.0.0.300", 5061),))],
            "not an IPv4 or IPv6 address",
        ),
        (
            [ZonePool("pool.contoso.com", (), (("fe1.contoso.com", "0.0.0.0", 5061),))],
            "not a unicast address",
        ),
        (
            [ZonePool("pool.contoso.com", (), (("fe1.contoso.com", "10.0.0.1", 70000),))],
            "not a port number",
        ),
        (
            [ZonePool("pool.contoso.com", (), (("fe1.contoso.com", "10.0.0.1", 5061, -1),))],
            "tcp_port",
        ),
        (
            [ZonePool("pool.contoso.com", (), (("fe1", "10.0.0.1", 5061),))],
            "not a fully qualified domain name",
        ),
        (
            [ZonePool("pool.contoso.com", ("bad_domain.com",), (("fe1.c.com", "10.0.0.1", 5061),))],
            "SIP domain",
        ),
        (
            [
                ZonePool(
                    "pool.contoso.com",
                    (),
                    (("fe1.contoso.com", "10.0.0.1", 5061), ("FE1.contoso.com", "10.0.0.2", 5061)),
                )
            ],
            "every FQDN must be unique",
        ),
        (
            [ZonePool("pool.contoso.com", (), (("pool.contoso.com", "10.0.0.1", 5061),))],
            "every FQDN must be unique",
        ),
    ],
)
def test_zone_errors(pools: list[ZonePool], message: str) -> None:
    with pytest.raises(ZoneError, match=message):
        build_zone(pools)


def test_zone_error_bad_serial() -> None:
    with pytest.raises(ZoneError, match="serial"):
        build_zone([four_fe_pool()], serial=-1)
    assert issubclass(ZoneError, ValueError)


# Stand-ins with the attribute names of registrar.topology (zone_from_topology reads by name).
@dataclass
class _Fe:
    fqdn: str
    server_id: int
    ip: str
    tls_port: int
    tcp_port: int | None
    udp_port: int | None
    admin_port: int
    site: str
    pool: str


@dataclass
class _Pool:
    fqdn: str
    domains: tuple[str, ...]
    max_servers: int
    site: str
    front_ends: tuple[_Fe, ...]


@dataclass
class _Topology:
    pools: tuple[_Pool, ...]
    dns_listen: tuple[str, int]
    version: int


def test_zone_from_topology_attributes() -> None:
    fes = tuple(
        _Fe(f"fe{i}.contoso.com", i, ip, 5061, 5060 if i == 2 else 0, 0, 5080, "s1", "p")
        for i, ip in enumerate(IPS, 1)
    )
    topology = _Topology(
        (_Pool("pool.contoso.com", ("contoso.com",), 10, "s1", fes),), ("127.0.1.53", 5353), 3
    )
    zone = zone_from_topology(topology)
    assert zone.serial == 3
    z = parsed(zone_text(zone), "contoso.com.")
    assert rdatas(z, "pool.contoso.com.", "A") == IPS
    assert rdatas(z, "ns.contoso.com.", "A") == ["127.0.1.53"]
    assert rdatas(z, "_sip._tcp.contoso.com.", "SRV") == ["0 0 5060 fe2.contoso.com."]
    # An unspecified listen address is not a name server address.
    topology.dns_listen = ("0.0.0.0", 53)
    z = parsed(zone_text(zone_from_topology(topology)), "contoso.com.")
    assert rdatas(z, "ns.contoso.com.", "A") == []


# ------------------------------------------------------------------------------ live server


def free_udp_tcp_port(host: str = HOST) -> int:
    """A port free on ``host`` for both UDP and TCP right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def resolver(port: int) -> dns.resolver.Resolver:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [HOST]
    res.port = port
    res.lifetime = 5.0
    res.cache = None
    return res


def query(
    port: int, name: str, rtype: str, *, tcp: bool = False, **kwargs: object
) -> dns.message.Message:
    msg = dns.message.make_query(name, rtype, **kwargs)  # type: ignore[arg-type]
    send = dns.query.tcp if tcp else dns.query.udp
    return send(msg, HOST, port=port, timeout=3)


@pytest.fixture
def server() -> Iterator[DnsServer]:
    srv = DnsServer(build_zone([four_fe_pool()], serial=1), HOST, 0)
    srv.start()
    yield srv
    srv.stop()


def test_srv_lookup(server: DnsServer) -> None:
    answer = resolver(server.port).resolve("_sipinternaltls._tcp.contoso.com", "SRV")
    assert [(r.priority, r.weight, r.port, r.target.to_text()) for r in answer] == [
        (0, 0, 5061, "pool.contoso.com.")
    ]
    # The target's addresses ride along in the additional section.
    additional = {
        r.address
        for rrset in answer.response.additional
        if rrset.rdtype == dns.rdatatype.A
        for r in rrset
    }
    assert additional == set(IPS)
    assert answer.response.flags & dns.flags.AA
    assert not answer.response.flags & dns.flags.RA


def test_pool_a_records_all_fes_in_varying_order(server: DnsServer) -> None:
    res = resolver(server.port)
    orders = set()
    for _ in range(50):
        answer = res.resolve("pool.contoso.com", "A")
        addresses = [r.address for r in answer]
        assert sorted(addresses) == IPS
        orders.add(tuple(addresses))
        if len(orders) >= 2:
            break
    assert len(orders) >= 2, "the pool's A records came back in one order in 50 answers"


def test_fe_a_record(server: DnsServer) -> None:
    answer = resolver(server.port).resolve("fe2.contoso.com", "A")
    assert [r.address for r in answer] == ["192.168.1.2"]
    # Names are case-insensitive.
    assert [r.address for r in resolver(server.port).resolve("FE2.Contoso.COM", "A")] == [
        "192.168.1.2"
    ]


def test_nxdomain_with_soa(server: DnsServer) -> None:
    response = query(server.port, "nope.contoso.com", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver(server.port).resolve("nope.contoso.com", "A")


def test_nodata_and_empty_non_terminal(server: DnsServer) -> None:
    for name, rtype in (("pool.contoso.com", "AAAA"), ("_tcp.contoso.com", "SRV")):
        response = query(server.port, name, rtype)
        assert response.rcode() == dns.rcode.NOERROR, name
        assert response.answer == []
        assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]


def test_refused_outside_the_zone(server: DnsServer) -> None:
    for name in ("example.org", "www.example.org", "com"):
        response = query(server.port, name, "A")
        assert response.rcode() == dns.rcode.REFUSED, name
        assert response.answer == []
    assert query(server.port, "contoso.com", "AXFR", tcp=True).rcode() == dns.rcode.REFUSED


def test_soa_and_ns_at_origin(server: DnsServer) -> None:
    soa = query(server.port, "contoso.com", "SOA")
    assert soa.answer[0][0].serial == 1
    ns = query(server.port, "contoso.com", "NS")
    assert ns.answer[0][0].target.to_text() == "ns.contoso.com."


def test_tcp_queries(server: DnsServer) -> None:
    res = resolver(server.port)
    answer = res.resolve("_sipinternaltls._tcp.contoso.com", "SRV", tcp=True)
    assert answer[0].port == 5061
    assert sorted(r.address for r in res.resolve("pool.contoso.com", "A", tcp=True)) == IPS
    assert query(server.port, "nope.contoso.com", "A", tcp=True).rcode() == dns.rcode.NXDOMAIN
    assert query(server.port, "example.org", "A", tcp=True).rcode() == dns.rcode.REFUSED


def test_edns_query(server: DnsServer) -> None:
    response = query(server.port, "pool.contoso.com", "A", use_edns=0, payload=4096)
    assert response.edns == 0
    assert sorted(r.address for r in response.answer[0]) == IPS


def test_reload_changes_answers(server: DnsServer) -> None:
    res = resolver(server.port)
    new = ZonePool(
        "pool.contoso.com",
        ("contoso.com",),
        (
            ("fe1.contoso.com", "10.1.1.1", 5062, 5060, None),
            ("fe5.contoso.com", "10.1.1.5", 5062, 5060, None),
        ),
    )
    server.reload(build_zone([new], serial=2))
    assert server.zone.serial == 2
    assert sorted(r.address for r in res.resolve("pool.contoso.com", "A")) == [
        "10.1.1.1",
        "10.1.1.5",
    ]
    assert res.resolve("_sipinternaltls._tcp.contoso.com", "SRV")[0].port == 5062
    assert res.resolve("_sip._tcp.contoso.com", "SRV")[0].port == 5060
    assert query(server.port, "fe2.contoso.com", "A").rcode() == dns.rcode.NXDOMAIN
    assert query(server.port, "contoso.com", "SOA").answer[0][0].serial == 2


def test_large_answer_truncated_over_udp_then_tcp() -> None:
    # Ten pools sharing a domain, FE ports differing: 20 SRV records per name, > 512 bytes.
    pools = [
        ZonePool(
            f"pool{p}.contoso.com",
            ("contoso.com",),
            tuple(
                ZoneFrontEnd(f"fe{p}-{i}.contoso.com", f"10.0.{p}.{i}", 5061 + i) for i in (1, 2)
            ),
        )
        for p in range(10)
    ]
    with DnsServer(build_zone(pools), HOST, 0) as srv:
        plain = query(srv.port, "_sip._tls.contoso.com", "SRV", use_edns=False)
        assert plain.flags & dns.flags.TC
        assert plain.answer == []
        # The resolver retries over TCP and gets all 20.
        answer = resolver(srv.port).resolve("_sip._tls.contoso.com", "SRV")
        assert len(answer) == 20


def test_stop_is_clean_and_frees_the_port() -> None:
    before = {t.ident for t in threading.enumerate()}
    srv = DnsServer(build_zone([four_fe_pool()]), HOST, 0)
    with pytest.raises(RuntimeError):
        _ = srv.port
    srv.start()
    port = srv.port
    assert srv.running
    assert query(port, "fe1.contoso.com", "A").rcode() == dns.rcode.NOERROR
    srv.stop()
    srv.stop()  # idempotent
    assert not srv.running
    assert {t.ident for t in threading.enumerate() if t.name.startswith("dns-")} <= before
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((HOST, port))
    msg = dns.message.make_query("fe1.contoso.com", "A")
    with pytest.raises((dns.exception.Timeout, OSError)):
        dns.query.udp(msg, HOST, port=port, timeout=0.5)


def test_second_server_on_same_port_fails() -> None:
    with DnsServer(build_zone([four_fe_pool()]), HOST, 0) as first:
        second = DnsServer(build_zone([four_fe_pool()]), HOST, first.port)
        with pytest.raises(OSError):
            second.start()
        assert not second.running


def _every_query(zone_resolver: ZoneResolver) -> list[tuple[str, str]]:
    names = {r.name for r in zone_resolver.zone.records} | {"_tcp.contoso.com"}
    # Pools 2..9 and their FEs are like pools 0 and 1: skip them to keep the test quick.
    names = {n for n in names if not re.match(r"(pool|fe)[2-9]", n)}
    return [(n, rtype) for n in sorted(names) for rtype in ("A", "AAAA", "SRV", "NS", "SOA", "TXT")]


def test_packed_replies_equal_dnslib_replies() -> None:
    # Several pools, per-FE SRV records, and a SRV set too big for 512 bytes (truncated).
    pools = [
        four_fe_pool(tcp=5060, udp=5060),
        *(
            ZonePool(
                f"pool{p}.contoso.com",
                ("contoso.com",),
                tuple(
                    ZoneFrontEnd(f"fe{p}-{i}.contoso.com", f"10.0.{p}.{i}", 5061 + i)
                    for i in (1, 2)
                ),
            )
            for p in range(10)
        ),
    ]
    zone_resolver = ZoneResolver(build_zone(pools, nameserver_ip="127.0.1.53"))
    assert zone_resolver.table_size > 0
    queries = [
        *_every_query(zone_resolver),
        ("nope.contoso.com", "A"),
        ("example.org", "A"),
        ("contoso.com", "AXFR"),
    ]
    for name, rtype in queries:
        for protocol in ("udp", "tcp"):
            for edns in (False, True):
                msg = dns.message.make_query(name, rtype, use_edns=0 if edns else False)
                wire = msg.to_wire()
                built = zone_resolver.resolve(
                    DNSRecord.parse(wire), SimpleNamespace(protocol=protocol)
                )
                for _ in range(3):  # table or not, the same reply (record sets, not order)
                    got = zone_resolver.answer(wire, protocol)
                    assert got is not None
                    assert got[:2] == wire[:2], (name, rtype)
                    assert dns.message.from_wire(got) == dns.message.from_wire(
                        bytes(built.pack())
                    ), (name, rtype, protocol, edns)
    assert zone_resolver.table_hits > 0
    with pytest.raises(ValueError):
        zone_resolver.answer(wire, "sctp")


def test_shuffled_replies_vary_from_the_table_and_learned() -> None:
    zone_resolver = ZoneResolver(build_zone([four_fe_pool()]))
    for edns in (False, True):  # packed ahead; learned after ORDER_VARIANTS queries
        wire = dns.message.make_query("pool.contoso.com", "A", use_edns=0 if edns else False)
        orders = set()
        hits = zone_resolver.table_hits
        for _ in range(4 * ORDER_VARIANTS):
            reply = zone_resolver.answer(wire.to_wire(), "udp")
            assert reply is not None
            addresses = [r.address for r in dns.message.from_wire(reply).answer[0]]
            assert sorted(addresses) == IPS
            orders.add(tuple(addresses))
        assert len(orders) >= 2
        assert zone_resolver.table_hits - hits >= 2 * ORDER_VARIANTS


def test_garbage_gets_no_reply_and_the_server_goes_on(server: DnsServer) -> None:
    assert server.resolver.answer(b"\x12\x34garbage", "udp") is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x12\x34garbage", (HOST, server.port))
    assert query(server.port, "fe1.contoso.com", "A").rcode() == dns.rcode.NOERROR


def test_several_queries_on_one_tcp_connection(server: DnsServer) -> None:
    with socket.create_connection((HOST, server.port), timeout=3) as sock:
        for name in ("fe1.contoso.com", "fe2.contoso.com"):
            wire = dns.message.make_query(name, "A").to_wire()
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            response, _ = dns.query.receive_tcp(sock, time.monotonic() + 3)
            assert [r.address for r in response.answer[0]] == [IPS[int(name[2]) - 1]]


def test_stop_closes_idle_tcp_connections() -> None:
    srv = DnsServer(build_zone([four_fe_pool()]), HOST, 0)
    srv.start()
    sock = socket.create_connection((HOST, srv.port), timeout=3)
    try:
        wire = dns.message.make_query("fe1.contoso.com", "A").to_wire()
        sock.sendall(len(wire).to_bytes(2, "big") + wire)
        dns.query.receive_tcp(sock, time.monotonic() + 3)
        started = time.monotonic()
        srv.stop()  # the connection is idle, the server waiting for its next query
        assert time.monotonic() - started < 2
        assert sock.recv(10) == b""  # the server closed it
    finally:
        sock.close()


def test_idle_tcp_connection_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registrar.dns, "TCP_TIMEOUT", 0.3)
    with (
        DnsServer(build_zone([four_fe_pool()]), HOST, 0) as srv,
        socket.create_connection((HOST, srv.port), timeout=5) as sock,
    ):
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server: no query within TCP_TIMEOUT
        assert time.monotonic() - started < 4


def test_udp_receive_buffer() -> None:
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    wanted = min(1 << 20, rmem_max)
    with DnsServer(build_zone([four_fe_pool()]), HOST, 0, udp_rcvbuf=wanted) as srv:
        assert srv.udp_rcvbuf >= wanted  # Linux reports twice the size granted
    with pytest.raises(ValueError):
        DnsServer(build_zone([four_fe_pool()]), HOST, 0, udp_rcvbuf=-1)


def test_debug_level_logs_every_query(server: DnsServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="registrar.dns"):
        assert query(server.port, "pool.contoso.com", "A").rcode() == dns.rcode.NOERROR
    text = caplog.text
    assert "Request: [" in text and "'pool.contoso.com.' (A)" in text
    assert "Reply: [" in text and "RRs: A,A,A,A" in text


# ------------------------------------------------------------------------------ CLI

TOPOLOGY = """\
version = {version}

[dns]
listen = "{listen}"

[[sites]]
name = "s1"

[[pools]]
fqdn = "pool.contoso.com"
domains = ["contoso.com"]
max_servers = 10
site = "s1"
{front_ends}
"""

FRONT_END = """
[[pools.front_ends]]
fqdn = "fe{n}.contoso.com"
server_id = {n}
ip = "{ip}"
tls_port = 5061
tcp_port = {tcp}
udp_port = 5060
admin_port = {admin}
site = "s1"
"""


def topology_toml(ips: list[str], *, version: int = 1, listen: str = "127.0.1.53:5353") -> str:
    fes = "".join(
        FRONT_END.format(n=n, ip=ip, tcp=5060, admin=5080 + n) for n, ip in enumerate(ips, 1)
    )
    return TOPOLOGY.format(version=version, listen=listen, front_ends=fes)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="registrar")
    sub = parser.add_subparsers(dest="command")
    add_cli(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_dns_alone_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["dns"]) == 2
    assert "zone" in capsys.readouterr().err


def test_cli_zone_prints_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("registrar.topology")
    path = tmp_path / "topology.toml"
    path.write_text(topology_toml(IPS, version=5))
    assert run_cli(["dns", "zone", "--topology", str(path)]) == 0
    out = capsys.readouterr().out
    z = parsed(out, "contoso.com.")
    assert rdatas(z, "_sipinternaltls._tcp.contoso.com.", "SRV") == ["0 0 5061 pool.contoso.com."]
    assert rdatas(z, "_sip._tcp.contoso.com.", "SRV") == ["0 0 5060 pool.contoso.com."]
    assert rdatas(z, "pool.contoso.com.", "A") == IPS
    assert z.get_rdataset("contoso.com.", "SOA")[0].serial == 5

    out_dir = tmp_path / "zones"
    assert run_cli(["dns", "zone", "--topology", str(path), "--out", str(out_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(out_dir / "db.contoso.com")
    parsed((out_dir / "db.contoso.com").read_text(), "contoso.com.")


def test_cli_zone_bad_topology_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("registrar.topology")
    path = tmp_path / "topology.toml"
    path.write_text("version = \n")
    assert run_cli(["dns", "zone", "--topology", str(path)]) == 2
    assert capsys.readouterr().err.startswith("registrar dns zone: ")
    assert run_cli(["dns", "zone", "--topology", str(tmp_path / "missing.toml")]) == 2


def test_cli_serve_bad_listen_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(["dns", "serve", "--topology", str(tmp_path / "t.toml"), "--listen", "nope"])
    assert code == 2
    assert "--listen" in capsys.readouterr().err


def _serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "registrar.dns", "serve", *args]


def test_cli_serve_bad_topology_exits_2(tmp_path: Path) -> None:
    pytest.importorskip("registrar.topology")
    path = tmp_path / "topology.toml"
    path.write_text("[[pools]]\nfqdn = 3\n")
    proc = subprocess.run(
        _serve_command("--topology", str(path), "--listen", f"{HOST}:0"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("registrar dns serve: "), proc.stderr


def _addresses(port: int, name: str) -> set[str] | None:
    try:
        response = query(port, name, "A")
    except (dns.exception.Timeout, OSError):
        return None
    if response.rcode() != dns.rcode.NOERROR or not response.answer:
        return None
    return {r.address for r in response.answer[0]}


@pytest.mark.network
def test_cli_serve_subprocess(tmp_path: Path) -> None:
    pytest.importorskip("registrar.topology")
    port = free_udp_tcp_port()
    path = tmp_path / "topology.toml"
    path.write_text(topology_toml(IPS, listen=f"{HOST}:{port}"))
    log = (tmp_path / "dns.log").open("w+")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _serve_command("--topology", str(path), "--poll-interval", "0.2"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )

    def output() -> str:
        log.flush()
        return Path(log.name).read_text()

    try:
        wait_until(
            lambda: _addresses(port, "pool.contoso.com") == set(IPS),
            timeout=20,
            message="dns serve did not answer",
        )
        assert f"{HOST}:{port}" in output()
        res = resolver(port)
        assert res.resolve("_sipinternaltls._tcp.contoso.com", "SRV")[0].port == 5061
        assert res.resolve("_sip._tcp.contoso.com", "SRV", tcp=True)[0].port == 5060

        # A changed topology is picked up.
        path.write_text(topology_toml(["10.0.0.1", "10.0.0.2"], version=2, listen=f"{HOST}:{port}"))
        wait_until(
            lambda: _addresses(port, "pool.contoso.com") == {"10.0.0.1", "10.0.0.2"},
            timeout=20,
            message="dns serve did not reload the topology",
        )
        assert query(port, "contoso.com", "SOA").answer[0][0].serial == 2

        # A bad topology is logged and the old zone kept.
        path.write_text("version = 3\n[[pools]]\nfqdn = \n")
        wait_until(lambda: "not valid" in output(), timeout=20, message="no reload error logged")
        assert _addresses(port, "pool.contoso.com") == {"10.0.0.1", "10.0.0.2"}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


BURST_QUERIES = 5000
BURST_SOCKETS = 4
BURST_RATE = 10_000
"""Queries per second the burst is sent at (5,000 in half a second): the server before the fix
answered ~2,000/s and dropped most of it (22% answered); the kernel's default UDP receive
buffer (~208 KiB) is then enough to ride out scheduling pauses, so the test holds on machines
where ``net.core.rmem_max`` keeps the server's buffer small."""


def _burst(port: int, queries: list[bytes], *, deadline: float) -> list[list[bytes]]:
    """Send ``queries`` round robin from :data:`BURST_SOCKETS` sockets at :data:`BURST_RATE`
    per second without waiting for answers, reading replies as they come; returns the raw
    replies per socket once every query has one or ``deadline`` (monotonic) has passed."""
    socks = []
    replies: list[list[bytes]] = [[] for _ in range(BURST_SOCKETS)]
    selector = selectors.DefaultSelector()
    try:
        for index in range(BURST_SOCKETS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((HOST, 0))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)

        def read(timeout: float) -> None:
            for key, _ in selector.select(max(timeout, 0.0)):
                while True:
                    try:
                        replies[key.data].append(key.fileobj.recv(4096))  # type: ignore[union-attr]
                    except BlockingIOError:
                        break

        started = time.monotonic()
        for i, wire in enumerate(queries):
            socks[i % BURST_SOCKETS].sendto(wire, (HOST, port))
            due = started + (i + 1) / BURST_RATE
            if i % 50 == 49:
                while time.monotonic() < due:
                    read(due - time.monotonic())
        while sum(map(len, replies)) < len(queries) and time.monotonic() < deadline:
            read(min(0.5, deadline - time.monotonic()))
        return replies
    finally:
        selector.close()
        for sock in socks:
            sock.close()


@pytest.mark.network
def test_cli_serve_answers_a_burst(tmp_path: Path) -> None:
    """10,000 clients of one process resolving the pool at once lost ~1,445 SRV queries with
    the thread-per-query server; a burst must now be answered (>= 99.9%, correctly)."""
    pytest.importorskip("registrar.topology")
    port = free_udp_tcp_port()
    path = tmp_path / "topology.toml"
    path.write_text(topology_toml(IPS, listen=f"{HOST}:{port}"))
    log = (tmp_path / "dns.log").open("w+")
    proc = subprocess.Popen(
        _serve_command("--topology", str(path), "--poll-interval", "0.2"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: _addresses(port, "pool.contoso.com") == set(IPS),
            timeout=20,
            message="dns serve did not answer",
        )
        expected = {
            ("_sipinternaltls._tcp.contoso.com.", "SRV"): {"0 0 5061 pool.contoso.com."},
            ("_sips._tcp.contoso.com.", "SRV"): {"0 0 5061 pool.contoso.com."},
            ("_sip._tls.contoso.com.", "SRV"): {"0 0 5061 pool.contoso.com."},
            ("_sip._tcp.contoso.com.", "SRV"): {"0 0 5060 pool.contoso.com."},
            ("pool.contoso.com.", "A"): set(IPS),
        }
        kinds = list(expected)
        queries = []
        for i in range(BURST_QUERIES):
            msg = dns.message.make_query(*kinds[i % len(kinds)])
            msg.id = i // BURST_SOCKETS  # unique per socket
            queries.append(msg.to_wire())
        started = time.monotonic()
        replies = _burst(port, queries, deadline=started + 15)
        elapsed = time.monotonic() - started

        good: set[tuple[int, int]] = set()
        for index, datagrams in enumerate(replies):
            for data in datagrams:
                response = dns.message.from_wire(data)
                i = response.id * BURST_SOCKETS + index
                question = response.question[0]
                kind = (question.name.to_text(), dns.rdatatype.to_text(question.rdtype))
                if (
                    i < BURST_QUERIES
                    and kind == kinds[i % len(kinds)]
                    and response.rcode() == dns.rcode.NOERROR
                    and response.flags & dns.flags.AA
                    and len(response.answer) == 1
                    and {r.to_text() for r in response.answer[0]} == expected[kind]
                    and (
                        kind[1] == "A"
                        or {r.address for rrset in response.additional for r in rrset} == set(IPS)
                    )
                ):
                    good.add((index, response.id))
        answered = len(good) / BURST_QUERIES
        assert answered >= 0.999, (
            f"{len(good)} of {BURST_QUERIES} burst queries answered correctly in {elapsed:.1f}s"
        )
        # TCP still answers after the burst.
        assert resolver(port).resolve("_sip._tls.contoso.com", "SRV", tcp=True)[0].port == 5061

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
