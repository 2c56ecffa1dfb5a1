"""A world for hostile tests: a real ``Hub`` on the memory bus and SQLite, with sites whose agents the
test plays (each with its own signing key), plugs that meter what they are told, users and money."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chargectl.common import codec
from chargectl.common.clock import ManualClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.common.topics import DEAD_LETTER_TOPIC, command_topic
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.hub.stops import StopJournal
from chargectl.services.payments.ledger import Ledger

START = 1_767_225_600.0


@dataclass
class SimPlug:
    mac: str
    site: str
    counter: int = 1_000_000
    uptime: int = 10_000
    relay: bool = False
    power_w: float = 0.0  # what the car draws while the relay is on


@dataclass
class SimSite:
    site_id: str
    key: SigningKey
    command_key: SigningKey
    shard: int = 0
    seq: int = 0
    commands: list[codec.Command] = field(default_factory=list)
    executed: list[codec.Command] = field(default_factory=list)


class World:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.tmp = tmp
        self.clock = ManualClock(START)
        self.store = SqliteStore(tmp / "hub.db")
        self.ledger = Ledger(self.store)
        self.sites: dict[str, SimSite] = {}
        self.plugs: dict[str, SimPlug] = {}
        self.settings = HubSettings(
            **{
                "plug_state_min_interval_s": 0,
                "checkpoint_interval_s": 3600,
                "balance_refresh_s": 5,
                **settings,
            }
        )
        self.hub: Hub | None = None
        self.dead: list[BusMessage] = []
        self.ts_path = tmp / "ts.db"
        self.stops_path = tmp / "hub-stops.log"  # the hub's local stop journal, as the services wire it

    # ---------------------------------------------------------------- set-up

    def add_site(
        self, site_id: str, shard: int = 0, currency: str = "gbp", price_per_kwh_minor: int = 30
    ) -> SimSite:
        site = SimSite(site_id, SigningKey.generate(), SigningKey.generate(), shard)
        self.sites[site_id] = site
        self.store.put_site(
            codec.Site(
                site_id=site_id,
                shard=shard,
                status=codec.Site.STATUS_ACTIVE,
                agent_keys=[codec.PublicKey(key_id=site.key.key_id, public_key=site.key.public_bytes)],
                tariff=codec.Tariff(
                    tariff_id=f"t-{site_id}",
                    currency=currency,
                    price_per_kwh_minor=price_per_kwh_minor,
                    min_start_balance_minor=100,
                ),
            )
        )
        return site

    def add_plug(self, mac: str, site_id: str) -> SimPlug:
        plug = self.plugs[mac] = SimPlug(mac, site_id)
        return plug

    def user(self, uid: str, credit_minor: int = 0, currency: str = "gbp", account: bool = True) -> None:
        if account:
            self.store.put_user(codec.UserAccount(user_id=uid, currency=currency))
        if credit_minor:
            self.ledger.post(f"topup-{uid}-{currency}", uid, "topup", credit_minor, currency, now_ms=1)

    async def start_hub(self) -> Hub:
        self.bus = MemoryBus()
        await self.bus.ensure_topic(DEAD_LETTER_TOPIC)
        await self.bus.ensure_subscription("dead", DEAD_LETTER_TOPIC)

        async def on_dead(msg: BusMessage) -> bool:
            self.dead.append(msg)
            return True

        await self.bus.subscribe("dead", on_dead)
        for site in self.sites.values():
            await self._listen(site)
        keys = {s.site_id: s.command_key for s in self.sites.values()}
        ts = SqliteTimeSeries(self.ts_path)
        self.hub = Hub(
            self.settings,
            HubPorts(
                self.bus,
                self.store,
                ts,
                lambda site, now_ms: keys[site.site_id],
                stops=StopJournal(self.stops_path),
            ),
            self.clock,
        )
        await self.hub.start()
        return self.hub

    async def _listen(self, site: SimSite) -> None:
        topic = command_topic(site.site_id)
        await self.bus.ensure_topic(topic)
        await self.bus.ensure_subscription(f"cmds-{site.site_id}", topic)
        keyring = Keyring()
        keyring.add_public(site.command_key.public_bytes, site.site_id)

        async def on_command(msg: BusMessage) -> bool:
            site.commands.append(codec.unpack_command(msg.data, keyring))
            return True

        await self.bus.subscribe(f"cmds-{site.site_id}", on_command)

    # ---------------------------------------------------------------- traffic

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def send(
        self, site_id: str, rows: list[Reading] | tuple[Reading, ...], shard_attr: str = "0"
    ) -> bool:
        """Publish one signed batch from ``site_id`` to the hub; the hub's ack."""
        assert self.hub is not None
        site = self.sites[site_id]
        site.seq += 1
        data, attrs = codec.pack_telemetry(codec.Batch(site_id, site.seq, tuple(rows)), site.key)
        ok = await self.hub.handle_message(
            BusMessage(data, {**attrs, "shard": shard_attr}, f"{site_id}-{site.seq}")
        )
        await self.settle()
        return ok

    def reading(self, plug: SimPlug, **over: Any) -> Reading:
        values: dict[str, Any] = {
            "mac": plug.mac,
            "ts_ms": self.now_ms(),
            "power_w": plug.power_w if plug.relay else 0.0,
            "energy_mwh": plug.counter,
            "relay_on": plug.relay,
            "voltage_v": 230.0,
            "uptime_s": plug.uptime,
        }
        values.update(over)
        return Reading(**values)

    def now_ms(self) -> int:
        return round(self.clock.now() * 1000)

    async def run(self, seconds: float, every_s: float = 5.0, macs: list[str] | None = None) -> None:
        """Every plug (or ``macs``) meters ``every_s`` samples for ``seconds``; each site sends its own."""
        assert self.hub is not None
        t = 0.0
        chosen = [self.plugs[m] for m in (macs or list(self.plugs))]
        while t < seconds:
            self.clock.advance(every_s)
            t += every_s
            per_site: dict[str, list[Reading]] = {}
            for p in chosen:
                drawn = p.power_w if p.relay else 0.0
                p.counter += round(drawn * every_s / 3.6)
                p.uptime += int(every_s)
                per_site.setdefault(p.site, []).append(self.reading(p))
            for site_id, rows in per_site.items():
                await self.send(site_id, rows)
            await self.hub.tick()
            await self.settle()
            self.obey()

    def obey(self) -> None:
        """Each site's agent executes the commands on its own topic for its own plugs and reports."""
        assert self.hub is not None
        for site in self.sites.values():
            while site.commands:
                cmd = site.commands.pop(0)
                site.executed.append(cmd)
                plug = self.plugs.get(cmd.plug_mac)
                if plug is None or plug.site != site.site_id:
                    continue
                plug.relay = cmd.on
                self.hub.process_outcome(
                    codec.CommandOutcome(
                        cmd.command_id, site.site_id, cmd.plug_mac, True, "executed", self.now_ms(), cmd.on
                    )
                )

    def request(self, rid: str, action: int, mac: str, user: str = "u1", age_s: float = 0.0) -> None:
        self.store.add_request(
            codec.ChargeRequest(
                request_id=rid,
                user_id=user,
                plug_mac=mac,
                action=action,  # type: ignore[arg-type]
                status=codec.ChargeRequest.STATUS_PENDING,
                created_at_ms=round((self.clock.now() - age_s) * 1000),
            )
        )

    def pending(self, rid: str, action: int, mac: str, user: str = "u1") -> codec.ChargeRequest:
        """Write a request to the store and return it as the store's listener delivers it."""
        self.request(rid, action, mac, user)
        req = self.store.get_request(rid)
        assert req is not None
        return req

    async def start_session(self, rid: str, mac: str, user: str = "u1") -> codec.ChargeRequest:
        assert self.hub is not None
        self.request(rid, codec.ChargeRequest.ACTION_START, mac, user)
        await self.hub.poll_requests()
        await self.settle()
        self.obey()
        answer = self.store.get_request(rid)
        assert answer is not None
        return answer

    async def stop_session(self, rid: str, mac: str, user: str = "u1") -> None:
        assert self.hub is not None
        self.request(rid, codec.ChargeRequest.ACTION_STOP, mac, user)
        await self.hub.poll_requests()
        await self.settle()
        self.obey()

    # ---------------------------------------------------------------- money and relays

    def balance(self, uid: str, currency: str = "gbp") -> int:
        return self.ledger.balance(uid, currency)

    def debits(self, uid: str) -> list[codec.LedgerEntry]:
        return [e for e in self.store.ledger_entries(uid) if e.kind == codec.LedgerEntry.KIND_SESSION_DEBIT]

    def all_commands(self) -> list[codec.Command]:
        return [c for s in self.sites.values() for c in s.executed + s.commands]

    def close(self) -> None:
        if self.hub is not None:
            self.hub.requests.close()  # the request threads of a hub that handled pushed requests
        self.store.close()
