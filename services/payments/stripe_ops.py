"""Stripe operations for chargectl users: customers, billing portal, saving a card, top-ups, off-session charges.

None of these credits the ledger: money counts only when the verified webhook says it arrived
(:mod:`chargectl.services.payments.webhook`). Every POST carries an idempotency key derived from our own
ids. Portal and Checkout URLs are returned to the caller and never logged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import stripe

from chargectl.common.clock import Clock
from chargectl.common.codec import UserAccount
from chargectl.common.errors import NotFoundError, PaymentError
from chargectl.common.ids import MAX_UID, valid_uid
from chargectl.services.adapters.store import Store
from chargectl.services.payments.accounts import (
    CHECKOUT_TOPUP,
    OFFSESSION_TOPUP,
    PURPOSE_KEY,
    SAVE_CARD,
    flag_payment_action,
)
from chargectl.services.payments.money import check_charge
from chargectl.services.payments.settings import PaymentsSettings

__all__ = [
    "ChargeResult",
    "CheckoutLink",
    "CustomerResult",
    "SetupIntentInfo",
    "StripeOps",
]

log = logging.getLogger("chargectl.payments")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CustomerResult:
    user_id: str
    customer_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class CheckoutLink:
    """A Checkout Session the user must open; ``url`` is for the user only (never log it)."""

    session_id: str
    url: str
    amount_minor: int
    currency: str
    intent_id: str


@dataclass(frozen=True, slots=True)
class SetupIntentInfo:
    """A SetupIntent for an app to confirm with Stripe.js (the client secret goes to that client only)."""

    setup_intent_id: str
    client_secret: str
    status: str


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """What an off-session charge did; ``status`` is Stripe's PaymentIntent status."""

    user_id: str
    payment_intent_id: str
    status: str
    amount_minor: int
    currency: str
    entry_id: str

    @property
    def needs_action(self) -> bool:
        return self.status in ("requires_action", "requires_payment_method")


def _validate_uid(uid: str) -> str:
    uid = uid.strip()
    if not valid_uid(uid):
        raise PaymentError(f"invalid user id {uid!r} (1-{MAX_UID} printable characters, no spaces or '/')")
    return uid


def _stripe_message(exc: stripe.StripeError) -> str:
    """A one-line reason without echoing request data (API keys are never part of it)."""
    if isinstance(exc, stripe.AuthenticationError):
        return "the Stripe API key was rejected"
    if isinstance(exc, stripe.APIConnectionError):
        return "could not reach Stripe"
    message = exc.user_message or getattr(exc, "_message", None) or type(exc).__name__
    return " ".join(str(message).split())


def _quiet_library_debug_log() -> None:
    """The stripe library logs request and response bodies (portal and Checkout URLs) at DEBUG: never emit them."""
    library = logging.getLogger("stripe")
    if library.getEffectiveLevel() < logging.INFO:
        library.setLevel(logging.INFO)


def _metadata_uid(obj: Any) -> str:
    metadata = getattr(obj, "metadata", None) or {}
    return str(metadata["uid"]) if "uid" in metadata else ""


class StripeOps:
    """Stripe calls on behalf of users in a :class:`Store`; one ``StripeClient``, no global API key."""

    def __init__(
        self, client: stripe.StripeClient, store: Store, clock: Clock, settings: PaymentsSettings
    ) -> None:
        self.client = client
        self.store = store
        self.clock = clock
        self.settings = settings

    @classmethod
    def connect(
        cls, api_key: str, store: Store, clock: Clock, settings: PaymentsSettings, api_base: str = ""
    ) -> StripeOps:
        """Build the client for ``api_key`` (and a local server at ``api_base``, if given)."""
        if not api_key:
            raise PaymentError("no Stripe API key: set STRIPE_API_KEY")
        base = api_base or settings.api_base
        addresses: Any = {"api": base.rstrip("/")} if base else None
        client = stripe.StripeClient(api_key, base_addresses=addresses, max_network_retries=2)
        _quiet_library_debug_log()
        return cls(client, store, clock, settings)

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except stripe.StripeError as exc:
            raise PaymentError(f"{what} failed: {_stripe_message(exc)}") from exc

    # ------------------------------------------------------------------ customers

    def user(self, uid: str) -> UserAccount:
        """Our account for ``uid``; NotFoundError if there is none."""
        user = self.store.get_user(_validate_uid(uid))
        if user is None:
            raise NotFoundError(f"no user {uid!r}; create it with `chargectl payments customer create`")
        return user

    def _customer_of(self, uid: str) -> tuple[UserAccount, str]:
        user = self.user(uid)
        if not user.stripe_customer_id:
            raise PaymentError(
                f"user {uid!r} has no Stripe customer; run `chargectl payments customer create`"
            )
        return user, user.stripe_customer_id

    def ensure_customer(self, uid: str, email: str, name: str = "") -> CustomerResult:
        """The user's Stripe customer, created once per uid (metadata ``uid``) and stored on the account."""
        uid = _validate_uid(uid)
        email = email.strip()
        if "@" not in email or any(c.isspace() for c in email):
            raise PaymentError(f"invalid email address {email!r}")
        now_ms = self._now_ms()
        user = self.store.get_user(uid)
        if user is not None and user.stripe_customer_id:
            return CustomerResult(uid, user.stripe_customer_id, created=False)
        # A crash between Stripe's answer and our write leaves a customer we do not know about; the
        # idempotency key covers 24 h of retries, the metadata lookup covers the rest.
        found = self._call(
            "looking up the Stripe customer",
            lambda: self.client.v1.customers.list(params={"email": email, "limit": 100}),
        )
        existing = next((str(c.id) for c in found.data if _metadata_uid(c) == uid), None)
        created = existing is None
        if existing is None:
            params: dict[str, Any] = {"email": email, "metadata": {"uid": uid}}
            if name:
                params["name"] = name
            customer = self._call(
                "creating the Stripe customer",
                lambda: self.client.v1.customers.create(
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": f"customer-create-{uid}"},
                ),
            )
            existing = customer.id
        customer_id = existing

        def change(account: UserAccount | None) -> UserAccount:
            # The account as stored now (the webhook or the app may have changed it since we read it).
            if account is None:
                account = UserAccount(user_id=uid, currency=self.settings.currency, created_at_ms=now_ms)
            account.email = email
            if name:
                account.name = name
            account.stripe_customer_id = customer_id
            account.updated_at_ms = now_ms
            return account

        self.store.update_user(uid, change)
        log.info("user %s: Stripe customer %s %s", uid, existing, "created" if created else "linked")
        return CustomerResult(uid, existing, created=created)

    # ------------------------------------------------------------------ portal and saving a card

    def portal_url(self, uid: str, return_url: str = "") -> str:
        """A single-use billing portal URL for the user to manage payment methods (do not log it)."""
        _, customer = self._customer_of(uid)
        session = self._call(
            "creating the billing portal session",
            lambda: self.client.v1.billing_portal.sessions.create(
                params={"customer": customer, "return_url": return_url or self.settings.return_url}
            ),
        )
        log.info("user %s: billing portal session created", uid)
        return str(session.url)

    def setup_checkout(self, uid: str) -> CheckoutLink:
        """A Checkout Session in setup mode that saves a card for off-session charges."""
        _, customer = self._customer_of(uid)
        intent_id = f"setup_{uuid.uuid4().hex}"
        metadata = {"uid": uid, PURPOSE_KEY: SAVE_CARD}
        session = self._call(
            "creating the card setup page",
            lambda: self.client.v1.checkout.sessions.create(
                params={  # type: ignore[arg-type]
                    "mode": "setup",
                    "customer": customer,
                    "currency": self.settings.currency,
                    "payment_method_types": ["card"],
                    "client_reference_id": uid,
                    "metadata": metadata,
                    "setup_intent_data": {"metadata": metadata},
                    "success_url": self.settings.success_url,
                    "cancel_url": self.settings.cancel_url,
                },
                options={"idempotency_key": f"checkout-{intent_id}"},
            ),
        )
        log.info("user %s: card setup session %s created", uid, session.id)
        return CheckoutLink(session.id, str(session.url), 0, self.settings.currency, intent_id)

    def setup_intent(self, uid: str) -> SetupIntentInfo:
        """A SetupIntent (``usage=off_session``) for an app that collects the card itself with Stripe.js."""
        _, customer = self._customer_of(uid)
        intent = self._call(
            "creating the SetupIntent",
            lambda: self.client.v1.setup_intents.create(
                params={  # type: ignore[arg-type]
                    "customer": customer,
                    "usage": "off_session",
                    "payment_method_types": ["card"],
                    "metadata": {"uid": uid, PURPOSE_KEY: SAVE_CARD},
                },
                options={"idempotency_key": f"setup-intent-{uuid.uuid4().hex}"},
            ),
        )
        return SetupIntentInfo(intent.id, str(intent.client_secret), str(intent.status))

    # ------------------------------------------------------------------ top-ups

    def topup_checkout(self, uid: str, amount_minor: int, currency: str = "") -> CheckoutLink:
        """A Checkout Session (payment mode) for a top-up; the webhook credits it once it is paid."""
        user, customer = self._customer_of(uid)
        code = check_charge(
            amount_minor, currency or user.currency or self.settings.currency, self.settings.min_topup_minor
        )
        intent_id = f"topup_{uuid.uuid4().hex}"
        metadata = {"uid": uid, PURPOSE_KEY: CHECKOUT_TOPUP, "ledger_intent_id": intent_id}
        session = self._call(
            "creating the top-up page",
            lambda: self.client.v1.checkout.sessions.create(
                params={  # type: ignore[arg-type]
                    "mode": "payment",
                    "customer": customer,
                    "client_reference_id": uid,
                    "payment_method_types": ["card"],
                    "line_items": [
                        {
                            "quantity": 1,
                            "price_data": {
                                "currency": code,
                                "unit_amount": amount_minor,
                                "product_data": {"name": "Charging balance top-up"},
                            },
                        }
                    ],
                    "metadata": metadata,
                    # Save the card for later automatic top-ups; the PaymentIntent is marked as a
                    # Checkout top-up so its own succeeded event never credits a second time.
                    "payment_intent_data": {"metadata": metadata, "setup_future_usage": "off_session"},
                    "success_url": self.settings.success_url,
                    "cancel_url": self.settings.cancel_url,
                },
                options={"idempotency_key": f"checkout-{intent_id}"},
            ),
        )
        log.info("user %s: top-up session %s for %d %s created", uid, session.id, amount_minor, code)
        return CheckoutLink(session.id, str(session.url), amount_minor, code, intent_id)

    def _saved_card(self, user: UserAccount, customer: str) -> str:
        if user.default_payment_method:
            return user.default_payment_method
        cards = self._call(
            "listing saved cards",
            lambda: self.client.v1.payment_methods.list(params={"customer": customer, "type": "card"}),
        )
        if not cards.data:
            raise PaymentError(f"user {user.user_id!r} has no saved card; run `chargectl payments setup`")
        return str(cards.data[0].id)

    def charge_off_session(
        self, uid: str, amount_minor: int, currency: str = "", entry_id: str = ""
    ) -> ChargeResult:
        """Charge the saved card without the user (``off_session``, ``confirm``); the webhook credits it.

        When the bank wants the user to authenticate, the ledger is untouched and the account is flagged
        (``needs_payment_action``, ``payment_action_intent_id``) so the app can bring the user back.
        ``entry_id`` names this top-up; the same id never charges twice (it is the idempotency key).
        """
        user, customer = self._customer_of(uid)
        code = check_charge(
            amount_minor, currency or user.currency or self.settings.currency, self.settings.min_topup_minor
        )
        entry_id = entry_id or f"offsession_{uuid.uuid4().hex}"
        payment_method = self._saved_card(user, customer)
        params: dict[str, Any] = {
            "amount": amount_minor,
            "currency": code,
            "customer": customer,
            "payment_method": payment_method,
            "off_session": True,
            "confirm": True,
            "metadata": {"uid": uid, PURPOSE_KEY: OFFSESSION_TOPUP, "ledger_intent_id": entry_id},
        }
        try:
            intent = self.client.v1.payment_intents.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"offsession-topup-{entry_id}"},
            )
        except stripe.CardError as exc:
            failed = exc.error.payment_intent if exc.error is not None else None
            if exc.code == "authentication_required" and failed is not None:
                # Real Stripe: the PaymentIntent is left requires_payment_method.
                self.flag_payment_action(uid, failed.id)
                return ChargeResult(uid, failed.id, str(failed.status), amount_minor, code, entry_id)
            raise PaymentError(f"charging the saved card of {uid!r} failed: {_stripe_message(exc)}") from exc
        except stripe.StripeError as exc:
            raise PaymentError(f"charging the saved card of {uid!r} failed: {_stripe_message(exc)}") from exc
        status = str(intent.status)
        if status == "requires_action":
            # localstripe answers a 3-D Secure card this way instead of raising authentication_required.
            self.flag_payment_action(uid, intent.id)
        log.info("user %s: off-session charge %s for %d %s: %s", uid, intent.id, amount_minor, code, status)
        return ChargeResult(uid, intent.id, status, amount_minor, code, entry_id)

    def flag_payment_action(self, uid: str, payment_intent_id: str) -> None:
        """Mark the account: the user must come back and confirm ``payment_intent_id``."""
        flag_payment_action(self.store, uid, payment_intent_id, self._now_ms())
        log.warning("user %s: off-session charge %s needs the user to authenticate", uid, payment_intent_id)
