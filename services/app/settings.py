"""The ``[app]`` config table: the app API server, its ID-token checks and its limits."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from chargectl.common.errors import ConfigError

__all__ = ["GOOGLE_CERTS_URL", "AppSettings", "origin_of"]

# Firebase ID tokens are signed with these keys: key id -> PEM X.509 certificate, cached per Cache-Control.
GOOGLE_CERTS_URL = "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower-cased; "" if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return ""
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


@dataclass(frozen=True)
class AppSettings:
    """``[app]``: who may call the API and how hard."""

    # The Firebase project: ID tokens must have aud = project_id, iss = securetoken.google.com/<project_id>.
    project_id: str = ""
    certs_url: str = GOOGLE_CERTS_URL
    # Web origins of the frontend: CORS is answered for these only, and return URLs must be on them.
    allowed_origins: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 65_536
    # A client must send its request line and headers, and then its body, within this many seconds each.
    read_timeout_s: float = 10.0
    # Tolerated clock difference for a token's iat and auth_time.
    clock_skew_s: int = 60
    # Per user, on every /v1 route (reads too: an account read sums the user's whole ledger, and store
    # reads are billed): this many calls, refilled over a minute.
    calls_per_minute: int = 120
    # Per user, on the routes that call Stripe: this many calls, refilled over a minute.
    stripe_calls_per_minute: int = 10
    # Per client address, on the same routes: anyone can make many accounts, each with its own budget.
    ip_calls_per_minute: int = 60
    # Proxies in front of the server that append the client's address to X-Forwarded-For (Cloud Run: 1);
    # 0 = the peer address is the client (a client's own X-Forwarded-For is then ignored).
    forwarded_hops: int = 0
    # How often the auto top-up sweep runs in `chargectl app serve` (0 = never).
    auto_topup_interval_s: float = 30.0
    certs_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.certs_url and not self.certs_url.startswith(("http://", "https://")):
            raise ConfigError(f"app.certs_url: must be an http(s) URL, got {self.certs_url!r}")
        origins = []
        for origin in self.allowed_origins:
            normal = origin_of(origin)
            if not normal or normal != origin.rstrip("/").lower():
                raise ConfigError(
                    f"app.allowed_origins: {origin!r} is not an origin like https://app.example.com"
                )
            origins.append(normal)
        object.__setattr__(self, "allowed_origins", tuple(origins))
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"app.port: {self.port} is not a TCP port")
        if self.max_body_bytes <= 0:
            raise ConfigError("app.max_body_bytes: must be > 0")
        for name in ("read_timeout_s", "certs_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"app.{name}: must be > 0")
        if self.clock_skew_s < 0:
            raise ConfigError("app.clock_skew_s: must be >= 0")
        if self.calls_per_minute <= 0:
            raise ConfigError("app.calls_per_minute: must be > 0")
        if self.stripe_calls_per_minute <= 0:
            raise ConfigError("app.stripe_calls_per_minute: must be > 0")
        if self.ip_calls_per_minute <= 0:
            raise ConfigError("app.ip_calls_per_minute: must be > 0")
        if not 0 <= self.forwarded_hops <= 8:
            raise ConfigError("app.forwarded_hops: must be between 0 and 8")
        if self.auto_topup_interval_s < 0:
            raise ConfigError("app.auto_topup_interval_s: must be >= 0")

    @property
    def issuer(self) -> str:
        return f"https://securetoken.google.com/{self.project_id}"
