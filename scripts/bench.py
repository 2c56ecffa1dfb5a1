"""chargectl benchmarks: wire size, hub throughput and memory, agent CPU, request → relay latency, cost.

Every figure is measured on the project's own code paths next to a baseline built in the same run, so
ratios hold on a noisy machine:

1. wire     signed, compressed ``TelemetryBatch`` (``pack_telemetry``) at the agent's default flush
            settings for sites of 20, 200 and 1,000 plugs, against JSON per reading and a
            row-per-reading protobuf batch + zstd-3 (defined here, not in ``contracts/``).
2. hub      readings/s on one core through ``Hub.handle_message`` (shard check, verify, decompress,
            decode, dedupe, ``machine.step``, ``reading_lines``) against a naive hub (JSON per
            reading, dict state); one ``Hub.tick`` sweep and one ``Hub.checkpoint``.
3. memory   bytes per plug of the hub's plug map (``MachineState``, session, entry), tracemalloc.
4. agent    CPU per plug-poll of the running ``Agent`` against the simulator (another process).
5. latency  ``ChargeRequest`` in the store → the agent's confirmed relay on, p50/p99, on
            ``chargectl run``'s ``AllInOne`` and on the Pub/Sub + Firestore emulators.
6. cost     the monthly Pub/Sub + Firestore bill from a closed-loop session simulation through the
            real hub (store writes, commands, results, message sizes counted), against the
            Firestore-document-per-reading design.

Usage: ``python scripts/bench.py [--quick] [--json FILE] [--markdown FILE] [--only SECTIONS]``.
Timings are CPU seconds of this process (``time.process_time``); medians over repeats where repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import zstandard

from chargectl.common import codec
from chargectl.common.clock import ManualClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.common.topics import DEAD_LETTER_TOPIC, command_topic
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.timeseries import (
    SessionEvent,
    TimeSeriesStats,
    reading_lines,
    session_line,
)
from chargectl.services.agent.settings import AgentSettings
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.payments.ledger import Ledger

# ------------------------------------------------------------------------------------------------
# Settings the figures depend on
# ------------------------------------------------------------------------------------------------

# The agent's defaults ([agent] poll_interval_s, flush_interval_s, max_batch_readings).
_AGENT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AgentSettings)}
POLL_INTERVAL_S = float(_AGENT_DEFAULTS["poll_interval_s"])
FLUSH_INTERVAL_S = float(_AGENT_DEFAULTS["flush_interval_s"])
MAX_BATCH_READINGS = int(_AGENT_DEFAULTS["max_batch_readings"])
SITE_PLUGS = 200  # plugs per site in the hub and cost sections
CHARGING_SHARE = 0.35  # share of plugs in a charging session in the open-loop fleet
START_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z

# Prices as researched for the project; re-check the live pricing pages before quoting them.
PUBSUB_USD_PER_TIB = 40.0  # publish and delivery each; https://cloud.google.com/pubsub/pricing
PUBSUB_FREE_BYTES = 10 * 2**30  # first 10 GiB per month
PUBSUB_MIN_REQUEST_BYTES = 1000  # "A minimum of 1000 bytes per publish, push or pull request"
PUBSUB_TIMESTAMP_BYTES = 20  # billed per message
PUBSUB_MESSAGE_ID_BYTES = 16  # assumption: the size of a message_id string
# Per document write/delete, US multi-region (nam5) and regional; https://cloud.google.com/firestore/pricing
FIRESTORE_WRITE_USD = {"us-multi": 0.18 / 100_000, "regional": 0.09 / 100_000}
FIRESTORE_DELETE_USD = {"us-multi": 0.02 / 100_000, "regional": 0.01 / 100_000}
FIRESTORE_FREE_PER_DAY = 20_000  # writes, and deletes, per day
FIRESTORE_CHUNK_BYTES = 900_000  # the Firestore store's checkpoint chunk size
MONTH_H = 30 * 24
READINGS_PER_PLUG_MONTH = int(MONTH_H * 3600 / POLL_INTERVAL_S)  # 518,400

# Espressif/Shelly OUIs for realistic (incompressible) MAC suffixes.
OUIS = ("E8DB84", "C45BBE", "3C6105", "A0A3B3")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; ``full()`` is the published run, ``quick()`` a subset under a minute."""

    wire_sites: tuple[int, ...] = (20, 200, 1000)
    wire_polls: int = 120  # 10 minutes of polling per site
    hub_plugs: tuple[int, ...] = (1_000, 10_000, 100_000)
    hub_cycles: int = 2  # timed flush cycles (after one warm-up cycle)
    hub_repeats: int = 3  # medians over repeats (sizes up to repeat_max_plugs)
    repeat_max_plugs: int = 10_000
    memory_plugs: tuple[int, ...] = (10_000, 100_000)
    agent_plugs: int = 200
    agent_polls: int = 3  # polls per plug for the bare-HTTP baseline
    agent_seconds: float = 20.0  # measured window of the running agent
    agent_poll_interval_s: float = POLL_INTERVAL_S
    latency_plugs: int = 20
    latency_rounds: int = 10
    latency_backends: tuple[str, ...] = ("embedded", "emulators")
    cost_plugs: int = 200
    cost_hours: float = 6.0
    cost_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    seed: int = 7

    @classmethod
    def full(cls) -> Plan:
        return cls()

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            wire_polls=24,
            hub_plugs=(1_000, 10_000),
            hub_cycles=1,
            hub_repeats=1,
            memory_plugs=(10_000,),
            agent_polls=2,
            agent_plugs=20,
            agent_seconds=2.0,
            agent_poll_interval_s=1.0,
            latency_plugs=10,
            latency_rounds=1,
            cost_plugs=60,
            cost_hours=2.0,
        )

    @classmethod
    def tiny(cls) -> Plan:
        """For the test: the same code on sizes that take a few seconds."""
        return cls(
            wire_sites=(5, 20),
            wire_polls=12,
            hub_plugs=(40, 200),
            hub_cycles=1,
            hub_repeats=1,
            memory_plugs=(200, 400),
            agent_plugs=4,
            agent_polls=1,
            agent_seconds=1.0,
            agent_poll_interval_s=0.5,
            latency_plugs=2,
            latency_rounds=1,
            latency_backends=("embedded",),
            cost_plugs=12,
            cost_hours=1.0,
        )


@dataclass
class Figure:
    """One line of the table: ``value`` against ``baseline``; ``gain`` > 1 means chargectl is better."""

    section: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    higher_is_better: bool = False

    @property
    def gain(self) -> float | None:
        if self.baseline is None or self.value == 0 or self.baseline == 0:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "gain": self.gain,
        }


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *figures: Figure) -> None:
        self.figures.extend(figures)


# ------------------------------------------------------------------------------------------------
# A synthetic fleet (deterministic): idle plugs and plugs charging in a session
# ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _SimPlug:
    mac: str
    charging: bool
    target_w: float
    energy_mwh: int
    temp_c: float
    uptime_s: int
    offset_ms: int


class Fleet:
    """One site's plugs polled every 5 s over a ~2 s sweep.

    Charging plugs draw 2.0–2.3 kW (EV on a granny charger) or 90–400 W (e-bike, scooter) with
    small noise; idle plugs report relay off and 0 W. Voltage follows a site random walk with a load
    drop; energy is the plug's lifetime counter (mWh); temperature follows load.
    """

    def __init__(
        self,
        site_id: str,
        n_plugs: int,
        rng: random.Random,
        charging_share: float,
        taken: set[str] | None = None,
    ) -> None:
        self.site_id = site_id
        taken = set() if taken is None else taken
        self.rng = rng
        self.volt = 231.0
        self.plugs: list[_SimPlug] = []
        for i in range(n_plugs):
            charging = rng.random() < charging_share
            target = rng.uniform(2000, 2300) if rng.random() < 0.6 else rng.uniform(90, 400)
            mac = f"{rng.choice(OUIS)}{rng.getrandbits(24):06X}"
            while mac in taken:  # MACs are identities: unique across the whole fleet
                mac = f"{rng.choice(OUIS)}{rng.getrandbits(24):06X}"
            taken.add(mac)
            self.plugs.append(
                _SimPlug(
                    mac=mac,
                    charging=charging,
                    target_w=target,
                    energy_mwh=rng.randint(10_000_000, 2_000_000_000),
                    temp_c=rng.uniform(25, 30),
                    uptime_s=rng.randint(3600, 90 * 86400),
                    offset_ms=(2000 * i) // max(n_plugs, 1),
                )
            )

    def poll(self, k: int, active: bool = True) -> list[Reading]:
        """The readings of poll ``k``; with ``active=False`` charging plugs are still idle (warm-up)."""
        rng = self.rng
        gauss = rng.gauss
        self.volt = min(240.0, max(222.0, self.volt + gauss(0, 0.3)))
        base_ms = round(START_S * 1000) + int(k * POLL_INTERVAL_S * 1000)
        out = []
        for p in self.plugs:
            on = p.charging and active
            power = round(max(0.0, p.target_w * (1 + gauss(0, 0.004))), 1) if on else 0.0
            volt = round(self.volt - (1.5 if on and power > 1000 else 0.0) + gauss(0, 0.2), 1)
            p.energy_mwh += round(power * POLL_INTERVAL_S / 3.6)
            p.temp_c += ((38.0 if on else 26.0) - p.temp_c) * 0.02 + gauss(0, 0.05)
            p.uptime_s += int(POLL_INTERVAL_S)
            out.append(
                Reading(
                    mac=p.mac,
                    ts_ms=base_ms + p.offset_ms + rng.randint(0, 40),
                    power_w=power,
                    energy_mwh=p.energy_mwh,
                    relay_on=on,
                    voltage_v=volt,
                    current_a=round(power / volt, 3),
                    temperature_c=round(p.temp_c, 1),
                    errors=0,
                    uptime_s=p.uptime_s,
                )
            )
        return out


def flushes(
    fleet: Fleet,
    polls: range,
    first_seq: int,
    active: Callable[[int], bool] = lambda k: True,
    flush_interval_s: float = FLUSH_INTERVAL_S,
    max_readings: int = MAX_BATCH_READINGS,
) -> Iterator[codec.Batch]:
    """The agent's batches for ``polls``: flushed every ``flush_interval_s`` or at ``max_readings``."""
    buf: list[Reading] = []
    seq = first_seq
    started = polls.start * POLL_INTERVAL_S

    def batch(rows: list[Reading], at_s: float) -> codec.Batch:
        nonlocal seq
        b = codec.Batch(
            fleet.site_id,
            seq,
            tuple(rows),
            created_at_ms=round((START_S + at_s) * 1000),
            agent_version="bench",
        )
        seq += 1
        return b

    for k in polls:
        now = (k + 1) * POLL_INTERVAL_S
        for r in fleet.poll(k, active(k)):
            buf.append(r)
            if len(buf) >= max_readings:
                yield batch(buf[:max_readings], now)
                buf = buf[max_readings:]
                started = now
        if buf and now - started >= flush_interval_s - 1e-9:
            yield batch(buf, now)
            buf = []
            started = now
    if buf:
        yield batch(buf, polls.stop * POLL_INTERVAL_S)


def _reading_dict(r: Reading) -> dict[str, Any]:
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
    return json.dumps({"site_id": site_id, **_reading_dict(r)}, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------------------
# Baseline: a plain (row-per-reading) protobuf batch, defined here at run time
# ------------------------------------------------------------------------------------------------


def _row_batch_class() -> Any:
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
        _ROW_BATCH = _row_batch_class()
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


def billed_message_bytes(data: bytes, attributes: dict[str, str]) -> int:
    """Pub/Sub's billed size of one message: body + attributes + timestamp + message id."""
    attrs = sum(len(k) + len(v) for k, v in attributes.items())
    return len(data) + attrs + PUBSUB_TIMESTAMP_BYTES + PUBSUB_MESSAGE_ID_BYTES


def telemetry_attributes(batch: codec.Batch, key: SigningKey) -> tuple[bytes, dict[str, str]]:
    data, attrs = codec.pack_telemetry(batch, key)
    return data, {**attrs, "shard": "0"}


# ------------------------------------------------------------------------------------------------
# 1. Wire size
# ------------------------------------------------------------------------------------------------


def bench_wire(plan: Plan, report: Report) -> None:
    key = SigningKey.generate()
    ring = Keyring()
    ring.add_public(key.public_bytes, "site-w")
    details: dict[str, Any] = {}
    for n in plan.wire_sites:
        fleet = Fleet("site-w", n, random.Random(plan.seed + n), CHARGING_SHARE)
        real = json_total = row_total = readings = billed = 0
        messages = 0
        for b in flushes(fleet, range(plan.wire_polls), 1):
            data, attrs = telemetry_attributes(b, key)
            back = codec.unpack_telemetry(data, ring)
            if sorted(back.readings, key=_order) != sorted(b.readings, key=_order):
                raise AssertionError("the telemetry codec did not round-trip the benchmark's readings")
            messages += 1
            readings += len(b.readings)
            real += len(data)
            billed += max(PUBSUB_MIN_REQUEST_BYTES, billed_message_bytes(data, attrs))
            json_total += sum(len(json_reading(r, b.site_id)) for r in b.readings)
            row_total += len(row_batch_zstd(b))
        per = real / readings
        details[str(n)] = {
            "messages": messages,
            "readings": readings,
            "readings_per_message": readings / messages,
            "bytes_per_message": real / messages,
            "bytes_per_reading": per,
            "billed_publish_bytes_per_reading": billed / readings,
            "json_bytes_per_reading": json_total / readings,
            "row_protobuf_zstd_bytes_per_reading": row_total / readings,
        }
        report.add(
            Figure(
                "wire",
                f"{n}-plug site, bytes/reading",
                per,
                "B",
                json_total / readings,
                "JSON per reading",
            ),
            Figure(
                "wire",
                f"{n}-plug site, bytes/reading",
                per,
                "B",
                row_total / readings,
                "row protobuf batch + zstd-3",
            ),
        )
    report.details["wire"] = details


def _order(r: Reading) -> tuple[str, int]:
    return (r.mac, r.ts_ms)


# ------------------------------------------------------------------------------------------------
# 2./3. The hub: real path and the naive baseline
# ------------------------------------------------------------------------------------------------


class LineSink:
    """A ``TimeSeries`` that builds the real line protocol and discards it (counting lines and bytes)."""

    def __init__(self) -> None:
        self.lines = 0
        self.bytes = 0

    def add_readings(self, site_id: str, readings: Sequence[Reading], state: str) -> None:
        lines = reading_lines(site_id, readings, state)
        self.lines += len(lines)
        self.bytes += sum(map(len, lines))

    def add_session_event(self, event: SessionEvent) -> None:
        self.lines += 1
        self.bytes += len(session_line(event))

    def flush(self, timeout_s: float = 10.0) -> bool:
        return True

    def stats(self) -> TimeSeriesStats:
        return TimeSeriesStats(self.lines, 0, 0, 0)

    def close(self) -> None:
        return None


@dataclass
class HubLoad:
    """Pre-packed traffic for ``n`` plugs: one warm-up cycle (all idle), then ``cycles`` timed ones."""

    n: int
    keys: dict[str, SigningKey]
    charging: dict[str, list[str]]  # site -> MACs that charge from cycle 1
    warmup: list[tuple[float, bytes, dict[str, str]]]
    timed: list[tuple[float, bytes, dict[str, str]]]
    naive_warmup: list[bytes]
    naive_timed: list[bytes]
    readings: int


def build_load(n: int, cycles: int, seed: int, polls_per_cycle: int = 0) -> HubLoad:
    """Sites of 200 plugs; a cycle is one flush (default: the agent's 30 s, six polls)."""
    polls_per_cycle = polls_per_cycle or round(FLUSH_INTERVAL_S / POLL_INTERVAL_S)
    keys: dict[str, SigningKey] = {}
    charging: dict[str, list[str]] = {}
    warm: list[tuple[float, bytes, dict[str, str]]] = []
    timed: list[tuple[float, bytes, dict[str, str]]] = []
    naive_warm: list[bytes] = []
    naive_timed: list[bytes] = []
    readings = 0
    rng = random.Random(seed)
    taken: set[str] = set()
    for s in range(math.ceil(n / SITE_PLUGS)):
        site = f"site-{s:04d}"
        key = keys[site] = SigningKey.generate()
        fleet = Fleet(site, min(SITE_PLUGS, n - s * SITE_PLUGS), rng, CHARGING_SHARE, taken)
        charging[site] = [p.mac for p in fleet.plugs if p.charging]
        for b in flushes(
            fleet,
            range(polls_per_cycle * (1 + cycles)),
            1,
            lambda k: k >= polls_per_cycle,
            flush_interval_s=polls_per_cycle * POLL_INTERVAL_S,
        ):
            data, attrs = telemetry_attributes(b, key)
            at = b.created_at_ms / 1000
            naive = [json_reading(r, site) for r in b.readings]
            if b.batch_seq == 1:
                warm.append((at, data, attrs))
                naive_warm.extend(naive)
            else:
                timed.append((at, data, attrs))
                naive_timed.extend(naive)
                readings += len(b.readings)
    # Sites flush at about the same time; the hub sees their messages interleaved in time order.
    warm.sort(key=lambda t: t[0])
    timed.sort(key=lambda t: t[0])
    return HubLoad(n, keys, charging, warm, timed, naive_warm, naive_timed, readings)


BENCH_TARIFF = Tariff(
    tariff_id="bench",
    currency="gbp",
    price_per_kwh_minor=Decimal("30"),
    session_fee_minor=0,
    idle_price_per_minute_minor=Decimal("0"),
    idle_grace_s=0,
    energy_step_wh=0,
    time_step_s=0,
    min_start_balance_minor=100,
)


def site_document(site_id: str, agent_key: SigningKey) -> codec.Site:
    """An active site whose telemetry is signed by ``agent_key`` (what the provisioner stores)."""
    return codec.Site(
        site_id=site_id,
        status=codec.Site.STATUS_ACTIVE,
        agent_keys=[codec.PublicKey(key_id=agent_key.key_id, public_key=agent_key.public_bytes)],
        tariff=codec.Tariff(
            tariff_id="t", currency="gbp", price_per_kwh_minor=30, min_start_balance_minor=100
        ),
    )


def command_keys(key: SigningKey) -> Callable[[codec.Site, int], SigningKey]:
    """The hub's ``command_keys`` port for one command key (the provisioner's signer, minus rotation)."""

    def key_for(site: codec.Site, at_ms: int) -> SigningKey:
        return key

    return key_for


def make_hub(
    keys: dict[str, SigningKey], command_key: SigningKey, clock: ManualClock
) -> tuple[Hub, LineSink]:
    store = SqliteStore(":memory:")
    for site, key in keys.items():
        store.put_site(site_document(site, key))
    sink = LineSink()
    # The benchmark's sites introduce their whole fleet in the warm-up: lift the per-site plug limits.
    settings = HubSettings(max_new_plugs_per_batch=1_000_000, max_plugs_per_site=10_000_000)
    hub = Hub(settings, HubPorts(MemoryBus(), store, sink, command_keys(command_key)), clock)
    hub.refresh_trust(force=True)
    return hub, sink


async def _feed(hub: Hub, clock: ManualClock, messages: list[tuple[float, bytes, dict[str, str]]]) -> None:
    for i, (at, data, attrs) in enumerate(messages):
        if at > clock.now():
            clock.set(at)
        if not await hub.handle_message(BusMessage(data, attrs, f"m{i}")):
            raise AssertionError("the hub refused a benchmark message")
        await asyncio.sleep(0)  # let command publishes spawned by the hub run, as the event loop would


def start_sessions(hub: Hub, load: HubLoad) -> int:
    """Open a session on every plug that will charge, by stepping its machine with a ``StartRequest``.

    (Faster set-up than writing 100k ChargeRequests through the store.)
    """
    now = hub.now()
    opened = 0
    for site, macs in load.charging.items():
        for mac in macs:
            plug = hub.plugs[mac]
            plug.state, fx = m.step(
                plug.state, m.StartRequest(f"s-{mac}", f"u-{mac}", BENCH_TARIFF, 10_000_000), now
            )
            if not any(isinstance(f, m.SessionStarted) for f in fx):
                raise AssertionError(f"no session started on {mac} ({plug.state.status})")
            opened += 1
            _ = site
    return opened


async def real_hub_run(load: HubLoad, measure_tick: bool) -> dict[str, float]:
    clock = ManualClock(START_S)
    hub, sink = make_hub(load.keys, SigningKey.generate(), clock)
    await hub.ports.bus.ensure_topic(DEAD_LETTER_TOPIC)
    for site in load.keys:
        await hub.ports.bus.ensure_topic(command_topic(site))
    await _feed(hub, clock, load.warmup)
    start_sessions(hub, load)
    lines_before = sink.lines
    gc.collect()
    t0 = time.process_time()
    await _feed(hub, clock, load.timed)
    cpu = time.process_time() - t0
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
        await hub.tick()  # the first tick after the readings mirrors every changed plug state
        t0 = time.process_time()
        await hub.tick()
        out["tick_us_per_plug"] = (time.process_time() - t0) / len(hub.plugs) * 1e6
        # The hub checkpoints every checkpoint_interval_s.
        t0 = time.process_time()
        hub.checkpoint()
        out["checkpoint_ms"] = (time.process_time() - t0) * 1000
    return out


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
        tick_us = real_runs[0]["tick_us_per_plug"]
        details[str(n)] = {
            "readings": load.readings,
            "messages": len(load.timed),
            "repeats": repeats,
            "real_readings_per_s": [r["readings_per_s"] for r in real_runs],
            "naive_readings_per_s": [r["readings_per_s"] for r in naive_runs],
            "plugs_in_session": real_runs[0]["charging_plugs"],
            "tick_us_per_plug": tick_us,
            "checkpoint_ms": real_runs[0]["checkpoint_ms"],
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
            Figure("hub", f"{n:,} plugs, Hub.tick µs/plug", tick_us, "µs"),
            Figure("hub", f"{n:,} plugs, Hub.checkpoint", real_runs[0]["checkpoint_ms"], "ms"),
        )
    report.details["hub"] = details


# ------------------------------------------------------------------------------------------------
# 3. Memory per plug
# ------------------------------------------------------------------------------------------------


def bench_memory(plan: Plan, report: Report) -> None:
    details: dict[str, Any] = {}
    for n in plan.memory_plugs:
        # State after a few samples is all the memory figure needs: one-poll flushes keep set-up short.
        load = build_load(n, 1, plan.seed + 1000 + n, polls_per_cycle=1)
        real = asyncio.run(_real_memory(load))
        naive = _naive_memory(load)
        details[str(n)] = {"real_bytes_per_plug": real, "naive_bytes_per_plug": naive}
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


async def _real_memory(load: HubLoad) -> float:
    clock = ManualClock(START_S)
    hub, _ = make_hub(load.keys, SigningKey.generate(), clock)
    for site in load.keys:
        await hub.ports.bus.ensure_topic(command_topic(site))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await _feed(hub, clock, load.warmup)
        start_sessions(hub, load)
        await _feed(hub, clock, load.timed)
        await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    if len(hub.plugs) != load.n:
        raise AssertionError(f"the hub knows {len(hub.plugs)} plugs, expected {load.n}")
    return (after - before) / load.n


def _naive_memory(load: HubLoad) -> float:
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


# ------------------------------------------------------------------------------------------------
# 6. Cost model: a closed-loop session simulation through the real hub, then the monthly bill
# ------------------------------------------------------------------------------------------------


class CountingStore(SqliteStore):
    """The SQLite store, counting the Firestore document writes each call stands for."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.counting = False
        self.writes: dict[str, int] = {}
        self.checkpoints: list[int] = []  # bytes of each checkpoint saved

    def _count(self, kind: str) -> None:
        if self.counting:
            self.writes[kind] = self.writes.get(kind, 0) + 1

    def put_plug_state(self, state: codec.PlugState) -> None:
        self._count("plug_state")
        super().put_plug_state(state)

    def put_session(self, session: codec.ChargeSession) -> None:
        self._count("session")
        super().put_session(session)

    def append_ledger(self, entry: codec.LedgerEntry) -> bool:
        new = super().append_ledger(entry)
        if new:
            self._count("ledger")
        return new

    def answer_request(
        self, request_id: str, status: int, reason: str, session_id: str, answered_at_ms: int
    ) -> bool:
        done = super().answer_request(request_id, status, reason, session_id, answered_at_ms)
        if done:
            self._count("request_answer")
        return done

    def save_checkpoint(self, name: str, data: bytes) -> None:
        if self.counting:
            self.checkpoints.append(len(data))
        super().save_checkpoint(name, data)


@dataclass(slots=True)
class _Car:
    need_mwh: int
    power_w: float
    request_id: str


async def cost_sim(plan: Plan) -> dict[str, Any]:
    """One site of ``cost_plugs`` plugs for ``cost_hours``: users request sessions through the store,
    the hub answers and commands relays over the bus, an ideal agent obeys and reports results, cars
    charge until full, the hub completes and bills. Everything the hub writes or publishes is counted."""
    n, hours = plan.cost_plugs, plan.cost_hours
    rng = random.Random(plan.seed + 99)
    clock = ManualClock(START_S)
    site = "site-cost"
    agent_key, command_key = SigningKey.generate(), SigningKey.generate()
    store = CountingStore(":memory:")
    store.put_site(site_document(site, agent_key))
    fleet = Fleet(site, n, rng, 0.0)
    ledger = Ledger(store)
    for p in fleet.plugs:
        store.put_user(
            codec.UserAccount(user_id=f"u-{p.mac}", currency="gbp")
        )  # the hub acts for accounts only
        ledger.post(f"topup-{p.mac}", f"u-{p.mac}", "topup", 1_000_000, "gbp", round(START_S * 1000))
    bus = MemoryBus()
    await bus.ensure_topic(command_topic(site))
    await bus.ensure_subscription("bench-agent", command_topic(site))
    inbox: list[BusMessage] = []

    async def on_command(msg: BusMessage) -> bool:
        inbox.append(msg)
        return True

    await bus.subscribe("bench-agent", on_command)
    hub = Hub(
        HubSettings(max_new_plugs_per_batch=1_000_000, max_plugs_per_site=10_000_000),
        HubPorts(bus, store, LineSink(), command_keys(command_key)),
        clock,
    )
    await hub.start()
    cmd_ring = Keyring()
    cmd_ring.add_public(command_key.public_bytes, site)

    relay = {p.mac: False for p in fleet.plugs}
    cars: dict[str, _Car | None] = {p.mac: None for p in fleet.plugs}
    mean_gap_s = 3 * 3600.0
    traffic: dict[str, list[int]] = {"telemetry": [], "command": [], "result": []}
    buf: list[Reading] = []
    seq = 0
    requests = 0
    store.counting = True
    polls = int(hours * 3600 / POLL_INTERVAL_S)
    per_flush = round(FLUSH_INTERVAL_S / POLL_INTERVAL_S)

    async def deliver(data: bytes, attrs: dict[str, str], kind: str) -> None:
        traffic[kind].append(billed_message_bytes(data, attrs))
        if not await hub.handle_message(BusMessage(data, attrs, f"{kind}-{len(traffic[kind])}")):
            raise AssertionError(f"the hub refused a {kind} message")

    for k in range(polls):
        clock.advance(POLL_INTERVAL_S)
        now_ms = round(clock.now() * 1000)
        for p in fleet.plugs:
            car = cars[p.mac]
            power = 0.0
            if car is not None and relay[p.mac] and car.need_mwh > 0:
                power = round(car.power_w * (1 + rng.gauss(0, 0.004)), 1)
                car.need_mwh -= round(power * POLL_INTERVAL_S / 3.6)
            p.energy_mwh += round(power * POLL_INTERVAL_S / 3.6)
            p.uptime_s += int(POLL_INTERVAL_S)
            p.temp_c += ((38.0 if power > 1000 else 26.0) - p.temp_c) * 0.02
            volt = round(230.0 + rng.gauss(0, 0.5), 1)
            buf.append(
                Reading(
                    p.mac,
                    now_ms - 2000 + p.offset_ms,
                    power,
                    p.energy_mwh,
                    relay[p.mac],
                    volt,
                    round(power / volt, 3),
                    round(p.temp_c, 1),
                    0,
                    p.uptime_s,
                )
            )
        if (k + 1) % per_flush == 0:
            seq += 1
            data, attrs = telemetry_attributes(
                codec.Batch(site, seq, tuple(buf), created_at_ms=now_ms), agent_key
            )
            buf = []
            await deliver(data, attrs, "telemetry")
        # Users: an idle plug gets a car and a start request now and then; the car leaves once its
        # session is billed or its request was refused.
        for p in fleet.plugs:
            plug = hub.plugs.get(p.mac)
            if plug is None or plug.state.session is not None or relay[p.mac]:
                continue
            car = cars[p.mac]
            if car is not None:
                req = store.get_request(car.request_id)
                if (req is not None and req.session_id and plug.state.last_session_id == req.session_id) or (
                    req is not None and req.status == codec.ChargeRequest.STATUS_REJECTED
                ):
                    cars[p.mac] = None
            elif plug.state.status is m.Status.AVAILABLE and rng.random() < POLL_INTERVAL_S / mean_gap_s:
                ev = rng.random() < 0.6
                requests += 1
                cars[p.mac] = _Car(
                    need_mwh=rng.randint(2_000_000, 10_000_000) if ev else rng.randint(200_000, 600_000),
                    power_w=rng.uniform(2000, 2300) if ev else rng.uniform(150, 400),
                    request_id=f"r{requests}",
                )
                store.add_request(
                    codec.ChargeRequest(
                        request_id=f"r{requests}",
                        user_id=f"u-{p.mac}",
                        plug_mac=p.mac,
                        action=codec.ChargeRequest.ACTION_START,
                        status=codec.ChargeRequest.STATUS_PENDING,
                        created_at_ms=now_ms,
                    )
                )
        await hub.run_once()
        for _ in range(3):
            await asyncio.sleep(0)
        # The agent: execute every command, report each result on the telemetry topic.
        while inbox:
            msg = inbox.pop(0)
            traffic["command"].append(billed_message_bytes(msg.data, dict(msg.attributes)))
            cmd = codec.unpack_command(msg.data, cmd_ring, now_ms)
            relay[cmd.plug_mac] = cmd.on
            outcome = codec.CommandOutcome(
                cmd.command_id,
                site,
                cmd.plug_mac,
                True,
                "executed",
                now_ms,
                cmd.on,
                session_id=cmd.session_id,
            )
            data, attrs = codec.pack_outcome(outcome, agent_key)
            await deliver(data, {**attrs, "shard": "0"}, "result")
    store.counting = False
    await hub.stop()
    await bus.close()
    plug_hours = n * hours
    finished = store.writes.get("ledger", 0)
    periodic = hours * 3600 / HubSettings().checkpoint_interval_s
    return {
        "plugs": n,
        "hours": hours,
        "requests": requests,
        "sessions_billed": finished,
        "writes_per_plug_hour": {k: v / plug_hours for k, v in sorted(store.writes.items())},
        "checkpoints": len(store.checkpoints),
        "checkpoint_bytes_per_plug": store.checkpoints[-1] / n if store.checkpoints else 0.0,
        # Checkpoints beyond the periodic ones (the hub no longer checkpoints per session: resumed from
        # the store's session documents instead); measured, so a regression shows up here.
        "event_checkpoints_per_plug_hour": max(0.0, len(store.checkpoints) - periodic) / plug_hours,
        "periodic_checkpoints_per_hour": periodic / hours,
        "messages_per_plug_hour": {k: len(v) / plug_hours for k, v in traffic.items()},
        "billed_request_bytes": {
            k: statistics.fmean(max(PUBSUB_MIN_REQUEST_BYTES, b) for b in v) if v else 0.0
            for k, v in traffic.items()
        },
        "message_bytes": {k: statistics.fmean(v) if v else 0.0 for k, v in traffic.items()},
        "readings_per_telemetry_message": n * per_flush,
    }


def monthly_cost(sim: dict[str, Any], plugs: int, region: str) -> dict[str, float]:
    """The month's Pub/Sub and Firestore bill of ``plugs`` plugs, scaled from the simulation's rates."""
    plug_months = plugs * MONTH_H
    pubsub_bytes = 0.0
    for kind, rate in sim["messages_per_plug_hour"].items():
        # One publish request per message (the agent publishes each flush alone; commands go one by
        # one), each billed at least 1,000 bytes; one subscription delivers each message once more.
        pubsub_bytes += 2 * rate * plug_months * sim["billed_request_bytes"][kind]
    pubsub = max(0.0, pubsub_bytes - PUBSUB_FREE_BYTES) / 2**40 * PUBSUB_USD_PER_TIB
    free = FIRESTORE_FREE_PER_DAY * 30
    writes = sum(sim["writes_per_plug_hour"].values()) * plug_months
    # Checkpoints: a head document plus one per 900 kB chunk, every checkpoint_interval_s (plus any measured
    # event-driven ones); the previous generation's chunks are deleted.
    chunks = math.ceil(sim["checkpoint_bytes_per_plug"] * plugs / FIRESTORE_CHUNK_BYTES) or 1
    per_hour = 3600 / HubSettings().checkpoint_interval_s + sim["event_checkpoints_per_plug_hour"] * plugs
    checkpoint_writes = per_hour * MONTH_H * (chunks + 1)
    deletes = per_hour * MONTH_H * chunks
    firestore = (
        max(0.0, writes + checkpoint_writes - free) * FIRESTORE_WRITE_USD[region]
        + max(0.0, deletes - free) * FIRESTORE_DELETE_USD[region]
    )
    per_reading = max(0.0, plugs * READINGS_PER_PLUG_MONTH - free) * FIRESTORE_WRITE_USD[region]
    return {
        "pubsub_usd": pubsub,
        "firestore_usd": firestore,
        "firestore_writes": writes + checkpoint_writes,
        "checkpoint_writes": checkpoint_writes,
        "total_usd": pubsub + firestore,
        "firestore_per_reading_usd": per_reading,
    }


def bench_cost(plan: Plan, report: Report) -> None:
    sim = asyncio.run(cost_sim(plan))
    costs: dict[str, Any] = {}
    for n in plan.cost_sizes:
        costs[str(n)] = {region: monthly_cost(sim, n, region) for region in FIRESTORE_WRITE_USD}
        c = costs[str(n)]["us-multi"]
        report.add(
            Figure(
                "cost",
                f"{n:,} plugs, $/month (US multi-region)",
                c["total_usd"],
                "$",
                c["firestore_per_reading_usd"],
                "Firestore document per reading",
            )
        )
    report.details["cost"] = {"simulation": sim, "monthly": costs}


# ------------------------------------------------------------------------------------------------
# 4. Agent: CPU per plug-poll of the Shelly client against the simulator (in another process)
# ------------------------------------------------------------------------------------------------

_SIM_CHILD = """
import asyncio, json, sys
from chargectl.shelly.sim import SimFleet

async def main(n, gen, profile):
    async with SimFleet.build(n, gen, profile=profile, seed=11) as fleet:
        print(json.dumps([p.port for p in fleet.plugs]), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""


class SimProcess:
    """The simulator fleet in its own process group, so its CPU is not charged to the client."""

    def __init__(self, n: int, gen: str, profile: str = "mix") -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SIM_CHILD, str(n), gen, profile],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        assert self.proc.stdout is not None
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError("the plug simulator did not start within 60 s")
        self.ports: list[int] = json.loads(line)

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _agent(
    tmp: Path,
    site: str,
    ports: Sequence[int],
    bus: Any,
    agent_key: SigningKey,
    command_key: SigningKey,
    **overrides: Any,
) -> Any:
    """The real site agent for plugs at ``ports`` on 127.0.0.1 (static addresses, no mDNS)."""
    from chargectl.common.clock import SystemClock
    from chargectl.services.agent import Agent, AgentSettings, PlugAddress
    from chargectl.services.agent.shelly_plugs import shelly_connector

    settings = AgentSettings(
        site_id=site,
        plugs=[PlugAddress("127.0.0.1", port) for port in ports],
        discovery=False,
        state_dir=tmp,
        **overrides,
    )
    ring = Keyring()
    ring.add_public(command_key.public_bytes, site)
    clock = SystemClock()
    connector = shelly_connector(
        password=None, user="admin", timeout_s=settings.request_timeout_s, clock=clock
    )
    return Agent(settings, bus, agent_key, ring, connector, clock=clock)


async def _wait(cond: Callable[[], bool], what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark gave up waiting for {what}")
        await asyncio.sleep(0.02)


async def _agent_cpu(ports: list[int], seconds: float, poll_interval_s: float) -> dict[str, float]:
    """CPU of the whole agent (pollers, batcher, packing, signing, publishing) per plug-poll."""
    import tempfile

    from chargectl.common.topics import TELEMETRY_TOPIC

    bus = MemoryBus()
    await bus.ensure_topic(TELEMETRY_TOPIC)
    with tempfile.TemporaryDirectory(prefix="chargectl-bench-") as tmp:
        agent = _agent(
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
            await _wait(lambda: len(agent.plugs) == len(ports) and polls() >= 2 * len(ports), "first polls")
            p0, t0 = polls(), time.process_time()
            await asyncio.sleep(seconds)
            p1, t1 = polls(), time.process_time()
        finally:
            agent.stop()
            await asyncio.wait_for(task, 30)
            await bus.close()
    return {"cpu_per_poll_s": (t1 - t0) / max(1, p1 - p0), "polls": p1 - p0}


async def _bare_cpu(ports: list[int], gen: str, polls: int, concurrency: int = 8) -> float:
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


def bench_agent(plan: Plan, report: Report) -> None:
    details: dict[str, Any] = {}
    for gen in ("2", "1"):
        sim = SimProcess(plan.agent_plugs, gen)
        try:
            real = asyncio.run(_agent_cpu(sim.ports, plan.agent_seconds, plan.agent_poll_interval_s))
            bare = asyncio.run(_bare_cpu(sim.ports, gen, plan.agent_polls))
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


# ------------------------------------------------------------------------------------------------
# 5. Request → relay: a ChargeRequest in the store until the agent has switched the plug on
# ------------------------------------------------------------------------------------------------


async def _latency(backend: str, plan: Plan, tmp: Path, ports: list[int]) -> list[float]:
    """Embedded: ``AllInOne`` (``chargectl run``). Emulators: the hub on Pub/Sub + Firestore and the
    agent on Pub/Sub, in this process. The plugs are in the simulator process either way.

    Each round puts a start request for every plug in the store at once; a sample is the time from
    the request's ``created_at_ms`` to the agent's confirmed "on" (``executed_at_ms``). Then every
    session is stopped and billed before the next round.
    """
    from chargectl.common.clock import SystemClock

    site = f"lat-{random.Random().getrandbits(32):08x}"
    tmp.mkdir(parents=True, exist_ok=True)
    # Readings every second, flushed every 2 s: the hub learns the plugs quickly. The command path
    # (store → hub → bus → agent → plug) does not depend on these settings.
    fast = {"poll_interval_s": 1.0, "flush_interval_s": 2.0}
    tasks: list[asyncio.Task[None]] = []
    if backend == "embedded":
        # What `chargectl run` runs: the site provisioned on first start, SQLite store and series.
        from chargectl.common.config import Config
        from chargectl.provisioner.local import provision_local_site
        from chargectl.services.agent import AgentSettings, PlugAddress
        from chargectl.services.allinone import AllInOne

        system = AllInOne(
            provision=provision_local_site,
            config=Config(
                backend="local",
                state_dir=tmp / "state",
                config_dir=tmp / "config",
                sections={"run": {"site_id": site, "health": False}},
            ),
            agent_settings=AgentSettings(
                site_id=site,
                plugs=[PlugAddress("127.0.0.1", port) for port in ports],
                discovery=False,
                state_dir=tmp / "agent",
                **fast,  # type: ignore[arg-type]
            ),
        )
        store: Any = system.store
        _top_up(store, ports)
        tasks.append(asyncio.create_task(system.serve()))
        await _wait(lambda: system.hub is not None and system.agent is not None, "chargectl run to start")
        assert system.hub is not None and system.agent is not None
        hub, agent = system.hub, system.agent
        stop: Callable[[], None] = system.request_stop
    else:
        # The hub and the agent as `chargectl hub` and `chargectl agent` run them, on the emulators.
        from chargectl.services.adapters.firestore_store import FirestoreStore
        from chargectl.services.adapters.pubsub_bus import PubSubBus

        agent_key, command_key = SigningKey.generate(), SigningKey.generate()
        store, bus = FirestoreStore(site), PubSubBus(site, publish_timeout_s=10)
        store.put_site(site_document(site, agent_key))
        _top_up(store, ports)
        hub = Hub(HubSettings(), HubPorts(bus, store, LineSink(), command_keys(command_key)), SystemClock())
        tasks.append(asyncio.create_task(hub.serve(health=False)))
        await _wait(lambda: hub.problems() == [], "the hub to start")
        agent = _agent(tmp / "agent", site, ports, bus, agent_key, command_key, **fast)
        tasks.append(asyncio.create_task(agent.serve()))

        def stop() -> None:
            agent.stop()
            hub.request_stop()

    samples: list[float] = []
    try:
        await _wait(
            lambda: (
                len(hub.plugs) == len(ports)
                and all(p.state.status is m.Status.AVAILABLE for p in hub.plugs.values())
            ),
            "the hub to see every plug",
        )
        macs = sorted(agent.plugs)
        user = {mac: f"u-{agent.plugs[mac][1]}" for mac in macs}
        for rnd in range(plan.latency_rounds):
            created = round(time.time() * 1000)
            for mac in macs:
                store.add_request(
                    codec.ChargeRequest(
                        request_id=f"{rnd}-{mac}",
                        user_id=user[mac],
                        plug_mac=mac,
                        action=codec.ChargeRequest.ACTION_START,
                        status=codec.ChargeRequest.STATUS_PENDING,
                        created_at_ms=created,
                    )
                )
            done: dict[str, int] = {}
            sessions: dict[str, str] = {}  # the hub makes session ids: read them from the answers

            def switched(
                done: dict[str, int] = done, sessions: dict[str, str] = sessions, rnd: int = rnd
            ) -> bool:
                for mac in macs:
                    if mac not in sessions:
                        answer = store.get_request(f"{rnd}-{mac}")
                        if answer is not None and answer.session_id:
                            sessions[mac] = answer.session_id
                wanted = set(sessions.values())
                for o in agent.outcomes:
                    if o.ok and o.relay_on and o.session_id in wanted:
                        done.setdefault(o.plug_mac, o.executed_at_ms)
                return len(done) == len(macs)

            await _wait(switched, "every plug to switch on")
            samples.extend((at - created) / 1000 for at in done.values())
            for mac in macs:
                store.add_request(
                    codec.ChargeRequest(
                        request_id=f"{rnd}-{mac}-stop",
                        user_id=user[mac],
                        plug_mac=mac,
                        action=codec.ChargeRequest.ACTION_STOP,
                        status=codec.ChargeRequest.STATUS_PENDING,
                        created_at_ms=round(time.time() * 1000),
                    )
                )
            await _wait(
                lambda: all(
                    p.state.status is m.Status.AVAILABLE and p.state.session is None
                    for p in hub.plugs.values()
                ),
                "every session to be billed",
            )
    finally:
        stop()
        for task in tasks:
            await asyncio.wait_for(task, 60)
        if backend != "embedded":
            await bus.close()
            store.close()
    return samples


async def _direct_switch(ports: list[int], rounds: int) -> list[float]:
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


def _top_up(store: Any, ports: Sequence[int]) -> None:
    ledger = Ledger(store)
    now_ms = round(time.time() * 1000)
    for port in ports:
        store.put_user(
            codec.UserAccount(user_id=f"u-{port}", currency="gbp")
        )  # the hub acts for accounts only
        ledger.post(f"topup-{port}", f"u-{port}", "topup", 1_000_000, "gbp", now_ms)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def bench_latency(plan: Plan, report: Report) -> None:
    import tempfile
    from concurrent.futures import Future, ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import backends

    details: dict[str, Any] = {}
    emulators = {"pubsub": "PUBSUB_EMULATOR_HOST", "firestore": "FIRESTORE_EMULATOR_HOST"}
    saved = {var: os.environ.get(var) for var in emulators.values()}
    # Emulators already running (their variables set, as in the test suite) are used as they are.
    external = all(saved.values())
    reason = None if external else next((r for r in map(backends.missing, emulators) if r), None)
    with tempfile.TemporaryDirectory(prefix="chargectl-bench-") as tmp, ThreadPoolExecutor(2) as pool:
        # The emulators boot (JVMs, seconds) while the simulator and the embedded run go ahead.
        starting: dict[str, Future[Any]] = {}
        if reason is None and not external and "emulators" in plan.latency_backends:
            starting = {name: pool.submit(backends.STARTERS[name], Path(tmp) / name) for name in emulators}
        sim = SimProcess(plan.latency_plugs, "2", profile="ev")
        try:
            direct = asyncio.run(_direct_switch(sim.ports, plan.latency_rounds))
            d50, d99 = statistics.median(direct), _percentile(direct, 0.99)
            details["direct_switch"] = {"samples": len(direct), "p50_s": d50, "p99_s": d99}
            for backend in plan.latency_backends:
                if backend == "emulators":
                    if reason is not None:
                        details[backend] = {"skipped": reason}
                        report.notes.append(f"request → relay on the emulators skipped: {reason}")
                        continue
                    for name, future in starting.items():
                        os.environ[emulators[name]] = future.result().host
                samples = asyncio.run(_latency(backend, plan, Path(tmp) / backend, sim.ports))
                p50, p99 = statistics.median(samples), _percentile(samples, 0.99)
                details[backend] = {
                    "samples": len(samples),
                    "p50_s": p50,
                    "p99_s": p99,
                    "max_s": max(samples),
                }
                base = "set_relay straight to the plug"
                report.add(
                    Figure("latency", f"{backend}, p50 request → relay on", p50, "s", d50, base),
                    Figure("latency", f"{backend}, p99 request → relay on", p99, "s", d99, base),
                )
        finally:
            sim.stop()
            for future in starting.values():
                try:
                    future.result().stop()
                except Exception as exc:  # a failed start left nothing to stop; say why once
                    report.notes.append(f"emulator did not start: {exc}")
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
    report.details["latency"] = details


# ------------------------------------------------------------------------------------------------
# Running and reporting
# ------------------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Plan, Report], None]] = {
    "wire": bench_wire,
    "hub": bench_hub,
    "memory": bench_memory,
    "agent": bench_agent,
    "latency": bench_latency,
    "cost": bench_cost,
}
TITLES = {
    "wire": "1. Wire size: signed, compressed TelemetryBatch (poll 5 s, flush 30 s, ≤5,000 readings)",
    "hub": "2. Hub throughput, one core: verify, zstd, decode, dedupe, machine step, line protocol",
    "memory": "3. Hub memory per plug: MachineState and its entry in the plug map (tracemalloc)",
    "agent": "4. Agent: CPU per plug-poll of the running agent (poll, batch, sign, publish) against the simulator",
    "latency": "5. Request → relay on: ChargeRequest in the store until the agent confirms the plug is on",
    "cost": "6. Monthly Pub/Sub + Firestore bill (30-day month, 1,000-byte request minimum applied)",
}


def run(
    plan: Plan, only: Sequence[str] = tuple(SECTIONS), progress: Callable[[str], None] | None = None
) -> Report:
    import logging

    # The hub logs every transition and alert; at benchmark volume that is noise on the terminal.
    logging.getLogger("chargectl").setLevel(logging.ERROR)
    report = Report()
    report.details["plan"] = {k: v for k, v in plan.__dict__.items()}
    report.details["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    for name in only:
        if progress:
            progress(name)
        t0 = time.perf_counter()
        SECTIONS[name](plan, report)
        report.details.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
    return report


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "$":
        return f"${value:,.2f}"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip() if unit not in ("$",) else text


def render(report: Report, console: Any) -> None:
    from rich.table import Table

    for section, title in TITLES.items():
        rows = [f for f in report.figures if f.section == section]
        if not rows:
            continue
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("figure")
        table.add_column("chargectl", justify="right")
        table.add_column("baseline", justify="right")
        table.add_column("baseline is", style="dim")
        table.add_column("gain ×", justify="right")
        for f in rows:
            gain = f.gain
            table.add_row(
                f.name,
                _fmt(f.value, f.unit),
                _fmt(f.baseline, f.unit) if f.baseline is not None else "—",
                f.baseline_name or "—",
                f"{gain:.2f}×" if gain is not None else "—",
            )
        console.print(table)
    cost = report.details.get("cost")
    if cost:
        sim = cost["simulation"]
        table = Table(title="6b. Cost breakdown", title_justify="left")
        for col in (
            "plugs",
            "region",
            "Pub/Sub",
            "Firestore",
            "of which checkpoints (writes)",
            "total",
            "Firestore per reading",
        ):
            table.add_column(col, justify="right")
        for n, regions in cost["monthly"].items():
            for region, c in regions.items():
                table.add_row(
                    f"{int(n):,}",
                    region,
                    _fmt(c["pubsub_usd"], "$"),
                    _fmt(c["firestore_usd"], "$"),
                    f"{c['checkpoint_writes']:,.0f}",
                    _fmt(c["total_usd"], "$"),
                    _fmt(c["firestore_per_reading_usd"], "$"),
                )
        console.print(table)
        console.print(
            f"simulated {sim['plugs']} plugs × {sim['hours']:g} h: {sim['requests']} requests, "
            f"{sim['sessions_billed']} sessions billed; per plug-hour: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sim["writes_per_plug_hour"].items())
            + " Firestore writes; "
            + ", ".join(f"{k} {v:.2f}" for k, v in sim["messages_per_plug_hour"].items())
            + " Pub/Sub messages"
        )
    hub = report.details.get("hub")
    if hub:
        for n, d in hub.items():
            console.print(
                f"hub {int(n):,} plugs: readings use {d['core_share_readings']:.1%} of a core at 5 s polls; "
                f"Hub.tick every {HubSettings().tick_interval_s:g} s uses {d['core_share_ticks']:.1%}"
            )
    for note in report.notes:
        console.print(note)


def markdown(report: Report) -> str:
    """The figures as one Markdown table (the README's Performance section)."""
    out = ["| section | figure | chargectl | baseline | baseline is | gain |", "|---|---|---:|---:|---|---:|"]
    for f in report.figures:
        gain = f.gain
        out.append(
            f"| {f.section} | {f.name} | {_fmt(f.value, f.unit)} | "
            f"{_fmt(f.baseline, f.unit) if f.baseline is not None else '—'} | {f.baseline_name or '—'} | "
            f"{f'{gain:.2f}×' if gain is not None else '—'} |"
        )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None, plan: Plan | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset that runs in under a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure and detail as JSON")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write the figures as a Markdown table")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections ({', '.join(SECTIONS)})"
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    plan = plan or (Plan.quick() if args.quick else Plan.full())

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=140)
    started = time.perf_counter()
    report = run(plan, only, progress=lambda name: console.print(f"[dim]running {name}…[/dim]"))
    render(report, console)
    report.details["total_seconds"] = round(time.perf_counter() - started, 1)
    console.print(
        f"[dim]{'quick' if args.quick else 'full'} run, {report.details['total_seconds']} s; "
        f"command: python scripts/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}[/dim]"
    )
    if args.markdown:
        args.markdown.write_text(markdown(report))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"figures": [f.to_dict() for f in report.figures], "details": report.details}, indent=2
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a stuck run is
    sys.exit(main())
