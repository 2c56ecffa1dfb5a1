"""The serving hub reads due balances off the event loop and applies each result on the loop with the
rule requests use: a read never overwrites a newer figure.

Hostile: a debit is posted (one of the user's two sessions finishes) while a balance read that started
before it is in flight. Applying that read would hand the debited money back to the other session,
which would then charge past the ledger balance. The debit must stand, and the other session must stop
at what the ledger really holds."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from test_balance_refresh import TARIFF, CountingLedger, _live_plug
from test_service import SITE, Rig

from chargectl.common import codec
from chargectl.common.readings import Reading
from chargectl.services.hub import machine as m
from chargectl.services.hub.sessions import Balances
from chargectl.services.payments.ledger import Ledger

A, B = "AABBCCDD0001", "AABBCCDD0002"
W = 2700.0  # each plug draws 2.7 kW while its relay is on


def test_a_read_back_after_a_debit_is_dropped_and_one_without_is_kept() -> None:
    now = [1_700_000_000_000]
    ledger = CountingLedger({"u0": 1000})
    money = Balances(ledger, lambda: now[0], refresh_s=10, max_stale_s=300)  # type: ignore[arg-type]
    money.load()
    p = _live_plug(0, 1000, now[0])
    money.track(p)
    now[0] += 10_000
    assert money.due_reads() == [("u0", "gbp")]  # its first check: never read
    assert money.due_reads() == []  # in flight: not decided twice
    money.debited(
        codec.LedgerEntry(entry_id="s9", user_id="u0", amount=codec.Money(amount_minor=-150, currency="gbp"))
    )
    money.read_back(("u0", "gbp"), 1000)  # read before the debit landed
    assert money.known[("u0", "gbp")] == 850
    assert not money.reading(("u0", "gbp"))
    now[0] += 300_000  # the staleness bound: read again
    assert money.due_reads() == [("u0", "gbp")]
    money.read_back(("u0", "gbp"), 850 + 500)  # a top-up meanwhile, nothing newer in the hub: kept
    assert money.known[("u0", "gbp")] == 1350
    assert TARIFF.currency == "gbp"


def test_reads_in_flight_are_capped_and_the_users_still_due_are_read_later() -> None:
    now = [1_700_000_000_000]
    ledger = CountingLedger({f"u{i}": 1000 for i in range(20)})
    money = Balances(ledger, lambda: now[0], refresh_s=10, max_stale_s=300)  # type: ignore[arg-type]
    money.load()
    for i in range(20):
        money.track(_live_plug(i, 1000, now[0]))
    now[0] += 10_000
    first = money.due_reads(limit=8)
    assert len(first) == 8 and money.due_reads(limit=8) == []  # 8 in flight: nobody else checked yet
    for key in first[:5]:
        money.read_back(key, 1000)
    second = money.due_reads(limit=8)
    assert len(second) == 5 and not set(second) & set(first)
    for key in first[5:] + second:
        money.read_back(key, 1000)
    third = money.due_reads(limit=8)
    assert len(third) == 7  # the last of the 20
    for key in third:
        money.read_back(key, 1000)
    assert {k for k, _ in money.known} >= {f"u{i}" for i in range(20)}
    assert money.reads == 20 and money.due_reads(limit=8) == []  # each read once; next in 300 s


class Site:
    """Two plugs of one site, each with the relay its last command set."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.relay = {A: False, B: False}
        self.counter = {A: 1_000_000, B: 5_000_000}
        self.rows: list[Reading] = []

    async def play(self, seconds: float) -> None:
        rig = self.rig
        hub = rig.hub
        assert hub is not None
        for _ in range(round(seconds / 5)):
            rig.clock.advance(5)
            for mac in (A, B):
                drawn = W if self.relay[mac] else 0.0
                self.counter[mac] += round(drawn * 5 / 3.6)  # W * s -> mWh
                ts_ms = round(rig.clock.now() * 1000)
                self.rows.append(Reading(mac, ts_ms, drawn, self.counter[mac], self.relay[mac], 230.0))
            if len(self.rows) >= 12:
                await rig.publish(self.rows)
                self.rows = []
            await hub.tick()
            await rig.settle()
            self.obey()

    def obey(self) -> None:
        rig = self.rig
        assert rig.hub is not None
        while rig.commands:
            cmd = rig.commands.pop(0)
            if cmd.plug_mac in self.relay:  # not a site lease (no plug: it switches nothing)
                self.relay[cmd.plug_mac] = cmd.on
            now_ms = round(rig.clock.now() * 1000)
            rig.hub.process_outcome(
                codec.CommandOutcome(cmd.command_id, SITE, cmd.plug_mac, True, "executed", now_ms, cmd.on)
            )

    async def request(self, rid: str, mac: str, action: int) -> None:
        rig = self.rig
        assert rig.hub is not None
        rig.store.add_request(
            codec.ChargeRequest(
                request_id=rid,
                user_id="u1",
                plug_mac=mac,
                action=action,  # type: ignore[arg-type]
                status=codec.ChargeRequest.STATUS_PENDING,
                created_at_ms=round(rig.clock.now() * 1000),
            )
        )
        await rig.hub.poll_requests()
        await rig.settle()
        self.obey()


async def test_a_debit_landing_during_a_balance_read_is_never_undone(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    site = rig.store.get_site(SITE)
    assert site is not None
    site.tariff.price_per_kwh_minor = 300  # £3/kWh: 2.7 kW spends 0.225p a second
    rig.store.put_site(site)
    hub = await rig.start_hub(balance_refresh_s=5, balance_max_stale_s=30)
    hub.balance_reads_off_loop = True  # as when serving
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    hub.credit_arrived("u1")
    play = Site(rig)
    await play.play(30)  # both plugs report: AVAILABLE
    await play.request("r1", A, codec.ChargeRequest.ACTION_START)
    await play.request("r2", B, codec.ChargeRequest.ACTION_START)
    await play.play(600)  # about 135p each
    assert play.relay == {A: True, B: True}

    # The next due read of u1 reads the ledger now, then is held until the test lets it return.
    gate, entered, armed = threading.Event(), threading.Event(), threading.Event()
    real_balance = hub.money.ledger.balance

    def balance(user_id: str, currency: str = "gbp") -> int:
        value = real_balance(user_id, currency)
        if armed.is_set():
            armed.clear()
            entered.set()
            assert gate.wait(60), "the test never let the read return"
        return value

    hub.money.ledger.balance = balance  # type: ignore[method-assign]
    armed.set()
    for _ in range(100):
        await play.play(5)
        if entered.is_set():
            break
    assert entered.is_set(), "no balance read was due in 500 s"
    assert hub.money.reading(("u1", "gbp"))

    # A finishes while the read is in flight: its debit is posted and applied.
    await play.request("r3", A, codec.ChargeRequest.ACTION_STOP)
    await play.play(30)
    ledger = Ledger(rig.store)
    debits = [-e.amount_minor for e in ledger.history("u1") if e.kind == "session_debit"]
    assert len(debits) == 1 and debits[0] > 0
    after_a = 1000 - debits[0]
    assert ledger.balance("u1") == after_a
    assert hub.balances[("u1", "gbp")] == after_a

    gate.set()  # the read (1000, from before the debit) comes back
    await hub.balance_reads_done()
    assert not hub.money.reading(("u1", "gbp"))
    assert hub.balances[("u1", "gbp")] == after_a  # the debit stands
    session_b = hub.plugs[B].state.session
    assert session_b is not None and session_b.balance_minor == after_a

    # B charges on until it has spent what the ledger holds, and no further.
    for _ in range(1000):
        await play.play(5)
        await hub.balance_reads_done()
        if not play.relay[B]:
            break
    assert play.relay[B] is False, "B never stopped for lack of credit"
    assert hub.plugs[B].state.status is m.Status.SUSPENDED_EVSE
    await play.request("r4", B, codec.ChargeRequest.ACTION_STOP)
    await play.play(30)
    await hub.balance_reads_done()
    debits = [-e.amount_minor for e in ledger.history("u1") if e.kind == "session_debit"]
    assert len(debits) == 2
    # Hand-checked: B may spend what is left after A's debit; it stops within a sample's cost of it
    # (2.7 kW for 5 s at £3/kWh: 1.125p), never past it.
    assert after_a - 2 <= debits[1] <= after_a
    assert 0 <= ledger.balance("u1") <= 2
    await hub.stop()
    rig.store.close()
    assert asyncio.get_running_loop() is not None
