"""/metrics through prometheus_client: every catalogue family with HELP from the first scrape (labelled
counters at 0), real counters and histograms, process metrics, the old call sites still working, and
the hub's latencies observed as histograms."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hub_rig import HubRig
from prometheus_client.parser import text_string_to_metric_families

from chargectl.common import codec
from chargectl.services.hub.health import Metrics
from chargectl.services.metrics import CATALOGUE, PREFIX, MetricSpec, exported_names, spec_for


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_family_is_declared_with_help_and_known_labels_at_zero() -> None:
    text = Metrics().render()
    families = _families(text)
    for spec in CATALOGUE:
        if spec.name.startswith("agent_"):
            continue  # registered by the agent's own instrumentation
        name = PREFIX + spec.name.removesuffix("_total")  # the parser names counters without _total
        fam = families.get(name)
        assert fam is not None, spec.name
        assert fam.type == spec.kind and fam.documentation == spec.help  # type: ignore[attr-defined]
    # A labelled counter reads 0 for every known reason before its first event, so rate() works.
    for reason in ("foreign_plug", "plug_limit", "not_finite", "too_old", "over_power", "in_future"):
        assert f'chargectl_readings_refused_total{{reason="{reason}"}} 0.0' in text
    assert 'chargectl_dead_lettered_total{reason="unverified"} 0.0' in text
    assert 'chargectl_plugs{state="FAULTED"} 0.0' in text
    assert "# TYPE chargectl_command_latency_seconds histogram" in text
    assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text
    # No HELP-less family anywhere.
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4 and line.split(" ", 3)[3].strip(), line


def test_catalogue_is_consistent() -> None:
    names = [s.name for s in CATALOGUE]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="_total"):
        MetricSpec("drops", "counter", "x")
    with pytest.raises(ValueError, match="_total"):
        MetricSpec("open_total", "gauge", "x")
    assert spec_for("timeseries_dropped_points") is spec_for("timeseries_dropped_points_total")
    assert "chargectl_command_latency_seconds_bucket" in exported_names()


def test_old_call_sites_keep_working() -> None:
    m = Metrics(process_metrics=False)
    m.set("command_latency_seconds", 0.3)  # the old gauge-of-last-round-trip: now one observation
    m.inc("command_latency_seconds_sum", 0.3)  # ignored: the histogram keeps its own sum
    assert m.value("command_latency_seconds") == 1
    assert m.value("command_latency_seconds_sum") == pytest.approx(0.3)
    m.gauge_probe("timeseries_dropped_points", lambda: {(): 12.0})  # cumulative: exported as a counter
    text = m.render()
    assert "# TYPE chargectl_timeseries_dropped_points_total counter" in text
    assert "chargectl_timeseries_dropped_points_total 12.0" in text
    assert m.value("timeseries_dropped_points") == 12
    m.inc("brand_new_total", 2, help_text="Something new", where="here")  # not in the catalogue
    assert m.value("brand_new_total", where="here") == 2
    assert "# HELP chargectl_brand_new_total Something new" in m.render()


def test_hostile_updates_never_raise_into_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics(process_metrics=False)
    caplog.set_level(logging.WARNING, logger="chargectl.metrics")
    m.inc("dead_lettered_total", reason="malformed", site="x")  # extra label
    m.inc("dead_lettered_total")  # missing label
    m.inc("readings_total", -5)  # a counter cannot go down
    m.set("readings_total", 3)  # a counter is not a gauge
    m.observe("open_sessions", 1.0)  # a gauge is not a histogram
    assert m.value("readings_total") == 0
    assert m.value("metrics_label_errors_total", family="dead_lettered_total") == 2
    assert m.value("metrics_label_errors_total", family="readings_total") == 2
    assert "dead_lettered_total takes labels ['reason']" in caplog.text

    def broken() -> dict[tuple[tuple[str, str], ...], float]:
        raise RuntimeError("store gone")

    m.gauge_probe("open_sessions", broken)
    text = m.render()  # one broken probe does not take /metrics down
    assert "# TYPE chargectl_open_sessions gauge" in text and "chargectl_readings_total 0.0" in text


async def test_hub_observes_command_and_request_latency_as_histograms(tmp_path: Path) -> None:
    rig = await HubRig.create(tmp_path)
    hub, clock = rig.hub, rig.clock
    await hub.start()
    try:
        assert await rig.send_readings("AABBCCDDEE01", 1500.0, relay_on=True, count=2)
        await rig.wait_commands(1)
        cmd = rig.commands[0]
        clock.advance(1.5)  # the agent answers 1.5 s after the hub signed the command
        hub.process_outcome(
            codec.CommandOutcome(
                cmd.command_id, rig.site, cmd.plug_mac, True, "executed", round(clock.now() * 1000), False
            )
        )
        assert hub.metrics.value("command_latency_seconds") == 1
        assert hub.metrics.value("command_latency_seconds_sum") == pytest.approx(1.5)
        assert hub.metrics.value("command_latency_seconds_bucket", le="2.0") == 1
        assert hub.metrics.value("command_latency_seconds_bucket", le="1.0") == 0
        # A request written 2.5 s ago for a plug the hub does not know is answered now.
        rig.store.add_request(
            codec.ChargeRequest(
                request_id="r1",
                user_id="u1",
                plug_mac="AABBCCDDEE99",
                action=codec.ChargeRequest.ACTION_START,
                status=codec.ChargeRequest.STATUS_PENDING,
                created_at_ms=round(clock.now() * 1000) - 2500,
            )
        )
        await hub.poll_requests()
        assert hub.metrics.value("requests_answered_total", outcome="rejected") == 1
        assert hub.metrics.value("request_latency_seconds_sum") == pytest.approx(2.5)
        text = hub.metrics.render()
        assert "chargectl_command_latency_seconds_count 1.0" in text
        assert 'chargectl_alerts_open{kind="unauthorized_draw"} 1.0' in text
        assert "chargectl_checkpoint_age_seconds" in text
    finally:
        await rig.close()
        rig.store.close()


def test_a_counter_replaced_by_a_probe_is_no_longer_incremented() -> None:
    m = Metrics(process_metrics=False)
    m.inc("timeseries_dropped_points_total", 3)
    m.gauge_probe("timeseries_dropped_points", lambda: {(): 7.0})
    m.inc("timeseries_dropped_points_total", 1)  # refused: the probe owns the family now
    assert m.value("timeseries_dropped_points_total") == 7
    assert "chargectl_timeseries_dropped_points_total 7.0" in m.render()


def test_checkpoint_age_counts_from_start_until_the_first_checkpoint() -> None:
    from chargectl.common.alerts import AlertBook
    from chargectl.services.alerting import instrument_hub

    m = Metrics(process_metrics=False)
    clock, last = [50.0], [0.0]  # the host has been up 50 s; the hub never checkpointed
    instrument_hub(m, AlertBook(), lambda: clock[0], lambda: last[0])
    clock[0] = 80.0
    assert m.value("checkpoint_age_seconds") == 30  # since the hub started, not since boot
    last[0], clock[0] = 90.0, 100.0
    assert m.value("checkpoint_age_seconds") == 10
