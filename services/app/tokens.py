"""Firebase ID tokens: RS256 JWTs checked against Google's published certificates.

A token is accepted only if its header says ``alg: RS256`` with a ``kid`` we have a certificate for, its
signature verifies with that certificate's RSA key, ``aud`` is the project, ``iss`` is
``https://securetoken.google.com/<project>``, it has not expired, ``iat`` (and ``auth_time``) are not in
the future beyond the allowed skew, and ``sub`` (the uid) is a usable document id (:func:`valid_uid`). ``verify_token`` is pure
(certificates and time are arguments); :class:`CertCache` fetches the certificates and keeps them as
long as the response's ``Cache-Control: max-age`` says.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from chargectl.common.clock import Clock
from chargectl.common.errors import ChargectlError
from chargectl.common.ids import valid_uid

__all__ = [
    "CertCache",
    "CertsUnavailable",
    "Identity",
    "TokenError",
    "parse_certs",
    "valid_uid",
    "verify_token",
]

log = logging.getLogger("chargectl.app.tokens")

_MAX_TOKEN = 8192
_MIN_REFETCH_S = 30.0  # an unknown key id refetches the certificates at most this often
_DEFAULT_MAX_AGE_S = 300.0


class TokenError(ChargectlError):
    """The bearer token is missing, malformed, forged, expired or for another project (HTTP 401)."""


class CertsUnavailable(ChargectlError):
    """The signing certificates cannot be fetched and none are cached (HTTP 503)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token names: the uid (``sub``) and what Google says about them."""

    uid: str
    email: str = ""
    email_verified: bool = False
    name: str = ""


def _b64(part: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", part):
        raise TokenError("malformed token")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed token") from None


def _json(part: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64(part))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # deep nesting: not a JWT either
        raise TokenError("malformed token") from None
    if not isinstance(value, dict):
        raise TokenError("malformed token")
    return value


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"token has no valid {name}")
    return float(value)


def parse_certs(body: Any) -> dict[str, rsa.RSAPublicKey]:
    """The RSA public keys of a ``{key id: PEM certificate}`` document (other entries are skipped)."""
    if not isinstance(body, dict):
        raise ValueError("certificates document is not an object")
    keys: dict[str, rsa.RSAPublicKey] = {}
    for kid, pem in body.items():
        if not isinstance(kid, str) or not isinstance(pem, str):
            continue
        try:
            key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        except ValueError:
            log.warning("certificate %s cannot be parsed; skipped", kid)
            continue
        if isinstance(key, rsa.RSAPublicKey):
            keys[kid] = key
    return keys


def verify_token(
    token: str,
    keys: dict[str, rsa.RSAPublicKey],
    project_id: str,
    now_s: float,
    skew_s: float = 60.0,
) -> Identity:
    """The identity in a valid Firebase ID token; TokenError naming the first check that failed."""
    if not token or len(token) > _MAX_TOKEN:
        raise TokenError("missing or oversized token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    header, claims = _json(parts[0]), _json(parts[1])
    signature = _b64(parts[2])
    if header.get("alg") != "RS256":
        raise TokenError("token must be signed with RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise TokenError("token is signed with an unknown key")
    try:
        keys[kid].verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise TokenError("token signature does not verify") from None
    if not project_id or claims.get("aud") != project_id:
        raise TokenError("token is for another project (aud)")
    if claims.get("iss") != f"https://securetoken.google.com/{project_id}":
        raise TokenError("token has the wrong issuer (iss)")
    if _number(claims, "exp") <= now_s:
        raise TokenError("token has expired")
    if _number(claims, "iat") > now_s + skew_s:
        raise TokenError("token is issued in the future (iat)")
    if "auth_time" in claims and _number(claims, "auth_time") > now_s + skew_s:
        raise TokenError("token has a sign-in time in the future (auth_time)")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not valid_uid(sub):
        raise TokenError("token has no valid subject (sub)")
    email = claims.get("email")
    name = claims.get("name")
    return Identity(
        uid=sub,
        email=email if isinstance(email, str) else "",
        email_verified=claims.get("email_verified") is True,
        name=name if isinstance(name, str) else "",
    )


def _max_age(cache_control: str) -> float:
    match = re.search(r"(?:^|[,\s])max-age\s*=\s*(\d+)", cache_control or "")
    if "no-store" in (cache_control or "") or "no-cache" in (cache_control or ""):
        return 0.0
    return float(match.group(1)) if match else _DEFAULT_MAX_AGE_S


class CertCache:
    """The certificates at ``url``, refetched when Cache-Control's max-age has passed or a key id is unknown."""

    def __init__(self, url: str, clock: Clock, timeout_s: float = 5.0) -> None:
        self.url = url
        self.clock = clock
        self.timeout_s = timeout_s
        self.fetches = 0
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._expires_at = 0.0
        self._fetched_at = -1e18
        self._lock = asyncio.Lock()

    async def keys(self, kid: str = "") -> dict[str, rsa.RSAPublicKey]:
        now = self.clock.monotonic()
        stale = now >= self._expires_at
        unknown = bool(kid) and kid not in self._keys and now - self._fetched_at >= _MIN_REFETCH_S
        if stale or unknown:
            async with self._lock:
                now = self.clock.monotonic()
                if now >= self._expires_at or (
                    bool(kid) and kid not in self._keys and now - self._fetched_at >= _MIN_REFETCH_S
                ):
                    await self._fetch(now)
        return self._keys

    async def _fetch(self, now: float) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                resp = await client.get(self.url)
            resp.raise_for_status()
            keys = parse_certs(resp.json())
        except (httpx.HTTPError, ValueError) as exc:
            self._fetched_at = now
            if self._keys:
                log.warning("cannot refresh token certificates (%s); keeping the cached ones", exc)
                return
            raise CertsUnavailable(f"cannot fetch token certificates: {exc}") from exc
        self.fetches += 1
        self._keys = keys
        self._fetched_at = now
        self._expires_at = now + _max_age(resp.headers.get("cache-control", ""))


def unverified_kid(token: str) -> str:
    """The ``kid`` a token's header names (for choosing certificates; nothing is trusted from it)."""
    try:
        header = _json(token.split(".", 1)[0])
    except TokenError:
        return ""
    kid = header.get("kid")
    return kid if isinstance(kid, str) else ""
