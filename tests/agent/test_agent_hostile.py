"""Hostile and broken plugs through the real agent and the Shelly simulator over real HTTP.

A plug that answers ``NaN``/``Infinity``, an endless body or another plug's MAC is that plug's problem:
it is logged once, backs off and comes back by itself; its neighbours keep being polled and their
readings keep reaching the bus exactly as the simulator reports them.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from agent_fakes import TelemetryTap

from chargectl.common.clock import ManualClock, SystemClock
from chargectl.common.codec import Command, pack_command
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.topics import command_subscription, command_topic
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.agent import Agent, AgentSettings, PlugAddress
from chargectl.services.agent.plugs import PlugSighting
from chargectl.services.agent.shelly_plugs import shelly_connector
from chargectl.shelly.sim import SimFleet, wrong_mac_of

pytestmark = pytest.mark.integration

SITE = "carpark-1"


async def wait_until(cond: Callable[[], bool], what: str, limit_s: float = 90.0) -> None:
    """Poll ``cond``; ``limit_s`` only stops a broken test from hanging, it is not what is tested."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


class Site(TelemetryTap):
    def __init__(self, fleet: SimFleet, tmp: Path) -> None:
        self.fleet = fleet
        self.bus = MemoryBus()
        self.agent_key = SigningKey.generate()
        self.received: list[BusMessage] = []
        self.site_id = SITE
        clock = SystemClock()
        s = AgentSettings(
            site_id=SITE,
            plugs=[PlugAddress(p.host, p.port) for p in fleet.plugs],
            discovery=False,
            state_dir=tmp / "state",
            poll_interval_s=0.1,
            flush_interval_s=0.3,
            max_backoff_s=0.4,
            request_timeout_s=5.0,
            heartbeat_interval_s=0.2,
        )
        connector = shelly_connector(
            password=None,
            user="admin",
            timeout_s=s.request_timeout_s,
            clock=clock,
            max_response_bytes=s.max_response_bytes,
        )
        self.agent = Agent(s, self.bus, self.agent_key, Keyring(), connector, clock=clock)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    # The fleet's clock stands still, so each plug's truth is fixed while the agent polls it.
    fleet = SimFleet.build(4, "2", profile="ev", clock=ManualClock(1_767_225_600.0), seed=21)
    await fleet.start()
    for plug in fleet.plugs:
        plug.device.switch(True)
    s = Site(fleet, tmp_path)
    await s.listen()
    task = asyncio.create_task(s.agent.serve())
    try:
        await wait_until(lambda: s.agent.health().plugs_online == 4, "all four plugs online")
        yield s
    finally:
        s.agent.stop()
        await asyncio.wait_for(task, 60)
        await s.bus.close()
        await fleet.stop()


def exact(site: Site, mac: str) -> None:
    """Every reading of ``mac`` that reached the bus is the simulator's truth."""
    truth = site.fleet.plug(mac).truth()
    for r in site.readings(mac):
        assert r.energy_mwh == truth.energy_mwh and abs(r.power_w - truth.power_w) <= 0.05, (mac, r)
        assert r.relay_on and math.isfinite(r.power_w)


async def test_nan_infinity_and_an_endless_body_are_those_plugs_problem(
    site: Site, agent_log: pytest.LogCaptureFixture
) -> None:
    nan_plug, huge_plug, liar, sane = site.fleet.plugs
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await nan_plug.inject("non_finite")
    await huge_plug.inject("huge_body")
    await liar.inject("wrong_mac")
    base = {p.mac: len(site.readings(p.mac)) for p in site.fleet.plugs}
    await wait_until(lambda: len(site.readings(sane.mac)) >= base[sane.mac] + 10, "ten more sane readings")
    for bad in (nan_plug, huge_plug, liar):
        status = site.agent.plug_status(bad.mac)
        assert not status.online and status.failures >= 2, status
    assert "non-finite number NaN" in site.agent.plug_status(nan_plug.mac).last_error
    assert "more than 65536 bytes" in site.agent.plug_status(huge_plug.mac).last_error
    assert wrong_mac_of(liar.mac) in site.agent.plug_status(liar.mac).last_error
    assert site.agent.health().bad_responses >= 6
    # Nothing from a bad answer reached the bus (readings stop for the bad plugs, none are invented).
    stuck = {p.mac: len(site.readings(p.mac)) for p in (nan_plug, huge_plug, liar)}
    await wait_until(lambda: len(site.readings(sane.mac)) >= base[sane.mac] + 20, "ten more sane readings")
    assert {p.mac: len(site.readings(p.mac)) for p in (nan_plug, huge_plug, liar)} == stuck
    # The 200 MB answers were never read into memory (a generous bound: far below even one of them).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024
    for plug in (nan_plug, huge_plug, liar):
        await plug.clear()
    await wait_until(
        lambda: all(len(site.readings(p.mac)) >= stuck[p.mac] + 3 for p in (nan_plug, huge_plug, liar)),
        "the repaired plugs' readings",
    )
    for plug in site.fleet.plugs:
        exact(site, plug.mac)
    for plug in (nan_plug, huge_plug, liar):
        about = [r.getMessage() for r in agent_log.records if plug.mac in r.getMessage()]
        assert sum("gave a bad answer" in m for m in about) == 1, about
        assert sum("is offline" in m for m in about) == 1, about
        assert sum("back online" in m for m in about) == 1, about


class Sightings:
    """Our own Discovery seam, scripted: the test decides what mDNS "announces"."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[PlugSighting] = asyncio.Queue()
        self.handled = 0

    async def __call__(self) -> AsyncIterator[PlugSighting]:
        while True:
            sighting = await self.queue.get()
            yield sighting
            self.handled += 1  # resumed: the agent finished with the previous sighting


async def test_an_impostor_is_refused_while_the_real_plug_answers(
    tmp_path: Path, agent_log: pytest.LogCaptureFixture
) -> None:
    fleet = SimFleet.build(1, "2", profile="ev", clock=ManualClock(1_767_225_600.0), seed=31)
    await fleet.start()
    real = fleet.plugs[0]
    impostor = await fleet.impostor(real)  # answers /shelly with the real plug's MAC, on another port
    sightings = Sightings()
    clock = SystemClock()
    s = AgentSettings(
        site_id=SITE,
        discovery=True,
        state_dir=tmp_path / "state",
        poll_interval_s=0.1,
        flush_interval_s=0.3,
        max_backoff_s=0.4,
    )
    connector = shelly_connector(password=None, user="admin", timeout_s=5.0, clock=clock)
    agent = Agent(
        s, MemoryBus(), SigningKey.generate(), Keyring(), connector, discovery=sightings, clock=clock
    )
    task = asyncio.create_task(agent.serve())
    try:
        await sightings.queue.put(PlugSighting("added", real.mac, real.host, real.port))
        await wait_until(
            lambda: real.mac in agent.plugs and agent.plug_status(real.mac).polls >= 2, "the real plug"
        )
        # The impostor announces itself as the real plug at its own address.
        await sightings.queue.put(PlugSighting("moved", real.mac, impostor.host, impostor.port))
        await sightings.queue.put(PlugSighting("added", real.mac, impostor.host, impostor.port))
        await wait_until(lambda: sightings.handled >= 3, "the impostor's sightings handled")
        assert agent.plug_status(real.mac).port == real.port
        assert agent.health().refused_devices == 2
        # A relay command still reaches the real plug, and only it.
        assert await agent._switch(real.mac, True, 60) is True
        assert real.truth().relay_on and not impostor.truth().relay_on
        assert not [e for e in impostor.log if "Switch" in e.path]
        # Once the real plug stops answering at its old address, the MAC may move (a DHCP change).
        await real.inject("refuse")
        await sightings.queue.put(PlugSighting("moved", real.mac, impostor.host, impostor.port))
        await wait_until(lambda: agent.plug_status(real.mac).port == impostor.port, "the move")
    finally:
        agent.stop()
        await asyncio.wait_for(task, 60)
        await fleet.stop()
    refusals = [r.getMessage() for r in agent_log.records if "refused impostor" in r.getMessage()]
    assert len(refusals) == 2 and all(real.mac in m and str(impostor.port) in m for m in refusals)


@pytest.mark.parametrize(("gen", "password"), [("1", None), ("2", None), ("1", "s3cret"), ("2", "s3cret")])
async def test_a_switch_does_not_wait_behind_a_poll_the_plug_stalls(
    tmp_path: Path, gen: str, password: str | None
) -> None:
    """A plug that stalls its status answer holds up its own reading, never a relay command: the switch
    goes over connections of its own, reaches the plug and is confirmed (relay read back) while the
    stalled poll is still waiting, within the command's deadline, with the plug's own flip-back timer
    (the dead-man bound) armed for the commanded ``auto_off_s``. With digest auth (Gen2 firmware 2.0
    counts each nonce's uses and refuses one out of order) the switch uses a nonce of its own: the
    stalled poll's use of the poll's nonce never reached the plug's count."""
    fleet = SimFleet.build(
        1, gen, profile="ev", clock=ManualClock(1_767_225_600.0), seed=41, password=password
    )
    await fleet.start()
    plug = fleet.plugs[0]
    clock, bus, hub_key = SystemClock(), MemoryBus(), SigningKey.generate()
    ring = Keyring()
    ring.add_public(hub_key.public_bytes, SITE)
    s = AgentSettings(
        site_id=SITE,
        plugs=[PlugAddress(plug.host, plug.port)],
        discovery=False,
        state_dir=tmp_path / "state",
        poll_interval_s=0.1,
        flush_interval_s=0.3,
        # The stalled poll gives up only after this: far longer than the test waits for the switch,
        # so a switch queued behind the poll would never be seen here.
        request_timeout_s=300.0,
    )
    connector = shelly_connector(password=password, user="admin", timeout_s=s.request_timeout_s, clock=clock)
    agent = Agent(s, bus, SigningKey.generate(), ring, connector, clock=clock)
    await bus.ensure_topic(command_topic(SITE))
    await bus.ensure_subscription(command_subscription(SITE), command_topic(SITE))
    task = asyncio.create_task(agent.serve())
    try:
        await wait_until(lambda: plug.mac in agent.plugs and agent.plug_status(plug.mac).polls >= 2, "polls")
        assert not plug.truth().relay_on
        await plug.inject("hang", count=1)  # the next request, a poll's status GET, is never answered
        await wait_until(lambda: "hang" not in plug.faults, "a poll the plug stalls")
        polls = agent.plug_status(plug.mac).polls
        now_ms = round(clock.now() * 1000)
        cmd = Command("on-1", SITE, plug.mac, True, now_ms, now_ms + 20_000, "sess-1", auto_off_s=120)
        await bus.publish(command_topic(SITE), *pack_command(cmd, hub_key))
        await wait_until(lambda: any(o.command_id == "on-1" for o in agent.outcomes), "the switch's outcome")
        outcome = next(o for o in agent.outcomes if o.command_id == "on-1")
        assert (outcome.ok, outcome.reason, outcome.relay_on) == (True, "executed", True), outcome
        assert now_ms <= outcome.executed_at_ms <= cmd.expires_at_ms
        truth = plug.truth()
        assert truth.relay_on and truth.timer_remaining_s == pytest.approx(120.0)  # the plug's own timer
        # ... and all of that while the poll is still stalled: no reading, no failure counted yet.
        status = agent.plug_status(plug.mac)
        assert (status.polls, status.failures) == (polls, 0)
        # Once the plug answers again, polling goes on and the readings show the relay it was told.
        await plug.clear()
        await wait_until(lambda: agent.plug_status(plug.mac).polls >= polls + 3, "polls after the stall")
    finally:
        await plug.clear()
        agent.stop()
        await asyncio.wait_for(task, 60)
        await bus.close()
        await fleet.stop()
