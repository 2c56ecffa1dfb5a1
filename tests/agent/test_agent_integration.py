"""The agent against the real simulator (HTTP) and the real Pub/Sub emulator."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from chargectl.common.clock import ManualClock, SystemClock
from chargectl.common.codec import (
    SCHEMA_COMMAND,
    SCHEMA_TELEMETRY,
    Batch,
    Command,
    CommandOutcome,
    encode_command,
    pack_command,
    unpack_telemetry,
)
from chargectl.common.errors import TransportError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.common.topics import TELEMETRY_TOPIC, command_topic
from chargectl.gen.v1 import commands_pb2
from chargectl.services.adapters.bus import Bus, BusMessage, SubscriptionHandle
from chargectl.services.adapters.pubsub_bus import PubSubBus
from chargectl.services.agent import Agent, AgentSettings, PlugAddress
from chargectl.services.agent.durable import Spool
from chargectl.services.agent.shelly_plugs import shelly_connector
from chargectl.shelly.sim import SimFleet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import backends  # noqa: E402

SITE = "carpark-1"


async def wait_until(cond: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Poll ``cond``; ``limit_s`` only stops a broken test from hanging, it is not what is tested."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


class Collector:
    """The hub's side of the telemetry topic: keeps every message in arrival order."""

    def __init__(self, bus: Bus, agent_key: SigningKey) -> None:
        self.bus = bus
        self.keyring = Keyring()
        self.keyring.add_public(agent_key.public_bytes, SITE)
        self.messages: list[BusMessage] = []
        self.handle: SubscriptionHandle | None = None

    async def start(self, subscription: str) -> None:
        await self.bus.ensure_topic(TELEMETRY_TOPIC)
        await self.bus.ensure_subscription(subscription, TELEMETRY_TOPIC)

        async def handler(msg: BusMessage) -> bool:
            self.messages.append(msg)
            return True

        # One message in flight at a time, so arrival order is delivery order.
        self.handle = await self.bus.subscribe(subscription, handler, max_messages=1)

    async def stop(self) -> None:
        if self.handle is not None:
            await self.handle.stop()

    def batches(self) -> list[Batch]:
        return [
            unpack_telemetry(m.data, self.keyring)
            for m in self.messages
            if m.attributes.get("schema") == SCHEMA_TELEMETRY
        ]

    def outcomes(self) -> list[CommandOutcome]:
        """Command results in arrival order: they ride in the telemetry batches."""
        return [o for b in self.batches() for o in b.results]


def settings(tmp: Path, fleet: SimFleet, **kw: object) -> AgentSettings:
    base: dict[str, object] = {
        "site_id": SITE,
        "shard": 0,
        "plugs": [PlugAddress(p.host, p.port) for p in fleet.plugs],
        "discovery": False,
        "state_dir": tmp / "state",
        "poll_interval_s": 0.2,
        "flush_interval_s": 1.0,
        "request_timeout_s": 2.0,
        "publish_timeout_s": 1.0,
        "heartbeat_interval_s": 0.5,
        "max_backoff_s": 1.0,
    }
    base.update(kw)
    return AgentSettings(**base)  # type: ignore[arg-type]


def make_agent(s: AgentSettings, bus: Bus, agent_key: SigningKey, hub_key: SigningKey) -> Agent:
    keyring = Keyring()
    keyring.add_public(hub_key.public_bytes, SITE)
    clock = SystemClock()
    connector = shelly_connector(password=None, user="admin", timeout_s=s.request_timeout_s, clock=clock)
    return Agent(s, bus, agent_key, keyring, connector, clock=clock)


@contextlib.asynccontextmanager
async def serving(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.serve())
    try:
        yield task
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def fleet20() -> AsyncIterator[SimFleet]:
    # The fleet's clock stands still, so each plug's truth is fixed while the agent polls it.
    fleet = SimFleet.build(20, "mix", profile="mix", clock=ManualClock(1_767_225_600.0), seed=4)
    await fleet.start()
    try:
        for i, plug in enumerate(fleet.plugs):
            if i % 2 == 0 and not plug.profile.metering_only:
                plug.device.switch(True)
        yield fleet
    finally:
        await fleet.stop()


async def test_twenty_plugs_readings_match_the_simulator(
    pubsub_env: backends.Server, fleet20: SimFleet, tmp_path: Path
) -> None:
    bus = PubSubBus(f"agent-{uuid.uuid4().hex[:8]}", publish_timeout_s=5)
    agent_key, hub_key = SigningKey.generate(), SigningKey.generate()
    collector = Collector(bus, agent_key)
    await collector.start("hub-0")
    agent = make_agent(settings(tmp_path, fleet20), bus, agent_key, hub_key)
    started_ms = int(time.time() * 1000)
    try:
        async with serving(agent):

            def enough() -> bool:
                counts: dict[str, int] = {}
                for b in collector.batches():
                    for r in b.readings:
                        counts[r.mac] = counts.get(r.mac, 0) + 1
                return len(counts) == 20 and min(counts.values()) >= 3

            await wait_until(enough, "three readings from each of 20 plugs")
        ended_ms = int(time.time() * 1000)
    finally:
        await collector.stop()
        await bus.close()
    truth = {p.mac: p.truth() for p in fleet20.plugs}
    readings: dict[str, list[Reading]] = {}
    for msg, batch in zip(collector.messages, collector.batches(), strict=True):
        assert msg.attributes["site_id"] == SITE and msg.attributes["shard"] == "0"
        assert msg.attributes["batch_seq"] == str(batch.batch_seq)
        for r in batch.readings:
            readings.setdefault(r.mac, []).append(r)
    assert set(readings) == set(truth)
    on = 0
    for mac, rows in readings.items():
        t = truth[mac]
        on += t.relay_on
        for r in rows:
            assert r.relay_on == t.relay_on, mac
            assert abs(r.power_w - t.power_w) <= 0.05, (mac, r.power_w, t.power_w)
            assert r.energy_mwh == t.energy_mwh, mac
            assert started_ms <= r.ts_ms <= ended_ms
        times = [r.ts_ms for r in rows]
        assert times == sorted(times) and len(set(times)) == len(times)
    assert 0 < on < 20
    seqs = [b.batch_seq for b in collector.batches()]
    assert seqs == list(range(1, len(seqs) + 1))


class GatedBus:
    """Fault injection on our own seam: while ``held``, publishing fails as if the link were down.

    Used only to close the moment between recreating the topic and its subscription after the
    emulator restarts (a batch published in that moment would reach a topic with no subscriber).
    """

    def __init__(self, inner: Bus) -> None:
        self.inner = inner
        self.held = False

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str] | None = None) -> str:
        if self.held:
            raise TransportError("held by the test")
        return await self.inner.publish(topic, data, attributes)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
def own_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[backends.Server]]:
    """A Pub/Sub emulator this test may stop and restart (the list holds the current one)."""
    reason = backends.missing("pubsub")
    if reason:
        pytest.skip(reason)
    servers = [backends.start_pubsub(tmp_path / "pubsub")]
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", servers[0].host)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def spooled_readings(state: Path, agent_key: SigningKey) -> dict[int, list[Reading]]:
    keyring = Keyring()
    keyring.add_public(agent_key.public_bytes, SITE)
    spool = Spool(state / "spool", 1 << 30)
    return {seq: list(unpack_telemetry(spool.get(seq).data, keyring).readings) for seq in spool.seqs()}


async def test_outage_and_agent_restart_lose_nothing_and_duplicate_nothing(
    own_emulator: list[backends.Server], tmp_path: Path
) -> None:
    fleet = SimFleet.build(3, "2", profile="ev", clock=ManualClock(1_767_225_600.0), seed=9)
    await fleet.start()
    project = f"outage-{uuid.uuid4().hex[:8]}"
    agent_key, hub_key = SigningKey.generate(), SigningKey.generate()
    bus = PubSubBus(project, publish_timeout_s=1)
    gate = GatedBus(bus)
    collector = Collector(bus, agent_key)
    s = settings(tmp_path, fleet, ensure_resources=False)
    try:
        await collector.start("hub-0")
        agent = make_agent(s, gate, agent_key, hub_key)  # type: ignore[arg-type]
        task = asyncio.create_task(agent.serve())
        await wait_until(lambda: len(collector.batches()) >= 2, "two batches before the outage")

        # Outage: the emulator dies while the agent runs, for well over two flush intervals.
        own_emulator[0].stop()
        await wait_until(lambda: agent.health().spooled_batches >= 3, "three spooled batches")
        assert not agent.health().link_up

        # The agent restarts in the middle of the outage; the new process finds the spool.
        agent.stop()
        await asyncio.wait_for(task, 30)
        last_seq_before = agent.health().batch_seq
        spooled_at_restart = agent.health().spooled_batches
        agent = make_agent(s, gate, agent_key, hub_key)  # type: ignore[arg-type]
        assert agent.health().spooled_batches == spooled_at_restart
        task = asyncio.create_task(agent.serve())
        await wait_until(
            lambda: agent.health().spooled_batches >= spooled_at_restart + 2, "more batches spooled"
        )

        # The emulator comes back on the same port, empty: recreate the topic and subscription.
        gate.held = True
        port = own_emulator[0].port
        own_emulator.append(backends.start_pubsub(tmp_path / "pubsub2", port=port))
        pre_outage = list(collector.messages)
        await collector.stop()
        collector.messages.clear()
        await collector.start("hub-0")
        outage = spooled_readings(s.state_path, agent_key)
        gate.held = False

        await wait_until(lambda: agent.health().spooled_batches == 0, "the spool to drain", 90)
        newest = agent.health().batch_seq
        await wait_until(lambda: any(b.batch_seq >= newest for b in collector.batches()), "the newest batch")
        agent.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await collector.stop()
        await bus.close()
        await fleet.stop()

    after = collector.batches()
    seqs = [b.batch_seq for b in after]
    first_spooled = min(outage)
    # Replayed oldest first, then the new ones: every seq from the outage on, in order, once each.
    assert seqs == list(range(first_spooled, seqs[-1] + 1))
    assert first_spooled <= last_seq_before < seqs[-1]
    # Every reading taken during the outage arrived exactly once, in its batch.
    by_seq = {b.batch_seq: b for b in after}
    for seq, readings in outage.items():
        assert list(by_seq[seq].readings) == readings
    # Per plug, time only moves forward across the whole run, and no reading appears twice.
    before = [
        unpack_telemetry(m.data, collector.keyring)
        for m in pre_outage
        if m.attributes["schema"] == SCHEMA_TELEMETRY
    ]
    for plug in fleet.plugs:
        times = [r.ts_ms for b in [*before, *after] for r in b.readings if r.mac == plug.mac]
        assert times == sorted(times) and len(times) == len(set(times))
    assert sum(len(r) for r in outage.values()) >= 3 * 4  # the outage really spanned many polls


async def test_commands_signed_executed_and_forgeries_refused(
    pubsub_env: backends.Server, tmp_path: Path
) -> None:
    clock = ManualClock(1_767_225_600.0)
    fleet = SimFleet.build(2, "2", profile="ev", clock=clock, seed=11)
    await fleet.start()
    bus = PubSubBus(f"cmd-{uuid.uuid4().hex[:8]}", publish_timeout_s=5)
    agent_key, hub_key = SigningKey.generate(), SigningKey.generate()
    collector = Collector(bus, agent_key)
    await collector.start("hub-0")
    agent = make_agent(settings(tmp_path, fleet), bus, agent_key, hub_key)
    target, bystander = fleet.plugs
    try:
        async with serving(agent):
            await wait_until(
                lambda: agent.health().commands_subscribed and agent.health().plugs_online == 2, "agent ready"
            )

            async def send(data: bytes, n: int) -> CommandOutcome:
                await bus.publish(command_topic(SITE), data, {"site_id": SITE})
                await wait_until(lambda: len(collector.outcomes()) >= n, f"outcome #{n}")
                return collector.outcomes()[n - 1]

            now_ms = int(time.time() * 1000)
            cmd = Command("cmd-1", SITE, target.mac, True, now_ms, now_ms + 60_000, "sess-1", 120)
            good, _ = pack_command(cmd, hub_key)
            outcome = await send(good, 1)
            assert (outcome.reason, outcome.ok, outcome.relay_on, outcome.command_id) == (
                "executed",
                True,
                True,
                "cmd-1",
            )
            truth = target.truth()
            assert truth.relay_on and truth.timer_remaining_s == 120.0  # the dead-man timer is armed
            fleet.advance(121)
            assert not target.truth().relay_on  # and it fires on the plug itself

            switched = [e for p in fleet.plugs for e in p.log if "Switch.Set" in e.path]
            stranger = SigningKey.generate()
            forged = {
                # unsigned: an envelope with no signature and no key id
                "bad_signature": commands_pb2.Envelope(
                    payload=encode_command(Command("c-u", SITE, target.mac, True, now_ms, now_ms + 60_000)),
                    schema=SCHEMA_COMMAND,
                    encoding="identity",
                ).SerializeToString(),
                # wrongly signed: by a key that is not the site's command key
                "unknown_key": pack_command(
                    Command("c-w", SITE, target.mac, True, now_ms, now_ms + 60_000), stranger
                )[0],
                "expired": pack_command(
                    Command("c-e", SITE, target.mac, True, now_ms - 120_000, now_ms - 60_000), hub_key
                )[0],
                "wrong_site": pack_command(
                    Command("c-s", "other-site", bystander.mac, True, now_ms, now_ms + 60_000), hub_key
                )[0],
                "duplicate": good,
            }
            for n, (reason, data) in enumerate(forged.items(), start=2):
                outcome = await send(data, n)
                assert (outcome.reason, outcome.ok) == (reason, False), outcome
            assert [e for p in fleet.plugs for e in p.log if "Switch.Set" in e.path] == switched
            assert not target.truth().relay_on and not bystander.truth().relay_on
    finally:
        await collector.stop()
        await bus.close()
        await fleet.stop()


async def test_a_plug_that_stops_answering_is_logged_offline_once_and_back_once(
    pubsub_env: backends.Server, tmp_path: Path, agent_log: pytest.LogCaptureFixture
) -> None:
    fleet = SimFleet.build(2, "mix", profile="idle", clock=ManualClock(1_767_225_600.0), seed=5)
    await fleet.start()
    bus = PubSubBus(f"off-{uuid.uuid4().hex[:8]}", publish_timeout_s=5)
    agent = make_agent(
        settings(tmp_path, fleet, max_backoff_s=0.4), bus, SigningKey.generate(), SigningKey.generate()
    )
    quiet = fleet.plugs[0]
    try:
        async with serving(agent):
            await wait_until(lambda: agent.health().plugs_online == 2, "both plugs online")
            await quiet.inject("refuse")
            await wait_until(lambda: agent.plug_status(quiet.mac).failures >= 6, "six failed polls")
            await quiet.clear()
            await wait_until(lambda: agent.plug_status(quiet.mac).online, "the plug back online")
            polls = agent.plug_status(quiet.mac).polls
            await wait_until(lambda: agent.plug_status(quiet.mac).polls >= polls + 3, "three more polls")
    finally:
        await bus.close()
        await fleet.stop()
    about = [r for r in agent_log.records if quiet.mac in r.getMessage()]
    assert sum("is offline" in r.getMessage() for r in about) == 1
    assert sum("back online" in r.getMessage() for r in about) == 1


async def test_discovered_plug_that_moves_keeps_its_identity_and_readings(tmp_path: Path) -> None:
    from chargectl.services.adapters.memory_bus import MemoryBus
    from chargectl.services.agent.shelly_plugs import shelly_discovery
    from chargectl.shelly.simdevice import make_profile

    loopback = ["127.0.0.1"]  # mDNS on loopback only, never the real NIC
    # Other test runs on this machine may advertise plugs on loopback too: random MACs, and only
    # this test's plugs are asserted on.
    macs = ["3A" + uuid.uuid4().hex[:10].upper() for _ in range(2)]
    fleet = SimFleet(
        [make_profile(2, macs[0]), make_profile(1, macs[1])],
        clock=ManualClock(1_767_225_600.0),
        loads="ev",
        interfaces=loopback,
    )
    await fleet.start()
    bus = MemoryBus()
    agent_key = SigningKey.generate()
    collector = Collector(bus, agent_key)
    await collector.start("hub-0")
    s = settings(tmp_path, fleet, plugs=[], discovery=True, interfaces=loopback)
    keyring = Keyring()
    clock = SystemClock()
    agent = Agent(
        s,
        bus,
        agent_key,
        keyring,
        shelly_connector(password=None, user="admin", timeout_s=2.0, clock=clock),
        discovery=shelly_discovery(loopback, ["127.0.0.0/8"]),  # the simulator lives on loopback
        clock=clock,
    )
    mover = fleet.plugs[0]
    try:
        async with serving(agent):
            await wait_until(
                lambda: all(m in agent.plugs and agent.plug_status(m).online for m in macs),
                "both plugs found",
            )
            old_port = mover.port
            polls = agent.plug_status(mover.mac).polls
            await mover.move()
            assert mover.port != old_port
            await wait_until(lambda: agent.plug_status(mover.mac).port == mover.port, "the move seen")
            await wait_until(
                lambda: agent.plug_status(mover.mac).polls >= polls + 3, "polls at the new address"
            )
            assert agent.plug_status(mover.mac).host == mover.host
    finally:
        await collector.stop()
        await bus.close()
        await fleet.stop()
    batches = collector.batches()
    moved = [c for b in batches for c in b.inventory if c.kind == "moved"]
    assert [(c.mac, c.port) for c in moved] == [(mover.mac, mover.port)]
    times = [r.ts_ms for b in batches for r in b.readings if r.mac == mover.mac]
    assert len(times) >= polls + 3 and times == sorted(times)
