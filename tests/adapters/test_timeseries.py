"""Time series: exact line protocol, a sink that never loses points silently, and real VictoriaMetrics."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import backends
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargectl.common.codec import PlugRun
from chargectl.common.readings import Reading
from chargectl.services.adapters.influx_sink import InfluxSettings, InfluxSink
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.adapters.timeseries import SessionEvent, reading_lines, run_lines, session_line

R1 = Reading("AABBCCDDEEFF", 1_767_225_600_000, 2301.5, 1_234_567, True, 239.9, 9.61, 41.2, 0, 300)
R2 = Reading("AABBCCDDEEFF", 1_767_225_605_000, 0.0, 1_234_570, False)


def test_reading_lines_are_exact_line_protocol() -> None:
    assert reading_lines("car park 1", [R1, R2], "CHARGING") == [
        "plug,site_id=car\\ park\\ 1,mac=AABBCCDDEEFF power_w=2301.5,energy_wh=1234.567,relay=1i,voltage_v=239.9,"
        'current_a=9.61,temperature_c=41.2,state="CHARGING",state_code=3i 1767225600000',
        'plug,site_id=car\\ park\\ 1,mac=AABBCCDDEEFF power_w=0.0,energy_wh=1234.57,relay=0i,state="CHARGING",'
        "state_code=3i 1767225605000",
    ]
    assert reading_lines("s", [], "AVAILABLE") == []


def test_session_line() -> None:
    ev = SessionEvent(
        5, "site-a", "AABBCCDDEEFF", "sess-1", 'u"1', "finished", 7_250, 245, "gbp", "EVDisconnected"
    )
    assert session_line(ev) == (
        'session,site_id=site-a,mac=AABBCCDDEEFF,kind=finished session_id="sess-1",user_id="u\\"1",energy_wh=7.25,'
        'cost_minor=245i,currency="gbp",stop_reason="EVDisconnected" 5'
    )


def test_a_newline_in_a_value_never_splits_a_line() -> None:
    """Line protocol cannot carry a newline in a tag or field value; one would end the line there and
    make a line of the rest (written as a point of its own, or refusing the batch)."""
    ev = SessionEvent(
        5, "site\na", "AABBCCDDEEFF", "sess-1", "u1\nplug,mac=X power_w=9 1", "fin\rished", 0, 0, "gbp", ""
    )
    line = session_line(ev)
    assert "\n" not in line and "\r" not in line
    assert line.startswith("session,site_id=site\\ a,mac=AABBCCDDEEFF,kind=fin\\ ished ")
    assert 'user_id="u1 plug,mac=X power_w=9 1"' in line


@pytest.mark.integration
def test_a_batch_the_server_refuses_lines_of_is_not_sent_again_for_ever(
    influxdb_server: backends.Server,
) -> None:
    """InfluxDB writes the valid lines of a batch and answers 400 for the rest. The sink used to send the
    same batch again for ever, with every later point queued behind it: one bad line stopped the time
    series. Now the batch is done (counted as a failure) and the points after it are written."""
    sink = InfluxSink(
        InfluxSettings(url=influxdb_server.url, api="v1", batch_lines=3, flush_interval_s=0.05, timeout_s=5)
    )
    tag = uuid.uuid4().hex[:8]
    try:
        sink.add_lines(
            [f"refused,run={tag} v=1 1000", "refused,run=x\n v=2 2000", f"refused,run={tag} v=3 3000"]
        )
        sink.add_lines([f"refused,run={tag} v=4 4000", f"refused,run={tag} v=5 5000"])
        assert sink.flush(timeout_s=30)
        stats = sink.stats()
        assert stats.pending == 0 and stats.failures == 1 and stats.written == 2 and stats.dropped == 0
        query = urllib.parse.urlencode({"db": "chargectl", "q": f"SELECT v FROM refused WHERE run = '{tag}'"})
        with urllib.request.urlopen(f"{influxdb_server.url}/query?{query}", timeout=10) as resp:
            values = [v for _, v in json.load(resp)["results"][0]["series"][0]["values"]]
        assert values == [1, 3, 4, 5]  # the refused batch's valid lines, and everything after it
    finally:
        sink.close(timeout_s=5)


class FlakyWriter:
    """Fails the first ``failures`` writes, then records every line it is given."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.lines: list[str] = []
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, lines: list[str]) -> None:
        with self.lock:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionError("connection refused")
            self.lines.extend(lines)


def _settings(**kw: object) -> InfluxSettings:
    base: dict[str, object] = {
        "batch_lines": 10,
        "max_pending_lines": 100,
        "flush_interval_s": 0.01,
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
    }
    base.update(kw)
    return InfluxSettings(**base)  # type: ignore[arg-type]


def test_sink_retries_without_losing_or_duplicating(caplog: pytest.LogCaptureFixture) -> None:
    writer = FlakyWriter(failures=4)
    sink = InfluxSink(_settings(), writer=writer)
    lines = [f"m v={i}i {i}" for i in range(35)]
    sink.add_lines(lines)
    assert sink.flush(timeout_s=10)
    sink.close()
    assert writer.lines == lines
    stats = sink.stats()
    assert (stats.written, stats.dropped, stats.pending, stats.failures) == (35, 0, 0, 4)
    outage_logs = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage_logs) == 1  # logged once per outage, not per retry


def test_points_arriving_during_an_outage_do_not_turn_the_back_off_into_a_retry_per_point() -> None:
    """During an outage a full batch is always queued, so every new point notified the writer, which
    woke from its back-off and retried at once: one failed write per point the hub added, hammering a
    backend that is down. The back-off now holds, whatever arrives."""
    writer = FlakyWriter(failures=10**9)  # down for good
    sink = InfluxSink(
        _settings(retry_initial_s=30.0, retry_max_s=30.0, max_pending_lines=10_000), writer=writer
    )
    try:
        sink.add_lines([f"m v={i}i {i}" for i in range(10)])  # a full batch: the first write fails
        deadline = time.monotonic() + 30
        # failures is counted under the sink's lock, which the writer then only lets go of in its
        # back-off wait: once stats() (which takes the lock) sees it, the writer is waiting.
        while sink.stats().failures < 1:
            assert time.monotonic() < deadline, "the writer never tried"
            time.sleep(0.01)
        for i in range(200):  # the hub keeps adding points, each call notifying the writer
            sink.add_lines([f"m v={i}i {1000 + i}"])
            time.sleep(0.001)  # and the writer gets to run between them
        calls = writer.calls  # read long before the 30 s back-off can have ended
        assert calls == 1, f"{calls} writes during one 30 s back-off"
        assert sink.stats().pending == 210 and sink.stats().dropped == 0  # nothing lost meanwhile
    finally:
        sink.close(timeout_s=0.2)


def test_sink_overflow_drops_oldest_and_counts_exactly(caplog: pytest.LogCaptureFixture) -> None:
    writer = FlakyWriter(failures=10**9)  # down for good
    sink = InfluxSink(_settings(max_pending_lines=50), writer=writer)
    sink.add_lines([f"m v={i}i {i}" for i in range(80)])
    assert sink.stats().dropped == 30 and sink.stats().pending == 50
    assert sum("buffer full" in r.getMessage() for r in caplog.records) == 1
    assert not sink.flush(timeout_s=0.2)
    sink.close(timeout_s=0.2)
    assert sink.stats().dropped == 80 and sink.stats().pending == 0  # unwritten at close are counted too
    assert any("unwritten" in r.getMessage() for r in caplog.records)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        InfluxSettings(batch_lines=0)
    with pytest.raises(ValueError):
        InfluxSettings(batch_lines=100, max_pending_lines=10)


def test_sqlite_timeseries_keeps_readings(tmp_path: Path) -> None:
    ts = SqliteTimeSeries(tmp_path / "ts.db")
    ts.add_readings("site-a", [R1, R2], "CHARGING")
    ts.add_session_event(SessionEvent(5, "site-a", "AABBCCDDEEFF", "s", "u", "started"))
    assert ts.readings("AABBCCDDEEFF") == [
        (R1.ts_ms, 2301.5, 1_234_567, True),
        (R2.ts_ms, 0.0, 1_234_570, False),
    ]
    assert ts.stats().written == 3
    ts.close()


def _export(server: backends.Server, match: str, expect: int) -> dict[str, dict[str, object]]:
    deadline = time.monotonic() + 30
    series: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline:
        urllib.request.urlopen(server.url + "/internal/force_flush", timeout=10).close()
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{server.url}/api/v1/export?{q}", timeout=10) as r:
            rows = [json.loads(x) for x in r.read().decode().splitlines() if x.strip()]
        series = {str(row["metric"]["__name__"]): row for row in rows}
        if series and all(len(s["values"]) >= expect for s in series.values()):  # type: ignore[arg-type]
            return series
        time.sleep(0.3)
    return series


def _wait_failures(sink: InfluxSink, at_least: int) -> None:
    """Wait (generously) until the sink has failed ``at_least`` writes in all."""
    deadline = time.monotonic() + 60
    while sink.stats().failures < at_least:
        assert time.monotonic() < deadline, f"the sink failed {sink.stats().failures} writes, not {at_least}"
        time.sleep(0.01)


# Failed writes the outage must outlast. The sink never gives up on time: it retries until the write
# succeeds, its back-off doubling from retry_initial_s up to retry_max_s. At the service's defaults
# (0.5 s doubling to 30 s) the 120th failed write comes 0.5+1+2+4+8+16 s + 113 x 30 s = 57 minutes
# into an outage (a one-minute outage there is 7 of them); a one-minute outage at a 0.5 s cap was ~120.
OUTAGE_FAILED_WRITES = 120


@pytest.mark.integration
@pytest.mark.parametrize("api", ["v2", "v1"])
def test_sink_survives_a_victoriametrics_outage(tmp_path: Path, api: str) -> None:
    """VictoriaMetrics killed while the hub keeps producing points, then restarted on the same port and
    data: nothing is lost, duplicated or reordered (all 250 points, values and timestamps), nothing is
    counted dropped. The outage is measured in what the sink sees, not in seconds: the server stays down
    until the sink has failed OUTAGE_FAILED_WRITES writes (its back-off at the cap for all but the
    first), as many as a 57-minute outage at the default back-off, with the 150 points produced during
    the outage spread across those failures; the back-off is scaled down so that takes seconds."""
    if backends.missing("victoriametrics"):
        pytest.skip(backends.missing("victoriametrics") or "")
    workdir = tmp_path / "vm"
    server = backends.start_victoriametrics(workdir)
    site = f"s{uuid.uuid4().hex[:8]}"
    sink = InfluxSink(
        InfluxSettings(
            url=server.url,
            api=api,
            batch_lines=50,
            flush_interval_s=0.05,  # type: ignore[arg-type]
            retry_initial_s=0.005,
            retry_max_s=0.01,
            timeout_s=2,
        )
    )
    t0 = 1_767_225_600_000
    try:
        first = [Reading("AABBCCDDEEFF", t0 + i * 1000, float(i), i * 10, True) for i in range(100)]
        sink.add_readings(site, first, "CHARGING")
        assert sink.flush(timeout_s=20)
        server.stop()  # the database goes away
        for i in range(100, 250):  # the hub keeps producing points throughout the outage
            sink.add_readings(
                site, [Reading("AABBCCDDEEFF", t0 + i * 1000, float(i), i * 10, True)], "CHARGING"
            )
            if i % 5 == 4:  # 5 points per 4 failed writes: spread over the whole outage
                _wait_failures(sink, (i - 99) * 4 // 5)
        _wait_failures(sink, OUTAGE_FAILED_WRITES)
        stats = sink.stats()
        assert stats.pending == 150 and stats.dropped == 0 and stats.written == 100
        server = backends.start_victoriametrics(workdir, port=server.port)  # same port, same data
        assert sink.flush(timeout_s=30)
        stats = sink.stats()
        assert stats.dropped == 0 and stats.pending == 0 and stats.written == 250
        series = _export(server, f'{{__name__="plug_power_w",site_id="{site}"}}', 250)
        power = series["plug_power_w"]
        assert power["values"] == [float(i) for i in range(250)]
        assert power["timestamps"] == [t0 + i * 1000 for i in range(250)]
    finally:
        sink.close(timeout_s=2)
        server.stop()


_optional_float = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))
_sample = st.tuples(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.floats(allow_nan=False, min_value=0.0, max_value=5000.0),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.booleans(),
    _optional_float,
    _optional_float,
    _optional_float,
    st.sampled_from([0, 0, 0, 1, 2**40]),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**40)),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.lists(_sample, max_size=8), st.lists(_sample, min_size=1, max_size=1).map(lambda s: s * 5)),
    st.sampled_from(["site-a", "car park 1", "a,b=c", "we{ird}"]),
    st.sampled_from(["CHARGING", "AVAILABLE", 'odd"state', "NOT_A_STATE"]),
)
def test_run_lines_and_rows_equal_the_per_reading_ones(
    samples: list[tuple[Any, ...]], site: str, state: str
) -> None:
    """A decoded run writes exactly the lines (Influx, VictoriaMetrics) and rows (SQLite) its readings
    would: same values, same absent fields, same order, whatever the mix of present and absent values."""
    rows = [Reading("AABBCCDDEEFF", *s) for s in samples]
    run = PlugRun("AABBCCDDEEFF", *(list(col) for col in zip(*samples, strict=True))) if samples else None
    if run is None:
        run = PlugRun("AABBCCDDEEFF", [], [], [], [], [], [], [], [], [])
    assert run_lines(site, run, state) == reading_lines(site, rows, state)
    by_readings, by_run = SqliteTimeSeries(":memory:"), SqliteTimeSeries(":memory:")
    by_readings.add_readings(site, rows, state)
    by_run.add_run(site, run, state)
    query = "SELECT * FROM readings ORDER BY rowid"
    assert by_run._db.execute(query).fetchall() == by_readings._db.execute(query).fetchall()
    assert by_run.stats() == by_readings.stats()


def test_influx_sink_queues_a_runs_lines() -> None:
    writer = FlakyWriter(0)
    sink = InfluxSink(InfluxSettings(url="http://unused", flush_interval_s=0.05), writer=writer)
    try:
        run = PlugRun(
            "AABBCCDDEEFF",
            [5, 10],
            [1.5, 0.0],
            [1000, 1001],
            [True, False],
            [230.0, None],
            [1.0, None],
            [20.0, None],
            [0, 4],
            [7, None],
        )
        sink.add_run("s", run, "CHARGING")
        assert sink.flush(30)
        assert writer.lines == reading_lines("s", list(run.readings()), "CHARGING")
    finally:
        sink.close()
