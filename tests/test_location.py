"""Tests of registrar.location: the bindings store (RFC 3261 §10, RFC 5626; DESIGN.md §2, §3, §8).

Index and keys, look-up order, removal, the flow index, expiry sweeps with a fake clock,
listener events, write-behind persistence (asynchronous, coalescing, error reporting), row ids
(one row per binding, reused by refreshes and by re-adds of a pending removal), the migration
of version 1 files, restore after a graceful close, after the main thread ends without close,
and after a real SIGKILL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import registrar.location as location_module
from registrar.location import (
    EVENTS,
    SCHEMA_VERSION,
    Binding,
    LocationService,
    LocationStoreError,
    contact_key,
)

T0 = 1_700_000_000.0
ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """A settable wall clock (seconds)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def binding(
    aor: str = ALICE,
    contact: str = "sip:alice@192.0.2.1:5060;transport=tcp",
    expires: float = 3600,
    **kw: object,
) -> Binding:
    """A binding registered at T0 that expires ``expires`` seconds later."""
    fields: dict[str, object] = {
        "call_id": "call-1@192.0.2.1",
        "cseq": 1,
        "registered_at": T0,
        "source": "tcp:192.0.2.1:50412",
    }
    fields.update(kw)
    return Binding(aor=aor, contact=contact, expires_at=T0 + expires, **fields)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> LocationService:
    """An in-memory store on the fake clock."""
    s = LocationService(None, clock=clock)
    s.open()
    return s


@pytest.fixture
def events(store: LocationService) -> list[tuple[str, str, str]]:
    """(event, aor, contact) of every listener call on ``store``."""
    seen: list[tuple[str, str, str]] = []
    store.add_listener(lambda event, aor, b: seen.append((event, aor, b.contact)))
    return seen


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "bindings.sqlite"


@pytest.fixture
def opened(db: Path, clock: FakeClock) -> Iterator[LocationService]:
    """A persisted store, closed at teardown."""
    s = LocationService(db, clock=clock, flush_interval=0.05)
    s.open()
    yield s
    s.close()


@contextlib.contextmanager
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the bindings file, committed and closed on exit."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def reopen(db: Path, clock: FakeClock) -> LocationService:
    s = LocationService(db, clock=clock, flush_interval=0.05)
    s.open()
    return s


# ------------------------------------------------------------------------------ keys


def test_key_instance_and_reg_id() -> None:
    b = binding(instance_id="<urn:uuid:0001>", reg_id=2)
    assert b.key == "<urn:uuid:0001>;2"


def test_key_instance_without_reg_id_is_the_instance() -> None:
    b = binding(instance_id="<urn:uuid:0001>")
    assert b.key == "<urn:uuid:0001>"
    assert b.key is b.instance_id  # shared, no copy


def test_key_contact_lowercases_scheme_and_host_only() -> None:
    assert contact_key("SIP:Alice@EXAMPLE.com:5060;Transport=TCP") == (
        "sip:Alice@example.com:5060;Transport=TCP"
    )
    assert contact_key("sips:Bob@[2001:DB8::1]:5061") == "sips:Bob@[2001:db8::1]:5061"
    assert contact_key("sip:HOST.Example.COM;lr") == "sip:host.example.com;lr"
    assert contact_key("sip:+1;phone-context=X@GW.example.com") == (
        "sip:+1;phone-context=X@gw.example.com"
    )
    uri = "sip:Alice@192.0.2.1:5060;transport=tcp"
    assert contact_key(uri) is uri  # already normal: same object
    assert contact_key("not a uri") == "not a uri"
    uri = "sip:user1@127.0.0.1:5060;transport=TCP"  # upper case only in a parameter
    assert contact_key(uri) is uri
    assert contact_key("sip:a;x=1@HOST;transport=TCP") == "sip:a;x=1@host;transport=TCP"
    assert contact_key("sip:a;x=Y@host;t=Z") == "sip:a;x=Y@host;t=Z"
    assert contact_key("sip:Host;t=Z") == "sip:host;t=Z"


def test_remaining_rounds_down_and_never_negative() -> None:
    b = binding(expires=10)
    assert b.remaining(T0) == 10
    assert b.remaining(T0 + 0.5) == 9
    assert b.remaining(T0 + 10) == 0
    assert b.remaining(T0 + 99) == 0


# ------------------------------------------------------------------------------ put / replace


def test_put_adds_different_contacts(store: LocationService) -> None:
    assert store.put(binding(contact="sip:alice@192.0.2.1")) is None
    assert store.put(binding(contact="sip:alice@192.0.2.2")) is None
    assert len(store) == 2
    assert store.count(ALICE) == 2
    assert store.aor_count == 1
    assert {b.contact for b in store.lookup(ALICE)} == {
        "sip:alice@192.0.2.1",
        "sip:alice@192.0.2.2",
    }


def test_put_same_contact_replaces_case_insensitive_host(store: LocationService) -> None:
    first = binding(contact="sip:alice@Host.example.com", cseq=1)
    store.put(first)
    second = binding(contact="SIP:alice@host.EXAMPLE.com", cseq=2)
    assert store.put(second) is first
    assert store.lookup(ALICE) == [second]
    # the user part is case-sensitive: a different binding
    store.put(binding(contact="sip:ALICE@host.example.com"))
    assert store.count(ALICE) == 2


def test_instance_and_reg_id_replace_only_their_own(store: LocationService) -> None:
    inst = "<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"
    flow1 = binding(contact="sip:alice@192.0.2.1;ob", instance_id=inst, reg_id=1)
    flow2 = binding(contact="sip:alice@192.0.2.1;ob", instance_id=inst, reg_id=2)
    other = binding(contact="sip:alice@192.0.2.1;ob", instance_id="<urn:uuid:other>", reg_id=1)
    plain = binding(contact="sip:alice@192.0.2.1;ob")
    for b in (flow1, flow2, other, plain):
        assert store.put(b) is None
    assert store.count(ALICE) == 4
    # same instance + reg-id from a new contact (new NAT mapping) replaces flow1 only
    moved = binding(contact="sip:alice@198.51.100.7;ob", instance_id=inst, reg_id=1, cseq=2)
    assert store.put(moved) is flow1
    assert store.count(ALICE) == 4
    assert store.get(ALICE, f"{inst};1") is moved
    assert store.get(ALICE, f"{inst};2") is flow2
    assert store.get(ALICE, "<urn:uuid:other>;1") is other
    assert store.get(ALICE, "sip:alice@192.0.2.1;ob") is plain


def test_put_shares_aor_string_and_interns_user_agent(store: LocationService) -> None:
    a = binding(aor="".join(["sip:alice@", "example.com"]), contact="sip:a@h1", user_agent="UA/1")
    b = binding(aor="".join(["sip:alice@", "example.com"]), contact="sip:a@h2", user_agent="UA/1")
    assert a.aor is not b.aor
    store.put(a)
    store.put(b)
    assert b.aor is a.aor
    assert b.user_agent is sys.intern("UA/1")


def test_put_rejects_bad_reason_and_infinite_expiry_without_change(store: LocationService) -> None:
    with pytest.raises(ValueError, match="unknown location event"):
        store.put(binding(), reason="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        store.put(binding(expires=float("inf")))
    assert len(store) == 0
    store.put(binding())
    with pytest.raises(ValueError):
        store.remove(ALICE, binding().key, reason="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.remove_aor(ALICE, reason="nope")  # type: ignore[arg-type]
    assert len(store) == 1


def test_many_bindings_per_aor_grow_and_shrink(store: LocationService) -> None:
    """1 binding, a list of up to 16, a dict beyond, and back again: same answers throughout."""
    bs = [binding(contact=f"sip:alice@192.0.2.{i}", q=i / 100, flow_id=i) for i in range(40)]
    for n, b in enumerate(bs, 1):
        store.put(b)
        assert store.count(ALICE) == n == len(store)
        assert store.lookup(ALICE) == sorted(bs[:n], key=lambda x: -x.q)  # type: ignore[operator]
        assert all(store.get(ALICE, x.key) is x for x in bs[:n])
    # refresh one in dict form
    newer = dataclasses.replace(bs[3], cseq=9)
    assert store.put(newer) is bs[3]
    bs[3] = newer
    for n in range(40, 0, -1):
        victim = bs.pop()
        assert store.remove(ALICE, victim.key) is victim
        assert store.count(ALICE) == n - 1 == len(store)
        assert all(store.get(ALICE, x.key) is x for x in bs)
        assert store.by_flow(victim.flow_id) == []  # type: ignore[arg-type]
    assert store.aor_count == 0
    assert store.lookup(ALICE) == []


# ------------------------------------------------------------------------------ reads


def test_lookup_orders_by_q_then_most_recent(store: LocationService) -> None:
    old_default = binding(contact="sip:a@1", registered_at=T0 - 100)
    new_default = binding(contact="sip:a@2", registered_at=T0 - 10)
    high = binding(contact="sip:a@3", q=1.0, registered_at=T0 - 1000)
    low = binding(contact="sip:a@4", q=0.1, registered_at=T0)
    mid = binding(contact="sip:a@5", q=0.5, registered_at=T0)
    for b in (low, old_default, mid, high, new_default):
        store.put(b)
    # q None counts as 1.0: the 1.0s first, newest first; then 0.5, then 0.1
    assert store.lookup(ALICE) == [new_default, old_default, high, mid, low]


def test_reads_ignore_expired_bindings(store: LocationService, clock: FakeClock) -> None:
    short = binding(contact="sip:a@1", expires=10, flow_id=7)
    long = binding(contact="sip:a@2", expires=100, flow_id=7)
    store.put(short)
    store.put(long)
    clock.now = T0 + 10  # expires_at <= now is expired
    assert store.lookup(ALICE) == [long]
    assert store.get(ALICE, short.key) is None
    assert store.count(ALICE) == 1
    assert store.by_flow(7) == [long]
    assert len(store) == 2  # not swept yet
    assert store.lookup(BOB) == [] and store.get(BOB, "x") is None and store.count(BOB) == 0


def test_remove(store: LocationService, events: list[tuple[str, str, str]]) -> None:
    a = binding(contact="sip:a@1")
    b = binding(contact="sip:a@2")
    store.put(a)
    store.put(b)
    assert store.remove(ALICE, a.key) is a
    assert store.remove(ALICE, a.key) is None
    assert store.remove(BOB, a.key) is None
    assert store.lookup(ALICE) == [b]
    assert store.remove(ALICE, b.key, reason="deactivated") is b
    assert store.aor_count == 0 and len(store) == 0
    assert events[-2:] == [("unregistered", ALICE, "sip:a@1"), ("deactivated", ALICE, "sip:a@2")]


def test_remove_aor(
    store: LocationService, clock: FakeClock, events: list[tuple[str, str, str]]
) -> None:
    a = binding(contact="sip:a@1", q=0.2, flow_id=1)
    b = binding(contact="sip:a@2", q=0.9, flow_id=2)
    gone = binding(contact="sip:a@3", expires=5)
    other = binding(aor=BOB, contact="sip:b@1", flow_id=1)
    for x in (a, b, gone, other):
        store.put(x)
    clock.now = T0 + 5
    events.clear()
    assert store.remove_aor(ALICE, reason="deactivated") == [b, a]
    assert events == [
        ("expired", ALICE, "sip:a@3"),
        ("deactivated", ALICE, "sip:a@2"),
        ("deactivated", ALICE, "sip:a@1"),
    ]
    assert store.remove_aor(ALICE) == []
    assert store.aors() == [BOB] and len(store) == 1
    assert store.by_flow(1) == [other]
    assert store.by_flow(2) == []
    assert 2 not in store._flows


# ------------------------------------------------------------------------------ flow index


def test_by_flow_follows_replace_and_remove(store: LocationService) -> None:
    inst = "<urn:uuid:1>"
    first = binding(contact="sip:a@1;ob", instance_id=inst, reg_id=1, flow_id=10)
    store.put(first)
    store.put(binding(aor=BOB, contact="sip:b@1", flow_id=10))  # an edge proxy's shared flow
    assert {b.aor for b in store.by_flow(10)} == {ALICE, BOB}
    # the client reconnects: same instance/reg-id on a new flow replaces the binding
    moved = binding(contact="sip:a@2;ob", instance_id=inst, reg_id=1, flow_id=11)
    assert store.put(moved) is first
    assert [b.aor for b in store.by_flow(10)] == [BOB]
    assert store.by_flow(11) == [moved]
    # two bindings of one AOR on one flow: removing one keeps the flow indexed
    second = binding(contact="sip:a@3", flow_id=11)
    store.put(second)
    assert store.remove(ALICE, moved.key) is moved
    assert store.by_flow(11) == [second]
    store.remove(ALICE, second.key)
    assert store.by_flow(11) == []
    store.remove_aor(BOB)
    assert store.by_flow(10) == []
    assert store._flows == {}


def test_binding_without_flow_is_not_indexed(store: LocationService) -> None:
    store.put(binding(flow_id=None))
    assert store._flows == {}


# ------------------------------------------------------------------------------ sweep


def test_sweep_with_fake_clock(store: LocationService, clock: FakeClock) -> None:
    a = binding(contact="sip:a@1", expires=10.25, flow_id=1)
    b = binding(contact="sip:a@2", expires=10.75)
    c = binding(aor=BOB, contact="sip:b@1", expires=20)
    for x in (a, b, c):
        store.put(x)
    assert store.sweep(T0 + 10) == []
    assert store.sweep(T0 + 10.25) == [a]  # exact, inside the current second
    assert store.sweep(T0 + 10.5) == []
    clock.now = T0 + 10.75
    assert store.sweep() == [b]
    assert store.aors() == [BOB]
    assert store.by_flow(1) == [] and store._flows == {}
    assert store.sweep(T0 + 1000) == [c]
    assert len(store) == 0 and store.aor_count == 0
    assert store.sweep(T0 + 2000) == []
    assert store._buckets == {} and store._due == []


def test_sweep_skips_refreshed_and_removed_bindings(store: LocationService) -> None:
    a = binding(contact="sip:a@1", expires=10)
    store.put(a)
    refreshed = dataclasses.replace(a, expires_at=T0 + 100, cseq=2)
    store.put(refreshed)
    gone = binding(aor=BOB, contact="sip:b@1", expires=10)
    store.put(gone)
    store.remove(BOB, gone.key)
    assert store.sweep(T0 + 50) == []
    assert store.lookup(ALICE) == [refreshed]
    assert store.sweep(T0 + 100) == [refreshed]


def test_sweep_visits_only_due_entries(store: LocationService) -> None:
    for i in range(2000):
        store.put(binding(aor=f"sip:u{i}@example.com", expires=3600))
    store.put(binding(aor=BOB, expires=1))
    before = store.sweep_visits
    assert [b.aor for b in store.sweep(T0 + 2)] == [BOB]
    assert store.sweep_visits - before == 1


def test_frequent_refreshes_do_not_grow_the_expiry_index(store: LocationService) -> None:
    """A client refreshing every second leaves stale expiry entries; they are compacted."""
    for i in range(100):
        store.put(binding(aor=f"sip:u{i}@example.com", expires=10**6))
    for i in range(20_000):
        store.put(binding(cseq=i, expires=3600 + i))
    assert store._filed <= 4 * len(store) + 1024
    assert sum(map(len, store._buckets.values())) == store._filed
    assert store.sweep(T0 + 3600 + 19_998) == []
    assert [b.aor for b in store.sweep(T0 + 3600 + 19_999)] == [ALICE]
    assert len(store) == 100


# ------------------------------------------------------------------------------ listeners


def test_listener_events_inferred_and_explicit(
    store: LocationService, clock: FakeClock, events: list[tuple[str, str, str]]
) -> None:
    inst = "<urn:uuid:1>"
    store.put(binding(contact="sip:a@1", instance_id=inst))  # created
    store.put(binding(contact="sip:a@1", instance_id=inst, expires=7200))  # refreshed
    store.put(binding(contact="sip:a@1", instance_id=inst, expires=60))  # shortened
    store.put(binding(contact="sip:a@9", instance_id=inst, expires=60))  # replaced
    store.put(binding(contact="sip:a@9", instance_id=inst, expires=60), reason="refreshed")
    store.put(binding(contact="sip:a@2", expires=5), reason="created")
    clock.now = T0 + 5
    store.sweep()
    store.remove(ALICE, inst, reason="deactivated")
    assert events == [
        ("created", ALICE, "sip:a@1"),
        ("refreshed", ALICE, "sip:a@1"),
        ("shortened", ALICE, "sip:a@1"),
        ("replaced", ALICE, "sip:a@9"),
        ("refreshed", ALICE, "sip:a@9"),
        ("created", ALICE, "sip:a@2"),
        ("expired", ALICE, "sip:a@2"),
        ("deactivated", ALICE, "sip:a@9"),
    ]
    assert {e for e, _, _ in events} <= EVENTS


def test_listener_sees_change_applied_and_replacing_an_expired_binding(
    store: LocationService, clock: FakeClock, events: list[tuple[str, str, str]]
) -> None:
    counts: list[int] = []
    store.add_listener(lambda event, aor, b: counts.append(store.count(aor)))
    store.put(binding(expires=10))
    assert counts == [1]
    clock.now = T0 + 20
    # the old one expired but was never swept: it is reported expired, the new one created
    assert store.put(binding(expires=100)) is None
    assert events[-2:] == [
        ("expired", ALICE, binding().contact),
        ("created", ALICE, binding().contact),
    ]


def test_failing_listener_is_logged_and_others_still_run(
    store: LocationService, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def bad(event: str, aor: str, b: Binding) -> None:
        raise RuntimeError("boom")

    store.add_listener(bad)
    store.add_listener(lambda event, aor, b: seen.append(event))
    store.put(binding())
    assert seen == ["created"]
    assert store.count(ALICE) == 1
    assert "boom" in caplog.text
    store.remove_listener(bad)
    store.remove(ALICE, binding().key)
    assert seen == ["created", "unregistered"]


# ------------------------------------------------------------------------------ model check


OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "remove", "remove_aor", "sweep", "tick"]),
        st.integers(0, 2),  # aor
        st.integers(0, 19),  # contact
        st.one_of(st.none(), st.integers(0, 2)),  # flow
        st.integers(1, 30),  # expires
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_matches_a_simple_model(ops: list[tuple[str, int, int, int | None, int]]) -> None:
    clock = FakeClock()
    store = LocationService(None, clock=clock)
    model: dict[tuple[str, str], Binding] = {}
    for op, a, c, flow, expires in ops:
        aor = f"sip:u{a}@example.com"
        if op == "put":
            b = Binding(aor, f"sip:u@h{c}", clock.now + expires, "cid", 1, flow_id=flow)
            store.put(b)
            model[(aor, b.key)] = b
        elif op == "remove":
            key = f"sip:u@h{c}"
            got = store.remove(aor, key)
            want = model.pop((aor, key), None)
            assert got is (want if want is not None and want.expires_at > clock.now else None)
        elif op == "remove_aor":
            store.remove_aor(aor)
            model = {k: v for k, v in model.items() if k[0] != aor}
        elif op == "sweep":
            swept = store.sweep()
            due = {k for k, v in model.items() if v.expires_at <= clock.now}
            assert {(b.aor, b.key) for b in swept} == due
            model = {k: v for k, v in model.items() if k not in due}
        else:
            clock.now += expires / 3
        live = {k: v for k, v in model.items() if v.expires_at > clock.now}
        assert len(store) == len(model)
        assert set(store.aors()) == {k[0] for k in model}
        for i in range(3):
            aor = f"sip:u{i}@example.com"
            assert {b.key for b in store.lookup(aor)} == {k for (x, k) in live if x == aor}
        for f in range(3):
            want_flow = {id(v) for v in live.values() if v.flow_id == f}
            assert {id(b) for b in store.by_flow(f)} == want_flow
        flows_used = {v.flow_id for v in model.values() if v.flow_id is not None}
        assert set(store._flows) == flows_used


# ------------------------------------------------------------------------------ persistence


def full_binding(i: int, **kw: object) -> Binding:
    fields: dict[str, object] = {
        "aor": f"sip:user{i % 7}@example.com",
        "contact": f"sip:user{i % 7}@192.0.2.{i % 250}:{5000 + i};transport=tls;ob",
        "expires_at": T0 + 600 + i + 0.123456789,
        "call_id": f"{i:032x}@192.0.2.1",
        "cseq": 100 + i,
        "q": None if i % 3 else 0.5,
        "instance_id": f"<urn:uuid:{i:08d}-0000-1000-8000-000a95a0e128>" if i % 2 else None,
        "reg_id": 1 if i % 4 == 1 else None,
        "flow_id": 1000 + i,
        "source": f"tls:192.0.2.{i % 250}:{5000 + i}",
        "path": ("<sip:edge1.example.com;lr;ob>", "<sip:edge2.example.com;lr>")
        if i % 5 == 0
        else (),
        "user_agent": "Phone/1.0" if i % 2 else None,
        "backup": i % 2 == 0,
        "registered_at": T0 - i,
    }
    fields.update(kw)
    return Binding(**fields)  # type: ignore[arg-type]


def test_persistence_round_trip(db: Path, clock: FakeClock) -> None:
    s = LocationService(db, clock=clock, flush_interval=0.05)
    assert s.open() == 0
    put = [full_binding(i) for i in range(60)]
    for b in put:
        s.put(b)
    s.remove(put[0].aor, put[0].key)
    s.close()
    s.close()  # idempotent
    want = {(b.aor, b.key): dataclasses.replace(b, flow_id=None) for b in put[1:]}

    r = reopen(db, clock)
    try:
        got = {(b.aor, b.key): b for aor in r.aors() for b in r.lookup(aor)}
        assert got == want
        assert len(r) == len(want)
        assert all(b.flow_id is None for b in got.values())
        assert r.by_flow(1001) == []
    finally:
        r.close()


def test_absent_values_are_null_and_look_alikes_survive(db: Path, clock: FakeClock) -> None:
    # The writer binds no None (see location._ROW): absent values must still be NULL in the
    # file, and values equal to the stand-ins it binds ("", "0", 0.0) must come back as such.
    absent = full_binding(2, q=None, instance_id=None, reg_id=None, source=None, user_agent=None)
    alike = full_binding(
        4, q=0.0, instance_id="0", reg_id=None, source="", user_agent="0", path=()
    )
    empty = full_binding(6, q=1.0, instance_id="", reg_id=1, source="0", user_agent="")
    with LocationService(db, clock=clock, flush_interval=0.05) as s:
        for b in (absent, alike, empty):
            s.put(b)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        types = conn.execute(
            "SELECT typeof(q), typeof(instance_id), typeof(reg_id), typeof(source),"
            " typeof(path), typeof(user_agent) FROM bindings WHERE aor = ?",
            (absent.aor,),
        ).fetchone()
    assert types == ("null",) * 6
    r = reopen(db, clock)
    try:
        for b in (absent, alike, empty):
            assert r.lookup(b.aor) == [dataclasses.replace(b, flow_id=None)]
    finally:
        r.close()


def test_open_restores_only_unexpired_and_deletes_expired_rows(db: Path, clock: FakeClock) -> None:
    with LocationService(db, clock=clock, flush_interval=0.05) as s:
        s.put(binding(contact="sip:a@short", expires=10))
        s.put(binding(contact="sip:a@long", expires=100))
    clock.now = T0 + 10
    r = reopen(db, clock)
    assert [b.contact for b in r.lookup(ALICE)] == ["sip:a@long"]
    r.close()
    with raw(db) as conn:
        assert conn.execute("SELECT contact FROM bindings").fetchall() == [("sip:a@long",)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_restored_bindings_expire_and_are_swept(db: Path, clock: FakeClock) -> None:
    with LocationService(db, clock=clock, flush_interval=0.05) as s:
        s.put(binding(contact="sip:a@1", expires=10, flow_id=3))
        s.put(binding(contact="sip:a@2", expires=20))
    with LocationService(db, clock=clock) as r:
        assert [b.contact for b in r.sweep(T0 + 10)] == ["sip:a@1"]
        assert [b.contact for b in r.sweep(T0 + 20)] == ["sip:a@2"]
        assert len(r) == 0
    with raw(db) as conn:
        assert conn.execute("SELECT count(*) FROM bindings").fetchone()[0] == 0


def test_sweep_and_remove_aor_are_persisted(db: Path, clock: FakeClock) -> None:
    with LocationService(db, clock=clock, flush_interval=0.05) as s:
        s.put(binding(contact="sip:a@1", expires=10))
        s.put(binding(contact="sip:a@2", expires=100))
        s.put(binding(aor=BOB, contact="sip:b@1"))
        s.flush()
        s.sweep(T0 + 10)
        s.remove_aor(BOB)
    with raw(db) as conn:
        assert conn.execute("SELECT aor, contact FROM bindings").fetchall() == [(ALICE, "sip:a@2")]


def test_writes_happen_only_on_the_writer_thread(
    db: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """put/remove/sweep never touch SQLite from the calling thread."""
    statements: list[tuple[int, str]] = []
    real_connect = sqlite3.connect

    def traced_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        conn.set_trace_callback(lambda sql: statements.append((threading.get_ident(), sql)))
        return conn

    monkeypatch.setattr(location_module.sqlite3, "connect", traced_connect)
    s = LocationService(db, clock=clock, flush_interval=0.05)
    s.open()
    statements.clear()
    caller = threading.get_ident()
    for i in range(200):
        s.put(full_binding(i))
    s.remove_aor("sip:user1@example.com")
    s.sweep(T0 + 700)
    assert all(ident != caller for ident, _ in statements)
    s.flush()
    writer = {ident for ident, _ in statements}
    assert len(writer) == 1 and caller not in writer
    assert any(sql.startswith("INSERT OR REPLACE") for _, sql in statements)
    s.close()


def hold_writes(s: LocationService) -> tuple[threading.Event, threading.Event]:
    """Make the writer thread of ``s`` stop inside its next write: returns ``(writing,
    release)``; ``writing`` is set once it is in there, setting ``release`` lets it go on."""
    writing = threading.Event()
    release = threading.Event()
    real_write = s._write

    def slow_write(batch: dict[tuple[str, str], Binding | int]) -> None:
        writing.set()
        assert release.wait(30)
        real_write(batch)

    s._write = slow_write
    return writing, release


def fail_next_write(s: LocationService) -> None:
    """Make the next write of ``s``'s writer thread fail once with a disk error; the writes
    after it go through."""
    real_write = s._write
    failures = [sqlite3.OperationalError("disk I/O error")]

    def flaky(batch: dict[tuple[str, str], Binding | int]) -> None:
        if failures:
            raise failures.pop()
        real_write(batch)

    s._write = flaky


def test_put_does_not_wait_for_a_slow_writer(db: Path, clock: FakeClock) -> None:
    s = LocationService(db, clock=clock, flush_interval=0.05)
    s.open()
    writing, release = hold_writes(s)
    s.put(binding(contact="sip:a@first"))
    assert writing.wait(10)  # the writer is now stuck inside a write...
    for i in range(1000):  # ...and puts still complete, they only enqueue
        s.put(binding(contact=f"sip:a@{i}"))
    assert s.count(ALICE) == 1001
    flushed = threading.Event()
    flusher = threading.Thread(target=lambda: (s.flush(), flushed.set()))
    flusher.start()
    assert not flushed.wait(0.2)  # flush() does wait for the disk
    release.set()
    flusher.join(30)
    assert flushed.is_set()
    s.close()
    with raw(db) as conn:
        assert conn.execute("SELECT count(*) FROM bindings").fetchone()[0] == 1001


def test_changes_of_one_binding_coalesce(db: Path, clock: FakeClock) -> None:
    s = LocationService(db, clock=clock, flush_interval=60)  # writes only when asked
    s.open()
    batches: list[dict[tuple[str, str], Binding | int]] = []
    real_write = s._write

    def record(batch: dict[tuple[str, str], Binding | int]) -> None:
        batches.append(dict(batch))
        real_write(batch)

    s._write = record
    for cseq in range(100):
        s.put(binding(cseq=cseq))
    s.put(binding(contact="sip:a@gone"))
    gone_id = s.get(ALICE, "sip:a@gone").row_id  # type: ignore[union-attr]
    s.remove(ALICE, "sip:a@gone")
    s.flush()
    assert len(batches) == 1
    assert batches[0] == {
        (ALICE, binding().key): binding(cseq=99),
        (ALICE, "sip:a@gone"): gone_id,  # a delete is the row id
    }
    s.close()


def test_write_failure_is_reported_by_flush_and_retried(
    db: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    s = LocationService(db, clock=clock, flush_interval=60)  # writes only when asked
    s.open()
    fail_next_write(s)
    s.put(binding())
    with pytest.raises(LocationStoreError, match="disk I/O error"):
        s.flush()
    assert str(db) in caplog.text
    s.flush()  # retried and written
    s.close()
    r = reopen(db, clock)
    assert r.lookup(ALICE) == [binding()]
    r.close()


def test_close_reports_changes_it_could_not_write(db: Path, clock: FakeClock) -> None:
    s = LocationService(db, clock=clock, flush_interval=60)
    s.open()

    def broken(batch: dict[tuple[str, str], Binding | int]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    s._write = broken
    s.put(binding())
    with pytest.raises(LocationStoreError, match="1 binding changes could not be written"):
        s.close()


def test_memory_only_store_needs_no_file(clock: FakeClock) -> None:
    s = LocationService(None, clock=clock)
    assert s.open() == 0
    s.put(binding())
    s.flush()
    s.close()
    assert s.lookup(ALICE) == [binding()]  # still answers from memory


def test_put_before_open_is_refused_when_persisting(db: Path) -> None:
    s = LocationService(db)
    with pytest.raises(RuntimeError, match="before open"):
        s.put(binding())


def test_rows_stored_under_an_outdated_key_are_rekeyed(db: Path, clock: FakeClock) -> None:
    with LocationService(db, clock=clock) as s:
        s.put(binding(contact="sip:a@Host.example.com"))
    with raw(db) as conn:
        conn.execute("UPDATE bindings SET key = 'key-from-older-rules'")
    with LocationService(db, clock=clock) as r:
        assert r.get(ALICE, "sip:a@host.example.com") == binding(contact="sip:a@Host.example.com")
    with raw(db) as conn:
        assert conn.execute("SELECT key FROM bindings").fetchall() == [("sip:a@host.example.com",)]


def test_two_rows_that_now_share_a_key_keep_the_last(db: Path, clock: FakeClock) -> None:
    with LocationService(db, clock=clock) as s:
        s.put(binding(contact="sip:a@Host.example.com", cseq=1))
    with raw(db) as conn:  # a second row, stored under an older key rule, for the same key
        conn.execute(
            "INSERT INTO bindings (id, aor, key, contact, expires_at, call_id, cseq, source,"
            " backup, registered_at) SELECT id + 10, aor, 'key-from-older-rules',"
            " 'sip:a@HOST.example.com', expires_at, call_id, 2, source, backup, registered_at"
            " FROM bindings"
        )
    with LocationService(db, clock=clock) as r:
        assert r.lookup(ALICE) == [binding(contact="sip:a@HOST.example.com", cseq=2)]
        assert r.lookup(ALICE)[0].row_id == 11
    with raw(db) as conn:
        assert conn.execute("SELECT id, key, cseq FROM bindings").fetchall() == [
            (11, "sip:a@host.example.com", 2)
        ]


# ------------------------------------------------------------------------------ row ids


def rows(db: Path) -> list[tuple[int, str, str, str, int]]:
    """(id, aor, key, contact, cseq) of every row of the bindings file, by id."""
    with raw(db) as conn:
        return conn.execute(
            "SELECT id, aor, key, contact, cseq FROM bindings ORDER BY id"
        ).fetchall()


def test_schema_is_keyed_by_row_id_alone(db: Path, clock: FakeClock) -> None:
    with LocationService(db, clock=clock) as s:
        s.put(binding())
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        columns = [row[1] for row in conn.execute("PRAGMA table_info(bindings)")]
        assert columns[0] == "id" and {"aor", "key", "contact", "expires_at"} <= set(columns)
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == []


def test_new_bindings_get_new_row_ids_and_a_refresh_keeps_its_own(
    db: Path, clock: FakeClock
) -> None:
    first = binding(cseq=1)
    other = binding(contact="sip:a@other")
    with LocationService(db, clock=clock) as s:
        s.put(first)
        s.put(other)
        assert (first.row_id, other.row_id) == (1, 2)
    assert len(rows(db)) == 2
    refresh = binding(cseq=2, expires=7200)
    with LocationService(db, clock=clock) as s:
        assert s.put(refresh) == first
        assert refresh.row_id == first.row_id == 1
    assert rows(db) == [
        (1, ALICE, first.key, first.contact, 2),
        (2, ALICE, "sip:a@other", "sip:a@other", 1),
    ]
    assert Binding.__eq__(first, dataclasses.replace(first, row_id=99))  # not compared
    assert "row_id" not in repr(first)


def test_memory_only_store_assigns_no_row_ids(store: LocationService) -> None:
    b = binding()
    store.put(b)
    assert b.row_id == 0


def test_remove_then_re_add_within_one_flush_leaves_one_row(db: Path, clock: FakeClock) -> None:
    s = LocationService(db, clock=clock, flush_interval=60)  # writes only when asked
    s.open()
    s.put(binding(cseq=1))
    s.put(binding(aor=BOB, contact="sip:b@1"))
    s.flush()
    s.remove(ALICE, binding().key)
    again = binding(cseq=2)
    s.put(again)  # the removal is still pending: reuses its row
    assert again.row_id == 1
    s.remove_aor(BOB)
    s.put(binding(aor=BOB, contact="sip:b@1", cseq=3))
    s.close()
    assert rows(db) == [(1, ALICE, again.key, again.contact, 2), (2, BOB, "sip:b@1", "sip:b@1", 3)]
    s = reopen(db, clock)
    s.remove(ALICE, again.key)
    s.put(binding(contact="sip:a@new"))  # a new key: a new row id
    s.close()
    assert rows(db) == [(2, BOB, "sip:b@1", "sip:b@1", 3), (3, ALICE, "sip:a@new", "sip:a@new", 1)]


def test_re_add_while_the_removal_is_being_written_leaves_one_row(
    db: Path, clock: FakeClock
) -> None:
    s = LocationService(db, clock=clock, flush_interval=0.05)
    s.open()
    s.put(binding(cseq=1))
    s.flush()
    writing, release = hold_writes(s)
    try:
        s.remove(ALICE, binding().key)
        assert writing.wait(10)  # the delete is in flight...
        again = binding(cseq=2)
        s.put(again)  # ...so the re-added binding takes its row id
        assert again.row_id == 1
    finally:
        release.set()
    s.close()
    assert rows(db) == [(1, ALICE, again.key, again.contact, 2)]


def test_re_add_while_a_failed_removal_waits_for_its_retry_leaves_one_row(
    db: Path, clock: FakeClock
) -> None:
    s = LocationService(db, clock=clock, flush_interval=60)  # writes only when asked
    s.open()
    s.put(binding(cseq=1))
    s.flush()
    fail_next_write(s)
    s.remove(ALICE, binding().key)
    with pytest.raises(LocationStoreError):
        s.flush()  # the delete failed and is pending again
    again = binding(cseq=2)
    s.put(again)
    assert again.row_id == 1
    s.close()
    assert rows(db) == [(1, ALICE, again.key, again.contact, 2)]


def test_row_ids_survive_a_restart(db: Path, clock: FakeClock) -> None:
    with LocationService(db, clock=clock, flush_interval=0.05) as s:
        for i in range(5):
            s.put(binding(contact=f"sip:a@{i}"))
        s.remove(ALICE, "sip:a@4")  # the highest id is gone: not reused after the restart
    with LocationService(db, clock=clock, flush_interval=0.05) as r:
        assert sorted(b.row_id for b in r.lookup(ALICE)) == [1, 2, 3, 4]
        refresh = binding(contact="sip:a@2", cseq=9)
        r.put(refresh)
        assert refresh.row_id == 3
        new = binding(contact="sip:a@new")
        r.put(new)
        assert new.row_id == 5
        r.remove(ALICE, "sip:a@0")
    assert [(row[0], row[3], row[4]) for row in rows(db)] == [
        (2, "sip:a@1", 1),
        (3, "sip:a@2", 9),
        (4, "sip:a@3", 1),
        (5, "sip:a@new", 1),
    ]


PERSISTED_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "remove", "remove_aor", "sweep", "tick", "flush"]),
        st.integers(0, 1),  # aor
        st.integers(0, 4),  # contact
        st.integers(1, 30),  # expires
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PERSISTED_OPS)
def test_file_holds_one_row_per_binding(ops: list[tuple[str, int, int, int]]) -> None:
    """After any changes (flushed at random points), the file holds exactly the store's bindings,
    one row each, under their own row ids; a reopen restores the unexpired ones."""
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bindings.sqlite"
        store = LocationService(db, clock=clock, flush_interval=60)  # writes only when asked
        store.open()
        cseq = 0
        for op, a, c, expires in ops:
            aor = f"sip:u{a}@example.com"
            if op == "put":
                cseq += 1
                store.put(Binding(aor, f"sip:u@h{c}", clock.now + expires, "cid", cseq))
            elif op == "remove":
                store.remove(aor, f"sip:u@h{c}")
            elif op == "remove_aor":
                store.remove_aor(aor)
            elif op == "sweep":
                store.sweep()
            elif op == "tick":
                clock.now += expires / 3
            else:
                store.flush()
        stored = {
            (b.row_id, b.aor, b.key, b.cseq) for a in store.aors() for b in store._iter_aor(a)
        }
        live = {(b.aor, b.key): b for a in store.aors() for b in store.lookup(a)}
        store.close()
        with raw(db) as conn:
            on_disk = conn.execute("SELECT id, aor, key, cseq FROM bindings").fetchall()
        assert len(on_disk) == len(stored) and set(on_disk) == stored
        with LocationService(db, clock=clock) as again:
            assert {(b.aor, b.key): b for a in again.aors() for b in again.lookup(a)} == live


# The version 1 schema, as operators have it on disk (kept literally: the migration's input).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS bindings (
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
    registered_at REAL    NOT NULL,
    PRIMARY KEY (aor, key)
)
"""
INSERT_V1 = (
    "INSERT OR REPLACE INTO bindings (aor, key, contact, expires_at, call_id, cseq, q,"
    " instance_id, reg_id, source, path, user_agent, backup, registered_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


@pytest.mark.parametrize("layout", ["", " WITHOUT ROWID"])
def test_version_1_file_is_migrated_in_place(db: Path, clock: FakeClock, layout: str) -> None:
    """Both version-1 layouts (earlier releases wrote a WITHOUT ROWID table) migrate."""
    v1 = [full_binding(i) for i in (1, 2, 5)]
    expired = binding(aor=BOB, contact="sip:b@old", expires=-1)
    db.parent.mkdir(parents=True)
    with raw(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA_V1.rstrip() + layout)
        conn.execute("PRAGMA user_version=1")
        for b in (*v1, expired):
            conn.execute(
                INSERT_V1,
                (b.aor, b.key, b.contact, b.expires_at, b.call_id, b.cseq, b.q, b.instance_id,
                 b.reg_id, b.source, json.dumps(list(b.path)) if b.path else None,
                 b.user_agent, int(b.backup), b.registered_at),
            )  # fmt: skip
    want = {(b.aor, b.key): dataclasses.replace(b, flow_id=None) for b in v1}

    r = reopen(db, clock)
    try:
        got = {(b.aor, b.key): b for aor in r.aors() for b in r.lookup(aor)}
        assert got == want
        ids = {key: b.row_id for key, b in got.items()}
        assert len(set(ids.values())) == 3 and min(ids.values()) >= 1  # numbered afresh
        with r._lock:
            next_id = r._next_row_id
        assert next_id > max(ids.values())
        changed = dataclasses.replace(v1[0], cseq=500)
        r.put(changed)
        assert changed.row_id == ids[(v1[0].aor, v1[0].key)]
        r.remove(v1[1].aor, v1[1].key)
        added = full_binding(9)
        r.put(added)
        assert added.row_id == next_id
    finally:
        r.close()
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == []
        assert conn.execute("SELECT id, cseq FROM bindings ORDER BY id").fetchall() == sorted(
            [
                (changed.row_id, 500),
                (ids[(v1[2].aor, v1[2].key)], v1[2].cseq),
                (added.row_id, added.cseq),
            ]
        )
    want = {(b.aor, b.key): dataclasses.replace(b, flow_id=None) for b in (changed, v1[2], added)}
    with LocationService(db, clock=clock) as again:
        assert {(b.aor, b.key): b for a in again.aors() for b in again.lookup(a)} == want


def test_failed_migration_leaves_the_version_1_file_unchanged(
    db: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.parent.mkdir(parents=True)
    with raw(db) as conn:
        conn.execute(SCHEMA_V1)
        conn.execute("PRAGMA user_version=1")
        b = binding()
        conn.execute(
            INSERT_V1,
            (b.aor, b.key, b.contact, b.expires_at, b.call_id, b.cseq, None, None, None,
             b.source, None, None, 0, b.registered_at),
        )  # fmt: skip
    broken = (*location_module._MIGRATE_V1[:-1], "ALTER TABLE no_such_table RENAME TO x")
    monkeypatch.setattr(location_module, "_MIGRATE_V1", broken)
    with pytest.raises(LocationStoreError, match="no_such_table"):
        LocationService(db, clock=clock).open()
    monkeypatch.undo()
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert tables == [("bindings",)]
    with LocationService(db, clock=clock) as r:  # and a later open migrates it
        assert r.lookup(ALICE) == [binding()]


def test_open_twice_is_an_error(opened: LocationService) -> None:
    with pytest.raises(RuntimeError):
        opened.open()


def test_bad_flush_interval() -> None:
    with pytest.raises(ValueError):
        LocationService(None, flush_interval=0)


# ------------------------------------------------------------------------------ bad files


def test_corrupt_file_raises_a_clear_error(db: Path, clock: FakeClock) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an SQLite database, just some garbage bytes" * 100)
    with pytest.raises(LocationStoreError) as info:
        LocationService(db, clock=clock).open()
    message = str(info.value)
    assert str(db) in message and "move it aside" in message
    assert db.read_bytes().startswith(b"this is not")  # never touched, never deleted


def test_newer_schema_version_is_refused(db: Path, clock: FakeClock) -> None:
    with LocationService(db, clock=clock):
        pass
    with raw(db) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(LocationStoreError, match="schema version"):
        LocationService(db, clock=clock).open()


def test_foreign_database_is_refused(db: Path, clock: FakeClock) -> None:
    db.parent.mkdir(parents=True)
    with raw(db) as conn:
        conn.execute("CREATE TABLE users (aor TEXT)")
    with pytest.raises(LocationStoreError, match="not a bindings file"):
        LocationService(db, clock=clock).open()


def test_a_file_in_use_by_another_store_is_refused(
    opened: LocationService, db: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(location_module, "BUSY_TIMEOUT", 0.05)
    with pytest.raises(LocationStoreError, match="in use by another process"):
        LocationService(db, clock=clock).open()


# ------------------------------------------------------------------------------ real processes


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


CHILD_PUTS = """
    import sys, time
    from pathlib import Path
    from registrar.location import Binding, LocationService
    store = LocationService(Path({db!r}))
    store.open()
    base = time.time() + 3600
    for i in range(10_000):
        store.put(Binding(
            aor=f"sip:user{{i}}@example.com",
            contact=f"sip:user{{i}}@192.0.2.{{i % 250}}:5061;transport=tls",
            expires_at=base + i / 7,
            call_id=f"call-{{i}}",
            cseq=i,
            flow_id=i,
        ))
"""


def test_bindings_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "fe1-bindings.sqlite"
    proc = _child(
        CHILD_PUTS.format(db=str(db))
        + """
    store.flush()
    print("flushed", flush=True)
    time.sleep(600)
    """
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "flushed\n", proc.stderr.read() if proc.stderr else line
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = LocationService(db)
    try:
        assert store.open() == 10_000
        assert store.aor_count == 10_000
        b = store.lookup("sip:user4242@example.com")
        assert len(b) == 1 and b[0].cseq == 4242 and b[0].flow_id is None
        expiries = sorted(x.expires_at for aor in store.aors() for x in store.lookup(aor))
        base = expiries[0]
        assert expiries == [base + i / 7 for i in range(10_000)]
    finally:
        store.close()


def test_bindings_written_when_the_program_ends_without_close(tmp_path: Path) -> None:
    db = tmp_path / "fe1-bindings.sqlite"
    proc = _child(CHILD_PUTS.format(db=str(db)) + "\n    print('done', flush=True)\n")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out == "done\n"
    store = LocationService(db)
    try:
        assert store.open() == 10_000
    finally:
        store.close()


def test_large_batches_are_written_in_chunks(db: Path, clock: FakeClock) -> None:
    """Batches larger than one statement's rows (and of odd sizes) persist every change."""
    s = LocationService(db, clock=clock, flush_interval=60)  # writes only when asked
    s.open()
    put = [full_binding(i) for i in range(203)]
    for b in put:
        s.put(b)
    s.flush()
    for b in put[:131]:
        s.remove(b.aor, b.key)
    s.flush()
    s.close()
    with raw(db) as conn:
        assert conn.execute("SELECT count(*) FROM bindings").fetchone()[0] == 72
    want = {(b.aor, b.key): dataclasses.replace(b, flow_id=None) for b in put[131:]}
    with LocationService(db, clock=clock) as again:
        assert {(b.aor, b.key): b for a in again.aors() for b in again.lookup(a)} == want
