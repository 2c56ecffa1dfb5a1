"""Every baseline the benchmark compares against, in one place to audit.

- JSON per reading (one compact JSON object, one message each): wire and hub input.
- A row-per-reading protobuf batch + zstd-3, defined here at run time (not in ``contracts/``): wire.
- The naive hub: JSON per reading, a dict of dicts as state, a threshold machine, f-string line
  protocol; its throughput (hub) and its memory per plug (memory).
- A bare httpx GET of the status document + ``json.loads``: agent CPU per plug-poll.
- ``set_relay`` straight to the plug: request → relay latency.
- A Firestore document per reading: cost.

None of them may be weakened to make chargectl look better.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

import zstandard

from chargectl.common import codec
from chargectl.common.readings import Reading

from .core import FIRESTORE_FREE_PER_DAY, FIRESTORE_WRITE_USD, READINGS_PER_PLUG_MONTH

if TYPE_CHECKING:
    from .harness import HubLoad


def reading_dict(r: Reading) -> dict[str, Any]:
    return {
        "mac": r.mac,
        "ts_ms": r.ts_ms,
        "power_w": r.power_w,
        "energy_mwh": r.energy_mwh,
        "relay_on": r.relay_on,
        "voltage_v": r.voltage_v,
        "current_a": r.current_a,
        "temperature_c": r.temperature_c,
        "errors": r.errors,
        "uptime_s": r.uptime_s,
    }


def json_reading(r: Reading, site_id: str) -> bytes:
    """The JSON-per-reading baseline: one compact JSON object per reading (one message each)."""
    return json.dumps({"site_id": site_id, **reading_dict(r)}, separators=(",", ":")).encode()


def row_batch_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_row.proto", package="benchrow", syntax="proto3")
    row = fdp.message_type.add(name="Reading")
    for number, (name, kind) in enumerate(
        [
            ("mac", f.TYPE_STRING),
            ("ts_ms", f.TYPE_INT64),
            ("power_w", f.TYPE_FLOAT),
            ("energy_mwh", f.TYPE_INT64),
            ("relay_on", f.TYPE_BOOL),
            ("voltage_v", f.TYPE_FLOAT),
            ("current_a", f.TYPE_FLOAT),
            ("temperature_c", f.TYPE_FLOAT),
            ("errors", f.TYPE_UINT32),
            ("uptime_s", f.TYPE_UINT32),
        ],
        start=1,
    ):
        row.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
    b = fdp.message_type.add(name="Batch")
    b.field.add(name="site_id", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    b.field.add(name="batch_seq", number=2, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    b.field.add(
        name="readings", number=3, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED, type_name=".benchrow.Reading"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("benchrow.Batch"))


_ROW_BATCH: Any = None


def row_batch_zstd(batch: codec.Batch) -> bytes:
    """The plain-protobuf baseline: a row-per-reading batch compressed with zstd level 3."""
    global _ROW_BATCH
    if _ROW_BATCH is None:
        _ROW_BATCH = row_batch_class()
    msg = _ROW_BATCH(site_id=batch.site_id, batch_seq=batch.batch_seq)
    for r in batch.readings:
        msg.readings.add(
            mac=r.mac,
            ts_ms=r.ts_ms,
            power_w=r.power_w,
            energy_mwh=r.energy_mwh,
            relay_on=r.relay_on,
            voltage_v=r.voltage_v or 0.0,
            current_a=r.current_a or 0.0,
            temperature_c=r.temperature_c or 0.0,
            errors=r.errors,
            uptime_s=r.uptime_s or 0,
        )
    return bytes(zstandard.ZstdCompressor(level=3).compress(msg.SerializeToString()))


class NaiveHub:
    """The baseline: one JSON message per reading, a dict of dicts as state, a threshold machine,
    f-string line protocol. No signatures, no sessions maths, no checkpoint."""

    def __init__(self) -> None:
        self.plugs: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []

    def handle(self, data: bytes) -> None:
        r = json.loads(data)
        mac = r["mac"]
        st = self.plugs.get(mac)
        if st is None:
            st = self.plugs[mac] = {
                "site_id": r["site_id"],
                "status": "AVAILABLE",
                "last_ts_ms": 0,
                "power_w": 0.0,
                "energy_mwh": r["energy_mwh"],
                "relay_on": False,
                "high": 0,
                "low": 0,
                "session_mwh": None,
            }
        if r["ts_ms"] <= st["last_ts_ms"]:
            return
        power = r["power_w"]
        if st["session_mwh"] is not None:
            st["session_mwh"] += max(0, r["energy_mwh"] - st["energy_mwh"])
        st["last_ts_ms"] = r["ts_ms"]
        st["power_w"] = power
        st["energy_mwh"] = r["energy_mwh"]
        st["relay_on"] = r["relay_on"]
        st["high"] = st["high"] + 1 if power >= 35 else 0
        st["low"] = st["low"] + 1 if power < 15 else 0
        if st["status"] != "CHARGING" and st["high"] >= 5:
            st["status"] = "CHARGING"
        elif st["status"] == "CHARGING" and st["low"] >= 120:
            st["status"] = "AVAILABLE"
        self.lines.append(
            f"plug,site_id={st['site_id']},mac={mac} power_w={power},energy_wh={r['energy_mwh'] / 1000},"
            f"relay={1 if r['relay_on'] else 0}i,voltage_v={r['voltage_v']},current_a={r['current_a']},"
            f'temperature_c={r["temperature_c"]},state="{st["status"]}" {r["ts_ms"]}'
        )
        if len(self.lines) >= 5000:
            self.lines.clear()


def naive_hub_run(load: HubLoad) -> dict[str, float]:
    hub = NaiveHub()
    for data in load.naive_warmup:
        hub.handle(data)
    for site, macs in load.charging.items():
        _ = site
        for mac in macs:
            hub.plugs[mac]["session_mwh"] = 0
    handle = hub.handle
    gc.collect()
    t0 = time.process_time()
    for data in load.naive_timed:
        handle(data)
    cpu = time.process_time() - t0
    return {"cpu_s": cpu, "readings_per_s": len(load.naive_timed) / cpu}


def naive_memory(load: HubLoad) -> float:
    hub = NaiveHub()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for data in load.naive_warmup:
            hub.handle(data)
        for macs in load.charging.values():
            for mac in macs:
                hub.plugs[mac]["session_mwh"] = 0
        for data in load.naive_timed:
            hub.handle(data)
        hub.lines.clear()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / load.n


async def bare_get_cpu(ports: list[int], gen: str, polls: int, concurrency: int = 8) -> float:
    """The baseline: a bare httpx GET of the same status document and ``json.loads``."""
    import httpx

    path = "/status" if gen == "1" else "/rpc/Shelly.GetStatus"
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), trust_env=False) as raw:

        async def one(port: int) -> None:
            async with sem:
                resp = await raw.get(f"http://127.0.0.1:{port}{path}")
                json.loads(resp.content)

        await asyncio.gather(*(one(p) for p in ports))  # warm-up
        t0 = time.process_time()
        for _ in range(polls):
            await asyncio.gather(*(one(p) for p in ports))
        return (time.process_time() - t0) / (polls * len(ports))


async def direct_switch(ports: list[int], rounds: int) -> list[float]:
    """The baseline: ``ShellyClient.set_relay(True)`` straight from this host, no store, hub or bus."""
    from chargectl.shelly.client import ShellyClient

    clients = [await ShellyClient.connect("127.0.0.1", port) for port in ports]
    samples: list[float] = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()

            async def on(c: ShellyClient, t0: float = t0) -> None:
                await c.set_relay(True)
                samples.append(time.perf_counter() - t0)

            await asyncio.gather(*(on(c) for c in clients))
            await asyncio.gather(*(c.set_relay(False) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    return samples


def firestore_per_reading_usd(plugs: int, region: str) -> float:
    """The Firestore-document-per-reading design: one document write per reading, a month of 5 s polls."""
    free = FIRESTORE_FREE_PER_DAY * 30
    return max(0.0, plugs * READINGS_PER_PLUG_MONTH - free) * FIRESTORE_WRITE_USD[region]
