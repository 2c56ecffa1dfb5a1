"""The serving hub's stop path (``Sessions.defer_finishes``): the stop-reason note, the balance read and
the finish transaction run on the request threads, the bill is decided on the loop. Each test plays a
store that hangs, fails or half-succeeds in the middle of a finish, or two finishes racing for one
balance, and asserts the debits, the ledger and the relays."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostile import World

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.hub.service import Hub

A = "site-a"
MAC = "AABBCCDDEEFF"
MAC2 = "AABBCCDDEE00"
START = codec.ChargeRequest.ACTION_START
STOP = codec.ChargeRequest.ACTION_STOP
ACCEPTED = codec.ChargeRequest.STATUS_ACCEPTED
PRICE = 3000  # minor units per kWh: 3 per Wh, so a debit is checked from the plug's meter by hand


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    if w.hub is not None:
        w.hub.requests.close()
    w.close()


async def until(cond: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def serving_hub(w: World) -> Hub:
    hub = await w.start_hub()
    hub.sessions.defer_finishes = True  # as Hub.serve sets it
    return hub


async def charge(w: World, mac: str, rid: str, user: str = "u1", seconds: float = 600) -> int:
    """Start a session on ``mac`` at 1.8 kW, let it run; returns the plug's meter at the start."""
    w.plugs[mac].power_w = 1800.0
    metered = w.plugs[mac].counter
    answer = await w.start_session(rid, mac, user)
    assert answer.status == ACCEPTED and w.plugs[mac].relay
    await w.run(seconds)
    return metered


async def one_plug_charging(w: World) -> tuple[Hub, int]:
    """Site A with one plug, u1 with 1,000.00, a serving hub, and a session charging on ``MAC`` for
    10 minutes: the hub and the plug's meter at the start."""
    w.add_site(A, price_per_kwh_minor=PRICE)
    w.add_plug(MAC, A)
    w.user("u1", 100_000)
    hub = await serving_hub(w)
    await w.run(30)
    return hub, await charge(w, MAC, "r1")


def drawn_cost(w: World, mac: str, metered: int) -> int:
    """What the plug's own meter says was drawn since ``metered``, at PRICE (3 per Wh, whole Wh here)."""
    mwh = w.plugs[mac].counter - metered
    assert mwh % 1000 == 0 and mwh > 0  # 1.8 kW x 5 s samples: 2.5 Wh each, an even count of them
    return mwh // 1000 * 3


def debits(w: World, user: str = "u1") -> list[int]:
    return [-e.amount.amount_minor for e in w.debits(user)]


class Gate:
    """Fault injection on the store seam: ``finish_session`` waits for the test while ``held``."""

    def __init__(self, w: World) -> None:
        self.held = True
        self.entered = threading.Event()
        self.release = threading.Event()
        self._finish = w.store.finish_session
        w.store.finish_session = self  # type: ignore[method-assign]

    def __call__(self, doc: codec.ChargeSession, entry: codec.LedgerEntry | None) -> bool:
        if self.held:
            self.entered.set()
            assert self.release.wait(60), "the test never released the finish"
        return self._finish(doc, entry)


async def test_a_hung_finish_holds_neither_the_loop_nor_the_money(world: World) -> None:
    world.add_site(A, price_per_kwh_minor=PRICE)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 100_000)
    world.user("u2", 100_000)
    hub = await serving_hub(world)
    await world.run(30)
    metered = await charge(world, MAC, "r1", seconds=300)
    gate = Gate(world)
    await world.stop_session("s1", MAC)
    assert world.plugs[MAC].relay is False
    await world.run(30)
    await until(gate.entered.is_set, "the finish transaction to start")
    session = next(iter(hub.sessions.pending))
    # The store hangs in the finish: the loop still starts another user's session, relay and all.
    world.plugs[MAC2].power_w = 1800.0
    answer = await world.start_session("r2", MAC2, "u2")
    assert answer.status == ACCEPTED and world.plugs[MAC2].relay
    await world.run(30)
    assert hub.plugs[MAC2].state.status is m.Status.CHARGING
    # Not billed yet, and not lost: the finish is pending, so a checkpoint taken now carries it.
    assert debits(world) == [] and list(hub.sessions.pending) == [session]
    hub.checkpoint()
    gate.release.set()
    await until(lambda: not hub.sessions.pending, "the finish to be written")
    expected = drawn_cost(world, MAC, metered)
    assert debits(world) == [expected] and world.balance("u1") == 100_000 - expected
    assert hub.balances[("u1", "gbp")] == 100_000 - expected
    doc = world.store.get_session(session)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert doc.cost.amount_minor == expected and doc.stop_reason
    await world.run(30)
    assert world.plugs[MAC].relay is False and not [
        c for c in world.all_commands() if c.plug_mac == MAC and c.on and c.session_id != doc.session_id
    ]


async def test_a_refused_finish_is_retried_by_the_tick_and_billed_once(world: World) -> None:
    hub, metered = await one_plug_charging(world)
    real = world.store.finish_session
    calls = [0]

    def flaky(doc: codec.ChargeSession, entry: codec.LedgerEntry | None) -> bool:
        calls[0] += 1
        if calls[0] <= 3:
            raise StoreError("Firestore transaction failed: unavailable")
        if calls[0] == 4:  # committed, but the answer is lost on the way back
            real(doc, entry)
            raise StoreError("Firestore transaction failed: deadline exceeded")
        return real(doc, entry)

    world.store.finish_session = flaky  # type: ignore[method-assign]
    await world.stop_session("s1", MAC)
    for _ in range(60):
        await world.run(5)
        await asyncio.sleep(0.02)
        if calls[0] >= 5 and not hub.sessions.pending:
            break
    assert calls[0] >= 5 and not hub.sessions.pending
    expected = drawn_cost(world, MAC, metered)
    assert debits(world) == [expected] and world.balance("u1") == 100_000 - expected
    assert world.plugs[MAC].relay is False and hub.plugs[MAC].state.session is None


async def test_a_crash_while_the_finish_is_refused_bills_it_once_after_the_restart(world: World) -> None:
    hub, metered = await one_plug_charging(world)
    real = world.store.finish_session

    def down(doc: codec.ChargeSession, entry: codec.LedgerEntry | None) -> bool:
        raise StoreError("Firestore transaction failed: unavailable")

    world.store.finish_session = down  # type: ignore[method-assign]
    await world.stop_session("s1", MAC)
    await world.run(30)
    await until(lambda: hub.metrics.value("finish_retries_total") >= 1, "the finish to be refused")
    assert len(hub.sessions.pending) == 1 and debits(world) == []
    hub.checkpoint()  # the last checkpoint before the crash
    hub.requests.close()  # the process dies: nothing it holds in memory survives
    world.store.finish_session = real  # type: ignore[method-assign]
    relay_before = world.plugs[MAC].relay
    again = await serving_hub(world)
    assert len(again.sessions.pending) == 1
    await world.run(30)
    await until(lambda: not again.sessions.pending, "the restarted hub to write the finish")
    expected = drawn_cost(world, MAC, metered)
    assert debits(world) == [expected] and world.balance("u1") == 100_000 - expected
    assert relay_before is False and world.plugs[MAC].relay is False
    assert again.plugs[MAC].state.session is None


async def test_two_finishes_of_one_user_never_debit_more_than_the_ledger_holds(world: World) -> None:
    world.add_site(A, price_per_kwh_minor=PRICE)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 5_000)
    hub = await serving_hub(world)
    await world.run(30)
    world.plugs[MAC2].power_w = 1800.0
    assert (await world.start_session("r2", MAC2)).status == ACCEPTED
    await charge(world, MAC, "r1", seconds=300)  # 60 samples x 2.5 Wh x 3 = 450 each, at least
    # A refund posted by the payments process, which this hub is not told of (a store that cannot say
    # its ledger changed): the hub believes 5,000, the ledger holds 200.
    world.ledger.post("refund-1", "u1", "refund", -4_800, "gbp", now_ms=world.now_ms())
    hub._ledger_changes()  # the change is swallowed, as a Firestore hub never sees it
    assert hub.balances[("u1", "gbp")] == 5_000
    assert all(p.state.session and p.state.session.cost().total_minor > 200 for p in hub.plugs.values())
    world.request("s1", STOP, MAC)
    world.request("s2", STOP, MAC2)
    await world.hub.poll_requests()  # type: ignore[union-attr]
    await world.settle()
    world.obey()
    await world.run(30)
    await until(lambda: not hub.sessions.pending, "both finishes to be written")
    # Hand-checked: together they cost far more than the 200 the ledger holds; the debits take all of it
    # and not a penny more, whichever finish is decided first.
    assert len(debits(world)) == 2 and sum(debits(world)) == 200
    assert world.balance("u1") == 0
    docs = world.store.list_sessions(user_id="u1")
    assert any("above the available balance" in d.review_reason for d in docs)
    assert not world.plugs[MAC].relay and not world.plugs[MAC2].relay


async def test_a_session_stopped_before_its_start_was_stored_is_closed_and_never_switched_on(
    world: World,
) -> None:
    # The start document's create fails while the user stops: the finish (off the loop) waits for the
    # start document, then closes it; the held "on" is superseded by the "off" and never goes out.
    world.add_site(A, price_per_kwh_minor=PRICE)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await serving_hub(world)
    await world.run(30)
    world.plugs[MAC].power_w = 1800.0
    real, attempts, down = world.store.create_session, [0], [True]

    def flaky(doc: codec.ChargeSession) -> bool:
        attempts[0] += 1
        if down[0]:
            raise StoreError("Firestore create of sessions failed: unavailable")
        return real(doc)

    world.store.create_session = flaky  # type: ignore[method-assign]
    world.request("r1", START, MAC)
    req = world.store.get_request("r1")
    assert req is not None
    start = asyncio.create_task(hub.requests.handle_async(req))
    await until(lambda: attempts[0] >= 1, "the session document to be tried")
    sess = hub.plugs[MAC].state.session
    assert sess is not None
    world.request("s1", STOP, MAC)
    stop = world.store.get_request("s1")
    assert stop is not None
    await hub.requests.handle_async(stop)
    await world.settle()
    world.obey()
    await world.run(10)
    assert hub.plugs[MAC].state.session is None and sess.session_id in hub.sessions.pending
    down[0] = False
    await asyncio.wait_for(start, 60)
    await until(lambda: not hub.sessions.pending, "the finish to be written")
    await world.run(10)
    doc = world.store.get_session(sess.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert doc.energy_mwh == 0 and doc.cost.amount_minor == 0 and doc.stop_reason
    assert [c for c in world.all_commands() if c.plug_mac == MAC and c.on] == []
    assert world.plugs[MAC].relay is False
    assert world.balance("u1") == 1000 and debits(world) == [0]


async def test_a_stop_reason_note_the_store_refuses_does_not_hold_the_stopping_hub(world: World) -> None:
    # The user stops; the agent is silent (the "off" is not confirmed, so the session stays FINISHING)
    # and the store refuses the stop-reason note, again and again. Stopping the hub must not wait out
    # the stop path's 30 s bound for that note: the session's stop reason is in the last checkpoint.
    # The hub restarted from it closes the session: the relay off, one debit of what the meter drew.
    hub, metered = await one_plug_charging(world)
    put_session = world.store.put_session
    refused: list[str] = []

    def down(doc: codec.ChargeSession) -> None:
        refused.append(doc.session_id)
        raise StoreError("Firestore write of sessions failed: unavailable")

    world.store.put_session = down  # type: ignore[method-assign]
    world.request("s1", STOP, MAC)
    stop = world.store.get_request("s1")
    assert stop is not None
    await hub.requests.handle_async(stop)
    assert hub.plugs[MAC].state.status is m.Status.FINISHING
    await until(lambda: len(refused) >= 2, "the note to be refused and retried")
    # Far inside the 30 s the stop used to wait for the note: only a hang reaches this bound.
    await asyncio.wait_for(hub.stop(), 20)
    assert debits(world) == [] and world.plugs[MAC].relay  # nothing billed yet; the off is unconfirmed
    world.store.put_session = put_session  # type: ignore[method-assign]
    world.sites[A].commands.clear()  # the old hub's "off" was never delivered
    again = await serving_hub(world)
    assert again.plugs[MAC].state.status is m.Status.FINISHING
    for _ in range(12):
        await world.run(30)
        if not again.sessions.pending and again.plugs[MAC].state.session is None:
            break
    await until(lambda: not again.sessions.pending, "the restarted hub to write the finish")
    mwh = world.plugs[MAC].counter - metered  # the meter, relay on until the restarted hub's "off"
    expected = (mwh * 3 + 500) // 1000  # 3 per Wh, rounded half up once (an odd count of 2.5 Wh here)
    assert mwh > 300_000 and debits(world) == [expected] and world.balance("u1") == 100_000 - expected
    assert world.plugs[MAC].relay is False and again.plugs[MAC].state.session is None
