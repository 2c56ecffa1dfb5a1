"""Tariff and cost maths, pure: money is integer minor units outside, ``Decimal`` inside.

A tariff has up to three dimensions (in OCPI's vocabulary): energy per kWh,
a flat session fee, and an idle price per minute for time the relay was on while the vehicle drew
nothing (the plug cannot see a car once the relay is off, so that is the only idle time we can
measure). Energy and idle time are billed in whole steps, rounded up (OCPI ``step_size``: at step
25 Wh a 115.2 Wh session bills 125 Wh). Components stay exact; the total is rounded once, half up,
to whole minor units.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

__all__ = [
    "Cost",
    "Tariff",
    "billed_energy_wh",
    "billed_idle_s",
    "can_start",
    "required_start_balance",
    "round_minor",
    "session_cost",
]

_ZERO = Decimal(0)
_MWH_PER_WH = Decimal(1000)
_WH_PER_KWH = Decimal(1000)
_S_PER_MIN = Decimal(60)


def _decimal(value: Decimal | int | str, name: str) -> Decimal:
    if isinstance(value, bool | float):
        # Floats carry binary noise (0.1 + 0.2); prices must be given exactly.
        raise ValueError(f"{name} must be an integer, a Decimal or a decimal string, got {value!r}")
    try:
        result = Decimal(value)
    except (InvalidOperation, ValueError):
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not result.is_finite() or result < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return result


@dataclass(frozen=True, slots=True)
class Tariff:
    """What a session costs; mirrors the ``Tariff`` frontend document (prices may be fractional)."""

    tariff_id: str = "default"
    currency: str = "gbp"
    price_per_kwh_minor: Decimal = _ZERO
    session_fee_minor: int = 0
    idle_price_per_minute_minor: Decimal = _ZERO
    idle_grace_s: int = 0  # idle time below this is free
    energy_step_wh: int = 0  # 0 = bill exact energy
    time_step_s: int = 0  # 0 = bill exact idle time
    min_start_balance_minor: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "price_per_kwh_minor", _decimal(self.price_per_kwh_minor, "price_per_kwh_minor")
        )
        object.__setattr__(
            self,
            "idle_price_per_minute_minor",
            _decimal(self.idle_price_per_minute_minor, "idle_price_per_minute_minor"),
        )
        for name in (
            "session_fee_minor",
            "idle_grace_s",
            "energy_step_wh",
            "time_step_s",
            "min_start_balance_minor",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.currency or not self.currency.isalpha():
            raise ValueError(f"currency must be an ISO 4217 code, got {self.currency!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (Decimals as strings)."""
        return {
            "tariff_id": self.tariff_id,
            "currency": self.currency,
            "price_per_kwh_minor": str(self.price_per_kwh_minor),
            "session_fee_minor": self.session_fee_minor,
            "idle_price_per_minute_minor": str(self.idle_price_per_minute_minor),
            "idle_grace_s": self.idle_grace_s,
            "energy_step_wh": self.energy_step_wh,
            "time_step_s": self.time_step_s,
            "min_start_balance_minor": self.min_start_balance_minor,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tariff:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Cost:
    """A priced session: exact components and the total rounded once to minor units."""

    energy_wh: Decimal  # billed energy after steps
    idle_s: Decimal  # billed idle time after grace and steps
    energy_minor: Decimal
    idle_minor: Decimal
    fee_minor: Decimal
    exact_minor: Decimal
    total_minor: int


def round_minor(amount: Decimal) -> int:
    """Round an exact amount to whole minor units, half up (the one rounding a cost goes through)."""
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _steps_up(value: Decimal, step: int) -> Decimal:
    if step <= 0 or value <= 0:
        return max(value, _ZERO)
    return (value / step).to_integral_value(rounding=ROUND_CEILING) * step


def billed_energy_wh(energy_mwh: int, step_wh: int) -> Decimal:
    """Energy to bill in Wh: exact, or rounded up to whole ``step_wh`` steps."""
    if energy_mwh < 0:
        raise ValueError(f"energy must not be negative, got {energy_mwh} mWh")
    return _steps_up(Decimal(energy_mwh) / _MWH_PER_WH, step_wh)


def billed_idle_s(idle_ms: int, grace_s: int, step_s: int) -> Decimal:
    """Idle seconds to bill: the part beyond ``grace_s``, rounded up to whole ``step_s`` steps."""
    if idle_ms < 0:
        raise ValueError(f"idle time must not be negative, got {idle_ms} ms")
    beyond = Decimal(idle_ms) / 1000 - grace_s
    return _steps_up(beyond, step_s)


def session_cost(tariff: Tariff, energy_mwh: int, idle_ms: int = 0, *, include_fee: bool = True) -> Cost:
    """The cost of a session with ``energy_mwh`` delivered and ``idle_ms`` of idle relay-on time."""
    energy_wh = billed_energy_wh(energy_mwh, tariff.energy_step_wh)
    idle_s = billed_idle_s(idle_ms, tariff.idle_grace_s, tariff.time_step_s)
    energy_minor = energy_wh / _WH_PER_KWH * tariff.price_per_kwh_minor
    idle_minor = idle_s / _S_PER_MIN * tariff.idle_price_per_minute_minor
    fee_minor = Decimal(tariff.session_fee_minor) if include_fee else _ZERO
    exact = energy_minor + idle_minor + fee_minor
    return Cost(
        energy_wh=energy_wh,
        idle_s=idle_s,
        energy_minor=energy_minor,
        idle_minor=idle_minor,
        fee_minor=fee_minor,
        exact_minor=exact,
        total_minor=round_minor(exact),
    )


def required_start_balance(tariff: Tariff) -> int:
    """The balance a user needs to start: the tariff's minimum, and at least the session fee."""
    return max(tariff.min_start_balance_minor, tariff.session_fee_minor)


def can_start(tariff: Tariff, balance_minor: int) -> bool:
    """Whether a user with ``balance_minor`` may start a session on ``tariff``."""
    return balance_minor >= required_start_balance(tariff)
