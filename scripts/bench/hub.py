"""2. Hub throughput on one core through ``Hub.handle_message`` against the naive hub; the hub's whole
CPU share (readings, a ``Hub.tick`` every tick interval, checkpoints when due) over the timed window;
one ``Hub.checkpoint``.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from typing import Any

from chargectl.common import codec
from chargectl.common.clock import ManualClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.topics import DEAD_LETTER_TOPIC, command_topic
from chargectl.services.adapters.timeseries import run_lines
from chargectl.services.hub.service import Hub
from chargectl.services.hub.settings import HubSettings

from .baselines import naive_hub_run
from .core import POLL_INTERVAL_S, START_S, Figure, Plan, Report
from .harness import HubLoad, build_load, feed, make_hub, start_sessions


async def real_hub_run(load: HubLoad, measure_tick: bool) -> dict[str, float]:
    clock = ManualClock(START_S)
    hub, sink = make_hub(load.keys, SigningKey.generate(), clock)
    await hub.ports.bus.ensure_topic(DEAD_LETTER_TOPIC)
    for site in load.keys:
        await hub.ports.bus.ensure_topic(command_topic(site))
    await feed(hub, clock, load.warmup)
    start_sessions(hub, load)
    lines_before = sink.lines
    gc.collect()
    hub.gc.apply(clock.monotonic())  # as Hub.serve does once the plug map is loaded
    try:
        t0 = time.process_time()
        await feed(hub, clock, load.timed)
        cpu = time.process_time() - t0
    finally:
        hub.gc.restore()
    if hub.metrics.value("readings_total") < load.readings:
        raise AssertionError("the hub did not process every reading")
    if sink.lines - lines_before < load.readings:
        raise AssertionError("the hub did not write a time-series line per reading")
    out = {"cpu_s": cpu, "readings_per_s": load.readings / cpu}
    states: dict[str, int] = {}
    for p in hub.plugs.values():
        states[str(p.state.status)] = states.get(str(p.state.status), 0) + 1
    out["charging_plugs"] = states.get("CHARGING", 0) + states.get("AUTHORIZED", 0)
    if measure_tick:
        # A full checkpoint (every part), as on shutdown; the periodic ones are timed in the running window.
        t0 = time.process_time()
        hub.checkpoint()
        out["checkpoint_full_ms"] = (time.process_time() - t0) * 1000
        out.update(await _running_hub(load))
    return out


async def _running_hub(load: HubLoad) -> dict[str, float]:
    """The hub as it runs: the timed readings with a ``Hub.tick`` every ``tick_interval_s`` of hub time
    between them (timers, mirrors, checkpoints when due); CPU over the hub time the window covers."""
    clock = ManualClock(START_S)
    hub, _ = make_hub(load.keys, SigningKey.generate(), clock)
    await hub.ports.bus.ensure_topic(DEAD_LETTER_TOPIC)
    for site in load.keys:
        await hub.ports.bus.ensure_topic(command_topic(site))
    await feed(hub, clock, load.warmup)
    # The sessions' users hold the balance start_sessions gives them, in the ledger the hub re-reads.
    for macs in load.charging.values():
        for mac in macs:
            hub.ledger.post(f"top-{mac}", f"u-{mac}", "topup", 10_000_000, "gbp", round(clock.now() * 1000))
    start_sessions(hub, load)
    await hub.tick()  # the first tick mirrors every plug state the warm-up created and checkpoints
    hub.checkpoint()
    hub.gc.apply(clock.monotonic())  # as Hub.serve does once the plug map is loaded
    try:
        return await _running_window(hub, clock, load)
    finally:
        hub.gc.restore()


async def _running_window(hub: Hub, clock: ManualClock, load: HubLoad) -> dict[str, float]:
    periodic: list[float] = []
    full_checkpoint = hub.checkpoint

    def timed_checkpoint(full: bool = True) -> None:
        t = time.process_time()
        full_checkpoint(full)
        periodic.append(time.process_time() - t)

    setattr(hub, "checkpoint", timed_checkpoint)  # noqa: B010 (an instance attribute, for timing)
    interval = hub.settings.tick_interval_s
    begin = clock.now()
    end = max(at for at, _, _ in load.timed)
    ticks = 0
    tick_cpu = 0.0
    gc.collect()
    t0 = time.process_time()
    next_tick = begin + interval
    for at, data, attrs in load.timed:
        while next_tick <= at:
            clock.set(next_tick)
            t1 = time.process_time()
            await hub.tick()
            tick_cpu += time.process_time() - t1
            ticks += 1
            next_tick += interval
        await feed(hub, clock, [(at, data, attrs)])
    while next_tick <= end + interval:
        clock.set(next_tick)
        t1 = time.process_time()
        await hub.tick()
        tick_cpu += time.process_time() - t1
        ticks += 1
        next_tick += interval
    cpu = time.process_time() - t0
    span = clock.now() - begin
    # The serving hub's periodic collect-and-freeze (every gc_freeze_interval_s) did not fall in the
    # window: one is timed now and its cost per second of hub time added to the share.
    interval = hub.settings.gc_freeze_interval_s
    refresh_s = 0.0
    in_window = hub.gc.refreshes > 1  # then its CPU is in ``cpu`` already
    if hub.gc.applied:
        hub.gc.maybe_refresh(clock.monotonic() + interval)
        refresh_s = hub.gc.mean_refresh_s  # light passes and the hourly full one (gc_tuning), averaged
    return {
        "core_share": cpu / span + (refresh_s / interval if interval and not in_window else 0.0),
        "gc_refresh_ms": refresh_s * 1000,
        "span_s": span,
        "ticks": ticks,
        "checkpoints": len(periodic),
        "checkpoint_ms": statistics.mean(periodic) * 1000 if periodic else 0.0,
        "tick_us_per_plug": tick_cpu / max(ticks, 1) / len(hub.plugs) * 1e6,
    }


def line_floor_us(load: HubLoad) -> float:
    """CPU µs per reading of the time-series sink's line formatting alone (``run_lines``) over the timed
    readings: a floor under the hub's whole path while every reading is written as a line."""
    ring = Keyring()
    for site, key in load.keys.items():
        ring.add_public(key.public_bytes, site)
    charging = {mac for macs in load.charging.values() for mac in macs}
    lines = 0
    cpu = 0.0
    gc.collect()
    for _, data, _ in load.timed:
        batch = codec.unpack_telemetry_runs(data, ring)
        site = batch.site_id
        runs = [(run, "CHARGING" if mac in charging else "AVAILABLE") for mac, run in batch.runs.items()]
        t0 = time.process_time()
        for run, state in runs:
            lines += len(run_lines(site, run, state))
        cpu += time.process_time() - t0
    if lines != load.readings:
        raise AssertionError("the line floor did not format every timed reading")
    return cpu / lines * 1e6


def bench_hub(plan: Plan, report: Report) -> None:
    details: dict[str, Any] = {}
    for n in plan.hub_plugs:
        load = build_load(n, plan.hub_cycles, plan.seed + n)
        repeats = plan.hub_repeats if n <= plan.repeat_max_plugs else 1
        real_runs: list[dict[str, float]] = []
        naive_runs: list[dict[str, float]] = []
        for i in range(repeats):  # interleaved, so both see the same machine noise
            real_runs.append(asyncio.run(real_hub_run(load, measure_tick=(i == 0))))
            naive_runs.append(naive_hub_run(load))
        real = statistics.median(r["readings_per_s"] for r in real_runs)
        naive = statistics.median(r["readings_per_s"] for r in naive_runs)
        floor_us = statistics.median(line_floor_us(load) for _ in range(repeats))
        tick_us = real_runs[0]["tick_us_per_plug"]
        details[str(n)] = {
            "readings": load.readings,
            "messages": len(load.timed),
            "repeats": repeats,
            "real_readings_per_s": [r["readings_per_s"] for r in real_runs],
            "naive_readings_per_s": [r["readings_per_s"] for r in naive_runs],
            "plugs_in_session": real_runs[0]["charging_plugs"],
            "tick_us_per_plug": tick_us,  # mean of the ticks of the running window
            "checkpoint_ms": real_runs[0]["checkpoint_ms"],  # mean periodic (incremental) checkpoint
            "checkpoint_full_ms": real_runs[0]["checkpoint_full_ms"],
            "checkpoints_in_window": real_runs[0]["checkpoints"],
            "gc_refresh_ms": real_runs[0]["gc_refresh_ms"],  # one collect-and-freeze, amortised in the share
            "core_share": real_runs[0]["core_share"],
            "line_floor_us_per_reading": floor_us,
            "core_share_window_s": real_runs[0]["span_s"],
            "core_share_ticks_run": real_runs[0]["ticks"],
            # Share of one core for readings every poll interval plus a tick every tick_interval_s.
            "core_share_readings": n / POLL_INTERVAL_S / real,
            "core_share_ticks": n * tick_us / 1e6 / HubSettings().tick_interval_s,
        }
        report.add(
            Figure(
                "hub",
                f"{n:,} plugs, readings/s",
                real,
                "/s",
                naive,
                "naive hub (JSON per reading, dict state)",
                higher_is_better=True,
            ),
        )
        report.add(
            # The ceiling on "readings/s vs the naive hub" while every reading becomes a line: the
            # naive hub's whole path per reading over the time formatting the lines alone takes.
            Figure(
                "hub",
                f"{n:,} plugs, line formatting alone µs/reading",
                floor_us,
                "µs",
                1e6 / naive,
                "naive hub's whole path per reading",
            ),
            Figure("hub", f"{n:,} plugs, Hub.tick µs/plug (mean)", tick_us, "µs"),
            Figure("hub", f"{n:,} plugs, Hub.checkpoint (periodic)", real_runs[0]["checkpoint_ms"], "ms"),
            Figure("hub", f"{n:,} plugs, CPU share of one core", real_runs[0]["core_share"] * 100, "%"),
        )
    report.details["hub"] = details
