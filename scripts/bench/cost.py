"""6. The monthly Pub/Sub + Firestore bill from a closed-loop session simulation through the real hub
(store writes, commands, results and message sizes counted), against a Firestore document per reading.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import statistics
from collections.abc import Callable
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
from chargectl.services.adapters.store import Store
from chargectl.services.agent.core import BatchBuffer
from chargectl.services.agent.settings import AgentSettings
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


def _one(_args: dict[str, Any], _result: Any) -> dict[str, int]:
    return {}


# Every method of the store port, as the Firestore store carries it out: the document writes (by kind)
# a call stands for, from its arguments and its result. Reads are free here (the bill prices writes).
# The wrapper refuses to start on a port method in neither table, so a new one cannot go uncounted.
_READS = frozenset(
    {
        "close",
        "get_ledger_entry",
        "get_plug_state",
        "get_request",
        "get_session",
        "get_site",
        "get_topup_state",
        "get_unmatched_payment",
        "get_user",
        "ledger_by_reference",
        "ledger_entries",
        "list_plug_states",
        "list_sessions",
        "list_sites",
        "list_unmatched_payments",
        "list_users",
        "load_checkpoint",
        "pending_requests",
        "plug_bindings",
        "user_by_customer",
    }
)
_WRITES: dict[str, Callable[[dict[str, Any], Any], dict[str, int]]] = {
    "put_user": lambda a, r: {"user": 1},
    "update_user": lambda a, r: {"user": 1} if r is not None else {},  # a transaction: one write, if any
    "put_site": lambda a, r: {"site": 1},
    "put_session": lambda a, r: {"session": 1},
    # create-if-absent: a create that finds the document writes nothing
    "append_ledger": lambda a, r: {"ledger": 1} if r else {},
    "add_request": lambda a, r: {"charge_request": 1} if r else {},
    "mark_event": lambda a, r: {"event": 1} if r else {},
    "create_session": lambda a, r: {"session": 1} if r else {},  # a start's ACTIVE document
    # a guarded update of the request document
    "answer_request": lambda a, r: {"request_answer": 1} if r else {},
    # one transaction: the COMPLETED session document and, if any, its debit
    "finish_session": lambda a, r: (
        {"session_finish": 1, "debit": 1 if a["debit"] is not None else 0} if r else {}
    ),
    # one transaction: the event, each new ledger entry, the unmatched payment
    "record_event": lambda a, r: (
        {"event": 1, "ledger": r[1], "unmatched_payment": 1 if a.get("unmatched") is not None else 0}
        if r[0]
        else {}
    ),
    "assign_unmatched_payment": lambda a, r: {"ledger": 1, "unmatched_payment": 1} if r else {},
    "update_topup_state": lambda a, r: {"topup_state": 1} if r else {},
    "release_plug": lambda a, r: {"plug_binding_delete": 1} if r else {},
    # counted by the wrapper's own methods below (they need the store's state or sizes)
    "bind_plug": _one,
    "put_plug_state": _one,
    "save_checkpoint": _one,
}


def _port_methods() -> set[str]:
    return {name for name in dir(Store) if not name.startswith("_") and callable(getattr(Store, name))}


class CountingStore:
    """The SQLite store behind the store port, counting the Firestore documents each call writes.

    Counting is at the port, not by hand: every call the hub (or the simulated users) makes goes
    through here, and every write method of the port is priced by what the Firestore store does."""

    def __init__(self, path: str) -> None:
        unknown = _port_methods() - _READS - set(_WRITES)
        if unknown:
            raise RuntimeError(f"store port methods the cost model does not price: {sorted(unknown)}")
        self.inner = SqliteStore(path)
        self.counting = False
        self.writes: dict[str, int] = {}
        self.checkpoints: list[int] = []  # bytes of each checkpoint saved (all its documents)
        self.checkpoint_docs: list[int] = []  # documents of each checkpoint
        self._pending_bytes = self._pending_docs = 0

    def _count(self, kinds: dict[str, int]) -> None:
        if self.counting:
            for kind, n in kinds.items():
                if n:
                    self.writes[kind] = self.writes.get(kind, 0) + n

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        price = _WRITES.get(name)
        if price is None:
            return attr  # a read, or beyond the port (watch_requests)

        signature = inspect.signature(attr)

        def counted(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            result = attr(*args, **kwargs)
            self._count(price(bound.arguments, result))
            return result

        return counted

    def bind_plug(self, plug_mac: str, site_id: str, at_ms: int, replace: bool = False) -> str:
        # Firestore: a set when replacing, else a create that writes only if the plug was unbound.
        before = self.inner.plug_bindings().get(plug_mac)
        bound = self.inner.bind_plug(plug_mac, site_id, at_ms, replace)
        self._count({"plug_binding": 1 if replace or before is None else 0})
        return bound

    def put_plug_state(self, state: codec.PlugState) -> None:
        # A plug's first document (the store has none: the hub sees the plug for the first time) is
        # written once in its life, like its binding: counted, and priced per plug, not per plug-hour.
        # Any later write of it (a status change, a restarted hub writing it again) is per plug-hour.
        first = self.inner.get_plug_state(state.plug_mac) is None
        self.inner.put_plug_state(state)
        self._count({"plug_state_first" if first else "plug_state": 1})

    def save_checkpoint(self, name: str, data: bytes) -> None:
        # A checkpoint is its parts and delta ("hub-0.p07", "hub-0.delta") and, last, its head ("hub-0");
        # its documents are priced in monthly_cost (900 kB chunks, the previous generation deleted).
        if self.counting:
            self._pending_bytes += len(data)
            self._pending_docs += 1
            if "." not in name:
                self.checkpoints.append(self._pending_bytes)
                self.checkpoint_docs.append(self._pending_docs)
                self._pending_bytes = self._pending_docs = 0
        self.inner.save_checkpoint(name, data)


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
    # The agent's own batch buffer: flushed every flush interval, or result_flush_ms after a result.
    agent_defaults = AgentSettings(site_id=site)
    buf = BatchBuffer(
        agent_defaults.max_batch_readings,
        FLUSH_INTERVAL_S,
        clock.monotonic(),
        result_flush_s=agent_defaults.result_flush_ms / 1000,
    )
    seq = 0
    in_window = True
    requests = 0
    results = 0
    early_flushes = 0
    store.counting = True
    polls = int(hours * 3600 / POLL_INTERVAL_S)
    mono0 = clock.monotonic()

    async def deliver(data: bytes, attrs: dict[str, str], kind: str, counted: bool = True) -> None:
        if counted:
            traffic[kind].append(billed_message_bytes(data, attrs))
        if not await hub.handle_message(BusMessage(data, attrs, f"{kind}-{seq}-{len(traffic[kind])}")):
            raise AssertionError(f"the hub refused a {kind} message")

    async def flush() -> None:
        nonlocal seq, early_flushes
        now = clock.monotonic()
        # After the window only the sessions' own traffic counts: their results, not the readings.
        counted = in_window
        if buf.due(now):
            rows, _, outcomes = buf.take(now)
        else:  # results that waited result_flush_ms go alone, as the agent's flusher sends them
            rows, outcomes = [], buf.take_results()
            early_flushes += 1
            counted = True
        seq += 1
        batch = codec.Batch(
            site, seq, tuple(rows), created_at_ms=round(clock.now() * 1000), results=tuple(outcomes)
        )
        data, attrs = telemetry_attributes(batch, agent_key)
        await deliver(data, attrs, "telemetry", counted)

    async def flush_until(mono: float) -> None:
        """Every flush the agent's flusher makes up to ``mono``, each at its own moment."""
        while not buf.empty and buf.flush_at() <= mono:
            clock.advance(max(0.0, buf.flush_at() - clock.monotonic()))
            await flush()

    async def step(k: int, users: bool) -> None:
        """One poll interval: readings, due flushes, (new users), the hub, the agent obeying."""
        nonlocal requests, results
        target = mono0 + (k + 1) * POLL_INTERVAL_S
        await flush_until(target)
        clock.advance(max(0.0, target - clock.monotonic()))
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
            full = buf.add(
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
            if full:
                await flush()
        if buf.due(clock.monotonic()) or buf.results_due(clock.monotonic()):
            await flush()
        # Users: an idle plug gets a car and a start request now and then; the car leaves once its
        # session is billed or its request was refused.
        for p in fleet.plugs:
            plug = hub.plugs.get(p.mac)
            if plug is None or plug.state.session is not None or relay[p.mac]:
                continue
            car = cars[p.mac]
            if car is not None:
                req = store.get_request(car.request_id)
                # Its session ended (the plug holds none now, and the request was answered with it), or
                # the request was refused.
                if (req is not None and req.session_id) or (
                    req is not None and req.status == codec.ChargeRequest.STATUS_REJECTED
                ):
                    cars[p.mac] = None
            elif (
                users
                and plug.state.status is m.Status.AVAILABLE
                and rng.random() < POLL_INTERVAL_S / mean_gap_s
            ):
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
        # The agent: execute every command; each result rides in the next batch (flushed at most
        # result_flush_ms later, by flush_until at the top of the next step).
        while inbox:
            msg = inbox.pop(0)
            cmd = codec.unpack_command(msg.data, cmd_ring, now_ms)
            if users or not cmd.leased:  # after the window, only the sessions' own commands count
                traffic["command"].append(billed_message_bytes(msg.data, dict(msg.attributes)))
            if cmd.leased:  # a site lease re-arms the listed plugs' timers; a full renewal reports nothing
                continue
            relay[cmd.plug_mac] = cmd.on
            results += 1
            buf.add_result(
                codec.CommandOutcome(
                    cmd.command_id,
                    site,
                    cmd.plug_mac,
                    True,
                    "executed",
                    now_ms,
                    cmd.on,
                    session_id=cmd.session_id,
                ),
                clock.monotonic(),
            )

    for k in range(polls):
        await step(k, users=True)
    # Carry every session started in the window to its bill (no new users): its finish, debit, "off"
    # and plug states are counted as the window's, as they would be in a month's steady state; the
    # telemetry of these extra hours is not (the window's plug-hours already paid for theirs).
    in_window = False
    counted_checkpoints = len(store.checkpoints)
    k = polls
    while any(p.state.session is not None for p in hub.plugs.values()) and k < polls + DRAIN_MAX_POLLS:
        await step(k, users=False)
        k += 1
    drained_s = (k - polls) * POLL_INTERVAL_S
    del store.checkpoints[counted_checkpoints:], store.checkpoint_docs[counted_checkpoints:]

    store.counting = False
    await hub.stop()
    await bus.close()
    plug_hours = n * hours
    finished = store.writes.get("session_finish", 0)
    answers = [store.get_request(f"r{i}") for i in range(1, requests + 1)]
    started = sum(1 for a in answers if a is not None and a.status == codec.ChargeRequest.STATUS_ACCEPTED)
    # A plug is bound to its site once in its life: priced per plug, not per plug-hour.
    once = {k: store.writes.pop(k) for k in ONE_TIME_WRITES if k in store.writes}
    periodic = hours * 3600 / HubSettings().checkpoint_interval_s
    return {
        "plugs": n,
        "hours": hours,
        "requests": requests,
        "sessions_billed": finished,
        # Sessions started (accepted requests): in a month's steady state as many finish; within the
        # simulated hours the last ones are still charging.
        "sessions_per_plug_hour": started / plug_hours,
        "drained_hours": drained_s / 3600,
        "one_time_writes_per_plug": {k: v / n for k, v in sorted(once.items())},
        # Results carried in telemetry batches, and the results-only batches among those.
        "results_per_plug_hour": results / plug_hours,
        "early_flushes_per_plug_hour": early_flushes / plug_hours,
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
        "readings_per_telemetry_message": n * polls / max(1, len(traffic["telemetry"])),
    }


ONE_TIME_WRITES = ("plug_binding", "plug_state_first")
DRAIN_MAX_POLLS = round(24 * 3600 / POLL_INTERVAL_S)  # a session lasts at most 16 h (max_session_s)
SESSION_FLOOR_WRITES = 5  # charge_request, request_answer, session (start), session_finish, debit


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
    # The floor: the writes no session can do without as the hub works today (the user's request, its
    # answer, the session document at the start, the finish transaction's session document and
    # debit), at the simulation's sessions per plug-hour, priced alone.
    floor_writes = SESSION_FLOOR_WRITES * sim.get("sessions_per_plug_hour", 0.0) * plug_months
    floor = max(0.0, floor_writes - free) * FIRESTORE_WRITE_USD[region]
    return {
        "floor_usd": floor,
        "floor_writes": floor_writes,
        "pubsub_usd": pubsub,
        "firestore_usd": firestore,
        "firestore_writes": writes + checkpoint_writes,
        "checkpoint_writes": checkpoint_writes,
        "total_usd": pubsub + firestore,
        "firestore_per_reading_usd": firestore_per_reading_usd(plugs, region),
    }


COST_GOAL_USD = 7.0  # issue 16: per 10,000 plugs a month, US multi-region
COST_GOAL_PLUGS = 10_000


def writes_per_session_within(sim: dict[str, Any], plugs: int, region: str, budget_usd: float) -> float:
    """The Firestore writes per session (at the simulation's session rate, with its Pub/Sub traffic and
    checkpoints unchanged) within which ``plugs`` plugs cost at most ``budget_usd`` a month; 0 if the
    rest of the bill alone is over it. Solved on :func:`monthly_cost` itself (it is monotonic)."""
    rate = sim.get("sessions_per_plug_hour", 0.0)

    def total(k: float) -> float:
        return monthly_cost({**sim, "writes_per_plug_hour": {"w": k * rate}}, plugs, region)["total_usd"]

    if total(0.0) > budget_usd or rate <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while total(hi) <= budget_usd:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= budget_usd else (lo, mid)
    return lo


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
    rate = sim["sessions_per_plug_hour"]
    within = {
        region: writes_per_session_within(sim, COST_GOAL_PLUGS, region, COST_GOAL_USD)
        for region in FIRESTORE_WRITE_USD
    }
    report.details["cost"] = {"simulation": sim, "monthly": costs, "goal_writes_per_session": within}
    if rate:
        now = sum(sim["writes_per_plug_hour"].values()) / rate
        rest = monthly_cost({**sim, "writes_per_plug_hour": {}}, COST_GOAL_PLUGS, "us-multi")
        report.notes.append(
            f"${COST_GOAL_USD:.0f} a month at {COST_GOAL_PLUGS:,} plugs and {rate:.3f} sessions per plug-hour "
            f"needs at most {within['us-multi']:.2f} Firestore writes per session (US multi-region; "
            f"{within['regional']:.2f} regional), today {now:.2f}; Pub/Sub and checkpoints alone are "
            f"${rest['total_usd']:.2f}"
        )
    per_session = (
        ", ".join(
            f"{k} {v / sim['sessions_per_plug_hour']:.2f}" for k, v in sim["writes_per_plug_hour"].items()
        )
        if sim["sessions_per_plug_hour"]
        else "no session started"
    )
    once = sim["one_time_writes_per_plug"]
    if once:
        report.notes.append(
            "written once per plug in its life, not in the monthly figures: "
            + ", ".join(f"{k} {v:.2f}" for k, v in once.items())
            + f" per plug (${sum(once.values()) * FIRESTORE_WRITE_USD['us-multi']:.6f} a plug, US multi-region)"
        )
    for n in plan.cost_sizes:
        c = costs[str(n)]["us-multi"]
        report.notes.append(
            f"cost floor at {n:,} plugs (US multi-region): ${c['floor_usd']:,.2f} a month — "
            f"{SESSION_FLOOR_WRITES} writes per session × {sim['sessions_per_plug_hour']:.3f} sessions "
            f"per plug-hour; Firestore writes per session started: {per_session}"
        )
