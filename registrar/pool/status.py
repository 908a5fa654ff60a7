"""``registrar status``: the pool as its FEs see it, read from every FE's admin API.

JSON shape (scripts read it)::

    {"pool": "pool.contoso.com", "topology_version": 3, "quorum": true,
     "front_ends": [{"fqdn", "ip", "server_id", "pid", "state": "up"|"down", "aors",
                     "bindings", "backup_mode", "rehome_pending", "quorum", "up": [ids],
                     "seen_up_by": n, "draining": bool,
                     "rehome": {"pending", "batches", "last_batch" (Unix time), "aors",
                                "bindings", "draining", "reason", "targets"}}]}

``state`` is ``up`` when the FE's admin API answers; ``seen_up_by`` counts the other FEs whose
membership view has it up; ``quorum`` is a strict majority of the pool's FEs up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..admin import fetch_json

__all__ = ["pool_status", "render"]


def pool_status(
    topology: Any,
    fetch: Callable[[str, str], Any] | None = None,
    timeout: float = 1.0,
) -> list[dict[str, Any]]:
    """One status object per pool of the topology (see the module docstring)."""

    def default_fetch(address: str, path: str) -> Any:
        return fetch_json(address, path, timeout=timeout)

    get = fetch or default_fetch
    result = []
    for pool in topology.pools:
        rows = []
        views: dict[int, list[int]] = {}
        for fe in pool.front_ends:
            row: dict[str, Any] = {
                "fqdn": fe.fqdn,
                "ip": fe.ip,
                "server_id": fe.server_id,
                "pid": None,
                "state": "down",
                "aors": None,
                "bindings": None,
                "backup_mode": None,
                "rehome_pending": None,
                "quorum": None,
                "up": None,
            }
            try:
                status = get(f"{fe.ip}:{fe.admin_port}", "/status")
            except (OSError, ValueError):
                status = None
            if isinstance(status, dict):
                pool_view = status.get("pool") or {}
                row.update(
                    pid=status.get("pid"),
                    state="up",
                    aors=status.get("aors"),
                    bindings=status.get("bindings"),
                    backup_mode=status.get("backup_mode"),
                    rehome_pending=status.get("rehome_pending"),
                    quorum=pool_view.get("quorum"),
                    up=pool_view.get("up"),
                )
                for key in ("rehome", "draining"):
                    if key in status:
                        row[key] = status[key]
                views[fe.server_id] = list(pool_view.get("up") or [])
            rows.append(row)
        for row in rows:
            row["seen_up_by"] = sum(
                1 for sid, up in views.items() if sid != row["server_id"] and row["server_id"] in up
            )
        up = sum(1 for row in rows if row["state"] == "up")
        result.append(
            {
                "pool": pool.fqdn,
                "topology_version": topology.version,
                "quorum": 2 * up > len(rows),
                "front_ends": rows,
            }
        )
    return result


def render(pools: list[dict[str, Any]]) -> str:
    """A human-readable table."""
    lines = []
    for pool in pools:
        lines.append(
            f"pool {pool['pool']} (topology v{pool['topology_version']}): "
            f"quorum {'yes' if pool['quorum'] else 'NO'}"
        )
        lines.append(
            f"  {'FE':24} {'id':>3} {'state':6} {'pid':>7} {'AORs':>6} {'backup':>6} "
            f"{'rehome':>6} {'batches':>7} {'seen up by':>10}  last batch"
        )
        for fe in pool["front_ends"]:
            cell = {k: "-" if fe.get(k) is None else str(fe[k]) for k in fe}
            rehome = fe.get("rehome") or {}
            batches = rehome.get("batches", "-")
            last_ts = rehome.get("last_batch")
            last = time.strftime("%H:%M:%S", time.localtime(last_ts)) if last_ts else "-"
            draining = "  DRAINING" if fe.get("draining") else ""
            lines.append(
                f"  {fe['fqdn']:24} {fe['server_id']:>3} {fe['state']:6} {cell['pid']:>7} "
                f"{cell['aors']:>6} {cell['backup_mode']:>6} {cell['rehome_pending']:>6} "
                f"{batches:>7} {fe['seen_up_by']:>10}  {last}{draining}"
            )
    return "\n".join(lines)
