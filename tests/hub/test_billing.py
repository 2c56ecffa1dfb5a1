"""Tariff and cost maths; every expected amount below is worked out by hand in the comment next to it."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from chargectl.services.hub.billing import (
    Tariff,
    billed_energy_wh,
    billed_idle_s,
    can_start,
    required_start_balance,
    round_minor,
    session_cost,
)


@pytest.mark.parametrize(
    ("step_wh", "billed"),
    [
        # OCPI step-size example (ocpi/ocpi#493): a 115.2 Wh session.
        (0, Decimal("115.2")),
        (1, Decimal(116)),
        (25, Decimal(125)),
        (500, Decimal(500)),
    ],
)
def test_energy_steps_round_up(step_wh: int, billed: Decimal) -> None:
    assert billed_energy_wh(115_200, step_wh) == billed


def test_energy_on_a_step_boundary_is_not_rounded_up() -> None:
    assert billed_energy_wh(125_000, 25) == Decimal(125)
    assert billed_energy_wh(0, 25) == Decimal(0)


def test_ocpi_example_prices() -> None:
    tariff = Tariff(price_per_kwh_minor=Decimal(25), energy_step_wh=25)
    # 125 Wh × 25 / 1000 = 3.125 → 3
    cost = session_cost(tariff, 115_200)
    assert cost.energy_minor == Decimal("3.125")
    assert cost.total_minor == 3
    # step 500: 500 Wh × 0.025 = 12.5 → 13 (half up)
    assert (
        session_cost(Tariff(price_per_kwh_minor=Decimal(25), energy_step_wh=500), 115_200).total_minor == 13
    )


def test_fee_plus_fractional_energy_price() -> None:
    tariff = Tariff(price_per_kwh_minor=Decimal("30.5"), session_fee_minor=50)
    # 10 kWh × 30.5 = 305, + 50 fee = 355
    cost = session_cost(tariff, 10_000_000)
    assert cost.energy_minor == Decimal(305)
    assert cost.fee_minor == Decimal(50)
    assert cost.total_minor == 355
    assert session_cost(tariff, 10_000_000, include_fee=False).total_minor == 305


def test_idle_grace_and_time_steps() -> None:
    tariff = Tariff(idle_price_per_minute_minor=Decimal(10), idle_grace_s=300)
    # 1050 s idle − 300 s grace = 750 s = 12.5 min × 10 = 125
    assert session_cost(tariff, 0, idle_ms=1_050_000).total_minor == 125
    stepped = Tariff(idle_price_per_minute_minor=Decimal(10), idle_grace_s=300, time_step_s=60)
    # 750 s rounds up to 780 s = 13 min × 10 = 130
    assert billed_idle_s(1_050_000, 300, 60) == Decimal(780)
    assert session_cost(stepped, 0, idle_ms=1_050_000).total_minor == 130
    # within the grace period: nothing
    assert session_cost(tariff, 0, idle_ms=299_000).total_minor == 0
    assert billed_idle_s(299_000, 300, 60) == Decimal(0)


def test_total_is_rounded_once_not_per_component() -> None:
    tariff = Tariff(price_per_kwh_minor=Decimal(40), idle_price_per_minute_minor=Decimal("0.4"))
    # energy 10 Wh × 40 / 1000 = 0.4; idle 1 min × 0.4 = 0.4; 0.8 → 1 (per-component rounding would give 0)
    cost = session_cost(tariff, 10_000, idle_ms=60_000)
    assert cost.energy_minor == Decimal("0.4")
    assert cost.idle_minor == Decimal("0.4")
    assert cost.exact_minor == Decimal("0.8")
    assert cost.total_minor == 1


@pytest.mark.parametrize(
    ("amount", "rounded"),
    [("2.5", 3), ("2.49", 2), ("0.5", 1), ("0.4999", 0), ("7", 7)],
)
def test_round_minor_half_up(amount: str, rounded: int) -> None:
    assert round_minor(Decimal(amount)) == rounded


def test_start_balance_covers_minimum_and_fee() -> None:
    tariff = Tariff(session_fee_minor=50, min_start_balance_minor=100)
    assert required_start_balance(tariff) == 100
    assert not can_start(tariff, 99)
    assert can_start(tariff, 100)
    fee_only = Tariff(session_fee_minor=50)
    assert required_start_balance(fee_only) == 50
    assert not can_start(fee_only, 49)
    assert can_start(fee_only, 50)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"price_per_kwh_minor": Decimal(-1)},
        {"price_per_kwh_minor": 0.1},
        {"price_per_kwh_minor": "abc"},
        {"session_fee_minor": -5},
        {"energy_step_wh": 1.5},
        {"currency": ""},
    ],
)
def test_tariff_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        Tariff(**kwargs)  # type: ignore[arg-type]
    assert next(iter(kwargs)) in str(info.value)


def test_tariff_accepts_decimal_strings_and_round_trips_through_json() -> None:
    tariff = Tariff(
        tariff_id="t9",
        currency="eur",
        price_per_kwh_minor="25.5",  # type: ignore[arg-type]
        session_fee_minor=20,
        idle_price_per_minute_minor=Decimal("1.25"),
        idle_grace_s=60,
        energy_step_wh=10,
        time_step_s=30,
        min_start_balance_minor=500,
    )
    assert tariff.price_per_kwh_minor == Decimal("25.5")
    again = Tariff.from_dict(json.loads(json.dumps(tariff.to_dict())))
    assert again == tariff


def test_negative_quantities_are_refused() -> None:
    with pytest.raises(ValueError, match="energy"):
        billed_energy_wh(-1, 0)
    with pytest.raises(ValueError, match="idle"):
        billed_idle_s(-1, 0, 0)
