"""Payments: the prepaid ledger, Stripe operations and the webhook handler.

The Stripe modules load the ``stripe`` SDK, so they are imported on first use (the hub imports this
package for the ledger and must stay free of SDKs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from chargectl.services.payments.ledger import KINDS, Ledger, LedgerKind, Posting
from chargectl.services.payments.money import check_charge, format_minor, parse_amount
from chargectl.services.payments.settings import PaymentsSettings

if TYPE_CHECKING:
    from chargectl.services.payments.stripe_ops import ChargeResult, CheckoutLink, CustomerResult, StripeOps
    from chargectl.services.payments.webhook import (
        Outcome,
        WebhookHandler,
        WebhookServer,
        WebhookSignatureError,
    )

__all__ = [
    "KINDS",
    "ChargeResult",
    "CheckoutLink",
    "CustomerResult",
    "Ledger",
    "LedgerKind",
    "Outcome",
    "PaymentsSettings",
    "Posting",
    "StripeOps",
    "WebhookHandler",
    "WebhookServer",
    "WebhookSignatureError",
    "check_charge",
    "format_minor",
    "parse_amount",
]

_LAZY = {
    "ChargeResult": "stripe_ops",
    "CheckoutLink": "stripe_ops",
    "CustomerResult": "stripe_ops",
    "StripeOps": "stripe_ops",
    "Outcome": "webhook",
    "WebhookHandler": "webhook",
    "WebhookServer": "webhook",
    "WebhookSignatureError": "webhook",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"chargectl.services.payments.{module}"), name)
