"""Small account updates shared by the Stripe operations and the webhook: the payment-action flag, card."""

from __future__ import annotations

from chargectl.common.codec import UserAccount
from chargectl.services.adapters.store import Store

__all__ = [
    "CHECKOUT_TOPUP",
    "OFFSESSION_TOPUP",
    "PURPOSE_KEY",
    "SAVE_CARD",
    "flag_payment_action",
    "set_default_card",
    "user_by_customer",
]

# Metadata on Stripe objects that marks them as ours and says which webhook event credits them.
PURPOSE_KEY = "chargectl_purpose"
CHECKOUT_TOPUP = "checkout_topup"
OFFSESSION_TOPUP = "offsession_topup"
SAVE_CARD = "save_card"


def _updated(store: Store, uid: str, now_ms: int) -> UserAccount | None:
    user = store.get_user(uid)
    if user is None:
        return None
    account = UserAccount()
    account.CopyFrom(user)
    account.updated_at_ms = now_ms
    return account


def flag_payment_action(store: Store, uid: str, payment_intent_id: str, now_ms: int, on: bool = True) -> bool:
    """Set (or, with ``on=False``, clear if it names ``payment_intent_id``) the come-back-and-confirm flag."""
    account = _updated(store, uid, now_ms)
    if account is None:
        return False
    if on:
        account.needs_payment_action = True
        account.payment_action_intent_id = payment_intent_id
    elif account.payment_action_intent_id == payment_intent_id:
        account.needs_payment_action = False
        account.payment_action_intent_id = ""
    else:
        return False
    store.put_user(account)
    return True


def set_default_card(store: Store, uid: str, payment_method_id: str, now_ms: int) -> bool:
    """Remember the card off-session charges use."""
    account = _updated(store, uid, now_ms)
    if account is None:
        return False
    account.default_payment_method = payment_method_id
    store.put_user(account)
    return True


def user_by_customer(store: Store, customer_id: str) -> UserAccount | None:
    """The account linked to a Stripe customer id (a scan: the store has no index on it)."""
    if not customer_id:
        return None
    return next((u for u in store.list_users() if u.stripe_customer_id == customer_id), None)
