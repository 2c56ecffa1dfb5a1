"""Money the webhook cannot credit is kept and assignable once; concurrent deliveries of one refund debit it once.

The concurrency cases play two webhook instances (their own handler and store connection each) on one
store: SQLite on one file, and Firestore on the emulator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from payments_helpers import event, sign
from typer.testing import CliRunner

from chargectl.cli.app import app
from chargectl.common.clock import ManualClock
from chargectl.common.codec import UserAccount
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.store import Store
from chargectl.services.payments.ledger import Ledger
from chargectl.services.payments.unmatched import assign_payment
from chargectl.services.payments.webhook import WebhookHandler

CHARGECTL = Path(sys.executable).parent / "chargectl"
SECRET = "whsec_concurrency"
NOW = 1_767_225_600


def seed(store: Store) -> None:
    store.put_user(
        UserAccount(user_id="u1", email="u1@example.test", stripe_customer_id="cus_1", currency="gbp")
    )
    store.put_user(
        UserAccount(user_id="u3", email="u3@example.test", stripe_customer_id="cus_3", currency="usd")
    )


def deliver(handler: WebhookHandler, event_id: str, event_type: str, obj: dict[str, Any]) -> str:
    body = event(event_id, event_type, obj)
    return handler.handle(body, sign(body, SECRET, NOW)).action


def topup(
    pi: str, amount: int, uid: str = "u1", customer: str = "cus_1", currency: str = "gbp"
) -> dict[str, Any]:
    return {
        "id": pi,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": currency,
        "customer": customer,
        "status": "succeeded",
        "metadata": {"uid": uid, "chargectl_purpose": "offsession_topup"},
    }


def refunded(*refunds: tuple[str, int]) -> dict[str, Any]:
    return {
        "id": "ch_c",
        "object": "charge",
        "amount": 2000,
        "amount_refunded": sum(a for _, a in refunds),
        "currency": "gbp",
        "customer": "cus_1",
        "payment_intent": "pi_c",
        "refunds": {
            "object": "list",
            "data": [
                {"id": r, "object": "refund", "amount": a, "currency": "gbp", "status": "succeeded"}
                for r, a in refunds
            ],
        },
    }


def race(handlers: list[WebhookHandler], deliveries: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """Deliver each (event id, type, object) on its own thread, round-robin over the handlers, all at once."""
    barrier = threading.Barrier(len(deliveries))
    results: list[str] = [""] * len(deliveries)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = deliver(handlers[i % len(handlers)], *deliveries[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(deliveries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads), "a delivery hung"
    return results


def assert_refunds_debited_once(store: Store, results: list[str]) -> None:
    ledger = Ledger(store)
    assert ledger.balance("u1") == 2000 - 400, results
    debits = sorted(
        (e.entry_id, e.amount.amount_minor) for e in store.ledger_entries("u1") if e.amount.amount_minor < 0
    )
    assert debits == [("refund_re_c1", -200), ("refund_re_c2", -200)]
    assert results.count("debited") >= 1


class NoWholeCollections:
    """The store as a webhook instance sees it, refusing the reads of every account or the whole
    ledger: at a few hundred thousand accounts each would be a read bill and seconds per event."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def list_users(self) -> list[UserAccount]:
        raise AssertionError("a webhook event read every account")

    def ledger_entries(self, user_id: str | None = None) -> list[Any]:
        if user_id is None:
            raise AssertionError("a webhook event read the whole ledger")
        return self.inner.ledger_entries(user_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_payment_known_by_its_customer_and_its_refund_read_no_whole_collection(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        seed(store)
        handler = WebhookHandler(NoWholeCollections(store), SECRET, manual_clock)  # type: ignore[arg-type]
        # A payment made outside our pages: no uid in its metadata, only its customer says whose it is.
        paid = {**topup("pi_c", 2000), "metadata": {"chargectl_purpose": "offsession_topup"}}
        assert deliver(handler, "evt_top", "payment_intent.succeeded", paid) == "credited"
        assert deliver(handler, "evt_ref1", "charge.refunded", refunded(("re_c1", 200))) == "debited"
        assert Ledger(store).balance("u1") == 2000 - 200
        assert Ledger(store).balance("u3", "usd") == 0  # the other customer's account is untouched
    finally:
        store.close()


def race_refunds(
    stores: list[Store], clock: ManualClock, redelivered: tuple[str, ...]
) -> list[WebhookHandler]:
    """Two instances on one store: a top-up, then Stripe's two partial-refund events (the second lists
    both refunds), each event in ``redelivered`` delivered a second time, all at once. Each refund must
    be debited once, and every delivery after the first of an event is a duplicate."""
    seed(stores[0])
    handlers = [WebhookHandler(s, SECRET, clock) for s in stores]
    assert deliver(handlers[0], "evt_top", "payment_intent.succeeded", topup("pi_c", 2000)) == "credited"
    events = {
        "evt_ref1": refunded(("re_c1", 200)),
        "evt_ref2": refunded(("re_c2", 200), ("re_c1", 200)),
    }
    deliveries = [*events, *redelivered]
    results = race(handlers, [(e, "charge.refunded", events[e]) for e in deliveries])
    assert_refunds_debited_once(stores[0], results)
    assert results.count("duplicate") == len(redelivered)
    return handlers


def test_two_instances_racing_on_sqlite_debit_each_refund_once(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    path = tmp_path / "shared.db"
    stores = [SqliteStore(path), SqliteStore(path)]
    try:
        race_refunds(stores, manual_clock, ("evt_ref1", "evt_ref2"))
    finally:
        for s in stores:
            s.close()


@pytest.mark.integration
def test_two_instances_racing_on_firestore_debit_each_refund_once(
    firestore_env: object, manual_clock: ManualClock
) -> None:
    from chargectl.services.adapters.firestore_store import FirestoreStore

    project = f"refund-race-{uuid.uuid4().hex[:8]}"
    stores = [FirestoreStore(project), FirestoreStore(project)]
    try:
        handlers = race_refunds(stores, manual_clock, ("evt_ref2",))
        # An unmatched payment is durable in Firestore too, and assignable once.
        assert (
            deliver(
                handlers[1],
                "evt_lost",
                "payment_intent.succeeded",
                topup("pi_lost", 700, uid="ghost", customer="cus_x"),
            )
            == "unmatched"
        )
        assign_payment(stores[0], "pi_lost", "u1", NOW * 1000)
        assert Ledger(stores[1]).balance("u1") == 1600 + 700
        assert stores[1].list_unmatched_payments() == []
    finally:
        for s in stores:
            s.close()


def test_assigning_an_unmatched_payment_credits_it_once(tmp_path: Path, manual_clock: ManualClock) -> None:
    store = SqliteStore(tmp_path / "a.db")
    seed(store)
    handler = WebhookHandler(store, SECRET, manual_clock)
    assert (
        deliver(
            handler,
            "evt_lost",
            "payment_intent.succeeded",
            topup("pi_lost", 1200, uid="gone", customer="cus_gone"),
        )
        == "unmatched"
    )
    assert (
        deliver(handler, "evt_eur", "payment_intent.succeeded", topup("pi_eur", 900, currency="eur"))
        == "unmatched"
    )
    # The wrong currency for the account is refused, and so is an unknown user.
    with pytest.raises(Exception, match="refund it in Stripe"):
        assign_payment(store, "pi_eur", "u1", NOW * 1000)
    with pytest.raises(Exception, match="no user"):
        assign_payment(store, "pi_lost", "nobody", NOW * 1000)
    done = assign_payment(store, "pi_lost", "u1", NOW * 1000)
    assert (done.resolved_user_id, done.entry_id) == ("u1", "evt_lost")
    with pytest.raises(Exception, match="already credited"):
        assign_payment(store, "pi_lost", "u1", NOW * 1000)
    assert Ledger(store).balance("u1") == 1200
    assert [p.payment_id for p in store.list_unmatched_payments()] == ["pi_eur"]
    store.close()


def test_unmatched_cli_lists_and_assigns(
    tmp_path: Path, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.delenv("CHARGECTL_CONFIG", raising=False)
    monkeypatch.setenv("CHARGECTL_STATE_DIR", str(state))
    monkeypatch.setenv("COLUMNS", "400")
    store = SqliteStore(state / "chargectl.db")
    seed(store)
    handler = WebhookHandler(store, SECRET, manual_clock)
    assert (
        deliver(
            handler,
            "evt_lost",
            "payment_intent.succeeded",
            topup("pi_lost", 1500, uid="gone", customer="cus_gone"),
        )
        == "unmatched"
    )
    runner = CliRunner()
    listed = runner.invoke(app, ["payments", "unmatched", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)["unmatched"]
    assert (row["payment_id"], row["amount_minor"], row["currency"], row["uid_hint"]) == (
        "pi_lost",
        1500,
        "gbp",
        "gone",
    )
    assigned = runner.invoke(app, ["payments", "unmatched", "assign", "pi_lost", "--user", "u1"])
    assert assigned.exit_code == 0, assigned.output
    assert "credited to u1" in assigned.stdout
    # The console script turns the refusal into one line on stderr and a non-zero exit.
    again = subprocess.run(
        [str(CHARGECTL), "payments", "unmatched", "assign", "pi_lost", "--user", "u1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode != 0
    assert "already credited" in again.stderr and "Traceback" not in again.stderr
    assert again.stdout == ""
    assert Ledger(store).balance("u1") == 1500
    assert runner.invoke(app, ["payments", "unmatched"]).stdout.strip() == "no unmatched payments"
    store.close()


class _FailingLedgerInsert:
    """Wraps the SQLite connection: the first ledger insert fails, as a disk error would (fault injection)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.failed = False

    def execute(self, sql: str, *args: Any) -> Any:
        if not self.failed and sql.startswith("INSERT OR IGNORE INTO ledger"):
            self.failed = True
            import sqlite3

            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_a_failed_ledger_write_leaves_the_event_unrecorded_so_redelivery_credits_once(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    from chargectl.common.errors import StoreError

    store = SqliteStore(tmp_path / "f.db")
    seed(store)
    handler = WebhookHandler(store, SECRET, manual_clock)
    store._db = _FailingLedgerInsert(store._db)  # type: ignore[assignment]
    with pytest.raises(StoreError):
        deliver(handler, "evt_f", "payment_intent.succeeded", topup("pi_f", 1300))
    assert store.ledger_entries("u1") == []
    assert store.mark_event("evt_probe", "probe", 0)  # the store still works
    # Stripe redelivers: credited exactly once now.
    assert deliver(handler, "evt_f", "payment_intent.succeeded", topup("pi_f", 1300)) == "credited"
    assert deliver(handler, "evt_f", "payment_intent.succeeded", topup("pi_f", 1300)) == "duplicate"
    assert Ledger(store).balance("u1") == 1300
    store.close()
