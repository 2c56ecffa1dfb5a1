"""The store contract, run against SQLite and the Firestore emulator alike: every record is kept exactly
and once-only writes are idempotent."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargectl.common.codec import (
    ChargeRequest,
    ChargeSession,
    LedgerEntry,
    Money,
    PlugState,
    Site,
    UserAccount,
)
from chargectl.common.errors import StoreError
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.store import Store


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "store.db")
    else:
        request.getfixturevalue("firestore_env")
        from chargectl.services.adapters.firestore_store import FirestoreStore

        s = FirestoreStore(project=f"test-{uuid.uuid4().hex[:10]}")
    yield s
    s.close()


def test_ledger_entries_are_create_if_absent(store: Store) -> None:
    e = LedgerEntry(
        entry_id="evt_1",
        user_id="u1",
        kind=LedgerEntry.KIND_TOPUP,
        amount=Money(amount_minor=500, currency="gbp"),
    )
    assert store.append_ledger(e) is True
    changed = LedgerEntry()
    changed.CopyFrom(e)
    changed.amount.amount_minor = 999
    assert store.append_ledger(changed) is False
    assert store.get_ledger_entry("evt_1") == e
    assert [x.entry_id for x in store.ledger_entries("u1")] == ["evt_1"]


def test_ledger_entry_without_ids_is_refused(store: Store) -> None:
    with pytest.raises(StoreError):
        store.append_ledger(LedgerEntry(user_id="u1"))


def test_requests_are_answered_once(store: Store) -> None:
    req = ChargeRequest(
        request_id="r1",
        user_id="u1",
        plug_mac="AABBCCDDEEFF",
        action=ChargeRequest.ACTION_START,
        status=ChargeRequest.STATUS_PENDING,
        created_at_ms=10,
    )
    assert store.add_request(req)
    assert not store.add_request(req)
    assert [r.request_id for r in store.pending_requests()] == ["r1"]
    assert store.answer_request("r1", ChargeRequest.STATUS_ACCEPTED, "", "s1", 20)
    assert not store.answer_request("r1", ChargeRequest.STATUS_REJECTED, "late", "", 30)
    got = store.get_request("r1")
    assert got is not None and got.status == ChargeRequest.STATUS_ACCEPTED and got.session_id == "s1"
    assert got.answered_at_ms == 20
    assert store.pending_requests() == []
    assert not store.answer_request("missing", ChargeRequest.STATUS_ACCEPTED, "", "", 1)


def test_a_burst_of_answers_answers_each_request_exactly_once(store: Store) -> None:
    # Twelve requests, each answered at once by two callers (accept and reject racing, as a redelivered
    # request handled twice would), plus answers to requests that do not exist, all from their own
    # threads: on Firestore they are grouped (one read, one batch) and a racing pair can land in one
    # group or in two. Each request gets exactly one answer, and it is the one its winner was told.
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"b{i}" for i in range(12)]
    for rid in ids:
        assert store.add_request(
            ChargeRequest(
                request_id=rid,
                user_id="u1",
                plug_mac="AABBCCDDEEFF",
                action=ChargeRequest.ACTION_START,
                status=ChargeRequest.STATUS_PENDING,
                created_at_ms=10,
            )
        )
    calls = [(rid, ChargeRequest.STATUS_ACCEPTED, "", f"s-{rid}") for rid in ids]
    calls += [(rid, ChargeRequest.STATUS_REJECTED, "duplicate_request", "") for rid in ids]
    calls += [(f"none{i}", ChargeRequest.STATUS_ACCEPTED, "", "s") for i in range(4)]
    with ThreadPoolExecutor(len(calls)) as pool:
        won = list(pool.map(lambda c: store.answer_request(*c, 20), calls))
    assert not any(won[2 * len(ids) :])  # no such request: nothing answered, nothing created
    for i, rid in enumerate(ids):
        accepted, rejected = won[i], won[len(ids) + i]
        assert accepted != rejected, rid  # exactly one of the two
        got = store.get_request(rid)
        assert got is not None
        if accepted:
            assert got.status == ChargeRequest.STATUS_ACCEPTED and got.session_id == f"s-{rid}"
        else:
            assert got.status == ChargeRequest.STATUS_REJECTED and got.reason == "duplicate_request"
    assert store.pending_requests() == []
    assert store.get_request("none0") is None
    assert not any(store.answer_request(rid, ChargeRequest.STATUS_ACCEPTED, "", "x", 30) for rid in ids)


def test_sessions_filter_and_order(store: Store, tmp_path: Path) -> None:
    for i, (user, status) in enumerate([("u1", 1), ("u2", 1), ("u1", 2)]):
        store.put_session(
            ChargeSession(
                session_id=f"s{i}",
                user_id=user,
                plug_mac="AABBCCDDEEFF",
                status=status,
                started_at_ms=i * 100,
                cost=Money(amount_minor=i, currency="gbp"),
            )
        )
    assert [s.session_id for s in store.list_sessions()] == ["s2", "s1", "s0"]
    assert [s.session_id for s in store.list_sessions(user_id="u1")] == ["s2", "s0"]
    assert [s.session_id for s in store.list_sessions(active_only=True)] == ["s1", "s0"]
    assert [s.session_id for s in store.list_sessions(limit=1)] == ["s2"]


def test_a_session_document_is_created_once_and_never_overwritten(store: Store) -> None:
    """The hub writes a new session's ACTIVE document with create-if-absent: if the finish (COMPLETED,
    with its debit's cost) landed first, the late ACTIVE document must not replace it."""
    active = ChargeSession(
        session_id="sess-1", user_id="u1", plug_mac="AABBCCDDEEFF", status=1, started_at_ms=100
    )
    assert store.create_session(active) is True
    done = ChargeSession()
    done.CopyFrom(active)
    done.status, done.cost.amount_minor, done.cost.currency = 2, 512, "gbp"
    store.put_session(done)
    assert store.create_session(active) is False
    assert store.get_session("sess-1") == done
    with pytest.raises(StoreError):
        store.create_session(ChargeSession(user_id="u1"))


def test_plug_state_reads_back_equal(store: Store) -> None:
    state = PlugState(
        plug_mac="AABBCCDDEEFF",
        site_id="site-a",
        name="Bay 3",
        plug_class=1,
        status=3,
        reason="power above start_w",
        relay_on=True,
        power_w=2301.5,
        energy_counter_mwh=9_876_543_210,
        session_id="sess-1",
        updated_at_ms=1_767_225_600_123,
        last_reading_ms=1_767_225_600_000,
    )
    store.put_plug_state(state)
    assert store.get_plug_state("AABBCCDDEEFF") == state


def test_plain_records_and_checkpoints(store: Store) -> None:
    store.put_user(UserAccount(user_id="u1", email="a@example.com", stripe_customer_id="cus_1"))
    store.put_plug_state(
        PlugState(plug_mac="AABBCCDDEEFF", site_id="site-a", status=PlugState().status, power_w=12.5)
    )
    store.put_plug_state(PlugState(plug_mac="001122334455", site_id="site-b"))
    store.put_site(Site(site_id="site-a", name="A", shard=2))
    user = store.get_user("u1")
    assert user is not None and user.stripe_customer_id == "cus_1"
    assert [u.user_id for u in store.list_users()] == ["u1"]
    assert store.get_user("nobody") is None
    assert [x.plug_mac for x in store.list_plug_states("site-a")] == ["AABBCCDDEEFF"]
    assert len(store.list_plug_states()) == 2
    site = store.get_site("site-a")
    assert site is not None and site.shard == 2 and [s.site_id for s in store.list_sites()] == ["site-a"]
    assert store.load_checkpoint("hub") is None
    big = bytes(range(256)) * 8000  # 2 MB: more than one Firestore document holds
    store.save_checkpoint("hub", big)
    assert store.load_checkpoint("hub") == big
    store.save_checkpoint("hub", b"small")
    assert store.load_checkpoint("hub") == b"small"
    assert store.mark_event("evt_1", "checkout.session.completed", 5)
    assert not store.mark_event("evt_1", "checkout.session.completed", 6)


def test_records_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = SqliteStore(path)
    s.put_user(UserAccount(user_id="u1", email="a@example.com", stripe_customer_id="cus_1"))
    s.put_plug_state(
        PlugState(plug_mac="AABBCCDDEEFF", site_id="site-a", status=PlugState().status, power_w=12.5)
    )
    s.put_site(Site(site_id="site-a", name="A", shard=2))
    s.save_checkpoint("hub", b"\x00\x01state")
    assert s.mark_event("evt_1", "checkout.session.completed", 5)
    s.close()
    s = SqliteStore(path)
    user = s.get_user("u1")
    assert user is not None and user.stripe_customer_id == "cus_1"
    state = s.get_plug_state("AABBCCDDEEFF")
    assert state is not None and state.power_w == 12.5
    assert [x.site_id for x in s.list_plug_states("site-a")] == ["site-a"]
    site = s.get_site("site-a")
    assert site is not None and site.shard == 2
    assert s.load_checkpoint("hub") == b"\x00\x01state"
    assert s.load_checkpoint("other") is None
    assert not s.mark_event("evt_1", "checkout.session.completed", 6)
    s.close()


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        SqliteStore(blocker / "sub" / "store.db")


@pytest.mark.integration
def test_firestore_request_listener_sees_existing_and_new_requests(firestore_env: object) -> None:
    import threading

    from chargectl.services.adapters.firestore_store import FirestoreStore

    store = FirestoreStore(project=f"test-{uuid.uuid4().hex[:10]}")
    seen: list[str] = []
    got_two = threading.Event()

    def on_request(req: ChargeRequest) -> None:
        seen.append(req.request_id)
        if {"r-old", "r-new"} <= set(seen):
            got_two.set()

    def request(rid: str, status: int = ChargeRequest.STATUS_PENDING) -> ChargeRequest:
        return ChargeRequest(
            request_id=rid,
            user_id="u1",
            plug_mac="AABBCCDDEEFF",
            action=ChargeRequest.ACTION_START,
            status=status,
            created_at_ms=1,
        )

    store.add_request(request("r-old"))
    store.add_request(request("r-done", ChargeRequest.STATUS_REJECTED))
    stop = store.watch_requests(on_request)
    try:
        store.add_request(request("r-new"))
        assert got_two.wait(timeout=20)
        assert "r-done" not in seen
    finally:
        stop()
        store.close()


def _pending(rid: str, status: int = ChargeRequest.STATUS_PENDING) -> ChargeRequest:
    return ChargeRequest(
        request_id=rid,
        user_id="u1",
        plug_mac="AABBCCDDEEFF",
        action=ChargeRequest.ACTION_START,
        status=status,
        created_at_ms=1,
    )


def _wait(cond: object, what: str, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_sqlite_request_watcher_sees_existing_new_and_other_process_requests(tmp_path: Path) -> None:
    """The embedded store pushes requests like Firestore's listener: ones pending before the watch,
    ones added through this object, and ones another connection (another process: the CLI) commits,
    each delivered once while pending; answered or rejected ones are never delivered."""
    import threading

    store = SqliteStore(tmp_path / "store.db")
    other = SqliteStore(tmp_path / "store.db")  # a second connection, as `chargectl session` opens
    seen: list[str] = []
    lock = threading.Lock()

    def on_request(req: ChargeRequest) -> None:
        with lock:
            seen.append(req.request_id)

    store.add_request(_pending("r-old"))
    store.add_request(_pending("r-done", ChargeRequest.STATUS_REJECTED))
    # A very slow cross-process interval: an in-process add must not wait for it.
    stop = store.watch_requests(on_request, interval_s=3600)
    try:
        _wait(lambda: "r-old" in seen, "the request pending before the watch")
        store.add_request(_pending("r-new"))
        _wait(lambda: "r-new" in seen, "the request added in this process")
    finally:
        stop()
    stop = store.watch_requests(on_request, interval_s=0.05)
    try:
        _wait(lambda: seen.count("r-old") == 2, "a new watcher to deliver what is pending")
        assert store.answer_request("r-old", ChargeRequest.STATUS_ACCEPTED, "", "s1", 2)
        other.add_request(_pending("r-cli"))
        _wait(lambda: "r-cli" in seen, "the request another connection committed")
        other.add_request(_pending("r-cli-2"))
        _wait(lambda: "r-cli-2" in seen, "a second request from the other connection")
        with lock:
            assert "r-done" not in seen
            assert seen.count("r-cli") == 1 and seen.count("r-new") == 2 and seen.count("r-old") == 2
    finally:
        stop()
        other.close()
        store.close()


def test_sqlite_request_watcher_survives_a_raising_callback(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    seen: list[str] = []

    def on_request(req: ChargeRequest) -> None:
        seen.append(req.request_id)
        if req.request_id == "r-bad":
            raise RuntimeError("a hostile request")

    stop = store.watch_requests(on_request)
    try:
        store.add_request(_pending("r-bad"))
        store.add_request(_pending("r-good"))
        _wait(lambda: "r-good" in seen, "the request after the one that raised")
    finally:
        stop()
        store.close()


def _at_once(calls: list[object]) -> list[object]:
    """Run every call at the same moment on its own thread (a burst of starts on the request threads);
    their results in order, or the exception each raised."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Barrier(len(calls))

    def run(call: object) -> object:
        gate.wait(timeout=60)
        try:
            return call()  # type: ignore[operator]
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _session(sid: str, user: str = "u1", status: int = ChargeSession.STATUS_ACTIVE) -> ChargeSession:
    return ChargeSession(
        session_id=sid, user_id=user, plug_mac="AABBCCDDEEFF", status=status, started_at_ms=100
    )


def test_a_burst_of_session_creates_stores_each_new_one_and_never_overwrites_a_finished_one(
    store: Store,
) -> None:
    """Creates made at once (the Firestore store groups them into one commit): each new document is
    stored and answered True; the one whose finish (COMPLETED, with its cost) landed first is answered
    False and keeps the billed document, and its neighbours in the burst are stored all the same."""
    done = _session("sess-done", status=ChargeSession.STATUS_COMPLETED)
    done.cost.amount_minor, done.cost.currency = 512, "gbp"
    store.put_session(done)
    ids = [f"sess-{i}" for i in range(12)] + ["sess-done"]
    results = _at_once([lambda sid=sid: store.create_session(_session(sid, user=f"u-{sid}")) for sid in ids])
    assert dict(zip(ids, results, strict=True)) == {**{sid: True for sid in ids[:-1]}, "sess-done": False}
    assert store.get_session("sess-done") == done  # the billed document, untouched
    for sid in ids[:-1]:
        got = store.get_session(sid)
        assert got is not None and got.user_id == f"u-{sid}" and got.status == ChargeSession.STATUS_ACTIVE
    # A burst that repeats an id stores it once: one True, one False.
    again = _at_once([lambda: store.create_session(_session("sess-twice"))] * 2)
    assert sorted(again) == [False, True]  # type: ignore[type-var]


def test_reads_made_at_once_each_get_their_own_users_account_and_ledger(store: Store) -> None:
    """Account reads and balance queries made at once (grouped into one round trip on Firestore): each
    caller gets its own user's account (None for a user with none) and exactly its own entries, so a
    balance is never another user's money."""
    users = [f"u{i}" for i in range(8)]
    for n, uid in enumerate(users):
        store.put_user(UserAccount(user_id=uid, email=f"{uid}@example.com", currency="gbp"))
        for k in range(n + 1):
            store.append_ledger(
                LedgerEntry(
                    entry_id=f"{uid}-e{k}",
                    user_id=uid,
                    kind=LedgerEntry.KIND_TOPUP,
                    amount=Money(amount_minor=100 * (n + 1), currency="gbp"),
                    created_at_ms=1000 - k,  # newest first as written: the store orders them
                )
            )
    asked = [*users, "nobody", users[3]]
    accounts = _at_once([lambda uid=uid: store.get_user(uid) for uid in asked])
    assert [a.user_id if isinstance(a, UserAccount) else a for a in accounts] == [*users, None, users[3]]
    ledgers = _at_once([lambda uid=uid: store.ledger_entries(uid) for uid in asked])
    for uid, entries in zip(asked, ledgers, strict=True):
        assert isinstance(entries, list)
        assert {e.user_id for e in entries} <= {uid}
        n = users.index(uid) + 1 if uid in users else 0
        assert [e.entry_id for e in entries] == [f"{uid}-e{k}" for k in reversed(range(n))]
        assert sum(e.amount.amount_minor for e in entries) == 100 * n * n


@pytest.mark.integration
def test_firestore_burst_of_creates_whose_commit_fails_stores_nothing_and_fails_each_caller(
    firestore_env: object,
) -> None:
    """Fault injection on the grouped commit: the store refuses it (unavailable). Every caller of the
    group gets its own StoreError (the hub then keeps each relay off and retries); nothing is half
    written, and once the store is back each create succeeds."""
    from google.api_core import exceptions as gexc

    from chargectl.services.adapters.firestore_store import FirestoreStore

    store = FirestoreStore(project=f"test-{uuid.uuid4().hex[:10]}")
    real_batch = store.client.batch
    down = True

    class RefusingBatch:
        def __init__(self) -> None:
            self._batch = real_batch()

        def create(self, ref: object, data: object) -> None:
            self._batch.create(ref, data)

        def commit(self) -> object:
            if down:
                raise gexc.ServiceUnavailable("the store is down")
            return self._batch.commit()

    store.client.batch = RefusingBatch  # type: ignore[method-assign]
    try:
        docs = [_session(f"sess-{i}") for i in range(6)]
        results = store._create_sessions(docs)  # one group, as a burst's creates reach it
        assert [type(r) for r in results] == [StoreError] * 6
        assert len({id(r) for r in results}) == 6  # each caller raises its own
        assert all(store.get_session(d.session_id) is None for d in docs)  # nothing half written
        down = False
        assert store._create_sessions(docs) == [True] * 6
        assert all(store.get_session(d.session_id) == d for d in docs)
        # A group in which one document exists is redone one create at a time: the rest are stored.
        late = [_session("sess-0"), _session("sess-new")]
        assert store._create_sessions(late) == [False, True]
    finally:
        store.close()


@pytest.mark.integration
def test_firestore_grouped_commit_applied_but_its_answer_lost_reads_as_stored_on_the_retry(
    firestore_env: object,
) -> None:
    """The store commits the burst's documents, then the answer is lost (deadline). Each caller gets a
    StoreError (its relay stays off); the retry finds its document: ``create_session`` says False and the
    document is the one the hub wrote, so the hub's check (same user, ACTIVE) lets its relay go on once,
    never a second session."""
    from google.api_core import exceptions as gexc

    from chargectl.services.adapters.firestore_store import FirestoreStore

    store = FirestoreStore(project=f"test-{uuid.uuid4().hex[:10]}")
    real_batch = store.client.batch

    class LosingBatch:
        def __init__(self) -> None:
            self._batch = real_batch()

        def create(self, ref: object, data: object) -> None:
            self._batch.create(ref, data)

        def commit(self) -> object:
            self._batch.commit()
            raise gexc.DeadlineExceeded("the answer was lost")

    store.client.batch = LosingBatch  # type: ignore[method-assign]
    try:
        docs = [_session(f"sess-{i}", user=f"u{i}") for i in range(4)]
        assert [type(r) for r in store._create_sessions(docs)] == [StoreError] * 4
        for doc in docs:
            assert store.create_session(doc) is False
            assert store.get_session(doc.session_id) == doc
        assert len(store.list_sessions(limit=10)) == 4
    finally:
        store.close()
