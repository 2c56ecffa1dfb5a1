"""Unmatched payments: money Stripe took that the webhook could not credit, kept until an operator acts.

The webhook stores each one (``Store.record_event``) and raises an ``unmatched_payment`` alert. An operator
lists them (``chargectl payments unmatched``) and credits one to the right user
(``chargectl payments unmatched assign ID --user U``), or refunds it in Stripe. Assigning posts one ledger
entry whose id is the Stripe event that brought the money, in the same transaction that marks the payment
resolved, so it can never be credited twice.

Money going back works the same way. A refund or dispute of a payment no top-up credited (yet: Stripe
does not promise the order of events, and a credit refused with a 503 comes back hours later; or the
payment is an unmatched one) is kept as an unmatched *reversal* (negative amount, id
``reversal:<payment>:<entry id>``). When that payment is credited, by the webhook or by an operator
assigning it, its reversals are debited from the same user under their usual entry ids
(``refund_<re_id>``, ``dispute_<dp_id>``), so money refunded before it was credited is never kept.
"""

from __future__ import annotations

import logging

from chargectl.common.codec import LedgerEntry, Money
from chargectl.common.errors import NotFoundError, PaymentError
from chargectl.services.adapters.store import Store, UnmatchedPayment

log = logging.getLogger("chargectl.payments.unmatched")

__all__ = ["REVERSAL_PREFIX", "assign_payment", "parse_reversal", "reversal_id", "settle_reversals"]

REVERSAL_PREFIX = "reversal:"


def reversal_id(payment_ref: str, entry_id: str) -> str:
    """The unmatched record of reversal ``entry_id`` (``refund_…``/``dispute_…``) of payment ``payment_ref``."""
    return f"{REVERSAL_PREFIX}{payment_ref}:{entry_id}"


def parse_reversal(payment_id: str) -> tuple[str, str] | None:
    """(payment reference, ledger entry id) of a reversal record's id; None for a payment's."""
    if not payment_id.startswith(REVERSAL_PREFIX):
        return None
    ref, sep, entry_id = payment_id[len(REVERSAL_PREFIX) :].partition(":")
    return (ref, entry_id) if sep and ref and entry_id else None


def _reversal_entry(payment: UnmatchedPayment, user_id: str, now_ms: int) -> LedgerEntry:
    parsed = parse_reversal(payment.payment_id)
    assert parsed is not None
    ref, entry_id = parsed
    kind = LedgerEntry.KIND_DISPUTE if entry_id.startswith("dispute_") else LedgerEntry.KIND_REFUND
    # A refund's failure kept beside it gives back what the refund takes; every other reversal takes.
    sign = 1 if entry_id.startswith("refund_failed_") else -1
    return LedgerEntry(
        entry_id=entry_id,
        user_id=user_id,
        kind=kind,
        amount=Money(amount_minor=sign * abs(payment.amount_minor), currency=payment.currency),
        reference=ref,
        description=f"{entry_id.split('_', 1)[0].capitalize()} of {ref}, kept until {ref} was credited",
        created_at_ms=now_ms,
    )


def settle_reversals(store: Store, payment_ref: str, user_id: str, now_ms: int) -> list[str]:
    """Debit ``user_id`` (just credited ``payment_ref``) every kept reversal of that payment, each once;
    the entry ids posted. One left over (a crash, a race) stays listed for an operator."""
    posted: list[str] = []
    if not payment_ref:
        return posted
    for kept in store.list_unmatched_payments():
        parsed = parse_reversal(kept.payment_id)
        if parsed is None or parsed[0] != payment_ref:
            continue
        if store.get_ledger_entry(parsed[1]) is not None:
            log.warning(
                "reversal %s of %s was posted another way; left for an operator", parsed[1], payment_ref
            )
            continue
        if store.assign_unmatched_payment(kept.payment_id, _reversal_entry(kept, user_id, now_ms), now_ms):
            log.info("reversal %s of %s debited from %s", parsed[1], payment_ref, user_id)
            posted.append(parsed[1])
    return posted


def assign_payment(store: Store, payment_id: str, user_id: str, now_ms: int) -> UnmatchedPayment:
    """Credit unmatched payment ``payment_id`` to ``user_id`` (a reversal: debit it), then debit the
    payment's kept reversals from the same user; the resolved record.

    Refused (PaymentError) when the payment is already assigned or is in a currency other than the
    account's (refund it in Stripe instead); NotFoundError for an unknown payment or user.
    """
    payment = store.get_unmatched_payment(payment_id)
    if payment is None:
        raise NotFoundError(f"no unmatched payment {payment_id!r}")
    if payment.resolved:
        raise PaymentError(f"payment {payment_id} was already credited to {payment.resolved_user_id}")
    user = store.get_user(user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id!r}")
    if user.currency and user.currency.lower() != payment.currency:
        raise PaymentError(
            f"payment {payment_id} is in {payment.currency} but {user_id}'s account is in "
            f"{user.currency.lower()}: refund it in Stripe instead"
        )
    reversal = parse_reversal(payment.payment_id) is not None
    if reversal:
        entry = _reversal_entry(payment, user_id, now_ms)
        if store.get_ledger_entry(entry.entry_id) is not None:
            raise PaymentError(f"{entry.entry_id} was already debited: nothing to assign")
    else:
        entry = LedgerEntry(
            entry_id=payment.event_id,
            user_id=user_id,
            kind=LedgerEntry.KIND_TOPUP,
            amount=Money(amount_minor=payment.amount_minor, currency=payment.currency),
            reference=payment.payment_id,
            description=f"Unmatched payment {payment.payment_id} assigned by an operator",
            created_at_ms=now_ms,
        )
    if not store.assign_unmatched_payment(payment_id, entry, now_ms):
        raise PaymentError(f"payment {payment_id} was assigned by someone else just now")
    if not reversal:
        # Refunded or disputed while it waited: that money went back, so it leaves the user again.
        settle_reversals(store, payment.payment_id, user_id, now_ms)
    resolved = store.get_unmatched_payment(payment_id)
    assert resolved is not None
    return resolved
