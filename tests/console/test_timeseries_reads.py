"""The chart reads of the time-series port, the same data through SQLite, through VictoriaMetrics
(written by the Influx sink, read over its Prometheus API) and through InfluxDB 1.x (written by the sink's
v1 API, read over InfluxQL): equal buckets, values checked by hand."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import backends
import pytest
from console_helpers import wait_for

from chargectl.common.errors import StoreError
from chargectl.common.readings import Reading
from chargectl.services.adapters.influx_sink import InfluxSettings, InfluxSink
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.adapters.timeseries import PowerPoint, TimeSeries

T0 = 1_767_268_800_000  # 2026-01-01T12:00:00Z, a multiple of 15 s
A, B, C = "AABBCCDDEE01", "AABBCCDDEE02", "AABBCCDDEE03"

# A: 0, 10, … 110 W every 5 s for a minute; B (same site): 1000 W; C (another site): 5 W.
# 15 s buckets [T0, T0+15 s) … hold three readings each: A's means are 10, 40, 70, 100 W.
PLUG_A = [PowerPoint(T0 + k * 15_000, w) for k, w in enumerate((10.0, 40.0, 70.0, 100.0))]
SITE_1 = [PowerPoint(p.ts_ms, p.power_w + 1000.0) for p in PLUG_A]


def _load(ts: TimeSeries) -> None:
    ts.add_readings(
        "site-1", [Reading(A, T0 + i * 5000, 10.0 * i, 100 * i, True) for i in range(12)], "CHARGING"
    )
    ts.add_readings("site-1", [Reading(B, T0 + i * 5000, 1000.0, 0, True) for i in range(12)], "CHARGING")
    ts.add_readings("site-2", [Reading(C, T0 + i * 5000, 5.0, 0, True) for i in range(12)], "CHARGING")


def _check(ts: TimeSeries) -> None:
    assert ts.plug_power(A, T0, T0 + 60_000, 15_000) == PLUG_A
    assert ts.site_power("site-1", T0, T0 + 60_000, 15_000) == SITE_1
    assert ts.site_power("site-2", T0, T0 + 60_000, 15_000) == [
        PowerPoint(T0 + k * 15_000, 5.0) for k in range(4)
    ]
    # a window that cuts the data: only the buckets it touches, and nothing of an unknown plug
    assert ts.plug_power(A, T0 + 15_000, T0 + 30_000, 15_000) == [PLUG_A[1]]
    assert ts.plug_power("FFFFFFFFFFFF", T0, T0 + 60_000, 15_000) == []


def test_sqlite_chart_reads(tmp_path: Path) -> None:
    ts = SqliteTimeSeries(tmp_path / "ts.db")
    try:
        _load(ts)
        _check(ts)
        # one-minute buckets: A's mean over all twelve readings is 55 W
        assert ts.plug_power(A, T0, T0 + 60_000, 60_000) == [PowerPoint(T0, 55.0)]
        with pytest.raises(ValueError):
            ts.plug_power(A, T0, T0, 15_000)
        with pytest.raises(ValueError):
            ts.plug_power(A, T0, T0 + 86_400_000 * 7, 1)  # too many buckets for one read
    finally:
        ts.close()


@pytest.mark.integration
def test_victoriametrics_chart_reads_match_sqlite(victoria_metrics: backends.Server) -> None:
    sink = InfluxSink(
        InfluxSettings(url=victoria_metrics.url, batch_lines=100, flush_interval_s=0.05, timeout_s=5)
    )
    try:
        _load(sink)
        assert sink.flush(timeout_s=30)

        def visible() -> bool:
            urllib.request.urlopen(victoria_metrics.url + "/internal/force_flush", timeout=10).close()
            return sink.site_power("site-1", T0, T0 + 60_000, 15_000) == SITE_1

        wait_for("the points to be queryable", visible, timeout_s=60)
        _check(sink)
    finally:
        sink.close(timeout_s=5)


def test_an_unreachable_query_api_is_a_store_error() -> None:
    port = backends.free_port()  # nothing listens there
    sink = InfluxSink(InfluxSettings(url=f"http://127.0.0.1:{port}", token="secret-token-value", timeout_s=2))
    try:
        with pytest.raises(StoreError) as err:
            sink.plug_power(A, T0, T0 + 60_000, 15_000)
        assert "secret-token-value" not in str(err.value)
    finally:
        sink.close(timeout_s=0.5)


@pytest.mark.integration
def test_influxdb_chart_reads_match_sqlite(influxdb_server: backends.Server, tmp_path: Path) -> None:
    settings = InfluxSettings(
        url=influxdb_server.url,
        api="v1",
        chart_query="influxql",
        batch_lines=100,
        flush_interval_s=0.05,
        timeout_s=5,
    )
    sink = InfluxSink(settings)
    sqlite = SqliteTimeSeries(tmp_path / "ts.db")
    try:
        _load(sink)
        _load(sqlite)
        assert sink.flush(timeout_s=30)
        _check(sink)  # InfluxDB answers a write once it returned: nothing to wait for
        assert sink.plug_power(A, T0, T0 + 60_000, 60_000) == [PowerPoint(T0, 55.0)]  # 0..110 W: 55 W
        # Windows that cut buckets: the first and last buckets hold only the points inside, as in SQLite
        # (A from T0+20 s to T0+50 s: 40 and 50 W, then 60, 70, 80 W, then 90 W).
        assert sink.plug_power(A, T0 + 20_000, T0 + 50_000, 15_000) == [
            PowerPoint(T0 + 15_000, 45.0),
            PowerPoint(T0 + 30_000, 70.0),
            PowerPoint(T0 + 45_000, 90.0),
        ]
        for since, until, step in ((T0 + 20_000, T0 + 50_000, 15_000), (T0 - 7_000, T0 + 33_000, 10_000)):
            assert sink.plug_power(A, since, until, step) == sqlite.plug_power(A, since, until, step)
            assert sink.site_power("site-1", since, until, step) == sqlite.site_power(
                "site-1", since, until, step
            )
        # A hostile tag value stays inside its literal: it matches nothing rather than every plug.
        for hostile in ("x' OR mac =~ /.*/ --", "\\' OR 1=1", "site-1'\n"):
            assert sink.plug_power(hostile, T0, T0 + 60_000, 15_000) == []
            assert sink.site_power(hostile, T0, T0 + 60_000, 15_000) == []
    finally:
        sink.close(timeout_s=5)
        sqlite.close()


def test_an_influxql_error_answer_is_a_store_error(influxdb_server: backends.Server) -> None:
    sink = InfluxSink(
        InfluxSettings(url=influxdb_server.url, api="v1", chart_query="influxql", database="no-such-db")
    )
    try:
        with pytest.raises(StoreError, match="refused"):
            sink.plug_power(A, T0, T0 + 60_000, 15_000)
    finally:
        sink.close(timeout_s=0.5)
