"""The hub's auto top-up port against localstripe: a billed session that takes the balance below the
user's threshold charges the saved card once (the webhook credits it); a session that leaves the
balance above it charges nothing. The port is built as ``chargectl hub`` builds it from a Stripe key."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from payments_helpers import wait_for
from stripe_support import API_KEY, WEBHOOK_SECRET, register_webhook
from test_autotopup_localstripe import prepare, topups

from chargectl.common import codec
from chargectl.common.clock import SystemClock
from chargectl.common.config import Config
from chargectl.services.hub.cloud import autotopup_port
from chargectl.services.payments.ledger import Ledger
from chargectl.services.payments.settings import PaymentsSettings
from chargectl.services.payments.webhook import WebhookHandler, WebhookServer

pytestmark = pytest.mark.integration


def _hub_rig() -> Any:
    """The hub tests' ``Rig`` (a site played by the test against a real hub), loaded by path."""
    path = Path(__file__).resolve().parent.parent / "hub" / "test_service.py"
    spec = importlib.util.spec_from_file_location("hub_rig_for_payments", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Any]:
    r = _hub_rig()(tmp_path)
    yield r
    r.store.close()


@pytest.fixture
def webhook(rig: Any, stripe_http: httpx.Client) -> Iterator[WebhookServer]:
    server = WebhookServer(WebhookHandler(rig.store, WEBHOOK_SECRET, SystemClock()), "127.0.0.1", 0)
    server.start()
    register_webhook(stripe_http, f"{server.url}/stripe/webhook")
    try:
        yield server
    finally:
        server.stop()


async def _session(rig: Any, kwh_seconds: float) -> codec.ChargeSession:
    """Start, charge at 1.8 kW for ``kwh_seconds`` seconds, stop; the billed document."""
    hub = rig.hub
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(kwh_seconds, 1800.0)
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(60, 0)
    await hub.topups_done()
    req = rig.store.get_request("r1")
    doc = rig.store.get_session(req.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    return doc


@pytest.mark.parametrize(("balance", "charged"), [(600, True), (2000, False)])
async def test_a_debit_below_the_threshold_charges_the_saved_card_once(
    rig: Any,
    settings: PaymentsSettings,
    stripe_http: httpx.Client,
    webhook: WebhookServer,
    tmp_path: Path,
    balance: int,
    charged: bool,
) -> None:
    # u1: threshold 500, amount 1000, a card that pays; ``balance`` on the ledger.
    prepare(rig.store, settings, stripe_http, "u1", "4242424242424242", balance=balance)
    hub = await rig.start_hub()
    config = Config(
        backend="local",
        state_dir=tmp_path / "state",
        config_dir=tmp_path / "config",
        sections={"payments": {"api_base": settings.api_base}},
    )
    hub.ports.topup = autotopup_port(config, rig.store, SystemClock(), hub.alerts, API_KEY)
    hub.credit_arrived("u1")
    await rig.readings(30, 0)
    # 8000 s at 1.8 kW = 4 kWh at 30 p/kWh: 120 p, by hand.
    doc = await _session(rig, 8000)
    assert doc.energy_mwh == 4_000_000 and doc.cost.amount_minor == 120
    assert hub.metrics.value("topup_checks_total", outcome="done") == 1
    if charged:  # 600 - 120 = 480 < 500: one charge of 1000, credited by the webhook
        wait_for("the automatic top-up credited", lambda: topups(rig.store, "u1") == [1000])
        assert Ledger(rig.store).balance("u1", "gbp") == 600 - 120 + 1000
        state = rig.store.get_topup_state("u1")
        assert state is not None and state.last_status == "succeeded" and not state.armed
    else:  # 2000 - 120 = 1880: above the threshold, nothing charged
        assert topups(rig.store, "u1") == []
        assert Ledger(rig.store).balance("u1", "gbp") == 2000 - 120
