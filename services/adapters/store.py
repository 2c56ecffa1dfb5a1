"""The frontend store port: users, ledger, charge requests, sessions, plug states, sites, checkpoints.

Embedded: :class:`~chargectl.services.adapters.sqlite_store.SqliteStore`. Cloud: Firestore. Records are the
contract messages from ``chargectl.common.codec`` (a Firestore document is the same message as a map).
Writes that must happen once (ledger entries, webhook events, request answers) are create-if-absent or
conditional, so replays are no-ops and no document is contended.
"""

from __future__ import annotations

from typing import Protocol

from chargectl.common.codec import ChargeRequest, ChargeSession, LedgerEntry, PlugState, Site, UserAccount

__all__ = ["Store"]


class Store(Protocol):
    # users
    def get_user(self, user_id: str) -> UserAccount | None: ...

    def put_user(self, user: UserAccount) -> None: ...

    def list_users(self) -> list[UserAccount]: ...

    # ledger: append-only, create-if-absent by entry_id
    def append_ledger(self, entry: LedgerEntry) -> bool:
        """Store ``entry`` unless its ``entry_id`` exists; True if it was new."""
        ...

    def get_ledger_entry(self, entry_id: str) -> LedgerEntry | None: ...

    def ledger_entries(self, user_id: str | None = None) -> list[LedgerEntry]:
        """Entries oldest first (by created_at_ms, then entry_id)."""
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
