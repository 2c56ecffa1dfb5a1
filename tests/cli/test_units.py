"""The systemd units: hardened, rated by ``systemd-analyze security``, and their ExecStart lines really run.

The templates live in the package (``provisioner/units``; ``scripts/systemd`` links to them) so the
provisioning bundle renders the agent's unit from the same file. Each ExecStart line is run here as
systemd would run it: the same argv (only the install prefix and the config path swapped for the
test's), ``NOTIFY_SOCKET`` on a real AF_UNIX datagram socket and ``JOURNAL_STREAM`` set, until the
service says READY=1 and WATCHDOG=1; then SIGTERM must end it cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from chargectl.provisioner.bundle import UNIT_NAME, _unit_text, unit_template

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "provisioner" / "units"
CHARGECTL = str(Path(sys.executable).parent / "chargectl")
SERVICES = ("agent", "hub", "app")
NOTIFYING = ("agent", "hub", "app")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections to (key, value) in order; systemd allows a key more than once, so no dict per section."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key, value))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: {found}"
    return found[0]


@pytest.mark.parametrize("service", SERVICES)
def test_each_unit_runs_unprivileged_and_hardened(service: str) -> None:
    unit = parse_unit((UNITS / f"chargectl-{service}.service").read_text())
    assert one(unit, "Service", "User") == "chargectl"
    assert one(unit, "Service", "EnvironmentFile") == f"-/etc/chargectl/{service}.env"
    assert one(unit, "Service", "ExecStart").startswith("/opt/chargectl/bin/chargectl ")
    assert one(unit, "Service", "ExecStart").endswith(f" --config /etc/chargectl/{service}.toml")
    for key, expected in {
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "PrivateDevices": "true",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectKernelLogs": "true",
        "ProtectControlGroups": "true",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "CapabilityBoundingSet": "",
        "StateDirectory": "chargectl",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
    }.items():
        assert one(unit, "Service", key) == expected, key
    assert "@system-service" in values(unit, "Service", "SystemCallFilter")
    # StartLimit* belong to [Unit]; in [Service] systemd ignores them.
    assert (
        int(one(unit, "Unit", "StartLimitIntervalSec")) > 0 and int(one(unit, "Unit", "StartLimitBurst")) > 0
    )
    assert not [k for k, _ in unit["Service"] if k.startswith("StartLimit")]
    assert "PASSWORD=" not in (UNITS / f"chargectl-{service}.service").read_text().replace(
        "CHARGECTL_SHELLY_PASSWORD=...", ""
    )


@pytest.mark.parametrize("service", NOTIFYING)
def test_notifying_units_have_a_watchdog(service: str) -> None:
    unit = parse_unit((UNITS / f"chargectl-{service}.service").read_text())
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    # The loops ping at least every few seconds (hub tick 1 s, agent heartbeat 5 s by default).
    assert int(one(unit, "Service", "WatchdogSec")) >= 30


def test_the_bundle_carries_the_template_and_scripts_systemd_links_to_it() -> None:
    assert _unit_text().decode() == unit_template(UNIT_NAME) == (UNITS / UNIT_NAME).read_text()
    for service in SERVICES:
        link = ROOT / "scripts" / "systemd" / f"chargectl-{service}.service"
        assert link.resolve() == (UNITS / f"chargectl-{service}.service").resolve()


def _exposure(unit_file: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("service", [*SERVICES, "bundle"])
def test_systemd_analyze_rates_every_unit_4_5_or_better(service: str, tmp_path: Path) -> None:
    if service == "bundle":
        unit_file = tmp_path / UNIT_NAME
        unit_file.write_bytes(_unit_text())
    else:
        unit_file = UNITS / f"chargectl-{service}.service"
    assert _exposure(unit_file) <= 4.5


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_rating_check_catches_an_unhardened_unit(tmp_path: Path) -> None:
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/opt/chargectl/bin/chargectl hub\n")
    assert _exposure(bare) > 4.5


# ----------------------------------------------------------------------------- ExecStart, really run


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []

    def wait_for(self, state: str, proc: subprocess.Popen[str], deadline_s: float = 150.0) -> None:
        end = time.monotonic() + deadline_s
        while state not in self.seen:
            assert proc.poll() is None, (
                f"exited {proc.returncode} before {state}: {proc.stderr.read() if proc.stderr else ''}"
            )
            assert time.monotonic() < end, f"no {state} within {deadline_s} s; got {self.seen}"
            self.sock.settimeout(1.0)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.seen.extend(data.splitlines())

    def close(self) -> None:
        self.sock.close()


def exec_start_argv(unit_text: str, config: Path) -> list[str]:
    """The unit's ExecStart, with this venv's chargectl and ``config`` for the /etc/chargectl one."""
    argv = shlex.split(one(parse_unit(unit_text), "Service", "ExecStart"))
    assert argv[0] == "/opt/chargectl/bin/chargectl"
    i = argv.index("--config")
    assert argv[i + 1].startswith("/etc/chargectl/") and i > 1, "the config comes after the command"
    return [CHARGECTL, *argv[1:i], "--config", str(config), *argv[i + 2 :]]


def run_until_ready(argv: list[str], env: dict[str, str], tmp: Path) -> str:
    """Start ``argv`` as systemd would; READY=1, then WATCHDOG=1, then SIGTERM exits 0. Returns stderr."""
    listener = NotifyListener(tmp / f"notify-{uuid.uuid4().hex[:6]}.sock")
    env = {**env, "NOTIFY_SOCKET": str(listener.path), "JOURNAL_STREAM": "8:123456"}
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        listener.wait_for("READY=1", proc)
        listener.wait_for("WATCHDOG=1", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        return err
    finally:
        listener.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def assert_journal_lines(stderr: str) -> None:
    """Our records are one line each with a priority, an ISO time and the level."""
    ours = [line for line in stderr.splitlines() if " chargectl." in line]
    assert ours, stderr
    for line in ours:
        assert re.match(
            r"^<[0-7]>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ", line
        ), line


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_hub_and_bundle_agent_exec_start_lines_run_and_notify(
    tmp_path: Path, pubsub_emulator, firestore_emulator, drongo_server, victoria_metrics
) -> None:  # type: ignore[no-untyped-def]
    project = f"units-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator.host,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
    }
    env.pop("CHARGECTL_CONFIG", None)
    import backends

    health_port = backends.free_port()
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text(f"""
backend = "gcp"
project = "{project}"
state_dir = "{tmp_path / "hub-state"}"
config_dir = "{tmp_path / "config"}"

[secrets]
endpoint = "{drongo_server.url}"
transport = "rest"

[influx]
url = "{victoria_metrics.url}"

[hub]
tick_interval_s = 0.2
request_poll_s = 0.2
health_port = {health_port}
""")
    bundle = tmp_path / "bundle"
    provision = subprocess.run(
        [CHARGECTL, "provision", "site", "Unit test car park", "--out", str(bundle), "--json",
         "--config", str(hub_toml)],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert provision.returncode == 0, provision.stderr
    assert json.loads(provision.stdout)

    hub_err = run_until_ready(
        exec_start_argv((UNITS / "chargectl-hub.service").read_text(), hub_toml), env, tmp_path
    )
    assert_journal_lines(hub_err)

    agent_env = {
        **env,
        "CHARGECTL_STATE_DIR": str(tmp_path / "agent-state"),
        "CHARGECTL_AGENT__DISCOVERY": "false",
        "CHARGECTL_AGENT__HEARTBEAT_INTERVAL_S": "0.5",
    }
    agent_unit = (bundle / UNIT_NAME).read_text()  # the unit the Pi actually gets
    agent_err = run_until_ready(exec_start_argv(agent_unit, bundle / "agent.toml"), agent_env, tmp_path)
    assert_journal_lines(agent_err)
    assert (tmp_path / "agent-state" / "agent.heartbeat.json").exists()
