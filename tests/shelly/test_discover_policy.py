"""The operator's ``discover`` and ``relay MAC`` probe only the networks they should.

Anyone on a site's LAN can announce any address over mDNS. The agent already probes only its site's
networks; these tests hold the operator's commands to the same rule: without ``--any-address``, an
announcement outside the networks probed is never asked ``GET /shelly`` and never switched.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_shelly_cli import run_cli, sim_process

from chargectl.shelly.discovery import AddressPolicy

__all__ = ["sim_process"]  # the fixture, imported for the tests below

ROUTES = """Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""


def test_cli_policy_networks_then_interfaces_then_connected_subnets(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(ROUTES)
    given = AddressPolicy.for_cli(["10.9.0.0/16"], ["127.0.0.1"], route)
    assert [str(n) for n in given.allowed] == ["10.9.0.0/16"]
    assert not given.permits("127.0.0.1")
    on_loopback = AddressPolicy.for_cli([], ["127.0.0.1"], route)
    assert on_loopback.allowed == [ipaddress.ip_network("127.0.0.0/8")]
    assert on_loopback.permits("127.0.0.1") and not on_loopback.permits("192.168.1.20")
    default = AddressPolicy.for_cli([], [], route)
    assert default.permits("192.168.1.20")
    for outside in ("127.0.0.1", "8.8.8.8", "169.254.169.254", "10.0.0.5"):
        assert not default.permits(outside), outside


def _state(plug: dict[str, Any]) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{plug['host']}:{plug['port']}/__sim/state", timeout=10) as resp:
        return dict(json.loads(resp.read()))


@pytest.mark.integration
def test_announcements_outside_the_networks_are_neither_listed_nor_switched(
    sim_process: Callable[..., dict[str, Any]],
) -> None:
    plugs = sim_process("--plugs", "2", "--gen", "2")["plugs"]
    macs = {p["mac"] for p in plugs}

    found = run_cli(
        "discover", "--json", "--timeout", "4", "--interface", "127.0.0.1", "--network", "10.99.0.0/16"
    )
    assert found.returncode == 0, found.stderr
    assert not macs & {p["mac"] for p in json.loads(found.stdout)}
    for plug in plugs:
        assert f"not adopted: {plug['host']}:{plug['port']} " in found.stderr
    assert "outside the networks probed (10.99.0.0/16)" in found.stderr

    target = plugs[0]
    switched = run_cli(
        "relay",
        "on",
        target["mac"],
        "--timeout",
        "4",
        "--interface",
        "127.0.0.1",
        "--network",
        "10.99.0.0/16",
    )
    assert switched.returncode != 0
    line = switched.stderr.strip().splitlines()[-1]  # after the watcher's own warnings
    assert line == (
        f"error: plug {target['mac']} was not found by mDNS within 4 s; announced at "
        f"{target['host']}:{target['port']}, not adopted: {target['host']} is outside the networks probed "
        "(10.99.0.0/16) (give its address as host:port)"
    )
    assert _state(target)["relay_on"] is False  # nothing reached the plug

    # The same announcement on the network the command listens on (the loopback here) is switched.
    ok = run_cli("relay", "on", target["mac"], "--timeout", "4", "--interface", "127.0.0.1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert _state(target)["relay_on"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--network", "10.0.0.0/33"], "'10.0.0.0/33' is not a network"),
        (["--network", "10.0.0.0/8", "--any-address"], "not both"),
    ],
)
def test_a_bad_network_option_is_one_line(args: list[str], message: str) -> None:
    proc = run_cli("discover", "--timeout", "0.5", "--json", *args)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
