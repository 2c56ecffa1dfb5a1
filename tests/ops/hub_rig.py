"""A hub on embedded backends for the ops tests, with the test playing the site's agent (signed
batches in, signed commands read back)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from chargectl.common import codec
from chargectl.common.clock import ManualClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.common.topics import DEAD_LETTER_TOPIC, command_topic
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings


@dataclass
class HubRig:
    hub: Hub
    store: SqliteStore
    timeseries: SqliteTimeSeries
    clock: ManualClock
    agent_key: SigningKey
    site: str = "site-a"
    commands: list[codec.Command] = field(default_factory=list)
    seq: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def create(cls, tmp_path: Path, site: str = "site-a") -> HubRig:
        clock = ManualClock(1_767_225_600.0)
        agent_key, command_key = SigningKey.generate(), SigningKey.generate()
        store = SqliteStore(tmp_path / "hub.db")
        store.put_site(
            codec.Site(
                site_id=site,
                status=codec.Site.STATUS_ACTIVE,
                agent_keys=[codec.PublicKey(key_id=agent_key.key_id, public_key=agent_key.public_bytes)],
                tariff=codec.Tariff(tariff_id="t1", currency="gbp", price_per_kwh_minor=30),
            )
        )
        bus = MemoryBus()
        await bus.ensure_topic(command_topic(site))
        await bus.ensure_subscription("cmds", command_topic(site))
        await bus.ensure_topic(DEAD_LETTER_TOPIC)
        keyring = Keyring()
        keyring.add_public(command_key.public_bytes, site)
        ts = SqliteTimeSeries(tmp_path / "ts.db")
        hub = Hub(
            HubSettings(plug_state_min_interval_s=0),
            HubPorts(bus, store, ts, lambda s, now_ms: command_key),
            clock,
        )
        rig = cls(hub, store, ts, clock, agent_key, site)

        async def on_command(msg: BusMessage) -> bool:
            rig.commands.append(codec.unpack_command(msg.data, keyring))
            return True

        await bus.subscribe("cmds", on_command)
        return rig

    async def send_readings(self, mac: str, power_w: float, *, relay_on: bool, count: int) -> bool:
        """``count`` readings 5 s apart in one signed batch; True if the hub acked it."""
        rows = []
        counter = self.counters.get(mac, 5_000_000)
        for _ in range(count):
            self.clock.advance(5)
            counter += round(power_w * 5 / 3.6)
            rows.append(Reading(mac, round(self.clock.now() * 1000), power_w, counter, relay_on, 230.0))
        self.counters[mac] = counter
        self.seq += 1
        data, attrs = codec.pack_telemetry(codec.Batch(self.site, self.seq, tuple(rows)), self.agent_key)
        return await self.hub.handle_message(BusMessage(data, {**attrs, "shard": "0"}, f"m{self.seq}"))

    async def wait_commands(self, n: int, timeout_s: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.commands) < n:
            assert loop.time() < deadline, f"only {len(self.commands)} of {n} commands arrived"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.hub.stop()
        self.timeseries.close()
