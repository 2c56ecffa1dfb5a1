"""The hub against a hostile site, a hostile user, a faulty plug and a broken store: each test replays one
case through the hub's public surface (signed bus messages and store documents in; store documents,
the ledger, commands and alerts out) and asserts what happens to the money and to the relay."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile import World

from chargectl.common import codec
from chargectl.common.alerts import AlertKind
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.hub.health import HealthServer

A, B = "site-a", "site-b"
MAC = "AABBCCDDEEFF"
MAC2 = "AABBCCDDEE00"
START_ = codec.ChargeRequest.ACTION_START
STOP = codec.ChargeRequest.ACTION_STOP
ACCEPTED = codec.ChargeRequest.STATUS_ACCEPTED
REJECTED = codec.ChargeRequest.STATUS_REJECTED


def alerts(w: World, kind: AlertKind) -> list[Any]:
    assert w.hub is not None
    return [a for a in w.hub.alerts.open_alerts() if a.kind == kind]


async def charging(
    w: World, mac: str = MAC, user: str = "u1", rid: str = "r1", power_w: float = 1800.0
) -> str:
    """Bring ``mac`` to CHARGING for ``user``; returns the session id."""
    assert w.hub is not None
    await w.run(30, macs=[mac])
    w.plugs[mac].power_w = power_w
    answer = await w.start_session(rid, mac, user)
    assert answer.status == ACCEPTED, answer.reason
    await w.run(60, macs=[mac])
    assert w.hub.plugs[mac].state.status is m.Status.CHARGING
    return answer.session_id


async def finish(w: World, mac: str = MAC, rid: str = "stop", user: str = "u1") -> codec.ChargeSession:
    """Stop the session on ``mac`` and run until it is billed; returns its document."""
    assert w.hub is not None
    sess = w.hub.plugs[mac].state.session
    assert sess is not None
    await w.stop_session(rid, mac, user)
    await w.run(90, macs=[mac])
    doc = w.store.get_session(sess.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    return doc


# ------------------------------------------------------------------------------------------------
# 1. Plugs belong to sites
# ------------------------------------------------------------------------------------------------


async def test_foreign_site_cannot_move_bill_or_command_a_victims_plug(world: World) -> None:
    world.add_site(A)
    world.add_site(B)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    sid = await charging(world)
    energy_before = hub.plugs[MAC].state.session.energy_mwh  # type: ignore[union-attr]
    victim = world.plugs[MAC]
    # The attacker signs with its own valid key and reports the victim's plug with a huge counter jump.
    forged = world.reading(victim, energy_mwh=victim.counter + 50_000_000, power_w=0.0)
    assert await world.send(B, [forged]) is True
    assert [d.attributes["reason"] for d in world.dead] == ["foreign_plug"]
    assert hub.plugs[MAC].site_id == A
    assert hub.plugs[MAC].state.session.energy_mwh == energy_before  # type: ignore[union-attr]
    assert alerts(world, AlertKind.FOREIGN_PLUG)
    assert hub.metrics.value("readings_refused_total", reason="foreign_plug") == 1
    doc = await finish(world)
    # The stop went to the plug's own site; the attacker's topic never saw a command.
    assert world.sites[B].executed == [] and world.plugs[MAC].relay is False
    assert any(not c.on for c in world.sites[A].executed)
    # Billed only what the victim's plug really metered: 60 s at 1.8 kW = 30,000 mWh -> 0.9p -> 1p.
    assert doc.session_id == sid and doc.energy_mwh == 30_000
    assert doc.cost.amount_minor == 1 and world.balance("u1") == 999


async def test_foreign_command_result_is_refused_and_changes_nothing(world: World) -> None:
    world.add_site(A)
    attacker = world.add_site(B)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    world.plugs[MAC].power_w = 1800.0
    world.request("r1", START_, MAC)
    await hub.poll_requests()
    await world.settle()
    cmd = world.sites[A].commands[0]  # the "on" the victim's agent has not executed yet
    fake = codec.CommandOutcome(cmd.command_id, B, MAC, True, "executed", world.now_ms(), True)
    data, attrs = codec.pack_outcome(fake, attacker.key)
    from chargectl.services.adapters.bus import BusMessage

    assert await hub.handle_message(BusMessage(data, {**attrs, "shard": "0"}, "forged-outcome")) is True
    await world.settle()
    assert [d.attributes["reason"] for d in world.dead] == ["foreign_plug"]
    assert hub.plugs[MAC].state.cmd_confirmed is False  # the forged ack confirmed nothing
    assert world.plugs[MAC].relay is False and world.debits("u1") == []


async def test_operator_assignment_moves_a_plug_and_the_old_site_is_refused(world: World) -> None:
    world.add_site(A)
    world.add_site(B)
    plug = world.add_plug(MAC, A)
    hub = await world.start_hub()
    await world.run(10)
    assert world.store.plug_bindings() == {MAC: A}
    world.store.bind_plug(MAC, B, world.now_ms(), replace=True)  # what `chargectl plugs assign` does
    hub.refresh_trust(force=True)
    assert hub.plugs[MAC].site_id == B
    await world.send(A, [world.reading(plug)])
    assert [d.attributes["reason"] for d in world.dead] == ["foreign_plug"]
    plug.site = B
    await world.run(10)
    assert hub.plugs[MAC].site_id == B and len(world.dead) == 1


async def test_a_released_plug_belongs_to_the_next_site_that_reports_it(world: World) -> None:
    world.add_site(A)
    world.add_site(B)
    plug = world.add_plug(MAC, A)
    hub = await world.start_hub()
    await world.run(10)
    assert world.store.release_plug(MAC) is True
    hub.refresh_trust(force=True)
    plug.site = B
    world.plugs[MAC].relay = True  # someone switched it on at the new site: the hub must tell site B
    await world.run(10)
    assert world.store.plug_bindings() == {MAC: B} and world.dead == []
    assert hub.plugs[MAC].site_id == B
    assert world.sites[B].executed and not world.sites[B].executed[-1].on  # unauthorized draw: off, via B
    assert world.plugs[MAC].relay is False and world.sites[A].commands == []


async def test_a_flood_of_invented_plugs_is_capped_per_batch(world: World) -> None:
    world.add_site(A)
    real = world.add_plug(MAC, A)
    hub = await world.start_hub()
    await world.run(10)
    invented = [world.reading(real, mac=f"{i:012X}") for i in range(1, 50_001)]  # the reported attack
    assert await world.send(A, [world.reading(real), *invented]) is True
    await hub.tick()
    await world.settle()
    # 50 new plugs at most (default max_new_plugs_per_batch), so at most 50 relay-off commands and
    # plug-state writes came out of 50,000 invented MACs; the real plug went on.
    assert len(hub.plugs) == 1 + 50
    assert len(world.store.list_plug_states()) <= 51
    assert len(world.all_commands()) <= 50
    assert hub.metrics.value("readings_refused_total", reason="plug_limit") == 50_000 - 50
    assert alerts(world, AlertKind.PLUG_LIMIT)
    assert hub.plugs[MAC].state.last_ts_ms == world.now_ms()


async def test_a_site_owns_at_most_max_plugs_per_site(tmp_path: Path) -> None:
    w = World(tmp_path, max_plugs_per_site=3)
    try:
        w.add_site(A)
        for i in range(5):
            w.add_plug(f"{i + 1:012X}", A)
        hub = await w.start_hub()
        await w.run(10)
        assert sorted(w.store.plug_bindings()) == [f"{i + 1:012X}" for i in range(3)]
        assert len(hub.plugs) == 3 and alerts(w, AlertKind.PLUG_LIMIT)
    finally:
        w.close()


async def test_site_shard_decides_whatever_the_attribute_says(world: World) -> None:
    world.add_site(A, shard=1)
    plug = world.add_plug(MAC, A)
    hub = await world.start_hub()  # shard 0
    assert await world.send(A, [world.reading(plug)], shard_attr="0") is True
    assert [d.attributes["reason"] for d in world.dead] == ["wrong_shard"]
    assert hub.plugs == {} and world.store.plug_bindings() == {}


# ------------------------------------------------------------------------------------------------
# 2. Readings are bounded; counter rules
# ------------------------------------------------------------------------------------------------


async def test_a_counter_that_drops_without_a_restart_bills_nothing(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    plug.counter = 50_030_000
    await charging(world)
    energy = hub.plugs[MAC].state.session.energy_mwh  # type: ignore[union-attr]
    world.clock.advance(5)
    plug.counter -= 1  # a 1 mWh glitch, same uptime trend
    plug.uptime += 5
    await world.send(A, [world.reading(plug)])
    assert hub.plugs[MAC].state.session.energy_mwh == energy  # type: ignore[union-attr]
    doc = await finish(world)
    assert doc.energy_mwh < 100_000  # not the 50 MWh lifetime counter
    assert "without a restart" in doc.review_reason
    assert world.balance("u1") >= 990


async def test_a_counter_reset_after_a_restart_is_bridged(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await charging(world)
    energy = hub.plugs[MAC].state.session.energy_mwh  # type: ignore[union-attr]
    world.clock.advance(5)
    plug.counter, plug.uptime = 2500, 5  # Gen1 reboot: counter restarts; 5 s at 1.8 kW since
    await world.send(A, [world.reading(plug)])
    assert hub.plugs[MAC].state.session.energy_mwh == energy + 2500  # type: ignore[union-attr]
    doc = await finish(world)
    assert doc.review_reason == ""


async def test_negative_then_positive_counter_adds_nothing(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await charging(world)
    energy = hub.plugs[MAC].state.session.energy_mwh  # type: ignore[union-attr]
    world.clock.advance(5)
    await world.send(A, [world.reading(plug, energy_mwh=-9_000_000_000_000)])
    assert hub.metrics.value("readings_refused_total", reason="negative") == 1
    world.clock.advance(5)
    plug.counter += 2500
    await world.send(A, [world.reading(plug)])
    assert hub.plugs[MAC].state.session.energy_mwh == energy + 2500  # type: ignore[union-attr]
    doc = await finish(world)
    assert doc.energy_mwh < 1_000_000 and world.balance("u1") >= 990


async def test_energy_beyond_the_physical_bound_is_not_billed_and_flagged(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    world.user("u1", 100_000)
    hub = await world.start_hub()
    await charging(world)
    energy = hub.plugs[MAC].state.session.energy_mwh  # type: ignore[union-attr]
    world.clock.advance(5)
    plug.counter += 50_000_000  # 50 kWh in 5 s
    plug.uptime += 5
    await world.send(A, [world.reading(plug)])
    # 5 s x 3,680 W x 1.2 = 22,080 Ws = 6,133 mWh at most
    assert hub.plugs[MAC].state.session.energy_mwh == energy + 6_133  # type: ignore[union-attr]
    doc = await finish(world)
    assert "above the plug's bound" in doc.review_reason
    assert alerts(world, AlertKind.NEEDS_REVIEW)
    assert world.balance("u1") == 100_000 - doc.cost.amount_minor and doc.cost.amount_minor <= 5


async def test_a_reading_from_the_year_2100_does_not_freeze_the_plug(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await charging(world)
    # A batch stamped in 2100 (a clock that stepped ahead) is taken on the hub's clock, never as 2100.
    await world.send(A, [world.reading(plug, ts_ms=4_102_444_800_000)])
    assert hub.ingest.rebased_batches == 1
    assert hub.plugs[MAC].state.last_ts_ms == world.now_ms()
    await world.run(60)  # later readings still count
    assert hub.plugs[MAC].state.last_ts_ms == world.now_ms()
    doc = await finish(world)
    assert doc.energy_mwh == (60 + 60) // 5 * 2500  # every real sample while the relay was on is billed
    assert world.plugs[MAC].relay is False and world.balance("u1") == 1000 - doc.cost.amount_minor
    # and a silent plug still goes offline
    world.clock.advance(400)
    await hub.tick()
    assert hub.plugs[MAC].state.status is m.Status.OFFLINE


async def test_readings_older_than_max_reading_age_are_refused(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    hub = await world.start_hub()
    old = world.now_ms() - 8 * 86_400_000
    await world.send(A, [world.reading(plug, ts_ms=old)])
    assert hub.metrics.value("readings_refused_total", reason="too_old") == 1
    assert MAC not in hub.plugs or hub.plugs[MAC].state.last_ts_ms is None
    week_old = world.now_ms() - 6 * 86_400_000  # a spool replay within the week still counts
    await world.send(A, [world.reading(plug, ts_ms=week_old)])
    assert hub.plugs[MAC].state.last_ts_ms == week_old


async def test_a_value_above_int64_is_refused_and_the_hub_keeps_ticking(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await charging(world)
    energy = hub.plugs[MAC].state.session.energy_mwh  # type: ignore[union-attr]
    world.clock.advance(5)
    step1 = world.reading(plug, energy_mwh=5 * 10**18)
    world.clock.advance(5)
    step2 = world.reading(plug, energy_mwh=10**19)  # delta-encoded: each step fits, the sum does not
    await world.send(A, [step1, step2])
    # a batch whose columns decode beyond 64 bits is malformed as a whole: dead-lettered, nothing applied
    assert hub.metrics.value("dead_lettered_total", reason="malformed") == 1
    assert hub.plugs[MAC].state.session.energy_mwh == energy  # type: ignore[union-attr]
    await world.send(A, [step1])  # 5e18 alone fits in the wire: the intake's bounds deal with it
    await world.run(30)
    assert hub.problems() == []
    doc = await finish(world)
    # the 5e18 step is held to the physical bound and flagged; nothing near 1e19 was billed
    assert "above the plug's bound" in doc.review_reason
    assert doc.energy_mwh < energy + 100_000 and world.balance("u1") >= 990


async def test_power_above_the_rating_is_refused_and_counted(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    hub = await world.start_hub()
    await world.run(10)
    world.clock.advance(5)
    await world.send(
        A, [world.reading(plug, power_w=4100.0), world.reading(plug, power_w=-50.0, ts_ms=world.now_ms() + 1)]
    )
    assert hub.metrics.value("readings_refused_total", reason="over_power") == 1  # 3,680 W + 10 % = 4,048 W
    assert hub.metrics.value("readings_refused_total", reason="negative") == 1
    assert hub.plugs[MAC].state.power_w == 0.0 and world.plugs[MAC].relay is False
    assert "readings_refused_total" in hub.metrics.render()


async def test_a_refused_reading_is_logged_once_per_plug_and_reason_per_hour(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.add_site(A)
    plug = world.add_plug(MAC, A)
    hub = await world.start_hub()
    caplog.set_level(logging.WARNING, logger="chargectl.hub")
    for _ in range(5):
        world.clock.advance(5)
        await world.send(A, [world.reading(plug, power_w=9000.0)])
    said = [r for r in caplog.records if "refused a reading" in r.getMessage()]
    assert len(said) == 1 and hub.metrics.value("readings_refused_total", reason="over_power") == 5


# ------------------------------------------------------------------------------------------------
# 3. Debits bounded; one balance per user and currency
# ------------------------------------------------------------------------------------------------


async def test_two_plugs_at_once_share_one_balance(tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.add_site(A, price_per_kwh_minor=3000)
        w.add_plug(MAC, A)
        w.add_plug(MAC2, A)
        w.user("u1", 1000)
        hub = await w.start_hub()
        await w.run(30)
        for mac, rid in ((MAC, "r1"), (MAC2, "r2")):
            w.plugs[mac].power_w = 1800.0
            answer = await w.start_session(rid, mac)
            assert answer.status == ACCEPTED
        await w.run(1200)  # each alone would cost 1.8 kWh x 30.00 = 54.00
        assert not any(p.relay for p in w.plugs.values())  # out of credit judged across both
        await w.run(700)  # credit grace over: both finish
        assert all(p.state.session is None for p in hub.plugs.values())
        # Hand-checked: both stopped at 67 samples x 2.5 Wh = 167.5 Wh each (502.5 each, 1,005 together);
        # the debits are capped at the 10.00 balance and the capped session says why.
        docs = w.store.list_sessions(user_id="u1")
        assert sorted(d.energy_mwh for d in docs) == [167_500, 167_500]
        assert sum(-e.amount.amount_minor for e in w.debits("u1")) == 1000 and w.balance("u1") == 0
        assert sorted(d.cost.amount_minor for d in docs) == [497, 503]
        assert [d.review_reason for d in docs if d.cost.amount_minor == 497] == [
            "cost 503 above the available balance 497; debited 497"
        ]
    finally:
        w.close()


async def test_a_start_needs_the_balance_left_by_the_users_other_sessions(tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.add_site(A, price_per_kwh_minor=3000)
        w.add_plug(MAC, A)
        w.add_plug(MAC2, A)
        w.user("u1", 1000)
        hub = await w.start_hub()
        await w.run(30)
        w.plugs[MAC].power_w = 1800.0
        assert (await w.start_session("r1", MAC)).status == ACCEPTED
        await w.run(640, macs=[MAC])  # 128 samples x 2.5 Wh = 0.32 kWh x 3000 = 960 used of 1000
        await w.run(30, macs=[MAC2])
        second = await w.start_session("r2", MAC2)
        assert second.status == REJECTED and second.reason == "insufficient_balance"
        assert w.plugs[MAC2].relay is False and hub.plugs[MAC2].state.session is None
    finally:
        w.close()


async def test_balances_never_add_across_currencies(world: World) -> None:
    world.add_site(A)  # a GBP site
    world.add_plug(MAC, A)
    world.user("u1", 10_000, currency="jpy")
    hub = await world.start_hub()
    await world.run(30)
    world.plugs[MAC].power_w = 1800.0
    answer = await world.start_session("r1", MAC)
    assert answer.status == REJECTED and answer.reason == "insufficient_balance"
    assert world.plugs[MAC].relay is False and hub.plugs[MAC].state.session is None
    assert world.balance("u1", "jpy") == 10_000 and world.balance("u1", "gbp") == 0


async def test_a_debit_never_exceeds_the_balance(tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.add_site(A, price_per_kwh_minor=3000)
        w.add_plug(MAC, A)
        w.user("u1", 150)
        hub = await w.start_hub()
        await charging(w)
        await w.run(800)  # out of credit, grace over
        assert hub.plugs[MAC].state.session is None and w.plugs[MAC].relay is False
        (doc,) = w.store.list_sessions()
        # 20 samples x 2.5 Wh = 50 Wh x 30.00/kWh = 1.50: the whole balance, never more
        assert doc.energy_mwh == 50_000 and doc.stop_reason == "DeAuthorized"
        assert doc.cost.amount_minor == 150 and w.balance("u1") == 0
    finally:
        w.close()


# ------------------------------------------------------------------------------------------------
# 4. Requests
# ------------------------------------------------------------------------------------------------


async def test_session_ids_are_made_by_the_hub_and_never_overwrite_a_session(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 100_000)
    hub = await world.start_hub()
    sid1 = await charging(world, rid="r1")
    first = await finish(world, rid="s1")
    # the same request id again (a replayed or rewritten document) is never executed twice
    hub.handle_request(
        codec.ChargeRequest(
            request_id="r1",
            user_id="u1",
            plug_mac=MAC,
            action=START_,
            status=codec.ChargeRequest.STATUS_PENDING,
            created_at_ms=world.now_ms(),
        )
    )
    await world.settle()
    world.obey()
    assert hub.plugs[MAC].state.session is None and world.plugs[MAC].relay is False
    sid2 = await charging(world, rid="r2")
    second = await finish(world, rid="s2")
    assert sid1 != sid2 and "r1" not in sid1 and "r2" not in sid2
    assert world.store.get_session(sid1) == first  # untouched
    assert {e.entry_id for e in world.debits("u1")} == {sid1, sid2}
    assert world.balance("u1") == 100_000 - first.cost.amount_minor - second.cost.amount_minor


async def test_an_old_request_is_answered_expired_and_never_executed(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    world.request("old", START_, MAC, age_s=3600)  # written while no hub ran
    await hub.poll_requests()
    await world.settle()
    answer = world.store.get_request("old")
    assert answer is not None and answer.status == REJECTED and answer.reason == "expired"
    assert world.all_commands() == [] and world.plugs[MAC].relay is False and world.debits("u1") == []


@pytest.mark.parametrize(
    ("action", "user", "account", "reason"),
    [
        (99, "u1", True, "bad_action"),
        (START_, "", True, "no_user"),
        (START_, "ghost", False, "no_account"),
    ],
)
async def test_bad_requests_are_rejected_with_a_reason_and_never_reread(
    world: World, action: int, user: str, account: bool, reason: str
) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    if user:
        world.user(user, 1000, account=account)
    hub = await world.start_hub()
    await world.run(30)
    world.request("bad", action, MAC, user=user)
    for _ in range(3):
        await hub.poll_requests()
    answer = world.store.get_request("bad")
    assert answer is not None and answer.status == REJECTED and answer.reason == reason
    assert hub.metrics.value("requests_rejected_total", reason=reason) == 1
    assert world.store.pending_requests() == []
    assert world.all_commands() == [] and world.plugs[MAC].relay is False
    if user:
        assert world.balance(user) == 1000


async def test_the_handled_request_set_is_bounded_by_age(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(10)
    for i in range(200):
        world.request(f"x{i}", 99, MAC)
    await hub.poll_requests()
    assert len(hub.requests.handled) == 200
    world.clock.advance(300)
    await world.run(10)
    assert len(hub.requests.handled) == 0
    assert all(r.status == REJECTED for r in (world.store.get_request(f"x{i}") for i in range(200)) if r)


# ------------------------------------------------------------------------------------------------
# 5. Finishing is one transaction
# ------------------------------------------------------------------------------------------------


async def test_a_store_error_while_finishing_bills_once_and_never_switches_the_relay_on(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    sid = await charging(world)
    real_finish = world.store.finish_session
    failures = {"left": 3}

    def flaky(session: codec.ChargeSession, debit: codec.LedgerEntry | None) -> bool:
        if failures["left"]:
            failures["left"] -= 1
            raise StoreError("injected: store unavailable")
        return real_finish(session, debit)

    world.store.finish_session = flaky  # type: ignore[method-assign]
    await world.stop_session("stop", MAC)
    await world.run(60)
    assert failures["left"] == 0
    doc = world.store.get_session(sid)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert [e.entry_id for e in world.debits("u1")] == [sid]
    # a restart now neither bills again nor switches the relay on
    await hub.stop()
    world.store.finish_session = real_finish  # type: ignore[method-assign]
    commands_before = len(world.all_commands())
    hub2 = await world.start_hub()
    await world.run(120)
    assert [e.entry_id for e in world.debits("u1")] == [sid]
    assert not any(c.on for c in world.all_commands()[commands_before:]) and world.plugs[MAC].relay is False
    assert hub2.plugs[MAC].state.session is None
    assert world.balance("u1") == 1000 - doc.cost.amount_minor


@pytest.mark.parametrize("checkpointed", [True, False], ids=["checkpoint-while-charging", "older-checkpoint"])
async def test_a_hub_killed_before_the_finish_is_written_bills_once_after_restart(
    world: World, checkpointed: bool
) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    sid = await charging(world)
    if checkpointed:
        hub.checkpoint()  # the restart will find the session CHARGING with the relay on
    real_finish = world.store.finish_session

    def down(session: codec.ChargeSession, debit: codec.LedgerEntry | None) -> bool:
        raise StoreError("injected: store unavailable")

    world.store.finish_session = down  # type: ignore[method-assign]
    await world.stop_session("stop", MAC)
    await world.run(60)  # relay off and confirmed; the finish never reached the store
    assert world.plugs[MAC].relay is False and world.debits("u1") == []
    world.store.finish_session = real_finish  # type: ignore[method-assign]
    # killed: no stop(), no final checkpoint beyond what the hub wrote by itself
    commands_before = len(world.all_commands())
    hub2 = await world.start_hub()
    await world.run(120)
    assert [e.entry_id for e in world.debits("u1")] == [sid]
    assert not any(c.on for c in world.all_commands()[commands_before:]) and world.plugs[MAC].relay is False
    doc = world.store.get_session(sid)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert hub2.plugs[MAC].state.session is None


async def test_a_session_already_debited_is_closed_on_restart_never_resumed(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    await hub.stop()
    # what an older hub left behind: an ACTIVE document whose debit is already in the ledger
    world.store.put_session(
        codec.ChargeSession(
            session_id="sess-old",
            user_id="u1",
            plug_mac=MAC,
            site_id=A,
            status=codec.ChargeSession.STATUS_ACTIVE,
            started_at_ms=world.now_ms() - 60_000,
            start_counter_mwh=1_000_000,
            cost=codec.Money(amount_minor=0, currency="gbp"),
        )
    )
    world.ledger.post("sess-old", "u1", "session_debit", -12, "gbp", now_ms=world.now_ms())
    commands_before = len(world.all_commands())
    hub2 = await world.start_hub()
    await world.run(60)
    doc = world.store.get_session("sess-old")
    assert (
        doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED and doc.cost.amount_minor == 12
    )
    assert hub2.plugs[MAC].state.session is None
    assert not any(c.on for c in world.all_commands()[commands_before:]) and world.plugs[MAC].relay is False
    assert world.balance("u1") == 1000 - 12


# ------------------------------------------------------------------------------------------------
# 6. A fault in one plug never stops the hub
# ------------------------------------------------------------------------------------------------


async def test_an_exception_in_one_plug_faults_that_plug_only(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 100_000)
    world.user("u2", 100_000)
    hub = await world.start_hub()
    await charging(world, MAC, "u1", "r1")
    await charging(world, MAC2, "u2", "r2")
    real_step = m.step

    def broken(state: m.MachineState, event: m.Event, now: float) -> Any:
        if state.mac == MAC2 and isinstance(event, (m.Readings, m.ReadingsRun)):
            raise ValueError("injected bug")
        return real_step(state, event, now)

    real_step_run = m.step_run

    def broken_run(state: m.MachineState, run: m.RunColumns, now: float) -> Any:
        if state.mac == MAC2:  # a run's quiet path does not go through step
            raise ValueError("injected bug")
        return real_step_run(state, run, now)

    real_step_run_due = m.step_run_due

    def broken_run_due(state: m.MachineState, run: m.RunColumns, now: float) -> Any:
        if state.mac == MAC2:  # what the hub calls for a run (step_run and its next due time)
            raise ValueError("injected bug")
        return real_step_run_due(state, run, now)

    monkeypatch.setattr(m, "step", broken)
    monkeypatch.setattr(m, "step_run", broken_run)
    monkeypatch.setattr(m, "step_run_due", broken_run_due)
    await world.run(60)
    assert hub.plugs[MAC2].state.status is m.Status.FAULTED and world.plugs[MAC2].relay is False
    assert hub.metrics.value("plug_errors_total") >= 1
    assert [a.subject for a in alerts(world, AlertKind.PLUG_FAULTED)] == [MAC2]
    faulted = w2 = world.store.list_sessions(user_id="u2")[0]
    assert w2.status == codec.ChargeSession.STATUS_COMPLETED and faulted.stop_reason == "EmergencyStop"
    assert world.balance("u2") == 100_000 - faulted.cost.amount_minor
    # the other plug went on charging and is billed normally
    assert hub.plugs[MAC].state.status is m.Status.CHARGING and world.plugs[MAC].relay is True
    doc = await finish(world, MAC, "s1", "u1")
    assert world.balance("u1") == 100_000 - doc.cost.amount_minor


async def test_an_exception_escaping_a_loop_is_counted_and_shown_by_healthz(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    hub = await world.start_hub()
    await world.run(10)

    def broken() -> None:
        raise RuntimeError("injected bug in the mirror")

    monkeypatch.setattr(hub, "_mirror_dirty", broken)
    await hub.run_pass(hub.tick, "tick")
    assert hub.metrics.value("loop_errors_total", loop="tick", kind="bug") == 1
    server = HealthServer(hub.metrics, hub.problems)
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            bad = await client.get("/healthz")
            assert bad.status_code == 503
            assert any("tick loop failed: RuntimeError" in p for p in bad.json()["problems"])
            monkeypatch.undo()
            await hub.run_pass(hub.tick, "tick")  # the loop went on; a good pass clears it
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await server.stop()
    assert world.plugs[MAC].relay is False


def test_non_finite_and_out_of_range_values_are_refused_by_the_pure_bounds() -> None:
    """The wire cannot carry NaN or infinity today; the bounds refuse them anyway (any future codec)."""
    from chargectl.common.readings import Reading
    from chargectl.services.hub.intake import ReadingRefusal, check_reading

    now = 1_767_225_600_000
    ok = Reading(MAC, now, 100.0, 5, True, uptime_s=3)
    assert check_reading(ok, now, 1000, 1000, 3680.0) is None
    cases = {
        ReadingRefusal.NOT_FINITE: Reading(MAC, now, float("nan"), 5, True),
        ReadingRefusal.OUT_OF_RANGE: Reading(MAC, now, 1.0, 2**63, True),
        ReadingRefusal.NEGATIVE: Reading(MAC, now, 1.0, 5, True, uptime_s=-1),
        ReadingRefusal.OVER_POWER: Reading(MAC, now, 4048.1, 5, True),
        ReadingRefusal.IN_FUTURE: Reading(MAC, now + 1001, 1.0, 5, True),
        ReadingRefusal.TOO_OLD: Reading(MAC, now - 1001, 1.0, 5, True),
    }
    for reason, reading in cases.items():
        assert check_reading(reading, now, 1000, 1000, 3680.0) is reason
    assert check_reading(
        Reading(MAC, now, 1.0, 5, True, voltage_v=float("inf")), now, 1000, 1000, 3680.0
    ) is (ReadingRefusal.NOT_FINITE)
    assert check_reading(Reading(MAC, now, 4048.0, 5, True), now, 1000, 1000, 3680.0) is None


async def test_a_batch_naming_another_site_is_unverified_and_moves_no_money(world: World) -> None:
    from chargectl.common.errors import SignatureError
    from chargectl.services.adapters.bus import BusMessage

    world.add_site(A)
    attacker = world.add_site(B)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    sid = await charging(world)
    energy = hub.plugs[MAC].state.session.energy_mwh  # type: ignore[union-attr]
    lie = world.reading(world.plugs[MAC], energy_mwh=world.plugs[MAC].counter + 5_000)
    data, attrs = codec.pack_telemetry(codec.Batch(A, 999, (lie,)), attacker.key)  # claims site A
    assert await hub.handle_message(BusMessage(data, {**attrs, "shard": "0"}, "lie")) is True
    await world.settle()
    assert [d.attributes["reason"] for d in world.dead] == ["unverified"]
    assert hub.plugs[MAC].state.session.energy_mwh == energy  # type: ignore[union-attr]
    keyring = hub.ingest.keyring
    with pytest.raises(SignatureError) as caught:
        codec.unpack_telemetry(data, keyring)
    assert caught.value.reason == "wrong_site"  # a typed reason, not a message prefix
    doc = await finish(world)
    assert doc.session_id == sid and world.balance("u1") == 1000 - doc.cost.amount_minor


async def test_readings_refused_by_the_bounds_never_bind_a_plug(world: World) -> None:
    world.add_site(A)
    world.add_site(B)
    victim = world.add_plug(MAC, A)
    hub = await world.start_hub()
    # Site B tries to claim the victim's plug (not yet seen) with readings no machine would accept.
    flood = [world.reading(victim, mac=f"{i:012X}", power_w=9000.0) for i in range(1, 20_001)]
    await world.send(B, [world.reading(victim, power_w=9000.0), *flood])
    assert world.store.plug_bindings() == {} and hub.plugs == {}
    assert hub.metrics.value("readings_refused_total", reason="over_power") == 20_001
    assert [a.subject for a in alerts(world, AlertKind.BAD_READINGS)] == [B]  # one alert, not 20,001
    await world.run(30)  # the real owner reports it next and owns it
    assert world.store.plug_bindings() == {MAC: A} and world.dead == []
    assert hub.plugs[MAC].state.status is m.Status.AVAILABLE and world.plugs[MAC].relay is False


@pytest.mark.parametrize("forged", [MAC + "\n", MAC.lower(), MAC[:11] + "\u0130"])
async def test_a_batch_naming_a_plug_by_a_look_alike_mac_is_refused_whole(world: World, forged: str) -> None:
    """A site with a valid key names a plug "AABBCCDDEEFF\\n": the pattern's "$" let a trailing newline
    through, so the hub kept it as a plug of its own next to the real one (a second row with the same
    visible MAC, not bound to the real plug's site) and wrote it into the time series, where the newline
    splits a line of line protocol. The batch is refused whole: nothing metered, billed or stored."""
    world.add_site(A)
    world.add_site(B)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(10)
    await world.start_session("r1", MAC, "u1")
    world.plugs[MAC].power_w = 1000.0
    await world.run(10)
    energy = hub.plugs[MAC].state.session.energy_mwh if hub.plugs[MAC].state.session else -1
    before = world.store.get_plug_state(MAC)
    rows = [world.reading(world.plugs[MAC], mac=forged, energy_mwh=10**9, power_w=3000.0)]
    assert await world.send(B, rows)  # acked: a malformed batch is dead-lettered, not redelivered
    assert sorted(hub.plugs) == [MAC]
    assert world.store.get_plug_state(forged) is None and world.store.get_plug_state(MAC) == before
    sess = hub.plugs[MAC].state.session
    assert sess is not None and sess.energy_mwh == energy and world.plugs[MAC].relay is True
    assert [msg.attributes.get("reason") for msg in world.dead][-1] == "malformed"
    assert world.balance("u1") == 1000
