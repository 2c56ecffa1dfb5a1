"""The Pi's clock, as the hub sees it in the batch times: a step back or forward by hours in the middle
of a session. Each test asserts who pays for the energy metered meanwhile and what the relay does."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import World

from chargectl.common import codec
from chargectl.common.readings import Reading
from chargectl.services.hub import machine as m

A = "site-a"
MAC = "AABBCCDDEEFF"
HOUR_MS = 3_600_000


async def run_skewed(world: World, seconds: float, skew_ms: int, every_s: float = 5.0) -> None:
    """Like ``World.run`` for MAC, but the site's agent stamps its readings ``skew_ms`` off."""
    assert world.hub is not None
    plug = world.plugs[MAC]
    t = 0.0
    while t < seconds:
        world.clock.advance(every_s)
        t += every_s
        plug.counter += round((plug.power_w if plug.relay else 0.0) * every_s / 3.6)
        plug.uptime += int(every_s)
        reading: Reading = world.reading(plug, ts_ms=world.now_ms() + skew_ms)
        await world.send(A, [reading])
        await world.hub.tick()
        await world.settle()
        world.obey()


async def start(world: World) -> str:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30, macs=[MAC])
    world.plugs[MAC].power_w = 1800.0
    answer = await world.start_session("r1", MAC, "u1")
    assert answer.status == codec.ChargeRequest.STATUS_ACCEPTED, answer.reason
    await world.run(60, macs=[MAC])
    assert hub.plugs[MAC].state.status is m.Status.CHARGING
    return answer.session_id


async def bill_through_a_clock_step(world: World, skew_ms: int) -> codec.ChargeSession:
    sid = await start(world)
    await run_skewed(world, 120, skew_ms)  # 120 s more at 1.8 kW, stamped skew_ms off
    await world.stop_session("stop", MAC, "u1")
    await run_skewed(world, 60, skew_ms)
    doc = world.store.get_session(sid)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    return doc


@pytest.mark.parametrize(
    "skew_ms",
    [-2 * HOUR_MS, -60_000, 3 * HOUR_MS],
    ids=["two hours back", "a minute back", "three hours ahead"],
)
async def test_a_clock_that_steps_mid_session_still_bills_every_mwh_to_the_driver(
    world: World, skew_ms: int
) -> None:
    doc = await bill_through_a_clock_step(world, skew_ms)
    # 60 s before the step and 120 s after it at 1.8 kW: 180 s x 500 mWh/s = 90,000 mWh, all of it metered
    # by the plug's counter; at 30p/kWh 2.7p, billed 3p (half up). Before, the samples after the step were
    # dropped (older than the last) or refused (in the future) and the driver paid for 30,000 mWh.
    assert doc.energy_mwh == 90_000
    assert doc.stop_counter_mwh - doc.start_counter_mwh == 90_000
    assert doc.cost.amount_minor == 3 and world.balance("u1") == 997
    assert world.plugs[MAC].relay is False
    assert world.hub is not None and world.hub.ingest.rebased_batches > 0


async def test_a_clock_steadily_off_within_the_skew_is_never_rebased(world: World) -> None:
    """A Pi a minute behind from the start (no step) keeps its own times: nothing to correct."""
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await run_skewed(world, 30, -60_000)
    world.plugs[MAC].power_w = 1800.0
    answer = await world.start_session("r1", MAC, "u1")
    assert answer.status == codec.ChargeRequest.STATUS_ACCEPTED, answer.reason
    await run_skewed(world, 180, -60_000)
    await world.stop_session("stop", MAC, "u1")
    await run_skewed(world, 60, -60_000)
    doc = world.store.get_session(answer.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert doc.energy_mwh == 90_000 and doc.cost.amount_minor == 3
    assert hub.ingest.rebased_batches == 0
    assert hub.plugs[MAC].state.last_ts_ms == world.now_ms() - 60_000


def test_the_newest_reading_time_survives_the_checkpoint_and_old_checkpoints_load() -> None:
    from chargectl.services.hub.ingest import SeqWindow

    window = SeqWindow.from_dict(SeqWindow(3, {5}, high_ts=1_767_225_600_000).to_dict())
    assert (window.low, window.sparse, window.high_ts) == (3, {5}, 1_767_225_600_000)
    assert SeqWindow.from_dict({"low": 7, "sparse": []}).high_ts == 0  # written before high_ts existed


async def test_the_configured_skew_decides_what_is_rebased(tmp_path: Path) -> None:
    """``[hub] max_clock_skew_s`` is the bound the intake rebases by (it was always 120 s): a Pi steadily
    five minutes ahead keeps its own times under a 10-minute skew, and is billed in full either way."""
    world = World(tmp_path, max_clock_skew_s=600)
    try:
        world.add_site(A)
        world.add_plug(MAC, A)
        world.user("u1", 1000)
        hub = await world.start_hub()
        await run_skewed(world, 30, 300_000)
        world.plugs[MAC].power_w = 1800.0
        answer = await world.start_session("r1", MAC, "u1")
        assert answer.status == codec.ChargeRequest.STATUS_ACCEPTED, answer.reason
        await run_skewed(world, 180, 300_000)
        await world.stop_session("stop", MAC, "u1")
        await run_skewed(world, 60, 300_000)
        doc = world.store.get_session(answer.session_id)
        assert doc is not None and doc.energy_mwh == 90_000 and doc.cost.amount_minor == 3
        assert hub.ingest.rebased_batches == 0 and world.plugs[MAC].relay is False
        assert hub.plugs[MAC].state.last_ts_ms == world.now_ms() + 300_000
    finally:
        world.close()


def test_a_shard_a_site_document_cannot_carry_is_refused() -> None:
    from chargectl.services.hub.settings import HubSettings

    assert HubSettings(shard=2**32 - 1).shard == 2**32 - 1
    for shard in (-1, 2**32):
        with pytest.raises(ValueError, match="shard must be between 0 and 4294967295"):
            HubSettings(shard=shard)
