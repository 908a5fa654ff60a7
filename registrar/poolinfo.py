"""Where does a user register? ``registrar user-pool-info`` (DESIGN.md §4).

For an AOR, :func:`pool_info` reports its normalised form, its home pool (the pool serving
its domain), its **logical registrar sequence**, which FE each server ID maps to (or none:
not commissioned), its **primary registrar** — and, when the pool is running, its **current
registrar** and whether it is registered there in **backup mode**.

The live part asks each FE's admin API (:mod:`registrar.admin`) with short timeouts:

* ``GET http://IP:ADMIN_PORT/status`` — an FE that answers is up, one that does not is down,
  and the current registrar is the first ID of the sequence whose FE answers. (``/status``
  will gain a ``pool`` section with the FE's own view of its pool; until then answering is
  what counts.)
* ``GET /bindings?aor=AOR`` on the current registrar — the AOR is registered if it has
  bindings there, and in backup mode if one of them says ``"backup": true``.

The network access goes through a *fetcher* (:data:`Fetcher`), so tests inject a fake one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .admin import fetch_json, quote
from .pool.sequence import current_registrar, logical_sequence, primary_registrar
from .topology import PoolSpec, Topology, TopologyError, load_topology
from .users import normalize_aor

__all__ = [
    "DEFAULT_TIMEOUT",
    "Fetcher",
    "PoolInfoError",
    "add_cli",
    "format_info",
    "http_fetcher",
    "pool_info",
    "query_live",
]

DEFAULT_TIMEOUT = 1.0
"""Seconds to wait for one admin API answer."""

Fetcher = Callable[[str, int, str, float], Any]
"""``fetch(ip, admin_port, path_and_query, timeout_s) -> decoded JSON``; raises ``OSError``
when the FE does not answer and ``ValueError`` for a bad answer (both mean "no answer")."""


class PoolInfoError(ValueError):
    """The AOR cannot be placed: it is malformed, or no pool of the topology serves its
    domain (the message names the domain)."""


def http_fetcher(ip: str, port: int, path: str, timeout: float) -> Any:
    """The real :data:`Fetcher`: HTTP GET on the FE's admin API (``registrar.admin``)."""
    host = f"[{ip}]" if ":" in ip else ip
    return fetch_json(f"{host}:{port}", path, timeout=timeout)


def _home_pool(topology: Topology, aor: str) -> PoolSpec:
    domain = aor.rpartition("@")[2]
    pool = topology.pool_for_domain(domain)
    if pool is None:
        served = sorted(d for p in topology.pools for d in p.domains)
        raise PoolInfoError(
            f"domain {domain!r} of {aor} is not served by any pool of {topology.path.name} "
            f"(served: {', '.join(served) or 'none'})"
        )
    return pool


def query_live(
    pool: PoolSpec,
    aor: str,
    *,
    fetch: Fetcher = http_fetcher,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Ask the pool's FEs which of them are up and what the AOR's current registrar holds.

    All ``/status`` requests go out in parallel (at most ``timeout`` seconds in all, about),
    then ``/bindings`` on the current registrar.

    Args:
        pool: the AOR's home pool.
        aor: the *normalised* AOR.
        fetch: the :data:`Fetcher`.
        timeout: seconds per request.

    Returns:
        The ``live`` snapshot :func:`pool_info` takes: ``{"up": [server IDs that answered],
        "bindings": {server_id: list of binding objects, or None when /bindings failed}}``
        (``bindings`` only for the current registrar; empty when no FE answered).
    """

    def status(fe_id: int) -> bool:
        fe = pool.by_id[fe_id]
        try:
            answer = fetch(fe.ip, fe.admin_port, "/status", timeout)
        except (OSError, ValueError):
            return False
        return isinstance(answer, dict)

    ids = sorted(pool.by_id)
    with ThreadPoolExecutor(max_workers=max(1, len(ids))) as ex:
        answered = dict(zip(ids, ex.map(status, ids), strict=True))
    up = [i for i in ids if answered[i]]
    bindings: dict[int, list[dict[str, Any]] | None] = {}
    cur = current_registrar(logical_sequence(aor, pool.max_servers), set(up).__contains__)
    if cur is not None:
        fe = pool.by_id[cur]
        try:
            rows = fetch(fe.ip, fe.admin_port, f"/bindings?aor={quote(aor)}", timeout)
            bindings[cur] = rows if isinstance(rows, list) else None
        except (OSError, ValueError):
            bindings[cur] = None
    return {"up": up, "bindings": bindings}


def pool_info(
    topology: Topology,
    aor: str,
    *,
    live: Mapping[str, Any] | None = None,
    fetch: Fetcher | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Describe where ``aor`` registers in its home pool (DESIGN.md §4).

    Args:
        topology: the loaded topology.
        aor: the AOR as typed (``sip:Alice@Contoso.com``, ``alice@contoso.com``, ...).
        live: a snapshot of the running pool as returned by :func:`query_live`
            (``{"up": iterable of IDs, "bindings": {id: list | None}}``); ``None`` = use
            ``fetch``, or report offline.
        fetch: when ``live`` is ``None``, query the pool with this :data:`Fetcher`
            (e.g. :func:`http_fetcher`); ``None`` = offline, no network.
        timeout: seconds per admin API request.

    Returns:
        A JSON-ready dict:

        ``aor`` (as given), ``normalized``, ``pool`` (home pool FQDN), ``logical_sequence``
        (the IDs ``1..max_servers`` in order), ``servers`` (``{"<id>": fe fqdn or None}`` for
        every ID, in ID order), ``primary`` / ``primary_id`` (first commissioned ID of the
        sequence and its FE, ``None`` when the pool has no FE), ``up`` (IDs seen up,
        ``None`` offline),
        ``current`` / ``current_id`` (first commissioned-and-up ID and its FE; ``None`` when
        the pool is not running or offline), ``registered`` (the current registrar holds
        bindings of the AOR; ``None`` when unknown) and ``backup_mode`` (one of those bindings
        is in backup mode; ``None`` when unknown).

    Raises:
        PoolInfoError: the AOR is malformed, or no pool serves its domain.
    """
    try:
        normalized = normalize_aor(aor)
    except ValueError as exc:
        raise PoolInfoError(str(exc)) from None
    pool = _home_pool(topology, normalized)
    sequence = logical_sequence(normalized, pool.max_servers)
    by_id = pool.by_id
    primary_id = primary_registrar(sequence, by_id)
    if live is None and fetch is not None:
        live = query_live(pool, normalized, fetch=fetch, timeout=timeout)

    up: list[int] | None = None
    current_id = None
    registered = backup = None
    if live is not None:
        up = sorted(i for i in live.get("up", ()) if i in by_id)
        current_id = current_registrar(sequence, set(up).__contains__)
        held = live.get("bindings") or {}
        rows = None
        if current_id is not None:
            rows = held.get(current_id, held.get(str(current_id)))
        if isinstance(rows, list):
            registered = bool(rows)
            backup = any(bool(r.get("backup")) for r in rows if isinstance(r, dict))
    return {
        "aor": aor,
        "normalized": normalized,
        "pool": pool.fqdn,
        "logical_sequence": list(sequence),
        "servers": {str(i): (by_id[i].fqdn if i in by_id else None) for i in sorted(sequence)},
        "primary": by_id[primary_id].fqdn if primary_id is not None else None,
        "primary_id": primary_id,
        "up": up,
        "current": by_id[current_id].fqdn if current_id is not None else None,
        "current_id": current_id,
        "registered": registered,
        "backup_mode": backup,
    }


def _state(info: Mapping[str, Any], server_id: int) -> str:
    if info["servers"][str(server_id)] is None:
        return "not commissioned"
    if info["up"] is None:
        return ""
    return "up" if server_id in info["up"] else "down"


def format_info(info: Mapping[str, Any]) -> Iterable[str]:
    """The text form of a :func:`pool_info` result, line by line."""
    yield f"AOR               {info['aor']}"
    yield f"normalized        {info['normalized']}"
    yield f"home pool         {info['pool']}"
    yield f"logical sequence  {' '.join(map(str, info['logical_sequence']))}"
    for rank, sid in enumerate(info["logical_sequence"], 1):
        fe = info["servers"][str(sid)] or "-"
        state = _state(info, sid)
        marks = []
        if sid == info["primary_id"]:
            marks.append("primary")
        if sid == info["current_id"]:
            marks.append("current")
        tail = f"  <- {', '.join(marks)}" if marks else ""
        yield f"  {rank:>2}. ID {sid:>2}  {fe:<28} {state}{tail}".rstrip()
    if info["primary"] is None:
        yield "primary registrar none (no FE commissioned in the pool)"
    else:
        yield f"primary registrar {info['primary']} (ID {info['primary_id']})"
    if info["up"] is None:
        yield "current registrar unknown (pool not queried)"
    elif info["current"] is None:
        yield "current registrar none: no FE of the pool answers (pool not running)"
    else:
        yield f"current registrar {info['current']} (ID {info['current_id']})"
        if info["registered"] is None:
            yield "registered        unknown (the current registrar's /bindings did not answer)"
        elif not info["registered"]:
            yield "registered        no"
        else:
            mode = "yes (backup mode)" if info["backup_mode"] else "yes (primary)"
            yield f"registered        {mode}"


def _cmd_user_pool_info(args: argparse.Namespace) -> int:
    try:
        topology = load_topology(args.topology)
        fetch = None if args.offline else http_fetcher
        info = pool_info(topology, args.aor, fetch=fetch, timeout=args.timeout)
    except (TopologyError, PoolInfoError) as exc:
        print(f"registrar user-pool-info: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print("\n".join(format_info(info)))
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``registrar user-pool-info AOR --topology FILE [--json] [--offline]
    [--timeout S]`` on an argparse subparsers object.

    The handler is stored as ``args.func`` (``func(args) -> int``): 0 success, 2 invalid
    topology, malformed AOR or a domain no pool serves (message on stderr naming it). The JSON
    object is :func:`pool_info`'s result (documented in ``docs/topology.md``).

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()`` of the main CLI.
    """
    cmd = subparsers.add_parser(
        "user-pool-info",
        help="show an AOR's logical registrar sequence, primary and current registrar",
        description=(
            "Show where a user registers: the normalised AOR, its home pool, its logical "
            "registrar sequence (server IDs in hash order) with the FE of each ID, the primary "
            "registrar and, when the pool is running (FE admin APIs answer), the current "
            "registrar and whether the AOR is registered there in backup mode."
        ),
    )
    cmd.add_argument("aor", metavar="AOR", help="the user's SIP URI, e.g. sip:alice@contoso.com")
    cmd.add_argument(
        "--topology", required=True, type=Path, metavar="FILE", help="the topology file"
    )
    cmd.add_argument("--json", action="store_true", help="print JSON")
    cmd.add_argument(
        "--offline",
        action="store_true",
        help="do not query the running FEs (current registrar unknown)",
    )
    cmd.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds per admin API request (default {DEFAULT_TIMEOUT})",
    )
    cmd.set_defaults(func=_cmd_user_pool_info)
