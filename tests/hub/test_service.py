"""The hub service on embedded backends with synthetic, signed telemetry: requests become sessions,
sessions are billed once, and a restart from the checkpoint loses nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
from chargectl.services.payments.ledger import Ledger

SITE = "site-a"
MAC = "AABBCCDDEEFF"
START = 1_767_225_600.0


class Rig:
    """A site's agent played by the test: signs batches, reads commands, answers them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = ManualClock(START)
        self.agent_key = SigningKey.generate()
        self.command_key = SigningKey.generate()
        self.store = SqliteStore(tmp / "hub.db")
        self.store.put_site(
            codec.Site(
                site_id=SITE,
                status=codec.Site.STATUS_ACTIVE,
                agent_keys=[
                    codec.PublicKey(key_id=self.agent_key.key_id, public_key=self.agent_key.public_bytes)
                ],
                tariff=codec.Tariff(
                    tariff_id="t1", currency="gbp", price_per_kwh_minor=30, min_start_balance_minor=100
                ),
            )
        )
        for uid in ("u1", "u2"):
            self.store.put_user(codec.UserAccount(user_id=uid, currency="gbp"))
        self.seq = 0
        self.counter = 1_000_000
        self.relay = False
        self.commands: list[codec.Command] = []
        self.executed: list[codec.Command] = []
        self.cmd_keyring = Keyring()
        self.cmd_keyring.add_public(self.command_key.public_bytes, SITE)
        self.hub: Hub | None = None

    async def start_hub(self, **settings_overrides: float) -> Hub:
        self.bus = MemoryBus()
        await self.bus.ensure_topic(command_topic(SITE))
        await self.bus.ensure_subscription("cmds", command_topic(SITE))
        await self.bus.ensure_topic(DEAD_LETTER_TOPIC)
        await self.bus.ensure_subscription("dead", DEAD_LETTER_TOPIC)
        self.dead: list[BusMessage] = []

        async def on_command(msg: BusMessage) -> bool:
            self.commands.append(codec.unpack_command(msg.data, self.cmd_keyring))
            return True

        async def on_dead(msg: BusMessage) -> bool:
            self.dead.append(msg)
            return True

        await self.bus.subscribe("cmds", on_command)
        await self.bus.subscribe("dead", on_dead)
        settings = HubSettings(
            **{
                "plug_state_min_interval_s": 0,
                "checkpoint_interval_s": 3600,
                "balance_refresh_s": 5,
                **settings_overrides,
            }
        )
        ts = SqliteTimeSeries(self.tmp / "ts.db")
        self.hub = Hub(
            settings, HubPorts(self.bus, self.store, ts, lambda site, now_ms: self.command_key), self.clock
        )
        await self.hub.start()
        return self.hub

    async def settle(self) -> None:
        import asyncio

        for _ in range(20):
            await asyncio.sleep(0)

    async def readings(self, seconds: float, power_w: float, every_s: float = 5.0) -> None:
        """Play ``seconds`` of samples at ``power_w`` (relay as last commanded), one batch per 30 s."""
        assert self.hub is not None
        rows: list[Reading] = []
        t = 0.0
        while t < seconds:
            self.clock.advance(every_s)
            t += every_s
            drawn = power_w if self.relay else 0.0
            self.counter += round(drawn * every_s / 3.6)  # W * s -> mWh
            rows.append(Reading(MAC, round(self.clock.now() * 1000), drawn, self.counter, self.relay, 230.0))
            if len(rows) == 6:
                await self.publish(rows)
                rows = []
            await self.hub.tick()
            await self.settle()
            self.obey()
        if rows:
            await self.publish(rows)

    async def publish(self, rows: list[Reading]) -> bool:
        assert self.hub is not None
        self.seq += 1
        data, attrs = codec.pack_telemetry(codec.Batch(SITE, self.seq, tuple(rows)), self.agent_key)
        return await self.hub.handle_message(BusMessage(data, {**attrs, "shard": "0"}, f"m{self.seq}"))

    def obey(self) -> None:
        """Execute new commands like the agent would, and report each result."""
        while self.commands:
            cmd = self.commands.pop(0)
            self.executed.append(cmd)
            self.relay = cmd.on
            self.last_command = cmd
            assert self.hub is not None
            self.hub.process_outcome(
                codec.CommandOutcome(
                    cmd.command_id,
                    SITE,
                    cmd.plug_mac,
                    True,
                    "executed",
                    round(self.clock.now() * 1000),
                    cmd.on,
                )
            )

    def request(self, rid: str, action: int, user: str = "u1") -> None:
        self.store.add_request(
            codec.ChargeRequest(
                request_id=rid,
                user_id=user,
                plug_mac=MAC,
                action=action,  # type: ignore[arg-type]
                status=codec.ChargeRequest.STATUS_PENDING,
                created_at_ms=round(self.clock.now() * 1000),
            )
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.store.close()


async def test_request_to_billed_session(rig: Rig) -> None:
    hub = await rig.start_hub()
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    hub.credit_arrived("u1")
    await rig.readings(30, 0)  # the plug reports: AVAILABLE
    assert str(hub.plugs[MAC].state.status) == "AVAILABLE"

    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    req = rig.store.get_request("r1")
    assert req is not None and req.status == codec.ChargeRequest.STATUS_ACCEPTED
    assert req.session_id.startswith("sess-") and "r1" not in req.session_id  # made by the hub
    assert rig.commands and rig.commands[0].on and rig.commands[0].auto_off_s == 300
    rig.obey()

    await rig.readings(2000, 1800.0)  # 2000 s at 1.8 kW = 1 kWh (2500 mWh per 5 s sample)
    assert str(hub.plugs[MAC].state.status) == "CHARGING"
    assert rig.relay is True

    await rig.readings(900, 0.0)  # car full: no draw -> completion after complete_after_s
    await rig.readings(60, 0.0)
    sessions = rig.store.list_sessions()
    assert len(sessions) == 1
    s = sessions[0]
    assert s.status == codec.ChargeSession.STATUS_COMPLETED
    assert s.energy_mwh == 1_000_000  # hand-checked: 400 samples x 2500 mWh
    assert s.cost.amount_minor == 30 and s.cost.currency == "gbp"  # 1 kWh x 30p
    assert s.stop_reason == "EVDisconnected"
    assert rig.relay is False
    assert Ledger(rig.store).balance("u1") == 1000 - 30
    assert [p.entry_id for p in Ledger(rig.store).history("u1")] == ["evt_topup", req.session_id]
    state = rig.store.get_plug_state(MAC)
    assert state is not None and state.status == 1  # AVAILABLE mirrored
    await hub.stop()


async def test_duplicate_and_forged_telemetry(rig: Rig) -> None:
    hub = await rig.start_hub()
    await rig.readings(30, 0)
    counter_before = hub.plugs[MAC].state.counter_mwh
    # the same batch again (redelivery) is acked and changes nothing
    rig.seq -= 1
    rig.counter += 999
    ok = await rig.publish([Reading(MAC, round(rig.clock.now() * 1000), 0.0, rig.counter, False)])
    assert ok is True and hub.plugs[MAC].state.counter_mwh == counter_before
    assert hub.metrics.value("skipped_total", reason="duplicate") == 1
    # a batch signed by a stranger is dead-lettered with its reason, and the hub carries on
    stranger = SigningKey.generate()
    data, attrs = codec.pack_telemetry(codec.Batch(SITE, 99, ()), stranger)
    assert await hub.handle_message(BusMessage(data, {**attrs, "shard": "0"}, "x1")) is True
    assert await hub.handle_message(
        BusMessage(b"garbage", {"schema": codec.SCHEMA_TELEMETRY, "shard": "0"}, "x2")
    )
    await rig.settle()
    assert [d.attributes["reason"] for d in rig.dead] == ["unverified", "malformed"]
    assert hub.metrics.value("dead_lettered_total", reason="unverified") == 1
    await rig.readings(10, 0)
    assert hub.plugs[MAC].state.counter_mwh == rig.counter
    await hub.stop()


async def test_restart_from_checkpoint_bills_once(rig: Rig) -> None:
    hub = await rig.start_hub()
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    hub.credit_arrived("u1")
    await rig.readings(30, 0)
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(1000, 1800.0)  # 0.5 kWh
    hub.checkpoint()
    await rig.readings(1000, 1800.0)  # another 0.5 kWh after the last checkpoint, then a crash
    hub2_rig_counter = rig.counter
    rig.hub = None
    hub2 = await rig.start_hub()  # a new process: checkpoint + store
    assert hub2.plugs[MAC].state.session is not None
    await rig.readings(30, 1800.0)  # 6 samples x 2500 mWh
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub2.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(30, 0)
    sessions = rig.store.list_sessions()
    assert len(sessions) == 1 and sessions[0].status == codec.ChargeSession.STATUS_COMPLETED
    # every mWh the plug counted while the session was open is billed: nothing lost across the crash
    assert sessions[0].energy_mwh == hub2_rig_counter + 6 * 2500 - 1_000_000 == 1_015_000
    assert sessions[0].stop_reason == "Local"
    debits = [p for p in Ledger(rig.store).history("u1") if p.kind == "session_debit"]
    assert len(debits) == 1 and debits[0].amount_minor == -sessions[0].cost.amount_minor
    await hub2.stop()


async def _start_session(rig: Rig, hub: Hub, rid: str = "r1") -> None:
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    hub.credit_arrived("u1")
    rig.request(rid, codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()


@pytest.mark.parametrize("checkpointed", [True, False], ids=["older-checkpoint", "no-checkpoint"])
async def test_session_started_after_the_last_checkpoint_is_resumed_exactly(
    rig: Rig, checkpointed: bool
) -> None:
    hub = await rig.start_hub()
    await rig.readings(30, 0)
    if checkpointed:
        hub.checkpoint()  # the last checkpoint predates the session
    await _start_session(rig, hub)
    await rig.readings(1000, 1800.0)  # 200 samples x 2500 mWh, then the hub dies (no stop, no checkpoint)
    executed_before = len(rig.executed)
    hub2 = await rig.start_hub()
    session = hub2.plugs[MAC].state.session
    started = rig.store.get_request("r1")
    assert started is not None and started.session_id
    assert session is not None and session.session_id == started.session_id
    assert session.start_counter_mwh == 1_000_000
    await rig.readings(100, 1800.0)  # 20 more samples
    after_restart = rig.executed[executed_before:]
    assert after_restart and all(c.on for c in after_restart)  # "on" re-sent; never cut off by the restart
    assert rig.relay is True and str(hub2.plugs[MAC].state.status) == "CHARGING"
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub2.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(30, 0)
    (s,) = rig.store.list_sessions()
    assert s.status == codec.ChargeSession.STATUS_COMPLETED
    assert s.energy_mwh == 220 * 2500  # every sample of the session, before and after the crash
    assert s.start_counter_mwh == 1_000_000
    debits = [p for p in Ledger(rig.store).history("u1") if p.kind == "session_debit"]
    assert [d.amount_minor for d in debits] == [-s.cost.amount_minor]


async def test_session_finished_after_the_last_checkpoint_is_not_billed_again(rig: Rig) -> None:
    hub = await rig.start_hub()
    await rig.readings(30, 0)
    await _start_session(rig, hub)
    await rig.readings(300, 1800.0)
    hub.checkpoint()  # the checkpoint still has the session open
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(30, 0)
    (billed,) = rig.store.list_sessions()
    assert billed.status == codec.ChargeSession.STATUS_COMPLETED
    hub2 = await rig.start_hub()  # crash and restart from the older checkpoint
    await rig.settle()
    rig.obey()
    await rig.readings(30, 0)
    assert hub2.plugs[MAC].state.session is None and rig.relay is False
    (again,) = rig.store.list_sessions()
    assert again == billed  # the stored session was not rewritten
    debits = [p for p in Ledger(rig.store).history("u1") if p.kind == "session_debit"]
    assert [d.amount_minor for d in debits] == [-billed.cost.amount_minor]
