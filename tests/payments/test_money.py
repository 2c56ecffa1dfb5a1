"""Amounts typed by people → minor units, and Stripe's per-currency minimum charges."""

from __future__ import annotations

import pytest

from chargectl.common.errors import PaymentError
from chargectl.services.payments.money import check_charge, format_minor, parse_amount


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("5.00", "gbp", 500),
        ("5", "GBP", 500),
        (" 12.5 ", "eur", 1250),
        ("0.01", "usd", 1),
        ("500", "jpy", 500),
    ],
)
def test_amounts_become_minor_units(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "message"),
    [
        ("5.001", "gbp", "too many decimals"),
        ("5.5", "jpy", "too many decimals"),
        ("-5", "gbp", "positive"),
        ("0", "gbp", "positive"),
        ("NaN", "gbp", "positive"),
        ("Infinity", "gbp", "positive"),
        ("£5", "gbp", "not a number"),
        ("5", "xyz", "unsupported currency"),
    ],
)
def test_bad_amounts_name_the_problem(text: str, currency: str, message: str) -> None:
    with pytest.raises(PaymentError, match=message):
        parse_amount(text, currency)


def test_stripe_minimums_per_currency_and_our_floor() -> None:
    assert check_charge(30, "gbp") == "gbp"  # Stripe's GBP minimum is 0.30
    with pytest.raises(PaymentError, match=r"below the minimum top-up of 0\.30 GBP"):
        check_charge(29, "gbp")
    assert check_charge(50, "usd") == "usd"
    with pytest.raises(PaymentError, match=r"0\.50 USD"):
        check_charge(49, "USD")
    with pytest.raises(PaymentError, match=r"5\.00 GBP"):
        check_charge(499, "gbp", minimum_minor=500)
    assert check_charge(500, "gbp", minimum_minor=500) == "gbp"
    with pytest.raises(PaymentError, match="50 JPY"):
        check_charge(49, "jpy")


def test_format_minor() -> None:
    assert format_minor(1250, "gbp") == "12.50 GBP"
    assert format_minor(-237, "eur") == "-2.37 EUR"
    assert format_minor(500, "jpy") == "500 JPY"
