"""Fixtures for the Shelly tests: simulator fleets that always stop, in-loop or in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from chargectl.common.clock import ManualClock
from chargectl.shelly.sim import SimFleet
from chargectl.shelly.simdevice import PlugProfile

FleetFactory = Callable[..., Awaitable[SimFleet]]


@pytest.fixture
async def fleet_factory(manual_clock: ManualClock) -> AsyncIterator[FleetFactory]:
    """``await fleet_factory(profiles, **kw)`` → a started fleet on ``manual_clock`` (stopped after)."""
    fleets: list[SimFleet] = []

    async def make(profiles: list[PlugProfile], **kw: Any) -> SimFleet:
        kw.setdefault("clock", manual_clock)
        fleet = SimFleet(profiles, **kw)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.stop()


class ThreadedFleet:
    """A fleet running on its own event loop in a thread, for CLI tests that call ``asyncio.run``."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.call(self.fleet.start())

    def call(self, coro: Awaitable[Any]) -> Any:
        async def wrap() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout=30)

    def stop(self) -> None:
        try:
            self.call(self.fleet.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
def threaded_fleet() -> Iterator[Callable[[SimFleet], ThreadedFleet]]:
    started: list[ThreadedFleet] = []

    def start(fleet: SimFleet) -> ThreadedFleet:
        tf = ThreadedFleet(fleet)
        tf.start()
        started.append(tf)
        return tf

    yield start
    for tf in started:
        tf.stop()
