"""A per-key token bucket (pure: time is an argument), shared by every boundary that limits callers: the
app API (per user, per address), the console's sign-in (per address) and the hub's charge requests
(per user)."""

from __future__ import annotations

import threading

__all__ = ["RateLimiter"]


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
