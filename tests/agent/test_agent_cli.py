"""``chargectl agent`` and ``chargectl agent check`` through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chargectl.cli.app import app
from chargectl.common.clock import ManualClock
from chargectl.common.codec import SCHEMA_TELEMETRY, unpack_telemetry
from chargectl.common.keys import Keyring, SigningKey, save_private_key, save_public_key
from chargectl.common.topics import TELEMETRY_TOPIC
from chargectl.services.agent.health import AgentHealth, write_heartbeat
from chargectl.shelly.sim import SimFleet

runner = CliRunner()
CHARGECTL = str(Path(sys.executable).parent / "chargectl")


def site_bundle(tmp: Path, *, backend: str = "gcp", project: str = "p", plugs: str = "[]") -> Path:
    """A config directory as the provisioner writes it: config, agent key (0600), command public key."""
    agent_key = SigningKey.generate()
    save_private_key(tmp / "agent.key", agent_key)
    save_public_key(tmp / "command.pub", SigningKey.generate().public_bytes)
    (tmp / "agent.pub").write_bytes(agent_key.public_bytes)
    cfg = tmp / "chargectl.toml"
    cfg.write_text(
        f'backend = "{backend}"\nproject = "{project}"\nstate_dir = "{tmp / "state"}"\n'
        "[agent]\n"
        'site_id = "carpark-1"\nshard = 0\nagent_key_file = "agent.key"\n'
        'command_public_key_files = ["command.pub"]\n'
        "poll_interval_s = 0.2\nflush_interval_s = 1.0\ndiscovery = false\n"
        f"heartbeat_interval_s = 0.5\nplugs = {plugs}\n"
    )
    return cfg


def heartbeat(tmp: Path, at_ms: int) -> None:
    write_heartbeat(
        tmp / "state" / "agent.heartbeat.json",
        AgentHealth("carpark-1", at_ms, 3, 2, True, True, 17, 0, 0, 0, 0, 4, 17, at_ms),
    )


def test_check_fresh_stale_and_missing(tmp_path: Path) -> None:
    cfg = site_bundle(tmp_path)
    missing = runner.invoke(app, ["agent", "check", "--config", str(cfg)])
    assert missing.exit_code == 1 and "has not run" in missing.output
    heartbeat(tmp_path, int(time.time() * 1000))
    fresh = runner.invoke(app, ["--config", str(cfg), "agent", "check"])
    assert fresh.exit_code == 0, fresh.output
    assert "carpark-1" in fresh.output and "2/3 plugs online" in fresh.output
    heartbeat(tmp_path, int(time.time() * 1000) - 300_000)
    stale = runner.invoke(app, ["agent", "check", "--config", str(cfg)])
    assert stale.exit_code == 1 and "old (limit 60s)" in stale.output
    lenient = runner.invoke(app, ["agent", "check", "--config", str(cfg), "--max-age", "600", "--json"])
    assert lenient.exit_code == 0
    data = json.loads(lenient.output)
    assert data["fresh"] is True and data["health"]["batch_seq"] == 17


def test_help_texts() -> None:
    result = runner.invoke(app, ["agent", "--help"])
    assert result.exit_code == 0 and "check" in result.output and "--config" in result.output
    result = runner.invoke(app, ["agent", "check", "--help"])
    assert result.exit_code == 0 and "--max-age" in result.output


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARGECTL, *args], capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )


def test_local_backend_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = site_bundle(tmp_path, backend="local")
    result = run_cli("agent", "--config", str(cfg))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'backend = "gcp"' in lines[0] and "Traceback" not in result.stderr


def test_missing_site_id_and_unreadable_key_are_one_line_errors(tmp_path: Path) -> None:
    cfg = site_bundle(tmp_path)
    (tmp_path / "agent.key").chmod(0o644)
    result = run_cli("agent", "--config", str(cfg))
    assert result.returncode == 1 and "chmod 600" in result.stderr and "Traceback" not in result.stderr
    cfg.write_text(cfg.read_text().replace('site_id = "carpark-1"\n', ""))
    result = run_cli("agent", "check", "--config", str(cfg))
    assert result.returncode == 1 and "agent.site_id is required" in result.stderr


class ThreadedFleet:
    """A simulator fleet on its own loop in a thread (the agent runs in another process)."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def __enter__(self) -> SimFleet:
        self.thread.start()
        self.call(self.fleet.start())
        return self.fleet

    def __exit__(self, *exc: object) -> None:
        self.call(self.fleet.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def fleet() -> Iterator[SimFleet]:
    with ThreadedFleet(SimFleet.build(2, "mix", profile="ev", clock=ManualClock(), seed=3)) as f:
        yield f


@pytest.mark.integration
def test_agent_service_runs_publishes_and_stops_on_sigterm(
    pubsub_env: Any, fleet: SimFleet, tmp_path: Path
) -> None:
    from google.cloud import pubsub_v1

    project = f"cli-{uuid.uuid4().hex[:8]}"
    plugs = "[" + ", ".join(f'{{ host = "{p.host}", port = {p.port} }}' for p in fleet.plugs) + "]"
    cfg = site_bundle(tmp_path, project=project, plugs=plugs)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, TELEMETRY_TOPIC)
    sub = subscriber.subscription_path(project, "hub-0")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    proc = subprocess.Popen(
        [CHARGECTL, "agent", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        keyring = Keyring()
        keyring.add_public((tmp_path / "agent.pub").read_bytes(), "carpark-1")
        macs: set[str] = set()
        for _ in range(300):
            resp = subscriber.pull(subscription=sub, max_messages=50, timeout=10)
            for m in resp.received_messages:
                if m.message.attributes["schema"] == SCHEMA_TELEMETRY:
                    macs |= {r.mac for r in unpack_telemetry(m.message.data, keyring).readings}
            if resp.received_messages:
                subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in resp.received_messages])
            if macs == {p.mac for p in fleet.plugs}:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert macs == {p.mac for p in fleet.plugs}
        check = run_cli("agent", "check", "--config", str(cfg))
        assert check.returncode == 0 and "2/2 plugs online" in check.stdout, check.stdout + check.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        publisher.stop()
        subscriber.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err


def test_systemd_unit_runs_the_agent_and_restarts_on_failure() -> None:
    import configparser

    unit = Path(__file__).resolve().parents[2] / "scripts" / "systemd" / "chargectl-agent.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["ExecStart"] == "/opt/chargectl/bin/chargectl agent --config /etc/chargectl/agent.toml"
    assert service["Restart"] == "on-failure" and service["StateDirectory"] == "chargectl"
    assert service["KillSignal"] == "SIGTERM"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert "PASSWORD=" not in unit.read_text().replace("CHARGECTL_SHELLY_PASSWORD=...", "")


def test_benchmark_script_runs_and_reports_its_numbers() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_agent.py"
    args = ["--plugs", "3", "--seconds", "1", "--poll-interval", "0.2", "--flush-interval", "0.3", "--json"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["plugs"] == 3 and result["polls"] > 0 and result["readings_published"] > 0
    assert result["cpu_ms_per_poll"] > 0 and 0 < result["bytes_per_reading"] < 200


def test_check_exits_1_naming_a_disk_problem_in_a_fresh_heartbeat(tmp_path: Path) -> None:
    import dataclasses

    cfg = site_bundle(tmp_path)
    now = int(time.time() * 1000)
    health = AgentHealth("carpark-1", now, 3, 3, True, True, 17, 0, 0, 0, 0, 4, 17, now)
    health = dataclasses.replace(
        health,
        disk_error="cannot write /var/lib/chargectl/spool/x.batch: No space left on device",
        memory_batches=4,
    )
    write_heartbeat(tmp_path / "state" / "agent.heartbeat.json", health)
    result = runner.invoke(app, ["agent", "check", "--config", str(cfg)])
    assert result.exit_code == 1
    assert "DISK: cannot write /var/lib/chargectl/spool/x.batch: No space left on device" in result.output
    assert "4 batches held in memory" in result.output
    data = json.loads(runner.invoke(app, ["agent", "check", "--config", str(cfg), "--json"]).output)
    assert data["fresh"] is True and data["ok"] is False and data["problems"][0].startswith("DISK")
