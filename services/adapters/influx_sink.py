"""Batched, buffered writes of line protocol to InfluxDB 2/3 (``influxdb-client``) or 1.x (``/write?db=``).

A bounded in-memory queue sits between the hub and the database: the hub only appends lines and never
waits for InfluxDB. A writer thread sends batches of up to ``batch_lines`` (5,000 is InfluxDB's advice) and
removes them from the queue only once the write succeeded, retrying with exponential back-off while
the database is down. If the queue overflows, the oldest lines are dropped, counted and logged — never
silently.

With a ``spool_dir`` (the hub passes ``<state_dir>/influx-spool``) the queue survives a stop or a crash
while the database is down: whenever a write fails, the lines not yet on disk are appended to
``pending.lp`` there (every ``flush_interval_s`` while down), closing keeps what is unwritten on disk
instead of dropping it, and the next start queues the file again (its newest ``max_pending_lines``;
older lines are dropped and counted). Writing a point twice is harmless in InfluxDB (same series and
time: one point), so the file is removed only once everything in it was written. Without a spool
directory, closing counts (and logs) anything still unwritten as dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from chargectl.common.codec import PlugRun
from chargectl.common.errors import StoreError
from chargectl.common.readings import Reading
from chargectl.services.adapters.influxql import influxql_plug_power, influxql_site_power, read_json
from chargectl.services.adapters.timeseries import (
    PowerPoint,
    SessionEvent,
    TimeSeriesStats,
    check_window,
    reading_lines,
    run_lines,
    session_line,
)

__all__ = ["InfluxSettings", "InfluxSink", "RefusedLines"]

log = logging.getLogger("chargectl.influx")


@dataclass(frozen=True)
class InfluxSettings:
    """``[influx]``: where and how to write. ``token`` is a secret and is never logged."""

    url: str = "http://127.0.0.1:8086"
    api: Literal["v2", "v1"] = "v2"
    token: str = ""
    org: str = "chargectl"
    bucket: str = "chargectl"
    database: str = "chargectl"
    batch_lines: int = 5000
    max_pending_lines: int = 1_000_000
    flush_interval_s: float = 1.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    timeout_s: float = 10.0
    # Chart reads: "prometheus" asks /api/v1/query_range (VictoriaMetrics serves it), "influxql" asks
    # /query (InfluxDB 1.x, and 2 and 3 through their v1 query API); query_url empty = url.
    chart_query: Literal["prometheus", "influxql"] = "prometheus"
    query_url: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_lines <= 100_000:
            raise ValueError("batch_lines must be between 1 and 100000")
        if self.max_pending_lines < self.batch_lines:
            raise ValueError("max_pending_lines must be at least batch_lines")
        if self.flush_interval_s <= 0 or self.retry_initial_s <= 0 or self.retry_max_s < self.retry_initial_s:
            raise ValueError(
                "flush_interval_s and retry_initial_s must be positive, retry_max_s >= retry_initial_s"
            )


Writer = Callable[[list[str]], None]
_REFUSED = (400, 422)  # the server read the lines and refused (some of) them: not worth sending again


class RefusedLines(StoreError):
    """A writer's batch was read and (partly) refused by the server: malformed lines, a type conflict.
    Not retried (see ``InfluxSink._run``)."""


class InfluxSink:
    """A :class:`~chargectl.services.adapters.timeseries.TimeSeries` that writes to InfluxDB in the background."""

    SPOOL_FILE = "pending.lp"

    def __init__(
        self, settings: InfluxSettings, writer: Writer | None = None, spool_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self._write, self._close_writer = (writer, None) if writer else self._make_writer()
        self._queue: deque[str] = deque()
        self._spool = spool_dir / self.SPOOL_FILE if spool_dir is not None else None
        self._spilled = 0  # the first _spilled lines of the queue are in the spool file
        self._spool_lines = 0  # lines in the spool file (written ones included until it is removed)
        self._cond = threading.Condition()
        self._written = 0
        self._dropped = 0
        self._failures = 0
        self._refused_batches = 0  # batches the server refused lines of (not retried)
        self._overflowing = False
        self._down_since: float | None = None
        self._flush_requested = False
        self._stopping = False
        self._load_spool()
        self._thread = threading.Thread(target=self._run, name="chargectl-influx", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side (the hub)

    def add_lines(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        with self._cond:
            self._queue.extend(lines)
            excess = len(self._queue) - self.settings.max_pending_lines
            if excess > 0:
                for _ in range(excess):
                    self._queue.popleft()
                self._spilled = max(0, self._spilled - excess)
                self._dropped += excess
                if not self._overflowing:
                    self._overflowing = True
                    log.warning(
                        "time-series buffer full (%d lines): dropping the oldest points",
                        self.settings.max_pending_lines,
                    )
            if len(self._queue) >= self.settings.batch_lines:
                self._cond.notify()

    def add_readings(self, site_id: str, readings: Sequence[Reading], state: str) -> None:
        self.add_lines(reading_lines(site_id, readings, state))

    def add_run(self, site_id: str, run: PlugRun, state: str) -> None:
        self.add_lines(run_lines(site_id, run, state))

    def add_session_event(self, event: SessionEvent) -> None:
        self.add_lines([session_line(event)])

    def stats(self) -> TimeSeriesStats:
        with self._cond:
            return TimeSeriesStats(self._written, self._dropped, len(self._queue), self._failures)

    def flush(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while self._queue and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            return not self._queue

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout_s + self.settings.timeout_s)
        with self._cond:
            if self._queue and self._spool is not None and self._spill_locked():
                log.warning(
                    "time-series sink closed with %d unwritten points: kept on disk", len(self._queue)
                )
                self._queue.clear()
            elif self._queue:
                lost = len(self._queue)
                self._dropped += lost
                self._queue.clear()
                log.error("time-series sink closed with %d unwritten points (counted as dropped)", lost)
        if self._close_writer:
            self._close_writer()

    # ------------------------------------------------------------------ reads (charts)

    def plug_power(self, mac: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]:
        if self.settings.chart_query == "influxql":
            return influxql_plug_power(self.settings, mac, since_ms, until_ms, step_ms)
        check_window(since_ms, until_ms, step_ms)
        window = f"{max(1, step_ms // 1000)}s"
        query = f'avg_over_time(plug_power_w{{mac="{_promql_str(mac)}"}}[{window}])'
        return prometheus_range(self.settings, query, since_ms, until_ms, step_ms)

    def site_power(self, site_id: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]:
        if self.settings.chart_query == "influxql":
            return influxql_site_power(self.settings, site_id, since_ms, until_ms, step_ms)
        check_window(since_ms, until_ms, step_ms)
        window = f"{max(1, step_ms // 1000)}s"
        query = f'sum(avg_over_time(plug_power_w{{site_id="{_promql_str(site_id)}"}}[{window}]))'
        return prometheus_range(self.settings, query, since_ms, until_ms, step_ms)

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        backoff = self.settings.retry_initial_s
        while True:
            with self._cond:
                if (
                    not self._stopping
                    and len(self._queue) < self.settings.batch_lines
                    and not self._flush_requested
                ):
                    self._cond.wait(self.settings.flush_interval_s)
                if self._stopping and (not self._queue or self._down_since is not None):
                    return
                if not self._queue:
                    self._flush_requested = False
                    self._cond.notify_all()
                    continue
                batch = [self._queue[i] for i in range(min(self.settings.batch_lines, len(self._queue)))]
            refused = False
            try:
                self._write(batch)
            except RefusedLines as exc:
                # The server read the batch and refused lines of it (HTTP 400/422): InfluxDB keeps the
                # valid lines of such a batch, and sending it again would be refused again, for ever,
                # with every later point queued behind it. So the batch is done; the refusal is counted.
                refused = True
                log.error("time-series server refused lines of a batch of %d: %s", len(batch), _describe(exc))
            except Exception as exc:  # any other failure: keep the lines, back off, retry
                with self._cond:
                    self._failures += 1
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        log.warning("time-series backend unavailable (%s); buffering points", _describe(exc))
                    self._spill_locked()
                    # Sleep out the back-off: new points (which notify once a batch is queued, as it
                    # always is during an outage) must not turn it into a retry per point.
                    wait_s = min(backoff, self.settings.flush_interval_s) if self._spool else backoff
                    deadline = time.monotonic() + wait_s
                    while not self._stopping and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                backoff = min(backoff * 2, self.settings.retry_max_s)
                continue
            backoff = self.settings.retry_initial_s
            with self._cond:
                # Only lines still at the front were sent; overflow may have dropped some meanwhile.
                sent = len(batch)
                while sent and self._queue and self._queue[0] is batch[len(batch) - sent]:
                    self._queue.popleft()
                    sent -= 1
                    self._spilled = max(0, self._spilled - 1)
                if self._spilled == 0 and self._spool_lines:
                    self._remove_spool()
                if refused:
                    self._failures += 1
                    self._refused_batches += 1
                else:
                    self._written += len(batch)
                if self._down_since is not None:
                    log.info("time-series backend back after %.0f s", time.monotonic() - self._down_since)
                    self._down_since = None
                if len(self._queue) < self.settings.max_pending_lines // 2:
                    self._overflowing = False
                if not self._queue:
                    self._flush_requested = False
                self._cond.notify_all()

    # ------------------------------------------------------------------ the on-disk spool

    def _load_spool(self) -> None:
        if self._spool is None or not self._spool.exists():
            return
        try:
            lines = [ln for ln in self._spool.read_text(encoding="utf-8").splitlines() if ln]
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read the time-series spool %s (%s); its points are lost", self._spool, exc)
            return
        keep = lines[-self.settings.max_pending_lines :]
        if len(lines) > len(keep):
            self._dropped += len(lines) - len(keep)
            log.warning(
                "time-series spool held %d points; dropped the oldest %d", len(lines), len(lines) - len(keep)
            )
        self._queue.extend(keep)
        self._spilled = self._spool_lines = len(keep)
        if len(lines) > len(keep):
            self._spool_lines = len(lines)
        log.info("queued %d time-series points kept on disk by the last run", len(keep))

    def _spill_locked(self) -> bool:
        """Append the queued lines not yet on disk to the spool (call with the lock held); True if all are."""
        if self._spool is None:
            return False
        pending = len(self._queue) - self._spilled
        if pending <= 0:
            return True
        try:
            self._spool.parent.mkdir(parents=True, exist_ok=True)
            if self._spool_lines > 2 * self.settings.max_pending_lines:
                # Mostly lines written or dropped since: rewrite it with the queue alone (atomically).
                tmp = self._spool.with_suffix(".tmp")
                with tmp.open("w", encoding="utf-8") as f:
                    f.write("\n".join(self._queue) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._spool)
                self._spool_lines = len(self._queue)
            else:
                start = self._spilled
                with self._spool.open("a", encoding="utf-8") as f:
                    f.write("\n".join(itertools.islice(self._queue, start, None)) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                self._spool_lines += pending
        except OSError as exc:
            log.error(
                "cannot write the time-series spool %s (%s); points stay in memory only", self._spool, exc
            )
            return False
        self._spilled = len(self._queue)
        return True

    def _remove_spool(self) -> None:
        assert self._spool is not None
        try:
            self._spool.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the written time-series spool %s: %s", self._spool, exc)
            return
        self._spool_lines = 0

    # ------------------------------------------------------------------ transports

    def _make_writer(self) -> tuple[Writer, Callable[[], None] | None]:
        s = self.settings
        if s.api == "v1":
            import httpx

            client = httpx.Client(timeout=s.timeout_s)
            url = f"{s.url.rstrip('/')}/write"
            headers = {"Authorization": f"Token {s.token}"} if s.token else {}

            def write_v1(lines: list[str]) -> None:
                resp = client.post(
                    url,
                    params={"db": s.database, "precision": "ms"},
                    content="\n".join(lines),
                    headers=headers,
                )
                if resp.status_code in _REFUSED:
                    raise RefusedLines(f"HTTP {resp.status_code}: {resp.text[:300]}")
                if resp.status_code >= 300:
                    raise StoreError(f"InfluxDB v1 write returned HTTP {resp.status_code}")

            return write_v1, client.close

        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        idb = InfluxDBClient(
            url=s.url, token=s.token or "unused", org=s.org, timeout=int(s.timeout_s * 1000), retries=False
        )
        api = idb.write_api(write_options=SYNCHRONOUS)

        def write_v2(lines: list[str]) -> None:
            try:
                api.write(
                    bucket=s.bucket,
                    org=s.org,
                    record="\n".join(lines),
                    write_precision=cast(Any, WritePrecision.MS),
                )
            except ApiException as exc:
                if exc.status in _REFUSED:
                    raise RefusedLines(f"HTTP {exc.status}: {str(exc.body)[:300]}") from None
                raise

        return write_v2, idb.close


def _describe(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


# ---------------------------------------------------------------------- chart reads over HTTP


def _promql_str(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "")


def prometheus_range(
    settings: InfluxSettings, query: str, since_ms: int, until_ms: int, step_ms: int
) -> list[PowerPoint]:
    """Run a range query on the Prometheus API (``/api/v1/query_range``, as VictoriaMetrics serves it):
    ``query`` must look back one step (``[Ns]``); values come back per bucket ``[start, start + step)``,
    like the SQLite series. Any failure is a ``StoreError`` (the token is never part of it)."""

    step_s = max(1, step_ms // 1000)
    step_ms = step_s * 1000
    # A value at t covers (t - step, t]; asking at t = bucket end - 1 ms makes it [start, end) for
    # millisecond timestamps, the same buckets as the SQLite series.
    first_end = (since_ms // step_ms + 1) * step_ms - 1
    last_end = -(-until_ms // step_ms) * step_ms - 1
    params = {
        "query": query,
        "start": f"{first_end / 1000:.3f}",
        "end": f"{last_end / 1000:.3f}",
        "step": f"{step_s}s",
        "nocache": "1",
    }
    body = read_json(settings, "/api/v1/query_range", params)
    try:
        results = body["data"]["result"]
        points: dict[int, float] = {}
        for series in results:
            for ts, value in series["values"]:
                start = round(float(ts) * 1000) + 1 - step_ms
                if since_ms - step_ms < start < until_ms:
                    points[start] = points.get(start, 0.0) + float(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"time series read returned an unexpected answer: {type(exc).__name__}") from exc
    return [PowerPoint(ts, points[ts]) for ts in sorted(points)]
