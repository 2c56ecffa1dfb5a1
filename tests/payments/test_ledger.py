"""The ledger: deterministic ids make replays no-ops; balances are sums of entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from chargectl.common.errors import StoreError
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.ledger import Ledger


def test_replayed_postings_count_once_and_balance_is_the_sum(tmp_path: Path) -> None:
    ledger = Ledger(SqliteStore(tmp_path / "l.db"))
    assert ledger.post("evt_a", "u1", "topup", 1000, "GBP", now_ms=1)
    assert not ledger.post("evt_a", "u1", "topup", 1000, "gbp", now_ms=2)
    assert ledger.post("sess_1", "u1", "session_debit", -237, "gbp", now_ms=3)
    assert not ledger.post("sess_1", "u1", "session_debit", -237, "gbp", now_ms=4)
    assert ledger.post("evt_b", "u2", "topup", 500, "gbp", now_ms=5)
    assert ledger.balance("u1") == 1000 - 237
    assert ledger.balance("u1", "gbp") == 763
    assert ledger.balance("u1", "eur") == 0
    assert ledger.balances() == {"u1": 763, "u2": 500}
    hist = ledger.history("u1")
    assert [(p.entry_id, p.kind, p.amount_minor, p.currency) for p in hist] == [
        ("evt_a", "topup", 1000, "gbp"),
        ("sess_1", "session_debit", -237, "gbp"),
    ]


@pytest.mark.parametrize(
    ("entry_id", "user", "kind", "currency"),
    [
        ("", "u", "topup", "gbp"),
        ("e", "", "topup", "gbp"),
        ("e", "u", "gift", "gbp"),
        ("e", "u", "topup", "pounds"),
    ],
)
def test_bad_postings_are_refused(tmp_path: Path, entry_id: str, user: str, kind: str, currency: str) -> None:
    ledger = Ledger(SqliteStore(tmp_path / "l.db"))
    with pytest.raises(StoreError):
        ledger.post(entry_id, user, kind, 1, currency, now_ms=1)  # type: ignore[arg-type]
