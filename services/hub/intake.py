"""Reading bounds: every reading is checked on its own before any machine sees it (the rest of the batch
goes on). Pure: the caller passes ``now``; refused readings are counted by reason and logged once per
plug and reason per hour by :class:`RefusalLog`.

A reading is refused if any number is not finite, negative (temperature aside), or outside int64; if
its power is above the plug's rating + 10 %; or if it is stamped before ``now - max_reading_age_s``
(older than any spool replay) or after ``now + max_clock_skew_s``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, cast

from chargectl.common.readings import Reading
from chargectl.services.hub.machine import RunColumns

if TYPE_CHECKING:  # the codec (protobuf) stays out of this pure module at run time
    from chargectl.common.codec import RunsExtent

__all__ = [
    "INT64_MAX",
    "ReadingRefusal",
    "RefusalLog",
    "batch_in_bounds",
    "check_reading",
    "check_reading_rules",
    "run_in_bounds",
]

INT64_MAX = 2**63 - 1
POWER_MARGIN = 1.1  # a reading may exceed the rating by 10 % (meter tolerance, inrush)


class ReadingRefusal(StrEnum):
    NOT_FINITE = "not_finite"
    NEGATIVE = "negative"
    OUT_OF_RANGE = "out_of_range"
    OVER_POWER = "over_power"
    TOO_OLD = "too_old"
    IN_FUTURE = "in_future"


def _bad_int(value: object) -> ReadingRefusal | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return ReadingRefusal.OUT_OF_RANGE
    if value < 0:
        return ReadingRefusal.NEGATIVE
    if value > INT64_MAX:
        return ReadingRefusal.OUT_OF_RANGE
    return None


def _bad_float(value: object, signed: bool = False) -> ReadingRefusal | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ReadingRefusal.OUT_OF_RANGE
    if not math.isfinite(value):
        return ReadingRefusal.NOT_FINITE
    if not signed and value < 0:
        return ReadingRefusal.NEGATIVE
    return None


def check_reading(
    r: Reading, now_ms: int, max_age_ms: int, max_skew_ms: int, rated_power_w: float
) -> ReadingRefusal | None:
    """Why ``r`` must not reach a machine, or None if it is within bounds."""
    # The common case in one expression (exact types, chained comparisons: NaN and inf fail them); anything
    # else takes the rule-by-rule path below, which names the reason.
    ts, energy, errors, up, power = r.ts_ms, r.energy_mwh, r.errors, r.uptime_s, r.power_w
    volts, amps, temp = r.voltage_v, r.current_a, r.temperature_c
    if (
        type(ts) is int
        and type(energy) is int
        and type(errors) is int
        and type(power) is float
        and now_ms - max_age_ms <= ts <= now_ms + max_skew_ms
        and 0 <= ts <= INT64_MAX
        and 0 <= energy <= INT64_MAX
        and 0 <= errors <= INT64_MAX
        and 0.0 <= power <= rated_power_w * POWER_MARGIN
        and (up is None or (type(up) is int and 0 <= up <= INT64_MAX))
        and (volts is None or (type(volts) is float and 0.0 <= volts < math.inf))
        and (amps is None or (type(amps) is float and 0.0 <= amps < math.inf))
        and (temp is None or (type(temp) is float and -math.inf < temp < math.inf))
    ):
        return None
    return check_reading_rules(r, now_ms, max_age_ms, max_skew_ms, rated_power_w)


def check_reading_rules(
    r: Reading, now_ms: int, max_age_ms: int, max_skew_ms: int, rated_power_w: float
) -> ReadingRefusal | None:
    """:func:`check_reading` rule by rule (its fast path must agree with this; a property test says so)."""
    for value in (r.ts_ms, r.energy_mwh, r.errors):
        bad = _bad_int(value)
        if bad is not None:
            return bad
    if r.uptime_s is not None and (bad := _bad_int(r.uptime_s)) is not None:
        return bad
    bad = _bad_float(r.power_w)
    if bad is not None:
        return bad
    for opt in (r.voltage_v, r.current_a):
        if opt is not None and (bad := _bad_float(opt)) is not None:
            return bad
    if r.temperature_c is not None and (bad := _bad_float(r.temperature_c, signed=True)) is not None:
        return bad
    if r.power_w > rated_power_w * POWER_MARGIN:
        return ReadingRefusal.OVER_POWER
    if r.ts_ms < now_ms - max_age_ms:
        return ReadingRefusal.TOO_OLD
    if r.ts_ms > now_ms + max_skew_ms:
        return ReadingRefusal.IN_FUTURE
    return None


def run_in_bounds(
    run: RunColumns, now_ms: int, max_age_ms: int, max_skew_ms: int, rated_power_w: float
) -> bool:
    """True if :func:`check_reading` passes every sample of ``run`` and the samples are in strictly
    increasing time, decided per column (min/max in C) for a run the codec decoded: its integers are
    ints within int64 and its floats finite, so only the ranges are left to check. False: check each."""
    ts = run.ts_ms
    if not ts:
        return True
    power = run.power_w
    if (
        min(ts) < max(0, now_ms - max_age_ms)
        or max(ts) > now_ms + max_skew_ms
        or not all(map(operator.lt, ts, ts[1:]))
        or min(power) < 0.0
        or max(power) > rated_power_w * POWER_MARGIN
        or min(run.energy_mwh) < 0
        or min(run.errors) < 0
    ):
        return False
    total = sum(power)
    if not math.isfinite(total):
        return False
    for col in (run.voltage_v, run.current_a, run.uptime_s, run.temperature_c):
        # Whole columns in C when every sample has its value (the common case); else the present ones.
        present = cast("Sequence[float]", col if None not in col else [v for v in col if v is not None])
        if present and (
            (col is not run.temperature_c and min(present) < 0) or not math.isfinite(sum(present))
        ):
            return False
    return True


def batch_in_bounds(
    extent: RunsExtent | None, now_ms: int, max_age_ms: int, max_skew_ms: int, rated_floor_w: float
) -> bool:
    """True if :func:`run_in_bounds` holds for every run of the batch ``extent`` was taken from, for plugs
    rated at least ``rated_floor_w`` each: one check per batch instead of one per run. False: check
    each run (it says nothing about which run is out)."""
    return (
        extent is not None
        and extent.clean
        and extent.ordered
        and extent.min_ts_ms >= max(0, now_ms - max_age_ms)
        and extent.max_ts_ms <= now_ms + max_skew_ms
        and extent.max_power_w <= rated_floor_w * POWER_MARGIN
    )


class RefusalLog:
    """Say each (plug, reason) at most once per ``every_s`` (bounded memory)."""

    def __init__(self, every_s: float = 3600.0, max_keys: int = 10_000) -> None:
        self.every_s = every_s
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], float] = {}
        self._pruned = float("-inf")

    def due(self, mac: str, reason: str, mono: float) -> bool:
        key = (mac, reason)
        last = self._last.get(key)
        if last is not None and mono - last < self.every_s:
            return False
        if len(self._last) >= self.max_keys:
            if mono - self._pruned < 60.0:
                return False  # a flood of distinct plugs: counted in /metrics, not logged one by one
            self._pruned = mono  # forget what is older than an hour, at most once a minute
            self._last = {k: t for k, t in self._last.items() if mono - t < self.every_s}
            if len(self._last) >= self.max_keys:
                return False
        self._last[key] = mono
        return True
