"""Rate limiting of failed authentications (DESIGN.md §5: "failures are rate-limited per source
and per AOR").

A key (``"src:192.0.2.1"`` or ``"aor:sip:alice@contoso.com"``) that fails ``max_failures``
times within ``window`` seconds is blocked for ``cooldown`` seconds; while blocked, requests get
``403`` without any credential check, whether or not the user exists.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["FailureLimiter"]


@dataclass(slots=True)
class _Entry:
    window_start: float
    failures: int
    blocked_until: float


class FailureLimiter:
    """Counts failures per key in fixed windows and blocks keys that exceed the limit.

    Args:
        max_failures: failures allowed per ``window`` (seconds) before the key is blocked.
        window: counting window in seconds.
        cooldown: how long a key stays blocked, seconds.
        max_entries: memory bound: the least recently failed keys are forgotten first
            (about 200 bytes per key).
    """

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        cooldown: float = 60.0,
        max_entries: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.cooldown = cooldown
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def blocked(self, key: str, now: float) -> bool:
        """True while ``key`` is in its cool-down."""
        entry = self._entries.get(key)
        return entry is not None and entry.blocked_until > now

    def failure(self, key: str, now: float) -> bool:
        """Record one failure at ``now`` (seconds); returns True if the key is now blocked."""
        entry = self._entries.get(key)
        if entry is None or now - entry.window_start >= self.window:
            blocked_until = entry.blocked_until if entry is not None else 0.0
            entry = _Entry(now, 0, blocked_until)
            self._entries[key] = entry
        self._entries.move_to_end(key)
        entry.failures += 1
        if entry.failures >= self.max_failures:
            entry.blocked_until = now + self.cooldown
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry.blocked_until > now

    def success(self, key: str) -> None:
        """Forget the failures of ``key`` (a successful authentication)."""
        entry = self._entries.get(key)
        if entry is not None and entry.blocked_until == 0.0:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
