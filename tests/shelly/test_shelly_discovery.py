"""Discovery over real loopback mDNS (interfaces=["127.0.0.1"]; never the real NIC)."""

from __future__ import annotations

import asyncio

import pytest
from shelly_support import FleetFactory

from chargectl.shelly import PlugEvent, PlugWatcher, discover_once
from chargectl.shelly.simdevice import make_profile

pytestmark = pytest.mark.integration

LOOPBACK = ["127.0.0.1"]


async def test_discover_once_confirms_dedupes_and_reports(fleet_factory: FleetFactory) -> None:
    profiles = [
        make_profile(1, "D15C00000001"),
        make_profile(2, "D15C00000002", password="pw"),
        make_profile(3, "D15C00000003", model="S3PL-30116EU", metering_only=True),
        make_profile(4, "D15C00000004"),
    ]
    fleet = await fleet_factory(profiles, interfaces=LOOPBACK)
    found = await discover_once(3.0, LOOPBACK)
    ours = {p.mac: p for p in found if p.mac.startswith("D15C")}
    assert len([p for p in found if p.mac.startswith("D15C")]) == 4  # Gen2+ appear under two types: one entry
    assert {mac: p.gen for mac, p in ours.items()} == {
        "D15C00000001": 1,
        "D15C00000002": 2,
        "D15C00000003": 3,
        "D15C00000004": 4,
    }
    for plug in fleet.plugs:
        d = ours[plug.mac]
        assert (d.host, d.port, d.model) == (plug.host, plug.port, plug.profile.model)
    assert ours["D15C00000002"].auth and not ours["D15C00000001"].auth
    assert not ours["D15C00000003"].switchable and ours["D15C00000004"].switchable
    assert ours["D15C00000001"].firmware == "20230913-113421/v1.14.0-gcb84623"


class Recorder:
    """Collects every event; ``wait`` returns the first matching one without dropping the others."""

    def __init__(self) -> None:
        self.seen: list[PlugEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, event: PlugEvent) -> None:
        self.seen.append(event)
        self.changed.set()

    async def wait(self, kind: str, mac: str) -> PlugEvent:
        async def find() -> PlugEvent:
            while True:
                for event in self.seen:
                    if event.kind == kind and event.plug.mac == mac:
                        return event
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(find(), timeout=20)


async def test_watcher_reports_added_moved_gone(fleet_factory: FleetFactory) -> None:
    fleet = await fleet_factory(
        [make_profile(1, "3A7C00000001"), make_profile(3, "3A7C00000003")], interfaces=LOOPBACK
    )
    events = Recorder()
    watcher = PlugWatcher(interfaces=LOOPBACK, on_event=events, gone_after_s=5.0)
    async with watcher:
        for plug in fleet.plugs:
            added = await events.wait("added", plug.mac)
            assert added.plug.port == plug.port
        gen1 = fleet.plugs[0]
        await gen1.move()
        moved = await events.wait("moved", gen1.mac)
        assert (moved.plug.host, moved.plug.port) == (gen1.host, gen1.port)
        assert not [e for e in events.seen if e.kind == "gone"]  # a move within the grace is not "gone"
        await fleet.stop()
        for plug in fleet.plugs:
            await events.wait("gone", plug.mac)
        assert not {"3A7C00000001", "3A7C00000003"} & set(watcher.plugs)


async def test_watcher_events_iterator(fleet_factory: FleetFactory) -> None:
    watcher = PlugWatcher(interfaces=LOOPBACK)
    async with watcher:
        stream = watcher.events()
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        fleet = await fleet_factory([make_profile(2, "17E400000002")], interfaces=LOOPBACK)
        event = await asyncio.wait_for(first, timeout=20)
        while event.plug.mac != "17E400000002":  # another process may advertise on loopback too
            event = await asyncio.wait_for(anext(stream), timeout=20)
        assert (event.kind, event.plug.port, event.plug.gen) == ("added", fleet.plugs[0].port, 2)
        await stream.aclose()
