"""The console's token: a bearer header for scripts, or a cookie the login form sets for browsers.

The cookie holds an HMAC of the token (not the token), so rotating the token signs every browser out.
Comparisons are constant-time; neither the token nor a candidate is ever logged.
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
        self._cookie = hmac.new(self._token, b"chargectl-console-cookie-v1", hashlib.sha256).hexdigest()
        self.cookie_max_age_s = cookie_max_age_s

    @property
    def required(self) -> bool:
        return bool(self._token)

    def token_matches(self, candidate: str) -> bool:
        return bool(self._token) and hmac.compare_digest(_b(candidate), self._token)

    def allows(self, headers: Mapping[str, str]) -> bool:
        """True if the request carries the token (``Authorization: Bearer …``) or the login cookie."""
        if not self.required:
            return True
        scheme, _, value = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(value.strip()):
            return True
        cookie = _cookies(headers.get("cookie", "")).get(COOKIE_NAME, "")
        return bool(cookie) and hmac.compare_digest(_b(cookie), _b(self._cookie))

    def login_cookie(self) -> str:
        return (
            f"{COOKIE_NAME}={self._cookie}; Path=/; HttpOnly; SameSite=Strict; "
            f"Max-Age={self.cookie_max_age_s}"
        )

    @staticmethod
    def logout_cookie() -> str:
        return f"{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
