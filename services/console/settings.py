"""``[console]`` settings and the bind rule: a console reachable from other hosts needs a token."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from chargectl.common.errors import ConfigError

__all__ = ["MIN_TOKEN_CHARS", "ConsoleSettings", "is_loopback", "require_token_off_loopback"]

MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class ConsoleSettings:
    """``[console]``: ``token`` is a secret (never logged); durations in seconds."""

    enabled: bool = True
    token: str = ""
    refresh_s: float = 2.0  # how often the page polls the JSON API
    chart_window_s: int = 3600  # the power charts' span
    chart_step_s: int = 15  # one chart point per bucket of this many seconds
    cookie_max_age_s: int = 12 * 3600

    def __post_init__(self) -> None:
        if self.token and len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"token must be at least {MIN_TOKEN_CHARS} characters")
        if self.token and (self.token != self.token.strip() or any(ord(c) < 33 for c in self.token)):
            raise ValueError("token must not contain spaces or control characters")
        if not 0.2 <= self.refresh_s <= 2.0:
            raise ValueError("refresh_s must be between 0.2 and 2")
        if not 60 <= self.chart_window_s <= 7 * 86400:
            raise ValueError("chart_window_s must be between 60 and 604800")
        if not 1 <= self.chart_step_s <= self.chart_window_s // 10:
            raise ValueError("chart_step_s must be at least 1 and at most a tenth of chart_window_s")
        if self.chart_window_s // self.chart_step_s > 2000:
            raise ValueError("a chart has at most 2000 points: raise chart_step_s or lower chart_window_s")
        if self.cookie_max_age_s <= 0:
            raise ValueError("cookie_max_age_s must be positive")

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return (
            f"ConsoleSettings(enabled={self.enabled}, token={'***' if self.token else ''!r}, "
            f"refresh_s={self.refresh_s}, chart_window_s={self.chart_window_s}, "
            f"chart_step_s={self.chart_step_s})"
        )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; False for anything reachable from elsewhere
    (``0.0.0.0``, ``::``, a LAN address or a host name)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def require_token_off_loopback(host: str, settings: ConsoleSettings) -> None:
    """Refuse to serve the console on a non-loopback address without a token."""
    if settings.enabled and not settings.token and not is_loopback(host):
        raise ConfigError(
            f"[console] token is required when the hub's health server binds {host} (not loopback); "
            "set it (CHARGECTL_CONSOLE__TOKEN) or set [console] enabled = false"
        )
