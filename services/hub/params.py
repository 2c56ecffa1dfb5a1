"""Per-plug-class parameters of the hub's state machine (thresholds and time windows).

Defaults are common practice for smart-plug charging (e.g. evcc's standby power); values marked (rec.)
are recommendations to be tuned with real traces. Every duration is in seconds and named ``*_s``; power is in watts (``*_w``).
Override per class in config, e.g. ``[hub.plug_classes.ebike] stop_w = 20``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chargectl.common.config import build
from chargectl.common.errors import ConfigError

__all__ = ["DEFAULTS", "PLUG_CLASSES", "PlugParams", "load_plug_classes", "params_for"]

PLUG_CLASSES = ("ev", "ebike", "scooter", "generic")


@dataclass(frozen=True, slots=True)
class PlugParams:
    """Thresholds and windows for one plug class; validated so ``start_w > stop_w`` (hysteresis)."""

    # Power at or above this counts as "drawing"; must exceed stop_w (hysteresis band in between).
    start_w: float = 35.0
    # Power below this counts as "not drawing" (the charger's trickle/standby); evcc's default is 15 W.
    stop_w: float = 15.0
    # Power >= start_w for this long (by sample time) → CHARGING.
    start_confirm_s: float = 25.0
    # AUTHORIZED with no confirmed load for this long → FINISHING (reason Timeout), nothing charged.
    no_load_timeout_s: float = 300.0
    # Power < stop_w for this long (by sample time, gaps frozen) → session complete.
    complete_after_s: float = 600.0
    # A commanded relay state not seen by then → FAULTED; commands are re-sent every relay_retry_s.
    relay_confirm_s: float = 60.0
    relay_retry_s: float = 15.0
    # No reading for this long → stale (completion timers frozen); for offline_after_s → OFFLINE.
    stale_after_s: float = 90.0
    offline_after_s: float = 300.0
    # OFFLINE this long with an open session → the session is marked provisional (closed on reconnect).
    offline_abandon_s: float = 3600.0
    # Hard cap on a session's length → FINISHING (reason TimeLimit).
    max_session_s: float = 16 * 3600.0
    # Power above max_power_w for max_power_confirm_s → FAULTED (overpower).
    max_power_w: float = 2250.0
    max_power_confirm_s: float = 10.0
    # The plug's physical rating (16 A at 230 V): a reading above it + 10 % is refused before any
    # machine sees it, and energy between two readings is billed up to 1.2 x this x the time between.
    rated_power_w: float = 3680.0
    # The plug's own flip-back timer armed with every "on" (dead-man window); renewed every third of it.
    auto_off_s: int = 300
    # Out of credit: relay off, then the session finishes after this unless a top-up arrives.
    credit_grace_s: float = 600.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"{f.name} must not be negative, got {value}")
        if self.start_w <= self.stop_w:
            raise ValueError(f"start_w ({self.start_w}) must be greater than stop_w ({self.stop_w})")
        if self.stale_after_s >= self.offline_after_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s}) must be less than offline_after_s ({self.offline_after_s})"
            )
        if self.relay_retry_s <= 0 or self.relay_retry_s > self.relay_confirm_s:
            raise ValueError("relay_retry_s must be positive and at most relay_confirm_s")
        if self.auto_off_s < 3:
            raise ValueError(f"auto_off_s must be at least 3, got {self.auto_off_s}")
        if self.max_power_w <= self.start_w:
            raise ValueError(
                f"max_power_w ({self.max_power_w}) must be greater than start_w ({self.start_w})"
            )

    @property
    def keepalive_s(self) -> float:
        """How often a live session re-issues "on" so the plug's flip-back timer never fires."""
        return self.auto_off_s / 3

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PARAM_NAMES}


_PARAM_NAMES = tuple(f.name for f in dataclasses.fields(PlugParams))  # to_dict runs per plug per checkpoint


# start_w = max(2 × stop_w, stop_w + 20 W) (rec.); t_complete 10 min for EVs, 5 min for e-bikes and
# scooters (rec.); max_power_w ≈ 90 % of the plug/circuit rating (rec.).
DEFAULTS: Mapping[str, PlugParams] = {
    "ev": PlugParams(
        start_w=35.0, stop_w=15.0, complete_after_s=600.0, max_session_s=24 * 3600.0, max_power_w=3000.0
    ),
    "ebike": PlugParams(
        start_w=30.0, stop_w=10.0, complete_after_s=300.0, max_session_s=16 * 3600.0, max_power_w=1000.0
    ),
    "scooter": PlugParams(
        start_w=30.0, stop_w=10.0, complete_after_s=300.0, max_session_s=16 * 3600.0, max_power_w=1000.0
    ),
    "generic": PlugParams(),
}


def params_for(plug_class: str, overrides: Mapping[str, Any] | None = None, prefix: str = "") -> PlugParams:
    """The parameters of ``plug_class`` with ``overrides`` applied; bad classes/keys raise ConfigError."""
    if plug_class not in DEFAULTS:
        raise ConfigError(f"unknown plug class {plug_class!r}; known classes: {', '.join(PLUG_CLASSES)}")
    base = DEFAULTS[plug_class]
    if not overrides:
        return base
    # Validate the override keys and types alone first, so an error names the key the user wrote.
    unknown = sorted(set(overrides) - set(base.to_dict()))
    if unknown:
        where = prefix or plug_class
        raise ConfigError(
            f"unknown config key [{where}] {unknown[0]!r}; known keys: {', '.join(sorted(base.to_dict()))}"
        )
    return build(PlugParams, {**base.to_dict(), **overrides}, prefix=prefix or plug_class)


def load_plug_classes(
    table: Mapping[str, Any] | None, prefix: str = "hub.plug_classes"
) -> dict[str, PlugParams]:
    """Every class's parameters from a config table ``{class: {key: value}}`` (missing classes: defaults)."""
    table = dict(table or {})
    unknown = sorted(set(table) - set(PLUG_CLASSES))
    if unknown:
        raise ConfigError(
            f"unknown plug class [{prefix}] {unknown[0]!r}; known classes: {', '.join(PLUG_CLASSES)}"
        )
    result: dict[str, PlugParams] = {}
    for name in PLUG_CLASSES:
        raw = table.get(name)
        if raw is not None and not isinstance(raw, Mapping):
            raise ConfigError(f"{prefix}.{name}: expected a table, got {type(raw).__name__}")
        result[name] = params_for(name, raw, prefix=f"{prefix}.{name}")
    return result
