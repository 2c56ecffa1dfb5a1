"""The store methods the hub's trust rules need, on SQLite and the Firestore emulator alike: plug bindings
(first binder wins, an operator moves) and the one-transaction session finish (billed exactly once)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargectl.common.codec import ChargeRequest, ChargeSession, LedgerEntry, Money
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.store import Store
from chargectl.services.payments.ledger import Ledger

MAC = "AABBCCDDEEFF"


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "store.db")
    else:
        request.getfixturevalue("firestore_env")
        from chargectl.services.adapters.firestore_store import FirestoreStore

        s = FirestoreStore(project=f"trust-{uuid.uuid4().hex[:10]}")
    yield s
    s.close()


def test_the_first_site_to_bind_a_plug_owns_it_until_an_operator_moves_it(store: Store) -> None:
    assert store.bind_plug(MAC, "site-a", 1) == "site-a"
    assert store.bind_plug(MAC, "site-b", 2) == "site-a"  # a second reporter does not take it
    assert store.plug_bindings() == {MAC: "site-a"}
    assert store.bind_plug(MAC, "site-b", 3, replace=True) == "site-b"
    assert store.plug_bindings() == {MAC: "site-b"}
    assert store.release_plug(MAC) is True and store.release_plug(MAC) is False
    assert store.plug_bindings() == {}
    assert store.bind_plug(MAC, "site-c", 4) == "site-c"


def _done(debit: int) -> tuple[ChargeSession, LedgerEntry]:
    doc = ChargeSession(
        session_id="sess-1",
        user_id="u1",
        plug_mac=MAC,
        status=ChargeSession.STATUS_COMPLETED,
        started_at_ms=10,
        ended_at_ms=20,
        energy_mwh=1_000_000,
        cost=Money(amount_minor=debit, currency="gbp"),
    )
    entry = LedgerEntry(
        entry_id="sess-1",
        user_id="u1",
        kind=LedgerEntry.KIND_SESSION_DEBIT,
        amount=Money(amount_minor=-debit, currency="gbp"),
        created_at_ms=20,
    )
    return doc, entry


def test_a_session_is_finished_and_debited_exactly_once(store: Store) -> None:
    Ledger(store).post("topup", "u1", "topup", 1000, "gbp", now_ms=1)
    store.put_session(
        ChargeSession(session_id="sess-1", user_id="u1", plug_mac=MAC, status=ChargeSession.STATUS_ACTIVE)
    )
    doc, entry = _done(30)
    assert store.finish_session(doc, entry) is True
    again, again_entry = _done(99)  # a replay with other figures changes nothing
    assert store.finish_session(again, again_entry) is False
    got = store.get_session("sess-1")
    assert got is not None and got.status == ChargeSession.STATUS_COMPLETED and got.cost.amount_minor == 30
    assert Ledger(store).balance("u1", "gbp") == 970


def test_a_finish_after_an_earlier_debit_never_debits_twice(store: Store) -> None:
    Ledger(store).post("topup", "u1", "topup", 1000, "gbp", now_ms=1)
    Ledger(store).post("sess-1", "u1", "session_debit", -30, "gbp", now_ms=2)  # an older hub got this far
    doc, entry = _done(30)
    assert store.finish_session(doc, entry) is True
    assert Ledger(store).balance("u1", "gbp") == 970


def test_balances_are_per_currency(store: Store) -> None:
    ledger = Ledger(store)
    ledger.post("t-jpy", "u1", "topup", 10_000, "jpy", now_ms=1)
    ledger.post("t-gbp", "u1", "topup", 250, "gbp", now_ms=2)
    assert ledger.balance("u1", "gbp") == 250 and ledger.balance("u1", "jpy") == 10_000
    assert ledger.balances_by_currency() == {("u1", "jpy"): 10_000, ("u1", "gbp"): 250}
    assert ledger.balances("gbp") == {"u1": 250} and ledger.balances("JPY") == {"u1": 10_000}
    assert ledger.balances_of("u1") == {"jpy": 10_000, "gbp": 250}
    from chargectl.common.errors import StoreError

    with pytest.raises(StoreError, match="name the currency"):
        ledger.balance("u1")
    with pytest.raises(StoreError, match="name the currency"):
        ledger.balances()


def test_the_request_id_is_the_document_id(store: Store) -> None:
    store.add_request(ChargeRequest(request_id="doc-1", user_id="u1", status=ChargeRequest.STATUS_PENDING))
    (pending,) = store.pending_requests()
    assert pending.request_id == "doc-1"


@pytest.mark.integration
def test_firestore_ignores_the_request_id_written_in_the_body(firestore_env: object) -> None:
    from chargectl.common.codec import to_document
    from chargectl.services.adapters.firestore_store import FirestoreStore

    store = FirestoreStore(project=f"trust-{uuid.uuid4().hex[:10]}")
    try:
        body = ChargeRequest(request_id="someone-elses", user_id="u1", status=ChargeRequest.STATUS_PENDING)
        store.client.collection("charge_requests").document("doc-2").set(to_document(body))
        (pending,) = store.pending_requests()
        assert pending.request_id == "doc-2"
        got = store.get_request("doc-2")
        assert got is not None and got.request_id == "doc-2"
        assert store.answer_request("doc-2", ChargeRequest.STATUS_REJECTED, "expired", "", 5) is True
        assert store.pending_requests() == []
    finally:
        store.close()
