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
