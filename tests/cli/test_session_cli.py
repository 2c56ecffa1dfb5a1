"""Operator commands against the embedded store, answered by a real hub running in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chargectl.cli.app import app
from chargectl.common import codec
from chargectl.common.keys import SigningKey
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings

runner = CliRunner()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def hub_thread(state_dir: Path) -> Iterator[Hub]:
    state_dir.mkdir(parents=True)
    key = SigningKey.generate()
    holder: dict[str, Hub] = {}
    ready = threading.Event()
    stop = threading.Event()

    def main() -> None:
        async def serve() -> None:
            store = SqliteStore(state_dir / "chargectl.db")
            hub = Hub(
                HubSettings(request_poll_s=0.05),
                HubPorts(MemoryBus(), store, SqliteTimeSeries(":memory:"), lambda site, now_ms: key),
            )
            await hub.start()
            holder["hub"] = hub
            ready.set()
            while not stop.is_set():
                await hub.poll_requests()
                await asyncio.sleep(0.05)
            await hub.stop()
            store.close()

        asyncio.run(serve())

    t = threading.Thread(target=main, daemon=True)
    t.start()
    assert ready.wait(10)
    yield holder["hub"]
    stop.set()
    t.join(10)


def test_start_on_unknown_plug_is_rejected_with_reason(state_dir: Path, hub_thread: Hub) -> None:
    env = {"CHARGECTL_STATE_DIR": str(state_dir)}
    result = runner.invoke(
        app, ["session", "start", "--user", "u1", "--plug", "aa:bb:cc:dd:ee:ff", "--json"], env=env
    )
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["status"] == "REJECTED" and out["reason"] == "unknown_plug"


def test_bad_mac_is_one_line(state_dir: Path) -> None:
    result = runner.invoke(
        app,
        ["session", "start", "--user", "u1", "--plug", "nope"],
        env={"CHARGECTL_STATE_DIR": str(state_dir)},
    )
    assert result.exit_code == 1


def test_list_and_plugs_json(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    store = SqliteStore(state_dir / "chargectl.db")
    store.put_session(
        codec.ChargeSession(
            session_id="s1",
            user_id="u1",
            plug_mac="AABBCCDDEEFF",
            status=2,
            started_at_ms=5,
            energy_mwh=1_500_000,
            cost=codec.Money(amount_minor=45, currency="gbp"),
        )
    )
    store.put_plug_state(codec.PlugState(plug_mac="AABBCCDDEEFF", site_id="site-a", status=3, power_w=1800.0))
    store.close()
    env = {"CHARGECTL_STATE_DIR": str(state_dir)}
    result = runner.invoke(app, ["session", "list", "--json", "--user", "u1"], env=env)
    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.output)
    assert doc["session_id"] == "s1" and doc["energy_mwh"] == 1_500_000 and doc["cost"]["amount_minor"] == 45
    result = runner.invoke(app, ["plugs", "--json"], env=env)
    assert result.exit_code == 0
    (plug,) = json.loads(result.output)
    assert plug["status"] == "CHARGING" and plug["power_w"] == 1800.0
    table = runner.invoke(app, ["plugs"], env={**env, "COLUMNS": "200"})
    assert "CHARGING" in table.output and "AABBCCDDEEFF" in table.output
