"""What each app route does, as plain synchronous calls on behalf of a verified uid (no HTTP here).

The server runs these in worker threads. Every failure is an :class:`ApiError` with the HTTP status and a
one-line reason for the client; nothing here trusts a uid from anywhere but the verified token.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any

from chargectl.common.clock import Clock
from chargectl.common.codec import Money, UserAccount
from chargectl.common.errors import ChargectlError, NotFoundError, PaymentError
from chargectl.services.adapters.store import Store
from chargectl.services.app.settings import AppSettings, origin_of
from chargectl.services.app.tokens import Identity
from chargectl.services.payments.autotopup import reset_state
from chargectl.services.payments.money import MINIMUM_CHARGE_MINOR, check_charge
from chargectl.services.payments.stripe_ops import StripeOps

__all__ = ["ApiError", "AppApi"]

_MAX_MINOR = 100_000_000
_LOCK_STRIPES = 64  # a million in major units: far beyond any top-up


class ApiError(ChargectlError):
    """A refusal for the client: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _minor(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer amount in minor units")
    if not 0 <= value <= _MAX_MINOR:
        raise ApiError(400, f"{name} must be between 0 and {_MAX_MINOR}")
    return value


class AppApi:
    """The routes' logic over a store and Stripe; thread-safe (one customer creation per uid at a time)."""

    def __init__(self, store: Store, ops: StripeOps, settings: AppSettings, clock: Clock) -> None:
        self.store = store
        self.ops = ops
        self.settings = settings
        self.clock = clock
        # Striped: a uid always maps to the same lock, and memory stays bounded however many users sign in.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def _lock(self, uid: str) -> threading.Lock:
        return self._locks[zlib.crc32(uid.encode()) % _LOCK_STRIPES]

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def _stripe(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except NotFoundError as exc:
            raise ApiError(404, str(exc)) from exc
        except PaymentError as exc:
            raise ApiError(502, f"{what}: {exc}") from exc

    # ------------------------------------------------------------------ account

    def account_view(self, user: UserAccount) -> dict[str, Any]:
        currency = user.currency or self.ops.settings.currency
        balances: dict[str, int] = {currency: 0}
        for e in self.store.ledger_entries(user.user_id):
            balances[e.amount.currency] = balances.get(e.amount.currency, 0) + e.amount.amount_minor
        state = self.store.get_topup_state(user.user_id)
        auto: dict[str, Any] = {
            "enabled": user.auto_topup_amount.amount_minor > 0,
            "threshold_minor": user.auto_topup_threshold.amount_minor,
            "amount_minor": user.auto_topup_amount.amount_minor,
            "declined": bool(state and state.declined),
            "decline_reason": state.decline_reason if state else "",
        }
        return {
            "uid": user.user_id,
            "customer_id": user.stripe_customer_id,
            "currency": currency,
            "balances_minor": balances,
            "has_saved_card": bool(user.default_payment_method),
            "auto_topup": auto,
            "needs_payment_action": user.needs_payment_action,
        }

    def ensure_account(self, who: Identity) -> dict[str, Any]:
        """The sign-in hook: the user's account and Stripe customer, created once per uid."""
        with self._lock(who.uid):
            user = self.store.get_user(who.uid)
            if user is None or not user.stripe_customer_id:
                email = who.email or (user.email if user is not None else "")
                if not email:
                    raise ApiError(400, "the ID token carries no email address")
                if who.email and not who.email_verified:
                    # Anyone can sign up with someone else's address: Stripe must not mail its owner
                    # receipts, or tie their address to a stranger's cards, before it is proven theirs.
                    raise ApiError(403, "verify your email address before the first top-up")
                self._stripe(
                    "creating the Stripe customer", lambda: self.ops.ensure_customer(who.uid, email, who.name)
                )
                user = self.store.get_user(who.uid)
                assert user is not None
        return self.account_view(user)

    def get_account(self, uid: str) -> dict[str, Any]:
        user = self.store.get_user(uid)
        if user is None:
            raise ApiError(404, "no account yet: POST /v1/account first")
        return self.account_view(user)

    def _user(self, uid: str) -> UserAccount:
        user = self.store.get_user(uid)
        if user is None or not user.stripe_customer_id:
            raise ApiError(404, "no account yet: POST /v1/account first")
        return user

    def _update(self, uid: str, change: Callable[[UserAccount | None], UserAccount | None]) -> UserAccount:
        """``change`` applied to the stored account in one store transaction (another instance, or the
        webhook saving a card, may be writing the same account); 404 if there is none."""
        self._user(uid)
        stored = self.store.update_user(uid, change)
        if stored is None:
            raise ApiError(404, "no account yet: POST /v1/account first")
        return stored

    # ------------------------------------------------------------------ Stripe pages

    def _return_url(self, body: dict[str, Any]) -> str:
        url = body.get("return_url")
        if url is None:
            return ""
        if not isinstance(url, str) or len(url) > 2048:
            raise ApiError(400, "return_url must be a URL")
        if origin_of(url) not in self.settings.allowed_origins:
            raise ApiError(400, "return_url is not on an allowed origin")
        return url

    def portal(self, uid: str, body: dict[str, Any]) -> dict[str, Any]:
        return_url = self._return_url(body)
        self._user(uid)
        url = self._stripe(
            "creating the billing portal session", lambda: self.ops.portal_url(uid, return_url)
        )
        return {"url": url}

    def setup(self, uid: str) -> dict[str, Any]:
        self._user(uid)
        link = self._stripe("creating the card setup page", lambda: self.ops.setup_checkout(uid))
        return {"url": link.url, "session_id": link.session_id}

    def topup(self, uid: str, body: dict[str, Any]) -> dict[str, Any]:
        amount = _minor(body, "amount_minor")
        currency = body.get("currency")
        if not isinstance(currency, str) or currency.lower() not in MINIMUM_CHARGE_MINOR:
            raise ApiError(400, "currency must be a supported ISO currency code")
        user = self._user(uid)
        account_currency = user.currency or self.ops.settings.currency
        if currency.lower() != account_currency:
            raise ApiError(400, f"the account is in {account_currency}; top up in that currency")
        try:
            check_charge(amount, account_currency, self.ops.settings.min_topup_minor)
        except PaymentError as exc:
            raise ApiError(400, str(exc)) from exc
        link = self._stripe(
            "creating the top-up page", lambda: self.ops.topup_checkout(uid, amount, account_currency)
        )
        return {
            "url": link.url,
            "session_id": link.session_id,
            "amount_minor": amount,
            "currency": link.currency,
        }

    # ------------------------------------------------------------------ auto top-up

    def set_auto_topup(self, uid: str, body: dict[str, Any]) -> dict[str, Any]:
        threshold = _minor(body, "threshold_minor")
        amount = _minor(body, "amount_minor")
        user = self._user(uid)
        currency = user.currency or self.ops.settings.currency
        try:
            check_charge(amount, currency, self.ops.settings.min_topup_minor)
        except PaymentError as exc:
            raise ApiError(400, str(exc)) from exc
        if not user.default_payment_method:
            raise ApiError(409, "no saved card: save one with POST /v1/setup first")
        now_ms = self._now_ms()

        def change(account: UserAccount | None) -> UserAccount | None:
            if account is None:
                return None
            account.auto_topup_threshold.CopyFrom(Money(amount_minor=threshold, currency=currency))
            account.auto_topup_amount.CopyFrom(Money(amount_minor=amount, currency=currency))
            account.updated_at_ms = now_ms
            return account

        with self._lock(uid):
            stored = self._update(uid, change)
            reset_state(self.store, uid, now_ms)
        return self.account_view(stored)

    def clear_auto_topup(self, uid: str) -> dict[str, Any]:
        now_ms = self._now_ms()

        def change(account: UserAccount | None) -> UserAccount | None:
            if account is None:
                return None
            account.ClearField("auto_topup_threshold")
            account.ClearField("auto_topup_amount")
            account.updated_at_ms = now_ms
            return account

        with self._lock(uid):
            stored = self._update(uid, change)
        return self.account_view(stored)
