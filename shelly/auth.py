"""Shelly authentication: Gen1 HTTP Basic, Gen2+ SHA-256 digest (header form and JSON ``auth`` form).

Pure computation and state; the client decides when to send and when to re-challenge.

Digest rules that bite on firmware 2.0 (Shelly's Gen2+ authentication):
- the user is always ``admin`` and the realm is the device id;
- the nonce is echoed exactly as challenged (hex, decimal or base64 with ``=`` padding);
- each new nonce starts at nc=1 and nc increases by one per request on that nonce;
- header form: HA2 = SHA256("METHOD:uri"), nc as 8 hex digits;
  JSON form: HA2 = SHA256("dummy_method:dummy_uri"), nc as a plain decimal;
- ``stale=true`` means "take the fresh nonce", not "wrong password";
- an empty ``opaque=""`` is echoed back (some devices reject its absence).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from chargectl.common.errors import InvalidResponse

__all__ = [
    "GEN2_USER",
    "JSON_HA2",
    "Challenge",
    "DigestState",
    "basic_header",
    "digest_response",
    "ha1",
    "parse_auth_header",
    "parse_json_challenge",
    "sha256_hex",
]

GEN2_USER = "admin"
JSON_HA2 = (
    "6370ec69915103833b5222b368555393393f098bfbfbb59f47e0590af135f062"  # sha256("dummy_method:dummy_uri")
)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def ha1(realm: str, password: str, user: str = GEN2_USER) -> str:
    """HA1 = SHA256("user:realm:password") — what a Gen2+ device stores instead of the password."""
    return sha256_hex(f"{user}:{realm}:{password}")


def digest_response(ha1_hex: str, nonce: str, nc: str, cnonce: str, ha2_hex: str, qop: str = "auth") -> str:
    """RFC 7616 response = SHA256(HA1:nonce:nc:cnonce:qop:HA2)."""
    return sha256_hex(f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2_hex}")


def basic_header(user: str, password: str) -> str:
    """``Authorization`` value for Gen1 HTTP Basic."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {token}"


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a="b", c=d`` → (``"digest"``, {a: b, c: d}); quoted values may contain ``=`` and ``,``."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise InvalidResponse(f"malformed auth header: {value!r}")
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            out: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(rest[i])
                i += 1
            if i >= n:
                raise InvalidResponse(f"unterminated quoted value in auth header: {value!r}")
            i += 1
            params[key] = "".join(out)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


@dataclass(frozen=True, slots=True)
class Challenge:
    """One digest challenge as the device sent it (nonce kept verbatim)."""

    realm: str
    nonce: str
    algorithm: str = "SHA-256"
    qop: str = "auth"
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def from_header(cls, value: str) -> Challenge:
        scheme, params = parse_auth_header(value)
        if scheme != "digest":
            raise InvalidResponse(f"expected a Digest challenge, got {scheme!r}")
        if "realm" not in params or "nonce" not in params:
            raise InvalidResponse("digest challenge without realm or nonce")
        algorithm = params.get("algorithm", "SHA-256")
        if algorithm.upper() != "SHA-256":
            raise InvalidResponse(f"unsupported digest algorithm {algorithm!r} (only SHA-256)")
        qop = params.get("qop", "auth")
        if "auth" not in [q.strip() for q in qop.split(",")]:
            raise InvalidResponse(f"unsupported digest qop {qop!r}")
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            algorithm=algorithm,
            qop="auth",
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
        )


def parse_json_challenge(message: str) -> Challenge:
    """The 401 RPC error's ``message`` is itself a JSON string carrying the challenge: parse it again."""
    try:
        data: Any = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: a hostile plug's message nested too deep
        raise InvalidResponse(f"401 challenge message is not JSON: {message[:60]!r}") from None
    if not isinstance(data, dict) or "nonce" not in data or "realm" not in data:
        raise InvalidResponse(f"401 challenge without nonce/realm: {message!r}")
    return Challenge(
        realm=str(data["realm"]),
        nonce=str(data["nonce"]),  # may arrive as an int on fw 1.x; echoed as its decimal text
        algorithm=str(data.get("algorithm", "SHA-256")),
        stale=bool(data.get("stale", False)),
    )


def _cnonce() -> str:
    return os.urandom(8).hex()


class DigestState:
    """The digest state for one device: HA1, the current challenge and its nonce count.

    One instance per device, used under that device's request lock so nc values go out in order.
    """

    def __init__(self, password: str, user: str = GEN2_USER) -> None:
        self.user = user
        self._password = password
        self.challenge: Challenge | None = None
        self.nc = 0
        self._ha1: str | None = None

    def adopt(self, challenge: Challenge) -> None:
        """Take a new challenge: a new nonce always restarts the count at 1."""
        if self.challenge is None or challenge.realm != self.challenge.realm:
            self._ha1 = ha1(challenge.realm, self._password, self.user)
        self.challenge = challenge
        self.nc = 0

    def forget(self) -> None:
        """Drop the cached nonce (after a 429 the device may have evicted it)."""
        self.challenge = None
        self.nc = 0

    def _next(self) -> tuple[Challenge, str]:
        if self.challenge is None or self._ha1 is None:
            raise RuntimeError("no digest challenge adopted yet")
        self.nc += 1
        return self.challenge, self._ha1

    def header(self, method: str, uri: str, cnonce: str | None = None) -> str:
        """Header form: HA2 = SHA256("METHOD:uri"), nc 8 hex digits, opaque echoed even when empty."""
        ch, ha1_hex = self._next()
        nc = f"{self.nc:08x}"
        cn = cnonce or _cnonce()
        response = digest_response(ha1_hex, ch.nonce, nc, cn, sha256_hex(f"{method}:{uri}"))
        parts = [
            f'username="{self.user}"',
            f'realm="{ch.realm}"',
            f'nonce="{ch.nonce}"',
            f'uri="{uri}"',
            f'response="{response}"',
            "qop=auth",
            f"nc={nc}",
            f'cnonce="{cn}"',
            "algorithm=SHA-256",
        ]
        if ch.opaque is not None:
            parts.append(f'opaque="{ch.opaque}"')
        return "Digest " + ", ".join(parts)

    def json_auth(self, cnonce: str | None = None) -> dict[str, Any]:
        """JSON-RPC ``auth`` object: fixed dummy HA2, nc a plain decimal integer."""
        ch, ha1_hex = self._next()
        cn = cnonce or _cnonce()
        nonce: Any = int(ch.nonce) if ch.nonce.isdigit() else ch.nonce
        return {
            "realm": ch.realm,
            "username": self.user,
            "nonce": nonce,
            "cnonce": cn,
            "response": digest_response(ha1_hex, ch.nonce, str(self.nc), cn, JSON_HA2),
            "algorithm": "SHA-256",
            "nc": self.nc,
        }
