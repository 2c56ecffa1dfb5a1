"""What several sections share: a discarding time-series sink, pre-packed hub traffic, a hub on
SQLite + the memory bus, the plug simulator in its own process and the real site agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from chargectl.common import codec
from chargectl.common.clock import ManualClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.timeseries import (
    SessionEvent,
    TimeSeriesStats,
    reading_lines,
    run_lines,
    session_line,
)
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings

from .baselines import json_reading
from .core import CHARGING_SHARE, FLUSH_INTERVAL_S, POLL_INTERVAL_S, SITE_PLUGS
from .fleet import Fleet, flushes, telemetry_attributes


class LineSink:
    """A ``TimeSeries`` that builds the real line protocol and discards it (counting lines and bytes)."""

    def __init__(self) -> None:
        self.lines = 0
        self.bytes = 0

    def add_readings(self, site_id: str, readings: Sequence[Reading], state: str) -> None:
        lines = reading_lines(site_id, readings, state)
        self.lines += len(lines)
        self.bytes += sum(map(len, lines))

    def add_run(self, site_id: str, run: codec.PlugRun, state: str) -> None:
        lines = run_lines(site_id, run, state)
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


async def feed(hub: Hub, clock: ManualClock, messages: list[tuple[float, bytes, dict[str, str]]]) -> None:
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


def make_agent(
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


async def wait_for(cond: Callable[[], bool], what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark gave up waiting for {what}")
        await asyncio.sleep(0.02)


class AgentThread:
    """The real site agent on its own thread and event loop, with its own bus client: in production it
    is a separate process on the site's Pi, so it must not share (and hold up, or be held up by) the
    event loop of the hub it is measured against. ``make(bus)`` builds the agent on that thread;
    ``make_bus()`` its bus client there."""

    def __init__(
        self, make_bus: Callable[[], Any], make: Callable[[Any], Any], limit_s: float = 60.0
    ) -> None:
        import threading

        self._make_bus, self._make = make_bus, make
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self.agent: Any = None
        self._thread = threading.Thread(target=self._run, name="bench-agent", daemon=True)
        self._thread.start()
        if not self._ready.wait(limit_s) or self.agent is None:
            raise RuntimeError(f"the agent's thread did not start: {self._error}")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop() or the constructor
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        bus = self._make_bus()
        try:
            self.agent = self._make(bus)
            self._ready.set()
            await self.agent.serve()
        finally:
            close = getattr(bus, "close", None)
            if close is not None:
                await close()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self, limit_s: float = 60.0) -> None:
        """Stop the agent on its own loop and wait for its thread (a failure in it is raised here)."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and self.agent is not None:
            with contextlib.suppress(RuntimeError):  # the loop has finished already
                loop.call_soon_threadsafe(self.agent.stop)
        self._thread.join(limit_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the agent's thread did not stop within {limit_s:.0f} s")
        if self._error is not None:
            raise RuntimeError(f"the agent's thread failed: {self._error}") from self._error
