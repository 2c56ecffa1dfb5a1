"""Small account updates shared by the Stripe operations and the webhook: the payment-action flag, card."""

from __future__ import annotations

from collections.abc import Callable

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


def _update(store: Store, uid: str, now_ms: int, edit: Callable[[UserAccount], bool]) -> bool:
    """Apply ``edit`` to the stored account in one transaction (``edit`` returns False to change
    nothing); False if there is no account or nothing changed."""

    def change(account: UserAccount | None) -> UserAccount | None:
        if account is None or not edit(account):
            return None
        account.updated_at_ms = now_ms
        return account

    return store.update_user(uid, change) is not None


def flag_payment_action(store: Store, uid: str, payment_intent_id: str, now_ms: int, on: bool = True) -> bool:
    """Set (or, with ``on=False``, clear if it names ``payment_intent_id``) the come-back-and-confirm flag."""

    def edit(account: UserAccount) -> bool:
        if on:
            account.needs_payment_action = True
            account.payment_action_intent_id = payment_intent_id
            return True
        if account.payment_action_intent_id != payment_intent_id:
            return False  # another payment's flag: not ours to clear
        account.needs_payment_action = False
        account.payment_action_intent_id = ""
        return True

    return _update(store, uid, now_ms, edit)


def set_default_card(store: Store, uid: str, payment_method_id: str, now_ms: int) -> bool:
    """Remember the card off-session charges use."""

    def edit(account: UserAccount) -> bool:
        account.default_payment_method = payment_method_id
        return True

    return _update(store, uid, now_ms, edit)


def user_by_customer(store: Store, customer_id: str) -> UserAccount | None:
    """The account linked to a Stripe customer id (a store query)."""
    return store.user_by_customer(customer_id) if customer_id else None
