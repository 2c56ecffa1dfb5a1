"""In-process plugs behind the agent's own ``Plug`` seam, for fault injection in unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from chargectl.common.clock import Clock
from chargectl.common.codec import SCHEMA_TELEMETRY, Batch, unpack_telemetry
from chargectl.common.errors import DeviceMismatchError, DeviceTimeoutError, DeviceUnreachableError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.common.topics import TELEMETRY_TOPIC
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus


@dataclass
class FakePlug:
    mac: str
    clock: Clock
    gen: int = 2
    model: str = "SNPL-00112EU"
    switchable: bool = True
    relay_on: bool = False
    power_w: float = 0.0
    energy_mwh: int = 1_000_000
    failing: bool = False
    auto_off_s: float | None = None
    calls: list[str] = field(default_factory=list)
    closed: bool = False

    async def read(self) -> Reading:
        self.calls.append("read")
        if self.failing:
            raise DeviceTimeoutError(f"{self.mac} did not answer")
        self.energy_mwh += 10
        return Reading(
            mac=self.mac,
            ts_ms=int(self.clock.now() * 1000),
            power_w=self.power_w,
            energy_mwh=self.energy_mwh,
            relay_on=self.relay_on,
            voltage_v=230.1,
            current_a=round(self.power_w / 230.1, 3),
            temperature_c=31.5,
        )

    async def set_relay(self, on: bool, auto_off_s: int | None = None) -> bool:
        self.calls.append(f"set_relay({on}, {auto_off_s})")
        if self.failing:
            raise DeviceTimeoutError(f"{self.mac} did not answer")
        self.relay_on = on
        self.auto_off_s = auto_off_s
        return self.relay_on

    async def aclose(self) -> None:
        self.closed = True


class FakeSite:
    """Plugs by address; ``connect`` is the agent's ``Connector``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.by_address: dict[tuple[str, int], FakePlug] = {}

    def add(self, mac: str, host: str, port: int = 80, **kw: object) -> FakePlug:
        plug = FakePlug(mac, self.clock, **kw)  # type: ignore[arg-type]
        self.by_address[(host, port)] = plug
        return plug

    async def connect(self, host: str, port: int, mac: str | None = None) -> FakePlug:
        plug = self.by_address.get((host, port))
        if plug is None or plug.failing:
            raise DeviceUnreachableError(f"nothing answers at {host}:{port}")
        if mac is not None and plug.mac != mac:
            raise DeviceMismatchError(f"{host}:{port} is plug {plug.mac}, not {mac}")
        return plug


class TelemetryTap:
    """What a hub subscribed to the memory bus receives from an agent: its messages, batches, readings.

    A test site sets ``bus``, ``agent_key``, ``received`` and ``site_id``.
    """

    bus: MemoryBus
    agent_key: SigningKey
    received: list[BusMessage]
    site_id: str

    async def listen(self) -> None:
        await self.bus.ensure_topic(TELEMETRY_TOPIC)
        await self.bus.ensure_subscription("hub-0", TELEMETRY_TOPIC)

        async def handler(msg: BusMessage) -> bool:
            self.received.append(msg)
            return True

        await self.bus.subscribe("hub-0", handler)

    def batches(self) -> list[Batch]:
        ring = Keyring()
        ring.add_public(self.agent_key.public_bytes, self.site_id)
        return [
            unpack_telemetry(m.data, ring)
            for m in self.received
            if m.attributes["schema"] == SCHEMA_TELEMETRY
        ]

    def readings(self, mac: str) -> list[Reading]:
        return [r for b in self.batches() for r in b.readings if r.mac == mac]
