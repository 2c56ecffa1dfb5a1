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
from .harness import LineSink, SimProcess, command_keys, make_agent, site_document, wait_for


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
        _top_up(store, ports)
        hub = Hub(HubSettings(), HubPorts(bus, store, LineSink(), command_keys(command_key)), SystemClock())
        tasks.append(asyncio.create_task(hub.serve(health=False)))
        await wait_for(lambda: hub.problems() == [], "the hub to start")
        agent = make_agent(tmp / "agent", site, ports, bus, agent_key, command_key, **fast)
        tasks.append(asyncio.create_task(agent.serve()))

        def stop() -> None:
            agent.stop()
            hub.request_stop()

    samples: list[float] = []
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
            await wait_for(
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


async def _each(macs: Sequence[str], write: Callable[[str], object]) -> None:
    """``write(mac)`` for every plug at once, each on its own thread (off the event loop)."""
    with ThreadPoolExecutor(len(macs)) as pool:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, write, mac) for mac in macs))


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
