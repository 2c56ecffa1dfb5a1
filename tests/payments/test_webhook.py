"""The webhook core without servers: signatures, dedupe, which event credits what, refunds, disputes, flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from payments_helpers import event, sign

from chargectl.common.clock import ManualClock
from chargectl.common.codec import UserAccount
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.ledger import Ledger
from chargectl.services.payments.webhook import WebhookHandler, WebhookSignatureError, verify_signature

SECRET = "whsec_unit"
NOW = 1_767_225_600  # the manual clock's start, in seconds


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "w.db")
    s.put_user(UserAccount(user_id="u1", email="u1@example.test", stripe_customer_id="cus_1", currency="gbp"))
    s.put_user(UserAccount(user_id="u2", email="u2@example.test", stripe_customer_id="cus_2", currency="gbp"))
    return s


@pytest.fixture
def handler(store: SqliteStore, manual_clock: ManualClock) -> WebhookHandler:
    return WebhookHandler(store, SECRET, manual_clock)


def deliver(handler: WebhookHandler, event_id: str, event_type: str, obj: dict[str, Any]) -> str:
    body = event(event_id, event_type, obj)
    return handler.handle(body, sign(body, SECRET, NOW)).action


def offsession_pi(pi: str = "pi_1", amount: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "id": pi,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": "gbp",
        "customer": "cus_1",
        "status": "succeeded",
        "metadata": {"uid": "u1", "chargectl_purpose": "offsession_topup"},
        **extra,
    }


def checkout(session: str, amount: int, payment_status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": session,
        "object": "checkout.session",
        "mode": "payment",
        "amount_total": amount,
        "currency": "gbp",
        "customer": "cus_1",
        "payment_intent": f"pi_{session}",
        "payment_status": payment_status,
        "status": "complete",
        "metadata": {"uid": "u1", "chargectl_purpose": "checkout_topup"},
        **extra,
    }


def test_signature_scheme() -> None:
    body = b'{"id": "evt_1"}'
    verify_signature(body, sign(body, SECRET, NOW), SECRET, NOW + 10, 300)
    # A rotated secret: Stripe sends one v1 per active secret; any match is enough.
    both = sign(body, "whsec_old", NOW) + "," + sign(body, SECRET, NOW).split(",")[1]
    verify_signature(body, both, SECRET, NOW, 300)
    cases = [
        (body, None, "missing"),
        (body, "v1=abc", "malformed"),
        (body, "t=x,v1=abc", "malformed"),
        (body, sign(body, "whsec_other", NOW), "does not match"),
        (body + b" ", sign(body, SECRET, NOW), "does not match"),
        (body, sign(body, SECRET, NOW - 301), "too old"),
    ]
    for payload, header, message in cases:
        with pytest.raises(WebhookSignatureError, match=message):
            verify_signature(payload, header, SECRET, NOW, 300)


def test_forged_or_malformed_bodies_change_nothing(handler: WebhookHandler, store: SqliteStore) -> None:
    body = event("evt_1", "payment_intent.succeeded", offsession_pi())
    with pytest.raises(WebhookSignatureError):
        handler.handle(body.replace(b"1000", b"9000"), sign(body, SECRET, NOW))
    with pytest.raises(WebhookSignatureError):
        handler.handle(body, sign(body, SECRET, NOW - 3600))  # an old capture replayed
    not_event = json.dumps({"hello": "world"}).encode()
    with pytest.raises(Exception, match="lacks id"):
        handler.handle(not_event, sign(not_event, SECRET, NOW))
    assert store.ledger_entries() == []
    assert store.mark_event("evt_1", "probe", 0)  # never recorded


def test_offsession_payment_credits_once(handler: WebhookHandler, store: SqliteStore) -> None:
    assert deliver(handler, "evt_1", "payment_intent.succeeded", offsession_pi()) == "credited"
    assert deliver(handler, "evt_1", "payment_intent.succeeded", offsession_pi()) == "duplicate"
    assert deliver(handler, "evt_1", "payment_intent.succeeded", offsession_pi()) == "duplicate"
    (entry,) = store.ledger_entries("u1")
    assert (entry.entry_id, entry.amount.amount_minor, entry.reference, entry.kind) == (
        "evt_1",
        1000,
        "pi_1",
        1,
    )


def test_each_payment_is_credited_from_exactly_one_event_type(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    ledger = Ledger(store)
    # Checkout's own PaymentIntent succeeds too: its metadata says checkout_topup, so only the session credits.
    checkout_pi = offsession_pi(
        "pi_cs_a", 2500, metadata={"uid": "u1", "chargectl_purpose": "checkout_topup"}
    )
    assert deliver(handler, "evt_pi", "payment_intent.succeeded", checkout_pi) == "ignored"
    assert (
        deliver(handler, "evt_cs", "checkout.session.completed", checkout("cs_a", 2500, "paid")) == "credited"
    )
    assert ledger.balance("u1") == 2500
    # A PaymentIntent without our metadata (someone else's integration) is not ours to credit.
    assert deliver(handler, "evt_x", "payment_intent.succeeded", offsession_pi(metadata={})) == "ignored"
    # Delayed method: completed unpaid credits nothing; async_payment_succeeded credits once.
    assert (
        deliver(handler, "evt_d1", "checkout.session.completed", checkout("cs_d", 700, "unpaid"))
        == "awaiting payment"
    )
    assert ledger.balance("u1") == 2500
    paid = checkout("cs_d", 700, "paid")
    assert deliver(handler, "evt_d2", "checkout.session.async_payment_succeeded", paid) == "credited"
    assert ledger.balance("u1") == 3200
    # A failed delayed payment and an expired session credit nothing.
    assert (
        deliver(handler, "evt_f1", "checkout.session.completed", checkout("cs_f", 900, "unpaid"))
        == "awaiting payment"
    )
    failed = checkout("cs_f", 900, "unpaid")
    assert deliver(handler, "evt_f2", "checkout.session.async_payment_failed", failed) == "payment failed"
    expired = checkout("cs_e", 900, "unpaid", status="expired")
    assert deliver(handler, "evt_e", "checkout.session.expired", expired) == "ignored"
    # Setup-mode sessions are not payments.
    setup = checkout("cs_s", 0, "no_payment_required", mode="setup")
    assert deliver(handler, "evt_s", "checkout.session.completed", setup) == "ignored"
    assert ledger.balance("u1") == 3200
    assert sorted(e.amount.amount_minor for e in store.ledger_entries("u1")) == [700, 2500]


def test_events_for_unknown_users_or_foreign_customers_credit_nothing(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    stranger = offsession_pi(
        metadata={"uid": "ghost", "chargectl_purpose": "offsession_topup"}, customer="cus_9"
    )
    assert deliver(handler, "evt_g", "payment_intent.succeeded", stranger) == "ignored"
    # Metadata naming u1 on u2's customer: refused rather than credited to either.
    crossed = offsession_pi(customer="cus_2")
    assert deliver(handler, "evt_c", "payment_intent.succeeded", crossed) == "ignored"
    assert store.ledger_entries() == []


def test_refunds_debit_what_was_refunded_even_out_of_order(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    ledger = Ledger(store)
    deliver(handler, "evt_top", "payment_intent.succeeded", offsession_pi("pi_r", 2000))

    def charge(refunded: int) -> dict[str, Any]:
        return {
            "id": "ch_r",
            "object": "charge",
            "amount": 2000,
            "amount_refunded": refunded,
            "currency": "gbp",
            "customer": "cus_1",
            "payment_intent": "pi_r",
            "metadata": {},
        }

    # Two partial refunds whose events arrive newest first, then a redelivery of each.
    assert deliver(handler, "evt_r2", "charge.refunded", charge(800)) == "debited"
    assert deliver(handler, "evt_r1", "charge.refunded", charge(500)) == "ignored"
    assert deliver(handler, "evt_r2", "charge.refunded", charge(800)) == "duplicate"
    assert deliver(handler, "evt_r1", "charge.refunded", charge(500)) == "duplicate"
    assert ledger.balance("u1") == 1200
    assert deliver(handler, "evt_r3", "charge.refunded", charge(2000)) == "debited"
    assert ledger.balance("u1") == 0
    assert sorted(e.amount.amount_minor for e in store.ledger_entries("u1")) == [-1200, -800, 2000]
    assert ledger.balance("u1") == sum(e.amount.amount_minor for e in store.ledger_entries("u1"))


def test_dispute_debits_the_disputed_amount_of_our_top_up(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    deliver(handler, "evt_top", "payment_intent.succeeded", offsession_pi("pi_d", 1500))
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "amount": 1500,
        "currency": "gbp",
        "charge": "ch_d",
        "payment_intent": "pi_d",
        "reason": "fraudulent",
        "status": "needs_response",
    }
    assert deliver(handler, "evt_dp", "charge.dispute.created", dispute) == "debited"
    assert deliver(handler, "evt_dp", "charge.dispute.created", dispute) == "duplicate"
    unknown = {**dispute, "id": "dp_2", "payment_intent": "pi_unknown", "charge": "ch_unknown"}
    assert deliver(handler, "evt_dp2", "charge.dispute.created", unknown) == "ignored"
    entries = store.ledger_entries("u1")
    assert sorted((e.amount.amount_minor, e.kind) for e in entries) == [(-1500, 5), (1500, 1)]


def test_authentication_required_flags_and_its_later_success_clears(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    failed = offsession_pi(
        "pi_sca",
        status="requires_payment_method",
        last_payment_error={"code": "authentication_required", "type": "card_error"},
    )
    assert deliver(handler, "evt_f", "payment_intent.payment_failed", failed) == "flagged"
    user = store.get_user("u1")
    assert user is not None and user.needs_payment_action and user.payment_action_intent_id == "pi_sca"
    assert store.ledger_entries() == []
    # The user came back and confirmed: the success credits and clears the flag.
    assert deliver(handler, "evt_ok", "payment_intent.succeeded", offsession_pi("pi_sca", 1000)) == "credited"
    user = store.get_user("u1")
    assert user is not None and not user.needs_payment_action and user.payment_action_intent_id == ""
    # The old failure redelivered afterwards must not flag the account again.
    assert deliver(handler, "evt_f", "payment_intent.payment_failed", failed) == "duplicate"
    user = store.get_user("u1")
    assert user is not None and not user.needs_payment_action
    declined = offsession_pi(
        "pi_no", status="requires_payment_method", last_payment_error={"code": "card_declined"}
    )
    assert deliver(handler, "evt_no", "payment_intent.payment_failed", declined) == "failed (card_declined)"
    assert not store.get_user("u1").needs_payment_action  # type: ignore[union-attr]


def test_setup_intent_saves_the_card_for_off_session_charges(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    intent = {
        "id": "seti_1",
        "object": "setup_intent",
        "customer": "cus_2",
        "payment_method": "pm_9",
        "status": "succeeded",
    }
    assert deliver(handler, "evt_si", "setup_intent.succeeded", intent) == "card saved"
    assert store.get_user("u2").default_payment_method == "pm_9"  # type: ignore[union-attr]
    assert deliver(handler, "evt_other", "customer.updated", {"id": "cus_2"}) == "ignored"
