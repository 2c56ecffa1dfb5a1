"""CommandSender's failure paths: a site with no command key, and a bus that refuses the publish.

Neither may raise into the machine's effects (the machine re-sends a relay command until the plug
confirms it; the next lease renews the same plugs), and neither may publish anything unsigned."""

from __future__ import annotations

import asyncio

from chargectl.common import codec
from chargectl.common.clock import ManualClock
from chargectl.common.errors import StoreError, TransportError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.services.hub import machine as m
from chargectl.services.hub.effects import CommandSender
from chargectl.services.hub.health import Metrics

SITE = "site-a"
MAC = "AABBCCDDEEFF"


class Bus:
    """Records what is published; refuses every publish while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.published: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(self, topic: str, data: bytes, attrs: dict[str, str]) -> None:
        if self.down:
            raise TransportError("injected: the bus refuses")
        self.published.append((topic, data, attrs))


def sender(key: SigningKey | None) -> tuple[CommandSender, Bus, Metrics]:
    def keys(site: codec.Site, at_ms: int) -> SigningKey:
        if key is None:
            raise StoreError(f"no command key for {site.site_id}")
        return key

    bus, metrics = Bus(), Metrics()
    s = CommandSender(bus, keys, metrics, ManualClock(1_767_225_600.0), 300.0)  # type: ignore[arg-type]
    s.sites[SITE] = codec.Site(site_id=SITE)
    return s, bus, metrics


def relay_on() -> m.SendRelay:
    return m.SendRelay(MAC, True, 120, "sess-1", "cmd-1", "start")


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_no_key_or_no_site_publishes_nothing_and_counts_it() -> None:
    s, bus, metrics = sender(None)
    s.send(SITE, relay_on())
    s.send_lease(SITE, [codec.LeasedPlug(MAC, "sess-1", 120)])
    s.send("site-unknown", relay_on())
    await settle()
    assert bus.published == []
    assert metrics.value("commands_failed_total", reason="no_key") == 3
    assert metrics.value("commands_sent_total") == 0 and metrics.value("leases_sent_total") == 0


async def test_a_refused_publish_is_counted_never_raised_and_the_next_one_goes_out_signed() -> None:
    key = SigningKey.generate()
    s, bus, metrics = sender(key)
    bus.down = True
    s.send(SITE, relay_on())
    s.send_lease(SITE, [codec.LeasedPlug(MAC, "sess-1", 120)])
    await settle()
    assert bus.published == [] and metrics.value("commands_failed_total", reason="publish") == 2
    bus.down = False
    s.send(SITE, relay_on())
    await settle()
    [(topic, data, _attrs)] = bus.published
    keyring = Keyring()
    keyring.add_public(key.public_bytes, SITE)
    cmd = codec.unpack_command(data, keyring, now_ms=1_767_225_600_000)  # verifies the signature
    assert topic.endswith(SITE) and cmd.plug_mac == MAC and cmd.on and cmd.auto_off_s == 120
