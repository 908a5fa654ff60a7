"""Which modules of the hot path run compiled (mypyc) and which as plain Python.

``scripts/build_native.sh`` compiles :data:`NATIVE_MODULES` with mypyc into C extension
modules next to their sources; Python then imports the extension instead of the ``.py``. The
source is the same either way, so everything works without the build (e.g. on a machine with
no C compiler), only slower. An extension older than its source is *stale*: it runs the old
code, so :func:`native_status` reports it and ``registrar serve`` logs a warning naming the fix.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

__all__ = ["NATIVE_MODULES", "native_status", "native_summary"]

NATIVE_MODULES: tuple[str, ...] = (
    "sipstack.uri",
    "sipstack.headers",
    "sipstack.message",
    "sipstack.parser",
    "sipstack.auth",
    "sipstack.framing",
    "sipstack.transaction",
    "sipstack.transport.flows",
    "sipstack.transport.stream",
    "sipstack.transport.datagram",
    "sipstack.transport.endpoint",
    "registrar.checks",
    "registrar.register",
    "registrar.location",
    "registrar.dispatch",
    "registrar.ratelimit",
)
"""Dotted names of the modules ``scripts/build_native.sh`` compiles (keep the two in step)."""


def native_status() -> dict[str, str]:
    """``{module: state}`` for every module of :data:`NATIVE_MODULES` (imports them).

    States: ``"compiled"`` (a mypyc extension, up to date), ``"stale"`` (an extension older
    than its ``.py`` source: it runs the old code; run ``bash scripts/build_native.sh``) or
    ``"python"`` (the source is interpreted).
    """
    out: dict[str, str] = {}
    for name in NATIVE_MODULES:
        module = importlib.import_module(name)
        path = Path(module.__file__ or "")
        if path.suffix != ".so":
            out[name] = "python"
            continue
        source = path.with_name(path.name.split(".", 1)[0] + ".py")
        try:
            stale = os.stat(source).st_mtime > os.stat(path).st_mtime
        except OSError:
            stale = False
        out[name] = "stale" if stale else "compiled"
    return out


def native_summary() -> tuple[str, bool]:
    """A one-line description of :func:`native_status` for the log, and whether it is a
    problem (some module stale) that deserves a warning."""
    status = native_status()
    compiled = [n for n, s in status.items() if s == "compiled"]
    stale = [n for n, s in status.items() if s == "stale"]
    if stale:
        return (
            f"compiled modules older than their source (running old code): {', '.join(stale)}; "
            "run 'bash scripts/build_native.sh' (or REGISTRAR_NATIVE=0 to remove them)",
            True,
        )
    if len(compiled) == len(status):
        return f"hot path compiled with mypyc ({len(compiled)} modules)", False
    if not compiled:
        return "hot path runs as plain Python (no compiled modules; scripts/build_native.sh)", False
    return f"hot path partly compiled ({len(compiled)} of {len(status)} modules)", False
