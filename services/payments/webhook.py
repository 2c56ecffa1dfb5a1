"""The Stripe webhook: verify the signature on the raw body, deduplicate by event id, credit or debit the ledger.

Theory of operation. Stripe signs ``f"{t}.{body}"`` with the endpoint secret (HMAC-SHA256, header
``Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>]``); a body that does not verify is refused (400) and
changes nothing (``stripe.Webhook.construct_event`` checks it when the SDK is present; the same scheme is
implemented here for the pure core). Every verified event is processed once:

- Ledger events (credits, refunds, disputes, unmatched payments) are planned first, then the event
  record, its ledger entries and any unmatched payment are written in ONE store transaction
  (``Store.record_event``): a crash leaves all or nothing, and a replay changes nothing.
- Account events (the payment-action flag, the saved card) are recorded first and applied only on the
  first delivery, so an old event replayed later cannot undo a newer state.

Each payment is credited from exactly one event type: a Checkout top-up from
``checkout.session.completed`` (``payment_status == "paid"``) or ``checkout.session.async_payment_succeeded``;
an off-session top-up from ``payment_intent.succeeded`` only when the PaymentIntent's metadata marks it as
ours (``chargectl_purpose=offsession_topup``). Checkout's own PaymentIntent carries
``checkout_topup`` and is ignored there. Money is credited only in the account's currency; money for
an unknown user or customer, or in another currency, is stored as an :class:`UnmatchedPayment` and
alerted, never dropped (an operator assigns or refunds it). A refund is debited under an id derived
from the Stripe refund id (``refund_<re_id>``), from ``charge.refunded`` (its refund list) or
``refund.created`` alike, so concurrent deliveries and several instances debit it once (and credited
back once, ``refund_failed_<re_id>``, if it then fails or is canceled); a dispute
under ``dispute_<dp_id>`` (from ``charge.dispute.created`` or ``funds_withdrawn``, whichever comes
first; an inquiry, status ``warning_*``, withdraws nothing and debits nothing), given back once under
``dispute_reinstated_<dp_id>`` when ``funds_reinstated`` says the dispute was won. Refunds and disputes
debit only payments we credited.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chargectl.common.alerts import AlertBook, AlertKind, Severity
from chargectl.common.clock import Clock
from chargectl.common.codec import LedgerEntry, Money, UserAccount
from chargectl.common.errors import PaymentError
from chargectl.services.adapters.store import Store, UnmatchedPayment
from chargectl.services.payments.accounts import (
    CHECKOUT_TOPUP,
    OFFSESSION_TOPUP,
    PURPOSE_KEY,
    flag_payment_action,
    set_default_card,
    user_by_customer,
)
from chargectl.services.payments.ledger import KINDS, Ledger, LedgerKind
from chargectl.services.payments.unmatched import parse_reversal, reversal_id, settle_reversals

__all__ = [
    "HANDLED_EVENTS",
    "Outcome",
    "WebhookHandler",
    "WebhookServer",
    "WebhookSignatureError",
    "parse_event",
    "verify_signature",
]

log = logging.getLogger("chargectl.payments.webhook")

Event = dict[str, Any]


class WebhookSignatureError(PaymentError):
    """The Stripe-Signature header is missing, malformed, stale or does not match the body."""


def verify_signature(payload: bytes, header: str | None, secret: str, now_s: float, tolerance_s: int) -> None:
    """Check Stripe's signature on the raw ``payload`` with the stripe library's own verifier, and its age
    against our clock; raise WebhookSignatureError if either fails."""
    import stripe

    if not secret:
        raise WebhookSignatureError("no webhook secret configured")
    if not header:
        raise WebhookSignatureError("missing Stripe-Signature header")
    try:
        # tolerance=None: the library checks the scheme and the HMAC; the age is checked below with our
        # clock (the library would read the system time itself).
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
    except UnicodeDecodeError:
        raise WebhookSignatureError("webhook body is not UTF-8") from None
    except stripe.SignatureVerificationError as exc:
        text = str(exc).lower()
        reason = (
            "malformed Stripe-Signature header"
            if "unable to extract" in text or "expected scheme" in text
            else "webhook signature does not match the body"
        )
        raise WebhookSignatureError(reason) from None
    timestamp = next(
        (
            int(v)
            for k, _, v in (p.strip().partition("=") for p in header.split(","))
            if k == "t" and v.isdigit()
        ),
        None,
    )
    if timestamp is None:
        raise WebhookSignatureError("malformed Stripe-Signature timestamp")
    if now_s - timestamp > tolerance_s:
        raise WebhookSignatureError("webhook signature timestamp is too old")


def parse_event(payload: bytes) -> Event:
    """The event object of a verified body; PaymentError if it is not a Stripe event."""
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PaymentError("webhook body is not JSON") from None
    if not isinstance(event, dict):
        raise PaymentError("webhook body is not an event object")
    data = event.get("data")
    if (
        not isinstance(event.get("id"), str)
        or not event["id"]
        or not isinstance(event.get("type"), str)
        or not isinstance(data, dict)
        or not isinstance(data.get("object"), dict)
    ):
        raise PaymentError("webhook body lacks id, type or data.object")
    return event


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one event did (``action``: credited, debited, flagged, ..., ignored, duplicate)."""

    event_id: str
    event_type: str
    action: str
    user_id: str = ""
    amount_minor: int = 0
    currency: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "action": self.action,
            "user_id": self.user_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
        }


def _str(obj: Event, key: str) -> str:
    value = obj.get(key)
    if isinstance(value, dict):  # an expanded object
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _int(obj: Event, key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value


def _metadata(obj: Event) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a ledger event will write: its outcome, entries and (or) an unmatched payment."""

    outcome: Outcome
    entries: tuple[LedgerEntry, ...] = ()
    unmatched: UnmatchedPayment | None = None


TOPUP_PREFIX = "topup_"  # a top-up's ledger entry: TOPUP_PREFIX + its payment (PaymentIntent or session)


def _entry(
    entry_id: str,
    user_id: str,
    kind: LedgerKind,
    amount_minor: int,
    currency: str,
    now_ms: int,
    reference: str,
    description: str,
) -> LedgerEntry:
    return LedgerEntry(
        entry_id=entry_id,
        user_id=user_id,
        kind=KINDS[kind],  # type: ignore[arg-type]
        amount=Money(amount_minor=int(amount_minor), currency=currency.lower()),
        reference=reference,
        description=description,
        created_at_ms=now_ms,
    )


class WebhookHandler:
    """Verifies and applies Stripe events to a :class:`Store` (thread-safe; one event at a time).

    Several handlers (threads, processes, Cloud Run instances) may share one store: every ledger write
    goes through ``Store.record_event``'s transaction with deterministic entry ids.
    """

    def __init__(
        self,
        store: Store,
        secret: str,
        clock: Clock,
        tolerance_s: int = 300,
        alerts: AlertBook | None = None,
    ) -> None:
        self.store = store
        self.ledger = Ledger(store)
        self._secret = secret
        self.clock = clock
        self.tolerance_s = tolerance_s
        self.alerts = alerts if alerts is not None else AlertBook()
        self._lock = threading.Lock()
        self.processed = 0
        # The latest outcomes, newest last (health output and tests; no payloads, no secrets).
        self.recent: deque[Outcome] = deque(maxlen=1000)
        self._ledger_handlers: dict[str, Callable[[Event, Event, int], _Plan]] = {
            "checkout.session.completed": self._checkout_paid,
            "checkout.session.async_payment_succeeded": self._checkout_paid,
            "payment_intent.succeeded": self._payment_succeeded,
            "charge.refunded": self._charge_refunded,
            "refund.created": self._refund_created,
            "charge.dispute.created": self._dispute_created,
            "charge.dispute.funds_withdrawn": self._dispute_created,
            "charge.dispute.funds_reinstated": self._dispute_reinstated,
            "refund.failed": self._refund_undone,
            "refund.updated": self._refund_undone,
            "charge.refund.updated": self._refund_undone,
        }
        self._account_handlers: dict[str, Callable[[Event, Event, int], Outcome]] = {
            "payment_intent.payment_failed": self._payment_failed,
            "payment_intent.requires_action": self._payment_failed,
            "setup_intent.succeeded": self._setup_succeeded,
            "checkout.session.async_payment_failed": self._checkout_failed,
        }

    def handle(self, payload: bytes, signature: str | None) -> Outcome:
        """Verify ``payload`` against ``signature`` and process it; WebhookSignatureError if forged."""
        now_s = self.clock.now()
        verify_signature(payload, signature, self._secret, now_s, self.tolerance_s)
        return self.process(parse_event(payload), int(now_s * 1000))

    def process(self, event: Event, now_ms: int) -> Outcome:
        """Apply a verified event once; replays answer ``duplicate`` and change nothing."""
        event_id, event_type = event["id"], event["type"]
        obj: Event = event["data"]["object"]
        with self._lock:
            ledger_handler = self._ledger_handlers.get(event_type)
            if ledger_handler is not None:
                plan = ledger_handler(event, obj, now_ms)
                first, created = self.store.record_event(
                    event_id, event_type, now_ms, plan.entries, plan.unmatched
                )
                outcome = plan.outcome
                if not first:
                    outcome = Outcome(event_id, event_type, "duplicate", outcome.user_id)
                elif plan.entries and created == 0:
                    outcome = Outcome(event_id, event_type, "already posted", outcome.user_id)
                elif plan.unmatched is not None:
                    self._alert_unmatched(plan.unmatched, now_ms)
                if first and outcome.action == "credited" and plan.entries[0].kind == KINDS["topup"]:
                    # Refunds or disputes of this payment that arrived before it: debit them now.
                    credit = plan.entries[0]
                    settle_reversals(self.store, credit.reference, credit.user_id, now_ms)
            elif not self.store.mark_event(event_id, event_type, now_ms):
                outcome = Outcome(event_id, event_type, "duplicate")
            else:
                account_handler = self._account_handlers.get(event_type)
                outcome = (
                    account_handler(event, obj, now_ms)
                    if account_handler is not None
                    else Outcome(event_id, event_type, "ignored")
                )
            self.processed += 1
            self.recent.append(outcome)
        log.info(
            "webhook %s %s: %s%s",
            event_id,
            event_type,
            outcome.action,
            f" user {outcome.user_id} {outcome.amount_minor} {outcome.currency}" if outcome.user_id else "",
        )
        return outcome

    def _alert_unmatched(self, payment: UnmatchedPayment, now_ms: int) -> None:
        if parse_reversal(payment.payment_id) is not None and payment.amount_minor > 0:
            # A kept refund's failure: posted with it when the payment is credited; nothing to do.
            log.info("refund failure kept with its refund: %s", payment.payment_id)
            return
        if payment.amount_minor < 0:
            # Money that went back for a payment not credited (yet): debited when it is.
            message = (
                f"{-payment.amount_minor} {payment.currency} in {payment.payment_id} not debited yet:"
                f" {payment.reason} (chargectl payments unmatched)"
            )
            log.warning("unmatched reversal: %s", message)
            self.alerts.raise_alert(
                AlertKind.UNMATCHED_PAYMENT, payment.payment_id, message, now_ms, severity=Severity.WARNING
            )
            return
        message = (
            f"{payment.amount_minor} {payment.currency} in {payment.payment_id} not credited: {payment.reason}"
            " (chargectl payments unmatched)"
        )
        log.error("unmatched payment: %s", message)
        self.alerts.raise_alert(
            AlertKind.UNMATCHED_PAYMENT, payment.payment_id, message, now_ms, severity=Severity.CRITICAL
        )

    def _keep_reversal(
        self, event: Event, payment_ref: str, entry_id: str, amount: int, currency: str, now_ms: int
    ) -> _Plan:
        """A refund or dispute of a payment no top-up credited (yet), kept until it is (see unmatched.py);
        ``amount`` is what it takes (negative: a kept refund's failure, which gives it back)."""
        kept = UnmatchedPayment(
            payment_id=reversal_id(payment_ref, entry_id),
            event_id=event["id"],
            event_type=event["type"],
            amount_minor=-amount,
            currency=currency.lower(),
            reason=f"{entry_id.split('_', 1)[0]} of {payment_ref}, which no top-up credited (yet)",
            created_at_ms=now_ms,
        )
        return _Plan(
            Outcome(event["id"], event["type"], "kept until credited", "", -amount, currency.lower()),
            unmatched=kept,
        )

    # ------------------------------------------------------------------ who an object belongs to

    def _user(self, obj: Event) -> UserAccount | None:
        """Our account for a Stripe object: its ``metadata.uid`` (checked against its customer) or its customer."""
        customer = _str(obj, "customer")
        uid = _metadata(obj).get("uid")
        if isinstance(uid, str) and uid:
            user = self.store.get_user(uid)
            if user is not None and (not customer or user.stripe_customer_id == customer):
                return user
            if user is not None:
                log.warning("event object names user %s but customer %s is not theirs", uid, customer)
                return None
        return user_by_customer(self.store, customer)

    def _user_by_reference(self, *references: str) -> str:
        """The user we credited for a payment (PaymentIntent, charge or Checkout id); "" if none."""
        for entry in self.store.ledger_by_reference(references):
            if entry.amount.amount_minor > 0:
                return entry.user_id
        return ""

    def _credit(
        self,
        event: Event,
        obj: Event,
        now_ms: int,
        payment_id: str,
        amount: int,
        currency: str,
        description: str,
    ) -> _Plan:
        """Credit a paid top-up to its user in the account's currency, or keep it as unmatched."""
        user = self._user(obj)
        reason = ""
        if user is None:
            reason = "no account for its user or customer"
        elif user.currency and currency.lower() != user.currency.lower():
            reason = f"paid in {currency.lower()}, the account is in {user.currency.lower()}"
        if reason:
            return self._unmatched(event, obj, now_ms, payment_id, amount, currency, reason)
        assert user is not None
        if payment_id and any(
            e.kind == KINDS["topup"] and e.amount.amount_minor > 0
            for e in self.store.ledger_by_reference([payment_id])
        ):
            # Another event already credited this payment (completed and async_payment_succeeded both
            # saying paid, an operator's assign): one payment, one credit.
            log.warning("payment %s was already credited; event %s credits nothing", payment_id, event["id"])
            return _Plan(Outcome(event["id"], event["type"], "already credited", user.user_id))
        # One entry per payment, named by it: two events saying one payment was paid, handled at the same
        # moment by two instances (each past the check above), meet at the store, which posts it once.
        entry_id = f"{TOPUP_PREFIX}{payment_id}" if payment_id else event["id"]
        entry = _entry(entry_id, user.user_id, "topup", amount, currency, now_ms, payment_id, description)
        return _Plan(
            Outcome(event["id"], event["type"], "credited", user.user_id, amount, currency.lower()), (entry,)
        )

    # ------------------------------------------------------------------ ledger events

    def _checkout_paid(self, event: Event, obj: Event, now_ms: int) -> _Plan:
        ignored = _Plan(Outcome(event["id"], event["type"], "ignored"))
        if obj.get("mode") != "payment":
            return ignored
        if obj.get("payment_status") != "paid":
            # Delayed methods complete unpaid; async_payment_succeeded credits them later.
            return _Plan(Outcome(event["id"], event["type"], "awaiting payment"))
        amount, currency = _int(obj, "amount_total"), _str(obj, "currency")
        if amount <= 0 or not currency:
            log.warning("checkout session %s: paid without an amount; not credited", _str(obj, "id"))
            return ignored
        payment_id = _str(obj, "payment_intent") or _str(obj, "id")
        if _metadata(obj).get(PURPOSE_KEY) != CHECKOUT_TOPUP:
            # Paid, but not a page we made: the money is kept for an operator, not credited to anyone.
            return self._unmatched(event, obj, now_ms, payment_id, amount, currency, "not a chargectl top-up")
        return self._credit(
            event, obj, now_ms, payment_id, amount, currency, f"Checkout top-up {_str(obj, 'id')}"
        )

    def _unmatched(
        self, event: Event, obj: Event, now_ms: int, payment_id: str, amount: int, currency: str, reason: str
    ) -> _Plan:
        uid_hint = _metadata(obj).get("uid")
        unmatched = UnmatchedPayment(
            payment_id=payment_id,
            event_id=event["id"],
            event_type=event["type"],
            amount_minor=amount,
            currency=currency.lower(),
            reason=reason,
            created_at_ms=now_ms,
            customer_id=_str(obj, "customer"),
            uid_hint=uid_hint if isinstance(uid_hint, str) else "",
        )
        return _Plan(
            Outcome(event["id"], event["type"], "unmatched", "", amount, currency.lower()),
            unmatched=unmatched,
        )

    def _payment_succeeded(self, event: Event, obj: Event, now_ms: int) -> _Plan:
        if _metadata(obj).get(PURPOSE_KEY) != OFFSESSION_TOPUP:
            return _Plan(Outcome(event["id"], event["type"], "ignored"))
        amount = _int(obj, "amount_received") or _int(obj, "amount")
        currency = _str(obj, "currency")
        if amount <= 0 or not currency:
            log.warning("payment intent %s: succeeded without an amount; not credited", _str(obj, "id"))
            return _Plan(Outcome(event["id"], event["type"], "ignored"))
        plan = self._credit(event, obj, now_ms, _str(obj, "id"), amount, currency, "Automatic top-up")
        if plan.outcome.user_id:
            flag_payment_action(self.store, plan.outcome.user_id, _str(obj, "id"), now_ms, on=False)
        return plan

    def _refund_entry(
        self, event: Event, refund: Event, user_id: str, charge_id: str, intent_id: str, now_ms: int
    ) -> LedgerEntry | None:
        refund_id, amount, currency = _str(refund, "id"), _int(refund, "amount"), _str(refund, "currency")
        if not refund_id or amount <= 0 or not currency:
            return None
        if refund.get("status") not in (None, "succeeded", "pending"):
            return None  # failed or canceled: no money went back
        return _entry(
            f"refund_{refund_id}",
            user_id,
            "refund",
            -amount,
            currency,
            now_ms,
            charge_id or intent_id,
            f"Refund {refund_id} of {intent_id or charge_id}",
        )

    def _charge_refunded(self, event: Event, obj: Event, now_ms: int) -> _Plan:
        charge_id, intent_id = _str(obj, "id"), _str(obj, "payment_intent")
        user_id = self._user_by_reference(intent_id, charge_id)
        refunds_obj = obj.get("refunds")
        refunds = refunds_obj.get("data") if isinstance(refunds_obj, dict) else None
        if not user_id or not isinstance(refunds, list):
            if user_id:
                log.warning("charge.refunded %s has no refund list; refund.created debits it", charge_id)
            return _Plan(Outcome(event["id"], event["type"], "ignored", user_id))
        entries = [
            e
            for r in refunds
            if isinstance(r, dict)
            and (e := self._refund_entry(event, r, user_id, charge_id, intent_id, now_ms)) is not None
        ]
        if not entries:
            return _Plan(Outcome(event["id"], event["type"], "ignored", user_id))
        total = sum(e.amount.amount_minor for e in entries)
        currency = entries[0].amount.currency
        return _Plan(Outcome(event["id"], event["type"], "debited", user_id, total, currency), tuple(entries))

    def _refund_created(self, event: Event, obj: Event, now_ms: int) -> _Plan:
        charge_id, intent_id = _str(obj, "charge"), _str(obj, "payment_intent")
        user_id = self._user_by_reference(intent_id, charge_id)
        if not user_id:
            # Not credited (yet): kept, so the credit that may still come cannot keep this money.
            unknown = self._refund_entry(event, obj, "?", charge_id, intent_id, now_ms)
            if unknown is None or not (intent_id or charge_id):
                return _Plan(Outcome(event["id"], event["type"], "ignored"))
            amount = -unknown.amount.amount_minor
            return self._keep_reversal(
                event, intent_id or charge_id, unknown.entry_id, amount, unknown.amount.currency, now_ms
            )
        entry = self._refund_entry(event, obj, user_id, charge_id, intent_id, now_ms)
        if entry is None:
            return _Plan(Outcome(event["id"], event["type"], "ignored", user_id))
        return _Plan(
            Outcome(
                event["id"],
                event["type"],
                "debited",
                user_id,
                entry.amount.amount_minor,
                entry.amount.currency,
            ),
            (entry,),
        )

    def _refund_undone(self, event: Event, obj: Event, now_ms: int) -> _Plan:
        """A refund we debited (it was pending) that failed or was canceled: no money went back, so the
        user's comes back, once (``refund_failed_<re_id>``). Other updates change nothing."""
        refund_id = _str(obj, "id")
        if obj.get("status") not in ("failed", "canceled") or not refund_id:
            return _Plan(Outcome(event["id"], event["type"], "ignored"))
        debit = self.store.get_ledger_entry(f"refund_{refund_id}")
        if debit is None:
            # Not debited: kept as a reversal of a payment not credited yet? Then its failure is kept
            # beside it, so the credit, when it comes, posts the two and the user loses nothing.
            ref = _str(obj, "payment_intent") or _str(obj, "charge")
            kept = self.store.get_unmatched_payment(reversal_id(ref, f"refund_{refund_id}")) if ref else None
            if kept is None or kept.resolved or kept.amount_minor >= 0:
                return _Plan(Outcome(event["id"], event["type"], "ignored"))
            return self._keep_reversal(
                event, ref, f"refund_failed_{refund_id}", kept.amount_minor, kept.currency, now_ms
            )
        if debit.amount.amount_minor >= 0:
            return _Plan(Outcome(event["id"], event["type"], "ignored"))
        back, currency = -debit.amount.amount_minor, debit.amount.currency
        entry = _entry(
            f"refund_failed_{refund_id}",
            debit.user_id,
            "refund",
            back,
            currency,
            now_ms,
            debit.reference,
            f"Refund {refund_id} {obj.get('status')}: nothing went back",
        )
        return _Plan(Outcome(event["id"], event["type"], "credited", debit.user_id, back, currency), (entry,))

    def _dispute_created(self, event: Event, obj: Event, now_ms: int) -> _Plan:
        status = obj.get("status")
        if isinstance(status, str) and status.startswith("warning_"):
            # An inquiry: the bank asks, no money is withdrawn (yet). If it becomes a chargeback,
            # funds_withdrawn debits it under the same entry id.
            log.warning("dispute inquiry %s on %s: nothing withdrawn", _str(obj, "id"), _str(obj, "charge"))
            return _Plan(Outcome(event["id"], event["type"], "inquiry"))
        charge_id, intent_id = _str(obj, "charge"), _str(obj, "payment_intent")
        user_id = self._user_by_reference(intent_id, charge_id)
        amount, currency = _int(obj, "amount"), _str(obj, "currency")
        dispute_id = _str(obj, "id") or event["id"]
        if amount <= 0 or not currency:
            log.warning("dispute %s: no amount; not debited", dispute_id)
            return _Plan(Outcome(event["id"], event["type"], "ignored"))
        if not user_id:
            if not (intent_id or charge_id):
                return _Plan(Outcome(event["id"], event["type"], "ignored"))
            log.warning("dispute %s: no top-up of ours matches (yet); kept", dispute_id)
            return self._keep_reversal(
                event, intent_id or charge_id, f"dispute_{dispute_id}", amount, currency, now_ms
            )
        entry = _entry(
            f"dispute_{dispute_id}",
            user_id,
            "dispute",
            -amount,
            currency,
            now_ms,
            charge_id or intent_id,
            f"Dispute {dispute_id}",
        )
        return _Plan(
            Outcome(event["id"], event["type"], "debited", user_id, -amount, currency.lower()), (entry,)
        )

    def _dispute_reinstated(self, event: Event, obj: Event, now_ms: int) -> _Plan:
        """A dispute closed in our favour: the money it withdrew is back, so is the user's (at most what
        was debited for it, once: ``dispute_reinstated_<dp_id>``)."""
        dispute_id = _str(obj, "id")
        debit = self.store.get_ledger_entry(f"dispute_{dispute_id}") if dispute_id else None
        amount = _int(obj, "amount")
        if debit is None or debit.amount.amount_minor >= 0 or amount <= 0:
            log.warning("dispute %s: funds reinstated but nothing was debited for it", dispute_id)
            return _Plan(Outcome(event["id"], event["type"], "ignored"))
        back = min(amount, -debit.amount.amount_minor)
        currency = debit.amount.currency
        entry = _entry(
            f"dispute_reinstated_{dispute_id}",
            debit.user_id,
            "dispute",
            back,
            currency,
            now_ms,
            debit.reference,
            f"Dispute {dispute_id} closed: funds reinstated",
        )
        return _Plan(Outcome(event["id"], event["type"], "credited", debit.user_id, back, currency), (entry,))

    # ------------------------------------------------------------------ account events

    def _payment_failed(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        if _metadata(obj).get(PURPOSE_KEY) != OFFSESSION_TOPUP:
            return Outcome(event["id"], event["type"], "ignored")
        user = self._user(obj)
        if user is None:
            return Outcome(event["id"], event["type"], "ignored")
        error = obj.get("last_payment_error")
        code = error.get("code") if isinstance(error, dict) else None
        if obj.get("status") == "requires_action" or code == "authentication_required":
            flag_payment_action(self.store, user.user_id, _str(obj, "id"), now_ms)
            return Outcome(event["id"], event["type"], "flagged", user.user_id)
        return Outcome(event["id"], event["type"], f"failed ({code or 'unknown'})", user.user_id)

    def _setup_succeeded(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        user = self._user(obj)
        card = _str(obj, "payment_method")
        if user is None or not card:
            return Outcome(event["id"], event["type"], "ignored")
        set_default_card(self.store, user.user_id, card, now_ms)
        return Outcome(event["id"], event["type"], "card saved", user.user_id)

    def _checkout_failed(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        user = self._user(obj)
        return Outcome(event["id"], event["type"], "payment failed", user.user_id if user else "")


HANDLED_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.requires_action",
    "setup_intent.succeeded",
    "charge.refunded",
    "refund.created",
    "charge.dispute.created",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
    "refund.failed",
    "refund.updated",
    "charge.refund.updated",
)


class WebhookServer:
    """The webhook alone on the app server's HTTP stack (aiohttp: read timeouts, body cap, JSON errors):
    ``POST /stripe/webhook`` (and ``POST /``, where older endpoint settings point), ``GET /healthz``.

    ``start()``/``stop()`` serve on a background thread (embedding, tests); ``run()`` until SIGINT/SIGTERM.
    """

    def __init__(
        self, handler: WebhookHandler, host: str, port: int, max_body_bytes: int = 1_000_000
    ) -> None:
        from chargectl.services.app.server import AppServer
        from chargectl.services.app.settings import AppSettings

        self.handler = handler
        self.host, self.port = host, port
        self.app_server = AppServer(
            AppSettings(),
            handler.clock,
            webhook=handler,
            webhook_max_body_bytes=max_body_bytes,
            webhook_at_root=True,
        )
        self._threaded: Any = None

    @property
    def address(self) -> tuple[str, int]:
        return self.app_server.address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> None:
        from chargectl.services.app.server import ThreadedServer

        self._threaded = ThreadedServer(self.app_server, self.host, self.port)
        self._threaded.start()

    def stop(self) -> None:
        if self._threaded is not None:
            self._threaded.stop()
            self._threaded = None

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (the CLI)."""
        self.app_server.run(self.host, self.port)
