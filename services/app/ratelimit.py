"""A per-key token bucket and the client address it is keyed by (pure: time is an argument)."""

from __future__ import annotations

import ipaddress
import threading

__all__ = ["RateLimiter", "client_address"]


def client_address(peer: str | None, forwarded_for: str, hops: int) -> str:
    """The client's address: the peer's with ``hops == 0``; else the ``hops``-th address from the right of
    X-Forwarded-For (each trusted proxy appends the address it was connected from, so everything left of
    that was written by the client and is not trusted). A header too short or not an address: the peer.
    IPv6 clients are keyed by their /64 (one host can have a whole /64 of addresses)."""
    address = peer or ""
    if hops > 0:
        parts = [p.strip() for p in forwarded_for.split(",") if p.strip()]
        if len(parts) >= hops:
            address = parts[-hops]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return peer or ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


class RateLimiter:
    """``capacity`` calls per key, refilled evenly over ``period_s``; thread-safe."""

    def __init__(self, capacity: int, period_s: float = 60.0, max_keys: int = 100_000) -> None:
        self.capacity = capacity
        self.rate = capacity / period_s
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> float:
        """0.0 if ``key`` may call now (one token taken), else the seconds until it may."""
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.capacity), now))
            tokens = min(float(self.capacity), tokens + max(0.0, now - at) * self.rate)
            if tokens >= 1.0:
                if len(self._buckets) >= self.max_keys and key not in self._buckets:
                    self._prune(now)
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.capacity]
        for k in full:
            del self._buckets[k]
