"""The prepaid ledger: append-only entries with deterministic ids; balances are sums of entries.

An entry's id names its cause (the Stripe event id for a top-up or refund, the session id for a session
debit), and entries are written create-if-absent, so replaying any cause can never post twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from chargectl.common.codec import LedgerEntry, Money
from chargectl.common.errors import StoreError
from chargectl.services.adapters.store import Store

__all__ = ["KINDS", "Ledger", "LedgerKind", "Posting"]

LedgerKind = Literal["topup", "session_debit", "refund", "adjustment", "dispute"]
KINDS: dict[LedgerKind, int] = {
    "topup": LedgerEntry.KIND_TOPUP,
    "session_debit": LedgerEntry.KIND_SESSION_DEBIT,
    "refund": LedgerEntry.KIND_REFUND,
    "adjustment": LedgerEntry.KIND_ADJUSTMENT,
    "dispute": LedgerEntry.KIND_DISPUTE,
}
_KIND_NAMES = {v: k for k, v in KINDS.items()}


@dataclass(frozen=True, slots=True)
class Posting:
    """A ledger entry as a plain value (what the CLI prints)."""

    entry_id: str
    user_id: str
    kind: str
    amount_minor: int
    currency: str
    reference: str
    description: str
    created_at_ms: int

    @classmethod
    def of(cls, entry: LedgerEntry) -> Posting:
        return cls(
            entry_id=entry.entry_id,
            user_id=entry.user_id,
            kind=_KIND_NAMES.get(entry.kind, "adjustment"),
            amount_minor=entry.amount.amount_minor,
            currency=entry.amount.currency,
            reference=entry.reference,
            description=entry.description,
            created_at_ms=entry.created_at_ms,
        )


class Ledger:
    """Post entries and read balances through a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def post(
        self,
        entry_id: str,
        user_id: str,
        kind: LedgerKind,
        amount_minor: int,
        currency: str,
        now_ms: int,
        reference: str = "",
        description: str = "",
    ) -> bool:
        """Append an entry (credit > 0, debit < 0); False if ``entry_id`` was already posted."""
        if not entry_id or not user_id:
            raise StoreError("a ledger entry needs an entry id and a user id")
        if kind not in KINDS:
            raise StoreError(f"unknown ledger entry kind {kind!r}")
        if not currency or len(currency) != 3:
            raise StoreError(f"invalid currency {currency!r}")
        entry = LedgerEntry(
            entry_id=entry_id,
            user_id=user_id,
            kind=KINDS[kind],  # type: ignore[arg-type]
            amount=Money(amount_minor=int(amount_minor), currency=currency.lower()),
            reference=reference,
            description=description,
            created_at_ms=now_ms,
        )
        return self.store.append_ledger(entry)

    def balance(self, user_id: str, currency: str | None = None) -> int:
        """The user's balance in ``currency`` (minor units). Balances never add across currencies:
        without ``currency`` the user's only currency is meant, and several raise ``StoreError``."""
        by_currency = self.balances_of(user_id)
        if currency is not None:
            return by_currency.get(currency.lower(), 0)
        if len(by_currency) > 1:
            raise StoreError(
                f"user {user_id} has balances in {', '.join(sorted(by_currency))}: name the currency"
            )
        return next(iter(by_currency.values()), 0)

    def balances_of(self, user_id: str) -> dict[str, int]:
        """The user's balance per currency (lower-case code -> minor units)."""
        totals: dict[str, int] = defaultdict(int)
        for e in self.store.ledger_entries(user_id):
            totals[e.amount.currency.lower()] += e.amount.amount_minor
        return dict(totals)

    def balances(self, currency: str | None = None) -> dict[str, int]:
        """Every user's balance in ``currency``, rebuilt from the whole ledger. Without ``currency`` each
        user's only currency is meant; a user with several raises ``StoreError`` (never added up)."""
        out: dict[str, int] = {}
        for (user, cur), amount in self.balances_by_currency().items():
            if currency is not None:
                if cur == currency.lower():
                    out[user] = amount
            elif user in out:
                raise StoreError(f"user {user} has balances in several currencies: name the currency")
            else:
                out[user] = amount
        return out

    def balances_by_currency(self) -> dict[tuple[str, str], int]:
        """Every user's balance per currency, ``(user_id, currency) -> minor units`` (the hub at start)."""
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for e in self.store.ledger_entries():
            totals[(e.user_id, e.amount.currency.lower())] += e.amount.amount_minor
        return dict(totals)

    def history(self, user_id: str) -> list[Posting]:
        return [Posting.of(e) for e in self.store.ledger_entries(user_id)]
