"""Unmatched payments: money Stripe took that the webhook could not credit, kept until an operator acts.

The webhook stores each one (``Store.record_event``) and raises an ``unmatched_payment`` alert. An operator
lists them (``chargectl payments unmatched``) and credits one to the right user
(``chargectl payments unmatched assign ID --user U``), or refunds it in Stripe. Assigning posts one ledger
entry whose id is the Stripe event that brought the money, in the same transaction that marks the payment
resolved, so it can never be credited twice.
"""

from __future__ import annotations

from chargectl.common.codec import LedgerEntry, Money
from chargectl.common.errors import NotFoundError, PaymentError
from chargectl.services.adapters.store import Store, UnmatchedPayment

__all__ = ["assign_payment"]


def assign_payment(store: Store, payment_id: str, user_id: str, now_ms: int) -> UnmatchedPayment:
    """Credit unmatched payment ``payment_id`` to ``user_id``; the resolved record.

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
    resolved = store.get_unmatched_payment(payment_id)
    assert resolved is not None
    return resolved
