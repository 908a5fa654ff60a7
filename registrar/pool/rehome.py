"""Re-homing: moving AORs to their current registrar in batches (DESIGN.md §4 "Re-homing").

Triggered when a peer comes up, when the topology changes, or when this FE drains for
decommissioning. Each run lists the AORs this FE holds whose current registrar is no longer
this FE, and de-registers them in batches of ``rehome_batch_users`` AORs every
``rehome_batch_interval`` seconds, all bindings of one AOR in the same batch:

* each binding is removed with reason ``deactivated``; the reg event service (RFC 3680) sends
  subscribed clients a NOTIFY with ``event="deactivated"``, and they re-register;
* once those NOTIFYs are out, a flow (TCP/TLS connection) that carries no other registered AOR
  is closed, so clients that subscribed to nothing notice and re-register;
* a client told nothing learns at its next refresh (``301``), bounded by ``backup_max_expires``.

Before each batch every AOR's decision is taken again, so re-homing toward an FE stops as soon
as that FE goes down again (a flapping peer does not make users ping-pong), and nothing is
moved while it would land in the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..events import EventId, emit

__all__ = ["RehomeProgress", "Rehomer"]

log = logging.getLogger("registrar.rehome")


@dataclass(slots=True)
class RehomeProgress:
    """What ``registrar status`` shows of re-homing.

    Attributes:
        pending: AORs waiting to be re-homed; batches: batches done since start;
        last_batch: Unix time of the last batch (``None`` before the first);
        aors, bindings: AORs and bindings moved since start; draining: this FE is being
        decommissioned; reason: what started the current run.
    """

    pending: int = 0
    batches: int = 0
    last_batch: float | None = None
    aors: int = 0
    bindings: int = 0
    draining: bool = False
    reason: str | None = None
    targets: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "pending": self.pending,
            "batches": self.batches,
            "last_batch": self.last_batch,
            "aors": self.aors,
            "bindings": self.bindings,
            "draining": self.draining,
            "reason": self.reason,
            "targets": dict(self.targets),
        }


class Rehomer:
    """Runs re-homing for one FE.

    Args:
        location: the FE's location service.
        router: the FE's :class:`registrar.pool.routing.PoolRouter` (``decide(aor)``).
        close_flow: ``flow_id -> None``: close that connection if it is open.
        notified: ``async (aors, timeout) -> None``: wait until the reg event NOTIFYs for
            these AORs are sent (or the timeout passes); may be ``None``.
        batch_users: AORs per batch; batch_interval: seconds between batches.
    """

    def __init__(
        self,
        location: Any,
        router: Any,
        *,
        close_flow: Callable[[int], None],
        notified: Callable[[list[str], float], Any] | None,
        batch_users: int,
        batch_interval: float,
    ) -> None:
        self.location = location
        self.router = router
        self.close_flow = close_flow
        self.notified = notified
        self.batch_users = max(1, int(batch_users))
        self.batch_interval = float(batch_interval)
        self.progress = RehomeProgress()
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_batch_mono: float | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    # --------------------------------------------------------------------- control
    def start(self) -> None:
        """Start the batch loop (idle until :meth:`trigger`)."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop (pending AORs stay where they are)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def trigger(self, reason: str) -> int:
        """List the AORs that no longer belong here and queue them; returns how many are
        pending now. Called on peer up, topology change, and drain."""
        added = 0
        for aor in self.location.aors():
            if aor in self._queued:
                continue
            if self._moves(aor):
                self._queue.append(aor)
                self._queued.add(aor)
                added += 1
        self.progress.pending = len(self._queue)
        if added:
            self.progress.reason = reason
            log.info("re-home (%s): %d AORs to move, %d pending", reason, added, len(self._queue))
            self.idle.clear()
            self._wake.set()
        return self.progress.pending

    def _moves(self, aor: str) -> bool:
        decision = self.router.decide(aor)
        return decision.kind in ("redirect", "other-pool")

    # ------------------------------------------------------------------------ loop
    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self.progress.pending = 0
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
            # Keep the pace: at most one batch per interval, even across triggers.
            # (A loop: the event loop's timers may fire a millisecond early, uvloop's among
            # them, as they work from a loop time cached at the start of an iteration.)
            while self._last_batch_mono is not None:
                wait = self._last_batch_mono + self.batch_interval - time.monotonic()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            try:
                await self._batch()
            except Exception:
                log.exception("re-home batch failed")
            if not self._queue:
                emit(EventId.REHOME_DONE, aors=self.progress.aors, bindings=self.progress.bindings)

    async def _batch(self) -> None:
        batch: list[tuple[str, str]] = []
        while self._queue and len(batch) < self.batch_users:
            aor = self._queue.popleft()
            self._queued.discard(aor)
            decision = self.router.decide(aor)
            if decision.kind not in ("redirect", "other-pool"):
                continue  # the target went down again, or it is ours now: stay
            target = decision.target.fqdn if decision.target is not None else decision.pool_fqdn
            batch.append((aor, target or "?"))
        self.progress.pending = len(self._queue)
        if not batch:
            return
        self._last_batch_mono = time.monotonic()
        started = time.time()  # the wall-clock twin of the pacing reference, for the event
        flows: set[int] = set()
        bindings = 0
        targets: dict[str, int] = {}
        aors = [aor for aor, _ in batch]
        for aor, target in batch:
            for binding in self.location.lookup(aor):
                if binding.flow_id is not None:
                    flows.add(binding.flow_id)
                self.location.remove(aor, binding.key, reason="deactivated")
                bindings += 1
            targets[target] = targets.get(target, 0) + 1
        progress = self.progress
        progress.batches += 1
        progress.last_batch = started
        progress.aors += len(batch)
        progress.bindings += bindings
        for target, count in targets.items():
            progress.targets[target] = progress.targets.get(target, 0) + count
        emit(
            EventId.REHOME_BATCH,
            batch=progress.batches,
            started=f"{started:.3f}",
            aors=len(batch),
            bindings=bindings,
            target=",".join(f"{t}:{n}" for t, n in sorted(targets.items())),
            pending=len(self._queue),
        )
        if self.notified is not None:
            try:
                await self.notified(aors, max(0.5, self.batch_interval))
            except Exception:
                log.exception("waiting for reg event NOTIFYs failed")
        for flow_id in flows:
            if not self.location.by_flow(flow_id):
                self.close_flow(flow_id)

    def status(self) -> dict[str, Any]:
        """The progress as JSON."""
        return self.progress.to_json()
