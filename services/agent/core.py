"""Pure pieces of the agent: the batch buffer, poll scheduling and a plug's online/offline tracking.

Nothing here reads a clock or touches I/O; callers pass ``now`` (monotonic seconds) in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from chargectl.common.codec import InventoryChange
from chargectl.common.readings import Reading

__all__ = ["BatchBuffer", "PlugHealth", "next_poll_delay"]


def next_poll_delay(
    interval_s: float, failures: int, max_backoff_s: float, jitter: float, rng: random.Random
) -> float:
    """Seconds until the next poll: the interval while healthy, doubling per consecutive failure up to
    ``max_backoff_s``; both stretched or shrunk by up to ``jitter`` (a fraction) so plugs do not poll
    in lockstep."""
    base = interval_s * (2 ** min(max(failures - 1, 0), 30)) if failures else interval_s
    base = min(base, max(max_backoff_s, interval_s))
    return base * (1.0 + jitter * (2.0 * rng.random() - 1.0))


@dataclass
class PlugHealth:
    """Consecutive-failure tracking that reports each offline and each recovery exactly once."""

    offline_after: int = 2
    failures: int = 0
    online: bool = True
    last_error: str = ""

    def success(self) -> Literal["recovered"] | None:
        was_offline = not self.online
        self.failures = 0
        self.online = True
        self.last_error = ""
        return "recovered" if was_offline else None

    def failure(self, error: str) -> Literal["offline"] | None:
        self.failures += 1
        self.last_error = error
        if self.online and self.failures >= self.offline_after:
            self.online = False
            return "offline"
        return None


@dataclass
class BatchBuffer:
    """Readings and inventory changes since the last flush; due by time or by size."""

    max_readings: int
    flush_interval_s: float
    started_at: float
    readings: list[Reading] = field(default_factory=list)
    inventory: list[InventoryChange] = field(default_factory=list)

    def add(self, reading: Reading) -> bool:
        """Buffer ``reading``; True when the buffer has reached its size bound."""
        self.readings.append(reading)
        return len(self.readings) >= self.max_readings

    def add_change(self, change: InventoryChange) -> None:
        self.inventory.append(change)

    def __len__(self) -> int:
        return len(self.readings)

    @property
    def empty(self) -> bool:
        return not self.readings and not self.inventory

    def flush_at(self) -> float:
        return self.started_at + self.flush_interval_s

    def due(self, now: float) -> bool:
        return len(self.readings) >= self.max_readings or (not self.empty and now >= self.flush_at())

    def take(self, now: float) -> tuple[list[Reading], list[InventoryChange]]:
        """Up to ``max_readings`` readings (oldest first) and every inventory change; restarts the timer."""
        readings = self.readings[: self.max_readings]
        self.readings = self.readings[self.max_readings :]
        inventory, self.inventory = self.inventory, []
        self.started_at = now
        return readings, inventory
