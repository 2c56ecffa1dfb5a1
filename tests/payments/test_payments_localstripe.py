"""Payments against localstripe over real HTTP: customers, saved cards, off-session charges, Checkout, webhooks."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from payments_helpers import card, sign, wait_for
from stripe_support import API_KEY, WEBHOOK_SECRET, register_webhook

from chargectl.common.clock import SystemClock
from chargectl.common.codec import LedgerEntry
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.ledger import Ledger
from chargectl.services.payments.settings import PaymentsSettings
from chargectl.services.payments.stripe_ops import StripeOps
from chargectl.services.payments.webhook import WebhookHandler, WebhookServer

pytestmark = pytest.mark.integration


@pytest.fixture
def ops(store: SqliteStore, settings: PaymentsSettings, system_clock: SystemClock) -> StripeOps:
    return StripeOps.connect(API_KEY, store, system_clock, settings)


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


def _customers(http: httpx.Client, email: str) -> list[str]:
    resp = http.get("/v1/customers", params={"email": email, "limit": 100})
    resp.raise_for_status()
    return [c["id"] for c in resp.json()["data"]]


def _seen(server: WebhookServer) -> set[str]:
    return {o.event_id for o in server.handler.recent}


def _sum_of_entries(store: SqliteStore, uid: str) -> int:
    return sum(e.amount.amount_minor for e in store.ledger_entries(uid))


def test_creating_the_same_users_customer_twice_yields_one_customer(
    ops: StripeOps, stripe_http: httpx.Client, uid: str, settings: PaymentsSettings, tmp_path
) -> None:
    email = f"{uid}@example.test"
    first = ops.ensure_customer(uid, email, "Ada Lovelace")
    second = ops.ensure_customer(uid, email, "Ada Lovelace")
    assert first.created and not second.created
    assert first.customer_id == second.customer_id
    assert _customers(stripe_http, email) == [first.customer_id]
    resp = stripe_http.get(f"/v1/customers/{first.customer_id}").json()
    assert resp["metadata"] == {"uid": uid}
    assert resp["name"] == "Ada Lovelace"
    user = ops.user(uid)
    assert user.stripe_customer_id == first.customer_id and user.email == email and user.currency == "gbp"
    # Our write lost (a fresh store, as after a crash between Stripe's answer and the write): the
    # customer is found by its uid metadata instead of created again (localstripe ignores Idempotency-Key).
    fresh = StripeOps.connect(API_KEY, SqliteStore(tmp_path / "other.db"), SystemClock(), settings)
    third = fresh.ensure_customer(uid, email)
    assert not third.created and third.customer_id == first.customer_id
    assert _customers(stripe_http, email) == [first.customer_id]


def test_saved_card_off_session_charge_credits_once_despite_redeliveries(
    ops: StripeOps, store: SqliteStore, stripe_http: httpx.Client, webhook: WebhookServer, uid: str
) -> None:
    customer = ops.ensure_customer(uid, f"{uid}@example.test").customer_id
    # Saving the card: the app confirms our SetupIntent with the card (Stripe.js); the webhook records it.
    intent = ops.setup_intent(uid)
    pm = card(stripe_http, "4242424242424242")
    stripe_http.post(
        f"/v1/setup_intents/{intent.setup_intent_id}/confirm", data={"payment_method": pm}
    ).raise_for_status()
    wait_for("setup_intent.succeeded", lambda: ops.user(uid).default_payment_method == pm)

    result = ops.charge_off_session(uid, 750, entry_id=f"auto-{uid}")
    assert result.status == "succeeded" and not result.needs_action
    assert store.ledger_entries(uid) == []  # nothing before the webhook says so
    ledger = Ledger(store)
    wait_for("the off-session credit", lambda: ledger.balance(uid) == 750)
    pi = stripe_http.get(f"/v1/payment_intents/{result.payment_intent_id}").json()
    assert pi["customer"] == customer and pi["payment_method"] == pm and pi["amount"] == 750
    assert pi["metadata"]["chargectl_purpose"] == "offsession_topup"

    # The same event delivered twice more (Stripe retries): still one credit.
    events = stripe_http.get("/v1/events", params={"type": "payment_intent.succeeded", "limit": 100}).json()[
        "data"
    ]
    (evt,) = [e for e in events if e["data"]["object"]["id"] == result.payment_intent_id]
    body = stripe_http.get(f"/v1/events/{evt['id']}").content.rstrip(b"\n")
    for _ in range(2):
        resp = httpx.post(webhook.url, content=body, headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET)})
        assert resp.status_code == 200 and resp.json()["action"] == "duplicate"
    entries = store.ledger_entries(uid)
    assert [(e.entry_id, e.amount.amount_minor, e.amount.currency) for e in entries] == [
        (f"topup_{result.payment_intent_id}", 750, "gbp")  # one entry per payment, named by it
    ]

    # Replayed with a tampered body under the original signature: 400, nothing changes.
    header = sign(body, WEBHOOK_SECRET)
    tampered = body.replace(b'"amount": 750', b'"amount": 75000').replace(evt["id"].encode(), b"evt_forged")
    assert tampered != body
    resp = httpx.post(webhook.url, content=tampered, headers={"Stripe-Signature": header})
    assert resp.status_code == 400
    assert ledger.balance(uid) == 750 and len(store.ledger_entries(uid)) == 1
    assert store.mark_event("evt_forged", "probe", 0)  # the forged id was never recorded


@pytest.mark.parametrize(
    ("number", "behaviour"),
    [
        ("4000002760003184", "localstripe: requires_action"),
        ("4000002500003155", "Stripe: authentication_required"),
    ],
)
def test_authentication_required_leaves_ledger_untouched_and_flags_account(
    ops: StripeOps,
    store: SqliteStore,
    stripe_http: httpx.Client,
    webhook: WebhookServer,
    uid: str,
    number: str,
    behaviour: str,
) -> None:
    customer = ops.ensure_customer(uid, f"{uid}@example.test").customer_id
    pm = card(stripe_http, number)
    stripe_http.post(f"/v1/payment_methods/{pm}/attach", data={"customer": customer}).raise_for_status()

    result = ops.charge_off_session(uid, 1000)
    assert result.needs_action, behaviour
    user = ops.user(uid)
    assert user.needs_payment_action and user.payment_action_intent_id == result.payment_intent_id
    if number == "4000002500003155":
        # Stripe also sends payment_intent.payment_failed (authentication_required): it flags, never debits.
        wait_for(
            "payment_failed",
            lambda: any(o.action == "flagged" and o.user_id == uid for o in webhook.handler.recent),
        )
    assert ops.user(uid).needs_payment_action
    assert store.ledger_entries(uid) == []
    assert Ledger(store).balance(uid) == 0


def test_checkout_top_up_paid_credits_exactly_its_amount_and_unpaid_credits_nothing(
    ops: StripeOps, store: SqliteStore, stripe_http: httpx.Client, webhook: WebhookServer, uid: str
) -> None:
    ops.ensure_customer(uid, f"{uid}@example.test")
    ledger = Ledger(store)
    paid = ops.topup_checkout(uid, 1234)
    assert paid.url.startswith("http") and paid.amount_minor == 1234 and paid.currency == "gbp"
    session = stripe_http.get(f"/v1/checkout/sessions/{paid.session_id}").json()
    assert session["amount_total"] == 1234 and session["mode"] == "payment" and session["status"] == "open"
    assert ledger.balance(uid) == 0  # creating the page credits nothing

    expired = ops.topup_checkout(uid, 5000)
    stripe_http.post(f"/v1/checkout/sessions/{expired.session_id}/expire").raise_for_status()
    delayed = ops.topup_checkout(uid, 2000)

    pm = card(stripe_http, "4242424242424242")
    stripe_http.post(
        f"/_test/checkout/sessions/{paid.session_id}/complete", data={"payment_method": pm}
    ).raise_for_status()
    stripe_http.post(
        f"/_test/checkout/sessions/{delayed.session_id}/complete",
        data={"payment_method": card(stripe_http, "4242424242424242"), "async_payment": "true"},
    ).raise_for_status()
    stripe_http.post(
        f"/_test/checkout/sessions/{delayed.session_id}/async_result", data={"succeeded": "false"}
    ).raise_for_status()

    wait_for("the Checkout credit", lambda: ledger.balance(uid) == 1234)
    # Every event of these three sessions (expired, completed unpaid, async failed, and the paid
    # session's own payment_intent.succeeded) has been seen once the last one is recorded.
    events = stripe_http.get("/v1/events", params={"limit": 100}).json()["data"]
    ours = [
        e["id"] for e in events if e["data"]["object"].get("customer") == ops.user(uid).stripe_customer_id
    ]
    assert len(ours) >= 5
    wait_for("all deliveries", lambda: set(ours) <= _seen(webhook))
    actions = {o.event_type: o.action for o in webhook.handler.recent if o.event_id in ours}
    assert actions["checkout.session.expired"] == "ignored"
    assert actions["checkout.session.async_payment_failed"] == "payment failed"
    assert actions["payment_intent.succeeded"] == "ignored"  # Checkout's own PaymentIntent
    entries = store.ledger_entries(uid)
    assert [(e.amount.amount_minor, e.kind) for e in entries] == [(1234, LedgerEntry.KIND_TOPUP)]
    assert (
        entries[0].reference
        == stripe_http.get(f"/v1/checkout/sessions/{paid.session_id}").json()["payment_intent"]
    )


def test_refund_webhook_debits_the_refunded_amount(
    ops: StripeOps, store: SqliteStore, stripe_http: httpx.Client, webhook: WebhookServer, uid: str
) -> None:
    ops.ensure_customer(uid, f"{uid}@example.test")
    ledger = Ledger(store)
    link = ops.topup_checkout(uid, 2000)
    pm = card(stripe_http, "4242424242424242")
    stripe_http.post(
        f"/_test/checkout/sessions/{link.session_id}/complete", data={"payment_method": pm}
    ).raise_for_status()
    wait_for("the top-up", lambda: ledger.balance(uid) == 2000)
    intent = stripe_http.get(f"/v1/checkout/sessions/{link.session_id}").json()["payment_intent"]
    stripe_http.post("/v1/refunds", data={"payment_intent": intent, "amount": "500"}).raise_for_status()
    wait_for("the partial refund", lambda: ledger.balance(uid) == 1500)
    stripe_http.post("/v1/refunds", data={"payment_intent": intent, "amount": "300"}).raise_for_status()
    wait_for("the second refund", lambda: ledger.balance(uid) == 1200)
    kinds = [(e.amount.amount_minor, e.kind) for e in store.ledger_entries(uid)]
    assert sorted(kinds) == sorted([(2000, 1), (-500, 3), (-300, 3)])
    assert ledger.balance(uid) == _sum_of_entries(store, uid) == 1200
    assert ledger.balances()[uid] == 1200


def test_setup_page_saves_the_card_and_a_dispute_debits(
    ops: StripeOps, store: SqliteStore, stripe_http: httpx.Client, webhook: WebhookServer, uid: str
) -> None:
    customer = ops.ensure_customer(uid, f"{uid}@example.test").customer_id
    link = ops.setup_checkout(uid)
    pm = card(stripe_http, "4242424242424242")
    stripe_http.post(
        f"/_test/checkout/sessions/{link.session_id}/complete", data={"payment_method": pm}
    ).raise_for_status()
    wait_for("the saved card", lambda: ops.user(uid).default_payment_method == pm)
    attached = stripe_http.get("/v1/payment_methods", params={"customer": customer, "type": "card"}).json()[
        "data"
    ]
    assert [p["id"] for p in attached] == [pm]

    result = ops.charge_off_session(uid, 600)
    ledger = Ledger(store)
    wait_for("the credit", lambda: ledger.balance(uid) == 600)
    charge_id = stripe_http.get(f"/v1/payment_intents/{result.payment_intent_id}").json()["latest_charge"][
        "id"
    ]
    stripe_http.post(f"/_test/charges/{charge_id}/dispute").raise_for_status()
    wait_for("the dispute debit", lambda: len(store.ledger_entries(uid)) == 2)
    assert ledger.balance(uid) == 0
    assert sorted((e.amount.amount_minor, e.kind) for e in store.ledger_entries(uid)) == [
        (-600, LedgerEntry.KIND_DISPUTE),
        (600, LedgerEntry.KIND_TOPUP),
    ]
