"""The frontend store port: users, ledger, charge requests, sessions, plug states, sites, checkpoints.

Embedded: :class:`~chargectl.services.adapters.sqlite_store.SqliteStore`. Cloud: Firestore. Records are the
contract messages from ``chargectl.common.codec`` (a Firestore document is the same message as a map).
Writes that must happen once (ledger entries, webhook events, request answers) are create-if-absent or
conditional, so replays are no-ops and no document is contended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from chargectl.common.codec import ChargeRequest, ChargeSession, LedgerEntry, PlugState, Site, UserAccount
from chargectl.common.errors import StoreError

__all__ = ["AutoTopupState", "Store", "UnmatchedPayment", "check_event"]


# ---------------------------------------------------------------- payments records (issue 14)


@dataclass(frozen=True, slots=True)
class UnmatchedPayment:
    """Money Stripe took that the webhook could not credit (unknown user or customer, another currency).

    Kept until an operator assigns it to a user (``resolved_user_id``, ``entry_id``) or refunds it.
    ``payment_id`` is the Stripe object (PaymentIntent or Checkout Session) that carried the money.
    """

    payment_id: str
    event_id: str
    event_type: str
    amount_minor: int
    currency: str
    reason: str
    created_at_ms: int
    customer_id: str = ""
    uid_hint: str = ""
    resolved_user_id: str = ""
    resolved_at_ms: int = 0
    entry_id: str = ""

    @property
    def resolved(self) -> bool:
        return bool(self.resolved_user_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> UnmatchedPayment:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True, slots=True)
class AutoTopupState:
    """A user's automatic top-up bookkeeping (per user; the currency is the account's).

    ``armed`` is False from the charge made for one threshold crossing until the balance is back at or
    above the threshold; ``crossing`` counts crossings (it names the Stripe idempotency key);
    ``in_flight_key`` is the charge being made; ``declined`` stops retries until the user acts.
    """

    user_id: str
    armed: bool = True
    crossing: int = 0
    in_flight_key: str = ""
    in_flight_since_ms: int = 0
    last_intent_id: str = ""
    last_status: str = ""
    declined: bool = False
    declined_card: str = ""  # the card that was declined: a different saved card lifts the stop
    decline_reason: str = ""
    declined_at_ms: int = 0
    updated_at_ms: int = 0
    version: int = 0  # 0 = never stored; each stored write is one more

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AutoTopupState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


def check_event(event_id: str, entries: Sequence[LedgerEntry]) -> None:
    """What every store requires of :meth:`Store.record_event`'s arguments, before any write."""
    if not event_id:
        raise StoreError("an event needs an id")
    if any(not e.entry_id or not e.user_id for e in entries):
        raise StoreError("a ledger entry needs an entry_id and a user_id")


class Store(Protocol):
    # users
    def get_user(self, user_id: str) -> UserAccount | None: ...

    def put_user(self, user: UserAccount) -> None:
        """Store the whole account document. Only for a document nobody else can be writing (a new
        account in a test or a demo); a change to an account that exists goes through :meth:`update_user`."""
        ...

    def update_user(
        self, user_id: str, change: Callable[[UserAccount | None], UserAccount | None]
    ) -> UserAccount | None:
        """Read-modify-write one account in a transaction, so two writers (the webhook saving a card,
        the app setting auto top-up, on two instances) never overwrite each other's fields.

        ``change`` gets a copy of the stored account (None if there is none) and returns the account
        to store, or None to store nothing. It may run more than once (a transaction retried on
        contention), so it must do nothing but compute. Returns the account stored, or None."""
        ...

    def list_users(self) -> list[UserAccount]: ...

    def user_by_customer(self, customer_id: str) -> UserAccount | None:
        """The account linked to a Stripe customer (a query, not a read of every account: each
        webhook event asks it); None if none."""
        ...

    # ledger: append-only, create-if-absent by entry_id
    def append_ledger(self, entry: LedgerEntry) -> bool:
        """Store ``entry`` unless its ``entry_id`` exists; True if it was new."""
        ...

    def get_ledger_entry(self, entry_id: str) -> LedgerEntry | None: ...

    def ledger_entries(self, user_id: str | None = None) -> list[LedgerEntry]:
        """Entries oldest first (by created_at_ms, then entry_id)."""
        ...

    def ledger_by_reference(self, references: Sequence[str]) -> list[LedgerEntry]:
        """The entries whose ``reference`` is one of ``references`` (at most 30), oldest first: a
        query, not a read of the whole ledger (a refund asks which user a payment credited)."""
        ...

    # charge requests
    def add_request(self, request: ChargeRequest) -> bool:
        """Create the request unless its id exists; True if it was new."""
        ...

    def get_request(self, request_id: str) -> ChargeRequest | None: ...

    def pending_requests(self) -> list[ChargeRequest]: ...

    def answer_request(
        self, request_id: str, status: int, reason: str, session_id: str, answered_at_ms: int
    ) -> bool:
        """Answer a pending request; False (and no change) if it is unknown or already answered."""
        ...

    # sessions
    def put_session(self, session: ChargeSession) -> None: ...

    def create_session(self, session: ChargeSession) -> bool:
        """Store ``session`` unless a document with its id exists; True if it was new."""
        ...

    def get_session(self, session_id: str) -> ChargeSession | None: ...

    def list_sessions(
        self,
        user_id: str | None = None,
        plug_mac: str | None = None,
        active_only: bool = False,
        limit: int = 100,
    ) -> list[ChargeSession]:
        """Newest first."""
        ...

    # plug states
    def put_plug_state(self, state: PlugState) -> None: ...

    def get_plug_state(self, plug_mac: str) -> PlugState | None: ...

    def list_plug_states(self, site_id: str | None = None) -> list[PlugState]: ...

    # sites
    def put_site(self, site: Site) -> None: ...

    def get_site(self, site_id: str) -> Site | None: ...

    def list_sites(self) -> list[Site]: ...

    # processed external events (webhook dedupe)
    def mark_event(self, event_id: str, kind: str, at_ms: int) -> bool:
        """Record ``event_id`` as processed; True the first time, False on every replay."""
        ...

    # ------------------------------------------------------------ payments (issue 14)

    def record_event(
        self,
        event_id: str,
        kind: str,
        at_ms: int,
        entries: Sequence[LedgerEntry] = (),
        unmatched: UnmatchedPayment | None = None,
    ) -> tuple[bool, int]:
        """In one transaction: record ``event_id`` as processed, create the ``entries`` that do not
        exist yet and the ``unmatched`` payment if given and new. Returns (first time, entries created);
        a replayed event changes nothing and returns (False, 0)."""
        ...

    def get_unmatched_payment(self, payment_id: str) -> UnmatchedPayment | None: ...

    def list_unmatched_payments(self, include_resolved: bool = False) -> list[UnmatchedPayment]:
        """Oldest first."""
        ...

    def assign_unmatched_payment(self, payment_id: str, entry: LedgerEntry, at_ms: int) -> bool:
        """In one transaction: mark the payment resolved to ``entry.user_id`` and post ``entry``.
        False (and no change) if the payment is unknown or already resolved."""
        ...

    def get_topup_state(self, user_id: str) -> AutoTopupState | None: ...

    def update_topup_state(self, state: AutoTopupState) -> bool:
        """Store ``state`` if the stored version is ``state.version - 1`` (none stored counts as 0):
        a compare-and-set, so of two writers from the same version exactly one wins; False = lost."""
        ...

    # opaque checkpoints (the hub's state)
    def save_checkpoint(self, name: str, data: bytes) -> None: ...

    def load_checkpoint(self, name: str) -> bytes | None: ...

    def close(self) -> None: ...

    # ---------------------------------------------------------------- hub: plug bindings, finishing
    # (issue 13) A plug belongs to one site; a session is finished and debited in one transaction.

    def bind_plug(self, plug_mac: str, site_id: str, at_ms: int, replace: bool = False) -> str:
        """Bind ``plug_mac`` to ``site_id`` unless it is bound already (``replace``: move it there).

        Returns the site the plug is bound to afterwards."""
        ...

    def release_plug(self, plug_mac: str) -> bool:
        """Forget the plug's binding (the next site to report it owns it); False if it had none."""
        ...

    def plug_bindings(self) -> dict[str, str]:
        """Every bound plug: MAC -> site id."""
        ...

    def finish_session(self, session: ChargeSession, debit: LedgerEntry | None) -> bool:
        """In one transaction: the COMPLETED ``session`` document and its ``debit`` (create-if-absent).

        False (and nothing written) if the session document is already COMPLETED."""
        ...
