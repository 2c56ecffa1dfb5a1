"""The embedded store on SQLite: each record is its contract message's bytes plus indexed columns."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import Message

from chargectl.common.codec import ChargeRequest, ChargeSession, LedgerEntry, PlugState, Site, UserAccount
from chargectl.common.errors import StoreError
from chargectl.services.adapters.store import AutoTopupState, UnmatchedPayment, check_event

__all__ = ["SqliteStore"]

M = TypeVar("M", bound=Message)

log = logging.getLogger("chargectl.sqlite")

WATCH_INTERVAL_S = 0.1  # how often a watcher looks for requests written by another process

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    entry_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_at_ms INTEGER NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_user ON ledger (user_id, created_at_ms);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, status INTEGER NOT NULL, created_at_ms INTEGER NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, created_at_ms);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, plug_mac TEXT NOT NULL, status INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id, started_at_ms);
CREATE INDEX IF NOT EXISTS sessions_plug ON sessions (plug_mac, started_at_ms);
CREATE TABLE IF NOT EXISTS plug_states (plug_mac TEXT PRIMARY KEY, site_id TEXT NOT NULL, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sites (site_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, kind TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS unmatched_payments (
    payment_id TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, resolved INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS topup_states (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plug_sites (plug_mac TEXT PRIMARY KEY, site_id TEXT NOT NULL, at_ms INTEGER NOT NULL);
"""


class SqliteStore:
    """A :class:`~chargectl.services.adapters.store.Store` in one SQLite file (WAL, thread-safe)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        self._lock = threading.RLock()
        self._request_added = threading.Condition()  # add_request in this process wakes the watchers
        self._request_generation = 0

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"store write failed: {exc}") from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _one(self, cls: type[M], sql: str, args: tuple[object, ...]) -> M | None:
        with self._lock:
            try:
                row = self._db.execute(sql, args).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        return None if row is None else _parse(cls, row[0])

    def _many(self, cls: type[M], sql: str, args: tuple[object, ...] = ()) -> list[M]:
        with self._lock:
            try:
                rows = self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        return [_parse(cls, row[0]) for row in rows]

    # users
    def get_user(self, user_id: str) -> UserAccount | None:
        return self._one(UserAccount, "SELECT doc FROM users WHERE user_id = ?", (user_id,))

    def put_user(self, user: UserAccount) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO users (user_id, doc) VALUES (?, ?)",
                (user.user_id, user.SerializeToString()),
            )

    def update_user(
        self, user_id: str, change: Callable[[UserAccount | None], UserAccount | None]
    ) -> UserAccount | None:
        with self._tx() as db:  # BEGIN IMMEDIATE: no other process writes between the read and the write
            row = db.execute("SELECT doc FROM users WHERE user_id = ?", (user_id,)).fetchone()
            new = change(None if row is None else _parse(UserAccount, row[0]))
            if new is None:
                return None
            if new.user_id != user_id:
                raise StoreError(f"an update of user {user_id!r} returned the account of {new.user_id!r}")
            db.execute(
                "INSERT OR REPLACE INTO users (user_id, doc) VALUES (?, ?)",
                (user_id, new.SerializeToString()),
            )
            return new

    def list_users(self) -> list[UserAccount]:
        return self._many(UserAccount, "SELECT doc FROM users ORDER BY user_id")

    def user_by_customer(self, customer_id: str) -> UserAccount | None:
        # The embedded store is one site's users: a scan of the documents is what an index would buy.
        if not customer_id:
            return None
        return next((u for u in self.list_users() if u.stripe_customer_id == customer_id), None)

    # ledger
    def append_ledger(self, entry: LedgerEntry) -> bool:
        if not entry.entry_id or not entry.user_id:
            raise StoreError("a ledger entry needs an entry_id and a user_id")
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO ledger (entry_id, user_id, created_at_ms, doc) VALUES (?, ?, ?, ?)",
                (entry.entry_id, entry.user_id, entry.created_at_ms, entry.SerializeToString()),
            )
            return cur.rowcount == 1

    def ledger_changes(self, after: int | None) -> tuple[int, set[str]]:
        """The ledger's position now and the users with an entry posted (by any process) since
        position ``after`` (``None``: only the position). Rows are never deleted, so the rowid grows."""
        with self._lock:
            try:
                if after is None:
                    row = self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM ledger").fetchone()
                    return int(row[0]), set()
                rows = self._db.execute(
                    "SELECT rowid, user_id FROM ledger WHERE rowid > ?", (after,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        return max((int(r[0]) for r in rows), default=after), {str(r[1]) for r in rows}

    def get_ledger_entry(self, entry_id: str) -> LedgerEntry | None:
        return self._one(LedgerEntry, "SELECT doc FROM ledger WHERE entry_id = ?", (entry_id,))

    def ledger_entries(self, user_id: str | None = None) -> list[LedgerEntry]:
        if user_id is None:
            return self._many(LedgerEntry, "SELECT doc FROM ledger ORDER BY created_at_ms, entry_id")
        return self._many(
            LedgerEntry,
            "SELECT doc FROM ledger WHERE user_id = ? ORDER BY created_at_ms, entry_id",
            (user_id,),
        )

    def ledger_by_reference(self, references: Sequence[str]) -> list[LedgerEntry]:
        refs = _references(references)
        return [e for e in self.ledger_entries() if e.reference in refs]

    # requests
    def add_request(self, request: ChargeRequest) -> bool:
        if not request.request_id:
            raise StoreError("a charge request needs a request_id")
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO requests (request_id, status, created_at_ms, doc) VALUES (?, ?, ?, ?)",
                (request.request_id, request.status, request.created_at_ms, request.SerializeToString()),
            )
            added = cur.rowcount == 1
        if added:
            with self._request_added:
                self._request_generation += 1
                self._request_added.notify_all()
        return added

    def get_request(self, request_id: str) -> ChargeRequest | None:
        return self._one(ChargeRequest, "SELECT doc FROM requests WHERE request_id = ?", (request_id,))

    def pending_requests(self) -> list[ChargeRequest]:
        return self._many(
            ChargeRequest,
            "SELECT doc FROM requests WHERE status IN (?, ?) ORDER BY created_at_ms, request_id",
            (ChargeRequest.STATUS_PENDING, ChargeRequest.STATUS_UNSPECIFIED),
        )

    def watch_requests(
        self, callback: Callable[[ChargeRequest], None], interval_s: float = WATCH_INTERVAL_S
    ) -> Callable[[], None]:
        """Call ``callback`` (on a watcher thread) for each pending request, existing or new.

        A request added through this store object wakes the watcher at once; one written by another
        process (another connection to the file, e.g. ``chargectl session start``) is noticed within
        ``interval_s`` by SQLite's ``data_version``, which moves only when another connection commits.
        Each pending request is delivered once while it stays pending; answering is guarded anyway.
        Returns a function that stops the watcher (and waits for it).
        """
        stopped = threading.Event()
        delivered: set[str] = set()

        def pending_if_changed(last_version: int | None) -> tuple[int, list[ChargeRequest] | None]:
            with self._lock:
                version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
            if version == last_version:
                return version, None
            return version, self.pending_requests()

        def run() -> None:
            version: int | None = None
            generation = -1
            while not stopped.is_set():
                with self._request_added:
                    if generation == self._request_generation:
                        self._request_added.wait(interval_s)
                    woken = generation != self._request_generation
                    generation = self._request_generation
                if stopped.is_set():
                    return
                try:
                    version, pending = pending_if_changed(None if woken else version)
                except (sqlite3.Error, StoreError) as exc:  # closed or busy: try again next round
                    log.debug("request watcher cannot read the store: %s", exc)
                    continue
                if pending is None:
                    continue
                ids = {req.request_id for req in pending}
                delivered.intersection_update(ids)  # answered ones are forgotten (bounded)
                for req in pending:
                    if req.request_id in delivered:
                        continue
                    delivered.add(req.request_id)
                    try:
                        callback(req)
                    except Exception:  # one bad request must not kill the watcher
                        log.exception("cannot handle charge request %s", req.request_id)

        thread = threading.Thread(target=run, name="sqlite-watch-requests", daemon=True)
        thread.start()

        def unwatch() -> None:
            stopped.set()
            with self._request_added:
                self._request_added.notify_all()
            if thread is not threading.current_thread():
                thread.join(timeout=5)

        return unwatch

    def answer_request(
        self, request_id: str, status: int, reason: str, session_id: str, answered_at_ms: int
    ) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT doc FROM requests WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                return False
            req = _parse(ChargeRequest, row[0])
            if req.status not in (ChargeRequest.STATUS_PENDING, ChargeRequest.STATUS_UNSPECIFIED):
                return False
            req.status = status  # type: ignore[assignment]
            req.reason = reason
            req.session_id = session_id
            req.answered_at_ms = answered_at_ms
            db.execute(
                "UPDATE requests SET status = ?, doc = ? WHERE request_id = ?",
                (status, req.SerializeToString(), request_id),
            )
            return True

    # sessions
    def put_session(self, session: ChargeSession) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO sessions (session_id, user_id, plug_mac, status, started_at_ms, doc)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                _session_row(session),
            )

    def create_session(self, session: ChargeSession) -> bool:
        if not session.session_id:
            raise StoreError("a ChargeSession needs an id to be stored")
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO sessions (session_id, user_id, plug_mac, status, started_at_ms, doc)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                _session_row(session),
            )
            return cur.rowcount == 1

    def get_session(self, session_id: str) -> ChargeSession | None:
        return self._one(ChargeSession, "SELECT doc FROM sessions WHERE session_id = ?", (session_id,))

    def list_sessions(
        self,
        user_id: str | None = None,
        plug_mac: str | None = None,
        active_only: bool = False,
        limit: int = 100,
    ) -> list[ChargeSession]:
        where: list[str] = []
        args: list[object] = []
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        if plug_mac is not None:
            where.append("plug_mac = ?")
            args.append(plug_mac)
        if active_only:
            where.append("status = ?")
            args.append(ChargeSession.STATUS_ACTIVE)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        args.append(limit)
        return self._many(
            ChargeSession,
            f"SELECT doc FROM sessions {clause} ORDER BY started_at_ms DESC, session_id DESC LIMIT ?",
            tuple(args),
        )

    # plug states
    def put_plug_state(self, state: PlugState) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO plug_states (plug_mac, site_id, doc) VALUES (?, ?, ?)",
                (state.plug_mac, state.site_id, state.SerializeToString()),
            )

    def get_plug_state(self, plug_mac: str) -> PlugState | None:
        return self._one(PlugState, "SELECT doc FROM plug_states WHERE plug_mac = ?", (plug_mac,))

    def list_plug_states(self, site_id: str | None = None) -> list[PlugState]:
        if site_id is None:
            return self._many(PlugState, "SELECT doc FROM plug_states ORDER BY site_id, plug_mac")
        return self._many(
            PlugState, "SELECT doc FROM plug_states WHERE site_id = ? ORDER BY plug_mac", (site_id,)
        )

    # sites
    def put_site(self, site: Site) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO sites (site_id, doc) VALUES (?, ?)",
                (site.site_id, site.SerializeToString()),
            )

    def get_site(self, site_id: str) -> Site | None:
        return self._one(Site, "SELECT doc FROM sites WHERE site_id = ?", (site_id,))

    def list_sites(self) -> list[Site]:
        return self._many(Site, "SELECT doc FROM sites ORDER BY site_id")

    # events
    def mark_event(self, event_id: str, kind: str, at_ms: int) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (event_id, kind, at_ms) VALUES (?, ?, ?)",
                (event_id, kind, at_ms),
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------ payments (issue 14)

    def record_event(
        self,
        event_id: str,
        kind: str,
        at_ms: int,
        entries: Sequence[LedgerEntry] = (),
        unmatched: UnmatchedPayment | None = None,
    ) -> tuple[bool, int]:
        check_event(event_id, entries)
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (event_id, kind, at_ms) VALUES (?, ?, ?)",
                (event_id, kind, at_ms),
            )
            if cur.rowcount != 1:
                return False, 0
            created = 0
            for entry in entries:
                cur = db.execute(
                    "INSERT OR IGNORE INTO ledger (entry_id, user_id, created_at_ms, doc) VALUES (?, ?, ?, ?)",
                    (entry.entry_id, entry.user_id, entry.created_at_ms, entry.SerializeToString()),
                )
                created += cur.rowcount
            if unmatched is not None:
                db.execute(
                    "INSERT OR IGNORE INTO unmatched_payments (payment_id, created_at_ms, resolved, doc)"
                    " VALUES (?, ?, ?, ?)",
                    (unmatched.payment_id, unmatched.created_at_ms, 0, json.dumps(unmatched.to_dict())),
                )
            return True, created

    def get_unmatched_payment(self, payment_id: str) -> UnmatchedPayment | None:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM unmatched_payments WHERE payment_id = ?", (payment_id,)
            ).fetchone()
        return None if row is None else UnmatchedPayment.from_dict(json.loads(row[0]))

    def list_unmatched_payments(self, include_resolved: bool = False) -> list[UnmatchedPayment]:
        sql = "SELECT doc FROM unmatched_payments"
        if not include_resolved:
            sql += " WHERE resolved = 0"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at_ms, payment_id").fetchall()
        return [UnmatchedPayment.from_dict(json.loads(r[0])) for r in rows]

    def assign_unmatched_payment(self, payment_id: str, entry: LedgerEntry, at_ms: int) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT doc FROM unmatched_payments WHERE payment_id = ? AND resolved = 0", (payment_id,)
            ).fetchone()
            if row is None:
                return False
            payment = UnmatchedPayment.from_dict(json.loads(row[0]))
            cur = db.execute(
                "INSERT OR IGNORE INTO ledger (entry_id, user_id, created_at_ms, doc) VALUES (?, ?, ?, ?)",
                (entry.entry_id, entry.user_id, entry.created_at_ms, entry.SerializeToString()),
            )
            if cur.rowcount != 1:
                raise StoreError(f"ledger entry {entry.entry_id} already exists")
            done = UnmatchedPayment.from_dict(
                {
                    **payment.to_dict(),
                    "resolved_user_id": entry.user_id,
                    "resolved_at_ms": at_ms,
                    "entry_id": entry.entry_id,
                }
            )
            db.execute(
                "UPDATE unmatched_payments SET resolved = 1, doc = ? WHERE payment_id = ?",
                (json.dumps(done.to_dict()), payment_id),
            )
            return True

    def get_topup_state(self, user_id: str) -> AutoTopupState | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM topup_states WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else AutoTopupState.from_dict(json.loads(row[0]))

    def update_topup_state(self, state: AutoTopupState) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT version FROM topup_states WHERE user_id = ?", (state.user_id,)
            ).fetchone()
            stored = 0 if row is None else int(row[0])
            if stored != state.version - 1:
                return False
            db.execute(
                "INSERT OR REPLACE INTO topup_states (user_id, version, doc) VALUES (?, ?, ?)",
                (state.user_id, state.version, json.dumps(state.to_dict())),
            )
            return True

    # checkpoints
    def save_checkpoint(self, name: str, data: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO checkpoints (name, data) VALUES (?, ?)", (name, data))

    def load_checkpoint(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    # ---------------------------------------------------------------- hub: plug bindings, finishing

    def bind_plug(self, plug_mac: str, site_id: str, at_ms: int, replace: bool = False) -> str:
        if not plug_mac or not site_id:
            raise StoreError("a plug binding needs a plug MAC and a site id")
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self._tx() as db:
            db.execute(
                f"{verb} INTO plug_sites (plug_mac, site_id, at_ms) VALUES (?, ?, ?)",
                (plug_mac, site_id, at_ms),
            )
            row = db.execute("SELECT site_id FROM plug_sites WHERE plug_mac = ?", (plug_mac,)).fetchone()
        return str(row[0])

    def release_plug(self, plug_mac: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM plug_sites WHERE plug_mac = ?", (plug_mac,)).rowcount == 1

    def plug_bindings(self) -> dict[str, str]:
        with self._lock:
            try:
                rows = self._db.execute("SELECT plug_mac, site_id FROM plug_sites").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        return {str(mac): str(site) for mac, site in rows}

    def finish_session(self, session: ChargeSession, debit: LedgerEntry | None) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT status FROM sessions WHERE session_id = ?", (session.session_id,)
            ).fetchone()
            if row is not None and row[0] == ChargeSession.STATUS_COMPLETED:
                return False
            if debit is not None:
                db.execute(
                    "INSERT OR IGNORE INTO ledger (entry_id, user_id, created_at_ms, doc) VALUES (?, ?, ?, ?)",
                    (debit.entry_id, debit.user_id, debit.created_at_ms, debit.SerializeToString()),
                )
            db.execute(
                "INSERT OR REPLACE INTO sessions (session_id, user_id, plug_mac, status, started_at_ms, doc)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                _session_row(session),
            )
        return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _parse(cls: type[M], data: bytes) -> M:
    msg = cls()
    msg.ParseFromString(data)
    return msg


def _session_row(session: ChargeSession) -> tuple[str, str, str, int, int, bytes]:
    """A session's columns (those the store queries by) and its document, in table order."""
    return (
        session.session_id,
        session.user_id,
        session.plug_mac,
        session.status,
        session.started_at_ms,
        session.SerializeToString(),
    )


def _references(references: Sequence[str]) -> set[str]:
    refs = {r for r in references if r}
    if len(refs) > 30:
        raise StoreError(f"at most 30 references per ledger query, got {len(refs)}")
    return refs
