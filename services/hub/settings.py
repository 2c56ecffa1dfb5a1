"""``[hub]`` settings: shard, loops, mirror rate bounds, plug classes, the default tariff."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from chargectl.common.config import build
from chargectl.common.errors import ConfigError
from chargectl.common.topics import MAX_SHARD
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.params import PLUG_CLASSES, PlugParams, params_for

__all__ = ["HubSettings", "TariffSettings"]


@dataclass(frozen=True)
class TariffSettings:
    """``[hub.tariff]``: the tariff of sites whose ``Site`` document has none. Prices in minor units."""

    tariff_id: str = "default"
    currency: str = "gbp"
    price_per_kwh_minor: str = "30"
    session_fee_minor: int = 0
    idle_price_per_minute_minor: str = "0"
    idle_grace_s: int = 0
    energy_step_wh: int = 0
    time_step_s: int = 0
    min_start_balance_minor: int = 100

    def tariff(self) -> Tariff:
        try:
            return Tariff(
                tariff_id=self.tariff_id,
                currency=self.currency.lower(),
                price_per_kwh_minor=Decimal(self.price_per_kwh_minor),
                session_fee_minor=self.session_fee_minor,
                idle_price_per_minute_minor=Decimal(self.idle_price_per_minute_minor),
                idle_grace_s=self.idle_grace_s,
                energy_step_wh=self.energy_step_wh,
                time_step_s=self.time_step_s,
                min_start_balance_minor=self.min_start_balance_minor,
            )
        except (ValueError, ArithmeticError) as exc:
            raise ConfigError(f"hub.tariff: {exc}") from exc


@dataclass(frozen=True)
class HubSettings:
    """How the hub runs. Durations in seconds."""

    shard: int = 0
    tick_interval_s: float = 1.0
    checkpoint_interval_s: float = 30.0
    request_poll_s: float = 1.0
    request_watch: bool = True  # listen to the store for new requests when it can push them (Firestore)
    request_watch_poll_s: float = 60.0  # with a listener, poll only as a safety net
    trust_refresh_s: float = 30.0
    balance_refresh_s: float = 10.0  # a live user near (or out of) credit is re-read this often
    balance_max_stale_s: float = 300.0  # any live user's balance is re-read at least this often
    plug_state_min_interval_s: float = 30.0
    plug_state_settle_s: float = 5.0  # a status is mirrored once it held this long (0: every change)
    plug_state_transitional_s: float = 60.0  # AUTHORIZED, FINISHING: mirrored only if they held this long
    plug_state_detail_s: float = 900.0  # CHARGING/SUSPENDED_EV/FINISHING of one session: the app needn't see
    site_leases: bool = True  # keep-alives as one lease per site (agents must understand leases)
    progress_interval_s: float = 300.0  # a live session's document carries its energy and cost this fresh
    command_lifetime_s: float = 120.0
    default_plug_class: str = "ev"
    plug_classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugs: dict[str, str] = field(default_factory=dict)  # MAC -> plug class
    tariff: TariffSettings = field(default_factory=TariffSettings)
    health_host: str = "127.0.0.1"
    health_port: int = 8787
    max_messages: int = 200
    # Trust bounds: what one site may introduce, and which readings reach a machine at all.
    max_new_plugs_per_batch: int = 50  # plugs a site may introduce in one batch
    max_plugs_per_site: int = 1000  # plugs bound to one site at most
    max_reading_age_s: float = 7 * 86400.0  # older readings are refused (a spool replay is younger)
    max_clock_skew_s: float = 120.0  # readings stamped further in the future are refused
    request_max_age_s: float = 120.0  # older pending requests are answered "expired"
    # Requests one user may make a minute (a burst of this many at once); more are refused
    # "rate_limited" without a store read. A stop of the user's own live session is never held back.
    # 0: no limit.
    requests_per_user_per_minute: int = 60
    # While serving: collect once and gc.freeze() the survivors (the plug map) after start-up and every
    # this often, so the collector's automatic passes skip the long-lived state (0: Python's defaults).
    gc_freeze_interval_s: float = 600.0
    gc_gen0_threshold: int = 10_000  # while serving (Python's is 700): see services/hub/gc_tuning.py

    def __post_init__(self) -> None:
        if not 0 <= self.shard <= MAX_SHARD:
            raise ValueError(f"shard must be between 0 and {MAX_SHARD} (a Site document's shard is a uint32)")
        for name in (
            "tick_interval_s",
            "checkpoint_interval_s",
            "request_poll_s",
            "command_lifetime_s",
            "max_new_plugs_per_batch",
            "max_plugs_per_site",
            "max_reading_age_s",
            "max_clock_skew_s",
            "request_max_age_s",
            "progress_interval_s",
            "balance_refresh_s",
            "balance_max_stale_s",
            "gc_gen0_threshold",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.requests_per_user_per_minute < 0:
            raise ValueError("requests_per_user_per_minute must be >= 0")
        for name in (
            "plug_state_min_interval_s",
            "plug_state_settle_s",
            "plug_state_transitional_s",
            "plug_state_detail_s",
            "gc_freeze_interval_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.default_plug_class not in PLUG_CLASSES:
            raise ValueError(f"default_plug_class must be one of {', '.join(PLUG_CLASSES)}")
        for mac, cls in self.plugs.items():
            if cls not in PLUG_CLASSES:
                raise ValueError(f"plugs.{mac}: unknown plug class {cls!r}")
        for cls, overrides in self.plug_classes.items():
            params_for(cls, overrides, prefix=f"hub.plug_classes.{cls}")
        self.tariff.tariff()

    def params(self, mac: str) -> PlugParams:
        cls = self.plugs.get(mac, self.default_plug_class)
        return params_for(cls, self.plug_classes.get(cls), prefix=f"hub.plug_classes.{cls}")

    @functools.cached_property
    def rated_floor_w(self) -> float:
        """The lowest rating any plug has under these settings (a bound that holds for every plug)."""
        classes = {self.default_plug_class, *self.plugs.values()}
        return min(params_for(c, self.plug_classes.get(c)).rated_power_w for c in classes)

    def plug_class(self, mac: str) -> str:
        return self.plugs.get(mac, self.default_plug_class)

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> HubSettings:
        return build(cls, data or {}, prefix="hub")
