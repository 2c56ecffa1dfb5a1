"""Installer input at the network edge: interface names, and one ``error:`` line with the real cause."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import backends
import pytest

from chargectl.common.errors import ConfigError
from chargectl.common.netif import local_interfaces, resolve_interfaces

CHARGECTL = str(Path(sys.executable).parent / "chargectl")
HERE = {"lo": ["127.0.0.1"], "wlan0": ["192.168.1.5", "10.0.0.7"], "eth1": []}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGECTL_")}
    return subprocess.run([CHARGECTL, *args], capture_output=True, text=True, env=env, timeout=60)


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_names_become_their_ipv4_addresses_and_addresses_are_checked() -> None:
    assert resolve_interfaces(["wlan0"], HERE) == ["192.168.1.5", "10.0.0.7"]
    assert resolve_interfaces(["10.0.0.7", "wlan0", "lo"], HERE) == ["10.0.0.7", "192.168.1.5", "127.0.0.1"]
    with pytest.raises(ConfigError, match=r"no interface named 'wlan1'; interfaces: eth1 \(no IPv4\), lo"):
        resolve_interfaces(["wlan1"], HERE)
    with pytest.raises(ConfigError, match=r"no interface here has the address 192\.0\.2\.77"):
        resolve_interfaces(["192.0.2.77"], HERE)
    with pytest.raises(ConfigError, match="interface eth1 has no IPv4 address"):
        resolve_interfaces(["eth1"], HERE)
    with pytest.raises(ConfigError, match="binds IPv4"):
        resolve_interfaces(["::1"], HERE)


def test_this_machine_has_a_loopback_by_name() -> None:
    interfaces = local_interfaces()
    loopback = next(name for name, ips in interfaces.items() if "127.0.0.1" in ips)
    assert resolve_interfaces([loopback]) == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("interface", "message"),
    [
        ("wlan-nope", "error: no interface named 'wlan-nope'; interfaces: "),
        ("192.0.2.77", "error: no interface here has the address 192.0.2.77; interfaces: "),
    ],
)
def test_discover_with_a_bad_interface_is_one_line(interface: str, message: str) -> None:
    line = one_error(run("discover", "--interface", interface, "--timeout", "0.5", "--json"))
    assert line.startswith(message)


@pytest.mark.integration
def test_discover_accepts_the_loopback_by_name() -> None:
    name = next(n for n, ips in local_interfaces().items() if "127.0.0.1" in ips)
    proc = run("discover", "--interface", name, "--timeout", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr


def test_relay_invalid_address() -> None:
    assert one_error(run("relay", "status", "999.1.1.1:80", "--timeout", "2")) == (
        "error: 999.1.1.1:80 is not a valid address"
    )


def test_relay_unresolvable_host_is_not_called_refused() -> None:
    line = one_error(run("relay", "status", "no-such-plug.invalid", "--timeout", "5"))
    assert line.startswith("error: no-such-plug.invalid:80 cannot be resolved")
    assert "refused" not in line


def test_relay_closed_port_is_refused() -> None:
    port = backends.free_port()
    line = one_error(run("relay", "on", f"127.0.0.1:{port}", "--timeout", "5"))
    assert line == f"error: 127.0.0.1:{port} refused the connection (nothing listens on that port)"


def test_relay_silent_plug_times_out() -> None:
    """A plug that accepts the connection and never answers: a timeout, and no relay command was sent."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        line = one_error(run("relay", "on", f"127.0.0.1:{port}", "--timeout", "0.5"))
    assert line.startswith(f"error: 127.0.0.1:{port} did not answer /shelly within 0.5 s")
