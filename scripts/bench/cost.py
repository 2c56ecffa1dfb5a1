"""6. The monthly Pub/Sub + Firestore bill from a closed-loop session simulation through the real hub
(store writes, commands, results and message sizes counted), against a Firestore document per reading.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from dataclasses import dataclass
from typing import Any

from chargectl.common import codec
from chargectl.common.clock import ManualClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.common.topics import command_topic
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.hub import machine as m
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.payments.ledger import Ledger
from chargectl.services.requests import submit_request

from .baselines import firestore_per_reading_usd
from .core import (
    FIRESTORE_CHUNK_BYTES,
    FIRESTORE_DELETE_USD,
    FIRESTORE_FREE_PER_DAY,
    FIRESTORE_WRITE_USD,
    FLUSH_INTERVAL_S,
    MONTH_H,
    POLL_INTERVAL_S,
    PUBSUB_FREE_BYTES,
    PUBSUB_MIN_REQUEST_BYTES,
    PUBSUB_USD_PER_TIB,
    START_S,
    Figure,
    Plan,
    Report,
)
from .fleet import Fleet, billed_message_bytes, telemetry_attributes
from .harness import LineSink, command_keys, site_document


class CountingStore(SqliteStore):
    """The SQLite store, counting the Firestore document writes each call stands for."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.counting = False
        self.writes: dict[str, int] = {}
        self.checkpoints: list[int] = []  # bytes of each checkpoint saved (all its documents)
        self.checkpoint_docs: list[int] = []  # documents of each checkpoint
        self._pending_bytes = self._pending_docs = 0

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
        # A checkpoint is its parts and delta ("hub-0.p07", "hub-0.delta") and, last, its head ("hub-0").
        if self.counting:
            self._pending_bytes += len(data)
            self._pending_docs += 1
            if "." not in name:
                self.checkpoints.append(self._pending_bytes)
                self.checkpoint_docs.append(self._pending_docs)
                self._pending_bytes = self._pending_docs = 0
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
    # The site introduces its whole fleet at once: lift the per-site plug limits.
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
                submit_request(
                    store, f"u-{p.mac}", p.mac, codec.ChargeRequest.ACTION_START, now_ms, f"r{requests}"
                )
        await hub.run_once()
        for _ in range(3):
            await asyncio.sleep(0)
        # The agent: execute every command, report each result on the telemetry topic.
        while inbox:
            msg = inbox.pop(0)
            traffic["command"].append(billed_message_bytes(msg.data, dict(msg.attributes)))
            cmd = codec.unpack_command(msg.data, cmd_ring, now_ms)
            if cmd.leased:  # a site lease re-arms the listed plugs' timers; a full renewal reports nothing
                continue
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
        # Documents of a periodic (incremental) checkpoint: a rotation of parts, the delta, the head.
        "checkpoint_documents": min(store.checkpoint_docs) if store.checkpoint_docs else 1,
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
    documents = max(chunks + 1, sim.get("checkpoint_documents", 1))
    checkpoint_writes = per_hour * MONTH_H * documents
    deletes = per_hour * MONTH_H * chunks
    firestore = (
        max(0.0, writes + checkpoint_writes - free) * FIRESTORE_WRITE_USD[region]
        + max(0.0, deletes - free) * FIRESTORE_DELETE_USD[region]
    )
    return {
        "pubsub_usd": pubsub,
        "firestore_usd": firestore,
        "firestore_writes": writes + checkpoint_writes,
        "checkpoint_writes": checkpoint_writes,
        "total_usd": pubsub + firestore,
        "firestore_per_reading_usd": firestore_per_reading_usd(plugs, region),
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
