"""Tests for registrar.users: AOR normalisation, the UserStore, the UserDirectory and the
``users`` CLI."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest

from registrar import users
from registrar.users import (
    CsvImportError,
    UserDirectory,
    UserRecord,
    UserStore,
    UserStoreError,
    normalize_aor,
)
from sipstack.auth import compute_ha1

# ------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:alice@contoso.com", "sip:alice@contoso.com"),
        ("sip:User@Contoso.COM", "sip:user@contoso.com"),
        ("SIP:User@Contoso.COM", "sip:user@contoso.com"),
        ("sips:bob@contoso.com", "sip:bob@contoso.com"),
        ("bob@Contoso.com", "sip:bob@contoso.com"),
        ("<sip:Carol@contoso.com>", "sip:carol@contoso.com"),
        ('"Carol C" <sips:Carol@contoso.com:5061;transport=tls>', "sip:carol@contoso.com"),
        ("  sip:dave@contoso.com  ", "sip:dave@contoso.com"),
        ("sip:dave@contoso.com:5061", "sip:dave@contoso.com"),
        ("sip:dave@contoso.com;transport=tls;lr", "sip:dave@contoso.com"),
        ("sip:dave@contoso.com?subject=hi", "sip:dave@contoso.com"),
        ("dave@contoso.com:5060", "sip:dave@contoso.com"),
        ("sip:%61lice@contoso.com", "sip:alice@contoso.com"),
        ("sip:+14255550100@contoso.com;user=phone", "sip:+14255550100@contoso.com"),
        ("sip:alice@127.0.0.1", "sip:alice@127.0.0.1"),
        ("sip:alice@[::1]:5061", "sip:alice@[::1]"),
    ],
)
def test_normalize_aor(text: str, expected: str) -> None:
    assert normalize_aor(text) == expected
    assert normalize_aor(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("foo", "no user part"),
        ("sip:contoso.com", "no user part"),
        ("tel:+14255550100", "unsupported scheme 'tel'"),
        ("mailto:a@b.c", "unsupported scheme 'mailto'"),
        ("sip:alice:secret@contoso.com", "password"),
        ("<sip:alice@contoso.com", "unbalanced"),
        ("sip:alice@contoso.com>", "unbalanced"),
        ("sip:a b@contoso.com", "bad user part"),
        ("sip:alice@bad host", "bad host"),
        ("sip:alice@-x-", "bad host"),
        ("sip:alice@contoso.com:99999", "port"),
        ("sip:a%40b@contoso.com", "'@'"),
        ("sip:%ff@contoso.com", "UTF-8"),
        ("sip:a%00@contoso.com", "'\\x00'"),
    ],
)
def test_normalize_aor_rejects_garbage(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_aor(text)
    message = str(info.value)
    assert message.startswith(f"bad AOR {text!r}: ")
    assert reason in message


# ------------------------------------------------------------------------------ UserStore


def test_store_creates_db_with_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "users.db"
    with UserStore(path) as store:
        assert store.revision() == 0
        assert store.list() == []
        assert len(store) == 0
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == users.SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in db.execute("PRAGMA table_info(users)")]
        assert cols == [
            "aor", "username", "realm", "ha1_md5", "ha1_sha256", "home_pool", "policy",
            "updated_at",
        ]  # fmt: skip
        meta = dict(db.execute("SELECT key, value FROM meta"))
        assert meta["revision"] == 0
        assert len(meta["db_id"]) == 32
    finally:
        db.close()
    # Reopening an existing database keeps its contents and revision.
    with UserStore(path) as store:
        store.add("a@b.c", "pw")
    with UserStore(path) as store:
        assert store.revision() == 1
        assert [r.aor for r in store.list()] == ["sip:a@b.c"]
    store.close()  # idempotent; a closed store refuses politely
    with pytest.raises(UserStoreError, match="closed"):
        store.list()


def test_store_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserStoreError, match="no such user database"):
        UserStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(UserStoreError, match=r"junk\.db"):
        UserStore(junk)
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(UserStoreError, match="newer"):
        UserStore(newer)


def test_add_list_remove_set_password(tmp_path: Path) -> None:
    with UserStore(tmp_path / "users.db") as store:
        rec = store.add("sip:Alice@Contoso.com", "secret", "Pool1.Contoso.com.", " vip ")
        assert rec == UserRecord(
            "sip:alice@contoso.com",
            "alice",
            "contoso.com",
            compute_ha1("alice", "contoso.com", "secret", "MD5"),
            compute_ha1("alice", "contoso.com", "secret", "SHA-256"),
            "pool1.contoso.com",
            "vip",
        )
        assert store.revision() == 1
        store.add("bob@fabrikam.com", "pw2")
        store.add("carol@contoso.com", "pw3")
        assert store.revision() == 3
        assert [r.aor for r in store.list()] == [
            "sip:alice@contoso.com",
            "sip:bob@fabrikam.com",
            "sip:carol@contoso.com",
        ]
        assert store.get("ALICE@contoso.com") == rec
        assert store.get("nobody@contoso.com") is None

        # Patterns: glob on the normalised AOR, case-insensitive, sip: optional.
        assert [r.aor for r in store.list("*@contoso.com")] == [
            "sip:alice@contoso.com",
            "sip:carol@contoso.com",
        ]
        assert [r.aor for r in store.list("BOB@*")] == ["sip:bob@fabrikam.com"]
        assert [r.aor for r in store.list("sip:[ab]*")] == [
            "sip:alice@contoso.com",
            "sip:bob@fabrikam.com",
        ]
        assert store.list("nobody*") == []

        # Duplicate add: refused unless replace.
        with pytest.raises(ValueError, match=r"sip:alice@contoso\.com: already exists"):
            store.add("alice@contoso.com", "other")
        assert store.revision() == 3
        replaced = store.add("alice@contoso.com", "other", replace=True)
        assert replaced.home_pool is None and replaced.policy is None
        assert replaced.ha1_md5 == compute_ha1("alice", "contoso.com", "other", "MD5")
        assert store.revision() == 4

        # Password change.
        assert store.set_password("sip:bob@fabrikam.com", "new") is True
        bob = store.get("bob@fabrikam.com")
        assert bob is not None
        assert bob.ha1_sha256 == compute_ha1("bob", "fabrikam.com", "new", "SHA-256")
        assert bob.ha1_md5 == compute_ha1("bob", "fabrikam.com", "new", "MD5")
        assert store.set_password("nobody@fabrikam.com", "x") is False
        assert store.revision() == 5  # a no-op change does not bump the revision

        # Home pool and policy.
        assert store.set_home_pool("bob@fabrikam.com", "POOL2.fabrikam.com") is True
        assert store.get("bob@fabrikam.com").home_pool == "pool2.fabrikam.com"  # type: ignore[union-attr]
        assert store.set_home_pool("bob@fabrikam.com", None) is True
        assert store.get("bob@fabrikam.com").home_pool is None  # type: ignore[union-attr]
        assert store.set_policy("bob@fabrikam.com", "exec") is True
        assert store.get("bob@fabrikam.com").policy == "exec"  # type: ignore[union-attr]
        assert store.set_home_pool("nobody@x.com", "p.x.com") is False

        # Remove.
        assert store.remove("sips:Carol@Contoso.com") is True
        assert store.remove("carol@contoso.com") is False
        assert [r.aor for r in store.list()] == ["sip:alice@contoso.com", "sip:bob@fabrikam.com"]

        # Validation.
        with pytest.raises(ValueError, match="bad AOR"):
            store.add("garbage", "pw")
        with pytest.raises(ValueError, match="empty password"):
            store.add("dan@x.com", "")
        with pytest.raises(ValueError, match="bad home pool"):
            store.add("dan@x.com", "pw", home_pool="not a host")
        with pytest.raises(ValueError, match="empty password"):
            store.set_password("alice@contoso.com", "")


def test_no_plain_password_stored(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    with UserStore(path) as store:
        store.add("alice@contoso.com", "Very-Distinctive-Secret")
        store.set_password("alice@contoso.com", "Another-Distinctive-Secret")
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"Distinctive-Secret" not in data


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
@pytest.mark.parametrize(
    ("aor", "password", "username", "realm"),
    [
        ("sip:alice@contoso.com", "secret", "alice", "contoso.com"),
        ("Bob@Fabrikam.COM", "pässwörd ✓", "bob", "fabrikam.com"),
        ("sip:%2b1425@contoso.com", "p:w@d", "+1425", "contoso.com"),
    ],
)
def test_ha1_matches_sipstack(
    tmp_path: Path, algorithm: str, aor: str, password: str, username: str, realm: str
) -> None:
    expected = compute_ha1(username, realm, password, algorithm)
    path = tmp_path / "users.db"
    with UserStore(path) as store:
        rec = store.add(aor, password)
        assert rec.ha1(algorithm) == expected
        csv_path = tmp_path / "u.csv"
        csv_path.write_text(f"aor,password\nother@{realm},{password}\n", encoding="utf-8")
        store.import_csv(csv_path)
    directory = UserDirectory(path)
    directory.load()
    assert directory.ha1(username, realm, algorithm) == expected
    assert directory.ha1(username, realm, algorithm.lower() + "-sess") == expected
    assert directory.ha1("other", realm, algorithm) == compute_ha1(
        "other", realm, password, algorithm
    )


# ------------------------------------------------------------------------------ CSV import


def test_import_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "users.csv"
    csv_path.write_text(
        "\ufeffAOR,Password,Home_Pool,Policy\n"
        "sip:alice@contoso.com,secret,pool1.contoso.com,vip\n"
        "\n"
        'Bob@Contoso.com,"pw, with ""quotes""\nand a newline",,\n'
        "carol@contoso.com,pw3,, \n",
        encoding="utf-8",
    )
    seen: list[int] = []
    with UserStore(tmp_path / "users.db") as store:
        assert store.import_csv(csv_path, progress=seen.append) == 3
        assert seen == [3]
        assert store.revision() == 1
        recs = {r.aor: r for r in store.list()}
    assert set(recs) == {"sip:alice@contoso.com", "sip:bob@contoso.com", "sip:carol@contoso.com"}
    assert recs["sip:alice@contoso.com"].home_pool == "pool1.contoso.com"
    assert recs["sip:alice@contoso.com"].policy == "vip"
    assert recs["sip:bob@contoso.com"].home_pool is None
    assert recs["sip:carol@contoso.com"].policy is None
    assert recs["sip:bob@contoso.com"].ha1_md5 == compute_ha1(
        "bob", "contoso.com", 'pw, with "quotes"\nand a newline', "MD5"
    )


def test_import_csv_from_stream_and_columns_in_any_order(tmp_path: Path) -> None:
    stream = io.StringIO("password,aor\npw,alice@contoso.com\n")
    with UserStore(tmp_path / "users.db") as store:
        assert store.import_csv(stream) == 1
        assert store.get("alice@contoso.com") is not None
        # Header only: nothing to do, no revision bump.
        assert store.import_csv(io.StringIO("aor,password\n")) == 0
        assert store.revision() == 1


def test_import_csv_bad_rows_import_nothing(tmp_path: Path) -> None:
    csv_path = tmp_path / "users.csv"
    lines = ["aor,password,home_pool"]
    lines += [f"user{i}@contoso.com,pw{i}," for i in range(1, 15)]  # lines 2..15
    lines[5] = "foo,pw,"  # line 6: bad AOR
    lines[8] = "user8@contoso.com,,"  # line 9: empty password
    lines[10] = "user10@contoso.com,pw,bad pool"  # line 11: bad home pool
    lines[12] = "user2@contoso.com,pw,"  # line 13: repeats line 3
    lines[13] = "user13@contoso.com,pw"  # line 14: wrong field count
    lines.append("existing@contoso.com,pw,")  # line 16: already in the database
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / "users.db"
    with UserStore(path) as store:
        store.add("existing@contoso.com", "old")
        with pytest.raises(CsvImportError) as info:
            store.import_csv(csv_path)
        err = info.value
        assert [n for n, _ in err.errors] == [6, 9, 11, 13, 14, 16]
        text = str(err).splitlines()
        assert (
            text[0] == f"{csv_path} line 6: bad AOR 'foo': no user part (expected sip:user@domain)"
        )
        assert text[1] == f"{csv_path} line 9: empty password"
        assert "line 11: bad home pool 'bad pool'" in text[2]
        assert text[3] == f"{csv_path} line 13: sip:user2@contoso.com: repeats line 3"
        assert text[4] == f"{csv_path} line 14: expected 3 fields, got 2"
        assert "line 16: sip:existing@contoso.com: already exists" in text[5]
        # Nothing imported, revision unchanged, existing user untouched.
        assert [r.aor for r in store.list()] == ["sip:existing@contoso.com"]
        assert store.revision() == 1
        assert store.get("existing@contoso.com").ha1_md5 == compute_ha1(  # type: ignore[union-attr]
            "existing", "contoso.com", "old", "MD5"
        )


def test_import_csv_replace(tmp_path: Path) -> None:
    with UserStore(tmp_path / "users.db") as store:
        store.add("alice@contoso.com", "old", home_pool="p1.contoso.com")
        n = store.import_csv(io.StringIO("aor,password\nalice@contoso.com,new\n"), replace=True)
        assert n == 1
        rec = store.get("alice@contoso.com")
        assert rec is not None and rec.home_pool is None
        assert rec.ha1_md5 == compute_ha1("alice", "contoso.com", "new", "MD5")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "line 1: empty file"),
        ("user,password\n", "line 1: bad header 'user,password': unknown column 'user'"),
        ("aor\n", "line 1: bad header 'aor': missing column"),
        ("aor,password,aor\n", "repeated column 'aor'"),
    ],
)
def test_import_csv_bad_header(tmp_path: Path, content: str, message: str) -> None:
    with UserStore(tmp_path / "users.db") as store, pytest.raises(CsvImportError) as info:
        store.import_csv(io.StringIO(content))
    assert message in str(info.value)


def test_import_100k_rows(tmp_path: Path) -> None:
    n = 100_000
    csv_path = tmp_path / "users.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        fh.write("aor,password,home_pool,policy\n")
        for i in range(n):
            fh.write(f"sip:user{i:06d}@contoso.com,password-{i},,\n")
    path = tmp_path / "users.db"
    seen: list[int] = []
    with UserStore(path) as store:
        started = time.perf_counter()
        assert store.import_csv(csv_path, progress=seen.append) == n
        elapsed = time.perf_counter() - started
        assert store.revision() == 1
        assert len(store) == n
    assert seen == list(range(10_000, n + 1, 10_000))
    directory = UserDirectory(path)
    started = time.perf_counter()
    assert directory.load() == n
    load_elapsed = time.perf_counter() - started
    print(f"\nimport of {n} users: {elapsed:.2f} s; directory load: {load_elapsed:.2f} s")
    assert directory.ha1("user099999", "contoso.com", "SHA-256") == compute_ha1(
        "user099999", "contoso.com", "password-99999", "SHA-256"
    )


# ------------------------------------------------------------------------------ UserDirectory


def test_directory_lookups(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    with UserStore(path) as store:
        store.add("alice@contoso.com", "secret", home_pool="pool2.contoso.com", policy="vip")
    directory = UserDirectory(path)
    assert len(directory) == 0 and directory.revision is None
    assert directory.load() == 1
    assert len(directory) == 1 and directory.revision == 1
    rec = directory.get("sip:alice@contoso.com")
    assert rec is not None and rec.home_pool == "pool2.contoso.com" and rec.policy == "vip"
    assert directory.get("<sips:ALICE@contoso.com:5061>") is rec
    assert "alice@contoso.com" in directory
    assert directory.get("sip:bob@contoso.com") is None
    assert directory.get("garbage") is None
    assert directory.ha1("alice", "contoso.com", "MD5") == rec.ha1_md5
    assert directory.ha1("alice", "CONTOSO.com", "SHA-256") == rec.ha1_sha256
    assert directory.ha1("Alice", "contoso.com", "MD5") is None  # digest usernames are exact
    assert directory.ha1("alice", "fabrikam.com", "MD5") is None
    with pytest.raises(ValueError, match="unsupported digest algorithm"):
        directory.ha1("alice", "contoso.com", "SHA-512")
    assert "ha1" not in repr(rec) and rec.ha1_md5 not in repr(rec)


def test_directory_sees_changes_from_another_store(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    writer = UserStore(path)
    writer.add("alice@contoso.com", "secret")
    directory = UserDirectory(path)
    assert directory.load() == 1
    assert directory.refresh_if_changed() is False  # nothing changed

    with UserStore(path) as other:  # a second writer, e.g. the CLI
        other.add("bob@contoso.com", "pw")
    assert directory.get("bob@contoso.com") is None  # no disk access until refreshed
    assert directory.refresh_if_changed() is True
    assert directory.get("bob@contoso.com") is not None
    assert len(directory) == 2
    assert directory.refresh_if_changed() is False

    writer.set_password("alice@contoso.com", "changed")
    assert directory.refresh_if_changed() is True
    assert directory.ha1("alice", "contoso.com", "MD5") == compute_ha1(
        "alice", "contoso.com", "changed", "MD5"
    )
    writer.remove("bob@contoso.com")
    assert directory.refresh_if_changed() is True
    assert directory.get("bob@contoso.com") is None
    writer.close()


def test_directory_missing_file_then_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "users.db"
    directory = UserDirectory(path)
    with caplog.at_level(logging.WARNING, logger="registrar.users"):
        assert directory.load() == 0
    assert "does not exist" in caplog.text
    assert len(directory) == 0
    assert directory.get("alice@contoso.com") is None
    assert directory.ha1("alice", "contoso.com", "MD5") is None
    assert not path.exists()  # the directory never creates the file
    assert directory.refresh_if_changed() is False

    with UserStore(path) as store:
        store.add("alice@contoso.com", "pw")
    assert directory.refresh_if_changed() is True
    assert directory.get("alice@contoso.com") is not None


def test_directory_file_replaced_or_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.db"
    with UserStore(path) as store:
        store.add("alice@contoso.com", "pw")
    directory = UserDirectory(path)
    directory.load()

    # A different database with the same revision moved into place is noticed.
    new = tmp_path / "new.db"
    with UserStore(new) as store:
        store.add("bob@contoso.com", "pw")
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(new, path)
    assert directory.refresh_if_changed() is True
    assert directory.get("bob@contoso.com") is not None
    assert directory.get("alice@contoso.com") is None

    # A removed file keeps the users last loaded, with a warning.
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="registrar.users"):
        assert directory.refresh_if_changed() is False
    assert "disappeared" in caplog.text
    assert directory.get("bob@contoso.com") is not None

    # A corrupt file is reported, not raised, by refresh; load() raises.
    path.write_bytes(b"garbage" * 1000)
    with caplog.at_level(logging.ERROR, logger="registrar.users"):
        assert directory.refresh_if_changed() is False
    assert directory.get("bob@contoso.com") is not None
    with pytest.raises(UserStoreError):
        directory.load()


async def test_watch_reloads_in_background(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    directory = UserDirectory(path)
    directory.load()
    counts: list[int] = []
    changed = asyncio.Event()

    def on_change(n: int) -> None:
        counts.append(n)
        changed.set()

    async def wait_for_count(n: int) -> None:
        # A watch tick may land between the schema commit and the add (count 0): wait for n.
        async with asyncio.timeout(10):
            while not counts or counts[-1] != n:
                changed.clear()
                await changed.wait()

    def add(aor: str) -> None:
        with UserStore(path) as store:
            store.add(aor, "pw")

    task = asyncio.create_task(directory.watch(interval=0.05, on_change=on_change))
    try:
        await asyncio.to_thread(add, "alice@contoso.com")
        await wait_for_count(1)
        assert directory.get("alice@contoso.com") is not None
        await asyncio.to_thread(add, "bob@contoso.com")
        await wait_for_count(2)
        assert directory.get("bob@contoso.com") is not None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(ValueError):
        await directory.watch(interval=0)


# ------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="registrar")
    sub = parser.add_subparsers(dest="command")
    users.add_cli(sub)
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    result: int = args.func(args)
    return result


def test_cli_add_list_remove_set_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "state" / "users.db")
    assert _run("users", "add", "Alice@Contoso.com", "--password", "pw", "--users-db", db) == 0
    assert "added sip:alice@contoso.com" in capsys.readouterr().out
    assert (
        _run("users", "add", "sip:bob@contoso.com", "--password", "pw2", "--home-pool",
             "pool2.contoso.com", "--policy", "vip", "--users-db", db)
        == 0
    )  # fmt: skip
    capsys.readouterr()

    # Duplicate: runtime error 1; --replace: ok.
    assert _run("users", "add", "alice@contoso.com", "--password", "x", "--users-db", db) == 1
    err = capsys.readouterr().err
    assert "users add: sip:alice@contoso.com: already exists" in err
    assert (
        _run("users", "add", "alice@contoso.com", "--password", "x", "--replace", "--users-db", db)
        == 0
    )
    capsys.readouterr()

    # Bad AOR: usage error 2.
    assert _run("users", "add", "foo", "--password", "x", "--users-db", db) == 2
    assert "users add: bad AOR 'foo'" in capsys.readouterr().err

    # list --json parses, has the documented keys, never HA1s.
    assert _run("users", "list", "--json", "--users-db", db) == 0
    out = capsys.readouterr().out
    assert "ha1" not in out.lower()
    data = json.loads(out)
    assert data == [
        {"aor": "sip:alice@contoso.com", "username": "alice", "realm": "contoso.com",
         "home_pool": None, "policy": None},
        {"aor": "sip:bob@contoso.com", "username": "bob", "realm": "contoso.com",
         "home_pool": "pool2.contoso.com", "policy": "vip"},
    ]  # fmt: skip
    assert _run("users", "list", "--json", "--pattern", "bob@*", "--users-db", db) == 0
    assert [u["aor"] for u in json.loads(capsys.readouterr().out)] == ["sip:bob@contoso.com"]
    assert _run("users", "list", "--users-db", db) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("sip:bob@contoso.com\t")
    assert "pool2.contoso.com" in out

    # set-password with --password and --password-stdin.
    assert (
        _run("users", "set-password", "bob@contoso.com", "--password", "n1", "--users-db", db) == 0
    )
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    assert (
        _run("users", "set-password", "bob@contoso.com", "--password-stdin", "--users-db", db) == 0
    )
    with UserStore(db) as store:
        bob = store.get("bob@contoso.com")
        assert bob is not None
        assert bob.ha1_md5 == compute_ha1("bob", "contoso.com", "from stdin", "MD5")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert (
        _run("users", "set-password", "bob@contoso.com", "--password-stdin", "--users-db", db) == 2
    )
    assert "empty password" in capsys.readouterr().err
    assert (
        _run("users", "set-password", "zed@contoso.com", "--password", "x", "--users-db", db) == 1
    )
    assert "users set-password: sip:zed@contoso.com: no such user" in capsys.readouterr().err

    # set-home-pool
    assert _run("users", "set-home-pool", "bob@contoso.com", "--users-db", db) == 0
    with UserStore(db) as store:
        assert store.get("bob@contoso.com").home_pool is None  # type: ignore[union-attr]
    capsys.readouterr()

    # remove
    assert _run("users", "remove", "sip:bob@contoso.com", "--users-db", db) == 0
    assert "removed sip:bob@contoso.com" in capsys.readouterr().out
    assert _run("users", "remove", "sip:bob@contoso.com", "--users-db", db) == 1
    assert capsys.readouterr().err.strip() == "users remove: sip:bob@contoso.com: no such user"


def test_cli_missing_db_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "nope.db")
    assert _run("users", "list", "--users-db", db) == 1
    assert "no such user database" in capsys.readouterr().err
    assert _run("users", "remove", "a@b.c", "--users-db", db) == 1
    assert not Path(db).exists()
    assert _run("users") == 2
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["users", "set-password", "a@b.c"])  # no password option
    assert info.value.code == 2
    args = _parser().parse_args(["users", "list"])
    assert args.users_db == Path("state/users.db")


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "users.db")
    good = tmp_path / "good.csv"
    good.write_text(
        "aor,password\n" + "".join(f"u{i}@contoso.com,p{i}\n" for i in range(25_000)),
        encoding="utf-8",
    )
    assert _run("users", "import", str(good), "--users-db", db) == 0
    captured = capsys.readouterr()
    assert "10000 rows" in captured.err and "20000 rows" in captured.err
    assert captured.out.startswith(f"imported 25000 users from {good} in ")
    assert captured.out.rstrip().endswith(" s")

    bad = tmp_path / "users.csv"
    rows = ["aor,password"] + [f"v{i}@contoso.com,p" for i in range(20)]
    rows[16] = "foo,p"  # line 17
    bad.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert _run("users", "import", str(bad), "--users-db", db) == 2
    err = capsys.readouterr().err
    assert f"{bad} line 17: bad AOR 'foo': " in err
    assert "nothing imported" in err
    with UserStore(db) as store:
        assert len(store) == 25_000

    assert _run("users", "import", str(good), "--users-db", db) == 2  # all exist already
    assert "already exists" in capsys.readouterr().err
    assert _run("users", "import", str(good), "--replace", "--users-db", db) == 0
    capsys.readouterr()

    assert _run("users", "import", str(tmp_path / "missing.csv"), "--users-db", db) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
