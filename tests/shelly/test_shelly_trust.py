"""Device trust: which addresses discovery may probe, name/MAC agreement, and where the password goes."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from pathlib import Path
from typing import Any

import pytest
from shelly_support import FleetFactory

from chargectl.common.errors import DeviceMismatchError
from chargectl.shelly import PlugWatcher, ShellyClient
from chargectl.shelly.discovery import AddressPolicy, connected_networks, name_matches_mac
from chargectl.shelly.sim import wrong_mac_of
from chargectl.shelly.simdevice import make_profile

# A real /proc/net/route: eth0 192.168.1.0/24 and wlan0 10.20.0.0/16 directly connected, a default
# route via 192.168.1.1, a routed (not connected) 172.16.5.0/24, link-local on eth0, and a public
# connected subnet on a VPS-style interface.
ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wlan0\t0000140A\t00000000\t0001\t0\t0\t600\t0000FFFF\t0\t0\t0
eth0\t000510AC\t0101A8C0\t0003\t0\t0\t100\t00FFFFFF\t0\t0\t0
eth0\t0000FEA9\t00000000\t0001\t0\t0\t1000\t0000FFFF\t0\t0\t0
ens3\t00337188\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""


def test_connected_networks_are_the_gatewayless_routes() -> None:
    nets = connected_networks(ROUTES)
    assert [str(n) for n in nets] == ["192.168.1.0/24", "10.20.0.0/16", "169.254.0.0/16", "136.113.51.0/24"]
    # Only the interfaces in use (by address) when discovery is bound to some.
    assert [str(n) for n in connected_networks(ROUTES, ["10.20.3.4"])] == ["10.20.0.0/16"]


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("192.168.1.57", True),  # a plug on the Pi's LAN
        ("10.20.9.9", True),
        ("172.16.5.9", False),  # private, but only reachable through a router
        ("169.254.169.254", False),  # link-local (the cloud metadata address)
        ("127.0.0.1", False),  # loopback: something on the Pi itself
        ("136.113.51.7", False),  # public, even though connected
        ("8.8.8.8", False),
        ("224.0.0.251", False),
        ("not-an-ip", False),
    ],
)
def test_default_policy_probes_only_the_sites_own_private_subnets(host: str, ok: bool) -> None:
    policy = AddressPolicy((), connected_networks(ROUTES))
    assert policy.permits(host) is ok


def test_configured_networks_replace_the_default_even_loopback() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "192.168.7.0/24"])
    assert policy.permits("127.0.0.1") and policy.permits("192.168.7.3")
    assert not policy.permits("192.168.1.57")


def test_for_site_reads_the_route_table(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(ROUTES)
    assert AddressPolicy.for_site([], [], route).connected[0] == ipaddress.IPv4Network("192.168.1.0/24")
    assert AddressPolicy.for_site([], [], tmp_path / "missing").describe() == "no network"


@pytest.mark.parametrize(
    ("name", "mac", "ok"),
    [
        ("shellyplusplugs-aabbccddeeff._shelly._tcp.local.", "AABBCCDDEEFF", True),
        ("shellyplusplugs-aabbccddeeff._http._tcp.local.", "AABBCCDDEE00", False),
        ("shellyplug-s-DDEEFF._http._tcp.local.", "AABBCCDDEEFF", True),
        ("shellyplug-s-DDEEFF._http._tcp.local.", "AABBCC000000", False),
        ("kitchen plug._http._tcp.local.", "AABBCCDDEEFF", True),  # a renamed device: nothing to contradict
    ],
)
def test_name_and_mac_must_agree(name: str, mac: str, ok: bool) -> None:
    assert name_matches_mac(name, mac) is ok


class Events:
    def __init__(self) -> None:
        self.macs: set[str] = set()

    def __call__(self, event: object) -> None:
        self.macs.add(event.plug.mac)  # type: ignore[attr-defined]


async def _settle(watcher: PlugWatcher, cond: object, limit_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not cond():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("gave up waiting")
        await asyncio.sleep(0.05)


@pytest.mark.integration
async def test_watcher_never_probes_loopback_unless_configured_and_refuses_a_name_mac_mismatch(
    fleet_factory: FleetFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chargectl.shelly import discovery

    probed: list[tuple[str, int]] = []
    real_fetch = discovery.fetch_info

    async def spy(host: str, port: int = 80, **kw: Any) -> Any:
        probed.append((host, port))
        return await real_fetch(host, port, **kw)

    # Other test runs on this machine may probe loopback too, so this watcher's own probes are counted.
    monkeypatch.setattr(discovery, "fetch_info", spy)
    loopback = ["127.0.0.1"]
    macs = ["3B" + uuid.uuid4().hex[:10].upper() for _ in range(2)]
    fleet = await fleet_factory([make_profile(2, macs[0]), make_profile(2, macs[1])], interfaces=loopback)
    honest, liar = fleet.plugs
    await liar.inject("wrong_mac")  # its /shelly names another MAC than its mDNS name carries
    # The default policy: loopback is never a site network, so nothing there is even asked.
    events = Events()
    async with PlugWatcher(interfaces=loopback, on_event=events, policy=AddressPolicy()) as watcher:
        await _settle(watcher, lambda: honest.mac.lower() in " ".join(watcher.refused))
    assert not events.macs & set(macs)
    assert not {(p.host, p.port) for p in fleet.plugs} & set(probed)
    # Configured for the simulator: the honest plug is adopted, the liar refused and logged once.
    events = Events()
    async with PlugWatcher(
        interfaces=loopback, on_event=events, policy=AddressPolicy(["127.0.0.0/8"])
    ) as watcher:
        await _settle(
            watcher, lambda: honest.mac in events.macs and liar.mac.lower() in " ".join(watcher.refused)
        )
    assert liar.mac not in events.macs and wrong_mac_of(liar.mac) not in events.macs
    refusals = [r.getMessage() for r in caplog.records if "not adopting" in r.getMessage()]
    assert any(liar.mac.lower() in m and wrong_mac_of(liar.mac) in m for m in refusals)


async def test_gen1_password_goes_only_to_an_address_that_says_it_is_our_plug(
    fleet_factory: FleetFactory,
) -> None:
    fleet = await fleet_factory([make_profile(1, "AABBCC0000A1", password="s3cret")])
    plug = fleet.plugs[0]
    client = await ShellyClient.connect(plug.host, plug.port, password="s3cret")
    try:
        assert (await client.read()).mac == plug.mac
        plug.log.clear()
        await plug.inject("wrong_mac")  # another device now answers at this address
        with pytest.raises(DeviceMismatchError, match="not sending it the password"):
            await client.read()
        assert [e.path for e in plug.log] == ["/shelly"]
        assert all(e.authorization is None for e in plug.log)  # the password never left
    finally:
        await client.aclose()
