"""The :class:`~chargectl.services.adapters.store.Store` port on Cloud Firestore.

Documents are the contract messages as maps (``codec.to_document``: original field names, enums by
name), so the app reads the same schema the hub writes. Once-only writes use ``create()`` (fails if the
document exists) or an update guarded by the read's ``update_time``; nothing uses a transaction
contended on one document. ``FIRESTORE_EMULATOR_HOST`` is honoured by the client library.

Collections (under an optional ``prefix``): ``users``, ``ledger``, ``charge_requests``, ``sessions``,
``plug_states``, ``sites``, ``processed_events``, ``checkpoints`` (chunked: a document is at most 1 MiB),
``unmatched_payments`` and ``topup_states`` (payments; written in transactions where money moves).

Calls made at once from several threads (a burst of starts on the hub's request threads) are grouped
(:class:`~chargectl.services.adapters.group_commit.GroupCommit`): session creates into one batched commit,
account reads into one ``get_all``, per-user ledger queries into one ``in`` query. The first calls go at
once; those that arrive while four groups are in flight go together in the next.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from google.protobuf.message import Message

from chargectl.common.codec import (
    ChargeRequest,
    ChargeSession,
    LedgerEntry,
    PlugState,
    Site,
    UserAccount,
    from_document,
    to_document,
)
from chargectl.common.errors import StoreError
from chargectl.services.adapters.group_commit import GroupCommit
from chargectl.services.adapters.store import AutoTopupState, UnmatchedPayment, check_event

__all__ = ["FirestoreStore"]

M = TypeVar("M", bound=Message)
_CHUNK = 900_000  # bytes of checkpoint per document, under Firestore's 1 MiB document limit
_PENDING = ("STATUS_PENDING", "STATUS_UNSPECIFIED")
_GROUP_MAX = 200  # session creates per commit (Firestore takes at most 500 writes in one), reads per get_all
_IN_MAX = 30  # values in one "in" filter (Firestore's limit)


class FirestoreStore:
    """Frontend store on Firestore; ``client`` may be passed in (tests) or built for ``project``."""

    def __init__(
        self, project: str, database: str = "(default)", prefix: str = "", client: Any = None
    ) -> None:
        from google.cloud import firestore

        self._firestore = firestore
        try:
            self._db = client or firestore.Client(project=project, database=database)
        except Exception as exc:
            raise StoreError(f"cannot open Firestore project {project!r}: {exc}") from exc
        self._prefix = prefix
        # Session creates made at once (a burst of starts) share one commit: see create_session.
        self._session_creates: GroupCommit[ChargeSession, bool] = GroupCommit(
            self._create_sessions, _GROUP_MAX
        )
        # Likewise the account reads (one get_all) and the per-user ledger queries (one "in" query).
        self._user_reads: GroupCommit[str, UserAccount | None] = GroupCommit(self._get_users, _GROUP_MAX)
        self._ledger_reads: GroupCommit[str, list[LedgerEntry]] = GroupCommit(self._ledgers_of, _IN_MAX)

    @property
    def client(self) -> Any:
        return self._db

    def collection_name(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _col(self, name: str) -> Any:
        return self._db.collection(self.collection_name(name))

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from google.api_core import exceptions as gexc

        try:
            yield
        except gexc.GoogleAPICallError as exc:
            raise StoreError(f"Firestore {what} failed: {exc.message or exc}") from exc
        except gexc.RetryError as exc:
            raise StoreError(f"Firestore {what} timed out: {exc}") from exc

    def _get(self, cls: type[M], collection: str, doc_id: str) -> M | None:
        if not doc_id:
            return None
        with self._errors(f"read of {collection}/{doc_id}"):
            snap = self._col(collection).document(doc_id).get()
        return from_document(cls, snap.to_dict()) if snap.exists else None

    def _put(self, collection: str, doc_id: str, msg: Message) -> None:
        if not doc_id:
            raise StoreError(f"a {type(msg).__name__} needs an id to be stored")
        with self._errors(f"write of {collection}/{doc_id}"):
            self._col(collection).document(doc_id).set(to_document(msg))

    def _create(self, collection: str, doc_id: str, data: dict[str, Any]) -> bool:
        from google.api_core import exceptions as gexc

        with self._errors(f"create of {collection}/{doc_id}"):
            try:
                self._col(collection).document(doc_id).create(data)
            except gexc.AlreadyExists:
                return False
        return True

    def _query(self, cls: type[M], build: Callable[[Any], Any], what: str) -> list[M]:
        with self._errors(f"query of {what}"):
            return [from_document(cls, snap.to_dict()) for snap in build(self._col(what)).stream()]

    def _where(self, field: str, op: str, value: Any) -> Any:
        return self._firestore.FieldFilter(field, op, value)

    # users
    def get_user(self, user_id: str) -> UserAccount | None:
        """Grouped (module docstring): reads made at once go as one ``get_all``."""
        if not user_id:
            return None
        return self._user_reads.call(user_id)

    def _get_users(self, user_ids: Sequence[str]) -> list[UserAccount | BaseException | None]:
        if len(user_ids) == 1:
            try:
                return [self._get(UserAccount, "users", user_ids[0])]
            except StoreError as exc:
                return [exc]
        refs = [self._col("users").document(uid) for uid in dict.fromkeys(user_ids)]
        try:
            with self._errors(f"read of {len(refs)} users"):
                found = {
                    snap.id: from_document(UserAccount, snap.to_dict() or {})
                    for snap in self._db.get_all(refs)
                    if snap.exists
                }
        except StoreError as exc:
            return [StoreError(str(exc)) for _ in user_ids]  # each caller raises its own
        return [found.get(uid) for uid in user_ids]

    def put_user(self, user: UserAccount) -> None:
        self._put("users", user.user_id, user)

    def update_user(
        self, user_id: str, change: Callable[[UserAccount | None], UserAccount | None]
    ) -> UserAccount | None:
        if not user_id:
            raise StoreError("a UserAccount needs an id to be stored")
        ref = self._col("users").document(user_id)

        def body(tx: Any) -> UserAccount | None:
            snap = ref.get(transaction=tx)
            new = change(from_document(UserAccount, snap.to_dict()) if snap.exists else None)
            if new is None:
                return None
            if new.user_id != user_id:
                raise StoreError(f"an update of user {user_id!r} returned the account of {new.user_id!r}")
            tx.set(ref, to_document(new))
            return new

        result: UserAccount | None = self._transaction(f"update of users/{user_id}", body)
        return result

    def list_users(self) -> list[UserAccount]:
        return sorted(self._query(UserAccount, lambda c: c, "users"), key=lambda u: u.user_id)

    def user_by_customer(self, customer_id: str) -> UserAccount | None:
        if not customer_id:
            return None
        found = self._query(
            UserAccount,
            lambda c: c.where(filter=self._where("stripe_customer_id", "==", customer_id)).limit(1),
            "users",
        )
        return found[0] if found else None

    # ledger
    def append_ledger(self, entry: LedgerEntry) -> bool:
        if not entry.entry_id or not entry.user_id:
            raise StoreError("a ledger entry needs an entry_id and a user_id")
        return self._create("ledger", entry.entry_id, to_document(entry))

    def get_ledger_entry(self, entry_id: str) -> LedgerEntry | None:
        return self._get(LedgerEntry, "ledger", entry_id)

    def ledger_entries(self, user_id: str | None = None) -> list[LedgerEntry]:
        """One user's entries are grouped (module docstring): queries made at once go as one query with
        an "in" filter on their users (a balance read per start, a burst of starts)."""
        if user_id is None:
            rows = self._query(LedgerEntry, lambda c: c, "ledger")
            return sorted(rows, key=lambda e: (e.created_at_ms, e.entry_id))
        return self._ledger_reads.call(user_id)

    def _ledgers_of(self, user_ids: Sequence[str]) -> list[list[LedgerEntry] | BaseException]:
        users = list(dict.fromkeys(user_ids))
        op, value = ("==", users[0]) if len(users) == 1 else ("in", users)
        try:
            rows = self._query(
                LedgerEntry, lambda c: c.where(filter=self._where("user_id", op, value)), "ledger"
            )
        except StoreError as exc:
            return [StoreError(str(exc)) for _ in user_ids]  # each caller raises its own
        rows.sort(key=lambda e: (e.created_at_ms, e.entry_id))
        by_user: dict[str, list[LedgerEntry]] = {u: [] for u in users}
        for row in rows:
            if row.user_id in by_user:
                by_user[row.user_id].append(row)
        return [list(by_user[u]) for u in user_ids]

    def ledger_by_reference(self, references: Sequence[str]) -> list[LedgerEntry]:
        refs = sorted({r for r in references if r})
        if not refs:
            return []
        if len(refs) > 30:  # Firestore's limit for an "in" filter
            raise StoreError(f"at most 30 references per ledger query, got {len(refs)}")
        rows = self._query(
            LedgerEntry, lambda c: c.where(filter=self._where("reference", "in", refs)), "ledger"
        )
        return sorted(rows, key=lambda e: (e.created_at_ms, e.entry_id))

    # requests
    def add_request(self, request: ChargeRequest) -> bool:
        if not request.request_id:
            raise StoreError("a charge request needs a request_id")
        return self._create("charge_requests", request.request_id, to_document(request))

    def get_request(self, request_id: str) -> ChargeRequest | None:
        req = self._get(ChargeRequest, "charge_requests", request_id)
        if req is not None:
            req.request_id = request_id  # the document id, whatever the body says
        return req

    def pending_requests(self) -> list[ChargeRequest]:
        # The request id is the document id, whatever the body says.
        query = self._col("charge_requests").where(filter=self._where("status", "in", list(_PENDING)))
        with self._errors("query of charge_requests"):
            rows = [_request(snap.id, snap.to_dict()) for snap in query.stream()]
        return sorted(rows, key=lambda r: (r.created_at_ms, r.request_id))

    def answer_request(
        self, request_id: str, status: int, reason: str, session_id: str, answered_at_ms: int
    ) -> bool:
        from google.api_core import exceptions as gexc

        ref = self._col("charge_requests").document(request_id)
        with self._errors(f"answer of request {request_id}"):
            snap = ref.get()
            if not snap.exists:
                return False
            current = from_document(ChargeRequest, snap.to_dict())
            if current.status not in (ChargeRequest.STATUS_PENDING, ChargeRequest.STATUS_UNSPECIFIED):
                return False
            update = {
                "status": ChargeRequest.Status.Name(status),
                "reason": reason,
                "session_id": session_id,
                "answered_at_ms": answered_at_ms,
            }
            try:
                # Guarded by the version we read: a concurrent answer makes this fail, never doubles.
                ref.update(update, option=self._db.write_option(last_update_time=snap.update_time))
            except gexc.FailedPrecondition:
                return False
        return True

    def watch_requests(self, callback: Callable[[ChargeRequest], None]) -> Callable[[], None]:
        """Call ``callback`` (on the listener's thread) for each pending request, existing or new.

        Uses ``on_snapshot`` on the pending-requests query; returns a function that stops listening.
        A request may be delivered more than once (reconnects, restarts): answering is guarded.
        """
        query = self._col("charge_requests").where(filter=self._where("status", "in", list(_PENDING)))

        def on_snapshot(_snapshots: Any, changes: Any, _read_time: Any) -> None:
            for change in changes:
                if change.type.name in ("ADDED", "MODIFIED"):
                    try:
                        callback(_request(change.document.id, change.document.to_dict()))
                    except Exception:  # one bad document must not kill the listener
                        import logging

                        logging.getLogger("chargectl.firestore").exception(
                            "cannot handle charge request %s", change.document.id
                        )

        with self._errors("listen to charge requests"):
            watch = query.on_snapshot(on_snapshot)
        return watch.unsubscribe  # type: ignore[no-any-return]

    # sessions
    def put_session(self, session: ChargeSession) -> None:
        self._put("sessions", session.session_id, session)

    def create_session(self, session: ChargeSession) -> bool:
        """Create-if-absent, grouped (module docstring): creates made at once go as one batched commit
        (one round trip, not one each: the emulator answers a burst of single creates one after
        another). A batch is all-or-nothing, so one that fails because a document exists is redone one
        create at a time (each its own answer); any other failure is each caller's error, as a single
        create's would be."""
        if not session.session_id:
            raise StoreError("a ChargeSession needs an id to be stored")
        return self._session_creates.call(session)

    def _create_sessions(self, docs: Sequence[ChargeSession]) -> list[bool | BaseException]:
        from google.api_core import exceptions as gexc

        ids = [d.session_id for d in docs]
        if len(docs) > 1 and len(set(ids)) == len(ids):
            batch = self._db.batch()
            for doc in docs:
                batch.create(self._col("sessions").document(doc.session_id), to_document(doc))
            try:
                with self._errors(f"create of {len(docs)} sessions"):
                    try:
                        batch.commit()
                    except gexc.AlreadyExists:
                        pass  # one of them exists: nothing was written; each on its own below
                    else:
                        return [True] * len(docs)
            except StoreError as exc:
                return [StoreError(str(exc)) for _ in docs]  # each caller raises its own
        out: list[bool | BaseException] = []
        for doc in docs:
            try:
                out.append(self._create("sessions", doc.session_id, to_document(doc)))
            except StoreError as exc:
                out.append(exc)
        return out

    def get_session(self, session_id: str) -> ChargeSession | None:
        return self._get(ChargeSession, "sessions", session_id)

    def list_sessions(
        self,
        user_id: str | None = None,
        plug_mac: str | None = None,
        active_only: bool = False,
        limit: int = 100,
    ) -> list[ChargeSession]:
        def build(col: Any) -> Any:
            q = col
            if user_id is not None:
                q = q.where(filter=self._where("user_id", "==", user_id))
            if plug_mac is not None:
                q = q.where(filter=self._where("plug_mac", "==", plug_mac))
            if active_only:
                q = q.where(filter=self._where("status", "==", "STATUS_ACTIVE"))
            return q.order_by("started_at_ms", direction=self._firestore.Query.DESCENDING).limit(limit)

        rows = self._query(ChargeSession, build, "sessions")
        return sorted(rows, key=lambda s: (s.started_at_ms, s.session_id), reverse=True)

    # plug states
    def put_plug_state(self, state: PlugState) -> None:
        self._put("plug_states", state.plug_mac, state)

    def get_plug_state(self, plug_mac: str) -> PlugState | None:
        return self._get(PlugState, "plug_states", plug_mac)

    def list_plug_states(self, site_id: str | None = None) -> list[PlugState]:
        if site_id is None:
            rows = self._query(PlugState, lambda c: c, "plug_states")
        else:
            rows = self._query(
                PlugState, lambda c: c.where(filter=self._where("site_id", "==", site_id)), "plug_states"
            )
        return sorted(rows, key=lambda p: (p.site_id, p.plug_mac))

    # sites
    def put_site(self, site: Site) -> None:
        self._put("sites", site.site_id, site)

    def get_site(self, site_id: str) -> Site | None:
        return self._get(Site, "sites", site_id)

    def list_sites(self) -> list[Site]:
        return sorted(self._query(Site, lambda c: c, "sites"), key=lambda s: s.site_id)

    # events
    def mark_event(self, event_id: str, kind: str, at_ms: int) -> bool:
        if not event_id:
            raise StoreError("an event needs an id")
        return self._create(
            "processed_events", event_id, {"event_id": event_id, "kind": kind, "at_ms": at_ms}
        )

    # ------------------------------------------------------------ payments (issue 14)

    def _transaction(self, what: str, body: Callable[[Any], Any], attempts: int = 8) -> Any:
        """Run ``body(transaction)`` in a Firestore transaction (retried on contention).

        The client retries a commit that aborts, at once and a few times, but not a read inside the
        transaction that aborts because another transaction holds the document (the emulator's
        "Transaction lock timeout"). Both are retried here, with jittered back-off, as a fresh
        transaction: transactions racing on the same documents that only ever retry at once can keep
        aborting each other (seen on the emulator with three refunds of one charge at once). The
        body is the whole read-check-write, so a retry never applies anything twice.
        """
        from google.api_core import exceptions as gexc

        run = self._firestore.transactional(body)
        with self._errors(what):
            for attempt in range(attempts):
                try:
                    return run(self._db.transaction(max_attempts=5))
                except ValueError as exc:  # the library's "failed to commit in N attempts"
                    if not isinstance(exc.__cause__, gexc.Aborted) or attempt == attempts - 1:
                        raise StoreError(f"Firestore {what} failed: {exc}") from exc
                except gexc.Aborted:
                    if attempt == attempts - 1:
                        raise
                time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def record_event(
        self,
        event_id: str,
        kind: str,
        at_ms: int,
        entries: Sequence[LedgerEntry] = (),
        unmatched: UnmatchedPayment | None = None,
    ) -> tuple[bool, int]:
        check_event(event_id, entries)
        event_ref = self._col("processed_events").document(event_id)
        entry_refs = [(self._col("ledger").document(e.entry_id), e) for e in entries]
        unmatched_ref = (
            self._col("unmatched_payments").document(unmatched.payment_id) if unmatched is not None else None
        )

        def body(tx: Any) -> tuple[bool, int]:
            # Every read before any write, as Firestore transactions require.
            if event_ref.get(transaction=tx).exists:
                return False, 0
            fresh = [(ref, e) for ref, e in entry_refs if not ref.get(transaction=tx).exists]
            unmatched_new = unmatched_ref is not None and not unmatched_ref.get(transaction=tx).exists
            tx.create(event_ref, {"event_id": event_id, "kind": kind, "at_ms": at_ms})
            for ref, entry in fresh:
                tx.create(ref, to_document(entry))
            if unmatched_new and unmatched is not None and unmatched_ref is not None:
                tx.create(unmatched_ref, {**unmatched.to_dict(), "resolved": False})
            return True, len(fresh)

        result: tuple[bool, int] = self._transaction(f"record of event {event_id}", body)
        return result

    def get_unmatched_payment(self, payment_id: str) -> UnmatchedPayment | None:
        if not payment_id:
            return None
        with self._errors(f"read of unmatched payment {payment_id}"):
            snap = self._col("unmatched_payments").document(payment_id).get()
        return UnmatchedPayment.from_dict(snap.to_dict()) if snap.exists else None

    def list_unmatched_payments(self, include_resolved: bool = False) -> list[UnmatchedPayment]:
        with self._errors("query of unmatched_payments"):
            col = self._col("unmatched_payments")
            query = col if include_resolved else col.where(filter=self._where("resolved", "==", False))
            rows = [UnmatchedPayment.from_dict(snap.to_dict()) for snap in query.stream()]
        return sorted(rows, key=lambda p: (p.created_at_ms, p.payment_id))

    def assign_unmatched_payment(self, payment_id: str, entry: LedgerEntry, at_ms: int) -> bool:
        ref = self._col("unmatched_payments").document(payment_id)
        entry_ref = self._col("ledger").document(entry.entry_id)

        def body(tx: Any) -> bool:
            snap = ref.get(transaction=tx)
            if not snap.exists or snap.to_dict().get("resolved"):
                return False
            if entry_ref.get(transaction=tx).exists:
                raise StoreError(f"ledger entry {entry.entry_id} already exists")
            tx.create(entry_ref, to_document(entry))
            tx.update(
                ref,
                {
                    "resolved": True,
                    "resolved_user_id": entry.user_id,
                    "resolved_at_ms": at_ms,
                    "entry_id": entry.entry_id,
                },
            )
            return True

        done: bool = self._transaction(f"assignment of payment {payment_id}", body)
        return done

    def get_topup_state(self, user_id: str) -> AutoTopupState | None:
        if not user_id:
            return None
        with self._errors(f"read of top-up state {user_id}"):
            snap = self._col("topup_states").document(user_id).get()
        return AutoTopupState.from_dict(snap.to_dict()) if snap.exists else None

    def update_topup_state(self, state: AutoTopupState) -> bool:
        ref = self._col("topup_states").document(state.user_id)

        def body(tx: Any) -> bool:
            snap = ref.get(transaction=tx)
            stored = int(snap.to_dict().get("version", 0)) if snap.exists else 0
            if stored != state.version - 1:
                return False
            tx.set(ref, state.to_dict())
            return True

        done: bool = self._transaction(f"top-up state of {state.user_id}", body)
        return done

    # checkpoints: a head document naming the current generation, plus its chunks
    def save_checkpoint(self, name: str, data: bytes) -> None:
        head = self._col("checkpoints").document(name)
        with self._errors(f"checkpoint {name}"):
            snap = head.get()
            previous = snap.to_dict() if snap.exists else None
            generation = int(previous["generation"]) + 1 if previous else 1
            chunks = [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""]
            parts = head.collection("chunks")
            for i, chunk in enumerate(chunks):
                parts.document(f"{generation:012d}-{i:06d}").set({"data": chunk})
            # The head flips to the new generation only once every chunk is written.
            head.set({"generation": generation, "chunks": len(chunks), "size": len(data)})
            if previous:
                for i in range(int(previous["chunks"])):
                    parts.document(f"{int(previous['generation']):012d}-{i:06d}").delete()

    def load_checkpoint(self, name: str) -> bytes | None:
        head = self._col("checkpoints").document(name)
        with self._errors(f"checkpoint {name}"):
            snap = head.get()
            if not snap.exists:
                return None
            meta = snap.to_dict()
            parts = head.collection("chunks")
            out = bytearray()
            for i in range(int(meta["chunks"])):
                part = parts.document(f"{int(meta['generation']):012d}-{i:06d}").get()
                if not part.exists:
                    raise StoreError(f"checkpoint {name} is missing chunk {i}")
                out += part.to_dict()["data"]
        if len(out) != int(meta["size"]):
            raise StoreError(f"checkpoint {name} is {len(out)} bytes, expected {meta['size']}")
        return bytes(out)

    # ---------------------------------------------------------------- hub: plug bindings, finishing

    def bind_plug(self, plug_mac: str, site_id: str, at_ms: int, replace: bool = False) -> str:
        if not plug_mac or not site_id:
            raise StoreError("a plug binding needs a plug MAC and a site id")
        data = {"plug_mac": plug_mac, "site_id": site_id, "at_ms": at_ms}
        ref = self._col("plug_sites").document(plug_mac)
        with self._errors(f"binding of plug {plug_mac}"):
            if replace:
                ref.set(data)
                return site_id
        if self._create("plug_sites", plug_mac, data):
            return site_id
        with self._errors(f"read of plug_sites/{plug_mac}"):
            snap = ref.get()
        return str(snap.to_dict()["site_id"]) if snap.exists else self.bind_plug(plug_mac, site_id, at_ms)

    def release_plug(self, plug_mac: str) -> bool:
        ref = self._col("plug_sites").document(plug_mac)
        with self._errors(f"release of plug {plug_mac}"):
            if not ref.get().exists:
                return False
            ref.delete()
        return True

    def plug_bindings(self) -> dict[str, str]:
        with self._errors("query of plug_sites"):
            return {snap.id: str(snap.to_dict()["site_id"]) for snap in self._col("plug_sites").stream()}

    def finish_session(self, session: ChargeSession, debit: LedgerEntry | None) -> bool:
        firestore = self._firestore
        session_ref = self._col("sessions").document(session.session_id)
        debit_ref = self._col("ledger").document(debit.entry_id) if debit is not None else None

        @firestore.transactional  # type: ignore[untyped-decorator]
        def finish(tx: Any) -> bool:
            snap = session_ref.get(transaction=tx)
            if snap.exists and (snap.to_dict() or {}).get("status") == "STATUS_COMPLETED":
                return False
            if debit_ref is not None and debit is not None and not debit_ref.get(transaction=tx).exists:
                tx.set(debit_ref, to_document(debit))
            tx.set(session_ref, to_document(session))
            return True

        with self._errors(f"finish of session {session.session_id}"):
            return bool(finish(self._db.transaction()))

    def close(self) -> None:
        close = getattr(self._db, "close", None)
        if callable(close):
            close()


def _request(doc_id: str, data: dict[str, Any] | None) -> ChargeRequest:
    req = from_document(ChargeRequest, data or {})
    req.request_id = doc_id
    return req
