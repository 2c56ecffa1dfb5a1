"""A live session's document carries its energy and running cost, rewritten at most every
``[hub] progress_interval_s``; a finished one is never overwritten by a late progress write. After a
debit the hub runs its auto top-up port off the loop; a failing port leaves the debit as it is."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from test_service import Rig

from chargectl.common import codec
from chargectl.services.hub.service import Hub
from chargectl.services.payments.ledger import Ledger


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.store.close()


def _pence(energy_mwh: int) -> int:
    """30 pence per kWh, rounded half up once (the site tariff of the rig), by hand."""
    return int((Decimal(energy_mwh) * 30 / Decimal(1_000_000)).quantize(Decimal(1), ROUND_HALF_UP))


async def _start(rig: Rig, topup: object = None, auto_topup: bool = True) -> Hub:
    if auto_topup:  # u1 has automatic top-up on: 1000 below 500
        account = rig.store.get_user("u1")
        assert account is not None
        account.auto_topup_threshold.CopyFrom(codec.Money(amount_minor=500, currency="gbp"))
        account.auto_topup_amount.CopyFrom(codec.Money(amount_minor=1000, currency="gbp"))
        rig.store.put_user(account)
    hub = await rig.start_hub()
    hub.ports.topup = topup  # type: ignore[assignment]
    Ledger(rig.store).post("evt_topup", "u1", "topup", 10_000, "gbp", now_ms=1)
    hub.credit_arrived("u1")
    await rig.readings(30, 0)
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    return hub


def _doc(rig: Rig) -> codec.ChargeSession:
    req = rig.store.get_request("r1")
    assert req is not None and req.session_id
    doc = rig.store.get_session(req.session_id)
    assert doc is not None
    return doc


async def test_progress_is_written_at_most_every_interval_and_never_after_the_finish(rig: Rig) -> None:
    hub = await _start(rig)
    assert hub.settings.progress_interval_s == 300
    await rig.readings(240, 1800.0)  # 4 minutes of charging: under one interval, nothing written yet
    doc = _doc(rig)
    assert (
        doc.status == codec.ChargeSession.STATUS_ACTIVE and doc.energy_mwh == 0 and doc.cost.amount_minor == 0
    )
    assert hub.metrics.value("session_progress_writes_total") == 0

    await rig.readings(120, 1800.0)  # past 300 s since the first update: one write
    doc = _doc(rig)
    assert hub.metrics.value("session_progress_writes_total") == 1
    # 1.8 kW is 2500 mWh per 5 s sample; the write carries the energy of the samples before it.
    assert doc.energy_mwh > 0 and doc.energy_mwh % 2500 == 0
    assert doc.cost.amount_minor == _pence(doc.energy_mwh) and doc.cost.currency == "gbp"
    assert doc.status == codec.ChargeSession.STATUS_ACTIVE

    await rig.readings(1200, 1800.0)  # 20 more minutes: 4 more writes at most, never more often
    writes = hub.metrics.value("session_progress_writes_total")
    assert 4 <= writes <= 5
    live = hub.plugs[doc.plug_mac].state.session
    assert live is not None
    assert live.energy_mwh - _doc(rig).energy_mwh <= 300 // 5 * 2500  # no staler than one interval

    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(600, 0)  # the plug goes on reporting after the finish
    done = _doc(rig)
    assert done.status == codec.ChargeSession.STATUS_COMPLETED
    assert hub.metrics.value("session_progress_writes_total") == writes
    assert Ledger(rig.store).balance("u1", "gbp") == 10_000 - done.cost.amount_minor
    assert done.cost.amount_minor == _pence(done.energy_mwh)


async def test_the_topup_port_runs_once_per_debit_off_the_loop(rig: Rig) -> None:
    calls: list[tuple[str, str]] = []

    def check(uid: str) -> str:
        calls.append((uid, threading.current_thread().name))
        return "balance above threshold"

    hub = await _start(rig, check)
    await rig.readings(600, 1800.0)
    assert calls == []  # no debit yet: no check
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(60, 0)
    await hub.topups_done()
    assert [uid for uid, _ in calls] == ["u1"]
    assert calls[0][1] != threading.main_thread().name  # Stripe is never called on the event loop
    assert hub.metrics.value("topup_checks_total", outcome="done") == 1


async def test_a_failing_topup_port_leaves_the_debit_standing(rig: Rig) -> None:
    def check(uid: str) -> str:
        raise RuntimeError("payments down")

    hub = await _start(rig, check)
    await rig.readings(600, 1800.0)
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(60, 0)
    await hub.topups_done()
    done = _doc(rig)
    assert done.status == codec.ChargeSession.STATUS_COMPLETED and done.cost.amount_minor > 0
    assert Ledger(rig.store).balance("u1", "gbp") == 10_000 - done.cost.amount_minor
    assert hub.metrics.value("topup_checks_total", outcome="error") == 1


async def test_a_user_without_automatic_top_up_costs_no_progress_writes(rig: Rig) -> None:
    hub = await _start(rig, auto_topup=False)
    await rig.readings(1800, 1800.0)
    doc = _doc(rig)
    assert doc.status == codec.ChargeSession.STATUS_ACTIVE and doc.cost.amount_minor == 0
    assert hub.metrics.value("session_progress_writes_total") == 0
