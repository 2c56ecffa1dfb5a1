"""The agent's /metrics and /healthz on ``[agent] health_port``: served by a real agent over real HTTP,
the same family names as in ``chargectl run``, and health that says what is wrong."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import httpx
import pytest

from chargectl.common.alerts import AlertKind
from chargectl.common.errors import ConfigError, DeviceUnreachableError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.provisioner.local import provision_local_site
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.agent import Agent, AgentSettings
from chargectl.services.agent.health import AgentHealth
from chargectl.services.agent.metrics import agent_problems, instrument_agent
from chargectl.services.hub.health import Metrics
from chargectl.services.metrics import exported_names

SITE = "carpark-1"
HEALTHY = AgentHealth(SITE, 1, 3, 3, True, True, 42, 0, 0, 0, 0, 5, 40, 1_767_225_600_000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_agent_health_problems() -> None:
    assert agent_problems(HEALTHY) == []
    down = dataclasses.replace(HEALTHY, link_up=False, commands_subscribed=False, plugs_online=0)
    assert agent_problems(down) == [
        "no link to the bus: batches are spooled",
        "not subscribed to relay commands",
        "none of 3 plugs answers",
    ]


def test_agent_families_have_catalogue_names_and_the_snapshot_values() -> None:
    snapshot = dataclasses.replace(HEALTHY, spooled_batches=7, spooled_bytes=9000, dropped_batches=2)
    m = Metrics(process_metrics=False)
    instrument_agent(m, SITE, lambda: snapshot)
    text = m.render()
    assert f'chargectl_agent_spooled_batches{{site="{SITE}"}} 7.0' in text
    assert f'chargectl_agent_dropped_batches_total{{site="{SITE}"}} 2.0' in text
    assert "# TYPE chargectl_agent_dropped_batches_total counter" in text
    assert f'chargectl_agent_last_publish_timestamp_seconds{{site="{SITE}"}} 1.7672256e+09' in text
    known = exported_names()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.split("{")[0].split(" ")[0] in known, line


def test_health_port_is_validated() -> None:
    with pytest.raises(ConfigError, match="health_port"):
        AgentSettings(site_id=SITE, health_port=70000)


async def test_agent_serves_metrics_and_healthz_on_its_port(tmp_path: Path) -> None:
    port = _free_port()
    settings = AgentSettings(
        site_id=SITE, discovery=False, plugs=[], state_dir=tmp_path, health_port=port, heartbeat_interval_s=1
    )

    async def connector(host: str, port: int) -> object:
        raise DeviceUnreachableError(f"{host}:{port} unreachable")

    agent = Agent(settings, MemoryBus(), SigningKey.generate(), Keyring(), connector)  # type: ignore[arg-type]
    ready = asyncio.Event()
    task = asyncio.create_task(agent.serve(ready=ready.set))
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert f'chargectl_agent_up{{site="{SITE}"}} 1.0' in metrics.text
            assert (
                "chargectl_agent_spooled_bytes" in metrics.text
                and "process_cpu_seconds_total" in metrics.text
            )
            health = await client.get("/healthz")
            body = health.json()
            assert body["problems"] == agent_problems(agent.health())
            assert health.status_code == (200 if body["ok"] else 503)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)
    with pytest.raises(httpx.ConnectError):  # the port is closed with the agent
        httpx.get(base + "/healthz", timeout=5)


async def test_run_serves_hub_and_agent_families_under_the_same_names(tmp_path: Path) -> None:
    from webhook_receiver import webhook_receiver

    from chargectl.common.config import load_config
    from chargectl.services.allinone import AllInOne

    with webhook_receiver() as hook:
        cfg = tmp_path / "chargectl.toml"
        cfg.write_text(
            f'backend = "local"\nstate_dir = "{tmp_path / "state"}"\nconfig_dir = "{tmp_path / "config"}"\n'
            '[run]\nsite_id = "run-site"\nhealth = false\n[agent]\ndiscovery = false\n'
            f'[[alerts.webhooks]]\nurl = "{hook.url}"\nformat = "slack"\n'
        )
        system = AllInOne(load_config(cfg), provision_local_site)
        try:
            await system.start()
            assert system.hub is not None and system.notifier is not None
            text = system.hub.metrics.render()
            lone = Metrics(process_metrics=False)
            instrument_agent(lone, "run-site", lambda: HEALTHY)

            def names(t: str) -> set[str]:
                return {ln.split("{")[0].split(" ")[0] for ln in t.splitlines() if ln and ln[0] != "#"}

            assert names(lone.render()) <= names(text)  # a lone agent's families, in run's registry
            assert 'chargectl_agent_up{site="run-site"} 1.0' in text
            assert "chargectl_command_latency_seconds_count" in text
            # The run's alert book reaches the configured webhook.
            system.hub.alerts.raise_alert(
                AlertKind.PLUG_FAULTED,
                "AABBCCDDEEFF",
                "relay stuck",
                1,
            )
            assert system.notifier.flush(30)
            hook.wait_for(lambda bodies: any("relay stuck" in b.get("text", "") for b in bodies))
        finally:
            if system.notifier is not None:
                system.notifier.close()
            await system.bus.close()
            system.timeseries.close()
            system.store.close()


async def test_health_port_in_use_is_one_clear_error_and_the_agent_shuts_down(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = AgentSettings(
            site_id=SITE, discovery=False, plugs=[], state_dir=tmp_path, health_port=port
        )

        async def connector(host: str, port: int) -> object:
            raise DeviceUnreachableError(host)

        agent = Agent(settings, MemoryBus(), SigningKey.generate(), Keyring(), connector)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"\[agent\] health_port"):
            await asyncio.wait_for(agent.serve(), 30)
        assert agent._tasks == []  # every loop it had started was stopped
        assert (tmp_path / "agent.heartbeat.json").exists()  # and it shut down the normal way
