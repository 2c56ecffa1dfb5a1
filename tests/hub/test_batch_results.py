"""Command results riding in telemetry batches: the hub applies them as it applies a result message
(the plug must belong to the batch's signed site), once per batch however often the batch arrives."""

from __future__ import annotations

from hostile import World

from chargectl.common import codec
from chargectl.common.alerts import AlertKind
from chargectl.common.readings import Reading
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.hub import machine as m

A, B = "site-a", "site-b"
VICTIM = "AABBCCDDEEFF"  # site B's plug
OWN = "AABBCCDDEE00"  # site A's plug
START_ = codec.ChargeRequest.ACTION_START
STOP = codec.ChargeRequest.ACTION_STOP


def batch_message(
    w: World, site_id: str, rows: list[Reading], results: list[codec.CommandOutcome]
) -> BusMessage:
    """The next signed batch of ``site_id``: its readings and command results."""
    site = w.sites[site_id]
    site.seq += 1
    batch = codec.Batch(site_id, site.seq, tuple(rows), results=tuple(results), epoch=7)
    data, attrs = codec.pack_telemetry(batch, site.key)
    return BusMessage(data, {**attrs, "shard": "0"}, f"{site_id}-{site.seq}")


async def deliver(w: World, msg: BusMessage) -> None:
    assert w.hub is not None
    assert await w.hub.handle_message(msg) is True
    await w.settle()


async def test_a_batch_carrying_a_result_for_another_sites_plug_changes_nothing(world: World) -> None:
    world.add_site(A)
    world.add_site(B)
    world.add_plug(VICTIM, B)
    own = world.add_plug(OWN, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    victim = world.plugs[VICTIM]
    victim.power_w = 1800.0

    # 1. The victim's "on" is out, not executed yet: site A's batch claims it ran.
    world.request("r1", START_, VICTIM)
    await hub.poll_requests()
    await world.settle()
    on = world.sites[B].commands[0]
    forged_on = codec.CommandOutcome(on.command_id, A, VICTIM, True, "executed", world.now_ms(), True)
    await deliver(world, batch_message(world, A, [world.reading(own)], [forged_on]))
    assert [d.attributes["reason"] for d in world.dead] == ["foreign_plug"]
    state = hub.plugs[VICTIM].state
    assert state.cmd_on is True and state.cmd_confirmed is False  # the forged ack confirmed nothing
    assert hub.plugs[VICTIM].site_id == B and victim.relay is False
    assert hub.plugs[OWN].state.last_ts_ms == world.now_ms()  # the batch's own readings still count
    assert [a.subject for a in hub.alerts.open_alerts() if a.kind == AlertKind.FOREIGN_PLUG] == [
        f"{A}:{VICTIM}"
    ]

    # 2. The real agent obeys; the session charges for a minute.
    world.obey()
    await world.run(60, macs=[VICTIM])
    assert hub.plugs[VICTIM].state.status is m.Status.CHARGING
    sess = hub.plugs[VICTIM].state.session
    assert sess is not None
    energy = sess.energy_mwh

    # 3. A stop: the "off" is out. Site A claims it ran and the relay is off, hoping the hub closes and
    #    bills the session while the relay stays on (free energy), or lets it run forever.
    world.request("stop", STOP, VICTIM)
    await hub.poll_requests()
    await world.settle()
    off = world.sites[B].commands[-1]
    assert off.on is False and off.plug_mac == VICTIM
    forged_off = codec.CommandOutcome(off.command_id, A, VICTIM, True, "executed", world.now_ms(), False)
    await deliver(world, batch_message(world, A, [world.reading(own)], [forged_off]))
    assert [d.attributes["reason"] for d in world.dead] == ["foreign_plug", "foreign_plug"]
    state = hub.plugs[VICTIM].state
    assert state.status is m.Status.FINISHING and state.cmd_on is False and state.cmd_confirmed is False
    assert world.debits("u1") == [] and state.session is not None and state.session.energy_mwh == energy
    assert victim.relay is True  # nothing switched it

    # 4. The real agent switches it off; billed exactly what the plug metered: 60 s at 1.8 kW =
    #    30,000 mWh at 30p/kWh = 0.9p -> 1p.
    world.obey()
    await world.run(90, macs=[VICTIM])
    doc = world.store.get_session(sess.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert doc.energy_mwh == 30_000 and doc.cost.amount_minor == 1
    assert world.balance("u1") == 999 and victim.relay is False
    assert world.sites[A].executed == [] and world.sites[A].commands == []


async def test_a_replayed_batchs_results_are_not_applied_twice(world: World) -> None:
    world.add_site(A)
    plug = world.add_plug(OWN, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    plug.power_w = 1800.0
    world.request("r1", START_, OWN)
    await hub.poll_requests()
    await world.settle()
    on = world.sites[A].commands.pop(0)
    world.sites[A].executed.append(on)
    # The plug refused: one failed result in the batch, one command_failed alert.
    failed = codec.CommandOutcome(
        on.command_id, A, OWN, False, "device_error", world.now_ms(), None, "timeout"
    )
    msg = batch_message(world, A, [world.reading(plug)], [failed])
    await deliver(world, msg)

    def failures() -> list[int]:
        return [a.count for a in hub.alerts.open_alerts() if a.kind == AlertKind.COMMAND_FAILED]

    assert failures() == [1]
    assert hub.metrics.value("command_results_total", reason="device_error") == 1
    # Pub/Sub redelivers it and the agent replays it from its spool: the same batch, twice more.
    await deliver(world, msg)
    await deliver(world, BusMessage(msg.data, dict(msg.attributes), "replayed-from-spool"))
    assert failures() == [1]
    assert hub.metrics.value("command_results_total", reason="device_error") == 1
    assert hub.metrics.value("skipped_total", reason="duplicate") == 2
    assert world.dead == []

    # The retry executes: its result in the next batch confirms the relay, as a result message would.
    world.clock.advance(16)  # past relay_retry_s: the hub re-sends "on"
    await hub.tick()
    await world.settle()
    retry = world.sites[A].commands[-1]
    assert retry.on is True and retry.command_id != on.command_id
    plug.relay = True
    ok = codec.CommandOutcome(retry.command_id, A, OWN, True, "executed", world.now_ms(), True)
    await deliver(world, batch_message(world, A, [], [ok]))
    assert hub.plugs[OWN].state.cmd_confirmed is True
    assert hub.metrics.value("command_results_total", reason="executed") == 1
    assert world.debits("u1") == []
