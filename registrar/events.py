"""Structured events with IDs (documented in ``docs/events.md``).

Every event is one log line on the ``registrar.events`` logger::

    event=32002 name=peer-down server_id=3 fqdn=fe3.contoso.com reason="heartbeat timeout"

so operators can grep and alert on IDs, and tests can read them back from the FE's log.
The KST events reuse the IDs Lync uses (14492, 14493, 14495, 14563; DESIGN.md §6); the pool's
own events are in the 32000 range.
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import Any

__all__ = ["EventId", "emit", "format_event"]

log = logging.getLogger("registrar.events")


class EventId(IntEnum):
    """Event IDs. Keep ``docs/events.md`` in step with this table."""

    KST_LOADED = 14492
    KST_ADDED = 14493
    KST_REMOVED = 14495
    KST_CONFLICT = 14563
    PEER_UP = 32001
    PEER_DOWN = 32002
    PEER_RESTARTED = 32003
    QUORUM_LOST = 32004
    QUORUM_GAINED = 32005
    PEER_REFUSED = 32010
    TOPOLOGY_LOADED = 32020
    TOPOLOGY_MISMATCH = 32021
    TOPOLOGY_INVALID = 32022
    FE_STARTED = 32030
    FE_STOPPING = 32031
    REHOME_BATCH = 32040
    REHOME_DONE = 32041
    QUOTA_EXCEEDED = 32078


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    return text


def format_event(event_id: EventId, **fields: Any) -> str:
    """``event=ID name=NAME key=value ...`` (values with spaces or quotes are quoted)."""
    name = event_id.name.lower().replace("_", "-")
    parts = [f"event={int(event_id)}", f"name={name}"]
    parts.extend(f"{key}={_value(value)}" for key, value in fields.items())
    return " ".join(parts)


def emit(event_id: EventId, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    log.log(level, format_event(event_id, **fields))
