"""Pure pieces of the agent: the batch buffer, poll scheduling and a plug's online/offline tracking.

Nothing here reads a clock or touches I/O; callers pass ``now`` (monotonic seconds) in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from chargectl.common.codec import CommandOutcome, InventoryChange
from chargectl.common.readings import Reading

__all__ = ["POLL_SLOT_MAX_S", "BatchBuffer", "PlugHealth", "next_poll_delay", "poll_slot_s", "slot_due"]


def next_poll_delay(
    interval_s: float, failures: int, max_backoff_s: float, jitter: float, rng: random.Random
) -> float:
    """Seconds until the next poll: the interval while healthy, doubling per consecutive failure up to
    ``max_backoff_s``; both stretched or shrunk by up to ``jitter`` (a fraction) so plugs do not poll
    in lockstep."""
    base = interval_s * (2 ** min(max(failures - 1, 0), 30)) if failures else interval_s
    base = min(base, max(max_backoff_s, interval_s))
    return base * (1.0 + jitter * (2.0 * rng.random() - 1.0))


# Polls are due on a grid of slots (at most this long, and a twentieth of the poll interval), so the
# agent's scheduler wakes once per slot for every plug due in it instead of once per plug.
POLL_SLOT_MAX_S = 0.25


def poll_slot_s(interval_s: float) -> float:
    """The poll grid's slot for a poll interval: a twentieth of it, at most :data:`POLL_SLOT_MAX_S`."""
    return min(POLL_SLOT_MAX_S, interval_s / 20)


def slot_due(now: float, delay_s: float, slot_s: float) -> float:
    """When a poll wanted ``delay_s`` after ``now`` is due: the first slot boundary at or after it
    (never earlier than asked, at most one slot later)."""
    return math.ceil((now + delay_s) / slot_s) * slot_s


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
    """Readings, inventory changes and command results since the last flush; due by time or by size.

    Command results ride in the next flush, but wait at most ``result_flush_s`` (someone may be
    waiting for that relay): then they go alone (:meth:`take_results`), the results that arrived
    within that window together, and the readings keep their own flush interval. A results-only batch
    costs what one result message did; splitting the readings' batch would cost the per-batch
    overhead (every plug's MAC) once more."""

    max_readings: int
    flush_interval_s: float
    started_at: float
    readings: list[Reading] = field(default_factory=list)
    inventory: list[InventoryChange] = field(default_factory=list)
    result_flush_s: float = 0.5
    results: list[CommandOutcome] = field(default_factory=list)
    results_since: float | None = None  # when the oldest pending result arrived

    def add(self, reading: Reading) -> bool:
        """Buffer ``reading``; True when the buffer has reached its size bound."""
        self.readings.append(reading)
        return len(self.readings) >= self.max_readings

    def add_change(self, change: InventoryChange) -> None:
        self.inventory.append(change)

    def add_result(self, result: CommandOutcome, now: float) -> None:
        """Buffer ``result``; the buffer is due by ``now + result_flush_s`` at the latest."""
        self.results.append(result)
        if self.results_since is None:
            self.results_since = now

    def __len__(self) -> int:
        return len(self.readings)

    @property
    def empty(self) -> bool:
        return not self.readings and not self.inventory and not self.results

    def flush_at(self) -> float:
        """When the next flush of either kind is due."""
        at = self.started_at + self.flush_interval_s
        if self.results_since is not None:
            at = min(at, self.results_since + self.result_flush_s)
        return at

    def due(self, now: float) -> bool:
        """Is a whole flush due (size bound, or the flush interval with anything buffered)?"""
        return len(self.readings) >= self.max_readings or (
            not self.empty and now >= self.started_at + self.flush_interval_s
        )

    def results_due(self, now: float) -> bool:
        """Have the pending results waited ``result_flush_s``?"""
        return self.results_since is not None and now >= self.results_since + self.result_flush_s

    def take_results(self) -> list[CommandOutcome]:
        """Every pending command result, alone; the readings' flush interval runs on."""
        results, self.results = self.results, []
        self.results_since = None
        return results

    def take(self, now: float) -> tuple[list[Reading], list[InventoryChange], list[CommandOutcome]]:
        """Up to ``max_readings`` readings (oldest first), every inventory change and every command
        result; restarts the timer."""
        readings = self.readings[: self.max_readings]
        self.readings = self.readings[self.max_readings :]
        inventory, self.inventory = self.inventory, []
        results, self.results = self.results, []
        self.results_since = None
        self.started_at = now
        return readings, inventory, results
