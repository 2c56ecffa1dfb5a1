"""The time-series port and the line-protocol builders the Influx sink (and the benchmark) use.

Lines are built with f-strings, not influxdb-client's ``Point`` (about 6x slower in our
measurements). Measurements: ``plug`` (one point per reading; ``state_code`` is numeric
because VictoriaMetrics stores string fields as 0) and ``session`` (one point per session event).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chargectl.common.codec import PlugRun, PlugStatus
from chargectl.common.readings import Reading

__all__ = [
    "STATE_CODES",
    "PowerPoint",
    "SessionEvent",
    "TimeSeries",
    "TimeSeriesStats",
    "check_window",
    "escape_tag",
    "reading_lines",
    "run_lines",
    "session_line",
]

# Numeric codes of the plug states (stable; dashboards key on them): the contract's PlugStatus values.
STATE_CODES = {
    name.removeprefix("PLUG_STATUS_"): value
    for name, value in PlugStatus.items()
    if name != "PLUG_STATUS_UNSPECIFIED"
}


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A session milestone for the time series (``kind``: started, suspended, resumed, finished)."""

    ts_ms: int
    site_id: str
    plug_mac: str
    session_id: str
    user_id: str
    kind: str
    energy_mwh: int = 0
    cost_minor: int = 0
    currency: str = ""
    stop_reason: str = ""


@dataclass(frozen=True, slots=True)
class PowerPoint:
    """A bucket of a power chart: its start (ms) and the mean power in watts."""

    ts_ms: int
    power_w: float


def check_window(since_ms: int, until_ms: int, step_ms: int) -> None:
    """Refuse windows a chart read cannot mean (the console's reads are bounded by these)."""
    if step_ms <= 0:
        raise ValueError("step_ms must be positive")
    if until_ms <= since_ms:
        raise ValueError("until_ms must be after since_ms")
    if (until_ms - since_ms) // step_ms > 10_000:
        raise ValueError("at most 10000 buckets per read")


@dataclass(frozen=True, slots=True)
class TimeSeriesStats:
    written: int
    dropped: int
    pending: int
    failures: int


class TimeSeries(Protocol):
    def add_readings(self, site_id: str, readings: Sequence[Reading], state: str) -> None:
        """Queue points for one plug's chunk of readings; never blocks on the backend."""
        ...

    def add_run(self, site_id: str, run: PlugRun, state: str) -> None:
        """:meth:`add_readings` for one plug's decoded run (columns, no object per sample): exactly the
        points ``add_readings`` writes for ``run.readings()``."""
        ...

    def add_session_event(self, event: SessionEvent) -> None: ...

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Try to write everything queued; True if nothing is left pending."""
        ...

    def stats(self) -> TimeSeriesStats: ...

    def close(self) -> None: ...

    # reads (the operator console's charts); ``step_ms`` buckets start at multiples of ``step_ms``

    def plug_power(self, mac: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]:
        """One plug's mean power per bucket in ``[since_ms, until_ms)``, oldest first; empty buckets
        are left out. Raises ``StoreError`` when the backend cannot be read."""
        ...

    def site_power(self, site_id: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]:
        """A site's total power per bucket: the sum over its plugs of each plug's mean power in it."""
        ...


def escape_tag(value: str) -> str:
    """Escape a tag value for line protocol (commas, equals signs, spaces). The readings' tags (a site id,
    a MAC) are checked where they enter and hold no newline; see :func:`_one_line` for the rest."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _str_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _one_line(value: str) -> str:
    """``value`` with any newline made a space: line protocol cannot carry one in a value at all (it would
    end the line). For the values a session line takes from outside (user and session ids, reasons);
    the per-reading lines skip it, their tags being checked ids."""
    return value.replace("\n", " ").replace("\r", " ")


def reading_lines(site_id: str, readings: Sequence[Reading], state: str) -> list[str]:
    """Line protocol (ms precision) for one plug's readings; optional values are omitted when absent."""
    if not readings:
        return []
    tags = f"plug,site_id={escape_tag(site_id)},mac={readings[0].mac} "
    tail = f",state={_str_field(state)},state_code={STATE_CODES.get(state, 0)}i "
    out = []
    for r in readings:
        fields = f"power_w={r.power_w},energy_wh={r.energy_mwh / 1000},relay={1 if r.relay_on else 0}i"
        if r.voltage_v is not None:
            fields += f",voltage_v={r.voltage_v}"
        if r.current_a is not None:
            fields += f",current_a={r.current_a}"
        if r.temperature_c is not None:
            fields += f",temperature_c={r.temperature_c}"
        if r.errors:
            fields += f",errors={r.errors}i"
        out.append(tags + fields + tail + str(r.ts_ms))
    return out


def run_lines(site_id: str, run: PlugRun, state: str) -> list[str]:
    """:func:`reading_lines` of ``run.readings()``, read straight from the run's columns (same lines, in
    the same order, without a ``Reading`` per sample). The common run (voltage, current and
    temperature on every sample, no error flags) takes one f-string per line; any other run takes
    :func:`reading_lines`'s per-field rules."""
    if not run.ts_ms:
        return []
    head = f"plug,site_id={escape_tag(site_id)},mac={run.mac} "
    tail = f",state={_str_field(state)},state_code={STATE_CODES.get(state, 0)}i "
    volts, amps, temps = run.voltage_v, run.current_a, run.temperature_c
    if None in volts or None in amps or None in temps or any(run.errors):
        return _run_lines_each(head, tail, run)
    return [
        f"{head}power_w={p},energy_wh={e / 1000},relay={1 if on else 0}i,voltage_v={v},current_a={a},"
        f"temperature_c={t}{tail}{ts}"
        for ts, p, e, on, v, a, t in zip(
            run.ts_ms, run.power_w, run.energy_mwh, run.relay_on, volts, amps, temps, strict=True
        )
    ]


def _run_lines_each(head: str, tail: str, run: PlugRun) -> list[str]:
    out = []
    for ts, power, energy, on, volts, amps, temp, errors in zip(
        run.ts_ms,
        run.power_w,
        run.energy_mwh,
        run.relay_on,
        run.voltage_v,
        run.current_a,
        run.temperature_c,
        run.errors,
        strict=True,
    ):
        fields = f"power_w={power},energy_wh={energy / 1000},relay={1 if on else 0}i"
        if volts is not None:
            fields += f",voltage_v={volts}"
        if amps is not None:
            fields += f",current_a={amps}"
        if temp is not None:
            fields += f",temperature_c={temp}"
        if errors:
            fields += f",errors={errors}i"
        out.append(head + fields + tail + str(ts))
    return out


def session_line(event: SessionEvent) -> str:
    return (
        f"session,site_id={escape_tag(_one_line(event.site_id))},mac={event.plug_mac},"
        f"kind={escape_tag(_one_line(event.kind))} "
        f"session_id={_str_field(_one_line(event.session_id))},user_id={_str_field(_one_line(event.user_id))},"
        f"energy_wh={event.energy_mwh / 1000},cost_minor={event.cost_minor}i,"
        f"currency={_str_field(_one_line(event.currency))},"
        f"stop_reason={_str_field(_one_line(event.stop_reason))} {event.ts_ms}"
    )
