"""The serving hub's collector tuning (``[hub] gc_freeze_interval_s``): serve() freezes what start-up
loaded, stop() undoes it, the young generations still collect new cycles on their own, and a cycle
that was frozen and then dropped is reclaimed by the next periodic refresh (memory does not leak)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargectl.common.clock import ManualClock
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.hub import gc_tuning
from chargectl.services.hub.gc_tuning import GcTuning
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    threshold = gc.get_threshold()
    yield
    assert gc_tuning._holders == 0, "a test left the collector tuned"
    assert gc.get_threshold() == threshold, "a test left the thresholds changed"
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> tuple[_Node, list[bool]]:
    """Two objects that only a cycle keeps alive once dropped; the flag turns True when they are freed."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    freed: list[bool] = []
    weakref.finalize(a, freed.append, True)
    return a, freed


def _hub(tmp_path: Path, clock: ManualClock | None = None, **settings: float) -> Hub:
    ports = HubPorts(
        MemoryBus(), SqliteStore(tmp_path / "hub.db"), SqliteTimeSeries(tmp_path / "ts.db"), lambda s, n: None
    )  # type: ignore[arg-type,return-value]
    return Hub(HubSettings(request_watch=False, **settings), ports, clock)  # type: ignore[arg-type]


async def test_serve_freezes_what_start_up_loaded_and_stop_unfreezes(tmp_path: Path) -> None:
    hub = _hub(tmp_path, tick_interval_s=0.01, request_poll_s=0.01)
    task = asyncio.create_task(hub.serve(health=False))
    deadline = asyncio.get_running_loop().time() + 60
    while not hub.gc.applied:
        assert asyncio.get_running_loop().time() < deadline, "serve() never applied the tuning"
        assert not task.done(), task
        await asyncio.sleep(0.01)
    frozen = gc.get_freeze_count()
    assert frozen > 1000 and gc.isenabled()  # the process's long-lived objects, the hub among them
    before = gc.get_threshold()
    assert gc.get_threshold()[0] == 10_000  # the young generations are still collected automatically
    hub.request_stop()
    await asyncio.wait_for(task, 60)
    assert gc.get_freeze_count() == 0 and not hub.gc.applied
    assert gc.get_threshold()[0] != 10_000 and gc.get_threshold()[1:] == before[1:]


async def test_interval_zero_leaves_pythons_collector_alone(tmp_path: Path) -> None:
    hub = _hub(tmp_path, gc_freeze_interval_s=0)
    threshold = gc.get_threshold()
    hub.gc.apply(0.0)
    assert gc.get_freeze_count() == 0 and not hub.gc.applied and gc.get_threshold() == threshold
    await hub.tick()
    assert gc.get_freeze_count() == 0


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="gc_freeze_interval_s"):
        HubSettings(gc_freeze_interval_s=-1)
    with pytest.raises(ValueError, match="gc_freeze_interval_s"):
        GcTuning(-1)
    with pytest.raises(ValueError, match="gc_gen0_threshold"):
        HubSettings(gc_gen0_threshold=0)


def test_cycles_made_after_the_freeze_are_collected_without_an_explicit_collect() -> None:
    tuning = GcTuning(600)
    tuning.apply(0.0)
    try:
        node, freed = _cycle()
        del node
        # Keep allocating tracked objects (the young generation's count is allocations minus frees)
        # until its automatic pass has run: bounded at a hundred thresholds, never calling gc.collect.
        keep: list[list[int]] = []
        assert gc.get_threshold()[0] == 10_000
        for i in range(gc.get_threshold()[0] * 100):
            keep.append([i])
            if freed:
                break
        assert freed == [True], "a cycle made while frozen was never collected"
    finally:
        tuning.restore()


async def test_a_frozen_cycle_dropped_later_is_reclaimed_within_the_full_pass_bound(tmp_path: Path) -> None:
    # Most refreshes are light (they collect and freeze what is not frozen yet, a few ms at 100k plugs):
    # a cycle frozen at start-up and dropped later outlives them, and the full pass (unfreeze, collect
    # everything, freeze) every full_every-th refresh reclaims it: never later than full_every × interval.
    clock = ManualClock(1_767_225_600.0)
    hub = _hub(tmp_path, clock, gc_freeze_interval_s=600)
    assert hub.gc.full_every == gc_tuning.FULL_EVERY == 6 and hub.gc.reclaim_bound_s == 3600
    node, freed = _cycle()  # long-lived at start-up: frozen with the rest
    hub.gc.apply(clock.monotonic())
    try:
        assert (hub.gc.refreshes, hub.gc.full_refreshes) == (1, 1)
        del node
        gc.collect()  # frozen objects are not looked at: the cycle stays until a full pass
        assert freed == []
        clock.advance(599)
        await hub.tick()
        assert freed == [] and hub.gc.refreshes == 1
        later, later_freed = _cycle()  # made after the freeze: a light refresh freezes it (alive)...
        for n in range(1, hub.gc.full_every):
            clock.advance(600 if n > 1 else 1)
            await hub.tick()
            assert hub.gc.refreshes == n + 1 and hub.gc.full_refreshes == 1, n
            assert freed == [], f"light refresh {n} walked the frozen objects"
        assert later_freed == []
        del later  # ...and once dropped, it is frozen garbage too, reclaimed by the same full pass
        clock.advance(599)
        await hub.tick()
        assert freed == [] and hub.gc.full_refreshes == 1
        clock.advance(1)  # full_every × interval after the last full pass
        await hub.tick()
        assert freed == [True] and later_freed == [True]
        assert (hub.gc.refreshes, hub.gc.full_refreshes) == (hub.gc.full_every + 1, 2)
        assert gc.get_freeze_count() > 0  # frozen again after the collection
    finally:
        hub.gc.restore()


def test_a_light_refresh_reclaims_a_cycle_that_died_before_it_was_frozen() -> None:
    tuning = GcTuning(600)
    tuning.apply(0.0)
    gc.disable()  # no automatic young pass: only the refresh may collect it
    try:
        node, freed = _cycle()
        del node
        assert tuning.maybe_refresh(600.0) and tuning.full_refreshes == 1  # a light one
        assert freed == [True]
        assert tuning.mean_refresh_s == (tuning.last_full_s + 5 * tuning.last_refresh_s) / 6
    finally:
        gc.enable()
        tuning.restore()


def test_full_every_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="full_every"):
        GcTuning(600, full_every=0)


def test_the_freeze_is_undone_only_when_the_last_hub_of_the_process_stops() -> None:
    python_s = gc.get_threshold()
    a, b = GcTuning(600, 5_000), GcTuning(600, 20_000)
    a.apply(0.0)
    b.apply(0.0)
    a.restore()
    assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == 20_000
    a.restore()  # twice: no effect on b's tuning
    assert gc.get_freeze_count() > 0
    b.restore()
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == python_s
