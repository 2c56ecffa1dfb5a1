"""``chargectl discover``, ``relay`` and ``sim``: subprocesses over real loopback, and the error boundary."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from shelly_support import ThreadedFleet
from typer.testing import CliRunner

from chargectl.cli.app import app, main
from chargectl.common.clock import ManualClock
from chargectl.shelly.sim import SimFleet
from chargectl.shelly.simdevice import make_profile

CHARGECTL = str(Path(sys.executable).parent / "chargectl")
runner = CliRunner()


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARGECTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env or dict(os.environ),
    )


@pytest.fixture
def sim_process() -> Iterator[Callable[..., dict[str, Any]]]:
    """Start ``chargectl sim … --json`` in its own process group; returns its plug listing. Killed after."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> dict[str, Any]:
        proc = subprocess.Popen(
            [CHARGECTL, "sim", *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "chargectl sim printed nothing"
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "sim exited"
        return dict(json.loads(line))

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        finally:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def sim_control(plug: dict[str, Any], action: str) -> Any:
    with urllib.request.urlopen(f"http://{plug['host']}:{plug['port']}/__sim/{action}", timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.integration
def test_sim_discover_relay_flip_back(sim_process: Callable[..., dict[str, Any]]) -> None:
    listing = sim_process("--plugs", "6", "--gen", "mix")
    plugs = listing["plugs"]
    assert sorted(p["gen"] for p in plugs) == [1, 1, 2, 2, 3, 4]

    found = run_cli("discover", "--json", "--timeout", "5", "--interface", "127.0.0.1")
    assert found.returncode == 0, found.stderr
    # Other test runs on this machine may advertise plugs on loopback too: only ours are compared.
    macs = {p["mac"] for p in plugs}
    discovered = [p for p in json.loads(found.stdout) if p["mac"] in macs]
    assert {(p["mac"], p["gen"]) for p in discovered} == {(p["mac"], p["gen"]) for p in plugs}
    assert len(discovered) == 6
    assert set(discovered[0]) >= {"mac", "gen", "model", "firmware", "host", "port", "auth", "switchable"}

    gen2 = next(p for p in plugs if p["gen"] == 2)
    target = f"{gen2['host']}:{gen2['port']}"
    on = run_cli("relay", "on", target, "--auto-off", "60")
    assert on.returncode == 0, on.stderr
    status = run_cli("relay", "status", target, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["on"] is True and data["mac"] == gen2["mac"] and data["gen"] == 2
    assert set(data) >= {"mac", "gen", "on", "power_w", "energy_wh", "voltage_v", "temperature_c", "errors"}
    assert sim_control(gen2, "state")["timer_remaining_s"] > 0

    sim_control(gen2, "advance?s=60")  # 60 s of simulated time, no real sleep
    after = json.loads(run_cli("relay", "status", target, "--json").stdout)
    assert after["on"] is False

    by_mac = run_cli(
        "relay", "status", gen2["mac"].lower(), "--json", "--timeout", "3", "--interface", "127.0.0.1"
    )
    assert by_mac.returncode == 0, by_mac.stderr
    assert json.loads(by_mac.stdout)["port"] == gen2["port"]


@pytest.mark.integration
def test_sim_with_password_and_env_password(sim_process: Callable[..., dict[str, Any]]) -> None:
    plugs = sim_process("--plugs", "2", "--gen", "1", "--password", "pw", "--no-mdns")["plugs"]
    target = f"{plugs[0]['host']}:{plugs[0]['port']}"
    refused = run_cli("relay", "status", target)
    assert refused.returncode == 1
    assert "password" in refused.stderr and "Traceback" not in refused.stderr
    env = dict(os.environ, CHARGECTL_SHELLY_PASSWORD="pw")
    ok = run_cli("relay", "toggle", target, "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["on"] is True
    assert "pw" not in ok.stdout
    # The device's login name is --device-user (--user elsewhere means a driver's account).
    wrong = run_cli("relay", "status", target, "--device-user", "someone-else", env=env)
    assert wrong.returncode == 1 and "rejected the credentials for 'someone-else'" in wrong.stderr, (
        wrong.stderr
    )
    right = run_cli("relay", "status", target, "--device-user", "admin", "--json", env=env)
    assert right.returncode == 0 and json.loads(right.stdout)["on"] is True, right.stderr


# --- in-process: the error boundary against a threaded simulator --------------------------------------


@pytest.fixture
def plugs(threaded_fleet: Callable[[SimFleet], ThreadedFleet]) -> ThreadedFleet:
    profiles = [
        make_profile(1, "C11000000001"),
        make_profile(3, "C11000000003", password="pw"),
        make_profile(3, "C11000000009", model="S3PL-30116EU", metering_only=True),
    ]
    return threaded_fleet(SimFleet(profiles, clock=ManualClock(), loads=["ev", "ebike", "idle"]))


def invoke_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("hang", "did not answer"),
        ("refuse", "refused the connection"),
        ("reset", "dropped the connection"),
        ("unauthorized", "requires a password"),
        ("non_json", "not JSON"),
    ],
)
def test_faults_are_one_line_errors(
    fault: str, needle: str, plugs: ThreadedFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    plug = plugs.fleet.plugs[0]
    plugs.call(plug.inject(fault))
    code, _, err = invoke_main(capsys, "relay", "status", plug.address, "--timeout", "0.5")
    assert code == 1
    assert err.startswith("error: ") and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.integration
def test_a_short_429_spell_is_ridden_out(plugs: ThreadedFleet, capsys: pytest.CaptureFixture[str]) -> None:
    plug = plugs.fleet.plugs[0]
    plugs.call(plug.inject("throttle", count=1))  # one 2 s back-off, then the answer
    code, out, _ = invoke_main(capsys, "relay", "status", plug.address, "--json")
    assert code == 0 and json.loads(out)["mac"] == plug.mac
    assert [e.status for e in plug.log][-2:] == [429, 200]


@pytest.mark.integration
def test_relay_status_and_switching(plugs: ThreadedFleet, capsys: pytest.CaptureFixture[str]) -> None:
    gen1, gen3, meter = plugs.fleet.plugs
    code, out, _ = invoke_main(capsys, "relay", "on", gen1.address, "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["on"], data["power_w"], data["gen"], data["voltage_v"]) == (True, 2300.0, 1, None)
    assert gen1.truth().relay_on
    code, out, _ = invoke_main(capsys, "relay", "off", gen1.address)
    assert code == 0 and "relay off" in out and not gen1.truth().relay_on

    code, out, _ = invoke_main(
        capsys, "relay", "on", gen3.address, "--password", "pw", "--auto-off", "30", "--json"
    )
    assert code == 0 and json.loads(out)["power_w"] == 150.0
    assert gen3.truth().timer_remaining_s == 30

    code, _, err = invoke_main(capsys, "relay", "on", gen3.address, "--password", "bad")
    assert code == 1 and "rejected the password" in err

    code, _, err = invoke_main(capsys, "relay", "on", meter.address)
    assert code == 1 and "metering-only" in err
    code, out, _ = invoke_main(capsys, "relay", "status", meter.address, "--json")
    assert code == 0 and json.loads(out)["switchable"] is False


def test_bad_target_is_a_usage_error() -> None:
    result = runner.invoke(app, ["relay", "status", "no:such:thing"])
    assert result.exit_code == 2
    assert "neither host[:port] nor a MAC" in result.output


def test_sim_rejects_bad_generation(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke_main(capsys, "sim", "--gen", "5", "--no-mdns")
    assert code == 1 and "--gen must be 1, 2, 3, 4 or mix" in err


@pytest.mark.parametrize("command", [["discover"], ["relay", "on"], ["relay", "status"], ["sim"]])
def test_help_texts(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_target_parsing() -> None:
    from chargectl.cli.commands.relay import parse_target

    assert parse_target("aa:bb:cc:dd:ee:ff") == ("AABBCCDDEEFF", None, 80)
    assert parse_target("10.0.0.7") == (None, "10.0.0.7", 80)
    assert parse_target("plug.local:8080") == (None, "plug.local", 8080)


def test_sim_live_table_renders() -> None:
    from rich.console import Console

    from chargectl.cli.commands.sim import _table

    clock = ManualClock()
    fleet = SimFleet(
        [make_profile(1, "7AB100000001"), make_profile(4, "7AB100000004")], clock=clock, loads="ev"
    )
    fleet.plugs[0].device.switch(True, timer_s=90)
    clock.advance(30)
    console = Console(record=True, width=200)
    console.print(_table(fleet))
    text = console.export_text()
    assert "7AB100000001" in text and "S4PL-00116US" in text
    assert "2300.0" in text and "19.167" in text and "60" in text  # 2300 W for 30 s; 60 s left on the timer


def test_sim_rejects_a_host_that_is_not_ipv4(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke_main(capsys, "sim", "--host", "localhost", "--no-mdns")
    assert code == 1 and "--host must be an IPv4 address" in err


@pytest.mark.integration
def test_sim_listens_on_the_given_host(sim_process: Callable[..., dict[str, Any]]) -> None:
    plugs = sim_process("--plugs", "1", "--gen", "2", "--no-mdns", "--host", "127.0.0.2")["plugs"]
    assert plugs[0]["host"] == "127.0.0.2"
    status = run_cli("relay", "status", f"127.0.0.2:{plugs[0]['port']}", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["mac"] == plugs[0]["mac"]
