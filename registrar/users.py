"""The user directory: AORs, digest HA1s, home pools and policy tags (DESIGN.md §8).

Two views of one SQLite database (the *management store* of users):

* :class:`UserStore` — the writable database, used by the ``registrar users`` CLI and by tools.
  Every change bumps an integer ``revision`` in the ``meta`` table, in the same transaction.
* :class:`UserDirectory` — what a front end (FE) uses: the whole table loaded into memory,
  read-only. :meth:`UserDirectory.get` and :meth:`UserDirectory.ha1` are dictionary lookups, so
  the REGISTER path never waits on disk. :meth:`UserDirectory.watch` polls the ``revision``
  once a second from a worker thread and reloads when it changes.

Plain passwords are never stored: each user has ``HA1 = H(username ":" realm ":" password)``
for MD5 and SHA-256 (RFC 2617 §3.2.2.2, RFC 7616 §3.4.2, RFC 8760), where *username* is the
AOR's user part and *realm* its domain. A client must therefore authenticate with the
lower-cased user part of its AOR as the digest username and the AOR's domain as the realm.

Schema (``PRAGMA user_version = 1``, WAL journal)::

    users(aor TEXT PRIMARY KEY,        -- normalised AOR, see normalize_aor()
          username TEXT NOT NULL,      -- digest username (the AOR's user part)
          realm TEXT NOT NULL,         -- digest realm (the AOR's domain)
          ha1_md5 TEXT NOT NULL,       -- 32 lower-case hex digits
          ha1_sha256 TEXT NOT NULL,    -- 64 lower-case hex digits
          home_pool TEXT NULL,         -- FQDN of the user's home pool, NULL = this pool
          policy TEXT NULL,            -- presence policy tag (DESIGN.md §7), NULL = default
          updated_at REAL NOT NULL)    -- time.time() of the last change, seconds since epoch
    meta(key TEXT PRIMARY KEY, value)  -- 'revision' (int, bumped by every change),
                                       -- 'db_id' (random hex, identifies this database file)

The ``registrar users`` command line is :func:`add_cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import csv
import functools
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sipstack.uri import SipUri, parse_uri, unescape

from .cliutil import add_group

__all__ = [
    "DEFAULT_USERS_DB",
    "SCHEMA_VERSION",
    "CsvImportError",
    "UserDirectory",
    "UserRecord",
    "UserStore",
    "UserStoreError",
    "add_cli",
    "normalize_aor",
]

log = logging.getLogger("registrar.users")

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the schema this module reads and writes."""

DEFAULT_USERS_DB = Path("state/users.db")
"""Default database path of the CLI (relative to the working directory)."""

PROGRESS_EVERY = 10_000
""":meth:`UserStore.import_csv` reports progress after every this many rows written."""

_MAX_REPORTED_ERRORS = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    aor TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL,
    realm TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    home_pool TEXT,
    policy TEXT,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY NOT NULL,
    value
);
"""

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# The common case, already a plain sip:user@host (no escapes, port or parameters): same result
# as the full path below, without building a SipUri.
_PLAIN_AOR_RE = re.compile(
    r"[Ss][Ii][Pp][Ss]?:([A-Za-z0-9\-_.!~*'()&=+$,]+)@([A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?)\Z"
)
_LABEL = r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?"
_FQDN_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")
_BAD_USER_CHARS_RE = re.compile(r"[\x00-\x20\x7f@\ud800-\udfff]")
_BAD_TAG_CHARS_RE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


class UserStoreError(RuntimeError):
    """The user database cannot be opened, read or written: not a SQLite database, a schema
    newer than :data:`SCHEMA_VERSION`, locked by another writer for too long, missing when it
    must exist, or an I/O error. The message names the file."""


class CsvImportError(ValueError):
    """A CSV file given to :meth:`UserStore.import_csv` has bad rows; nothing was imported.

    Attributes:
        source: the file's display name (its path as given, or ``<stdin>``).
        errors: ``(line number, message)`` for every bad row, in file order (line numbers are
            1-based physical lines; the header is line 1).

    ``str(exc)`` is one line per error, ``"users.csv line 17: bad AOR 'foo': ..."``, at most
    20 of them followed by ``"... and N more errors"``.
    """

    def __init__(self, source: str, errors: builtins.list[tuple[int, str]]) -> None:
        self.source = source
        self.errors = errors
        lines = [f"{source} line {n}: {msg}" for n, msg in errors[:_MAX_REPORTED_ERRORS]]
        if len(errors) > _MAX_REPORTED_ERRORS:
            lines.append(f"... and {len(errors) - _MAX_REPORTED_ERRORS} more errors")
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# AORs, HA1s and attribute validation
# ---------------------------------------------------------------------------------------------


def normalize_aor(text: str) -> str:
    """Return the normalised AOR of ``text``: ``sip:`` + user + ``@`` + host, lower case.

    Accepted forms: ``sip:User@Contoso.COM``, ``sips:...`` (the scheme becomes ``sip:``),
    ``user@domain`` without a scheme, and a name-addr ``<sip:...>`` with an optional display
    name before the ``<``. Surrounding whitespace is ignored. The port, uri-parameters and
    ``?headers`` are dropped; ``%HH`` escapes in the user part are decoded (``%61lice`` is
    ``alice``), so the result equals :meth:`sipstack.uri.SipUri.aor` of a ``sip:`` URI.

    Args:
        text: the AOR as typed by an operator or found in a header.

    Returns:
        The normalised AOR, e.g. ``"sip:user@contoso.com"``.

    Raises:
        ValueError: ``"bad AOR 'foo': <reason>"`` when ``text`` is not a SIP URI with a user
            part: empty, another scheme (``tel:``), no ``user@``, a password in the URI, a
            bad host/port/parameter, an unbalanced ``<``, or a user part that holds
            whitespace, control characters, ``@`` or invalid UTF-8 once unescaped.

    Source: DESIGN.md §4 "Normalised AOR"; RFC 3261 §10.3 step 5, §19.1.
    """
    if not isinstance(text, str):
        raise ValueError(f"bad AOR {text!r}: not a string")
    plain = _PLAIN_AOR_RE.match(text)
    if plain is not None:
        return f"sip:{plain.group(1).lower()}@{plain.group(2).lower()}"
    s = text.strip()

    def bad(reason: str) -> ValueError:
        shown = text if len(text) <= 80 else text[:77] + "..."
        return ValueError(f"bad AOR {shown!r}: {reason}")

    if not s:
        raise bad("empty (expected sip:user@domain)")
    if "<" in s or ">" in s:
        lt = s.find("<")
        if lt < 0 or not s.endswith(">") or s.count("<") != 1 or s.count(">") != 1:
            raise bad("unbalanced '<...>' (expected <sip:user@domain>)")
        s = s[lt + 1 : -1].strip()
    m = _SCHEME_RE.match(s)
    if m is not None and "@" not in m.group(1):
        scheme = m.group(1).lower()
        if scheme not in ("sip", "sips"):
            raise bad(f"unsupported scheme {scheme!r} (expected sip: or sips:)")
    else:
        s = "sip:" + s
    try:
        uri = parse_uri(s)
    except ValueError as exc:  # SipParseError
        raise bad(str(exc)) from None
    if not isinstance(uri, SipUri):  # pragma: no cover - the scheme was checked above
        raise bad("not a SIP URI")
    if uri.user is None:
        raise bad("no user part (expected sip:user@domain)")
    if uri.password is not None:
        raise bad("a password in the URI is not allowed")
    user = unescape(uri.user).lower()
    found = _BAD_USER_CHARS_RE.search(user)
    if found is not None:
        ch = found.group()
        if "\ud800" <= ch <= "\udfff":
            raise bad("user part is not valid UTF-8 once unescaped")
        raise bad(f"user part holds {ch!r} once unescaped")
    return f"sip:{user}@{uri.host.lower()}"


def _split_aor(aor: str) -> tuple[str, str]:
    """``(username, realm)`` of a normalised AOR."""
    user, _, host = aor[4:].rpartition("@")
    return user, host


def _encode(s: str) -> bytes:
    """UTF-8 bytes, as :func:`sipstack.auth.compute_ha1` encodes (lone surrogates survive)."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _ha1s(username: str, realm: str, password: str) -> tuple[str, str]:
    """``(MD5 HA1, SHA-256 HA1)`` of ``username:realm:password``, lower-case hex."""
    data = _encode(f"{username}:{realm}:{password}")
    return hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()


def _check_password(password: object) -> str:
    if not isinstance(password, str) or password == "":
        raise ValueError("empty password")
    return password


def _check_home_pool(home_pool: str | None) -> str | None:
    """``None``/blank -> ``None``; else the lower-cased FQDN (trailing dot dropped)."""
    if home_pool is None:
        return None
    value = home_pool.strip().lower().rstrip(".")
    if not value:
        return None
    if not _FQDN_RE.match(value):
        raise ValueError(f"bad home pool {home_pool!r}: expected an FQDN such as pool.contoso.com")
    return value


def _check_policy(policy: str | None) -> str | None:
    """``None``/blank -> ``None``; else the tag with surrounding whitespace removed."""
    if policy is None:
        return None
    value = policy.strip()
    if not value:
        return None
    if _BAD_TAG_CHARS_RE.search(value) or len(value) > 256:
        raise ValueError(f"bad policy tag {policy!r}: control characters or longer than 256")
    return value


def _algorithm_base(algorithm: str) -> str:
    name = algorithm.upper()
    if name.endswith("-SESS"):
        name = name[:-5]
    if name not in ("MD5", "SHA-256"):
        raise ValueError(f"unsupported digest algorithm {algorithm!r} (expected MD5 or SHA-256)")
    return name


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user of the directory.

    Attributes:
        aor: the normalised AOR (:func:`normalize_aor`), ``"sip:alice@contoso.com"``.
        username: the digest username: the AOR's user part (``"alice"``).
        realm: the digest realm: the AOR's domain (``"contoso.com"``).
        ha1_md5: ``MD5(username:realm:password)``, 32 lower-case hex digits (not in ``repr``).
        ha1_sha256: ``SHA-256(username:realm:password)``, 64 lower-case hex digits (not in
            ``repr``).
        home_pool: FQDN of the pool the user is homed on, or ``None`` (this pool); an FE of
            another pool redirects the user there (DESIGN.md §4 step 1).
        policy: presence policy tag (DESIGN.md §7), or ``None`` for the site/global policy.
    """

    aor: str
    username: str
    realm: str
    ha1_md5: str = field(repr=False)
    ha1_sha256: str = field(repr=False)
    home_pool: str | None = None
    policy: str | None = None

    def ha1(self, algorithm: str) -> str:
        """The HA1 for ``algorithm`` (``"MD5"``/``"SHA-256"``, any case, ``-sess`` allowed).

        Raises:
            ValueError: another algorithm.
        """
        return self.ha1_md5 if _algorithm_base(algorithm) == "MD5" else self.ha1_sha256


_COLUMNS = "aor, username, realm, ha1_md5, ha1_sha256, home_pool, policy"


# ---------------------------------------------------------------------------------------------
# The writable store
# ---------------------------------------------------------------------------------------------


class UserStore:
    """The writable user database (SQLite, WAL journal). Not thread-safe: one per thread.

    Every method that changes users runs in one ``BEGIN IMMEDIATE`` transaction that also bumps
    the ``revision``; a second writer waits up to 10 s for the lock, then
    :class:`UserStoreError`. Usable as a context manager (closes on exit).

    Args:
        path: database file; created with its parent directories when missing (unless
            ``create=False``).
        create: when ``False`` a missing file raises :class:`UserStoreError` instead.

    Raises:
        UserStoreError: the file is not a SQLite database, has a newer schema, is missing
            (``create=False``) or cannot be opened.
    """

    def __init__(self, path: Path | str, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise UserStoreError(f"{self.path}: no such user database")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserStoreError(f"{self.path}: cannot create directory: {exc}") from None
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise UserStoreError(f"{self.path}: cannot open: {exc}") from None
        try:
            self._init_schema()
        except sqlite3.Error as exc:
            self._db.close()
            raise UserStoreError(f"{self.path}: {exc}") from None
        except UserStoreError:
            self._db.close()
            raise

    def _init_schema(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserStoreError(
                f"{self.path}: schema version {version} is newer than this program's "
                f"({SCHEMA_VERSION}); upgrade the registrar"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if version == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            # not executescript(): it would COMMIT the open transaction
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('revision', 0)")
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('db_id', ?)", (uuid.uuid4().hex,)
            )
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> UserStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection. Idempotent."""
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None  # type: ignore[assignment]

    # -- helpers ----------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            raise UserStoreError(f"{self.path}: the store is closed")
        return db

    def _write(self, fn: Callable[[sqlite3.Connection], bool]) -> bool:
        """Run ``fn`` in one write transaction; bump the revision when it returns ``True``."""
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise UserStoreError(f"{self.path}: {exc}") from None
        try:
            changed = fn(db)
            if changed:
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
            db.execute("COMMIT")
        except BaseException as exc:
            db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise UserStoreError(f"{self.path}: {exc}") from None
            raise
        return changed

    def _update(self, key: str, **columns: str | None) -> bool:
        """Set ``columns`` (column name -> value) and ``updated_at`` of the user with the
        normalised AOR ``key`` in one write transaction.

        Returns:
            ``False`` when there is no such user (nothing changes, the revision stays).

        Raises:
            UserStoreError: database error.
        """
        assignments = "".join(f"{name} = ?, " for name in columns)
        sql = f"UPDATE users SET {assignments}updated_at = ? WHERE aor = ?"
        return self._write(
            lambda db: db.execute(sql, (*columns.values(), time.time(), key)).rowcount > 0
        )

    # -- queries ----------------------------------------------------------------------------------

    def revision(self) -> int:
        """The database revision: an integer bumped by every committed change (0 when new)."""
        try:
            row = self._conn().execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        except sqlite3.Error as exc:
            raise UserStoreError(f"{self.path}: {exc}") from None
        return int(row[0]) if row else 0

    def get(self, aor: str) -> UserRecord | None:
        """The user with AOR ``aor`` (any form :func:`normalize_aor` accepts), or ``None``.

        Raises:
            ValueError: ``aor`` is not a valid AOR.
        """
        key = normalize_aor(aor)
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM users WHERE aor = ?", (key,)).fetchone()
        return UserRecord(*row) if row else None

    def list(self, pattern: str | None = None) -> builtins.list[UserRecord]:
        """Users ordered by AOR, optionally only those whose AOR matches ``pattern``.

        Args:
            pattern: a glob (``*``, ``?``, ``[...]``) matched case-insensitively against the
                normalised AOR; ``sip:`` is prepended unless it starts with ``sip:`` or a
                wildcard (``alice@*`` works, as does ``*@contoso.com``).
        """
        if pattern is None:
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM users ORDER BY aor").fetchall()
        else:
            pat = pattern.strip().lower()
            if not pat.startswith(("sip:", "*", "?", "[")):
                pat = "sip:" + pat
            rows = (
                self._conn()
                .execute(f"SELECT {_COLUMNS} FROM users WHERE aor GLOB ? ORDER BY aor", (pat,))
                .fetchall()
            )
        return [UserRecord(*row) for row in rows]

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM users").fetchone()[0])

    # -- changes ----------------------------------------------------------------------------------

    def add(
        self,
        aor: str,
        password: str,
        home_pool: str | None = None,
        policy: str | None = None,
        *,
        replace: bool = False,
    ) -> UserRecord:
        """Add a user (HA1s for MD5 and SHA-256 are stored, never the password).

        Args:
            aor: the AOR in any form :func:`normalize_aor` accepts.
            password: the digest password (non-empty).
            home_pool: FQDN of the user's home pool, or ``None``.
            policy: presence policy tag, or ``None``.
            replace: overwrite an existing user (all attributes, including home pool and
                policy, become the given ones).

        Returns:
            The stored record.

        Raises:
            ValueError: bad AOR, empty password, bad home pool or policy, or the user exists
                and ``replace`` is false (message ``"sip:x@y: already exists"``).
            UserStoreError: database error.
        """
        key = normalize_aor(aor)
        _check_password(password)
        pool = _check_home_pool(home_pool)
        tag = _check_policy(policy)
        username, realm = _split_aor(key)
        md5, sha256 = _ha1s(username, realm, password)
        verb = "INSERT OR REPLACE" if replace else "INSERT"

        def do(db: sqlite3.Connection) -> bool:
            if not replace and db.execute("SELECT 1 FROM users WHERE aor = ?", (key,)).fetchone():
                raise ValueError(f"{key}: already exists")
            db.execute(
                f"{verb} INTO users({_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, username, realm, md5, sha256, pool, tag, time.time()),
            )
            return True

        self._write(do)
        return UserRecord(key, username, realm, md5, sha256, pool, tag)

    def remove(self, aor: str) -> bool:
        """Remove a user. Returns ``False`` when there was no such user.

        Raises:
            ValueError: bad AOR. UserStoreError: database error.
        """
        key = normalize_aor(aor)
        return self._write(
            lambda db: db.execute("DELETE FROM users WHERE aor = ?", (key,)).rowcount > 0
        )

    def set_password(self, aor: str, password: str) -> bool:
        """Replace a user's HA1s. Returns ``False`` when there is no such user.

        Raises:
            ValueError: bad AOR or empty password. UserStoreError: database error.
        """
        key = normalize_aor(aor)
        _check_password(password)
        md5, sha256 = _ha1s(*_split_aor(key), password)
        return self._update(key, ha1_md5=md5, ha1_sha256=sha256)

    def set_home_pool(self, aor: str, home_pool: str | None) -> bool:
        """Set (an FQDN) or clear (``None``) a user's home pool. ``False``: no such user.

        Raises:
            ValueError: bad AOR or home pool. UserStoreError: database error.
        """
        key = normalize_aor(aor)
        return self._update(key, home_pool=_check_home_pool(home_pool))

    def set_policy(self, aor: str, policy: str | None) -> bool:
        """Set or clear (``None``) a user's presence policy tag. ``False``: no such user.

        Raises:
            ValueError: bad AOR or tag. UserStoreError: database error.
        """
        key = normalize_aor(aor)
        return self._update(key, policy=_check_policy(policy))

    def import_csv(
        self,
        path_or_file: Path | str | TextIO,
        progress: Callable[[int], None] | None = None,
        *,
        replace: bool = False,
    ) -> int:
        """Import users from CSV, all or nothing, in one transaction.

        The first row is the header: ``aor,password`` then optionally ``home_pool`` and
        ``policy`` (column names case-insensitive, in any order; no other columns). Empty
        ``home_pool``/``policy`` cells mean ``None``; blank lines are skipped. A file is read as
        UTF-8 (a leading BOM is ignored).

        Every row is validated before anything is written: bad AOR, empty password, bad home
        pool or policy, wrong number of cells, an AOR repeated in the file, or (unless
        ``replace``) an AOR already in the database. Any error raises :class:`CsvImportError`
        listing the bad rows by line number, and the database is unchanged.

        Rows are hashed with :mod:`hashlib` and written with ``executemany`` in chunks of
        :data:`PROGRESS_EVERY` rows inside one transaction (100,000 rows take 1 to 2 s).

        Args:
            path_or_file: a path, or an open text file (opened with ``newline=""``).
            progress: called with the number of rows written so far after every
                :data:`PROGRESS_EVERY` rows, and once at the end with the total.
            replace: overwrite users that already exist instead of rejecting their rows.

        Returns:
            The number of users imported (added or replaced).

        Raises:
            CsvImportError: bad header or rows (nothing imported).
            OSError: the file cannot be read. UnicodeDecodeError: the file is not UTF-8.
            UserStoreError: database error.
        """
        if isinstance(path_or_file, (str, Path)):
            source = str(path_or_file)
            with open(path_or_file, encoding="utf-8-sig", newline="") as fh:
                rows = self._parse_csv(fh, source, replace)
        else:
            source = getattr(path_or_file, "name", None) or "<stream>"
            if not isinstance(source, str):
                source = "<stream>"
            rows = self._parse_csv(path_or_file, source, replace)
        if not rows:
            if progress is not None:
                progress(0)
            return 0
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        sql = f"{verb} INTO users({_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

        def do(db: sqlite3.Connection) -> bool:
            for start in range(0, len(rows), PROGRESS_EVERY):
                db.executemany(sql, rows[start : start + PROGRESS_EVERY])
                if progress is not None:
                    progress(min(start + PROGRESS_EVERY, len(rows)))
            return True

        self._write(do)
        return len(rows)

    def _parse_csv(
        self, fh: Iterable[str], source: str, replace: bool
    ) -> builtins.list[tuple[Any, ...]]:
        """Validate and hash every row; raise :class:`CsvImportError` on any bad row."""
        reader = csv.reader(fh, strict=True)
        errors: builtins.list[tuple[int, str]] = []
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise CsvImportError(source, [(1, f"bad CSV: {exc}")]) from None
        if header is None:
            raise CsvImportError(source, [(1, "empty file; expected the header aor,password")])
        names = [h.strip().lower() for h in header]
        known = ("aor", "password", "home_pool", "policy")
        unknown = [n for n in names if n not in known]
        dupes = {n for n in names if names.count(n) > 1}
        if unknown or dupes or "aor" not in names or "password" not in names:
            why = (
                f"unknown column {unknown[0]!r}"
                if unknown
                else f"repeated column {sorted(dupes)[0]!r}"
                if dupes
                else "missing column 'aor' or 'password'"
            )
            raise CsvImportError(
                source,
                [
                    (
                        1,
                        f"bad header {','.join(header)!r}: {why}; expected "
                        "aor,password[,home_pool,policy]",
                    )
                ],
            )
        width = len(names)
        i_aor, i_pw = names.index("aor"), names.index("password")
        i_pool = names.index("home_pool") if "home_pool" in names else None
        i_tag = names.index("policy") if "policy" in names else None

        existing: set[str] = set()
        if not replace:
            existing = {r[0] for r in self._conn().execute("SELECT aor FROM users")}
        seen: dict[str, int] = {}
        out: builtins.list[tuple[Any, ...]] = []
        now = time.time()
        md5, sha256 = hashlib.md5, hashlib.sha256
        line = reader.line_num
        while True:
            start = line + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                errors.append((start, f"bad CSV: {exc}"))
                break
            line = reader.line_num
            if not row:
                continue
            if len(row) != width:
                errors.append((start, f"expected {width} fields, got {len(row)}"))
                continue
            try:
                key = normalize_aor(row[i_aor])
                password = _check_password(row[i_pw])
                pool = _check_home_pool(row[i_pool]) if i_pool is not None else None
                tag = _check_policy(row[i_tag]) if i_tag is not None else None
            except ValueError as exc:
                errors.append((start, str(exc)))
                continue
            first = seen.get(key)
            if first is not None:
                errors.append((start, f"{key}: repeats line {first}"))
                continue
            seen[key] = start
            if key in existing:
                errors.append((start, f"{key}: already exists (use --replace to overwrite)"))
                continue
            if errors:
                continue  # nothing will be written: validate only
            username, _, realm = key[4:].rpartition("@")
            data = _encode(f"{username}:{realm}:{password}")
            out.append(
                (
                    key,
                    username,
                    realm,
                    md5(data).hexdigest(),
                    sha256(data).hexdigest(),
                    pool,
                    tag,
                    now,
                )
            )
        if errors:
            raise CsvImportError(source, errors)
        return out


# ---------------------------------------------------------------------------------------------
# The in-memory directory of an FE
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """One loaded generation of the directory; swapped in with a single assignment."""

    by_aor: dict[str, UserRecord]
    by_cred: dict[tuple[str, str], UserRecord]
    key: tuple[Any, ...] | None  # (st_dev, st_ino, db_id, revision), None = no file loaded


_EMPTY = _Snapshot({}, {}, None)


class UserDirectory:
    """The read-only, in-memory user directory an FE authenticates against.

    Lookups (:meth:`get`, :meth:`ha1`, ``len()``) read a snapshot held in memory and never
    touch the disk; they are safe to call from the event loop while :meth:`refresh_if_changed`
    runs in a worker thread (the new snapshot replaces the old one in one assignment).

    A missing database file gives an empty directory and a warning; when the file appears
    later (or is replaced by another file), the next :meth:`refresh_if_changed` loads it. When
    a loaded file disappears, the last loaded users are kept (with a warning) so a mistaken
    ``rm`` does not lock every user out.

    Args:
        path: the database file written by :class:`UserStore`.

    Attributes:
        snapshot: the loaded generation, read-only: ``by_aor`` (normalised AOR ->
            :class:`UserRecord`), ``by_cred`` ((digest username, realm) -> record) and
            ``key``. A reload replaces it whole, never mutates it. The REGISTER path reads
            ``snapshot.by_aor`` directly (a dictionary look-up, no interpreted call).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.snapshot = _EMPTY
        self._lock = threading.Lock()
        self._missing_warned = False
        self._error_warned: str | None = None

    # -- lookups (event loop, no I/O) ---------------------------------------------------------

    def get(self, aor: str) -> UserRecord | None:
        """The user with AOR ``aor``, or ``None`` (also for text that is not a valid AOR).

        A normalised AOR is one dictionary lookup; any other form is normalised first
        (:func:`normalize_aor`).
        """
        by_aor = self.snapshot.by_aor
        rec = by_aor.get(aor)
        if rec is not None:
            return rec
        try:
            key = normalize_aor(aor)
        except ValueError:
            return None
        return by_aor.get(key)

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        """The HA1 (lower-case hex) of the user whose digest username and realm are these.

        The lookup is exact (digest usernames are case-sensitive, and the stored HA1 was
        computed with the lower-cased user part), except that the realm is lower-cased.

        Args:
            username: the ``username`` of the credentials. realm: the ``realm``.
            algorithm: ``"MD5"`` or ``"SHA-256"`` (any case; a ``-sess`` suffix is ignored,
                the base HA1 being the same).

        Returns:
            The HA1, or ``None`` for an unknown user.

        Raises:
            ValueError: unsupported algorithm.
        """
        base = _algorithm_base(algorithm)
        by_cred = self.snapshot.by_cred
        rec = by_cred.get((username, realm))
        if rec is None:
            rec = by_cred.get((username, realm.lower()))
            if rec is None:
                return None
        return rec.ha1_md5 if base == "MD5" else rec.ha1_sha256

    def __len__(self) -> int:
        return len(self.snapshot.by_aor)

    def __contains__(self, aor: object) -> bool:
        return isinstance(aor, str) and self.get(aor) is not None

    @property
    def revision(self) -> int | None:
        """The revision of the loaded data, ``None`` when nothing was loaded."""
        key = self.snapshot.key
        return None if key is None else int(key[3])

    # -- loading (worker thread) --------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        return sqlite3.connect(
            uri, uri=True, isolation_level=None, timeout=5.0, check_same_thread=False
        )

    def _stat_key(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    @staticmethod
    def _read_meta(db: sqlite3.Connection, path: Path) -> tuple[str, int] | None:
        """``(db_id, revision)``, or ``None`` for a file with no schema yet (being created).

        Raises:
            UserStoreError: newer schema. sqlite3.Error: unreadable file.
        """
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            return None
        if version != SCHEMA_VERSION:
            raise UserStoreError(
                f"{path}: schema version {version} is not {SCHEMA_VERSION}; upgrade the registrar"
            )
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('db_id', 'revision')"))
        return str(meta.get("db_id", "")), int(meta.get("revision", 0))

    def _current_key(self) -> tuple[Any, ...] | None:
        """The file's identity and revision, read cheaply; ``None`` when missing/empty."""
        st = self._stat_key()
        if st is None:
            return None
        db = self._connect()
        try:
            meta = self._read_meta(db, self.path)
        finally:
            db.close()
        return None if meta is None else (*st, *meta)

    def load(self) -> int:
        """(Re)load every user from the database into memory; returns the number of users.

        A missing file (or one whose schema is not written yet) loads as empty, with a
        warning. Thread-safe; the lookups keep answering from the previous snapshot until
        the new one is complete.

        Raises:
            UserStoreError: the file is not a SQLite database, is unreadable, or has another
                schema version.
        """
        with self._lock:
            return self._load_locked()

    def _load_locked(self) -> int:
        started = time.perf_counter()
        st = self._stat_key()
        if st is None:
            if not self._missing_warned:
                log.warning("user database %s does not exist: no users are known", self.path)
                self._missing_warned = True
            self.snapshot = _EMPTY
            return 0
        self._missing_warned = False
        try:
            db = self._connect()
            try:
                db.execute("BEGIN")  # one snapshot: the revision matches the rows
                meta = self._read_meta(db, self.path)
                rows = [] if meta is None else db.execute(f"SELECT {_COLUMNS} FROM users")
                by_aor: dict[str, UserRecord] = {}
                by_cred: dict[tuple[str, str], UserRecord] = {}
                for row in rows:
                    rec = UserRecord(*row)
                    by_aor[rec.aor] = rec
                    by_cred[(rec.username, rec.realm)] = rec
                db.execute("COMMIT")
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise UserStoreError(f"{self.path}: cannot read user database: {exc}") from None
        if meta is None:
            log.warning("user database %s has no schema yet: no users are known", self.path)
            self.snapshot = _Snapshot({}, {}, (*st, "", -1))
            return 0
        self.snapshot = _Snapshot(by_aor, by_cred, (*st, *meta))
        log.info(
            "user directory loaded from %s: %d users, revision %d (%.3f s)",
            self.path,
            len(by_aor),
            meta[1],
            time.perf_counter() - started,
        )
        return len(by_aor)

    def refresh_if_changed(self) -> bool:
        """Reload when the database changed since the last load; returns whether it reloaded.

        The check is cheap (a ``stat`` and one small query: the file identity, ``db_id`` and
        ``revision``), so an FE can call it every second. It blocks on file I/O: call it from
        a worker thread (:meth:`watch` does). Errors are logged and the current users kept;
        this method does not raise. A file that is missing, or has no schema yet (a
        :class:`UserStore` is creating it), is not a change: the loaded users stay.
        """
        with self._lock:
            old = self.snapshot.key
            try:
                new = self._current_key()
            except (sqlite3.Error, UserStoreError) as exc:
                self._warn_error(f"cannot check user database {self.path}: {exc}")
                return False
            if new is None:
                # Missing, or present without a schema (being created): keep what is loaded.
                if old is not None and not self._missing_warned and self._stat_key() is None:
                    log.warning(
                        "user database %s disappeared: keeping the %d users loaded",
                        self.path,
                        len(self.snapshot.by_aor),
                    )
                    self._missing_warned = True
                return False
            if new == old:
                return False
            try:
                self._load_locked()
            except UserStoreError as exc:
                self._warn_error(str(exc))
                return False
            self._error_warned = None
            return self.snapshot.key != old

    def _warn_error(self, message: str) -> None:
        if self._error_warned != message:
            log.error("%s; keeping the %d users loaded", message, len(self.snapshot.by_aor))
            self._error_warned = message

    async def watch(
        self, interval: float = 1.0, on_change: Callable[[int], None] | None = None
    ) -> None:
        """Poll for changes forever (until cancelled), every ``interval`` seconds.

        Each check runs :meth:`refresh_if_changed` in a worker thread
        (:func:`asyncio.to_thread`), so the event loop never blocks on the disk.

        Args:
            interval: seconds between checks (> 0).
            on_change: called on the event loop with the new user count after each reload.

        Raises:
            ValueError: ``interval`` is not positive.
        """
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        while True:
            if await asyncio.to_thread(self.refresh_if_changed) and on_change is not None:
                on_change(len(self))
            await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------------
# The command line: registrar users ...
# ---------------------------------------------------------------------------------------------


_Handler = Callable[[argparse.Namespace], int]


def _err(args: argparse.Namespace, message: str) -> None:
    print(f"users {args.users_command}: {message}", file=sys.stderr)


def _read_password(args: argparse.Namespace) -> str | None:
    """The password from ``--password`` or one line of stdin; ``None`` (reported) if empty."""
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        password = args.password
    if not password:
        _err(args, "empty password")
        return None
    return str(password)


def _open_store(args: argparse.Namespace, create: bool) -> UserStore:
    return UserStore(args.users_db, create=create)


def _store_errors(handler: _Handler) -> _Handler:
    """Wrap a ``users`` command handler: a :class:`UserStoreError` (a database error) it
    raises is reported on stderr (``users CMD: message``) and the exit code is 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except UserStoreError as exc:
            _err(args, str(exc))
            return 1

    return run


@_store_errors
def _cmd_add(args: argparse.Namespace) -> int:
    try:
        aor = normalize_aor(args.aor)
        _check_home_pool(args.home_pool)
        _check_policy(args.policy)
    except ValueError as exc:
        _err(args, str(exc))
        return 2
    password = _read_password(args)
    if password is None:
        return 2
    try:
        with _open_store(args, create=True) as store:
            store.add(aor, password, args.home_pool, args.policy, replace=args.replace)
    except ValueError as exc:  # already exists
        _err(args, f"{exc} (use --replace to overwrite)")
        return 1
    print(f"{'replaced' if args.replace else 'added'} {aor}")
    return 0


@_store_errors
def _cmd_import(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        _err(args, f"{path}: no such file")
        return 2

    def progress(n: int) -> None:
        if n % PROGRESS_EVERY == 0 and n:
            print(f"users import: {n} rows written", file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        with _open_store(args, create=True) as store:
            count = store.import_csv(path, progress, replace=args.replace)
    except CsvImportError as exc:
        print(str(exc), file=sys.stderr)
        _err(args, f"{len(exc.errors)} bad rows; nothing imported")
        return 2
    except UnicodeDecodeError as exc:
        _err(args, f"{path}: not UTF-8 text: {exc}")
        return 2
    except OSError as exc:
        _err(args, f"{path}: {exc}")
        return 1
    print(f"imported {count} users from {path} in {time.perf_counter() - started:.2f} s")
    return 0


@_store_errors
def _cmd_list(args: argparse.Namespace) -> int:
    with _open_store(args, create=False) as store:
        records = store.list(args.pattern)
    if args.json:
        out = [
            {
                "aor": r.aor,
                "username": r.username,
                "realm": r.realm,
                "home_pool": r.home_pool,
                "policy": r.policy,
            }
            for r in records
        ]
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        buf = io.StringIO()
        for r in records:
            buf.write(f"{r.aor}\thome_pool={r.home_pool or '-'}\tpolicy={r.policy or '-'}\n")
        sys.stdout.write(buf.getvalue())
    return 0


def _aor_arg(args: argparse.Namespace) -> str | None:
    """``args.aor`` normalised (:func:`normalize_aor`); ``None`` (reported) if it is invalid."""
    try:
        return normalize_aor(args.aor)
    except ValueError as exc:
        _err(args, str(exc))
        return None


def _update_user(
    args: argparse.Namespace, aor: str, update: Callable[[UserStore], bool], done: str
) -> int:
    """Apply ``update`` to the existing database (``update(store)`` is ``False`` when there is
    no such user) and report: ``done`` on stdout and 0, or ``"<aor>: no such user"`` on stderr
    and 1. Raises :class:`UserStoreError` (see :func:`_store_errors`)."""
    with _open_store(args, create=False) as store:
        found = update(store)
    if not found:
        _err(args, f"{aor}: no such user")
        return 1
    print(done)
    return 0


@_store_errors
def _cmd_remove(args: argparse.Namespace) -> int:
    aor = _aor_arg(args)
    if aor is None:
        return 2
    return _update_user(args, aor, lambda store: store.remove(aor), f"removed {aor}")


@_store_errors
def _cmd_set_password(args: argparse.Namespace) -> int:
    aor = _aor_arg(args)
    if aor is None:
        return 2
    password = _read_password(args)
    if password is None:
        return 2
    return _update_user(
        args, aor, lambda store: store.set_password(aor, password), f"password changed for {aor}"
    )


@_store_errors
def _cmd_set_home_pool(args: argparse.Namespace) -> int:
    try:
        aor = normalize_aor(args.aor)
        pool = _check_home_pool(args.fqdn)
    except ValueError as exc:
        _err(args, str(exc))
        return 2
    return _update_user(
        args,
        aor,
        lambda store: store.set_home_pool(aor, pool),
        f"home pool of {aor}: {pool or '(this pool)'}",
    )


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``users`` command on an argparse subparsers object.

    Subcommands (each takes ``--users-db PATH``, default ``state/users.db``)::

        users add AOR (--password P | --password-stdin) [--home-pool FQDN] [--policy TAG]
                  [--replace]
        users import FILE.csv [--replace]      header aor,password[,home_pool,policy]
        users list [--json] [--pattern GLOB]   JSON: [{aor, username, realm, home_pool, policy}]
        users remove AOR
        users set-password AOR (--password P | --password-stdin)
        users set-home-pool AOR [FQDN]         no FQDN: clear (the user is homed here)

    The handler is stored as ``args.func`` (``func(args) -> int``): 0 success, 1 runtime error
    (no such user, already exists, database error; message on stderr such as
    ``users remove: sip:x@y: no such user``), 2 bad usage or input (bad AOR, empty password,
    CSV errors named by file and line). HA1s are never printed. ``users`` alone prints help
    and returns 2. ``add``/``import`` create the database when missing; the others need it.

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()`` of the main CLI.
    """
    sub = add_group(
        subparsers,
        "users",
        help="manage the user directory (AORs, digest HA1s, home pools; DESIGN.md §8)",
        description=(
            "Manage the user directory: a SQLite database of AORs with their digest HA1s "
            "(MD5 and SHA-256; passwords are never stored), home pool and policy tag. Running "
            "FEs notice changes within a second."
        ),
    )

    def command(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--users-db",
            type=Path,
            default=DEFAULT_USERS_DB,
            metavar="PATH",
            help=f"user database file (default: {DEFAULT_USERS_DB})",
        )
        p.set_defaults(func=func)
        return p

    def password_options(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--password", metavar="P", help="the digest password (visible in ps)")
        g.add_argument(
            "--password-stdin", action="store_true", help="read the password from one stdin line"
        )

    p = command("add", "add a user", _cmd_add)
    p.add_argument("aor", metavar="AOR", help="sip:user@domain (user@domain also accepted)")
    password_options(p)
    p.add_argument("--home-pool", metavar="FQDN", help="FQDN of the user's home pool")
    p.add_argument("--policy", metavar="TAG", help="presence policy tag")
    p.add_argument("--replace", action="store_true", help="overwrite an existing user")

    p = command(
        "import",
        "import users from CSV (header aor,password[,home_pool,policy]), all or nothing",
        _cmd_import,
    )
    p.add_argument("file", type=Path, metavar="FILE.csv", help="the CSV file (UTF-8)")
    p.add_argument("--replace", action="store_true", help="overwrite users that already exist")

    p = command("list", "list users (never their HA1s)", _cmd_list)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--pattern", metavar="GLOB", help="only AORs matching, e.g. '*@contoso.com'")

    p = command("remove", "remove a user", _cmd_remove)
    p.add_argument("aor", metavar="AOR")

    p = command("set-password", "change a user's password", _cmd_set_password)
    p.add_argument("aor", metavar="AOR")
    password_options(p)

    p = command("set-home-pool", "set or clear a user's home pool", _cmd_set_home_pool)
    p.add_argument("aor", metavar="AOR")
    p.add_argument("fqdn", metavar="FQDN", nargs="?", help="home pool FQDN; omit to clear")
