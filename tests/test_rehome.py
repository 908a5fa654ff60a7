"""Unit tests of :class:`registrar.pool.rehome.Rehomer` (DESIGN.md §4 "Re-homing") with fakes
for the location service, the router and the flow closer.

What is checked: batching (never more than ``batch_users`` AORs per batch, every binding of an
AOR in the same batch), pacing (at most one batch per ``batch_interval``, even across triggers),
the per-batch re-check (a target that went down again gets nobody: flapping), flows closed only
when no other registered AOR uses them and only after the reg event NOTIFYs, the progress
numbers of ``registrar status`` and the 32040/32041 events.

Pacing is measured on the real event loop with short intervals (tens of milliseconds): each
batch's start time is recorded and every window of one interval must hold at most one batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from registrar.location import Binding, LocationService
from registrar.pool.rehome import Rehomer
from registrar.pool.routing import RouteDecision

TOLERANCE = 0.01  # asyncio may wake a timer up to its clock resolution early


# ------------------------------------------------------------------------------ fakes


@dataclass
class FakeBinding:
    aor: str
    key: str
    flow_id: int | None = None


@dataclass
class FakeLocation:
    """The part of :class:`registrar.location.LocationService` the Rehomer uses."""

    bindings: dict[str, list[FakeBinding]] = field(default_factory=dict)
    removed: list[tuple[float, str, str, str]] = field(default_factory=list)
    log: list[tuple[str, Any]] | None = None

    def add(self, aor: str, key: str, flow_id: int | None = None) -> None:
        self.bindings.setdefault(aor, []).append(FakeBinding(aor, key, flow_id))

    def aors(self) -> list[str]:
        return list(self.bindings)

    def lookup(self, aor: str) -> list[FakeBinding]:
        return list(self.bindings.get(aor, ()))

    def remove(self, aor: str, key: str, *, reason: str = "unregistered") -> FakeBinding | None:
        rows = self.bindings.get(aor, [])
        for binding in rows:
            if binding.key == key:
                rows.remove(binding)
                if not rows:
                    del self.bindings[aor]
                self.removed.append((time.monotonic(), aor, key, reason))
                if self.log is not None:
                    self.log.append(("remove", (aor, key)))
                return binding
        return None

    def by_flow(self, flow_id: int) -> list[FakeBinding]:
        return [b for rows in self.bindings.values() for b in rows if b.flow_id == flow_id]

    @property
    def aor_count(self) -> int:
        return len(self.bindings)


def fe(name: str) -> SimpleNamespace:
    return SimpleNamespace(fqdn=f"{name}.contoso.com")


class FakeRouter:
    """``decide(aor)``: per-AOR decisions, default ``local``; ``send(aors, target)`` points
    AORs at another FE, ``keep(aors)`` makes them stay (target down again: backup here)."""

    def __init__(self) -> None:
        self.where: dict[str, RouteDecision] = {}
        self.calls = 0

    def decide(self, aor: str) -> RouteDecision:
        self.calls += 1
        return self.where.get(aor, RouteDecision("local"))

    def send(self, aors: Iterable[str], target: str) -> None:
        for aor in aors:
            self.where[aor] = RouteDecision("redirect", target=fe(target))

    def keep(self, aors: Iterable[str], kind: str = "backup") -> None:
        for aor in aors:
            self.where[aor] = RouteDecision(kind)

    def other_pool(self, aors: Iterable[str], pool: str) -> None:
        for aor in aors:
            self.where[aor] = RouteDecision("other-pool", pool_fqdn=pool)


class Harness:
    """A Rehomer wired to fakes, recording batches (from the removals), NOTIFY waits and closed
    flows in one ordered log."""

    def __init__(
        self,
        *,
        batch_users: int = 3,
        batch_interval: float = 0.05,
        notified: Callable[[list[str], float], Any] | None = None,
        with_notified: bool = True,
    ) -> None:
        self.log: list[tuple[str, Any]] = []
        self.location = FakeLocation(log=self.log)
        self.router = FakeRouter()
        self.closed: list[int] = []
        self.notify_calls: list[tuple[list[str], float]] = []

        async def default_notified(aors: list[str], timeout: float) -> None:
            self.notify_calls.append((list(aors), timeout))
            self.log.append(("notified", tuple(aors)))

        def close_flow(flow_id: int) -> None:
            self.closed.append(flow_id)
            self.log.append(("close", flow_id))

        self.rehomer = Rehomer(
            self.location,
            self.router,
            close_flow=close_flow,
            notified=(notified or default_notified) if with_notified else None,
            batch_users=batch_users,
            batch_interval=batch_interval,
        )

    def batches(self) -> list[list[str]]:
        """The AORs removed per batch: removals between two ``notified`` entries."""
        out: list[list[str]] = []
        current: list[str] = []
        for kind, value in self.log:
            if kind == "remove":
                if value[0] not in current:
                    current.append(value[0])
            elif kind == "notified" and current:
                out.append(current)
                current = []
        if current:
            out.append(current)
        return out

    def bind(self, users: Iterable[str]) -> None:
        """One binding (key ``k``, no flow) of each AOR of ``users``."""
        for aor in users:
            self.location.add(aor, "k")

    def peer_up(self, users: list[str], target: str = "fe2") -> int:
        """Point ``users`` at FE ``target`` and trigger a run for ``peer up: TARGET``; returns
        how many AORs are pending then."""
        self.router.send(users, target)
        return self.rehomer.trigger(f"peer up: {target}.contoso.com")

    async def until_removed(self, count: int, timeout: float = 2.0) -> None:
        """Wait until ``count`` bindings have been removed (TimeoutError past ``timeout`` s)."""
        await asyncio.wait_for(_until(lambda: len(self.location.removed) == count), timeout)

    async def run_until_idle(self, timeout: float = 5.0) -> None:
        await asyncio.sleep(0)
        await asyncio.wait_for(self.rehomer.idle.wait(), timeout)


@pytest.fixture
async def harness() -> Any:
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        h = Harness(**kwargs)
        h.rehomer.start()
        made.append(h)
        return h

    yield make
    for h in made:
        await h.rehomer.stop()


def aors(n: int, prefix: str = "u") -> list[str]:
    return [f"sip:{prefix}{i:03d}@contoso.com" for i in range(n)]


def events(caplog: pytest.LogCaptureFixture, event_id: int) -> list[dict[str, str]]:
    rows = []
    for record in caplog.records:
        if record.name != "registrar.events":
            continue
        message = record.getMessage()
        if not message.startswith(f"event={event_id} "):
            continue
        rows.append(dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', message)))
    return rows


# ------------------------------------------------------------------------------ batching


async def test_batches_never_exceed_batch_users_and_keep_an_aors_bindings_together(
    harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="registrar.events")
    h = harness(batch_users=4, batch_interval=0.02)
    users = aors(23)
    flow = 100
    for i, aor in enumerate(users):
        for k in range(1 + i % 3):  # 1, 2 or 3 bindings per AOR
            flow += 1
            h.location.add(aor, f"k{k}", flow)
    assert h.peer_up(users) == 23
    await h.run_until_idle()

    batches = h.batches()
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 3]
    assert sorted(a for b in batches for a in b) == sorted(users)
    # Every binding of an AOR is removed in the batch that takes the AOR, never split.
    for batch in batches:
        for aor in batch:
            assert aor not in h.location.bindings
    batch_of = {aor: n for n, batch in enumerate(batches) for aor in batch}
    notified_at = [i for i, (kind, _) in enumerate(h.log) if kind == "notified"]
    for index, (kind, value) in enumerate(h.log):
        if kind == "remove":
            # the removal belongs to the batch whose NOTIFY wait comes next
            batch = next(n for n, at in enumerate(notified_at) if at > index)
            assert batch == batch_of[value[0]], f"{value} removed outside its AOR's batch"
    assert {reason for *_, reason in h.location.removed} == {"deactivated"}
    assert len(h.location.removed) == sum(1 + i % 3 for i in range(23))

    batch_events = events(caplog, 32040)
    assert [int(e["aors"]) for e in batch_events] == [4, 4, 4, 4, 4, 3]
    assert [int(e["batch"]) for e in batch_events] == [1, 2, 3, 4, 5, 6]
    assert [int(e["pending"]) for e in batch_events] == [19, 15, 11, 7, 3, 0]
    per_batch_bindings = [sum(1 + users.index(a) % 3 for a in b) for b in batches]
    assert [int(e["bindings"]) for e in batch_events] == per_batch_bindings
    assert all(e["target"] == f"fe2.contoso.com:{e['aors']}" for e in batch_events)
    done = events(caplog, 32041)
    assert len(done) == 1 and int(done[0]["aors"]) == 23


@pytest.mark.parametrize("batch_users", [1, 7, 50])
async def test_batch_size_bound_for_several_sizes(harness: Any, batch_users: int) -> None:
    h = harness(batch_users=batch_users, batch_interval=0.005)
    users = aors(30)
    h.bind(users)
    h.router.send(users, "fe3")
    h.rehomer.trigger("topology v2")
    await h.run_until_idle()
    sizes = [len(b) for b in h.batches()]
    assert max(sizes) <= batch_users
    assert sum(sizes) == 30
    assert len(sizes) == -(-30 // batch_users)


async def test_only_aors_that_no_longer_belong_here_move(harness: Any) -> None:
    h = harness(batch_users=10, batch_interval=0.01)
    users = aors(12)
    h.bind(users)
    h.router.send(users[:4], "fe2")
    h.router.other_pool(users[4:6], "pool2.contoso.com")
    h.router.keep(users[6:8], "backup")
    h.router.keep(users[8:10], "unavailable")  # no quorum: nobody is moved anywhere
    # users[10:] stay "local"
    assert h.rehomer.trigger("topology v3") == 6
    await h.run_until_idle()
    moved = {aor for _, aor, _, _ in h.location.removed}
    assert moved == set(users[:6])
    assert h.rehomer.progress.targets == {"fe2.contoso.com": 4, "pool2.contoso.com": 2}


async def test_trigger_twice_queues_each_aor_once(harness: Any) -> None:
    h = harness(batch_users=2, batch_interval=0.03)
    users = aors(6)
    h.bind(users)
    assert h.peer_up(users) == 6
    assert h.rehomer.trigger("topology v2") == 6  # nothing new: still 6 pending
    await h.run_until_idle()
    assert len(h.location.removed) == 6
    assert h.rehomer.progress.aors == 6


# ------------------------------------------------------------------------------- pacing


def _at_most_one_per_window(starts: list[float], interval: float) -> None:
    for earlier, later in itertools.pairwise(starts):
        assert later - earlier >= interval - TOLERANCE, (
            f"two batches {later - earlier:.4f}s apart, interval {interval}s: {starts}"
        )


def _batch_starts(h: Harness) -> list[float]:
    """Monotonic time of the first removal of each batch."""
    starts: list[float] = []
    index = 0
    removed = h.location.removed
    for batch in h.batches():
        starts.append(removed[index][0])
        index += sum(1 for r in removed[index:] if r[1] in batch)
    return starts


async def test_one_batch_per_interval(harness: Any) -> None:
    interval = 0.1
    h = harness(batch_users=5, batch_interval=interval)
    users = aors(30)
    h.bind(users)
    h.router.send(users, "fe2")
    began = time.monotonic()
    h.rehomer.trigger("peer up: fe2.contoso.com")
    await h.run_until_idle()
    took = time.monotonic() - began
    starts = _batch_starts(h)
    assert len(starts) == 6
    _at_most_one_per_window(starts, interval)
    # Count batches in every window [t, t + interval) that starts at a batch: exactly one.
    for t in starts:
        assert sum(1 for s in starts if t <= s < t + interval - TOLERANCE) == 1
    # The first batch goes at once; six batches need five intervals, not much more.
    assert starts[0] - began < interval / 2
    assert took >= 5 * interval - TOLERANCE
    assert took < 5 * interval + 2.0  # generous: a loaded machine schedules late, never early


async def test_pacing_holds_across_triggers(harness: Any) -> None:
    """A new run started right after the previous one ended waits out the interval."""
    interval = 0.15
    h = harness(batch_users=3, batch_interval=interval)
    first, second = aors(3, "a"), aors(3, "b")
    h.bind(first + second)
    h.peer_up(first)
    await h.run_until_idle()
    h.peer_up(second, "fe3")
    await h.run_until_idle()
    starts = _batch_starts(h)
    assert len(starts) == 2
    _at_most_one_per_window(starts, interval)


async def test_trigger_during_a_run_joins_the_queue_at_the_same_pace(harness: Any) -> None:
    interval = 0.08
    h = harness(batch_users=2, batch_interval=interval)
    first, second = aors(4, "a"), aors(4, "b")
    h.bind(first + second)
    h.peer_up(first)
    await asyncio.sleep(interval / 2)  # the first batch is done, the second not yet
    assert h.peer_up(second, "fe3") == 6
    await h.run_until_idle()
    batches = h.batches()
    assert [len(b) for b in batches] == [2, 2, 2, 2]
    assert batches[-2:] == [second[:2], second[2:]]  # FIFO: the later trigger goes last
    _at_most_one_per_window(_batch_starts(h), interval)


# ---------------------------------------------------------------------------- re-check


async def test_recheck_per_batch_target_down_again_moves_nobody_more(
    harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Flapping: the target goes down after the first batch; the rest stay in backup mode."""
    caplog.set_level(logging.INFO, logger="registrar.events")
    interval = 0.1
    h = harness(batch_users=3, batch_interval=interval)
    users = aors(12)
    h.bind(users)
    h.peer_up(users)
    await h.until_removed(3)
    h.router.keep(users, "backup")  # fe2 is down again: we are these AORs' registrar
    await h.run_until_idle()
    assert {aor for _, aor, _, _ in h.location.removed} == set(users[:3])
    assert sorted(h.location.bindings) == sorted(users[3:])
    progress = h.rehomer.progress
    assert progress.pending == 0 and progress.aors == 3 and progress.batches == 1
    assert len(events(caplog, 32040)) == 1
    # fe2 comes back: the rest go now (a new run).
    assert h.peer_up(users) == 9
    await h.run_until_idle()
    assert not h.location.bindings
    assert h.rehomer.progress.batches == 4


async def test_recheck_follows_a_changed_target(harness: Any) -> None:
    h = harness(batch_users=2, batch_interval=0.05)
    users = aors(4)
    h.bind(users)
    h.peer_up(users)
    await h.until_removed(2)
    h.router.send(users[2:], "fe3")  # fe2 went down, fe3 is next in their sequences
    await h.run_until_idle()
    assert h.rehomer.progress.targets == {"fe2.contoso.com": 2, "fe3.contoso.com": 2}


async def test_an_aor_that_left_meanwhile_is_skipped_without_using_a_batch_slot(
    harness: Any,
) -> None:
    h = harness(batch_users=3, batch_interval=0.05)
    users = aors(6)
    h.bind(users)
    h.peer_up(users)
    await h.until_removed(3)
    h.location.bindings.pop(users[3])  # unregistered by its client meanwhile
    h.router.keep([users[3]], "local")
    await h.run_until_idle()
    assert [len(b) for b in h.batches()] == [3, 2]


# ------------------------------------------------------------------------------- flows


async def test_flows_closed_only_when_no_other_aor_uses_them(harness: Any) -> None:
    h = harness(batch_users=2, batch_interval=0.03)
    a, b, c, d, e = aors(5)
    h.location.add(a, "k", flow_id=1)  # flow 1: a alone
    h.location.add(b, "k", flow_id=2)  # flow 2: b (moves) and e (stays here)
    h.location.add(e, "k", flow_id=2)
    h.location.add(c, "k1", flow_id=3)  # flow 3: c and d, moved in different batches
    h.location.add(c, "k2", flow_id=4)  # flow 4: c's second binding
    h.location.add(d, "k", flow_id=3)
    h.location.add(d, "k2", flow_id=None)  # no flow (UDP, or restored after a restart)
    h.peer_up([a, b, c, d])
    await h.run_until_idle()
    assert h.batches() == [[a, b], [c, d]]
    assert sorted(h.closed) == [1, 3, 4]  # flow 2 still carries e; flow 3 once, after d
    assert h.closed.count(3) == 1
    assert e in h.location.bindings
    # Flows close only after the batch's NOTIFYs went out.
    for kind, value in h.log:
        if kind == "close":
            index = h.log.index((kind, value))
            assert any(k == "notified" for k, _ in h.log[:index])
    close_1 = h.log.index(("close", 1))
    notified_1 = h.log.index(("notified", (a, b)))
    assert notified_1 < close_1


async def test_flow_shared_across_batches_closes_after_the_last_one(harness: Any) -> None:
    h = harness(batch_users=1, batch_interval=0.03)
    a, b = aors(2)
    h.location.add(a, "k", flow_id=7)
    h.location.add(b, "k", flow_id=7)
    h.peer_up([a, b])
    await h.run_until_idle()
    assert h.closed == [7]
    assert h.log.index(("close", 7)) > h.log.index(("notified", (b,)))


async def test_notified_gets_the_batch_and_a_timeout(harness: Any) -> None:
    h = harness(batch_users=3, batch_interval=0.2)
    users = aors(5)
    h.bind(users)
    h.peer_up(users)
    await h.run_until_idle()
    assert [calls for calls, _ in h.notify_calls] == [users[:3], users[3:]]
    assert all(timeout == 0.5 for _, timeout in h.notify_calls)  # max(0.5, interval)


async def test_failing_notified_still_closes_flows(harness: Any) -> None:
    async def broken(aors: list[str], timeout: float) -> None:
        raise RuntimeError("reg event service gone")

    await _move_one_aor_on_flow_9(harness(batch_users=5, batch_interval=0.01, notified=broken))


async def test_without_notified_flows_close_right_after_removal(harness: Any) -> None:
    await _move_one_aor_on_flow_9(harness(batch_users=5, batch_interval=0.01, with_notified=False))


async def _move_one_aor_on_flow_9(h: Harness) -> None:
    """Move one AOR whose only binding is on flow 9 to fe2; the flow must be closed."""
    h.location.add(aors(1)[0], "k", flow_id=9)
    h.peer_up(aors(1))
    await h.run_until_idle()
    assert h.closed == [9]


async def test_with_the_real_location_service_flows_and_reasons(harness: Any) -> None:
    """The same with :class:`LocationService` (in memory): its ``by_flow`` decides."""
    location = LocationService(None)
    location.open()
    seen: list[tuple[str, str]] = []
    location.add_listener(lambda event, aor, binding: seen.append((event, aor)))
    now = time.time()
    a, b, c = aors(3)

    def put(aor: str, contact: str, flow_id: int | None) -> None:
        location.put(
            Binding(
                aor=aor,
                contact=contact,
                expires_at=now + 600,
                call_id=f"{contact}-cid",
                cseq=1,
                flow_id=flow_id,
                instance_id="<urn:uuid:00000000-0000-0000-0000-000000000001>",
                reg_id=1 if flow_id else None,
            ),
            reason="created",
        )

    put(a, "sip:a@192.0.2.1:5061;transport=tls", 11)
    put(b, "sip:b@192.0.2.1:5061;transport=tls", 11)
    put(c, "sip:c@192.0.2.2:5061;transport=tls", 12)
    closed: list[int] = []
    router = FakeRouter()
    router.send([a, c], "fe4")
    rehomer = Rehomer(
        location, router, close_flow=closed.append, notified=None, batch_users=10,
        batch_interval=0.01,
    )  # fmt: skip
    rehomer.start()
    try:
        assert rehomer.trigger("peer up: fe4.contoso.com") == 2
        await asyncio.sleep(0)
        await asyncio.wait_for(rehomer.idle.wait(), 5)
    finally:
        await rehomer.stop()
        location.close()
    assert closed == [12]  # flow 11 still carries b
    deactivated = sorted(aor for event, aor in seen if event == "deactivated")
    assert deactivated == [a, c]
    assert location.aors() == [b]


# ------------------------------------------------------------------------------ progress


async def test_progress_numbers(harness: Any) -> None:
    interval = 0.1
    h = harness(batch_users=4, batch_interval=interval)
    users = aors(10)
    for i, aor in enumerate(users):
        h.location.add(aor, "k1")
        if i % 2:
            h.location.add(aor, "k2")
    h.router.send(users[:6], "fe2")
    h.router.send(users[6:], "fe3")
    progress = h.rehomer.progress
    assert progress.to_json() == {
        "pending": 0, "batches": 0, "last_batch": None, "aors": 0, "bindings": 0,
        "draining": False, "reason": None, "targets": {},
    }  # fmt: skip
    before = time.time()
    assert h.rehomer.trigger("peer up: fe2.contoso.com") == 10
    assert progress.pending == 10 and progress.reason == "peer up: fe2.contoso.com"
    assert not h.rehomer.idle.is_set()
    await asyncio.wait_for(_until(lambda: progress.batches == 1), 2.0)
    assert progress.pending == 6 and progress.aors == 4 and progress.bindings == 6
    assert progress.last_batch is not None and before <= progress.last_batch <= time.time()
    first_batch = progress.last_batch
    await h.run_until_idle()
    status = h.rehomer.status()
    assert status["pending"] == 0
    assert status["batches"] == 3
    assert status["aors"] == 10
    assert status["bindings"] == 15
    assert status["targets"] == {"fe2.contoso.com": 6, "fe3.contoso.com": 4}
    assert status["last_batch"] >= first_batch + interval - TOLERANCE
    assert h.rehomer.idle.is_set()
    # Totals keep adding up over runs.
    h.bind(aors(2, "z"))
    h.router.send(aors(2, "z"), "fe2")
    h.rehomer.trigger("topology v2")
    await h.run_until_idle()
    assert h.rehomer.status()["aors"] == 12
    assert h.rehomer.status()["targets"]["fe2.contoso.com"] == 8
    assert h.rehomer.status()["reason"] == "topology v2"


async def test_nothing_to_move_stays_idle(harness: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="registrar.events")
    h = harness()
    h.bind(aors(5))
    assert h.rehomer.trigger("peer up: fe2.contoso.com") == 0
    assert h.rehomer.idle.is_set()
    await asyncio.sleep(0.05)
    assert not h.location.removed and h.rehomer.progress.reason is None
    assert not events(caplog, 32040) and not events(caplog, 32041)


async def test_stop_leaves_pending_aors_in_place(harness: Any) -> None:
    h = harness(batch_users=1, batch_interval=10.0)
    users = aors(3)
    h.bind(users)
    h.peer_up(users)
    await h.until_removed(1)
    await h.rehomer.stop()
    assert sorted(h.location.bindings) == users[1:]


async def _until(predicate: Callable[[], bool], poll: float = 0.002) -> None:
    while not predicate():
        await asyncio.sleep(poll)
