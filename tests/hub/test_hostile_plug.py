"""A plug that lies after its session ended: it says the relay is off when told, then reports it on and
metering. The driver must not pay for that energy; the hub must say so and keep switching it off."""

from __future__ import annotations

from hostile import World

from chargectl.common import codec
from chargectl.common.alerts import AlertKind
from chargectl.services.hub import machine as m

A = "site-a"
MAC = "AABBCCDDEEFF"


async def test_a_relay_that_comes_back_on_after_the_session_is_never_billed_to_the_driver(
    world: World,
) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30, macs=[MAC])
    plug = world.plugs[MAC]
    plug.power_w = 1800.0
    answer = await world.start_session("r1", MAC, "u1")
    assert answer.status == codec.ChargeRequest.STATUS_ACCEPTED
    await world.run(60, macs=[MAC])
    await world.stop_session("stop", MAC, "u1")
    await world.run(30, macs=[MAC])
    doc = world.store.get_session(answer.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    # 60 s at 1.8 kW = 30,000 mWh; 0.9p, billed 1p.
    assert (doc.energy_mwh, doc.cost.amount_minor, world.balance("u1")) == (30_000, 1, 999)
    offs_before = sum(1 for c in world.all_commands() if not c.on)
    # The plug's relay closes again by itself (a welded contact, a hostile firmware) and the car draws.
    plug.relay = True
    for _ in range(12):  # 60 s, the hub's "off" ignored by the plug
        world.clock.advance(5)
        plug.counter += round(1800.0 * 5 / 3.6)
        await world.send(A, [world.reading(plug)])
        await hub.tick()
        await world.settle()
        for site in world.sites.values():
            site.executed.extend(site.commands)
            site.commands.clear()
    # The driver's bill and balance did not move; nobody else was billed either.
    again = world.store.get_session(answer.session_id)
    assert again is not None and (again.energy_mwh, again.cost.amount_minor) == (30_000, 1)
    assert world.balance("u1") == 999 and len(world.debits("u1")) == 1
    assert hub.plugs[MAC].state.session is None
    assert hub.plugs[MAC].state.status is not m.Status.CHARGING
    # The hub says so and keeps telling the plug to switch off.
    assert [a for a in hub.alerts.open_alerts() if a.kind == AlertKind.UNAUTHORIZED_DRAW]
    assert sum(1 for c in world.all_commands() if not c.on) > offs_before
