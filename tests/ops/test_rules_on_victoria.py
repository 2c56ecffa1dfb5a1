"""The shipped alert rules evaluated by a real PromQL engine (VictoriaMetrics) over what /metrics
actually exports: a hub with a faulted plug and an old checkpoint and an agent that stopped publishing
fire their rules; a healthy hub and agent fire none."""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import backends
import httpx
import pytest
from ruamel.yaml import YAML

from chargectl.common.alerts import AlertBook, AlertKind
from chargectl.services.agent.health import AgentHealth
from chargectl.services.agent.metrics import instrument_agent
from chargectl.services.alerting import instrument_hub
from chargectl.services.hub.health import Metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = {
    r["alert"]: r["expr"]
    for g in YAML(typ="safe").load((ROOT / "scripts" / "prometheus" / "alerts.yml").read_text())["groups"]
    for r in g["rules"]
}
INSTANT_RULES = ("ChargectlPlugFaulted", "ChargectlCheckpointOld", "ChargectlSiteSilent")


def _hub_text(faulted: int, checkpoint_age_s: float, silent_site: bool) -> str:
    m = Metrics()
    m.gauge_probe("plugs", lambda: {(("state", "FAULTED"),): float(faulted), (("state", "AVAILABLE"),): 3.0})
    book = AlertBook()
    if silent_site:
        book.raise_alert(AlertKind.SITE_SILENT, "site-a", "no telemetry for 20 min", 1)
    clock = [0.0]  # the hub's monotonic clock: started at 0, last checkpoint at 100 s
    instrument_hub(m, book, lambda: clock[0], lambda: 100.0)
    clock[0] = 100.0 + checkpoint_age_s
    return m.render()


def _push(vm: backends.Server, text: str, instance: str) -> None:
    q = urllib.parse.urlencode({"extra_label": f"instance={instance}"})
    resp = httpx.post(f"{vm.url}/api/v1/import/prometheus?{q}", content=text.encode(), timeout=30)
    assert resp.status_code in (200, 204), resp.text
    httpx.get(vm.url + "/internal/force_flush", timeout=30)


def _firing(vm: backends.Server, expr: str, instance: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{vm.url}/api/v1/query", params={"query": expr}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success", body
    return [r for r in body["data"]["result"] if r["metric"].get("instance") == instance]


def _wait_firing(
    vm: backends.Server, expr: str, instance: str, timeout_s: float = 60
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = _firing(vm, expr, instance)
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def _wait_present(vm: backends.Server, instance: str, timeout_s: float = 60) -> None:
    """Until the pushed samples are searchable (so "no result" means the rule does not fire)."""
    deadline = time.monotonic() + timeout_s
    while not _firing(vm, "chargectl_checkpoint_age_seconds >= 0", instance):
        assert time.monotonic() < deadline, "pushed samples never became searchable"
        time.sleep(0.2)


def test_instant_rules_fire_on_a_broken_hub_and_not_on_a_healthy_one(
    victoria_metrics: backends.Server,
) -> None:
    broken, healthy = f"broken-{uuid.uuid4().hex[:8]}", f"healthy-{uuid.uuid4().hex[:8]}"
    _push(victoria_metrics, _hub_text(faulted=2, checkpoint_age_s=3600, silent_site=True), broken)
    _push(victoria_metrics, _hub_text(faulted=0, checkpoint_age_s=30, silent_site=False), healthy)
    _wait_present(victoria_metrics, healthy)
    for alert in INSTANT_RULES:
        fired = _wait_firing(victoria_metrics, RULES[alert], broken)
        assert fired, f"{alert} did not fire on the broken hub"
        assert _firing(victoria_metrics, RULES[alert], healthy) == [], f"{alert} fired on a healthy hub"
    (faulted,) = _firing(victoria_metrics, RULES["ChargectlPlugFaulted"], broken)
    assert float(faulted["value"][1]) == 2


def test_agent_not_publishing_fires_only_for_a_stale_agent(victoria_metrics: backends.Server) -> None:
    now_ms = int(time.time() * 1000)
    fresh = AgentHealth("site-a", now_ms, 2, 2, True, True, 9, 0, 0, 0, 0, 0, 9, now_ms - 5_000)
    stale = dataclasses.replace(fresh, last_publish_ms=now_ms - 3_600_000, link_up=False)
    ok_i, stale_i = f"agent-ok-{uuid.uuid4().hex[:8]}", f"agent-stale-{uuid.uuid4().hex[:8]}"
    for inst, snapshot in ((ok_i, fresh), (stale_i, stale)):
        m = Metrics(process_metrics=False)
        instrument_agent(m, "site-a", lambda s=snapshot: s)  # type: ignore[misc]
        m.gauge_probe("checkpoint_age_seconds", lambda: {(): 0.0})  # for _wait_present
        _push(victoria_metrics, m.render(), inst)
    _wait_present(victoria_metrics, ok_i)
    assert _wait_firing(victoria_metrics, RULES["ChargectlAgentNotPublishing"], stale_i)
    assert _firing(victoria_metrics, RULES["ChargectlAgentNotPublishing"], ok_i) == []
