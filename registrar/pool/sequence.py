"""Logical and physical registrar sequences (DESIGN.md §4, normative).

The logical registrar sequence of an AOR is every server ID ``1..max_servers`` ordered by
rendezvous (highest-random-weight) hashing::

    score(aor, id) = int.from_bytes(blake2b(f"{aor}#{id}".encode(), digest_size=8).digest(), "big")
    sequence(aor)  = sorted(range(1, max_servers + 1), key=lambda id: score(aor, id), reverse=True)

so each ID is primary for ``1/max_servers`` of the AORs, the AORs of failed IDs spread evenly over
the survivors, and commissioning or decommissioning an FE never changes any sequence, only which
IDs map to FEs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from hashlib import blake2b

__all__ = [
    "PhysicalEntry",
    "ServerState",
    "current_registrar",
    "logical_sequence",
    "primary_registrar",
    "score",
]

DEFAULT_MAX_SERVERS = 10


def score(aor: str, server_id: int) -> int:
    """The rendezvous weight of ``server_id`` for the normalised ``aor`` (64-bit unsigned)."""
    return int.from_bytes(blake2b(f"{aor}#{server_id}".encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=200_000)
def logical_sequence(aor: str, max_servers: int = DEFAULT_MAX_SERVERS) -> tuple[int, ...]:
    """Every server ID ``1..max_servers`` in the AOR's hash order (first = most preferred).

    Args:
        aor: the *normalised* AOR (``sip:user@host``, lower case; see
            :func:`registrar.users.normalize_aor`).
        max_servers: the pool's ``max_servers`` (default 10).

    Cached (LRU, 200,000 AORs, about 40 MB at most), since every REGISTER asks.
    """
    ids = range(1, max_servers + 1)
    return tuple(sorted(ids, key=lambda i: score(aor, i), reverse=True))


class ServerState(StrEnum):
    """State of a server ID in an FE's view of its pool (the physical registrar sequence)."""

    UP = "up"
    DOWN = "down"
    NOT_COMMISSIONED = "not-commissioned"


@dataclass(frozen=True, slots=True)
class PhysicalEntry:
    """One server ID of the physical registrar sequence: the FE it maps to (``None`` when not
    commissioned) and its state as this FE sees it."""

    server_id: int
    fqdn: str | None
    state: ServerState


def primary_registrar(
    sequence: Sequence[int], commissioned: Mapping[int, object] | set[int]
) -> int | None:
    """The first *commissioned* ID of a logical sequence, or ``None`` if the pool has none."""
    for server_id in sequence:
        if server_id in commissioned:
            return server_id
    return None


def current_registrar(sequence: Sequence[int], is_up: Callable[[int], bool]) -> int | None:
    """The first commissioned *and up* ID of a logical sequence (``is_up`` is False for IDs not
    commissioned), or ``None`` when no FE of the pool is up."""
    for server_id in sequence:
        if is_up(server_id):
            return server_id
    return None
