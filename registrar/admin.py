"""The FE's admin interface: a small JSON-over-HTTP API on a loopback address (aiohttp).

Endpoints (all ``GET``):

``/status``                 this FE: fqdn, pid, uptime, listeners, counts (JSON object)
``/bindings?aor=AOR``       the AOR's current bindings (JSON list, see :func:`binding_json`)
``/metrics``                Prometheus text format (``prometheus-client``)

The CLI reads it (``registrar bindings``, ``registrar status``). Bind it to loopback (the
default ``127.0.0.1:5080``); it has no authentication of its own.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .location import Binding

__all__ = ["AdminServer", "binding_json", "fetch_json"]

log = logging.getLogger("registrar.admin")


def binding_json(binding: Binding, now: float) -> dict[str, Any]:
    """One binding as JSON: ``aor``, ``contact``, ``expires`` (seconds left), ``expires_at``
    (Unix time), ``call_id``, ``cseq``, ``q``, ``instance_id``, ``reg_id``, ``source``,
    ``path``, ``user_agent``, ``backup``, ``flow_id``."""
    return {
        "aor": binding.aor,
        "contact": binding.contact,
        "expires": binding.remaining(now),
        "expires_at": binding.expires_at,
        "call_id": binding.call_id,
        "cseq": binding.cseq,
        "q": binding.q,
        "instance_id": binding.instance_id,
        "reg_id": binding.reg_id,
        "source": binding.source,
        "path": list(binding.path),
        "user_agent": binding.user_agent,
        "backup": binding.backup,
        "flow_id": binding.flow_id,
    }


class AdminServer:
    """Serves the admin API for one FE.

    Args:
        status: returns the ``/status`` JSON object.
        bindings: ``aor -> list of binding JSON objects`` (the AOR is normalised by the caller).
        gauges: name → (help text, callable returning the current value) for ``/metrics``.
    """

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        bindings: Callable[[str], list[dict[str, Any]]],
        gauges: dict[str, tuple[str, Callable[[], float]]],
    ) -> None:
        self._status = status
        self._bindings = bindings
        self.registry = CollectorRegistry()
        for name, (text, func) in gauges.items():
            gauge = Gauge(name, text, registry=self.registry)
            gauge.set_function(func)
        self._runner: web.AppRunner | None = None
        self.started = time.time()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port``; returns the bound address. Raises OSError."""
        app = web.Application()
        app.router.add_get("/status", self._get_status)
        app.router.add_get("/bindings", self._get_bindings)
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname() if sockets else (host, port)
        return bound[0], bound[1]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get_status(self, request: web.Request) -> web.Response:
        body = self._status()
        body.setdefault("pid", os.getpid())
        return web.json_response(body)

    async def _get_bindings(self, request: web.Request) -> web.Response:
        aor = request.query.get("aor")
        if not aor:
            return web.json_response({"error": "missing ?aor="}, status=400)
        try:
            return web.json_response(self._bindings(aor))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def fetch_json(address: str, path: str, timeout: float = 5.0) -> Any:
    """GET ``http://ADDRESS/PATH`` and decode the JSON body (used by the CLI).

    Raises:
        OSError: the FE is not reachable (``URLError`` is an OSError).
        ValueError: the answer is not JSON, or an error status with its message.
    """
    url = f"http://{address}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except (ValueError, AttributeError):
            message = str(exc)
        raise ValueError(message) from None


def quote(aor: str) -> str:
    """URL-quote an AOR for ``/bindings?aor=``."""
    return urllib.parse.quote(aor, safe="")
