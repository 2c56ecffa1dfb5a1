"""The webhook core without servers: signatures, dedupe, which event credits what, refunds, disputes, flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from payments_helpers import event, sign

from chargectl.common.clock import ManualClock
from chargectl.common.codec import UserAccount
from chargectl.common.errors import PaymentError
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.ledger import Ledger
from chargectl.services.payments.unmatched import assign_payment
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
    nested = b"[" * 5000 + b"]" * 5000  # past the parser's recursion limit: refused, not a crash
    with pytest.raises(PaymentError, match="not JSON"):
        handler.handle(nested, sign(nested, SECRET, NOW))
    assert store.ledger_entries() == []
    assert store.mark_event("evt_1", "probe", 0)  # never recorded


def test_offsession_payment_credits_once(handler: WebhookHandler, store: SqliteStore) -> None:
    assert deliver(handler, "evt_1", "payment_intent.succeeded", offsession_pi()) == "credited"
    assert deliver(handler, "evt_1", "payment_intent.succeeded", offsession_pi()) == "duplicate"
    assert deliver(handler, "evt_1", "payment_intent.succeeded", offsession_pi()) == "duplicate"
    (entry,) = store.ledger_entries("u1")
    assert (entry.entry_id, entry.amount.amount_minor, entry.reference, entry.kind) == (
        "topup_pi_1",  # one entry per payment, named by it
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


def test_events_for_unknown_users_or_foreign_customers_are_kept_unmatched_and_alerted(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    stranger = offsession_pi(
        "pi_ghost", metadata={"uid": "ghost", "chargectl_purpose": "offsession_topup"}, customer="cus_9"
    )
    assert deliver(handler, "evt_g", "payment_intent.succeeded", stranger) == "unmatched"
    # Metadata naming u1 on u2's customer: kept rather than credited to either.
    crossed = offsession_pi("pi_crossed", customer="cus_2")
    assert deliver(handler, "evt_c", "payment_intent.succeeded", crossed) == "unmatched"
    assert deliver(handler, "evt_c", "payment_intent.succeeded", crossed) == "duplicate"
    assert store.ledger_entries() == []
    kept = store.list_unmatched_payments()
    assert sorted((p.payment_id, p.amount_minor, p.currency) for p in kept) == [
        ("pi_crossed", 1000, "gbp"),
        ("pi_ghost", 1000, "gbp"),
    ]
    assert {p.uid_hint for p in kept} == {"ghost", "u1"}
    alerts = {a.subject: a for a in handler.alerts.open_alerts()}
    assert set(alerts) == {"pi_ghost", "pi_crossed"}
    assert all(a.kind == "unmatched_payment" and a.count == 1 for a in alerts.values())


def test_money_in_another_currency_is_not_credited(handler: WebhookHandler, store: SqliteStore) -> None:
    usd = offsession_pi("pi_usd", 1500, currency="usd")
    assert deliver(handler, "evt_usd", "payment_intent.succeeded", usd) == "unmatched"
    paid = checkout("cs_eur", 2000, "paid", currency="eur")
    assert deliver(handler, "evt_eur", "checkout.session.completed", paid) == "unmatched"
    assert Ledger(store).balance("u1") == 0
    assert store.ledger_entries() == []
    reasons = {p.payment_id: p.reason for p in store.list_unmatched_payments()}
    assert reasons == {
        "pi_usd": "paid in usd, the account is in gbp",
        "pi_cs_eur": "paid in eur, the account is in gbp",
    }


def test_paid_checkout_that_is_not_ours_is_kept(handler: WebhookHandler, store: SqliteStore) -> None:
    foreign = checkout("cs_manual", 900, "paid", metadata={})
    assert deliver(handler, "evt_m", "checkout.session.completed", foreign) == "unmatched"
    assert store.ledger_entries() == []
    [kept] = store.list_unmatched_payments()
    assert (kept.payment_id, kept.amount_minor, kept.reason) == (
        "pi_cs_manual",
        900,
        "not a chargectl top-up",
    )


def charge_with_refunds(
    *refunds: tuple[str, int], charge: str = "ch_r", intent: str = "pi_r"
) -> dict[str, Any]:
    return {
        "id": charge,
        "object": "charge",
        "amount": 2000,
        "amount_refunded": sum(a for _, a in refunds),
        "currency": "gbp",
        "customer": "cus_1",
        "payment_intent": intent,
        "metadata": {},
        "refunds": {
            "object": "list",
            "data": [
                {
                    "id": rid,
                    "object": "refund",
                    "amount": a,
                    "currency": "gbp",
                    "charge": charge,
                    "payment_intent": intent,
                    "status": "succeeded",
                }
                for rid, a in refunds
            ],
        },
    }


def test_refunds_debit_each_stripe_refund_once_in_any_order(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    ledger = Ledger(store)
    deliver(handler, "evt_top", "payment_intent.succeeded", offsession_pi("pi_r", 2000))
    # Two partial refunds whose events arrive newest first, then a redelivery of each.
    assert (
        deliver(handler, "evt_r2", "charge.refunded", charge_with_refunds(("re_2", 300), ("re_1", 500)))
        == "debited"
    )
    assert (
        deliver(handler, "evt_r1", "charge.refunded", charge_with_refunds(("re_1", 500))) == "already posted"
    )
    assert (
        deliver(handler, "evt_r2", "charge.refunded", charge_with_refunds(("re_2", 300), ("re_1", 500)))
        == "duplicate"
    )
    refund = {
        "id": "re_2",
        "object": "refund",
        "amount": 300,
        "currency": "gbp",
        "charge": "ch_r",
        "payment_intent": "pi_r",
        "status": "succeeded",
    }
    assert deliver(handler, "evt_rc", "refund.created", refund) == "already posted"
    assert ledger.balance("u1") == 1200
    assert sorted(e.entry_id for e in store.ledger_entries("u1") if e.amount.amount_minor < 0) == [
        "refund_re_1",
        "refund_re_2",
    ]
    # A refund of a payment we never credited (e.g. an unmatched one) debits nobody.
    stray = charge_with_refunds(("re_9", 100), charge="ch_x", intent="pi_never")
    assert deliver(handler, "evt_rx", "charge.refunded", stray) == "ignored"
    assert ledger.balance("u1") == 1200


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
    # A dispute of a payment nobody was credited for debits nobody (kept until it is: see below).
    assert deliver(handler, "evt_dp2", "charge.dispute.created", unknown) == "kept until credited"
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


def dispute_obj(dispute_id: str, amount: int, status: str, intent: str = "pi_d") -> dict[str, Any]:
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "currency": "gbp",
        "charge": f"ch_{intent}",
        "payment_intent": intent,
        "reason": "fraudulent",
        "status": status,
    }


def test_a_dispute_takes_the_money_once_an_inquiry_takes_none_and_a_won_one_gives_it_back(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    ledger = Ledger(store)
    deliver(handler, "evt_top", "payment_intent.succeeded", offsession_pi("pi_d", 1500))
    deliver(handler, "evt_top2", "payment_intent.succeeded", offsession_pi("pi_q", 800))
    assert ledger.balance("u1") == 2300
    # An inquiry (retrieval request): the bank withdrew nothing, so the user keeps their balance.
    inquiry = dispute_obj("dp_q", 800, "warning_needs_response", intent="pi_q")
    assert deliver(handler, "evt_q1", "charge.dispute.created", inquiry) == "inquiry"
    assert ledger.balance("u1") == 2300
    # A chargeback: created and funds_withdrawn both say so; the money goes once.
    chargeback = dispute_obj("dp_1", 1500, "needs_response")
    assert deliver(handler, "evt_d1", "charge.dispute.created", chargeback) == "debited"
    assert deliver(handler, "evt_d2", "charge.dispute.funds_withdrawn", chargeback) == "already posted"
    assert ledger.balance("u1") == 800
    # Won: Stripe puts the money back, and so do we, once however often it is said.
    won = dispute_obj("dp_1", 1500, "won")
    assert deliver(handler, "evt_d3", "charge.dispute.funds_reinstated", won) == "credited"
    assert deliver(handler, "evt_d3", "charge.dispute.funds_reinstated", won) == "duplicate"
    assert deliver(handler, "evt_d4", "charge.dispute.funds_reinstated", won) == "already posted"
    assert ledger.balance("u1") == 2300
    # The inquiry escalated to a chargeback: funds_withdrawn debits it (once), and a reinstatement of a
    # dispute that never took anything gives nothing.
    escalated = dispute_obj("dp_q", 800, "needs_response", intent="pi_q")
    assert deliver(handler, "evt_q2", "charge.dispute.funds_withdrawn", escalated) == "debited"
    assert ledger.balance("u1") == 1500
    never = dispute_obj("dp_9", 1500, "won")
    assert deliver(handler, "evt_d9", "charge.dispute.funds_reinstated", never) == "ignored"
    assert ledger.balance("u1") == 1500
    assert sorted((e.entry_id, e.amount.amount_minor) for e in store.ledger_entries("u1")) == [
        ("dispute_dp_1", -1500),
        ("dispute_dp_q", -800),
        ("dispute_reinstated_dp_1", 1500),
        ("topup_pi_d", 1500),
        ("topup_pi_q", 800),
    ]


def refund_obj(refund_id: str, amount: int, intent: str) -> dict[str, Any]:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "currency": "gbp",
        "charge": f"ch_{intent}",
        "payment_intent": intent,
        "status": "succeeded",
    }


def test_a_refund_or_dispute_that_arrives_before_its_credit_is_debited_when_the_credit_comes(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    """Stripe does not promise the order of events, and a credit answered 503 comes back hours later: the
    refund must not be lost on the way, or the user keeps money that went back to their card."""
    ledger = Ledger(store)
    early = refund_obj("re_early", 500, "pi_late")
    assert deliver(handler, "evt_re", "refund.created", early) == "kept until credited"
    assert deliver(handler, "evt_re", "refund.created", early) == "duplicate"
    dispute = dispute_obj("dp_early", 700, "needs_response", intent="pi_late2")
    assert deliver(handler, "evt_dpe", "charge.dispute.created", dispute) == "kept until credited"
    assert store.ledger_entries() == [] and ledger.balance("u1") == 0
    # Nothing critical: money went back, none was lost; a warning says it waits.
    assert [a.severity for a in handler.alerts.open_alerts()] == ["warning", "warning"]
    # The credits arrive: each is credited and what went back is debited with it, once.
    assert (
        deliver(handler, "evt_late", "payment_intent.succeeded", offsession_pi("pi_late", 2000)) == "credited"
    )
    assert ledger.balance("u1") == 1500
    assert (
        deliver(handler, "evt_late2", "payment_intent.succeeded", offsession_pi("pi_late2", 700))
        == "credited"
    )
    assert ledger.balance("u1") == 1500
    # The refund said again (charge.refunded, a redelivery) changes nothing.
    again = charge_with_refunds(("re_early", 500), charge="ch_pi_late", intent="pi_late")
    assert deliver(handler, "evt_cr", "charge.refunded", again) == "already posted"
    assert ledger.balance("u1") == 1500
    assert sorted((e.entry_id, e.amount.amount_minor) for e in store.ledger_entries("u1")) == [
        ("dispute_dp_early", -700),
        ("refund_re_early", -500),
        ("topup_pi_late", 2000),
        ("topup_pi_late2", 700),
    ]
    assert store.list_unmatched_payments() == []  # nothing left for an operator


def test_a_refund_of_an_unmatched_payment_leaves_with_it_when_an_operator_assigns_it(
    handler: WebhookHandler, store: SqliteStore, manual_clock: ManualClock
) -> None:
    ghost = offsession_pi(
        "pi_ghost", 1000, metadata={"uid": "ghost", "chargectl_purpose": "offsession_topup"}, customer="cus_9"
    )
    assert deliver(handler, "evt_g", "payment_intent.succeeded", ghost) == "unmatched"
    # The operator refunds it in Stripe (as the unmatched list suggests)...
    assert deliver(handler, "evt_gr", "refund.created", refund_obj("re_g", 1000, "pi_ghost")) == (
        "kept until credited"
    )
    # ...and later someone assigns it anyway: the refund goes with it, so u1 gains nothing.
    assign_payment(store, "pi_ghost", "u1", int(manual_clock.now() * 1000))
    assert Ledger(store).balance("u1") == 0
    assert sorted((e.entry_id, e.amount.amount_minor) for e in store.ledger_entries("u1")) == [
        ("evt_g", 1000),
        ("refund_re_g", -1000),
    ]
    assert store.list_unmatched_payments() == []
    # A reversal nobody ever credits can be debited by hand, once.
    assert deliver(handler, "evt_x", "refund.created", refund_obj("re_x", 300, "pi_elsewhere")) == (
        "kept until credited"
    )
    assign_payment(store, "reversal:pi_elsewhere:refund_re_x", "u2", int(manual_clock.now() * 1000))
    assert Ledger(store).balance("u2") == -300
    with pytest.raises(Exception, match="already"):
        assign_payment(store, "reversal:pi_elsewhere:refund_re_x", "u2", int(manual_clock.now() * 1000))


def test_a_refund_that_fails_after_it_was_debited_gives_the_money_back_once(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    ledger = Ledger(store)
    deliver(handler, "evt_top", "payment_intent.succeeded", offsession_pi("pi_f", 2000))
    pending = {**refund_obj("re_f", 600, "pi_f"), "status": "pending"}
    assert deliver(handler, "evt_rp", "refund.created", pending) == "debited"
    assert ledger.balance("u1") == 1400
    # Still pending, then succeeded: nothing more.
    assert deliver(handler, "evt_ru", "refund.updated", pending) == "ignored"
    # The bank refused it: nothing went back to the card, so the balance gets it back; once, however
    # many of the three event types say it.
    failed = {**pending, "status": "failed", "failure_reason": "expired_or_canceled_card"}
    assert deliver(handler, "evt_rf", "refund.failed", failed) == "credited"
    assert deliver(handler, "evt_rf2", "refund.updated", failed) == "already posted"
    assert deliver(handler, "evt_rf3", "charge.refund.updated", failed) == "already posted"
    assert ledger.balance("u1") == 2000
    # A failed refund we never debited gives nothing.
    stray = {**refund_obj("re_none", 600, "pi_f"), "status": "failed"}
    assert deliver(handler, "evt_rn", "refund.failed", stray) == "ignored"
    assert ledger.balance("u1") == 2000


def test_a_refund_that_fails_before_its_payment_is_credited_takes_nothing_when_the_credit_comes(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    """Stripe's order: the refund is created, then fails, and only then does the top-up's own event
    arrive. The refund was kept to be debited with the credit; its failure is kept beside it, so the
    credit posts both and the user keeps the whole payment (before: the refund was debited anyway)."""
    ledger = Ledger(store)
    pending = {**refund_obj("re_e", 600, "pi_e"), "status": "pending"}
    assert deliver(handler, "evt_re", "refund.created", pending) == "kept until credited"
    failed = {**pending, "status": "failed", "failure_reason": "expired_or_canceled_card"}
    assert deliver(handler, "evt_rf", "refund.failed", failed) == "kept until credited"
    assert deliver(handler, "evt_rf2", "charge.refund.updated", failed) == "kept until credited"
    assert ledger.balance("u1") == 0
    assert deliver(handler, "evt_top", "payment_intent.succeeded", offsession_pi("pi_e", 2000)) == "credited"
    assert ledger.balance("u1") == 2000  # 2,000 paid, 600 refunded and 600 back: the refund failed
    assert sorted((e.entry_id, e.amount.amount_minor) for e in store.ledger_entries("u1")) == [
        ("refund_failed_re_e", 600),
        ("refund_re_e", -600),
        ("topup_pi_e", 2000),
    ]
    assert store.list_unmatched_payments() == []  # nothing left for an operator


def test_one_payment_is_credited_once_whichever_events_say_it_was_paid(
    handler: WebhookHandler, store: SqliteStore
) -> None:
    ledger = Ledger(store)
    # Both Checkout events saying the same session was paid (different event ids): one credit.
    paid = checkout("cs_twice", 1200, "paid")
    assert deliver(handler, "evt_c1", "checkout.session.completed", paid) == "credited"
    assert deliver(handler, "evt_c2", "checkout.session.async_payment_succeeded", paid) == "already credited"
    assert ledger.balance("u1") == 1200
    # An off-session PaymentIntent said succeeded under a second event id: one credit.
    assert (
        deliver(handler, "evt_p1", "payment_intent.succeeded", offsession_pi("pi_twice", 900)) == "credited"
    )
    assert (
        deliver(handler, "evt_p2", "payment_intent.succeeded", offsession_pi("pi_twice", 900))
        == "already credited"
    )
    assert ledger.balance("u1") == 2100
    assert sorted(e.entry_id for e in store.ledger_entries("u1")) == ["topup_pi_cs_twice", "topup_pi_twice"]


def test_two_instances_crediting_one_payment_at_the_same_moment_credit_it_once(
    store: SqliteStore, manual_clock: ManualClock
) -> None:
    """Both Checkout events for one paid session reach two webhook instances at once, and each looks for
    an earlier credit before the other has written one (fault injection: both reads happen first). The
    store still posts the payment once: its entry is named by the payment, not by the event."""
    import threading

    first, second = WebhookHandler(store, SECRET, manual_clock), WebhookHandler(store, SECRET, manual_clock)
    both_looked = threading.Barrier(2, timeout=30)
    look = store.ledger_by_reference

    def look_together(refs: Any) -> Any:
        found = look(refs)
        both_looked.wait()
        return found

    store.ledger_by_reference = look_together  # type: ignore[method-assign]
    paid = checkout("cs_race", 1200, "paid")
    actions: list[str] = []
    threads = [
        threading.Thread(target=lambda h=h, e=e, t=t: actions.append(deliver(h, e, t, paid)))
        for h, e, t in (
            (first, "evt_r1", "checkout.session.completed"),
            (second, "evt_r2", "checkout.session.async_payment_succeeded"),
        )
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(actions) == ["already posted", "credited"]
    assert Ledger(store).balance("u1") == 1200
    assert [e.entry_id for e in store.ledger_entries("u1")] == ["topup_pi_cs_race"]
