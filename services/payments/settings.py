"""The ``[payments]`` config table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chargectl.common.errors import ConfigError
from chargectl.services.payments.money import MINIMUM_CHARGE_MINOR

__all__ = ["PaymentsSettings"]


@dataclass(frozen=True)
class PaymentsSettings:
    """Payments settings; Stripe keys are not config (the CLI reads them from the environment)."""

    currency: str = "gbp"
    # Our own floor for a card top-up, on top of Stripe's per-currency minimum (balances are prepaid).
    min_topup_minor: int = 500
    # A SQLite store file for payments alone; unset means the shared store (``services.wiring``).
    store_path: Path | None = None
    # A local Stripe-compatible server (localstripe) instead of Stripe.
    api_base: str = ""
    # Where Checkout and the billing portal send the user back to (the app).
    app_url: str = "http://localhost:8080"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8080
    # Accept webhook signatures at most this old (Stripe's library default is 300 s).
    webhook_tolerance_s: int = 300
    max_body_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        if self.currency.lower() not in MINIMUM_CHARGE_MINOR:
            raise ConfigError(
                f"payments.currency: unsupported currency {self.currency!r}; "
                f"supported: {', '.join(sorted(MINIMUM_CHARGE_MINOR))}"
            )
        object.__setattr__(self, "currency", self.currency.lower())
        if self.min_topup_minor < 0:
            raise ConfigError("payments.min_topup_minor: must be >= 0")
        if not 0 <= self.webhook_port <= 65535:
            raise ConfigError(f"payments.webhook_port: {self.webhook_port} is not a TCP port")
        if self.webhook_tolerance_s <= 0:
            raise ConfigError("payments.webhook_tolerance_s: must be > 0")
        if self.max_body_bytes <= 0:
            raise ConfigError("payments.max_body_bytes: must be > 0")
        for name in ("api_base", "app_url"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                raise ConfigError(f"payments.{name}: must be an http(s) URL, got {value!r}")

    @property
    def success_url(self) -> str:
        return f"{self.app_url.rstrip('/')}/topup/success?session_id={{CHECKOUT_SESSION_ID}}"

    @property
    def cancel_url(self) -> str:
        return f"{self.app_url.rstrip('/')}/topup/cancelled"

    @property
    def return_url(self) -> str:
        return f"{self.app_url.rstrip('/')}/account"
