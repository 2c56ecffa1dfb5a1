"""Pure agent logic: poll back-off, offline/online tracking, the batch buffer."""

from __future__ import annotations

import random

from chargectl.common.codec import CommandOutcome
from chargectl.common.readings import Reading
from chargectl.services.agent.core import (
    BatchBuffer,
    PlugHealth,
    next_poll_delay,
    poll_slot_s,
    slot_due,
)


def test_backoff_doubles_per_failure_and_caps() -> None:
    rng = random.Random(1)
    delays = [next_poll_delay(5.0, f, 60.0, 0.0, rng) for f in range(7)]
    assert delays == [5.0, 5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


def test_jitter_stays_within_its_fraction() -> None:
    rng = random.Random(7)
    delays = [next_poll_delay(5.0, 0, 60.0, 0.1, rng) for _ in range(500)]
    assert all(4.5 <= d <= 5.5 for d in delays)
    assert max(delays) - min(delays) > 0.5  # it does spread


def test_polls_fall_on_a_grid_of_slots_never_before_they_are_due() -> None:
    assert poll_slot_s(5.0) == 0.25 and poll_slot_s(60.0) == 0.25  # at most 250 ms
    assert poll_slot_s(1.0) == 0.05 and poll_slot_s(0.1) == 0.005  # a twentieth of short intervals
    rng = random.Random(3)
    for _ in range(2000):
        now = 10_000 + rng.random() * 1000
        delay = next_poll_delay(5.0, rng.randrange(4), 60.0, 0.1, rng)
        due = slot_due(now, delay, 0.25)
        assert now + delay <= due < now + delay + 0.25  # never early, at most a slot late
        assert abs(due / 0.25 - round(due / 0.25)) < 1e-6  # on the grid
    # Plugs asking for nearby times share a slot: one wake-up of the scheduler serves them all.
    dues = {slot_due(100.0, 5.0 + k / 100, 0.25) for k in range(25)}
    assert dues == {105.0, 105.25}


def test_offline_once_and_recovered_once() -> None:
    health = PlugHealth(offline_after=2)
    events = [health.failure("timeout") for _ in range(5)]
    assert events == [None, "offline", None, None, None]
    assert not health.online and health.failures == 5
    assert [health.success(), health.success()] == ["recovered", None]
    assert health.failure("x") is None  # one blip does not count as offline


def reading(i: int) -> Reading:
    return Reading(mac="A8032AB12345", ts_ms=i, power_w=1.0, energy_mwh=i, relay_on=True)


def test_buffer_due_by_time_or_size_and_take_splits() -> None:
    buf = BatchBuffer(max_readings=3, flush_interval_s=30.0, started_at=100.0)
    assert not buf.due(1000.0)  # empty is never due
    assert buf.add(reading(1)) is False
    assert not buf.due(129.9) and buf.due(130.0)
    buf.add(reading(2))
    assert buf.add(reading(3)) is True and buf.due(101.0)
    buf.add(reading(4))
    first, inv, results = buf.take(now=105.0)
    assert [r.ts_ms for r in first] == [1, 2, 3] and inv == [] and results == []
    assert [r.ts_ms for r in buf.readings] == [4] and buf.flush_at() == 135.0


def outcome(n: int) -> CommandOutcome:
    return CommandOutcome(f"A8032AB12345.{n}.0", "site-a", "A8032AB12345", True, "executed", n, True)


def test_results_wait_at_most_result_flush_s_then_go_alone_and_a_burst_shares_a_batch() -> None:
    buf = BatchBuffer(max_readings=100, flush_interval_s=30.0, started_at=100.0, result_flush_s=0.5)
    buf.add(reading(1))
    assert buf.flush_at() == 130.0
    buf.add_result(outcome(1), now=110.0)
    assert buf.flush_at() == 110.5 and not buf.results_due(110.4) and buf.results_due(110.5)
    assert not buf.due(110.5)  # the readings keep their interval
    buf.add_result(outcome(2), now=110.3)  # within the window: same deadline, same batch
    assert buf.flush_at() == 110.5
    assert buf.take_results() == [outcome(1), outcome(2)]
    assert not buf.results_due(1000.0) and buf.flush_at() == 130.0  # the readings' timer ran on
    assert [r.ts_ms for r in buf.readings] == [1] and buf.due(130.0)


def test_a_whole_flush_carries_the_pending_results() -> None:
    buf = BatchBuffer(max_readings=100, flush_interval_s=30.0, started_at=100.0, result_flush_s=5.0)
    assert not buf.due(1000.0)
    buf.add(reading(1))
    buf.add_result(outcome(1), now=128.0)
    assert buf.flush_at() == 130.0 and buf.due(130.0)  # the interval comes first
    readings, _, results = buf.take(now=130.0)
    assert [r.ts_ms for r in readings] == [1] and results == [outcome(1)]
    assert buf.empty and not buf.due(1000.0) and not buf.results_due(1000.0)
    buf.add_result(outcome(2), now=140.0)  # a result alone: not empty, due alone before the interval
    assert not buf.empty and not buf.due(144.9) and not buf.results_due(144.9) and buf.results_due(145.0)
