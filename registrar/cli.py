"""The ``registrar`` command line.

``registrar serve``       run one front end (FE) process
``registrar certs init``  make the CA and FE certificates

Every command exits 0 on success, 1 on a runtime error and 2 on bad usage or configuration;
configuration errors name the option (or file and key) and the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from sipstack.framing import FramingLimits
from sipstack.transport.flows import parse_listen

from . import __version__, certs
from .server import FrontEndConfig, run_frontend

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
    try:
        listen = [parse_listen(text) for text in (args.listen or ["tls:127.0.0.1:5061"])]
        limits = FramingLimits(
            max_message_size=args.max_message_size,
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
        )
    except ValueError as exc:
        print(f"registrar serve: {exc}", file=sys.stderr)
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
    config = FrontEndConfig(
        listen=listen,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        domains=[d.lower() for d in args.domain],
        limits=limits,
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
