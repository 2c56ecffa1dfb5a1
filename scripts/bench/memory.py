"""3. Hub memory per plug (tracemalloc) against the naive hub's dict state."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

from chargectl.common.clock import ManualClock
from chargectl.common.keys import SigningKey
from chargectl.common.topics import command_topic
from chargectl.services.hub.registry import SAMPLES

from .baselines import naive_memory
from .core import START_S, Figure, Plan, Report
from .harness import HubLoad, build_load, feed, make_hub, start_sessions


def bench_memory(plan: Plan, report: Report) -> None:
    details: dict[str, Any] = {}
    for n in plan.memory_plugs:
        # State after a few samples is all the memory figure needs: one-poll flushes keep set-up short.
        load = build_load(n, 1, plan.seed + 1000 + n, polls_per_cycle=1)
        real, by_line, rows_before = asyncio.run(_real_memory(load))
        if rows_before:
            report.notes.append(
                f"memory at {n:,} plugs: {rows_before:,} column rows were left by an earlier hub in this"
                " process; the figure counts their columns again (an overcount)"
            )
        naive = naive_memory(load)
        details[str(n)] = {
            "real_bytes_per_plug": real,
            "naive_bytes_per_plug": naive,
            "by_line": by_line,  # where the hub's bytes per plug were allocated (largest first)
        }
        report.add(
            Figure(
                "memory",
                f"{n:,} plugs, bytes/plug",
                real,
                "B",
                naive,
                "naive dict state",
            )
        )
    report.details["memory"] = details


BY_LINE_TOP = 25  # source lines listed in the JSON details, largest first


async def _real_memory(load: HubLoad) -> tuple[float, list[dict[str, Any]], int]:
    """The hub's bytes per plug after real traffic, the source lines that allocated them, and how many
    column rows existed before (0 unless another hub's entries live in this process)."""
    clock = ManualClock(START_S)
    hub, _ = make_hub(load.keys, SigningKey.generate(), clock)
    for site in load.keys:
        await hub.ports.bus.ensure_topic(command_topic(site))
    gc.collect()
    # Rows an earlier hub in this process gave back (its columns stay while any entry lives) would be
    # reused by this hub's entries without growing the columns, and not counted: hold them aside. The
    # columns then grow by this hub's rows, but tracemalloc counts a block allocated before it started
    # whole once it is reallocated: an overcount, said in the report. A run of its own starts with none.
    spare = [SAMPLES.take() for _ in range(len(SAMPLES.ts_ms) - len(SAMPLES))]
    rows_before = len(SAMPLES.ts_ms)
    tracemalloc.start()
    try:
        first = tracemalloc.take_snapshot()  # before ``before``: the figure does not count the snapshot
        before = tracemalloc.get_traced_memory()[0]
        await feed(hub, clock, load.warmup)
        start_sessions(hub, load)
        await feed(hub, clock, load.timed)
        await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        diff = tracemalloc.take_snapshot().compare_to(first, "lineno")
    finally:
        tracemalloc.stop()
        for row in spare:
            SAMPLES.give_back(row)
    if len(hub.plugs) != load.n:
        raise AssertionError(f"the hub knows {len(hub.plugs)} plugs, expected {load.n}")
    by_line = [
        {
            "line": "/".join(stat.traceback[0].filename.split("/")[-2:]) + f":{stat.traceback[0].lineno}",
            "bytes_per_plug": round(stat.size_diff / load.n, 1),
            "blocks_per_plug": round(stat.count_diff / load.n, 3),
        }
        for stat in diff[:BY_LINE_TOP]
    ]
    return (after - before) / load.n, by_line, rows_before
