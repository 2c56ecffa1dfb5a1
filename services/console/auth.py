"""The console's token: a bearer header for scripts, or a cookie the login form sets for browsers.

The cookie holds its expiry and an HMAC of that expiry keyed by the token (never the token itself): it
is refused once it expires (``cookie_max_age_s`` after the sign-in, checked here, not only by the
browser), and rotating the token signs every browser out. Comparisons are constant-time; neither the
token nor a candidate is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["COOKIE_NAME", "ConsoleAuth"]

COOKIE_NAME = "chargectl_console"


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in out:
            out[name] = value.strip().strip('"')
    return out


class ConsoleAuth:
    """``token`` empty: every request is allowed (the caller only allows that on a loopback bind)."""

    def __init__(self, token: str, cookie_max_age_s: int = 12 * 3600) -> None:
        self._token = _b(token)
        self.cookie_max_age_s = cookie_max_age_s

    def _cookie_value(self, expires_s: int) -> str:
        mac = hmac.new(self._token, b"chargectl-console-cookie-v2:%d" % expires_s, hashlib.sha256)
        return f"{expires_s}.{mac.hexdigest()}"

    @property
    def required(self) -> bool:
        return bool(self._token)

    def token_matches(self, candidate: str) -> bool:
        return bool(self._token) and hmac.compare_digest(_b(candidate), self._token)

    def allows(self, headers: Mapping[str, str], now_s: float) -> bool:
        """True if the request carries the token (``Authorization: Bearer …``) or a login cookie that
        has not expired at ``now_s``."""
        if not self.required:
            return True
        scheme, _, value = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(value.strip()):
            return True
        cookie = _cookies(headers.get("cookie", "")).get(COOKIE_NAME, "")
        expires, dot, _ = cookie.partition(".")
        if not dot or not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            return False
        expires_s = int(expires)
        if not now_s < expires_s <= now_s + self.cookie_max_age_s + 60:  # expired, or not one we issued
            return False
        return hmac.compare_digest(_b(cookie), _b(self._cookie_value(expires_s)))

    def login_cookie(self, now_s: float) -> str:
        """The ``Set-Cookie`` value of a sign-in at ``now_s``: valid for ``cookie_max_age_s``."""
        value = self._cookie_value(int(now_s) + self.cookie_max_age_s)
        return f"{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={self.cookie_max_age_s}"

    @staticmethod
    def logout_cookie() -> str:
        return f"{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
