"""Amounts as people type them ("5.00") to Stripe's minor units, and Stripe's per-currency minimum charges.

Stripe rejects a charge below a per-currency minimum ("Amount must convert to at least 50 cents"), so a
top-up is checked here, before any request, and the error names the minimum in the currency's own units.
Minimums are Stripe's published figures for the settlement currencies we accept.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from chargectl.common.errors import PaymentError

__all__ = ["MINIMUM_CHARGE_MINOR", "ZERO_DECIMAL", "check_charge", "format_minor", "parse_amount"]

# Stripe's minimum charge amount per currency, in minor units.
MINIMUM_CHARGE_MINOR: dict[str, int] = {
    "usd": 50,
    "eur": 50,
    "gbp": 30,
    "aud": 50,
    "cad": 50,
    "chf": 50,
    "nzd": 50,
    "sgd": 50,
    "dkk": 250,
    "nok": 300,
    "sek": 300,
    "pln": 200,
    "czk": 1500,
    "jpy": 50,
}
# Currencies Stripe counts in whole units (no minor unit).
ZERO_DECIMAL = frozenset({"jpy"})


def _currency(currency: str) -> str:
    code = currency.strip().lower()
    if code not in MINIMUM_CHARGE_MINOR:
        raise PaymentError(
            f"unsupported currency {currency!r}; supported: {', '.join(sorted(MINIMUM_CHARGE_MINOR))}"
        )
    return code


def _exponent(currency: str) -> int:
    return 0 if currency in ZERO_DECIMAL else 2


def parse_amount(text: str, currency: str) -> int:
    """``"5.00"`` in ``currency`` → minor units (500); a bad, negative or too precise amount is a PaymentError."""
    code = _currency(currency)
    exponent = _exponent(code)
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise PaymentError(f"amount {text!r} is not a number (write it like 5.00)") from None
    if not value.is_finite() or value <= 0:
        raise PaymentError(f"amount {text!r} must be a positive number")
    minor = value.scaleb(exponent)
    if minor != minor.to_integral_value():
        places = "no decimals" if exponent == 0 else f"at most {exponent} decimals"
        raise PaymentError(f"amount {text!r} has too many decimals for {code.upper()} ({places})")
    return int(minor)


def format_minor(amount_minor: int, currency: str) -> str:
    """500, "gbp" → ``"5.00 GBP"``; negative amounts keep their sign."""
    code = currency.lower()
    exponent = _exponent(code)
    value = Decimal(amount_minor).scaleb(-exponent)
    return f"{value:.{exponent}f} {code.upper()}"


def check_charge(amount_minor: int, currency: str, minimum_minor: int = 0) -> str:
    """Refuse a card charge below Stripe's minimum for ``currency`` or our own ``minimum_minor``; the code."""
    code = _currency(currency)
    floor = max(MINIMUM_CHARGE_MINOR[code], minimum_minor)
    if amount_minor < floor:
        raise PaymentError(
            f"amount {format_minor(amount_minor, code)} is below the minimum top-up of {format_minor(floor, code)}"
        )
    return code
