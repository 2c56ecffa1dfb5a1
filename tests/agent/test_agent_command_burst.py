"""A burst of relay commands (20 users starting at once) is switched together, not ten at a time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent_fakes import FakePlug, FakeSite

from chargectl.common.clock import SystemClock
from chargectl.common.codec import Command, pack_command
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.topics import command_subscription, command_topic
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.agent import Agent, AgentSettings, PlugAddress

SITE = "carpark-1"
N = 20


class Crowd:
    """Plugs that answer a switch only once every plug of the burst is being switched: a plug whose
    command waits for another plug's answer first never gets its own (the hostile, slow site)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.all_in = asyncio.Event()


class CrowdPlug(FakePlug):
    crowd: Crowd

    async def set_relay(self, on: bool, auto_off_s: int | None = None) -> bool:
        self.crowd.in_flight += 1
        if self.crowd.in_flight >= N:
            self.crowd.all_in.set()
        try:
            await asyncio.wait_for(self.crowd.all_in.wait(), 20)
        finally:
            self.crowd.in_flight -= 1
        return await super().set_relay(on, auto_off_s)


async def test_a_burst_of_starts_switches_every_plug_together(tmp_path: Path) -> None:
    clock = SystemClock()
    site, crowd, bus = FakeSite(clock), Crowd(), MemoryBus()
    plugs = []
    for i in range(N):
        plug = CrowdPlug(f"A8032AB1{i:04d}", clock)
        plug.crowd = crowd
        site.by_address[(f"10.0.0.{i + 1}", 80)] = plug
        plugs.append(plug)
    hub_key = SigningKey.generate()
    ring = Keyring()
    ring.add_public(hub_key.public_bytes, SITE)
    settings = AgentSettings(
        site_id=SITE,
        plugs=[PlugAddress(f"10.0.0.{i + 1}") for i in range(N)],
        discovery=False,
        state_dir=tmp_path / "state",
        request_timeout_s=10.0,  # a switch may wait 30 s: longer than the crowd's 20 s
    )
    agent = Agent(settings, bus, SigningKey.generate(), ring, site.connect, clock=clock)
    await bus.ensure_topic(command_topic(SITE))
    await bus.ensure_subscription(command_subscription(SITE), command_topic(SITE))
    serving = asyncio.create_task(agent.serve())
    deadline = time.monotonic() + 60
    while len(agent.plugs) < N:
        assert time.monotonic() < deadline, "the agent never connected its plugs"
        await asyncio.sleep(0.01)
    now_ms = round(clock.now() * 1000)
    for i, plug in enumerate(plugs):
        cmd = Command(
            command_id=f"c{i}",
            site_id=SITE,
            plug_mac=plug.mac,
            on=True,
            issued_at_ms=now_ms,
            expires_at_ms=now_ms + 60_000,
            session_id=f"sess-{i}",
            auto_off_s=300,
        )
        await bus.publish(command_topic(SITE), *pack_command(cmd, hub_key))
    while len([o for o in agent.outcomes if o.session_id]) < N:
        assert time.monotonic() < deadline, "the agent never reported every command"
        await asyncio.sleep(0.01)
    agent.stop()
    await asyncio.wait_for(serving, 60)
    # Every relay is on, each by its own command, and each outcome says so.
    assert all(p.relay_on and p.auto_off_s == 300 for p in plugs)
    outcomes = [o for o in agent.outcomes if o.session_id]
    assert sorted(o.command_id for o in outcomes) == sorted(f"c{i}" for i in range(N))
    assert all(o.ok and o.relay_on for o in outcomes)
