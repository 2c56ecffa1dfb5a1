"""``chargectl demo``: the all-in-one system plus simulated plugs and simulated drivers.

Everything runs on one scaled clock (``--speed``): the simulator's physics, the agent's polls and the
hub's timers. Drivers top up their prepaid balance, plug a vehicle into a free plug and ask for a
session through the store (as the app would), then walk away; some stop early. Sessions charge,
complete and are billed by the real hub exactly as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chargectl.common import codec
from chargectl.common.clock import ScaledClock
from chargectl.common.config import Config
from chargectl.services.agent.settings import AgentSettings, PlugAddress
from chargectl.services.allinone import AllInOne, Provision
from chargectl.services.hub.machine import Status
from chargectl.services.hub.settings import HubSettings, TariffSettings
from chargectl.services.payments.ledger import Ledger
from chargectl.services.requests import submit_request
from chargectl.shelly.sim import SimFleet, build_profiles

__all__ = ["Demo", "DemoSettings", "Driver"]

SITE = "demo-site"
# Sim-time parameters tuned for a fast clock: polls every 30 s of sim time still give the hub fresh data.
_DEMO_CLASS = {
    "start_confirm_s": 60.0,
    "complete_after_s": 600.0,
    "no_load_timeout_s": 900.0,
    "stale_after_s": 300.0,
    "offline_after_s": 900.0,
    "relay_confirm_s": 300.0,
    "relay_retry_s": 120.0,
    "auto_off_s": 1800,
}


@dataclass(frozen=True)
class DemoSettings:
    plugs: int = 6
    speed: float = 300.0
    duration_s: float | None = None  # real seconds; None = until stopped
    users: int = 0  # 0 = plugs + 2
    seed: int | None = None
    state_dir: Path | None = None  # None = a temporary directory removed at the end
    console_port: int | None = 8787  # the operator console (and /healthz); 0 = any free port; None = off


def console_port(preferred: int) -> int:
    """``preferred`` if it is free on loopback, else (or for 0) a free port chosen by the kernel."""
    import socket

    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


@dataclass
class Driver:
    user_id: str
    vehicle: str  # "ev" or "ebike"
    plug: str | None = None
    stop_after_s: float | None = None  # sim seconds after the start; None = walks away until complete
    started_at: float = 0.0
    request_id: str = ""


@dataclass
class DemoStats:
    requests: int = 0
    rejected: int = 0
    topups: int = 0
    stops: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.events.append(text)
        del self.events[:-8]


class Demo:
    """Builds and runs the demo; the CLI renders :meth:`snapshot` as a dashboard."""

    def __init__(self, settings: DemoSettings, provision: Provision) -> None:
        self.settings = settings
        self.provision = provision  # creates the demo site (chargectl.provisioner.local)
        self.rng = random.Random(settings.seed)
        self.clock = ScaledClock(settings.speed)
        self._tmp: str | None = None
        if settings.state_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="chargectl-demo-")
            base = Path(self._tmp)
        else:
            base = settings.state_dir
        self.config = Config(
            backend="local",
            project="chargectl-demo",
            state_dir=base / "state",
            config_dir=base / "config",
            sections={
                "run": {
                    "site_id": SITE,
                    "site_name": "Demo car park",
                    "health": settings.console_port is not None,
                }
            },
        )
        self.console_port = console_port(settings.console_port) if settings.console_port is not None else None
        self.console_url = f"http://127.0.0.1:{self.console_port}/" if self.console_port is not None else None
        profiles = build_profiles(settings.plugs, "mix", seed=settings.seed)
        self.fleet = SimFleet(profiles, clock=self.clock, loads="idle")
        self.vehicle_of_plug = {p.mac: ("ev" if i % 2 == 0 else "ebike") for i, p in enumerate(profiles)}
        n_users = settings.users or settings.plugs + 2
        self.drivers = [
            Driver(f"driver-{i + 1:02d}", "ev" if i % 2 == 0 else "ebike") for i in range(n_users)
        ]
        self.stats = DemoStats()
        self.system: AllInOne | None = None
        self.ledger: Ledger | None = None
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        await self.fleet.start()
        try:
            agent = AgentSettings(
                site_id=SITE,
                poll_interval_s=30.0,
                flush_interval_s=60.0,
                discovery=False,
                plugs=[PlugAddress(p.host, p.port) for p in self.fleet.plugs],
                state_dir=self.config.state_dir / "agent",
                heartbeat_interval_s=60.0,
                heartbeat_max_age_s=600.0,
                max_backoff_s=300.0,
            )
            hub = HubSettings(
                tick_interval_s=10.0,
                request_poll_s=10.0,
                checkpoint_interval_s=600.0,
                plug_state_min_interval_s=30.0,
                balance_refresh_s=60.0,
                command_lifetime_s=600.0,
                health_port=self.console_port or 0,
                plugs={mac: v for mac, v in self.vehicle_of_plug.items()},
                plug_classes={"ev": dict(_DEMO_CLASS), "ebike": dict(_DEMO_CLASS)},
                tariff=TariffSettings(
                    price_per_kwh_minor="35",
                    session_fee_minor=50,
                    min_start_balance_minor=300,
                    idle_price_per_minute_minor="0",
                    currency="gbp",
                ),
            )
            self.system = AllInOne(
                self.config, self.provision, clock=self.clock, agent_settings=agent, hub_settings=hub
            )
            self.ledger = Ledger(self.system.store)
            tasks = [
                asyncio.create_task(self.system.serve(), name="system"),
                asyncio.create_task(self._drive(), name="drivers"),
            ]
            stop = asyncio.create_task(self._stop.wait())
            if self.settings.duration_s is not None:
                asyncio.get_running_loop().call_later(self.settings.duration_s, self._stop.set)
            done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            tasks[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[1]
            self.system.request_stop()
            await tasks[0]
            stop.cancel()
        finally:
            await self.fleet.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ the drivers

    async def _drive(self) -> None:
        while self.system is None or self.system.hub is None or self.ledger is None:
            await asyncio.sleep(0.05)
        ledger = self.ledger
        for d in self.drivers:
            self._top_up(d, 2000)
        while True:
            await self.clock.sleep(120.0)
            self._step(ledger)

    def _top_up(self, d: Driver, amount: int) -> None:
        assert self.ledger is not None
        store = self.ledger.store
        if store.get_user(d.user_id) is None:  # the hub acts only for users with an account
            store.put_user(codec.UserAccount(user_id=d.user_id, currency="gbp"))
        entry = f"demo-topup-{uuid.uuid4().hex[:12]}"
        self.ledger.post(
            entry,
            d.user_id,
            "topup",
            amount,
            "gbp",
            int(self.clock.now() * 1000),
            reference="demo",
            description="top-up (simulated card payment)",
        )
        self.stats.topups += 1
        self.stats.note(f"{d.user_id} topped up {amount / 100:.2f} GBP")

    def _step(self, ledger: Ledger) -> None:
        assert self.system is not None and self.system.hub is not None
        hub = self.system.hub
        now = self.clock.now()
        for d in self.drivers:
            if d.plug is None:
                continue
            plug = hub.plugs.get(d.plug)
            sess = plug.state.session if plug else None
            if sess is None and plug is not None and now - d.started_at > 1200:
                # finished (or rejected): unplug the vehicle and leave
                self.fleet.plug(d.plug).device.set_load(profile="idle")
                d.plug = None
                continue
            if sess is not None and d.stop_after_s is not None and now - d.started_at > d.stop_after_s:
                self._request(d, codec.ChargeRequest.ACTION_STOP)
                self.stats.stops += 1
                self.stats.note(f"{d.user_id} stopped early on {d.plug}")
                d.stop_after_s = None
        free = [
            mac
            for mac, p in hub.plugs.items()
            if p.state.status is Status.AVAILABLE and not any(d.plug == mac for d in self.drivers)
        ]
        idle = [d for d in self.drivers if d.plug is None]
        self.rng.shuffle(free)
        self.rng.shuffle(idle)
        for mac in free:
            if not idle or self.rng.random() > 0.5:
                continue
            d = idle.pop()
            if ledger.balance(d.user_id, "gbp") < 500:
                self._top_up(d, 1500)
            d.plug = mac
            d.started_at = now
            d.stop_after_s = self.rng.choice([None, None, None, 3600.0])
            self.fleet.plug(mac).device.set_load(profile=self.vehicle_of_plug[mac])
            self._request(d, codec.ChargeRequest.ACTION_START)
            self.stats.requests += 1
            self.stats.note(f"{d.user_id} plugged an {self.vehicle_of_plug[mac]} into {mac}")

    def _request(self, d: Driver, action: int) -> None:
        assert self.system is not None and d.plug is not None
        rid = f"demo-{uuid.uuid4().hex[:12]}"
        d.request_id = rid
        submit_request(self.system.store, d.user_id, d.plug, action, int(self.clock.now() * 1000), rid)

    # ------------------------------------------------------------------ what the dashboard shows

    def snapshot(self) -> dict[str, Any]:
        """Plugs (state, power, session energy and cost), recent sessions, balances, totals."""
        out: dict[str, Any] = {
            "console_url": self.console_url,
            "sim_time": self.clock.now(),
            "speed": self.settings.speed,
            "plugs": [],
            "sessions": [],
            "balances": {},
            "events": list(self.stats.events),
        }
        if self.system is None or self.system.hub is None or self.ledger is None:
            return out
        hub = self.system.hub
        for mac, p in sorted(hub.plugs.items()):
            s = p.state
            sess = s.session
            out["plugs"].append(
                {
                    "mac": mac,
                    "vehicle": self.vehicle_of_plug.get(mac, ""),
                    "state": str(s.status),
                    "power_w": s.power_w,
                    "user": sess.user_id if sess else "",
                    "energy_kwh": sess.energy_mwh / 1e6 if sess else 0.0,
                    "cost_minor": sess.cost().total_minor if sess else 0,
                }
            )
        for doc in self.system.store.list_sessions(limit=8):
            out["sessions"].append(
                {
                    "session_id": doc.session_id,
                    "user": doc.user_id,
                    "plug": doc.plug_mac,
                    "status": codec.ChargeSession.Status.Name(doc.status).removeprefix("STATUS_"),
                    "energy_kwh": doc.energy_mwh / 1e6,
                    "cost_minor": doc.cost.amount_minor,
                    "stop_reason": doc.stop_reason,
                }
            )
        out["balances"] = {d.user_id: self.ledger.balance(d.user_id, "gbp") for d in self.drivers}
        return out

    def summary(self) -> dict[str, Any]:
        """Totals for ``--json`` and tests: sessions, billed amounts, and the ledger check."""
        from chargectl.services.wiring import open_store

        store = open_store(self.config)
        try:
            return self._summary(store)
        finally:
            store.close()

    def _summary(self, store: Any) -> dict[str, Any]:
        ledger = Ledger(store)
        sessions = store.list_sessions(limit=100_000)
        completed = [s for s in sessions if s.status == codec.ChargeSession.STATUS_COMPLETED]
        entries = store.ledger_entries()
        debits = [e for e in entries if e.kind == codec.LedgerEntry.KIND_SESSION_DEBIT]
        return {
            "requests": self.stats.requests,
            "sessions": len(sessions),
            "completed": len(completed),
            "energy_kwh": sum(s.energy_mwh for s in completed) / 1e6,
            "billed_minor": sum(s.cost.amount_minor for s in completed),
            "debited_minor": -sum(e.amount.amount_minor for e in debits),
            "debits": len(debits),
            "topups": self.stats.topups,
            "balances_minor": {d.user_id: ledger.balance(d.user_id, "gbp") for d in self.drivers},
            "ledger_total_minor": sum(e.amount.amount_minor for e in entries),
        }
