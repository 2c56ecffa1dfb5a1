"""The request and health-probe library behind ``session start/stop`` and ``hub check`` (and the demo
and the benchmark): a request nobody answered expires and is never acted on later; the hub's answer
wins a race with the expiry; health failures name their cause."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chargectl.cli.app import app
from chargectl.common import codec
from chargectl.common.errors import ChargectlError, ConfigError
from chargectl.common.keys import SigningKey
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.health_probe import health_url, probe_health
from chargectl.services.hub.health import HealthServer, Metrics
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.payments.ledger import Ledger
from chargectl.services.requests import (
    Answer,
    expire_request,
    make_request,
    request_and_wait,
    submit_request,
    wait_for_answer,
)

runner = CliRunner()
START = codec.ChargeRequest.ACTION_START
MAC = "AABBCCDDEEFF"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state" / "chargectl.db")
    yield s
    s.close()


def test_make_request_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"(?i)mac"):
        make_request("u1", "not-a-mac", START, 0)
    with pytest.raises(ConfigError, match="user"):
        make_request("  ", MAC, START, 0)
    with pytest.raises(ConfigError, match="action"):
        make_request("u1", MAC, 7, 0)
    req = make_request("u1", "aa:bb:cc:dd:ee:ff", START, 5)
    assert req.plug_mac == MAC and req.status == codec.ChargeRequest.STATUS_PENDING


def test_wait_gives_up_at_the_deadline_without_oversleeping(store: SqliteStore) -> None:
    req = submit_request(store, "u1", MAC, START, 1)
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    got = wait_for_answer(store, req.request_id, 1.0, poll_s=0.3, monotonic=lambda: now[0], sleep=sleep)
    assert got is not None and got.status == codec.ChargeRequest.STATUS_PENDING
    assert sum(slept) == pytest.approx(1.0) and max(slept) <= 0.3


def test_unanswered_request_expires_and_a_later_hub_never_acts_on_it(
    store: SqliteStore, tmp_path: Path
) -> None:
    Ledger(store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    answer = request_and_wait(store, "u1", MAC, START, 0.2, poll_s=0.05)
    assert answer.status == "expired" and answer.reason == "expired"
    assert store.pending_requests() == []

    async def late_hub() -> None:
        hub = Hub(
            HubSettings(),
            HubPorts(MemoryBus(), store, SqliteTimeSeries(":memory:"), lambda s, t: SigningKey.generate()),
        )
        await hub.start()
        await hub.poll_requests()
        await hub.stop()

    asyncio.run(late_hub())
    req = store.get_request(answer.request_id)
    # Had the hub seen it, it would have answered (unknown_plug here); it stays expired.
    assert req is not None and req.reason == "expired"
    assert store.list_sessions() == [] and Ledger(store).balance("u1") == 1000


def test_the_hubs_answer_wins_a_race_with_the_expiry(store: SqliteStore) -> None:
    req = submit_request(store, "u1", MAC, START, 1)
    assert store.answer_request(req.request_id, codec.ChargeRequest.STATUS_ACCEPTED, "", "sess-x", 2)
    got = expire_request(store, req.request_id, 3)
    assert got is not None and Answer.of(got) == Answer(req.request_id, "accepted", "", "sess-x")


def test_cli_session_start_without_a_hub_expires_its_request(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = runner.invoke(
        app,
        ["session", "start", "--user", "u1", "--plug", MAC, "--wait", "0.2", "--json"],
        env={"CHARGECTL_STATE_DIR": str(state)},
    )
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    out = json.loads(lines[0])
    assert out["status"] == "EXPIRED"
    # The one-line error main() prints: a ChargectlError naming the expiry (no traceback).
    assert isinstance(result.exception, ChargectlError) and "expired" in str(result.exception)
    assert "\n" not in str(result.exception)
    s = SqliteStore(state / "chargectl.db")
    try:
        assert s.pending_requests() == []
        req = s.get_request(out["request_id"])
        assert req is not None and req.status == codec.ChargeRequest.STATUS_REJECTED
    finally:
        s.close()


# ------------------------------------------------------------------ the health probe


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[str]]]:
    problems: list[str] = []
    loop = asyncio.new_event_loop()
    server = HealthServer(Metrics(process_metrics=False), lambda: list(problems))
    port = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port, problems
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_healthy_and_unhealthy(health_server: tuple[int, list[str]]) -> None:
    port, problems = health_server
    url = health_url("127.0.0.1", port)
    assert probe_health(url).ok
    problems.append("telemetry subscriber stopped")
    health = probe_health(url)
    assert not health.ok and health.problems == ["telemetry subscriber stopped"]
    # Not a health endpoint: answered, but no report.
    other = probe_health(health_url("127.0.0.1", port, "/metrics"))
    assert not other.ok and "without a health report" in other.problems[0]


def test_probe_failures_name_their_cause() -> None:
    refused = probe_health(health_url("127.0.0.1", _free_port()), 5)
    assert not refused.ok and "refused the connection" in refused.problems[0]
    unresolved = probe_health("http://no-such-host.invalid:8080/healthz", 5)
    assert not unresolved.ok and "cannot resolve" in unresolved.problems[0]
    invalid = probe_health("http://999.1.1.1:80:1/healthz", 5)
    assert not invalid.ok and invalid.problems[0].startswith(("invalid address", "cannot resolve"))
    assert health_url("::1", 9) == "http://[::1]:9/healthz"


def test_cli_hub_check(health_server: tuple[int, list[str]], tmp_path: Path) -> None:
    port, problems = health_server
    env = {"CHARGECTL_STATE_DIR": str(tmp_path), "CHARGECTL_HUB__HEALTH_PORT": str(port)}
    ok = runner.invoke(app, ["hub", "check", "--json"], env=env)
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    problems.append("checkpoint is 2 h old")
    bad = runner.invoke(app, ["hub", "check"], env=env)
    assert bad.exit_code == 1 and bad.output.strip() == "hub unhealthy: checkpoint is 2 h old"
    down = runner.invoke(app, ["hub", "check"], env={**env, "CHARGECTL_HUB__HEALTH_PORT": str(_free_port())})
    assert down.exit_code == 1 and "refused the connection" in down.output
