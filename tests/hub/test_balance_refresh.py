"""Live users' balances are re-read when needed, not every ``balance_refresh_s`` for every user.

Hostile: the payments process takes money back (a refund, a dispute) while the user is charging.
Charging must stop within ``balance_max_stale_s`` from a store that cannot say its ledger changed, at
the next tick from one that can (SQLite), and the debit never exceeds what the ledger holds.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from test_service import Rig

from chargectl.common import codec
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.params import DEFAULTS
from chargectl.services.hub.registry import HubPlug
from chargectl.services.hub.sessions import Balances
from chargectl.services.payments.ledger import Ledger

TARIFF = Tariff(price_per_kwh_minor=Decimal(30))


class BlindStore:
    """The rig's store without ``ledger_changes``: a store that cannot say its ledger changed
    (Firestore without a listener)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "ledger_changes":
            raise AttributeError(name)
        return getattr(self.inner, name)


async def _charging_then_refund(rig: Rig, max_stale_s: float) -> int:
    """1 kWh charged (30p of a £10 top-up), then the payments process refunds £9.80 through its own
    connection to the store: 20p left against a 30p cost. Returns the hub time (ms) of the refund."""
    hub = await rig.start_hub(balance_max_stale_s=max_stale_s)
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)  # type: ignore[arg-type]
    hub.credit_arrived("u1")
    await rig.readings(30, 0)
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(2000, 1800.0)  # 2000 s at 1.8 kW = 1 kWh = 30p
    assert rig.relay is True and str(hub.plugs["AABBCCDDEEFF"].state.status) == "CHARGING"
    payments = SqliteStore(rig.tmp / "hub.db")  # another process's connection
    at_ms = round(rig.clock.now() * 1000)
    assert Ledger(payments).post("re_1", "u1", "refund", -980, "gbp", now_ms=at_ms)
    payments.close()
    return at_ms


async def _money_after_stop(rig: Rig) -> tuple[int, int, codec.ChargeSession]:
    """The user stops; returns (the debit, the ledger balance after it, the session document)."""
    assert rig.hub is not None
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await rig.hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(30, 0)
    (session,) = rig.store.list_sessions()
    assert session.status == codec.ChargeSession.STATUS_COMPLETED
    ledger = Ledger(rig.store)  # type: ignore[arg-type]
    debits = [p.amount_minor for p in ledger.history("u1") if p.kind == "session_debit"]
    assert len(debits) == 1
    return -debits[0], ledger.balance("u1", "gbp"), session


async def test_a_refund_stops_charging_within_the_staleness_bound_from_a_blind_store(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    sqlite = rig.store
    rig.store = BlindStore(sqlite)  # type: ignore[assignment]
    refund_ms = await _charging_then_refund(rig, max_stale_s=60)
    stopped_ms = None
    for _ in range(30):  # 150 s of 1.8 kW, 5 s at a time
        await rig.readings(5, 1800.0)
        if not rig.relay:
            stopped_ms = round(rig.clock.now() * 1000)
            break
    assert stopped_ms is not None, "charging went on after the refund"
    assert stopped_ms - refund_ms <= 60_000 + 5_000  # the bound, plus the tick that noticed it
    assert rig.hub is not None and rig.hub.plugs["AABBCCDDEEFF"].state.status is m.Status.SUSPENDED_EVSE
    debit, balance, session = await _money_after_stop(rig)
    assert debit == 20  # what the ledger held after the refund, not the 31-32p the plug metered
    assert balance == 0  # never below zero
    assert "above the available balance 20" in session.review_reason
    await rig.hub.stop()
    sqlite.close()


async def test_a_refund_stops_charging_at_the_next_tick_when_the_store_can_tell(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await _charging_then_refund(rig, max_stale_s=3600)  # the bound alone would take an hour
    await rig.readings(5, 1800.0)  # one tick: the hub sees the refund and switches off
    assert rig.relay is False
    debit, balance, _ = await _money_after_stop(rig)
    assert (debit, balance) == (20, 0)
    assert rig.hub is not None
    await rig.hub.stop()
    rig.store.close()


class CountingLedger:
    """Balances in a dict; counts reads (what each costs the store)."""

    def __init__(self, balances: dict[str, int]) -> None:
        self.balances = balances
        self.reads: Counter[str] = Counter()

    def balance(self, user_id: str, currency: str | None = None) -> int:
        self.reads[user_id] += 1
        return self.balances.get(user_id, 0)

    def balances_of(self, user_id: str) -> dict[str, int]:
        self.reads[user_id] += 1
        return {"gbp": self.balances.get(user_id, 0)}

    def balances_by_currency(self) -> dict[tuple[str, str], int]:
        return {(u, "gbp"): b for u, b in self.balances.items()}


def _live_plug(i: int, balance: int, now_ms: int) -> HubPlug:
    p = HubPlug.of(m.new_state(f"AA{i:06d}", DEFAULTS["ev"], now_ms / 1000), "site-a")
    p.state.status = m.Status.CHARGING
    p.state.session = m.Session(f"s{i}", f"u{i}", f"r{i}", TARIFF, balance, now_ms, 0)
    return p


def test_ledger_reads_scale_with_what_is_needed_not_with_live_users() -> None:
    """1,000 users charging, 999 with plenty of credit and u0 with 40p: in 800 s of 1 s ticks the plenty
    are read once per staleness bound, u0 also as it nears its end (for a top-up), every refresh once
    it ran out. The old policy read every live user every refresh: 80,000 reads."""
    now = [1_700_000_000_000]
    ledger = CountingLedger({f"u{i}": 100_000 for i in range(1000)} | {"u0": 40})
    money = Balances(ledger, lambda: now[0], refresh_s=10, max_stale_s=300)  # type: ignore[arg-type]
    money.load()
    plugs = [_live_plug(i, ledger.balances[f"u{i}"], now[0]) for i in range(1000)]
    for p in plugs:
        money.track(p)
    for _ in range(800):
        now[0] += 1000
        for p in plugs:  # 7.2 kW each: 0.06p a second at 30p/kWh; u0's 40p last 667 s
            sess = p.state.session
            assert sess is not None
            if sess.cost().total_minor < sess.balance_minor:  # the machine stops a session out of credit
                sess.energy_mwh += 2000
        money.due()
        for plug, update in money.updates():
            assert plug.state.session is not None
            plug.state.session.balance_minor = update.balance_minor
    # Hand-checked: the first check of a user (10 s after its session became live; loaded, never read)
    # reads it, then every 300 s: at 10, 310 and 610 s.
    assert {ledger.reads[f"u{i}"] for i in range(1, 1000)} == {3}
    # u0: read at 10 and 310 s; checked (not read) at about 485 and 576 s as it nears its end; read
    # once its headroom is within two refreshes of its spend (about 640 s), then every 10 s (near its
    # end, then out of credit) to 800 s: 2 + about 16.
    assert 15 <= ledger.reads["u0"] <= 19
    assert sum(ledger.reads.values()) < 80_000 // 25


def test_a_top_up_reaches_a_session_near_its_end_before_it_runs_out() -> None:
    now = [1_700_000_000_000]
    ledger = CountingLedger({"u0": 40})
    money = Balances(ledger, lambda: now[0], refresh_s=10, max_stale_s=300)  # type: ignore[arg-type]
    money.load()
    p = _live_plug(0, 40, now[0])
    money.track(p)
    sess = p.state.session
    assert sess is not None
    for t in range(1, 801):
        now[0] += 1000
        sess.energy_mwh += 2000  # 0.06p a second: 40p last about 660 s
        if t == 400:
            ledger.balances["u0"] = 1040  # topped up by the payments process; nobody tells the hub
        money.due()
        for _plug, update in money.updates():
            sess.balance_minor = update.balance_minor
        assert sess.cost().total_minor < sess.balance_minor, f"out of credit at {t} s with a top-up"
    assert sess.balance_minor == 1040


def test_a_users_sessions_share_its_balance_as_they_come_and_go() -> None:
    """One user, 1,000p: a second session takes a share (each may spend the balance less what the other
    has used), its end gives the first the whole balance back, and a new one shares again. The only
    session is held without a container (memory), the money is the same."""
    now = [1_700_000_000_000]
    money = Balances(CountingLedger({"u1": 1000}), lambda: now[0])  # type: ignore[arg-type]
    money.load()
    a, b = _live_plug(1, 1000, now[0]), _live_plug(2, 1000, now[0])
    for p, sid in ((a, "sa"), (b, "sb")):
        p.state.session = m.Session(sid, "u1", "r", TARIFF, 1000, now[0], 0)
    money.track(a)
    assert money.live["u1"].plugs is a  # its only session: the plug itself, no container
    money.track(b)
    assert a.state.session is not None and b.state.session is not None
    a.state.session.energy_mwh = 10_000_000  # 10 kWh at 30p: 300p
    b.state.session.energy_mwh = 5_000_000  # 5 kWh: 150p
    shares = {p.state.mac: u.balance_minor for p, u in money.updates()}
    assert shares == {a.state.mac: 1000 - 150, b.state.mac: 1000 - 300}
    a.state.session.balance_minor, b.state.session.balance_minor = 850, 700  # as the machines take them
    assert money.available("u1", "gbp", except_session="sa") == 1000 - 150
    b.state.session = None  # b's session ended (billed elsewhere): a may spend all of it again
    money.track(b)
    assert money.live["u1"].plugs is a and money.plugs_of(("u1", "gbp")) == [a]
    assert {p.state.mac: u.balance_minor for p, u in money.updates()} == {a.state.mac: 1000}
    a.state.session.balance_minor = 1000
    b.state.session = m.Session("sb2", "u1", "r2", TARIFF, 1000, now[0], 0)
    money.track(b)
    assert {p.state.mac: u.balance_minor for p, u in money.updates()} == {b.state.mac: 1000 - 300}
    a.state.session = None
    b.state.session = None
    money.track(a)
    money.track(b)
    assert not money.live and money.others_cost("u1", "gbp") == 0
    now[0] += 3_600_000
    assert money.due_reads() == []  # no schedule left behind for a user with no live session


class TwoCurrencyLedger:
    """Balances per (user, currency); counts reads."""

    def __init__(self, balances: dict[tuple[str, str], int]) -> None:
        self.balances = balances
        self.reads = 0

    def balance(self, user_id: str, currency: str) -> int:
        self.reads += 1
        return self.balances.get((user_id, currency), 0)

    def balances_of(self, user_id: str) -> dict[str, int]:
        self.reads += 1
        return {c: b for (u, c), b in self.balances.items() if u == user_id}

    def balances_by_currency(self) -> dict[tuple[str, str], int]:
        return dict(self.balances)


def test_a_user_live_in_two_currencies_keeps_two_balances_and_a_refund_reaches_the_one_left() -> None:
    """One user charging in pounds and in euros: each session may spend its own currency's balance,
    never the other's. When the pound session ends first (the one the user's entry was filed under), the
    euro one is still the user's live session: a refund in euros reaches it, and once it ends too the
    user is no longer live (no reads for it)."""
    now = [1_700_000_000_000]
    ledger = TwoCurrencyLedger({("u1", "gbp"): 1000, ("u1", "eur"): 500})
    money = Balances(ledger, lambda: now[0])  # type: ignore[arg-type]
    money.load()
    eur = Tariff(price_per_kwh_minor=Decimal(30), currency="eur")
    a, b = _live_plug(1, 0, now[0]), _live_plug(2, 0, now[0])
    a.state.session = m.Session("sa", "u1", "ra", TARIFF, 0, now[0], 0)
    b.state.session = m.Session("sb", "u1", "rb", eur, 0, now[0], 0)
    money.track(a)
    money.track(b)
    assert {p.state.mac: u.balance_minor for p, u in money.updates()} == {a.state.mac: 1000, b.state.mac: 500}
    assert money.plugs_of(("u1", "gbp")) == [a] and money.plugs_of(("u1", "eur")) == [b]
    a.state.session = None  # the pound session ended
    money.track(a)
    assert money.plugs_of(("u1", "gbp")) == [] and money.plugs_of(("u1", "eur")) == [b]
    assert b.state.session is not None
    b.state.session.balance_minor = 500
    ledger.balances[("u1", "eur")] = 100  # refunded €4 by the payments process
    reads = ledger.reads
    money.changed(["u1"])  # the store says u1's ledger changed: still live, so read now
    assert ledger.reads == reads + 1
    assert [(p, u.balance_minor) for p, u in money.updates()] == [(b, 100)]
    b.state.session = None
    money.track(b)
    assert not money.live and money.plugs_of(("u1", "eur")) == []
    money.changed(["u1"])  # nobody live: nothing to read
    assert ledger.reads == reads + 1
    now[0] += 3_600_000
    assert money.due_reads() == []
