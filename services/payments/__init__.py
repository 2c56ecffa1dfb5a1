"""Payments: the prepaid ledger, Stripe operations and the webhook handler."""

from chargectl.services.payments.ledger import KINDS, Ledger, LedgerKind, Posting

__all__ = ["KINDS", "Ledger", "LedgerKind", "Posting"]
