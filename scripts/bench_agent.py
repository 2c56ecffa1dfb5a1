"""Benchmark the site agent: CPU time per plug-poll and published bytes per reading.

    .venv/bin/python scripts/bench_agent.py [--plugs 200] [--seconds 30] [--poll-interval 5] [--json]

The plugs are simulated by ``chargectl sim`` in a separate process (so its CPU is not counted); the
agent polls them over real HTTP, batches, compresses (zstd), signs and publishes to an in-memory bus
in this process. Reported numbers, for tracking from one release to the next:

- ``cpu_ms_per_poll``: this process's CPU time (user + system) divided by successful plug polls,
  measured after a warm-up; it includes HTTP, parsing, batching, encoding, signing and the bus.
- ``bytes_per_reading``: telemetry message bytes (signed envelope) per reading; ``billed_bytes_per_reading``
  adds what Pub/Sub bills per message (attributes, timestamp, message id; ``bench.fleet``), with its
  1000-byte minimum per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.core import PUBSUB_MIN_REQUEST_BYTES  # the benchmarks' package next to this script
from bench.fleet import billed_message_bytes

from chargectl.common.clock import SystemClock
from chargectl.common.codec import SCHEMA_TELEMETRY, unpack_telemetry
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.topics import TELEMETRY_TOPIC
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.agent import Agent, AgentSettings, PlugAddress
from chargectl.services.agent.shelly_plugs import shelly_connector

CHARGECTL = str(Path(sys.executable).parent / "chargectl")


def start_sim(plugs: int) -> tuple[subprocess.Popen[str], list[dict[str, object]]]:
    proc = subprocess.Popen(
        [CHARGECTL, "sim", "--plugs", str(plugs), "--no-mdns", "--json", "--seed", "1", "--profile", "mix"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    if not ready:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit("chargectl sim did not start within 60 s")
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise SystemExit(f"chargectl sim exited with {proc.returncode}")
    return proc, json.loads(line)["plugs"]


async def bench(
    plugs: list[dict[str, object]], seconds: float, poll_s: float, flush_s: float
) -> dict[str, float]:
    bus = MemoryBus()
    await bus.ensure_topic(TELEMETRY_TOPIC)
    await bus.ensure_subscription("bench", TELEMETRY_TOPIC)
    messages: list[BusMessage] = []
    measuring = False

    async def keep(msg: BusMessage) -> bool:
        if measuring and msg.attributes.get("schema") == SCHEMA_TELEMETRY:
            messages.append(msg)
        return True

    await bus.subscribe("bench", keep, max_messages=1000)
    with tempfile.TemporaryDirectory(prefix="chargectl-bench-") as tmp:
        settings = AgentSettings(
            site_id="bench-site",
            plugs=[PlugAddress(str(p["host"]), int(str(p["port"]))) for p in plugs],
            discovery=False,
            state_dir=Path(tmp),
            poll_interval_s=poll_s,
            flush_interval_s=flush_s,
            request_timeout_s=5.0,
            max_backoff_s=2.0,  # a plug that missed its first connect is retried quickly (warm-up)
        )
        clock = SystemClock()
        connector = shelly_connector(password=None, user="admin", timeout_s=5.0, clock=clock)
        agent_key = SigningKey.generate()
        agent = Agent(settings, bus, agent_key, Keyring(), connector, clock=clock)
        task = asyncio.create_task(agent.serve())
        deadline = time.monotonic() + 60
        while agent.health().plugs_online < len(plugs):  # warm-up: every plug connected and polled once
            if time.monotonic() > deadline:
                agent.stop()
                await asyncio.wait_for(task, timeout=30)
                raise SystemExit(
                    f"warm-up: only {agent.health().plugs_online} of {len(plugs)} simulated plugs answered in 60 s"
                )
            await asyncio.sleep(0.2)
        await asyncio.sleep(poll_s)
        polls0 = sum(agent.plug_status(m).polls for m in agent.plugs)
        cpu0, wall0 = time.process_time(), time.monotonic()
        seq0 = agent.health().batch_seq
        measuring = True
        await asyncio.sleep(seconds)
        polls = sum(agent.plug_status(m).polls for m in agent.plugs) - polls0
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        agent.stop()
        await asyncio.wait_for(task, timeout=30)
        measuring = False
        batches = agent.health().batch_seq - seq0
        await bus.close()
    # Decoded after the measurement, so the hub-side work is not counted as the agent's.
    keyring = Keyring()
    keyring.add_public(agent_key.public_bytes, "bench-site")
    readings = sum(len(unpack_telemetry(m.data, keyring).readings) for m in messages)
    data_bytes = sum(len(m.data) for m in messages)
    billed = sum(
        max(PUBSUB_MIN_REQUEST_BYTES, billed_message_bytes(m.data, dict(m.attributes))) for m in messages
    )
    return {
        "plugs": len(plugs),
        "seconds": round(wall, 1),
        "polls": polls,
        "polls_per_s": round(polls / wall, 1),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_poll": round(1000 * cpu / max(polls, 1), 3),
        "cpu_share_of_one_core": round(cpu / wall, 3),
        "batches": batches,
        "readings_published": readings,
        "readings_per_batch": round(readings / max(len(messages), 1), 1),
        "bytes_per_reading": round(data_bytes / max(readings, 1), 1),
        "billed_bytes_per_reading": round(billed / max(readings, 1), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured period after warm-up")
    ap.add_argument("--poll-interval", type=float, default=5.0)
    ap.add_argument("--flush-interval", type=float, default=30.0)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = ap.parse_args()
    proc, plugs = start_sim(args.plugs)
    try:
        result = asyncio.run(bench(plugs, args.seconds, args.poll_interval, args.flush_interval))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:26} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
