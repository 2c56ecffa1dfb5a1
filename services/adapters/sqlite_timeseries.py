"""The embedded time series: readings and session events in SQLite tables (for ``chargectl run``)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path

from chargectl.common.codec import PlugRun
from chargectl.common.errors import StoreError
from chargectl.common.readings import Reading
from chargectl.services.adapters.timeseries import (
    STATE_CODES,
    PowerPoint,
    SessionEvent,
    TimeSeriesStats,
    check_window,
)

__all__ = ["SqliteTimeSeries"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    ts_ms INTEGER NOT NULL, site_id TEXT NOT NULL, mac TEXT NOT NULL, power_w REAL NOT NULL,
    energy_mwh INTEGER NOT NULL, relay_on INTEGER NOT NULL, voltage_v REAL, current_a REAL,
    temperature_c REAL, errors INTEGER NOT NULL, state_code INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS readings_mac_ts ON readings (mac, ts_ms);
CREATE INDEX IF NOT EXISTS readings_site_ts ON readings (site_id, ts_ms);
CREATE TABLE IF NOT EXISTS session_events (
    ts_ms INTEGER NOT NULL, site_id TEXT NOT NULL, mac TEXT NOT NULL, session_id TEXT NOT NULL,
    user_id TEXT NOT NULL, kind TEXT NOT NULL, energy_mwh INTEGER NOT NULL, cost_minor INTEGER NOT NULL,
    currency TEXT NOT NULL, stop_reason TEXT NOT NULL);
"""


class SqliteTimeSeries:
    """A :class:`~chargectl.services.adapters.timeseries.TimeSeries` on a local SQLite file."""

    def __init__(self, path: Path | str) -> None:
        try:
            if str(path) != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open time series {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._written = 0

    def add_readings(self, site_id: str, readings: Sequence[Reading], state: str) -> None:
        code = STATE_CODES.get(state, 0)
        rows = [
            (
                r.ts_ms,
                site_id,
                r.mac,
                r.power_w,
                r.energy_mwh,
                int(r.relay_on),
                r.voltage_v,
                r.current_a,
                r.temperature_c,
                r.errors,
                code,
            )
            for r in readings
        ]
        self._insert(rows)

    def add_run(self, site_id: str, run: PlugRun, state: str) -> None:
        """The rows :meth:`add_readings` writes for ``run.readings()``, zipped from the run's columns."""
        n = len(run.ts_ms)
        rows = list(
            zip(
                run.ts_ms,
                repeat(site_id, n),
                repeat(run.mac, n),
                run.power_w,
                run.energy_mwh,
                map(int, run.relay_on),
                run.voltage_v,
                run.current_a,
                run.temperature_c,
                run.errors,
                repeat(STATE_CODES.get(state, 0), n),
                strict=True,
            )
        )
        self._insert(rows)

    def _insert(self, rows: Sequence[tuple[object, ...]]) -> None:
        with self._lock:
            try:
                self._db.executemany("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.commit()
            except sqlite3.Error as exc:
                raise StoreError(f"time series write failed: {exc}") from exc
            self._written += len(rows)

    def add_session_event(self, event: SessionEvent) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO session_events VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        event.ts_ms,
                        event.site_id,
                        event.plug_mac,
                        event.session_id,
                        event.user_id,
                        event.kind,
                        event.energy_mwh,
                        event.cost_minor,
                        event.currency,
                        event.stop_reason,
                    ),
                )
                self._db.commit()
            except sqlite3.Error as exc:
                raise StoreError(f"time series write failed: {exc}") from exc
            self._written += 1

    def readings(self, mac: str, since_ms: int = 0) -> list[tuple[int, float, int, bool]]:
        """(ts_ms, power_w, energy_mwh, relay_on) for one plug, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT ts_ms, power_w, energy_mwh, relay_on FROM readings WHERE mac = ? AND ts_ms >= ? ORDER BY ts_ms",
                (mac, since_ms),
            ).fetchall()
        return [(int(t), float(p), int(e), bool(on)) for t, p, e, on in rows]

    def plug_power(self, mac: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]:
        check_window(since_ms, until_ms, step_ms)
        return self._query(
            "SELECT (ts_ms / ?) * ? AS b, AVG(power_w) FROM readings"
            " WHERE mac = ? AND ts_ms >= ? AND ts_ms < ? GROUP BY b ORDER BY b",
            (step_ms, step_ms, mac, since_ms, until_ms),
        )

    def site_power(self, site_id: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]:
        check_window(since_ms, until_ms, step_ms)
        return self._query(
            "SELECT b, SUM(p) FROM (SELECT (ts_ms / ?) * ? AS b, mac, AVG(power_w) AS p FROM readings"
            " WHERE site_id = ? AND ts_ms >= ? AND ts_ms < ? GROUP BY b, mac) GROUP BY b ORDER BY b",
            (step_ms, step_ms, site_id, since_ms, until_ms),
        )

    def _query(self, sql: str, args: tuple[object, ...]) -> list[PowerPoint]:
        with self._lock:
            try:
                rows = self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"time series read failed: {exc}") from exc
        return [PowerPoint(int(b), float(p)) for b, p in rows]

    def flush(self, timeout_s: float = 10.0) -> bool:
        return True

    def stats(self) -> TimeSeriesStats:
        return TimeSeriesStats(written=self._written, dropped=0, pending=0, failures=0)

    def close(self) -> None:
        with self._lock:
            self._db.close()
