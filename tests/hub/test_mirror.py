"""The plug-state mirror: only marked plugs are looked at, every marked plug is written, and short
transitional states fold into the one that follows (``plug_state_settle_s``). Pure: a recording store,
hub time in milliseconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.health import Metrics
from chargectl.services.hub.mirror import STATUS_DOC, Mirror, Writer
from chargectl.services.hub.params import DEFAULTS
from chargectl.services.hub.registry import HubPlug
from chargectl.services.hub.settings import HubSettings

T0_MS = 1_700_000_000_000
S = m.Status


class Written:
    """The one store method the mirror uses, recording each document."""

    def __init__(self) -> None:
        self.docs: list[codec.PlugState] = []

    def put_plug_state(self, state: codec.PlugState) -> None:
        self.docs.append(state)

    def statuses(self) -> list[tuple[str, int]]:
        return [(d.plug_mac, d.status) for d in self.docs]


def mirror(
    settle_s: float, min_gap_s: float = 0.0, transitional_s: float = 0.0, detail_s: float = 0.0
) -> tuple[Mirror, Written]:
    store = Written()
    mir = Mirror(store, Metrics(), lambda _mac: "ev", min_gap_s, settle_s, transitional_s, detail_s)  # type: ignore[arg-type]
    return mir, store


def hub_mirror() -> tuple[Mirror, Written]:
    """A mirror with the hub's default settings."""
    d = HubSettings()
    return mirror(
        d.plug_state_settle_s,
        d.plug_state_min_interval_s,
        d.plug_state_transitional_s,
        d.plug_state_detail_s,
    )


def plug(mac: str, status: m.Status = S.AVAILABLE) -> HubPlug:
    p = HubPlug.of(m.new_state(mac, DEFAULTS["ev"], T0_MS / 1000), "site-a")
    p.state.status = status
    p.mirrored_ms = T0_MS - 60_000  # its document (status ``status``) was written a minute ago
    return p


def change(mir: Mirror, p: HubPlug, to: m.Status, now_ms: int) -> None:
    """What the hub does on a machine's ``StateChanged``."""
    was = p.state.status
    p.state.status = to
    if to is S.AVAILABLE:
        p.state.session = None
    elif p.state.session is None:
        tariff = Tariff(price_per_kwh_minor=Decimal(30))
        p.state.session = m.Session("s1", "u1", "r1", tariff, 1000, now_ms, 0)
    mir.mark(p, now_ms, was)


def test_every_marked_plug_and_only_those_is_written() -> None:
    mir, store = mirror(settle_s=0)
    plugs = {f"AA{i:04d}": plug(f"AA{i:04d}") for i in range(1000)}
    changed = ["AA0003", "AA0500", "AA0999"]
    for mac in changed:
        change(mir, plugs[mac], S.FAULTED, T0_MS)
    assert mir.flush(T0_MS + 1000) == 3
    assert sorted(store.statuses()) == [(mac, STATUS_DOC[S.FAULTED]) for mac in changed]
    assert mir.flush(T0_MS + 2000) == 0  # written: nothing pending
    change(mir, plugs["AA0042"], S.OFFLINE, T0_MS + 2500)
    mir.flush(T0_MS + 3000)
    assert store.statuses()[-1] == ("AA0042", STATUS_DOC[S.OFFLINE])
    assert len(store.docs) == 4
    assert not mir.pending


def test_a_new_plug_or_a_moved_plug_is_written_whatever_it_shows() -> None:
    mir, store = mirror(settle_s=5)
    p = plug("AA0001")
    p.mirrored_ms = 0  # never written
    mir.mark(p, T0_MS)  # bound: no status change to compare with
    assert mir.flush(T0_MS) == 1  # its first document: at once
    p.site_id = "site-b"
    mir.mark(p, T0_MS + 6000)  # moved to another site, same status: still written, once settled
    assert mir.flush(T0_MS + 10_999) == 0
    assert mir.flush(T0_MS + 11_000) == 1
    assert [d.site_id for d in store.docs] == ["site-a", "site-b"]


def test_authorized_folds_into_charging_and_finishing_into_available() -> None:
    mir, store = mirror(settle_s=5, transitional_s=60)
    p = plug("AA0001")
    change(mir, p, S.AUTHORIZED, T0_MS)
    assert mir.flush(T0_MS + 30_000) == 0  # AUTHORIZED until the next telemetry flush, 30 s on
    change(mir, p, S.CHARGING, T0_MS + 32_000)
    assert mir.flush(T0_MS + 34_000) == 0
    assert mir.flush(T0_MS + 36_999) == 0  # CHARGING has held 4.999 s
    assert mir.flush(T0_MS + 37_000) == 1
    assert store.docs[-1].status == STATUS_DOC[S.CHARGING] and store.docs[-1].session_id == "s1"
    change(mir, p, S.FINISHING, T0_MS + 3_600_000)
    mir.flush(T0_MS + 3_620_000)
    change(mir, p, S.AVAILABLE, T0_MS + 3_630_000)  # the relay's "off" confirmed in the next batch
    mir.flush(T0_MS + 3_635_000)
    assert [d.status for d in store.docs] == [STATUS_DOC[S.CHARGING], STATUS_DOC[S.AVAILABLE]]
    assert store.docs[-1].session_id == ""


def test_a_state_that_reverts_within_the_settle_time_writes_nothing() -> None:
    mir, store = mirror(settle_s=5)
    p = plug("AA0001", S.CHARGING)
    tariff = Tariff(price_per_kwh_minor=Decimal(30))
    p.state.session = m.Session("s1", "u1", "r1", tariff, 1000, T0_MS, 0)
    change(mir, p, S.SUSPENDED_EV, T0_MS)  # the car paused for two seconds
    change(mir, p, S.CHARGING, T0_MS + 2000)
    for t in range(0, 20_000, 1000):
        mir.flush(T0_MS + t)
    assert store.docs == []
    assert not mir.pending
    # but a plug that went OFFLINE and came back AVAILABLE (its document said AVAILABLE) also writes nothing
    q = plug("AA0002")
    change(mir, q, S.OFFLINE, T0_MS)
    change(mir, q, S.AVAILABLE, T0_MS + 3000)
    mir.flush(T0_MS + 9000)
    assert store.docs == []


def test_a_fault_an_operator_disable_and_out_of_credit_are_written_at_once() -> None:
    mir, store = mirror(settle_s=30)
    for i, status in enumerate((S.FAULTED, S.UNAVAILABLE, S.SUSPENDED_EVSE)):
        p = plug(f"AA000{i}", S.CHARGING)
        change(mir, p, status, T0_MS)
    assert mir.flush(T0_MS + 1) == 3
    assert [d.status for d in store.docs] == [
        STATUS_DOC[s] for s in (S.FAULTED, S.UNAVAILABLE, S.SUSPENDED_EVSE)
    ]


def test_a_plug_that_keeps_changing_is_still_written_within_three_settle_times() -> None:
    mir, _store = mirror(settle_s=5)
    p = plug("AA0001")
    statuses = [S.OFFLINE, S.AVAILABLE]
    written_at = None
    for t in range(0, 60_000, 2000):
        change(mir, p, statuses[t // 2000 % 2], T0_MS + t)  # flaps every 2 s, never holds 5 s
        if mir.flush(T0_MS + t):
            written_at = t
            break
    assert written_at == 16_000  # the first flush once it had waited 3 x 5 s (15 s), not before


def test_the_minimum_interval_still_coalesces_later_changes() -> None:
    mir, store = mirror(settle_s=0, min_gap_s=30)
    p = plug("AA0001", S.CHARGING)
    p.mirrored_ms = T0_MS
    change(mir, p, S.FAULTED, T0_MS + 1000)
    assert mir.flush(T0_MS + 29_999) == 0
    assert mir.flush(T0_MS + 30_000) == 1
    assert store.docs[-1].status == STATUS_DOC[S.FAULTED]


def test_settle_zero_writes_every_change_on_the_next_flush() -> None:
    mir, store = mirror(settle_s=0)
    p = plug("AA0001")
    for i, status in enumerate((S.AUTHORIZED, S.CHARGING, S.FINISHING, S.AVAILABLE)):
        change(mir, p, status, T0_MS + i * 1000)
        mir.flush(T0_MS + i * 1000)
    assert [d.status for d in store.docs] == [
        STATUS_DOC[s] for s in (S.AUTHORIZED, S.CHARGING, S.FINISHING, S.AVAILABLE)
    ]


def test_a_transitional_state_that_lasts_is_written() -> None:
    mir, store = mirror(settle_s=5, transitional_s=60)
    p = plug("AA0001")
    change(mir, p, S.AUTHORIZED, T0_MS)  # the car does not draw
    assert mir.flush(T0_MS + 59_999) == 0
    assert mir.flush(T0_MS + 60_000) == 1
    assert store.docs[-1].status == STATUS_DOC[S.AUTHORIZED]


# ------------------------------------------------- what the app needs: free, occupied, out of service

FREE, OCCUPIED, OUT = "free", "occupied", "out of service"


def app_view(status: m.Status) -> str:
    if status is S.AVAILABLE:
        return FREE
    if status in (S.FAULTED, S.UNAVAILABLE, S.OFFLINE):
        return OUT
    return OCCUPIED


DOC_STATUS = {v: k for k, v in STATUS_DOC.items()}


def test_a_car_that_tapers_off_and_finishes_writes_occupied_then_free_and_nothing_between() -> None:
    mir, store = hub_mirror()
    p = plug("AA0001")
    t = T0_MS
    change(mir, p, S.AUTHORIZED, t)
    change(mir, p, S.CHARGING, t + 31_000)  # the agent's next flush shows the load
    for dt in range(0, 3 * 3600_000, 1000):  # three hours of charging, then the car is full
        mir.flush(t + dt)
    change(mir, p, S.SUSPENDED_EV, t + 3 * 3600_000)
    change(mir, p, S.CHARGING, t + 3 * 3600_000 + 40_000)  # it tapers: draws again, rests again
    change(mir, p, S.SUSPENDED_EV, t + 3 * 3600_000 + 100_000)
    change(mir, p, S.FINISHING, t + 3 * 3600_000 + 700_000)  # complete_after_s (600 s) of rest
    change(mir, p, S.AVAILABLE, t + 3 * 3600_000 + 730_000)  # the final counter reading: billed
    for dt in range(3 * 3600_000, 4 * 3600_000, 1000):
        mir.flush(t + dt)
    assert [(d.status, d.session_id) for d in store.docs] == [
        (STATUS_DOC[S.CHARGING], "s1"),
        (STATUS_DOC[S.AVAILABLE], ""),
    ]
    assert store.docs[1].updated_at_ms <= t + 3 * 3600_000 + 730_000 + mir.shown_within_ms()
    assert not mir.pending


def test_a_car_that_rests_longer_than_the_detail_time_is_written_once_per_detail_time() -> None:
    mir, store = hub_mirror()
    p = plug("AA0001", S.CHARGING)
    tariff = Tariff(price_per_kwh_minor=Decimal(30))
    p.state.session = m.Session("s1", "u1", "r1", tariff, 1000, T0_MS, 0)
    detail_ms = mir.detail_ms
    assert detail_ms >= max(c.complete_after_s for c in DEFAULTS.values()) * 1000
    # Flaps between drawing and resting every 50 s for an hour: at most one write per detail time.
    for k in range(72):
        change(mir, p, (S.SUSPENDED_EV, S.CHARGING)[k % 2], T0_MS + k * 50_000)
        for dt in range(0, 50_000, 1000):
            mir.flush(T0_MS + k * 50_000 + dt)
    assert 1 <= len(store.docs) <= 3600_000 // detail_ms
    assert {d.session_id for d in store.docs} == {"s1"}


def test_out_of_credit_and_its_end_are_not_detail() -> None:
    mir, store = hub_mirror()
    p = plug("AA0001", S.CHARGING)
    tariff = Tariff(price_per_kwh_minor=Decimal(30))
    p.state.session = m.Session("s1", "u1", "r1", tariff, 1000, T0_MS, 0)
    change(mir, p, S.SUSPENDED_EVSE, T0_MS)
    assert mir.flush(T0_MS + 30_000) == 1  # at once (after the minimum interval since the last write)
    change(mir, p, S.CHARGING, T0_MS + 100_000)  # the user topped up: shown once it held the settle time
    assert mir.flush(T0_MS + 100_000 + mir.settle_ms) == 1
    assert [DOC_STATUS[d.status] for d in store.docs] == [S.SUSPENDED_EVSE, S.CHARGING]


def test_hostile_status_walk_the_app_sees_free_occupied_out_and_the_session_within_the_bound() -> None:
    """Random walks through the statuses a plug can take (sessions coming and going, faults, outages,
    flapping loads, out of credit), flushed every second: whenever what the app needs (free, occupied
    or out of service, and whose session) has held for the documented bound, the document says it; an
    out-of-credit or faulted plug within the minimum interval; and no more than one write per change
    of what the app needs plus one per detail time."""
    import random

    rng = random.Random(16)
    tariff = Tariff(price_per_kwh_minor=Decimal(30))
    moves: dict[m.Status, tuple[m.Status, ...]] = {
        S.AVAILABLE: (S.AUTHORIZED, S.OFFLINE, S.FAULTED, S.UNAVAILABLE),
        S.AUTHORIZED: (S.CHARGING, S.FINISHING, S.FAULTED),
        S.CHARGING: (S.SUSPENDED_EV, S.SUSPENDED_EVSE, S.FINISHING, S.FAULTED, S.OFFLINE),
        S.SUSPENDED_EV: (S.CHARGING, S.FINISHING, S.FAULTED),
        S.SUSPENDED_EVSE: (S.CHARGING, S.FINISHING),
        S.FINISHING: (S.AVAILABLE, S.FAULTED),
        S.FAULTED: (S.AVAILABLE,),
        S.OFFLINE: (S.AVAILABLE, S.CHARGING),
        S.UNAVAILABLE: (S.AVAILABLE,),
    }
    for walk in range(20):
        mir, store = hub_mirror()
        bound = mir.shown_within_ms()
        p = plug(f"AA{walk:04d}")
        sessions = 0
        since = status_since = T0_MS  # when what the app needs, and the status, last changed
        need = (FREE, "")
        changes = 0
        t = T0_MS
        end = T0_MS + 6 * 3600_000
        next_change = t + rng.choice((2_000, 20_000, 90_000, 700_000, 1_500_000))
        while t < end:
            if t >= next_change:
                to = rng.choice(moves[p.state.status])
                if to is S.OFFLINE and p.state.session is not None:
                    to = S.FINISHING  # keep the walk simple: an outage only from idle
                was = p.state.status
                p.state.status = to
                if to in (S.AVAILABLE, S.FAULTED, S.UNAVAILABLE, S.OFFLINE):
                    p.state.session = None
                elif p.state.session is None:
                    sessions += 1
                    p.state.session = m.Session(f"s{sessions}", "u1", "r1", tariff, 1000, t, 0)
                mir.mark(p, t, was)
                status_since = t
                now_need = (app_view(to), p.state.session.session_id if p.state.session else "")
                if now_need != need:
                    need, since = now_need, t
                    changes += 1
                next_change = t + rng.choice((2_000, 20_000, 90_000, 700_000, 1_500_000))
            mir.flush(t)
            doc = store.docs[-1] if store.docs else None
            shown = (app_view(DOC_STATUS[doc.status]), doc.session_id) if doc else (FREE, "")
            if t - since >= bound:
                assert shown == need, (walk, t - T0_MS, p.state.status, shown, need)
            if p.state.status in (S.FAULTED, S.SUSPENDED_EVSE) and t - status_since >= mir.min_gap_ms:
                assert DOC_STATUS[store.docs[-1].status] is p.state.status, (walk, t - T0_MS)
            t += 1000
        assert len(store.docs) <= changes + (end - T0_MS) // mir.detail_ms + 1, walk


# ---------------------------------------------------------------------- the writer thread


class Gated(Written):
    """A store whose writes wait for ``gate`` and fail while ``failures`` last (fault injection)."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.failures = failures
        self.attempts = 0

    def put_plug_state(self, state: codec.PlugState) -> None:
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("injected: the store is down")
        super().put_plug_state(state)


def with_writer(store: Gated, settle_s: float = 0) -> tuple[Mirror, Writer, list[str]]:
    failed: list[str] = []
    mir = Mirror(store, Metrics(), lambda _mac: "ev", 0.0, settle_s)  # type: ignore[arg-type]
    writer = Writer(store.put_plug_state, mir.metrics, failed.append)
    writer.start()
    mir.writer = writer
    return mir, writer, failed


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_hung_store_does_not_hold_the_flush_and_the_last_state_of_each_plug_is_stored() -> None:
    store = Gated()
    mir, writer, failed = with_writer(store)
    plugs = {mac: plug(mac) for mac in ("AA0001", "AA0002")}
    change(mir, plugs["AA0001"], S.FAULTED, T0_MS)
    change(mir, plugs["AA0002"], S.UNAVAILABLE, T0_MS)
    # The store hangs on the first write: flushes go on returning (a blocking write would never return).
    assert mir.flush(T0_MS + 1000) == 2
    assert store.entered.wait(60)
    for step, status in enumerate((S.AVAILABLE, S.FAULTED, S.OFFLINE), start=2):
        change(mir, plugs["AA0001"], status, T0_MS + step * 1000)
        change(mir, plugs["AA0002"], status, T0_MS + step * 1000)
        assert mir.flush(T0_MS + step * 1000) == 2
    assert writer.queued() <= 3  # one being written, then at most one document per plug
    store.gate.set()
    assert writer.drain(timeout_s=60) == 0
    last = {mac: status for mac, status in store.statuses()}
    assert last == {"AA0001": STATUS_DOC[S.OFFLINE], "AA0002": STATUS_DOC[S.OFFLINE]}
    assert len(store.docs) <= 3  # the queued older documents were replaced, never written after
    assert not failed and not mir.pending


def test_a_failed_write_is_counted_and_the_plug_written_again_nothing_lost() -> None:
    store = Gated(failures=2)
    store.gate.set()
    mir, writer, failed = with_writer(store)
    p = plug("AA0001")
    change(mir, p, S.FAULTED, T0_MS)
    now = T0_MS
    while not store.docs:  # what the hub does: each failure marks the plug again on its loop
        now += 1000
        mir.flush(now)
        wait_until(lambda: writer.queued() == 0, "the writer to finish")
        if failed:
            assert failed == ["AA0001"]
            mir.retry(p, now)
        failed.clear()
        assert now < T0_MS + 60_000
    assert store.statuses() == [("AA0001", STATUS_DOC[S.FAULTED])]
    assert store.attempts == 3
    text = mir.metrics.render()
    assert "plug_state_write_errors_total 2" in text
    assert writer.drain(timeout_s=60) == 0


def test_a_full_writer_leaves_the_plug_pending_for_the_next_flush() -> None:
    store = Gated()
    mir, writer, _failed = with_writer(store)
    writer.max_queued = 1
    plugs = [plug(f"AA{i:04d}") for i in range(4)]
    for p in plugs:
        change(mir, p, S.FAULTED, T0_MS)
    handed = mir.flush(T0_MS + 1000)
    assert 1 <= handed < 4  # the rest stay pending, not dropped
    assert mir.pending == 4 - handed
    store.gate.set()
    now = T0_MS + 1000
    while mir.pending:
        wait_until(lambda: writer.queued() == 0, "the writer to finish")
        now += 1000
        mir.flush(now)
    assert writer.drain(timeout_s=60) == 0
    assert sorted(mac for mac, _ in store.statuses()) == sorted(p.state.mac for p in plugs)


def test_drain_past_its_deadline_reports_what_was_not_written() -> None:
    store = Gated()
    mir, writer, _failed = with_writer(store)
    for i in range(3):
        change(mir, plug(f"AA{i:04d}"), S.FAULTED, T0_MS)
    mir.flush(T0_MS + 1000)
    assert store.entered.wait(60)
    assert writer.drain(timeout_s=0.05) == 3  # one hung in the store, two queued
    store.gate.set()
