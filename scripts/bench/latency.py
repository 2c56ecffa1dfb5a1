"""5. Request → relay: a ``ChargeRequest`` in the store until the agent has switched the plug on, on
``chargectl run``'s ``AllInOne`` and on the Pub/Sub + Firestore emulators.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chargectl.common import codec
from chargectl.common.keys import SigningKey
from chargectl.services.hub import machine as m
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.payments.ledger import Ledger
from chargectl.services.requests import submit_request

from .baselines import direct_switch
from .core import Figure, Plan, Report
from .harness import (
    AgentThread,
    LineSink,
    SimProcess,
    command_keys,
    make_agent,
    site_document,
    wait_for,
)


class Trace:
    """Where a request's time goes, stage by stage (wall clock, ms), recorded by wrapping the hub's and
    the agent's own seams in this process (the code paths are unchanged): the hub hears the request
    (the store's listener), the start is decided (account and balance read), its document is stored
    (the relay "on" is held until then), the command is handed to the bus ("released") and published
    (acknowledged), the agent's command handler gets it, the plug has switched. Also the event loop's lag (a 5 ms sleeper's overshoot), split into the
    measured windows and the rest (stopping and billing between rounds)."""

    STAGES = ("heard", "decided", "stored", "released", "published", "received", "executed")

    def __init__(self) -> None:
        self.heard: dict[str, float] = {}  # request id -> ms
        self.decided: dict[str, float] = {}  # session id -> ms
        self.stored: dict[str, float] = {}  # session id -> ms
        self.released: dict[bytes, float] = {}  # command message -> ms (handed to the bus)
        self.published: dict[bytes, float] = {}  # command message -> ms (the bus acknowledged it)
        self.received: dict[bytes, float] = {}  # command message -> ms
        self.message_of: dict[str, bytes] = {}  # command id -> its message
        self.measuring = False
        self.lag_in: list[float] = []  # loop lag samples (s) over 20 ms, inside the measured windows
        self.lag_out: list[float] = []  # ... between them
        self.report: dict[str, Any] = {}
        # Every store call made through the hub's store object: (method, who, start ms, end ms); who is
        # "hub" (its loop and its own threads) or "driver" (the harness's request writes and answer reads).
        self.calls: list[tuple[str, str, float, float]] = []
        self.windows: list[tuple[float, float]] = []  # per round: requests written -> last start stored

    @staticmethod
    def now_ms() -> float:
        return time.time() * 1000

    def attach(self, hub: Hub) -> None:
        sessions = hub.sessions
        pushed, defer, create = hub._handle_pushed, sessions._defer_start, sessions._create_start

        def handle_pushed(req: codec.ChargeRequest) -> None:
            self.heard.setdefault(req.request_id, self.now_ms())
            pushed(req)

        def defer_start(plug: Any, fx: m.SessionStarted) -> None:
            self.decided[fx.session_id] = self.now_ms()
            defer(plug, fx)

        def create_start(doc: codec.ChargeSession) -> bool:
            try:
                return create(doc)
            finally:
                self.stored[doc.session_id] = self.now_ms()

        hub._handle_pushed = handle_pushed  # type: ignore[method-assign]
        sessions._defer_start = defer_start  # type: ignore[method-assign]
        sessions._create_start = create_start  # type: ignore[method-assign]
        bus = hub.commands.bus
        trace = self

        class Publishing:
            def __getattr__(self, name: str) -> Any:
                return getattr(bus, name)

            async def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
                trace.released[data] = trace.now_ms()
                out = await bus.publish(topic, data, attributes)
                trace.published[data] = trace.now_ms()
                return out

        hub.commands.bus = Publishing()  # type: ignore[assignment]

    def attach_store(self, store: Any, hub: Hub) -> None:
        """Record every port call made on ``store`` (its instance methods wrapped, and the hub's store
        writer's; the code paths are unchanged): which ones land at the store while a round's starts are
        heard, decided and stored."""
        skip = {"client", "close", "collection_name", "watch_requests"}
        for name in dir(store):
            fn = getattr(store, name, None)
            if name.startswith("_") or name in skip or not callable(fn) or isinstance(fn, type):
                continue
            setattr(store, name, self._recorded(name, fn))
        writer = hub.mirror.writer  # it holds the store's put_plug_state from before this
        if writer is not None:
            writer._write = self._recorded("put_plug_state", writer._write)  # type: ignore[method-assign]

    def _recorded(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        calls = self.calls

        def call(*args: Any, **kwargs: Any) -> Any:
            thread = threading.current_thread().name
            who = "hub" if thread.startswith("chargectl") or thread == "MainThread" else "driver"
            t0 = time.time() * 1000
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((name, who, t0, time.time() * 1000))

        return call

    def window_calls(self) -> dict[str, Any]:
        """The store calls begun inside the rounds' start windows (requests written → the round's last
        start document stored), by caller and method, with the time they spent at the store."""
        out: dict[str, dict[str, dict[str, float]]] = {"hub": {}, "driver": {}}
        for name, who, t0, t1 in self.calls:
            if any(a <= t0 <= b for a, b in self.windows):
                row = out[who].setdefault(name, {"calls": 0, "total_s": 0.0, "max_s": 0.0})
                row["calls"] += 1
                row["total_s"] = round(row["total_s"] + (t1 - t0) / 1000, 3)
                row["max_s"] = round(max(row["max_s"], (t1 - t0) / 1000), 3)
        timeline: list[tuple[str, str, float, float]] = []
        if self.windows:
            # The round whose starts took longest to be stored: each call's start and end (s from the
            # round's request writes), to see what queued at the store with what.
            a, b = max(self.windows, key=lambda w: w[1] - w[0])
            timeline = [
                (name, who, round((t0 - a) / 1000, 3), round((t1 - a) / 1000, 3))
                for name, who, t0, t1 in sorted(self.calls, key=lambda c: c[2])
                if a <= t0 <= b + 200
            ]
        return {"rounds": len(self.windows), **out, "slowest_round": timeline}

    def attach_agent(self, agent: Any) -> None:
        """Wrap the agent's command executor (looked up on every command message)."""
        executor = agent.executor
        handle_many = executor.handle_many

        async def handle(data: bytes, now_ms: int) -> Any:
            self.received[data] = self.now_ms()
            outcomes = await handle_many(data, now_ms)
            for o in outcomes:
                self.message_of.setdefault(o.command_id, data)
            return outcomes

        executor.handle_many = handle

    async def watch_loop(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lag = time.perf_counter() - t - 0.005
            if lag > 0.02:
                (self.lag_in if self.measuring else self.lag_out).append(lag)

    def sample(self, rid: str, sid: str, created: float, outcome: codec.CommandOutcome) -> dict[str, float]:
        """One request's stage times (s since it was written; absent: not seen)."""
        data = self.message_of.get(outcome.command_id, b"")
        at = {
            "heard": self.heard.get(rid),
            "decided": self.decided.get(sid),
            "stored": self.stored.get(sid),
            "released": self.released.get(data),
            "published": self.published.get(data),
            "received": self.received.get(data),
            "executed": float(outcome.executed_at_ms),
        }
        return {k: round((v - created) / 1000, 3) for k, v in at.items() if v is not None}

    def summary(self, samples: list[dict[str, float]]) -> dict[str, Any]:
        """Per stage, the p50/p99 of the time spent in it (from the previous stage seen)."""
        spans: dict[str, list[float]] = {k: [] for k in self.STAGES}
        for s in samples:
            last = 0.0
            for k in self.STAGES:
                if k in s:
                    spans[k].append(s[k] - last)
                    last = s[k]
        out: dict[str, Any] = {
            f"{k}_s": {"p50": statistics.median(v), "p99": _percentile(v, 0.99), "max": max(v)}
            for k, v in spans.items()
            if v
        }
        for stage in ("stored", "published"):
            # The hub's own part, from the request's writing: its document stored, its "on" published.
            upto = [s[stage] for s in samples if stage in s]
            if upto:
                out[f"to_{stage}_s"] = {"p50": statistics.median(upto), "p99": _percentile(upto, 0.99)}
        received = [s["received"] for s in samples if "received" in s]
        if received:
            # Where the clock stopped before the agent stamped its outcomes once the plug had answered
            # (executed_at_ms was the time the command was handed in): for before/after comparisons.
            out["to_command_received_s"] = {
                "p50": statistics.median(received),
                "p99": _percentile(received, 0.99),
            }
        out["slowest"] = sorted(samples, key=lambda s: -s.get("executed", 0))[:3]
        out["store_calls_in_start_windows"] = self.window_calls()
        for name, lags in (("measured", self.lag_in), ("between_rounds", self.lag_out)):
            out[f"loop_lag_{name}"] = {
                "over_20ms": len(lags),
                "total_s": round(sum(lags), 3),
                "max_s": round(max(lags, default=0.0), 3),
            }
        return out


async def _latency(
    backend: str, plan: Plan, tmp: Path, ports: list[int], trace: Trace | None = None
) -> list[float]:
    """Embedded: ``AllInOne`` (``chargectl run``). Emulators: the hub on Pub/Sub + Firestore and the
    agent on Pub/Sub, in this process, the agent on its own thread, event loop and bus client (it is
    its own process in production). The plugs are in the simulator process either way.

    Each round puts a start request for every plug in the store at once; a sample is the time from
    the request's ``created_at_ms`` to the agent's confirmed "on" (``executed_at_ms``: when the plug
    answered the switch, the relay on). Then every
    session is stopped and billed before the next round.
    """
    from chargectl.common.clock import SystemClock

    site = f"lat-{random.Random().getrandbits(32):08x}"
    tmp.mkdir(parents=True, exist_ok=True)
    # Readings every second, flushed every 2 s: the hub learns the plugs quickly. The command path
    # (store → hub → bus → agent → plug) does not depend on these settings.
    fast = {"poll_interval_s": 1.0, "flush_interval_s": 2.0}
    tasks: list[asyncio.Task[None]] = []
    agent_thread: AgentThread | None = None
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
        _top_up(store, [f"u-{port}" for port in ports])
        tasks.append(asyncio.create_task(system.serve()))
        await wait_for(lambda: system.hub is not None and system.agent is not None, "chargectl run to start")
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
        _top_up(store, [f"u-{port}" for port in ports])
        hub = Hub(HubSettings(), HubPorts(bus, store, LineSink(), command_keys(command_key)), SystemClock())
        tasks.append(asyncio.create_task(hub.serve(health=False)))
        await wait_for(lambda: hub.problems() == [], "the hub to start")

        def make(agent_bus: Any) -> Any:
            made = make_agent(tmp / "agent", site, ports, agent_bus, agent_key, command_key, **fast)
            if trace is not None:
                trace.attach_agent(made)
            return made

        # The agent runs in its own process on the site's Pi: here on its own thread, event loop and bus
        # client, so it neither holds up the hub's loop nor waits on it (as it did sharing one loop).
        agent_thread = await asyncio.to_thread(
            AgentThread, lambda: PubSubBus(site, publish_timeout_s=10), make
        )
        agent = agent_thread.agent
        stop = hub.request_stop

    samples: list[float] = []
    traced: list[dict[str, float]] = []
    if trace is not None:
        trace.attach(hub)
        trace.attach_store(store, hub)
        if agent_thread is None:
            trace.attach_agent(agent)
        tasks.append(asyncio.create_task(trace.watch_loop()))
    try:
        await wait_for(
            lambda: (
                len(hub.plugs) == len(ports)
                and all(p.state.status is m.Status.AVAILABLE for p in hub.plugs.values())
            ),
            "the hub to see every plug",
        )
        macs = sorted(agent.plugs)
        user = {mac: f"u-{agent.plugs[mac][1]}" for mac in macs}
        for rnd in range(plan.latency_rounds):
            # The requests are written at once (one thread each, as separate users' apps would), and
            # every store call of the harness runs off the event loop the hub and the agent share, so
            # the measurement never holds up what it measures.
            created = round(time.time() * 1000)
            if trace is not None:
                trace.measuring = True
            await _each(
                macs,
                lambda mac, rnd=rnd, created=created: submit_request(
                    store, user[mac], mac, codec.ChargeRequest.ACTION_START, created, f"{rnd}-{mac}"
                ),
            )
            done: dict[str, int] = {}
            sessions: dict[str, str] = {}  # the hub makes session ids: read them from the answers
            deadline = time.monotonic() + 120.0
            while len(done) < len(macs):
                if time.monotonic() > deadline:
                    raise RuntimeError("benchmark gave up waiting for every plug to switch on")
                missing = [mac for mac in macs if mac not in sessions]
                answers = await asyncio.to_thread(
                    lambda missing=missing, rnd=rnd: {m: store.get_request(f"{rnd}-{m}") for m in missing}
                )
                for mac, answer in answers.items():
                    if answer is not None and answer.session_id:
                        sessions[mac] = answer.session_id
                wanted = set(sessions.values())
                for o in agent.outcomes:
                    if o.ok and o.relay_on and o.session_id in wanted:
                        done.setdefault(o.plug_mac, o.executed_at_ms)
                if len(done) < len(macs):
                    await asyncio.sleep(0.02)
            samples.extend((at - created) / 1000 for at in done.values())
            if trace is not None:
                trace.measuring = False
                confirmed = {
                    o.plug_mac: o for o in agent.outcomes if o.ok and o.relay_on and o.session_id in wanted
                }
                for mac in macs:
                    traced.append(trace.sample(f"{rnd}-{mac}", sessions[mac], created, confirmed[mac]))
                stored = [trace.stored[sessions[mac]] for mac in macs if sessions[mac] in trace.stored]
                trace.windows.append((float(created), max(stored, default=float(created))))
            await _each(
                macs,
                lambda mac, rnd=rnd: submit_request(
                    store,
                    user[mac],
                    mac,
                    codec.ChargeRequest.ACTION_STOP,
                    round(time.time() * 1000),
                    f"{rnd}-{mac}-stop",
                ),
            )
            # Billed: every session over and its finish (document and debit) written, which the serving
            # hub does off its loop once the session is over.
            await wait_for(
                lambda: (
                    not hub.sessions.pending
                    and all(
                        p.state.status is m.Status.AVAILABLE and p.state.session is None
                        for p in hub.plugs.values()
                    )
                ),
                "every session to be billed",
            )
    finally:
        if agent_thread is not None:
            await asyncio.to_thread(agent_thread.stop)
        stop()
        if trace is not None:
            tasks.pop().cancel()
        for task in tasks:
            await asyncio.wait_for(task, 60)
        if backend != "embedded":
            await bus.close()
            store.close()
    if trace is not None:
        trace.report = trace.summary(traced)
    return samples


def emulator_floor(project: str, rounds: int, n: int) -> dict[str, Any]:
    """The Firestore emulator alone, no hub and no agent: what a round of the latency section costs at
    the store whatever the hub does. Per round, ``n`` request writes at once from the driver (a thread
    each, ``submit_request`` as the section writes them) with one listener on the hub's query (the
    pending requests): each write's time until the listener delivers it. Then, with the listener still
    on, ``n`` session creates as the hub makes them (``create_session`` from ``n`` threads at once,
    grouped by the store) and as one batched commit: the time until the last is stored. Also, in the
    burst itself, each write's own call (until the emulator acknowledged it) and, the floor under the
    hub's "stored" step, a session document created (by the listener's client, grouped) the moment its
    request is delivered, with no decision (even rounds: no reads either; odd rounds: after the user's
    account read and ledger query, made together): the time from the request's writing until that
    document is stored. The requests are answered between rounds (off the clock), as the hub answers
    them."""
    from chargectl.services.adapters.firestore_store import FirestoreStore

    driver, listener = FirestoreStore(project), FirestoreStore(project)
    heard: dict[str, float] = {}
    acked: dict[str, float] = {}
    stored: dict[str, float] = {}
    cond = threading.Condition()
    reactor, reads_pool = ThreadPoolExecutor(n), ThreadPoolExecutor(n)

    def on_request(req: codec.ChargeRequest) -> None:  # the listener's thread
        rid = req.request_id
        with cond:
            if rid in heard:
                return
            heard[rid] = time.time() * 1000
            cond.notify_all()
        reactor.submit(react, rid)

    def react(rid: str) -> None:
        """Store its session document at once, as a hub with nothing to decide; in odd rounds after the
        account read and the ledger query, made together as the hub makes them."""
        i = int(rid.rsplit("-", 1)[1])
        if int(rid.split("-")[1]) % 2:
            ledger = reads_pool.submit(listener.ledger_entries, f"u-{i}")
            listener.get_user(f"u-{i}")
            ledger.result()
        listener.create_session(session(f"floor-r-{rid}", i))
        with cond:
            stored[rid] = time.time() * 1000
            cond.notify_all()

    def write(rid: str, i: int, created: int) -> None:
        submit_request(driver, f"u-{i}", f"0000000000{i:02X}", codec.ChargeRequest.ACTION_START, created, rid)
        acked[rid] = time.time() * 1000

    def session(sid: str, i: int) -> codec.ChargeSession:
        return codec.ChargeSession(
            session_id=sid,
            user_id=f"u-{i}",
            plug_mac=f"0000000000{i:02X}",
            site_id=project,
            status=codec.ChargeSession.STATUS_ACTIVE,
            started_at_ms=round(time.time() * 1000),
            cost=codec.Money(amount_minor=0, currency="gbp"),
        )

    delivered: list[float] = []
    write_acked: list[float] = []
    write_to_stored: list[float] = []
    with_reads: list[float] = []
    grouped: list[float] = []
    batched: list[float] = []
    reads: dict[str, list[float]] = {"accounts": [], "ledgers": [], "ledgers_one_query": []}
    users = [f"u-{i}" for i in range(n)]
    _top_up(driver, users)

    def timed(pool: ThreadPoolExecutor, fn: Callable[[str], object], into: list[float]) -> None:
        t0 = time.perf_counter()
        list(pool.map(fn, users))
        into.append(time.perf_counter() - t0)

    def one_round(pool: ThreadPoolExecutor, rnd: int) -> None:
        ids = [f"floor-{rnd}-{i}" for i in range(n)]
        created = round(time.time() * 1000)
        list(pool.map(lambda i: write(ids[i], i, created), range(n)))
        with cond:
            if not cond.wait_for(lambda: all(r in stored for r in ids), timeout=60.0):
                raise RuntimeError("the emulator's listener did not deliver every request")
        delivered.extend((heard[r] - created) / 1000 for r in ids)
        write_acked.extend((acked[r] - created) / 1000 for r in ids)
        (with_reads if rnd % 2 else write_to_stored).extend((stored[r] - created) / 1000 for r in ids)
        # A start's reads, as the hub makes them (one thread each, grouped by the store) and as one query.
        timed(pool, driver.get_user, reads["accounts"])
        timed(pool, driver.ledger_entries, reads["ledgers"])
        t0 = time.perf_counter()
        driver._ledgers_of(users)
        reads["ledgers_one_query"].append(time.perf_counter() - t0)
        docs = [session(f"floor-g-{rnd}-{i}", i) for i in range(n)]
        t0 = time.perf_counter()
        list(pool.map(driver.create_session, docs))
        grouped.append(time.perf_counter() - t0)
        docs = [session(f"floor-b-{rnd}-{i}", i) for i in range(n)]
        t0 = time.perf_counter()
        for result in driver._create_sessions(docs):
            if result is not True:
                raise RuntimeError(f"a batched create failed: {result}")
        batched.append(time.perf_counter() - t0)
        answered = round(time.time() * 1000)
        accepted = codec.ChargeRequest.STATUS_ACCEPTED
        list(pool.map(lambda r: driver.answer_request(r, accepted, "", "", answered), ids))

    unwatch = listener.watch_requests(on_request)
    try:
        with ThreadPoolExecutor(n) as pool:
            for rnd in range(rounds):
                one_round(pool, rnd)
    finally:
        unwatch()
        reactor.shutdown(wait=True)
        reads_pool.shutdown(wait=True)
        driver.close()
        listener.close()

    def spread(values: list[float]) -> dict[str, float]:
        return {"p50": round(statistics.median(values), 3), "p99": round(_percentile(values, 0.99), 3)}

    return {
        "rounds": rounds,
        "requests_per_round": n,
        "write_to_listener_s": spread(delivered),
        "write_acknowledged_s": spread(write_acked),
        "write_to_session_stored_s": spread(write_to_stored),
        "write_to_session_stored_after_reads_s": spread(with_reads),
        "creates_grouped_s": spread(grouped),
        "creates_one_batch_s": spread(batched),
        **{f"{name}_s": spread(values) for name, values in reads.items()},
    }


async def _each(macs: Sequence[str], write: Callable[[str], object]) -> None:
    """``write(mac)`` for every plug at once, each on its own thread (off the event loop)."""
    with ThreadPoolExecutor(len(macs)) as pool:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, write, mac) for mac in macs))


def _top_up(store: Any, users: Sequence[str]) -> None:
    ledger = Ledger(store)
    now_ms = round(time.time() * 1000)
    for user in users:
        store.put_user(codec.UserAccount(user_id=user, currency="gbp"))  # the hub acts for accounts only
        ledger.post(f"topup-{user}", user, "topup", 1_000_000, "gbp", now_ms)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def bench_latency(plan: Plan, report: Report) -> None:
    import tempfile
    from concurrent.futures import Future

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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
            direct = asyncio.run(direct_switch(sim.ports, plan.latency_rounds))
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
                trace = Trace()
                samples = asyncio.run(_latency(backend, plan, Path(tmp) / backend, sim.ports, trace))
                p50, p99 = statistics.median(samples), _percentile(samples, 0.99)
                details[backend] = {
                    "samples": len(samples),
                    "p50_s": p50,
                    "p99_s": p99,
                    "max_s": max(samples),
                    "stages": trace.report,
                }
                base = "set_relay straight to the plug"
                report.add(
                    Figure("latency", f"{backend}, p50 request → relay on", p50, "s", d50, base),
                    Figure("latency", f"{backend}, p99 request → relay on", p99, "s", d99, base),
                )
                if backend == "emulators":
                    # The floor under the emulator figures, measured on the same (warm) emulator.
                    project = f"floor-{random.Random().getrandbits(32):08x}"
                    floor = emulator_floor(
                        project, max(2, plan.latency_rounds), plan.latency_plugs
                    )  # both kinds
                    details["emulator_floor"] = floor
                    heard, stored = floor["write_to_listener_s"], floor["write_to_session_stored_s"]
                    read = floor["write_to_session_stored_after_reads_s"]
                    alone = "emulator alone, p99"
                    report.add(
                        Figure("latency", f"{alone} write → listener", heard["p99"], "s"),
                        Figure("latency", f"{alone} write → session stored", stored["p99"], "s"),
                        Figure("latency", f"{alone} write → reads → session stored", read["p99"], "s"),
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
