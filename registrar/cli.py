"""The ``registrar`` command line.

``registrar serve``          run one front end (FE) process
``registrar certs init``     make the CA and FE certificates
``registrar users ...``      manage the user directory (add, import, list, remove, set-password)
``registrar bindings AOR``   show a running FE's bindings for an AOR
``registrar topology ...``   validate, show, commission, decommission a pool topology
``registrar dns ...``        the pool's zone file and embedded DNS server
``registrar pool up``        run a local pool (DNS + every FE as a process)
``registrar status``         the pool as its FEs see it
``registrar user-pool-info`` an AOR's registrar sequence and where it is registered
``registrar client ...``     the pool client (register, load)

Every command exits 0 on success, 1 on a runtime error and 2 on bad usage or configuration;
configuration errors name the option (or file and key) and the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from pathlib import Path

from sipstack.framing import FramingLimits
from sipstack.transport.flows import parse_listen

from . import __version__, certs, client, dns, poolinfo, topology, users
from .admin import fetch_json, quote
from .cliutil import add_group
from .register import RegistrarSettings
from .server import FrontEndConfig, run_frontend
from .users import normalize_aor

__all__ = ["build_parser", "main"]


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run one front end (FE)",
        description=(
            "Run one SIP front end. It answers OPTIONS; other methods get 405 (with Allow) or "
            "501 until their services are enabled. SIGTERM or SIGINT stops it cleanly."
        ),
    )
    serve.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="TRANSPORT:HOST[:PORT]",
        help="a socket to listen on: tls:127.0.0.1:5061, tcp:127.0.0.1:5060, udp:127.0.0.1:5060 "
        "(repeatable; default: tls:127.0.0.1:5061)",
    )
    pool = serve.add_argument_group("pool (DESIGN.md §4)")
    pool.add_argument(
        "--topology",
        type=Path,
        metavar="FILE",
        help="run as an FE of a pool: listeners, certificates, domains, users, state and "
        "settings all come from the topology file (the options below are then ignored)",
    )
    pool.add_argument("--fe", metavar="FQDN", help="which FE of the topology this process is")
    serve.add_argument("--cert", type=Path, help="PEM certificate for TLS listeners")
    serve.add_argument("--key", type=Path, help="PEM private key for TLS listeners")
    serve.add_argument(
        "--ca", type=Path, help="PEM CA bundle that verifies peer (client) certificates"
    )
    serve.add_argument("--fqdn", help="this FE's host name (default: the machine's FQDN)")
    serve.add_argument(
        "--domain", action="append", default=[], help="a SIP domain this FE serves (repeatable)"
    )
    serve.add_argument(
        "--max-message-size",
        type=int,
        default=65536,
        metavar="BYTES",
        help="largest message accepted; larger ones get 513 (default 65536)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time to receive a whole message once it has begun (default 10)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close connections idle this long (default 300)",
    )
    reg = serve.add_argument_group("registrar (RFC 3261 §10.3)")
    reg.add_argument(
        "--users-db",
        type=Path,
        help="user directory (SQLite, see 'registrar users'); default STATE_DIR/users.db",
    )
    reg.add_argument(
        "--state-dir",
        type=Path,
        default=Path("state"),
        help="where bindings (location.db) and the nonce secret live (default ./state)",
    )
    reg.add_argument(
        "--auth",
        choices=["digest", "off"],
        default="digest",
        help="digest (default) or off: off lets anyone register any AOR (benchmarks, networks "
        "that authenticate elsewhere); it logs a warning",
    )
    reg.add_argument(
        "--digest-algorithms",
        default="SHA-256,MD5",
        metavar="LIST",
        help="digest challenge algorithms, most preferred first (default SHA-256,MD5; "
        "use MD5,SHA-256 or MD5 for clients that read only the first challenge, e.g. sipp)",
    )
    reg.add_argument(
        "--min-expires",
        type=int,
        default=60,
        metavar="SECONDS",
        help="shortest registration accepted; shorter gets 423 (default 60)",
    )
    reg.add_argument(
        "--max-expires",
        type=int,
        default=7200,
        metavar="SECONDS",
        help="longest registration granted (default 7200)",
    )
    reg.add_argument(
        "--default-expires",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="expiry when the client asks none (default 3600)",
    )
    reg.add_argument(
        "--max-contacts", type=int, default=10, help="bindings per AOR; more get 403 (default 10)"
    )
    serve.add_argument(
        "--admin",
        default="127.0.0.1:5080",
        metavar="HOST:PORT",
        help="admin API (JSON status, bindings, Prometheus metrics) address, or 'off' "
        "(default 127.0.0.1:5080)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level (default info)",
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.topology is not None:
        return _serve_topology(args)
    try:
        listen = [parse_listen(text) for text in (args.listen or ["tls:127.0.0.1:5061"])]
    except ValueError as exc:
        print(f"registrar serve: --listen: {exc}", file=sys.stderr)
        return 2
    try:
        limits = FramingLimits(
            max_message_size=args.max_message_size,
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
        )
    except ValueError as exc:
        # Name the option, not the dataclass field ("FramingLimits.header_timeout must be > 0").
        message = re.sub(r"FramingLimits\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(exc))
        print(f"registrar serve: {message}", file=sys.stderr)
        return 2
    needs_tls = any(spec.transport == "tls" for spec in listen)
    if needs_tls and (args.cert is None or args.key is None):
        print(
            "registrar serve: a tls listener needs --cert and --key; make them with "
            "'registrar certs init' or listen on tcp/udp only",
            file=sys.stderr,
        )
        return 2
    for option in ("cert", "key", "ca"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            print(f"registrar serve: --{option} {path}: no such file", file=sys.stderr)
            return 2
    bounds = (args.min_expires, args.default_expires, args.max_expires)
    if not 0 < args.min_expires <= args.default_expires <= args.max_expires:
        print(
            "registrar serve: need 0 < --min-expires <= --default-expires <= --max-expires "
            f"(got {bounds[0]}, {bounds[1]}, {bounds[2]})",
            file=sys.stderr,
        )
        return 2
    algorithms = tuple(a.strip().upper() for a in args.digest_algorithms.split(",") if a.strip())
    if not algorithms or any(a not in ("MD5", "SHA-256") for a in algorithms):
        print(
            f"registrar serve: --digest-algorithms {args.digest_algorithms!r}: use MD5 and/or "
            "SHA-256, comma-separated, e.g. SHA-256,MD5",
            file=sys.stderr,
        )
        return 2
    if args.max_contacts < 1:
        print("registrar serve: --max-contacts must be at least 1", file=sys.stderr)
        return 2
    try:
        admin = None if args.admin == "off" else _host_port(args.admin)
    except ValueError as exc:
        print(f"registrar serve: --admin: {exc}", file=sys.stderr)
        return 2
    config = FrontEndConfig(
        listen=listen,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        domains=[d.lower() for d in args.domain],
        limits=limits,
        users_db=args.users_db or args.state_dir / "users.db",
        state_dir=args.state_dir,
        registrar=RegistrarSettings(
            min_expires=args.min_expires,
            max_expires=args.max_expires,
            default_expires=args.default_expires,
            max_contacts=args.max_contacts,
            auth=args.auth,
            digest_algorithms=algorithms,
        ),
        admin=admin,
    )
    if args.fqdn:
        config.fqdn = args.fqdn
    try:
        return _run(run_frontend(config))
    except OSError as exc:
        print(f"registrar serve: cannot listen: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"registrar serve: {exc}", file=sys.stderr)
        return 2


def _serve_topology(args: argparse.Namespace) -> int:
    """``registrar serve --topology FILE --fe FQDN``: everything from the topology."""
    from .topology import TopologyError, load_topology

    if not args.fe:
        print("registrar serve: --topology needs --fe FQDN (which FE this is)", file=sys.stderr)
        return 2
    try:
        topology = load_topology(args.topology)
        fe = topology.fe(args.fe.lower())
    except TopologyError as exc:
        print(f"registrar serve: {exc}", file=sys.stderr)
        return 2
    except KeyError:
        names = ", ".join(f.fqdn for f in topology.all_front_ends())
        print(
            f"registrar serve: {args.topology}: no FE {args.fe!r} in the topology "
            f"(it has: {names}); fix: --fe one of those, or commission it first",
            file=sys.stderr,
        )
        return 2
    pool = topology.pool(fe.pool)
    settings = topology.settings
    listen = [parse_listen(f"tls:{fe.ip}:{fe.tls_port}")]
    if fe.tcp_port:
        listen.append(parse_listen(f"tcp:{fe.ip}:{fe.tcp_port}"))
    if fe.udp_port:
        listen.append(parse_listen(f"udp:{fe.ip}:{fe.udp_port}"))
    certs_dir = topology.paths.certs
    cert, key, ca = certs_dir / f"{fe.fqdn}.crt", certs_dir / f"{fe.fqdn}.key", certs_dir / "ca.crt"
    for path in (cert, key, ca):
        if not path.is_file():
            print(
                f"registrar serve: {path}: missing; fix: registrar certs init --topology "
                f"{args.topology}",
                file=sys.stderr,
            )
            return 2
    config = FrontEndConfig(
        listen=listen,
        fqdn=fe.fqdn,
        cert=cert,
        key=key,
        ca=ca,
        domains=list(pool.domains),
        limits=FramingLimits(
            max_message_size=args.max_message_size,
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
        ),
        users_db=topology.paths.users_db,
        state_dir=topology.state_dir_for(fe.fqdn),
        registrar=RegistrarSettings(
            min_expires=int(settings.min_expires),
            max_expires=int(settings.max_expires),
            default_expires=int(settings.default_expires),
            max_contacts=int(settings.max_contacts),
            auth=args.auth,
            digest_algorithms=tuple(a.upper() for a in settings.digest_algorithms),
        ),
        admin=(fe.ip, fe.admin_port),
        topology=topology,
    )
    try:
        return _run(run_frontend(config))
    except OSError as exc:
        print(f"registrar serve: {fe.fqdn}: cannot listen: {exc}", file=sys.stderr)
        return 1


def _host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` too). Raises ValueError naming the expected form."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:5080)")
    return host, int(port)


def _add_bindings(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = subparsers.add_parser(
        "bindings",
        help="show a running FE's bindings for an AOR",
        description="Ask a running FE (its admin API) for the bindings of one AOR.",
    )
    cmd.add_argument("aor", help="the address-of-record, e.g. sip:alice@contoso.com")
    cmd.add_argument(
        "--admin",
        default="127.0.0.1:5080",
        metavar="HOST:PORT",
        help="the FE's admin API (default 127.0.0.1:5080)",
    )
    cmd.add_argument("--json", action="store_true", help="print JSON")
    cmd.set_defaults(func=_bindings)


def _bindings(args: argparse.Namespace) -> int:
    try:
        aor = normalize_aor(args.aor)
        rows = fetch_json(args.admin, f"/bindings?aor={quote(aor)}")
    except ValueError as exc:
        print(f"registrar bindings: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"registrar bindings: cannot reach the FE admin API at {args.admin}: {exc}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{aor}: no bindings")
        return 0
    print(f"{aor}: {len(rows)} binding(s)")
    for row in rows:
        extra = []
        if row.get("instance_id"):
            extra.append(f"instance {row['instance_id']} reg-id {row.get('reg_id')}")
        if row.get("backup"):
            extra.append("backup mode")
        tail = f"  ({'; '.join(extra)})" if extra else ""
        print(f"  {row['contact']}  expires {row['expires']}s  via {row['source']}{tail}")
    return 0


def _add_pool(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = add_group(
        subparsers, "pool", help="run a local pool (DNS server + every FE as its own process)"
    )
    up = sub.add_parser(
        "up",
        help="start the pool of a topology and supervise it until Ctrl-C",
        description=(
            "Make missing certificates and a demo user directory (user0001..user2000, password "
            "'demo'), start the DNS server and every FE as its own process, print where "
            "everything listens, and stop them all on Ctrl-C or SIGTERM."
        ),
    )
    up.add_argument("--topology", type=Path, required=True, metavar="FILE")
    up.add_argument("--users", type=int, default=2000, help="demo users to create (default 2000)")
    up.add_argument("--restart-failed", action="store_true", help="restart FEs that exit")
    up.add_argument("--log-dir", type=Path, help="children's logs (default: STATE_DIR/logs)")
    up.set_defaults(func=_pool_up)
    init = sub.add_parser(
        "init",
        help="make the certificates and the demo user directory of a topology, if missing",
        description="What 'pool up' prepares, without starting anything (containers, operators).",
    )
    init.add_argument("--topology", type=Path, required=True, metavar="FILE")
    init.add_argument("--users", type=int, default=2000, help="demo users to create (default 2000)")
    init.set_defaults(func=_pool_init)

    status = subparsers.add_parser("status", help="the pool as its FEs see it")
    status.add_argument("--topology", type=Path, required=True, metavar="FILE")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)


def _load_topology(args: argparse.Namespace, command: str) -> topology.Topology | None:
    """Load ``args.topology`` (:func:`registrar.topology.load_topology`); ``None`` when it is
    invalid, after printing ``registrar <command>: <error>`` on stderr."""
    try:
        return topology.load_topology(args.topology)
    except topology.TopologyError as exc:
        print(f"registrar {command}: {exc}", file=sys.stderr)
        return None


def _pool_init(args: argparse.Namespace) -> int:
    from .pool.supervisor import ensure_certs, ensure_demo_users

    topology = _load_topology(args, "pool init")
    if topology is None:
        return 2
    written = ensure_certs(topology)
    print(f"certificates: {len(written)} files written in {topology.paths.certs}")
    created = ensure_demo_users(topology, args.users)
    print(f"user directory {topology.paths.users_db}: {created} demo users created")
    return 0


def _pool_up(args: argparse.Namespace) -> int:
    from .pool.supervisor import PoolSupervisor, ensure_certs, ensure_demo_users

    topology = _load_topology(args, "pool up")
    if topology is None:
        return 2
    written = ensure_certs(topology)
    if written:
        print(f"certificates: wrote {len(written)} files in {topology.paths.certs}")
    created = ensure_demo_users(topology, args.users)
    if created:
        print(f"user directory: created {created} demo users in {topology.paths.users_db}")
    log_dir = args.log_dir or topology.paths.state_dir / "logs"
    supervisor = PoolSupervisor(
        topology, args.topology, log_dir, restart_failed=args.restart_failed
    )
    supervisor.start()
    if supervisor.wait_ready():
        print("pool is up")
    else:
        print("some FEs did not become ready; see their logs", file=sys.stderr)
    print(supervisor.describe(), flush=True)
    return supervisor.supervise()


def _status(args: argparse.Namespace) -> int:
    from .pool.status import pool_status, render

    topology = _load_topology(args, "status")
    if topology is None:
        return 2
    pools = pool_status(topology)
    if args.json:
        print(json.dumps(pools[0] if len(pools) == 1 else pools, indent=2))
    else:
        print(render(pools))
    return 0


def _run(coro: object) -> int:
    """Run a coroutine on uvloop when installed, else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type,no-any-return]


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="registrar", description="SIP proxy/registrar pool server"
    )
    parser.add_argument("--version", action="version", version=f"registrar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    certs.add_cli(sub)
    users.add_cli(sub)
    topology.add_cli(sub)
    dns.add_cli(sub)
    _add_bindings(sub)
    _add_pool(sub)
    poolinfo.add_cli(sub)
    client.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``registrar`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
