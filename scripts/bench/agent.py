"""4. Agent: CPU per plug-poll of the running ``Agent`` against the simulator (another process)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from chargectl.common.keys import SigningKey
from chargectl.services.adapters.memory_bus import MemoryBus

from .baselines import bare_get_cpu
from .core import POLL_INTERVAL_S, Figure, Plan, Report
from .harness import SimProcess, make_agent, wait_for


async def _agent_cpu(ports: list[int], seconds: float, poll_interval_s: float) -> dict[str, float]:
    """CPU of the whole agent (pollers, batcher, packing, signing, publishing) per plug-poll."""
    import tempfile

    from chargectl.common.topics import TELEMETRY_TOPIC

    bus = MemoryBus()
    await bus.ensure_topic(TELEMETRY_TOPIC)
    with tempfile.TemporaryDirectory(prefix="chargectl-bench-") as tmp:
        agent = make_agent(
            Path(tmp),
            "site-agent",
            ports,
            bus,
            SigningKey.generate(),
            SigningKey.generate(),
            poll_interval_s=poll_interval_s,
        )
        task = asyncio.create_task(agent.serve())

        def polls() -> int:
            return sum(agent.plug_status(mac).polls for mac in agent.plugs)

        try:
            await wait_for(
                lambda: len(agent.plugs) == len(ports) and polls() >= 2 * len(ports), "first polls"
            )
            p0, t0 = polls(), time.process_time()
            await asyncio.sleep(seconds)
            p1, t1 = polls(), time.process_time()
        finally:
            agent.stop()
            await asyncio.wait_for(task, 30)
            await bus.close()
    return {"cpu_per_poll_s": (t1 - t0) / max(1, p1 - p0), "polls": p1 - p0}


def bench_agent(plan: Plan, report: Report) -> None:
    details: dict[str, Any] = {}
    for gen in ("2", "1"):
        sim = SimProcess(plan.agent_plugs, gen)
        try:
            real = asyncio.run(_agent_cpu(sim.ports, plan.agent_seconds, plan.agent_poll_interval_s))
            bare = asyncio.run(bare_get_cpu(sim.ports, gen, plan.agent_polls))
        finally:
            sim.stop()
        per_core = POLL_INTERVAL_S / real["cpu_per_poll_s"]
        details[f"gen{gen}"] = {
            "plugs": plan.agent_plugs,
            "poll_interval_s": plan.agent_poll_interval_s,
            "polls_measured": real["polls"],
            "cpu_ms_per_poll": real["cpu_per_poll_s"] * 1000,
            "bare_httpx_cpu_ms_per_poll": bare * 1000,
            "plugs_per_core_at_5s": per_core,
        }
        report.add(
            Figure(
                "agent",
                f"Gen{gen}, CPU ms/plug-poll",
                real["cpu_per_poll_s"] * 1000,
                "ms",
                bare * 1000,
                "bare httpx GET + json.loads",
            ),
            Figure("agent", f"Gen{gen}, plugs/core at 5 s", per_core, "plugs"),
        )
    report.details["agent"] = details
