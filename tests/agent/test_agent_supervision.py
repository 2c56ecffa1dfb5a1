"""Supervision: no error of one plug stops the site, a task that ends stops the agent loudly, stops never hang.

Plugs here are in-process fakes behind the agent's own ``Plug`` seam (fault injection); the bus is the
in-memory bus and the clock is real, with short intervals.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_fakes import FakePlug, FakeSite, TelemetryTap

from chargectl.common.clock import SystemClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.agent import Agent, AgentSettings, PlugAddress
from chargectl.services.agent.agent import AgentFailed

SITE = "carpark-1"
MACS = ["A8032AB20001", "A8032AB20002", "A8032AB20003"]


async def wait_until(cond: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Poll ``cond``; ``limit_s`` only stops a broken test from hanging, it is not what is tested."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class HostilePlug(FakePlug):
    """A fake plug that raises ``fault`` from ``read`` or answers ``bad`` numbers, while set."""

    fault: Exception | None = None
    bad: dict[str, float] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    reads_started: int = 0

    async def read(self) -> Reading:
        self.reads_started += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fault is not None:
            raise self.fault
        reading = await super().read()
        if self.bad:
            reading = Reading(**{**{s: getattr(reading, s) for s in Reading.__slots__}, **self.bad})
        return reading


class Site(TelemetryTap):
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = SystemClock()
        self.bus = MemoryBus()
        self.fakes = FakeSite(self.clock)
        self.plugs: list[HostilePlug] = []
        for i, mac in enumerate(MACS):
            plug = HostilePlug(mac, self.clock, power_w=100.0 * (i + 1))
            self.fakes.by_address[(f"10.0.0.{i + 1}", 80)] = plug
            self.plugs.append(plug)
        self.agent_key = SigningKey.generate()
        self.received: list[BusMessage] = []
        self.site_id = SITE

    def agent(self, **kw: object) -> Agent:
        base: dict[str, object] = {
            "site_id": SITE,
            "plugs": [PlugAddress(f"10.0.0.{i + 1}") for i in range(len(MACS))],
            "discovery": False,
            "state_dir": self.tmp / "state",
            "poll_interval_s": 0.05,
            "flush_interval_s": 0.2,
            "max_backoff_s": 0.2,
            "heartbeat_interval_s": 0.1,
            "request_timeout_s": 2.0,
        }
        base.update(kw)
        return Agent(
            AgentSettings(**base),  # type: ignore[arg-type]
            self.bus,
            self.agent_key,
            Keyring(),
            self.fakes.connect,
            clock=self.clock,
        )


@pytest.fixture
async def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    await s.listen()
    return s


async def test_a_poll_cancelled_as_its_read_completes_still_stops(site: Site) -> None:
    """The 3.11 hang: a cancellation arriving while the plug's answer lands must not be swallowed."""
    gate = asyncio.Event()
    for plug in site.plugs:
        plug.gate = gate
    agent = site.agent()
    task = asyncio.create_task(agent.serve())
    try:
        await wait_until(lambda: all(p.reads_started for p in site.plugs), "every plug being read")
        pollers = [e.task for e in agent._plugs.values()]
        assert all(t is not None for t in pollers)
        # The answers land and the cancellation arrives in the same loop iteration.
        gate.set()
        for poller in pollers:
            assert poller is not None
            poller.cancel()
        done, _ = await asyncio.wait([t for t in pollers if t is not None], timeout=30)
        assert len(done) == len(pollers) and all(t.cancelled() for t in done)
        # And the rest of the agent stops too, with the readings that landed published.
        agent.stop()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
    assert agent.health().spooled_batches == 0


@pytest.mark.parametrize(
    "fault",
    [ValueError("could not convert string to float: 'NaN'"), OverflowError("cannot convert float infinity")],
    ids=["ValueError", "OverflowError"],
)
async def test_any_exception_from_one_plug_is_that_plugs_problem(
    site: Site, fault: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    bad, *good = site.plugs
    bad.fault = fault
    agent = site.agent()
    task = asyncio.create_task(agent.serve())
    try:
        await wait_until(
            lambda: all(len(site.readings(p.mac)) >= 5 for p in good), "five readings from each neighbour"
        )
        assert agent.plug_status(bad.mac).failures >= 2 and not agent.plug_status(bad.mac).online
        assert site.readings(bad.mac) == []  # nothing invented for the broken plug
        bad.fault = None  # it comes back by itself, same poller
        await wait_until(lambda: len(site.readings(bad.mac)) >= 2, "the plug's readings after it recovers")
        agent.stop()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
    # Its energy counter is reported as the plug counts it: monotonic, no gaps invented.
    energies = [r.energy_mwh for r in site.readings(bad.mac)]
    assert energies == sorted(energies) and energies[0] == 1_000_010
    about = [r for r in caplog.records if bad.mac in r.getMessage()]
    unexpected = [r.getMessage() for r in about if "poll failed unexpectedly" in r.getMessage()]
    assert len(unexpected) == 1 and type(fault).__name__ in unexpected[0]


async def test_non_finite_and_huge_numbers_never_reach_a_batch(site: Site) -> None:
    nan, inf = site.plugs[0], site.plugs[1]
    nan.bad = {"power_w": math.nan}
    inf.bad = {"power_w": 1e300, "voltage_v": math.inf}
    agent = site.agent()
    task = asyncio.create_task(agent.serve())
    try:
        await wait_until(lambda: len(site.readings(MACS[2])) >= 5, "five readings from the sane plug")
        assert agent.health().bad_responses >= 2
        assert agent.plug_status(nan.mac).last_error.endswith("power_w nan is out of range")
        nan.bad = {}
        await wait_until(lambda: len(site.readings(nan.mac)) >= 1, "the repaired plug's reading")
        agent.stop()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
    assert site.readings(inf.mac) == []
    assert all(math.isfinite(r.power_w) for b in site.batches() for r in b.readings)


async def test_a_task_that_ends_flushes_and_fails_the_agent(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    agent = site.agent(flush_interval_s=3600.0)  # nothing is published unless the final flush does it
    beats = 0
    original = agent.write_heartbeat

    def heartbeat_then_crash() -> object:
        nonlocal beats
        beats += 1
        if beats > 3 and len(agent._buffer) >= 3:
            raise RuntimeError("disk controller on fire")
        return original()

    agent.write_heartbeat = heartbeat_then_crash  # type: ignore[method-assign]
    with pytest.raises(AgentFailed, match=r"heartbeat crashed.*disk controller on fire"):
        await asyncio.wait_for(agent.serve(), 60)
    # The readings polled before the crash were flushed on the way out, not lost.
    assert len(site.batches()) >= 1
    assert {r.mac for b in site.batches() for r in b.readings} == set(MACS)
    assert agent.health().spooled_batches == 0
    assert any("flushing and stopping" in r.getMessage() for r in caplog.records)


async def test_a_stalled_plug_has_one_poll_in_flight_and_its_neighbours_keep_their_pace(site: Site) -> None:
    """One scheduler polls the site: a plug that never answers does not get a second poll stacked on
    the first (no pile of connections to a sick device), its neighbours keep being polled, each at
    most once per interval, and the stalled plug's readings resume once it answers."""
    stalled, *others = site.plugs
    stalled.gate = asyncio.Event()  # its read does not return until the gate opens
    agent = site.agent(request_timeout_s=300.0, poll_jitter=0.1)  # the stalled poll never times out here
    task = asyncio.create_task(agent.serve())
    try:
        await wait_until(
            lambda: stalled.reads_started >= 1 and all(len(site.readings(p.mac)) >= 10 for p in others),
            "ten readings from each neighbour while one plug stalls",
        )
        assert stalled.reads_started == 1 and site.readings(stalled.mac) == []
        stalled.gate.set()
        await wait_until(lambda: len(site.readings(stalled.mac)) >= 3, "the stalled plug's readings")
        agent.stop()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
    for plug in site.plugs:
        stamps = [r.ts_ms for r in site.readings(plug.mac)]
        assert stamps == sorted(stamps)
        # A plug's next poll is queued when its poll ends, at least 0.9 intervals later (jitter 0.1;
        # a 1 ms timer tolerance and the ms stamps aside): never two chains of polls for one plug.
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert min(gaps) >= 0.05 * 0.9 * 1000 - 2, (plug.mac, gaps)
