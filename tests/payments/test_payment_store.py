"""The payments store methods on both adapters: events recorded with their entries atomically, unmatched
payments kept and assigned once, the auto top-up state's compare-and-set."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chargectl.common.codec import LedgerEntry, Money, UserAccount
from chargectl.common.errors import StoreError
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.store import AutoTopupState, Store, UnmatchedPayment
from chargectl.services.payments.accounts import flag_payment_action, set_default_card


@pytest.fixture(params=["sqlite", "firestore"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        store: Store = SqliteStore(tmp_path / "s.db")
    else:
        request.getfixturevalue("firestore_env")
        from chargectl.services.adapters.firestore_store import FirestoreStore

        store = FirestoreStore(f"pay-{uuid.uuid4().hex[:8]}")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "firestore"])
def two_instances(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Store]]:
    """Two stores on one database, as two instances of the app (or the app and the webhook) have."""
    if request.param == "sqlite":
        stores: list[Store] = [SqliteStore(tmp_path / "s.db"), SqliteStore(tmp_path / "s.db")]
    else:
        request.getfixturevalue("firestore_env")
        from chargectl.services.adapters.firestore_store import FirestoreStore

        project = f"acct-{uuid.uuid4().hex[:8]}"
        stores = [FirestoreStore(project), FirestoreStore(project)]
    try:
        yield stores
    finally:
        for s in stores:
            s.close()


def entry(entry_id: str, amount: int, user: str = "u1") -> LedgerEntry:
    return LedgerEntry(
        entry_id=entry_id,
        user_id=user,
        kind=LedgerEntry.KIND_TOPUP,
        amount=Money(amount_minor=amount, currency="gbp"),
        created_at_ms=5,
    )


def test_record_event_writes_the_event_and_its_entries_once(any_store: Store) -> None:
    assert any_store.record_event("evt_1", "x", 1, [entry("e1", 100), entry("e2", 50)]) == (True, 2)
    assert any_store.record_event("evt_1", "x", 2, [entry("e1", 100), entry("e3", 999)]) == (False, 0)
    # Another event naming an entry that exists: recorded, the existing entry untouched.
    assert any_store.record_event("evt_2", "x", 3, [entry("e2", 777)]) == (True, 0)
    assert sorted((e.entry_id, e.amount.amount_minor) for e in any_store.ledger_entries("u1")) == [
        ("e1", 100),
        ("e2", 50),
    ]
    assert not any_store.mark_event("evt_2", "x", 4)


def test_record_event_refuses_an_event_without_id_or_an_entry_without_owner(any_store: Store) -> None:
    with pytest.raises(StoreError, match="an event needs an id"):
        any_store.record_event("", "x", 1, [entry("e1", 100)])
    with pytest.raises(StoreError, match="needs an entry_id and a user_id"):
        any_store.record_event("evt_9", "x", 1, [entry("e1", 100), entry("e2", 50, user="")])
    # Nothing was written: neither the event nor the well-formed entry beside the bad one.
    assert any_store.ledger_entries("u1") == []
    assert any_store.record_event("evt_9", "x", 2, [entry("e1", 100)]) == (True, 1)


def test_unmatched_payments_are_kept_and_assigned_once(any_store: Store) -> None:
    lost = UnmatchedPayment("pi_1", "evt_9", "payment_intent.succeeded", 700, "gbp", "no account", 10)
    assert any_store.record_event("evt_9", "payment_intent.succeeded", 10, unmatched=lost) == (True, 0)
    assert any_store.list_unmatched_payments() == [lost]
    assert any_store.get_unmatched_payment("pi_1") == lost
    assert any_store.assign_unmatched_payment("pi_1", entry("evt_9", 700), 20)
    assert not any_store.assign_unmatched_payment("pi_1", entry("evt_9b", 700), 21)
    assert any_store.list_unmatched_payments() == []
    [done] = any_store.list_unmatched_payments(include_resolved=True)
    assert (done.resolved_user_id, done.resolved_at_ms, done.entry_id) == ("u1", 20, "evt_9")
    assert [e.entry_id for e in any_store.ledger_entries("u1")] == ["evt_9"]
    assert not any_store.assign_unmatched_payment("pi_unknown", entry("evt_x", 1), 22)


def test_topup_state_compare_and_set(any_store: Store) -> None:
    assert any_store.get_topup_state("u1") is None
    first = AutoTopupState("u1", crossing=1, version=1)
    assert any_store.update_topup_state(first)
    assert not any_store.update_topup_state(AutoTopupState("u1", crossing=9, version=1))  # lost the race
    assert not any_store.update_topup_state(AutoTopupState("u1", crossing=9, version=3))  # skipped a version
    second = dataclasses.replace(first, crossing=2, version=2)
    assert any_store.update_topup_state(second)
    assert any_store.get_topup_state("u1") == second


def test_two_instances_updating_one_account_lose_neither_change(two_instances: list[Store]) -> None:
    """The webhook saving the driver's card on one instance while the app sets auto top-up and the
    payment-action flag on another: every change survives (a whole-document rewrite from a stale
    read would put back the old card, or drop the auto top-up, and the next off-session charge with it)."""
    a, b = two_instances
    a.put_user(UserAccount(user_id="u1", currency="gbp", stripe_customer_id="cus_1"))
    # Two writers at once, round after round. The Firestore emulator resolves two transactions on one
    # document by waiting out a lock (seconds per round), so it plays fewer rounds than SQLite.
    rounds = 12 if isinstance(a, SqliteStore) else 2
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def cards() -> None:  # the webhook, on one instance
        for i in range(rounds):
            barrier.wait(timeout=60)
            assert set_default_card(a, "u1", f"pm_{i}", 1000 + i)

    def app() -> None:  # the app, on the other: auto top-up, then the payment-action flag
        for i in range(rounds):
            barrier.wait(timeout=60)

            def change(account: UserAccount | None, threshold: int = 100 + i) -> UserAccount | None:
                assert account is not None
                account.auto_topup_threshold.CopyFrom(Money(amount_minor=threshold, currency="gbp"))
                return account

            assert b.update_user("u1", change) is not None
            assert flag_payment_action(b, "u1", f"pi_{i}", 2000 + i)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        return run

    threads = [threading.Thread(target=guarded(fn)) for fn in (cards, app)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads), "an account update hung"
    final = a.get_user("u1")
    assert final is not None
    assert final.default_payment_method == f"pm_{rounds - 1}"
    assert final.auto_topup_threshold.amount_minor == 100 + rounds - 1
    assert final.needs_payment_action and final.payment_action_intent_id == f"pi_{rounds - 1}"
    assert final.stripe_customer_id == "cus_1" and final.currency == "gbp"


def test_update_user_stores_nothing_when_the_change_declines(any_store: Store) -> None:
    assert any_store.update_user("nobody", lambda account: account) is None  # no account: nothing made
    assert any_store.get_user("nobody") is None
    made = any_store.update_user("u2", lambda account: UserAccount(user_id="u2", currency="eur"))
    assert made is not None and any_store.get_user("u2") == made
    assert any_store.update_user("u2", lambda account: None) is None
    with pytest.raises(StoreError, match="returned the account of 'u3'"):
        any_store.update_user("u2", lambda account: UserAccount(user_id="u3"))
    assert any_store.get_user("u2") == made and any_store.get_user("u3") is None


def test_lookups_by_customer_and_by_reference_are_queries(any_store: Store) -> None:
    any_store.put_user(UserAccount(user_id="u1", currency="gbp", stripe_customer_id="cus_1"))
    any_store.put_user(UserAccount(user_id="u2", currency="gbp", stripe_customer_id="cus_2"))
    found = any_store.user_by_customer("cus_2")
    assert found is not None and found.user_id == "u2"
    assert any_store.user_by_customer("cus_9") is None and any_store.user_by_customer("") is None
    for eid, user, amount, ref, at in [
        ("e1", "u1", 500, "pi_a", 3),
        ("e2", "u2", 700, "pi_b", 1),
        ("e3", "u1", -100, "pi_a", 2),
        ("e4", "u2", 50, "", 4),
    ]:
        e = entry(eid, amount, user)
        e.reference = ref
        e.created_at_ms = at
        assert any_store.append_ledger(e)
    assert [e.entry_id for e in any_store.ledger_by_reference(["pi_a", "cs_x"])] == [
        "e3",
        "e1",
    ]  # oldest first
    assert [e.entry_id for e in any_store.ledger_by_reference(["pi_b"])] == ["e2"]
    assert any_store.ledger_by_reference(["", "pi_z"]) == [] and any_store.ledger_by_reference([]) == []
    with pytest.raises(StoreError, match="at most 30 references"):
        any_store.ledger_by_reference([f"pi_{i}" for i in range(31)])
