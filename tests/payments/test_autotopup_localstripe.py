"""Auto top-up against localstripe: a crossing charges once (also with two processes racing), the webhook
credits it, SCA flags the account and stops charging, a decline is recorded and waits for the user."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from payments_helpers import card, wait_for
from stripe_support import API_KEY, WEBHOOK_SECRET, register_webhook

from chargectl.common.alerts import AlertBook
from chargectl.common.clock import SystemClock
from chargectl.common.codec import ChargeSession, LedgerEntry, Money
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.accounts import set_default_card
from chargectl.services.payments.autotopup import AutoTopup, reset_state
from chargectl.services.payments.ledger import Ledger
from chargectl.services.payments.settings import PaymentsSettings
from chargectl.services.payments.stripe_ops import StripeOps
from chargectl.services.payments.webhook import WebhookHandler, WebhookServer

pytestmark = pytest.mark.integration

REAL_SCA_CARD = "4000002500003155"  # localstripe_ext answers it as real Stripe does (authentication_required)


@pytest.fixture
def webhook(
    store: SqliteStore, system_clock: SystemClock, stripe_http: httpx.Client
) -> Iterator[WebhookServer]:
    server = WebhookServer(WebhookHandler(store, WEBHOOK_SECRET, system_clock), "127.0.0.1", 0)
    server.start()
    register_webhook(stripe_http, f"{server.url}/stripe/webhook")
    try:
        yield server
    finally:
        server.stop()


def prepare(
    store: SqliteStore, settings: PaymentsSettings, http: httpx.Client, uid: str, number: str, balance: int
) -> StripeOps:
    """A user with a saved card, auto top-up 1000 below 500, and ``balance`` on the ledger."""
    ops = StripeOps.connect(API_KEY, store, SystemClock(), settings)
    customer = ops.ensure_customer(uid, f"{uid}@example.test").customer_id
    pm = card(http, number)
    http.post(f"/v1/payment_methods/{pm}/attach", data={"customer": customer}).raise_for_status()
    set_default_card(store, uid, pm, 1)
    account = store.get_user(uid)
    assert account is not None
    account.auto_topup_threshold.CopyFrom(Money(amount_minor=500, currency="gbp"))
    account.auto_topup_amount.CopyFrom(Money(amount_minor=1000, currency="gbp"))
    store.put_user(account)
    Ledger(store).post(f"seed-{uid}", uid, "adjustment", balance, "gbp", 1)
    return ops


def live_session(store: SqliteStore, uid: str, cost: int) -> None:
    store.put_session(
        ChargeSession(
            session_id=f"s-{uid}",
            user_id=uid,
            plug_mac="A8032AB12345",
            status=ChargeSession.STATUS_ACTIVE,
            started_at_ms=1,
            cost=Money(amount_minor=cost, currency="gbp"),
        )
    )


def topups(store: SqliteStore, uid: str) -> list[int]:
    return [e.amount.amount_minor for e in store.ledger_entries(uid) if e.kind == LedgerEntry.KIND_TOPUP]


def test_a_running_session_crossing_the_threshold_charges_once_and_the_webhook_credits_it(
    store: SqliteStore,
    settings: PaymentsSettings,
    stripe_http: httpx.Client,
    uid: str,
    webhook: WebhookServer,
    tmp_path: Path,
) -> None:
    ops = prepare(store, settings, stripe_http, uid, "4242424242424242", balance=600)
    # A second process on the same store file: the two race on every sweep.
    other_store = SqliteStore(store.path)
    runners = [
        AutoTopup(store, ops, SystemClock()),
        AutoTopup(
            other_store, StripeOps.connect(API_KEY, other_store, SystemClock(), settings), SystemClock()
        ),
    ]
    try:
        assert runners[0].check_user(uid) == "balance above threshold"
        live_session(store, uid, cost=150)  # 600 - 150 = 450 < 500
        results: list[str] = []
        barrier = threading.Barrier(2)

        def sweep(r: AutoTopup) -> None:
            barrier.wait(timeout=30)
            results.append(r.check_user(uid))

        threads = [threading.Thread(target=sweep, args=(r,)) for r in runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(results) in (
            ["already charged for this crossing", "charged"],
            ["a charge is in flight", "charged"],
            ["another process is handling this user", "charged"],
        ), results
        wait_for("the automatic top-up credited", lambda: topups(store, uid) == [1000])
        state = store.get_topup_state(uid)
        assert state is not None and state.crossing == 1 and state.last_status == "succeeded"
        # Still one charge for this crossing however often it is checked; then the credit re-arms it.
        assert runners[1].check_user(uid) == "balance back above threshold: re-armed"
        assert runners[0].check_user(uid) == "balance above threshold"
        assert Ledger(store).balance(uid, "gbp") == 1600
        assert topups(store, uid) == [1000]
    finally:
        other_store.close()


@pytest.mark.parametrize("number", [REAL_SCA_CARD, "4000002760003184"])
def test_authentication_required_flags_the_account_and_stops_charging(
    store: SqliteStore,
    settings: PaymentsSettings,
    stripe_http: httpx.Client,
    uid: str,
    webhook: WebhookServer,
    number: str,
) -> None:
    ops = prepare(store, settings, stripe_http, uid, number, balance=100)
    runner = AutoTopup(store, ops, SystemClock(), AlertBook())
    assert runner.check_user(uid) == "needs payment action"
    user = store.get_user(uid)
    assert user is not None and user.needs_payment_action and user.payment_action_intent_id
    assert runner.check_user(uid) == "already charged for this crossing"
    assert topups(store, uid) == []
    assert Ledger(store).balance(uid, "gbp") == 100
    assert [a.kind for a in runner.alerts.open_alerts()] == ["payment_failed"]


def test_a_decline_is_recorded_and_not_retried_until_the_user_acts(
    store: SqliteStore,
    settings: PaymentsSettings,
    stripe_http: httpx.Client,
    uid: str,
    webhook: WebhookServer,
) -> None:
    ops = prepare(store, settings, stripe_http, uid, "4000000000000341", balance=100)
    runner = AutoTopup(store, ops, SystemClock(), AlertBook())
    assert runner.check_user(uid) == "declined"
    state = store.get_topup_state(uid)
    assert state is not None and state.declined and "declined" in state.decline_reason.lower()
    assert runner.check_user(uid) == "the saved card was declined; waiting for the user"
    assert runner.check_user(uid) == "the saved card was declined; waiting for the user"
    # The user acts (PUT /v1/auto-topup again): one more attempt, declined again, then waiting again.
    reset_state(store, uid, 2)
    assert runner.check_user(uid) == "declined"
    assert runner.check_user(uid) == "the saved card was declined; waiting for the user"
    # A new card lifts the stop: charged once.
    customer = store.get_user(uid).stripe_customer_id  # type: ignore[union-attr]
    pm = card(stripe_http, "4242424242424242")
    stripe_http.post(f"/v1/payment_methods/{pm}/attach", data={"customer": customer}).raise_for_status()
    set_default_card(store, uid, pm, 3)
    assert runner.check_user(uid) == "charged"
    wait_for("the top-up credited", lambda: topups(store, uid) == [1000])
    assert Ledger(store).balance(uid, "gbp") == 1100


def test_the_app_server_sweeps_periodically(
    store: SqliteStore,
    settings: PaymentsSettings,
    stripe_http: httpx.Client,
    uid: str,
    webhook: WebhookServer,
) -> None:
    from chargectl.services.app.server import AppServer, ThreadedServer
    from chargectl.services.app.settings import AppSettings

    ops = prepare(store, settings, stripe_http, uid, "4242424242424242", balance=200)
    clock = SystemClock()
    server = ThreadedServer(
        AppServer(AppSettings(auto_topup_interval_s=0.2), clock, autotopup=AutoTopup(store, ops, clock))
    )
    server.start()
    try:
        wait_for("the sweep's top-up credited", lambda: topups(store, uid) == [1000])
    finally:
        server.stop()
    state = store.get_topup_state(uid)
    assert state is not None and state.crossing == 1
    assert Ledger(store).balance(uid, "gbp") == 1200
