"""The location service: this FE's store of bindings (RFC 3261 §10, RFC 5626; DESIGN.md §2, §3, §8).

Kept apart from the REGISTER logic (``registrar/register.py``), as Kamailio keeps ``usrloc``
apart from ``registrar``: this module knows nothing of SIP messages. The REGISTER service
decides *what* changes (and why); this module stores it, answers look-ups, expires bindings,
tells listeners (the ``reg`` event package, RFC 3680) and persists everything.

Data model
    A :class:`Binding` is one contact of an AOR. Within its AOR it is identified by its
    :attr:`Binding.key`: the instance (``+sip.instance``, plus ``reg-id`` when present,
    RFC 5626 §6, RFC 5627) or else the contact URI (RFC 3261 §10.3 step 7), see
    :func:`contact_key`. :meth:`LocationService.put` adds a binding or replaces the one with
    the same ``(aor, key)``.

Expiry
    A binding with ``expires_at <= now`` is expired. Every read (:meth:`~LocationService.lookup`,
    :meth:`~LocationService.get`, :meth:`~LocationService.by_flow`,
    :meth:`~LocationService.count`) ignores expired bindings at once; :meth:`~LocationService.sweep`
    removes them (event ``"expired"``) in O(expired + due seconds), without scanning the store:
    each put files the AOR under the whole second ``ceil(expires_at)`` in a dict of per-second
    buckets whose seconds are kept in a heap. Entries are deleted lazily: a refreshed or removed
    binding leaves its old entry behind, which costs one pointer and is skipped when its second
    comes. Only the AOR string (already shared with the index) is filed, never a tuple per
    binding; this keeps the overhead at ~8 bytes per binding instead of ~90 for a heap of
    ``(expires_at, aor, key)`` tuples (the memory budget below). A refresh within the same
    second files nothing new, and when stale entries outnumber bindings 4 to 1 (clients
    refreshing far more often than they expire) the buckets are rebuilt from the index
    (amortised O(1) per put).

Persistence (DESIGN.md §8: "stored registrations survive restarts")
    Write-behind to a per-FE SQLite file (WAL, ``synchronous=NORMAL``, exclusive locking so that
    two FEs can never share one file). :meth:`~LocationService.put` and the removals only record
    ``(aor, key) -> binding`` (upsert) or ``-> row id`` (delete) in a dict of pending changes
    under a lock (repeated changes of one binding coalesce) and never touch the disk; ONE
    background thread wakes every ``flush_interval`` seconds (or when
    :meth:`~LocationService.flush` asks) and writes the pending changes in one transaction. The
    REGISTER path therefore never waits on the disk.

    File format (``PRAGMA user_version`` = :data:`SCHEMA_VERSION` = 2): one table ``bindings``
    whose ``id INTEGER PRIMARY KEY`` (the SQLite rowid) is the binding's
    :attr:`Binding.row_id`, plus one column per persisted field and the ``key`` it was stored
    under; no other index (every write is by id, so a batch dirties only table pages). The store
    gives each new ``(aor, key)`` the next unused id; a replacing binding (refresh) takes the id
    of the one it replaces, and so does a binding re-added while the removal of its key is still
    pending or being written, so one ``(aor, key)`` never has two rows. Version 1 files (same
    columns, ``PRIMARY KEY (aor, key)``) are migrated in place at :meth:`~LocationService.open`.

    A committed WAL transaction survives the death of the process (SIGKILL, crash, OOM kill):
    after SIGKILL an FE loses at most the changes of the last ``flush_interval`` seconds plus
    those of a write in progress; its clients recover them at their next refresh. With
    ``synchronous=NORMAL`` a power loss or kernel crash may also lose the transactions committed
    since the last WAL checkpoint. :meth:`~LocationService.close` writes everything. On
    :meth:`~LocationService.open` every unexpired row is restored (``flow_id`` is ``None``: flows
    do not survive a restart) and expired rows are deleted. A file that cannot be read raises
    :class:`LocationStoreError` naming the file and the fix; nothing is ever dropped silently.

Memory (target ≤ 1 KiB RSS per binding at 100,000 bindings; ``bench/location_memory.py``)
    :class:`Binding` has ``__slots__``; the index maps an AOR to its only binding (no per-AOR
    container, no stored key), to a list of 2-16 bindings searched by key (keys are computed,
    not stored), or beyond that to a ``key -> Binding`` dict; a binding reuses its AOR's
    existing ``aor`` string; ``user_agent`` and Path values are interned (few
    distinct values); the flow index maps a flow id to the AOR string (or a set of AORs for a
    flow shared by several, e.g. an edge proxy's).

Threading
    Not thread-safe: call every method from one thread (the FE's event loop). The writer thread
    only reads the pending changes (under the lock) and the :class:`Binding` objects in them,
    which is why a stored binding must never be mutated: build a new one
    (``dataclasses.replace``) and :meth:`~LocationService.put` it.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from registrar.errors import LocationStoreError

__all__ = [
    "EVENTS",
    "SCHEMA_VERSION",
    "Binding",
    "Event",
    "Listener",
    "LocationService",
    "LocationStoreError",
    "contact_key",
]

log = logging.getLogger("registrar.location")

Event = Literal[
    "created", "refreshed", "shortened", "expired", "unregistered", "deactivated", "replaced"
]
"""A binding change as told to listeners; the names are RFC 3680 §5.1 contact events, plus
``"replaced"`` (a binding whose key is reused by a different contact URI, RFC 5626 §6)."""

EVENTS: frozenset[str] = frozenset(
    {"created", "refreshed", "shortened", "expired", "unregistered", "deactivated", "replaced"}
)
"""Every valid :data:`Event` name."""

Listener = Callable[[str, str, "Binding"], None]
"""``callback(event, aor, binding)``, see :meth:`LocationService.add_listener`."""

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of the bindings file this code writes (and the newest it reads).

1: rowid table with ``PRIMARY KEY (aor, key)``; 2: ``id INTEGER PRIMARY KEY`` (the binding's
:attr:`Binding.row_id`), no other index. Version 1 is migrated to 2 at open."""

BUSY_TIMEOUT = 2.0
"""Seconds :meth:`LocationService.open` waits for a file locked by another process."""

_TABLE = """
CREATE TABLE {name} (
    id            INTEGER PRIMARY KEY,
    aor           TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    contact       TEXT    NOT NULL,
    expires_at    REAL    NOT NULL,
    call_id       TEXT    NOT NULL,
    cseq          INTEGER NOT NULL,
    q             REAL,
    instance_id   TEXT,
    reg_id        INTEGER,
    source        TEXT,
    path          TEXT,
    user_agent    TEXT,
    backup        INTEGER NOT NULL,
    registered_at REAL    NOT NULL
)
"""
# Keyed by the integer row id alone (the table b-tree itself): no (aor, key) index to keep up,
# so a batch of changes for random AORs dirties only the table pages of their rows (new ids
# append at the end). The store, not SQLite, keeps (aor, key) unique (see put()).
_SCHEMA = _TABLE.format(name="bindings")
_COLUMNS = (
    "aor, key, contact, expires_at, call_id, cseq, q, instance_id, reg_id, source, path,"
    " user_agent, backup, registered_at"
)
# The values of one row. Python's sqlite3 binds an int, float or str directly but passes None
# (like any other type) through its adaptation protocol, two failed attribute look-ups whose
# error messages are formatted and dropped: that was a third of the writer's CPU. So _to_row
# never binds None: an absent text is bound as the integer 0 and an absent number as the text
# '', and NULLIF turns exactly those back into NULL (SQLite never finds a text equal to an
# integer, nor a number equal to a text, so no real value is lost).
_ROW = (
    "(?,?,?,?,?,?,?,NULLIF(?,''),NULLIF(?,0),NULLIF(?,''),NULLIF(?,0),NULLIF(?,0),NULLIF(?,0),?,?)"
)
_DELETE = "DELETE FROM bindings WHERE id = ?"
_ROWS_PER_STATEMENT = 64
"""The writer puts up to this many rows in one statement (64 x 15 parameters stays under the
999-variable limit of old SQLite builds): one statement run instead of one per row costs about
a sixth less CPU per row and releases the GIL once per statement rather than once per row.
Statements exist for 1, 2, 4 ... 64 rows, so a batch of any size uses a handful of cached ones."""
_CHUNKS = tuple(2**i for i in range(_ROWS_PER_STATEMENT.bit_length()))  # 1, 2, 4 ... 64
_INSERTS: dict[int, str] = {
    n: f"INSERT OR REPLACE INTO bindings (id, {_COLUMNS}) VALUES "
    + ",".join([_ROW] * n)
    for n in _CHUNKS
}
_INSERT = _INSERTS[1]
_DELETES: dict[int, str] = {
    n: "DELETE FROM bindings WHERE id IN (" + ",".join(["?"] * n) + ")" for n in _CHUNKS
}
_SELECT = f"SELECT id, {_COLUMNS} FROM bindings WHERE expires_at > ? ORDER BY id"
_MIGRATE_V1 = (
    _TABLE.format(name="bindings_v2"),
    # (ids numbered afresh: some version-1 files are WITHOUT ROWID tables, which have no rowid)
    f"INSERT INTO bindings_v2 ({_COLUMNS}) SELECT {_COLUMNS} FROM bindings ORDER BY expires_at",
    "DROP TABLE bindings",
    "ALTER TABLE bindings_v2 RENAME TO bindings",
)
"""Version 1 -> 2, run inside the open() transaction: the rows keep every column and get
ids 1, 2, ... in expiry order (both version-1 layouts: rowid and WITHOUT ROWID tables)."""

# scheme ":" [userinfo "@"] host rest; userinfo may hold ";" and ":" (RFC 3261 §25.1 user,
# password) but never "@", so the greedy "[^@]*@" stops at the only "@".
_CONTACT_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):((?:[^@]*@)?)(\[[^\]]*\]|[^:;?>]*)")


def contact_key(uri: str) -> str:
    """The identity of a contact URI within its AOR (RFC 3261 §10.3 step 7, §19.1.4).

    Deliberately simple: the scheme and the host are lower-cased (they are case-insensitive);
    everything else (user, password, port, parameters, their order) is kept as written, so two
    contacts are the same binding exactly when they differ only in the case of scheme or host.
    A URI already in that form is returned as the same object (no copy). A string that does not
    look like ``scheme:...`` is returned unchanged.

    Args:
        uri: the Contact URI as registered, without ``<>`` and header parameters.

    Returns:
        The normalised URI (``str``).
    """
    if uri.islower():  # the common case: nothing to lower-case (and no regex)
        return uri
    # Next most common: upper case only in the parameters (";transport=TCP"). The host ends at
    # the first ";" after the userinfo's "@" (a user part may hold ";" but never "@").
    semi = uri.find(";", uri.find("@") + 1)
    if semi > 0 and uri[:semi].islower():
        return uri
    m = _CONTACT_RE.match(uri)
    if m is None:
        return uri
    if uri[: m.end()].islower():  # upper case only after the host (";transport=TCP")
        return uri
    scheme, userinfo, host = m.group(1, 2, 3)
    if scheme == scheme.lower() and host == host.lower():
        return uri
    return f"{scheme.lower()}:{userinfo}{host.lower()}{uri[m.end() :]}"


@dataclass(slots=True, init=False)
class Binding:
    """One contact of an AOR at this registrar (RFC 3261 §10; DESIGN.md §2 "binding").

    Treat a binding that was given to :meth:`LocationService.put` as immutable (the writer
    thread may be reading it); to change one, put a new one (``dataclasses.replace``). The
    binding then belongs to that store, which sets its :attr:`row_id` (and may swap its
    strings for equal shared ones) during put; do not put one object into two stores.

    Attributes:
        aor: normalised AOR, ``"sip:user@domain"`` (DESIGN.md §4).
        contact: the Contact URI as registered, without ``<>`` and header parameters,
            e.g. ``"sip:alice@192.0.2.1:5060;transport=tcp"``.
        expires_at: absolute wall-clock time (``time.time()`` seconds) when it expires.
        call_id: Call-ID of the REGISTER that last set it (RFC 3261 §10.3 step 7).
        cseq: CSeq number of that REGISTER.
        q: the ``q`` Contact parameter (0.0-1.0), ``None`` when absent (ordered as 1.0).
        instance_id: ``+sip.instance`` value without the quotes, e.g. ``"<urn:uuid:...>"``
            (RFC 5626 §4.1).
        reg_id: ``reg-id`` Contact parameter (RFC 5626 §4.2).
        flow_id: process-local id of the TCP/TLS flow it arrived on (RFC 5626 §5.2); not
            persisted: ``None`` after a restart.
        source: ``"transport:ip:port"`` the REGISTER came from, e.g. ``"tcp:192.0.2.1:50412"``.
        path: Path header values (RFC 3327), in order.
        user_agent: the User-Agent header of the REGISTER.
        backup: registered in pool backup mode (DESIGN.md §4).
        registered_at: wall-clock time (seconds) of the first registration of this binding.
        row_id: id of its row in the bindings file (``bindings.id``), set by
            :meth:`LocationService.put` of a persisting store (also for a binding restored by
            :meth:`~LocationService.open`); ``0`` when not stored in a file. Store-owned
            bookkeeping: not compared (``==`` ignores it), not shown in ``repr``, and
            ``dataclasses.replace`` copies it but put assigns it anew. Last in field order
            (``registrar/register.py`` builds bindings positionally).
    """

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    q: float | None = None
    instance_id: str | None = None
    reg_id: int | None = None
    flow_id: int | None = None
    source: str | None = None
    path: tuple[str, ...] = ()
    user_agent: str | None = None
    backup: bool = False
    registered_at: float = 0.0
    row_id: int = field(default=0, compare=False, repr=False)

    def __init__(
        self,
        aor: str,
        contact: str,
        expires_at: float,
        call_id: str,
        cseq: int,
        q: float | None = None,
        instance_id: str | None = None,
        reg_id: int | None = None,
        flow_id: int | None = None,
        source: str | None = None,
        path: tuple[str, ...] = (),
        user_agent: str | None = None,
        backup: bool = False,
        registered_at: float = 0.0,
        row_id: int = 0,
    ) -> None:
        # Written out (init=False): a dataclass-generated __init__ runs interpreted even in a
        # compiled module (docs/native.md); one binding is built per REGISTER contact.
        self.aor = aor
        self.contact = contact
        self.expires_at = expires_at
        self.call_id = call_id
        self.cseq = cseq
        self.q = q
        self.instance_id = instance_id
        self.reg_id = reg_id
        self.flow_id = flow_id
        self.source = source
        self.path = path
        self.user_agent = user_agent
        self.backup = backup
        self.registered_at = registered_at
        self.row_id = row_id

    @property
    def key(self) -> str:
        """Identity of the binding within its AOR (``str``).

        * ``instance_id`` and ``reg_id`` set: ``f"{instance_id};{reg_id}"`` -- a REGISTER with
          the same instance and reg-id replaces only this binding (RFC 5626 §6);
        * ``instance_id`` set, ``reg_id`` ``None``: ``instance_id`` -- the instance replaces its
          own earlier binding even from a new contact URI (RFC 5627 §6);
        * otherwise ``contact_key(contact)``: the contact URI with scheme and host lower-cased
          (RFC 3261 §10.3 step 7; see :func:`contact_key`).
        """
        instance = self.instance_id
        if instance is None:
            return contact_key(self.contact)
        if self.reg_id is None:
            return instance
        return f"{instance};{self.reg_id}"

    def remaining(self, now: float) -> int:
        """Whole seconds left before expiry at wall-clock ``now`` (seconds), rounded down, ``>= 0``.

        This is the ``expires`` value a 200 OK to REGISTER reports (RFC 3261 §10.3 step 8).
        """
        left = self.expires_at - now
        return int(left) if left > 0 else 0


def _order(binding: Binding) -> tuple[float, float, float]:
    """Sort key of :meth:`LocationService.lookup`: q descending (None = 1.0), newest first."""
    q = binding.q
    return (-(1.0 if q is None else q), -binding.registered_at, -binding.expires_at)


def _bucket(expires_at: float) -> int:
    """The expiry second of a binding (``ceil(expires_at)``); ValueError if not finite."""
    try:
        return math.ceil(expires_at)
    except (OverflowError, ValueError):
        raise ValueError(f"expires_at must be a finite number, not {expires_at!r}") from None


_LIST_MAX = 16
"""An AOR with up to this many bindings keeps them in a list searched by key (no stored key
strings, no per-AOR dict: ~150 bytes less per binding); a larger one in a ``key -> Binding``
dict. With ``max_contacts`` of 10 (``registrar/register.py``) the dict form is for trunks."""

_COMPACT_FACTOR = 4
_COMPACT_SLACK = 1024
"""The expiry buckets are rebuilt when they hold more than ``_COMPACT_FACTOR * bindings +
_COMPACT_SLACK`` entries (see ``LocationService._compact``)."""

_Entry = Binding | list[Binding] | dict[str, Binding]
"""Per-AOR index entry: the only binding, a list of 2.._LIST_MAX, or a dict beyond."""


def _values(entry: _Entry) -> Iterable[Binding]:
    """The bindings of a per-AOR index entry."""
    if isinstance(entry, Binding):
        return (entry,)
    if isinstance(entry, list):
        return entry
    return entry.values()


class LocationService:
    """This FE's bindings: in memory, written behind to a SQLite file (DESIGN.md §3, §8).

    Args:
        db_path: the per-FE bindings file, or ``None`` to keep bindings in memory only (tests,
            development). Its directory is created if missing.
        clock: wall-clock source in seconds (``time.time``); expiry compares
            ``Binding.expires_at`` with it. Tests pass a fake clock.
        flush_interval: seconds between the writer thread's writes (> 0); after SIGKILL at most
            this much (plus a write in progress) of the latest changes is lost.

    Raises:
        ValueError: ``flush_interval`` is not positive.

    Call :meth:`open` before use (it restores the file and starts the writer) and :meth:`close`
    at shutdown (it writes everything). It is also a context manager doing both. All methods
    must be called from one thread (see the module docstring).
    """

    def __init__(
        self,
        db_path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 0.2,
    ) -> None:
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 seconds, not {flush_interval!r}")
        self._db_path: Path | None = Path(db_path) if db_path is not None else None
        self._clock = clock
        self._flush_interval = float(flush_interval)
        # index: aor -> its only Binding, a list of 2.._LIST_MAX, or {key: Binding} beyond
        self._aors: dict[str, _Entry] = {}
        self._count = 0
        # flow id -> the AOR (str) with bindings on it, or the set of AORs when several
        self._flows: dict[int, str | set[str]] = {}
        # expiry: second -> AORs with a binding expiring in (second-1, second]; heap of seconds
        self._buckets: dict[int, list[str]] = {}
        self._due: list[int] = []
        self._filed = 0  # entries in _buckets, live and stale
        #: AOR entries examined by :meth:`sweep` so far: its cost, for tests and metrics.
        self.sweep_visits = 0
        self._listeners: tuple[tuple[Listener, Container[str] | None], ...] = ()
        # write-behind state, shared with the writer thread under _lock
        self._persist = False
        self._unopened_file = self._db_path is not None  # put() before open() would be lost
        self._lock = threading.Lock()
        self._written_cond = threading.Condition(self._lock)
        # (aor, key) -> the binding to upsert, or the row id to delete
        self._pending: dict[tuple[str, str], Binding | int] = {}
        # the batch the writer is writing now (same form); put() reuses its deleted row ids
        self._inflight: dict[tuple[str, str], Binding | int] = {}
        self._next_row_id = 1  # row id of the next new (aor, key); set by open()
        self._seq = 0  # changes enqueued so far
        self._written = 0  # _seq value covered by the last successful write
        self._attempts = 0  # write attempts finished
        self._error: BaseException | None = None  # error of the last write attempt, if it failed
        self._wake = threading.Event()
        self._stopping = False
        self._writer_thread: threading.Thread | None = None
        # what the writer thread writes a batch with (tests swap it to slow down or fail writes)
        self._write: Callable[[dict[tuple[str, str], Binding | int]], None] = self._write_batch
        self._conn: sqlite3.Connection | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> int:
        """Restore the bindings file and start the writer thread.

        Loads every row whose ``expires_at`` is later than ``clock()`` (with ``flow_id=None``
        and ``row_id`` = the row's id) and deletes the expired rows. A version 1 file is first
        migrated to the current schema (:data:`SCHEMA_VERSION`) in the same transaction; a
        failure leaves it unchanged. Restored bindings produce no listener events. Without a
        ``db_path`` this only marks the service open.

        Returns:
            The number of bindings restored.

        Raises:
            LocationStoreError: the file is not a readable bindings database (corrupt, not
                SQLite, written by a newer version), is locked by another process, or cannot
                be created. The message names the file and the fix.
            RuntimeError: called twice, or after :meth:`close`.
        """
        if self._state != "new":
            raise RuntimeError(f"LocationService.open() called on a {self._state} service")
        self._state = "open"
        self._unopened_file = False
        path = self._db_path
        if path is None:
            return 0
        conn: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            restored, dropped = self._load(conn, path)
        except LocationStoreError:
            self._state = "closed"
            if conn is not None:
                conn.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            self._state = "closed"
            if conn is not None:
                conn.close()
            raise LocationStoreError(_explain(path, exc)) from exc
        self._conn = conn
        self._persist = True
        self._writer_thread = threading.Thread(
            target=self._run, name=f"location-writer:{path.name}", daemon=False
        )
        self._writer_thread.start()
        log.info(
            "%s: restored %d bindings of %d AORs (%d expired rows deleted)",
            path,
            restored,
            len(self._aors),
            dropped,
        )
        return restored

    def _load(self, conn: sqlite3.Connection, path: Path) -> tuple[int, int]:
        """Set up the schema and load unexpired rows; returns (restored, expired rows deleted)."""
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LocationStoreError(
                f"{path}: cannot switch the bindings file to WAL mode ({mode})"
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now: one FE per file
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LocationStoreError(
                    f"{path}: bindings file has schema version {version}, this registrar "
                    f"understands up to {SCHEMA_VERSION}; run the newer registrar version, or move "
                    f"the file aside (its bindings are then lost until clients re-register)"
                )
            if version == 0:
                tables = {
                    row[0]
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if tables:
                    raise LocationStoreError(
                        f"{path}: not a bindings file (it holds tables {sorted(tables)} but no "
                        f"schema version); point the location store at its own file"
                    )
                conn.execute(_SCHEMA)
            elif version == 1:  # (aor, key) primary key: same rows, keyed by their rowid now
                for statement in _MIGRATE_V1:
                    conn.execute(statement)
                log.info("%s: bindings file migrated from schema version 1 to 2", path)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            now = self._clock()
            dropped = conn.execute("DELETE FROM bindings WHERE expires_at <= ?", (now,)).rowcount
            restored = 0
            stale: list[tuple[int]] = []  # ids of rows replaced by a later row of their key
            rekeyed: list[Binding] = []
            for row in conn.execute(_SELECT, (now,)):
                binding, stored_key = _from_row(row, path)
                key = binding.key
                if key != stored_key:  # key rules changed since it was written
                    rekeyed.append(binding)
                old, aor = self._store(binding, key)
                self._file(_bucket(binding.expires_at), aor)
                if old is None:
                    restored += 1
                else:  # two rows of one key (possible after rekeying): keep the last
                    stale.append((old.row_id,))
            if stale:
                conn.executemany(_DELETE, stale)
            for binding in rekeyed:
                key = binding.key
                if self._find(binding.aor, key) is binding:  # not replaced: store its new key
                    conn.execute(_INSERT, _to_row(key, binding))
            top = conn.execute("SELECT max(id) FROM bindings").fetchone()[0]
            self._next_row_id = 1 if top is None else int(top) + 1
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return restored, dropped

    def flush(self) -> None:
        """Block until every change made so far is committed to the bindings file.

        Returns at once when there is no file or nothing is pending. Blocks the calling thread
        for up to one write (do not call it on the REGISTER path; it is for shutdown, tests and
        hand-overs).

        Raises:
            LocationStoreError: the writer failed to write the changes (disk full, I/O error);
                they stay pending and are retried every ``flush_interval``.
        """
        thread = self._writer_thread
        if thread is None:
            return
        with self._written_cond:
            target = self._seq
            attempts = self._attempts
            if self._written >= target:
                return
            self._wake.set()
            while self._written < target:
                if self._error is not None and self._attempts > attempts:
                    raise LocationStoreError(
                        f"{self._db_path}: cannot write bindings: {_describe(self._error)}; they "
                        f"stay in memory and writing is retried (check free space and permissions)"
                    ) from self._error
                if not thread.is_alive():
                    raise LocationStoreError(f"{self._db_path}: the writer thread has stopped")
                self._written_cond.wait(0.5)

    def close(self) -> None:
        """Write every pending change, stop the writer thread and close the file.

        Idempotent. Afterwards the service still answers from memory but persists nothing.

        Raises:
            LocationStoreError: the final write failed; the changes it held are lost.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        thread = self._writer_thread
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join()
        self._writer_thread = None
        self._persist = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._error is not None and self._pending:
            lost = len(self._pending)
            self._pending = {}
            raise LocationStoreError(
                f"{self._db_path}: {lost} binding changes could not be written at close: "
                f"{_describe(self._error)} (check free space and permissions)"
            ) from self._error

    def __enter__(self) -> LocationService:
        """:meth:`open` and return the service."""
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """:meth:`close`."""
        self.close()

    # ------------------------------------------------------------------ listeners
    def add_listener(self, callback: Listener, aors: Container[str] | None = None) -> None:
        """Call ``callback(event, aor, binding)`` after every change, synchronously; with
        ``aors`` (any container, e.g. a dict the caller keeps up to date) only after changes of
        an AOR ``in aors``, tested before the call, so that changes nobody watches cost no call.

        ``event`` is one of :data:`EVENTS`: the ``reason`` given to :meth:`put`, :meth:`remove`
        or :meth:`remove_aor`, or ``"expired"`` for bindings removed by :meth:`sweep` (or found
        expired by put/remove). ``binding`` is the stored binding for put events and the removed
        one otherwise. The change is already applied when the callback runs. An exception from
        a callback is logged and does not stop the change nor the other callbacks. The ``reg``
        event package (RFC 3680) is the main user.
        """
        self._listeners = (*self._listeners, (callback, aors))

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling ``callback``; no error if it was not added."""
        self._listeners = tuple(entry for entry in self._listeners if entry[0] != callback)

    def _emit(self, event: str, aor: str, binding: Binding) -> None:
        for callback, aors in self._listeners:
            if aors is not None and aor not in aors:
                continue
            try:
                callback(event, aor, binding)
            except Exception:
                log.exception("location listener %r failed on %s %s", callback, event, aor)

    # ------------------------------------------------------------------ reads
    def lookup(self, aor: str) -> list[Binding]:
        """The unexpired bindings of ``aor`` (a new list; ``[]`` if none).

        Ordered by ``q`` descending (``None`` counts as 1.0; RFC 3261 §16.6 leaves the default
        to the implementation), then most recently registered first (``registered_at``, then
        ``expires_at`` descending).
        """
        entry = self._aors.get(aor)
        if entry is None:
            return []
        now = self._clock()
        if isinstance(entry, Binding):
            return [entry] if entry.expires_at > now else []
        found = [b for b in _values(entry) if b.expires_at > now]
        found.sort(key=_order)
        return found

    def get(self, aor: str, key: str) -> Binding | None:
        """The unexpired binding of ``aor`` with :attr:`Binding.key` ``key``, or ``None``."""
        binding = self._find(aor, key)
        if binding is None or binding.expires_at <= self._clock():
            return None
        return binding

    def _find(self, aor: str, key: str) -> Binding | None:
        """The stored binding of ``(aor, key)``, expired or not."""
        entry = self._aors.get(aor)
        if entry is None:
            return None
        if isinstance(entry, Binding):
            return entry if entry.key == key else None
        if isinstance(entry, list):
            return next((b for b in entry if b.key == key), None)
        return entry.get(key)

    def by_flow(self, flow_id: int) -> list[Binding]:
        """The unexpired bindings that arrived on flow ``flow_id`` (RFC 5626 §7), any AOR."""
        entry = self._flows.get(flow_id)
        if entry is None:
            return []
        now = self._clock()
        found: list[Binding] = []
        for aor in (entry,) if isinstance(entry, str) else tuple(entry):
            for binding in self._iter_aor(aor):
                if binding.flow_id == flow_id and binding.expires_at > now:
                    found.append(binding)
        return found

    def count(self, aor: str) -> int:
        """Number of unexpired bindings of ``aor``."""
        entry = self._aors.get(aor)
        if entry is None:
            return 0
        now = self._clock()
        if isinstance(entry, Binding):
            return 1 if entry.expires_at > now else 0
        return sum(1 for b in _values(entry) if b.expires_at > now)

    def aors(self) -> list[str]:
        """The AORs with stored bindings (including bindings expired but not yet swept)."""
        return list(self._aors)

    def __len__(self) -> int:
        """Number of stored bindings (including those expired but not yet swept); O(1)."""
        return self._count

    @property
    def aor_count(self) -> int:
        """Number of AORs with stored bindings (including expired, not yet swept); O(1)."""
        return len(self._aors)

    def _iter_aor(self, aor: str) -> Iterable[Binding]:
        entry = self._aors.get(aor)
        if entry is None:
            return ()
        if isinstance(entry, Binding):
            return (entry,)
        return tuple(_values(entry))

    # ------------------------------------------------------------------ changes
    def put(
        self, binding: Binding, *, reason: Event | None = None, key: str | None = None
    ) -> Binding | None:
        """Add ``binding``, or replace the stored binding with the same ``(aor, key)``.

        Args:
            binding: the new binding; ``binding.aor`` must be normalised (DESIGN.md §4) and
                ``expires_at`` finite. The store keeps this object (do not mutate it later),
                may swap its ``aor``, ``user_agent`` and ``path`` for equal shared strings and,
                when persisting, sets its ``row_id`` (that of the binding it replaces, else a
                new one).
            reason: listener event, normally ``"created"``, ``"refreshed"``, ``"shortened"``
                or ``"replaced"``. ``None`` infers it: ``"created"`` when nothing was replaced,
                ``"replaced"`` when the contact URI changed, ``"shortened"`` when
                ``expires_at`` moved earlier, else ``"refreshed"``.
            key: ``binding.key`` when the caller has computed it already (the registrar
                has); it must be equal to it.

        Returns:
            The unexpired binding that was replaced, or ``None``. A replaced binding that had
            already expired is reported to listeners as ``"expired"`` and not returned.

        Raises:
            ValueError: ``reason`` is not in :data:`EVENTS`, or ``expires_at`` is not finite.
                Nothing is changed then.
            RuntimeError: the service has a ``db_path`` and :meth:`open` was not called yet.

        Never blocks: persistence only records the change for the writer thread.
        """
        if reason is not None and reason not in EVENTS:
            raise ValueError(f"unknown location event {reason!r}; expected one of {sorted(EVENTS)}")
        if self._unopened_file:
            raise RuntimeError("LocationService.put() before open(): the change would not persist")
        second = _bucket(binding.expires_at)
        ua = binding.user_agent
        if ua is not None:
            binding.user_agent = sys.intern(ua)
        if binding.path:
            binding.path = tuple(map(sys.intern, binding.path))
        if key is None:
            key = binding.key
        old, aor = self._store(binding, key)
        if old is None or _bucket(old.expires_at) != second:  # else: already filed there
            self._file(second, aor)
        if self._persist:
            change = (aor, key)
            with self._lock:
                if old is not None:  # a refresh or replacement overwrites the same row
                    binding.row_id = old.row_id
                else:
                    # Re-added while the removal of this key is pending or being written: take
                    # the removed row's id, so the upsert overwrites that row (or re-creates it
                    # after the delete) instead of leaving it behind.
                    gone = self._pending.get(change)
                    if gone is None:
                        gone = self._inflight.get(change)
                    if isinstance(gone, int):
                        binding.row_id = gone
                    else:
                        binding.row_id = self._next_row_id
                        self._next_row_id += 1
                self._pending[change] = binding
                self._seq += 1
        if old is not None and old.expires_at <= self._clock():
            self._emit("expired", aor, old)
            old = None
        if reason is None:
            if old is None:
                reason = "created"
            elif old.contact != binding.contact:
                reason = "replaced"
            elif binding.expires_at < old.expires_at:
                reason = "shortened"
            else:
                reason = "refreshed"
        self._emit(reason, aor, binding)
        return old

    def remove(self, aor: str, key: str, *, reason: Event = "unregistered") -> Binding | None:
        """Remove the binding of ``aor`` with key ``key``.

        Args:
            aor: normalised AOR.
            key: :attr:`Binding.key` of the binding.
            reason: listener event, normally ``"unregistered"`` (Expires 0, RFC 3261 §10.2.2)
                or ``"deactivated"`` (flow failed RFC 5626 §7, re-homed DESIGN.md §4).

        Returns:
            The removed binding if it was unexpired, else ``None`` (an expired one is removed
            too and reported to listeners as ``"expired"``).

        Raises:
            ValueError: ``reason`` is not in :data:`EVENTS`.
        """
        if reason not in EVENTS:
            raise ValueError(f"unknown location event {reason!r}; expected one of {sorted(EVENTS)}")
        old = self._drop(aor, key)
        if old is None:
            return None
        aor = old.aor
        if self._persist:
            with self._lock:
                self._pending[(aor, key)] = old.row_id
                self._seq += 1
        if old.expires_at <= self._clock():
            self._emit("expired", aor, old)
            return None
        self._emit(reason, aor, old)
        return old

    def remove_aor(self, aor: str, *, reason: Event = "unregistered") -> list[Binding]:
        """Remove every binding of ``aor`` (``Contact: *``, RFC 3261 §10.3 step 6; re-homing).

        Args:
            aor: normalised AOR.
            reason: listener event for each unexpired binding (``"unregistered"``,
                ``"deactivated"``, ...); expired ones are reported as ``"expired"``.

        Returns:
            The removed unexpired bindings, in :meth:`lookup` order.

        Raises:
            ValueError: ``reason`` is not in :data:`EVENTS`.
        """
        if reason not in EVENTS:
            raise ValueError(f"unknown location event {reason!r}; expected one of {sorted(EVENTS)}")
        entry = self._aors.pop(aor, None)
        if entry is None:
            return []
        items = [(b.key, b) for b in _values(entry)]
        self._count -= len(items)
        for _, binding in items:
            if binding.flow_id is not None:
                self._flow_discard(binding.flow_id, aor)
        if self._persist:
            with self._lock:
                for key, binding in items:
                    self._pending[(binding.aor, key)] = binding.row_id
                self._seq += 1
        now = self._clock()
        removed = sorted((b for _, b in items if b.expires_at > now), key=_order)
        for _, binding in items:
            if binding.expires_at <= now:
                self._emit("expired", binding.aor, binding)
        for binding in removed:
            self._emit(reason, binding.aor, binding)
        return removed

    def sweep(self, now: float | None = None) -> list[Binding]:
        """Remove and return the bindings expired at ``now`` (``expires_at <= now``).

        Args:
            now: wall-clock seconds; ``clock()`` when ``None``.

        Returns:
            The removed bindings (each also reported to listeners as ``"expired"``).

        Cost: O(expired + AOR entries filed under the seconds now due), never a scan of the
        store. Call it periodically (e.g. every second) from the event loop.
        """
        if now is None:
            now = self._clock()
        expired: list[Binding] = []
        # (self._due is re-read each time: a listener's put() may rebuild it, see _compact)
        while self._due and self._due[0] <= now:
            second = heapq.heappop(self._due)
            bucket = self._buckets.pop(second, ())
            self._filed -= len(bucket)
            self.sweep_visits += len(bucket)
            for aor in bucket:
                self._expire_aor(aor, now, expired)
        # The current second's bucket may hold bindings with expires_at in (second-1, now];
        # expire those and keep the bucket for the rest.
        partial = self._buckets.get(math.ceil(now))
        if partial:
            self.sweep_visits += len(partial)
            for aor in tuple(partial):
                self._expire_aor(aor, now, expired)
        return expired

    def _file(self, second: int, aor: str) -> None:
        """File ``aor`` under expiry ``second`` (see :meth:`sweep`)."""
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = [aor]
            heapq.heappush(self._due, second)
        else:
            bucket.append(aor)
        self._filed += 1
        if self._filed > _COMPACT_FACTOR * self._count + _COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        """Rebuild the expiry buckets from the index, dropping stale entries.

        Stale entries pile up only when clients refresh far more often than their bindings
        expire (normal refreshes at half the expiry leave about one per binding); the rebuild is
        O(bindings) and runs at most once per ``(_COMPACT_FACTOR - 1) * bindings`` puts, so its
        amortised cost is O(1) per put and the buckets stay O(bindings) in size.
        """
        buckets: dict[int, list[str]] = {}
        filed = 0
        for aor, entry in self._aors.items():
            seconds = {_bucket(b.expires_at) for b in _values(entry)}
            for second in seconds:
                buckets.setdefault(second, []).append(aor)
            filed += len(seconds)
        self._buckets = buckets
        self._due = list(buckets)
        heapq.heapify(self._due)
        self._filed = filed

    def _expire_aor(self, aor: str, now: float, out: list[Binding]) -> None:
        entry = self._aors.get(aor)
        if entry is None:
            return
        victims = [(b.key, b) for b in _values(entry) if b.expires_at <= now]
        for key, binding in victims:
            self._drop(aor, key)
            if self._persist:
                with self._lock:
                    self._pending[(binding.aor, key)] = binding.row_id
                    self._seq += 1
            out.append(binding)
            self._emit("expired", binding.aor, binding)

    # ------------------------------------------------------------------ index internals
    def _store(self, binding: Binding, key: str) -> tuple[Binding | None, str]:
        """Put into the index and flow index; returns (replaced binding or None, shared aor)."""
        aor = binding.aor
        entry = self._aors.get(aor)
        old: Binding | None = None
        if entry is None:
            self._aors[aor] = binding
            self._count += 1
        elif isinstance(entry, Binding):
            aor = binding.aor = entry.aor
            if entry.key == key:
                old = entry
                self._aors[aor] = binding
            else:
                self._aors[aor] = [entry, binding]
                self._count += 1
        elif isinstance(entry, list):
            aor = binding.aor = entry[0].aor
            for i, b in enumerate(entry):
                if b.key == key:
                    old = b
                    entry[i] = binding
                    break
            else:
                if len(entry) < _LIST_MAX:
                    entry.append(binding)
                else:  # a large AOR (a trunk, a gateway): index by key
                    bigger = {b.key: b for b in entry}
                    bigger[key] = binding
                    self._aors[aor] = bigger
                self._count += 1
        else:
            old = entry.get(key)
            aor = binding.aor = (old or next(iter(entry.values()))).aor
            entry[key] = binding
            if old is None:
                self._count += 1
        flow_id = binding.flow_id
        if flow_id is not None:
            flows = self._flows
            current = flows.get(flow_id)
            if current is None:
                flows[flow_id] = aor
            elif isinstance(current, str):
                if current != aor:
                    flows[flow_id] = {current, aor}
            else:
                current.add(aor)
        if old is not None and old.flow_id is not None and old.flow_id != flow_id:
            self._flow_discard(old.flow_id, aor)
        return old, aor

    def _drop(self, aor: str, key: str) -> Binding | None:
        """Remove from the index and flow index; returns the removed binding or None."""
        entry = self._aors.get(aor)
        if entry is None:
            return None
        if isinstance(entry, Binding):
            if entry.key != key:
                return None
            del self._aors[aor]
            old = entry
        elif isinstance(entry, list):
            for i, b in enumerate(entry):
                if b.key == key:
                    old = entry.pop(i)
                    break
            else:
                return None
            if len(entry) == 1:  # back to the compact single-binding form
                self._aors[aor] = entry[0]
        else:
            removed = entry.pop(key, None)
            if removed is None:
                return None
            old = removed
            if len(entry) <= _LIST_MAX // 2:  # back to a list (hysteresis: no flapping)
                self._aors[aor] = list(entry.values())
        self._count -= 1
        if old.flow_id is not None:
            self._flow_discard(old.flow_id, aor)
        return old

    def _flow_discard(self, flow_id: int, aor: str) -> None:
        """Forget that ``aor`` uses ``flow_id`` unless another of its bindings still does."""
        for binding in self._iter_aor(aor):
            if binding.flow_id == flow_id:
                return
        flows = self._flows
        current = flows.get(flow_id)
        if current is None:
            return
        if isinstance(current, str):
            if current == aor:
                del flows[flow_id]
            return
        current.discard(aor)
        if len(current) == 1:
            flows[flow_id] = next(iter(current))
        elif not current:
            del flows[flow_id]

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        """Writer thread: every flush_interval (or when woken) write the pending changes."""
        main = threading.main_thread()
        failing = False
        while True:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            # A process that ends without close() still gets its last changes written.
            stopping = self._stopping or not main.is_alive()
            with self._lock:
                batch, self._pending = self._pending, {}
                self._inflight = batch
                seq = self._seq
            error: BaseException | None = None
            if batch:
                try:
                    self._write(batch)
                except Exception as exc:
                    error = exc
                    with self._lock:  # keep them; newer changes of the same binding win
                        for change_key, change in batch.items():
                            self._pending.setdefault(change_key, change)
                        self._inflight = {}
                else:
                    with self._lock:
                        self._inflight = {}
            if error is not None and not failing:
                log.error(
                    "%s: cannot write %d binding changes (retrying every %.3gs): %s",
                    self._db_path,
                    len(batch),
                    self._flush_interval,
                    _describe(error),
                )
            elif error is None and failing:
                log.warning("%s: binding writes resumed", self._db_path)
            with self._written_cond:
                self._attempts += 1
                if error is None:
                    self._written = seq
                    self._error = None
                else:
                    self._error = error
                self._written_cond.notify_all()
            failing = error is not None
            if stopping:
                return

    def _write_batch(self, batch: dict[tuple[str, str], Binding | int]) -> None:
        """Write one batch of coalesced changes in one transaction (writer thread only).

        An upsert is ``INSERT OR REPLACE`` by ``binding.row_id``, a delete (an ``int``) is
        ``DELETE ... WHERE id = ?``. Deletes go first: a row id is only ever reused for the
        same ``(aor, key)``, so one batch never holds both a delete and an upsert of one id.
        """
        conn = self._conn
        assert conn is not None
        rows: list[tuple[object, ...]] = []
        deletes: list[tuple[object, ...]] = []
        for (_, key), change in batch.items():
            if isinstance(change, int):
                deletes.append((change,))
            else:
                rows.append(_to_row(key, change))
        conn.execute("BEGIN")
        try:
            if deletes:
                _execute_chunked(conn, _DELETES, deletes)
            if rows:
                _execute_chunked(conn, _INSERTS, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _execute_chunked(
    conn: sqlite3.Connection, statements: dict[int, str], rows: list[tuple[object, ...]]
) -> None:
    """Run ``statements[n]`` (a statement for ``n`` rows, see :data:`_ROWS_PER_STATEMENT`) over
    ``rows``, largest chunks first, each with the parameters of its rows in order."""
    done = 0
    total = len(rows)
    while done < total:
        n = _ROWS_PER_STATEMENT
        while n > total - done:
            n //= 2
        conn.execute(statements[n], [value for row in rows[done : done + n] for value in row])
        done += n


def _to_row(key: str, b: Binding) -> tuple[object, ...]:
    """The ``_INSERT`` parameters of ``b`` stored under ``key``: no ``None`` (see :data:`_ROW`:
    ``0`` for an absent text, ``""`` for an absent number)."""
    q = b.q
    instance_id = b.instance_id
    reg_id = b.reg_id
    source = b.source
    user_agent = b.user_agent
    return (
        b.row_id,
        b.aor,
        key,
        b.contact,
        b.expires_at,
        b.call_id,
        b.cseq,
        "" if q is None else q,
        0 if instance_id is None else instance_id,
        "" if reg_id is None else reg_id,
        0 if source is None else source,
        json.dumps(list(b.path)) if b.path else 0,
        0 if user_agent is None else user_agent,
        1 if b.backup else 0,
        b.registered_at,
    )


def _from_row(row: tuple[Any, ...], path: Path) -> tuple[Binding, str]:
    """A Binding from a ``_SELECT`` row (``row_id`` set), and the key it was stored under."""
    (
        row_id,
        aor,
        key,
        contact,
        expires_at,
        call_id,
        cseq,
        q,
        instance_id,
        reg_id,
        source,
        path_json,
        user_agent,
        backup,
        registered_at,
    ) = row
    try:
        hops: tuple[str, ...] = ()
        if path_json:
            hops = tuple(sys.intern(str(h)) for h in json.loads(str(path_json)))
        binding = Binding(
            aor=str(aor),
            contact=str(contact),
            expires_at=float(expires_at),
            call_id=str(call_id),
            cseq=int(cseq),
            q=None if q is None else float(q),
            instance_id=None if instance_id is None else str(instance_id),
            reg_id=None if reg_id is None else int(reg_id),
            source=None if source is None else str(source),
            path=hops,
            user_agent=None if user_agent is None else sys.intern(str(user_agent)),
            backup=bool(backup),
            registered_at=float(registered_at),
            row_id=int(row_id),
        )
    except (TypeError, ValueError) as exc:
        raise LocationStoreError(
            f"{path}: malformed binding row for {aor!r} {key!r} ({exc}); move the file aside "
            f"(e.g. mv {path} {path}.bad) and restart -- clients re-register"
        ) from exc
    return binding, str(key)


def _describe(exc: BaseException) -> str:
    """``"Type: message"`` of an exception, for log lines and error messages."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _explain(path: Path, exc: BaseException) -> str:
    """An operator-facing message for a failure to open or read the bindings file."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return (
            f"{path}: bindings file is in use by another process ({text}); each FE needs its "
            f"own file -- stop the other process or give this FE a file of its own"
        )
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return (
            f"{path}: bindings file is unreadable ({text}); move it aside "
            f"(e.g. mv {path} {path}.corrupt) and restart -- the FE then starts with no bindings "
            f"and clients re-register"
        )
    return f"{path}: cannot open the bindings file ({text}); check the path and its permissions"
