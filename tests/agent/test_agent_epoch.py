"""The agent instance epoch: made with the state directory, in every batch, and what the hub does with it.

The hub test runs a real hub (SQLite store) and real agents against the Pub/Sub emulator and the
Shelly simulator: a replacement Pi (fresh state directory, same site bundle) numbers its batches from
1 again and is accepted at once; replays of either Pi's batches are dropped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from chargectl.common import codec
from chargectl.common.clock import ManualClock, SystemClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.topics import TELEMETRY_TOPIC
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.agent import Agent, AgentSettings, PlugAddress
from chargectl.services.agent.shelly_plugs import shelly_connector
from chargectl.shelly.sim import SimFleet

SITE = "carpark-1"


async def wait_until(cond: Callable[[], bool], what: str, limit_s: float = 90.0) -> None:
    """Poll ``cond``; ``limit_s`` only stops a broken test from hanging, it is not what is tested."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def agent_for(state: Path, fleet: SimFleet, bus: object, key: SigningKey) -> Agent:
    clock = SystemClock()
    s = AgentSettings(
        site_id=SITE,
        plugs=[PlugAddress(p.host, p.port) for p in fleet.plugs],
        discovery=False,
        state_dir=state,
        poll_interval_s=0.1,
        flush_interval_s=0.3,
        publish_timeout_s=5.0,
        heartbeat_interval_s=0.2,
        ensure_resources=False,
    )
    connector = shelly_connector(password=None, user="admin", timeout_s=2.0, clock=clock)
    return Agent(s, bus, key, Keyring(), connector, clock=clock)  # type: ignore[arg-type]


async def test_epoch_is_kept_with_the_state_dir_and_in_every_batch_spooled_or_not(tmp_path: Path) -> None:
    fleet = SimFleet.build(2, "2", profile="ev", clock=ManualClock(1_767_225_600.0), seed=3)
    await fleet.start()
    bus = MemoryBus()
    key = SigningKey.generate()
    ring = Keyring()
    ring.add_public(key.public_bytes, SITE)
    got: list[codec.Batch] = []
    await bus.ensure_topic(TELEMETRY_TOPIC)
    await bus.ensure_subscription("hub-0", TELEMETRY_TOPIC)

    async def handler(msg: BusMessage) -> bool:
        got.append(codec.unpack_telemetry(msg.data, ring))
        return True

    await bus.subscribe("hub-0", handler)
    try:
        a = agent_for(tmp_path / "a", fleet, bus, key)
        epoch_a = a.epoch
        bus.set_offline(True)
        await a.run_once()  # spooled under epoch a
        await a.aclose()
        again = agent_for(tmp_path / "a", fleet, bus, key)  # the same Pi restarting
        assert again.epoch == epoch_a and again.health().epoch == epoch_a
        bus.set_offline(False)
        await again.run_once()  # replays the spooled batch, then its own
        await again.aclose()
        b = agent_for(tmp_path / "b", fleet, bus, key)  # a replacement Pi
        assert b.epoch not in (0, epoch_a)
        await b.run_once()
        await b.aclose()
        await wait_until(lambda: len(got) == 3, "three batches")
    finally:
        await bus.close()
        await fleet.stop()
    assert [(x.epoch, x.batch_seq) for x in got] == [(epoch_a, 1), (epoch_a, 2), (b.epoch, 1)]


async def test_a_lost_sequence_starts_a_new_epoch(tmp_path: Path) -> None:
    fleet = SimFleet.build(1, "2", profile="ev", clock=ManualClock(1_767_225_600.0), seed=3)
    await fleet.start()
    try:
        key = SigningKey.generate()
        a = agent_for(tmp_path / "a", fleet, MemoryBus(), key)
        await a.run_once()
        await a.aclose()
        (tmp_path / "a" / "batch_seq").write_bytes(b"\xff\xfe garbage")
        b = agent_for(tmp_path / "a", fleet, MemoryBus(), key)
        # A new epoch; numbering resumes after what is still spooled (that batch keeps its old epoch).
        assert b.epoch != a.epoch and b.seq.last == 1 == len(b.spool)
        assert (tmp_path / "a" / "batch_seq.corrupt-1").exists()
        await b.aclose()
    finally:
        await fleet.stop()


@pytest.mark.integration
async def test_a_replacement_pi_is_accepted_at_once_and_replays_of_either_are_dropped(
    pubsub_env: object, tmp_path: Path
) -> None:
    from chargectl.services.adapters.pubsub_bus import PubSubBus
    from chargectl.services.adapters.sqlite_store import SqliteStore
    from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
    from chargectl.services.hub.service import Hub, HubPorts
    from chargectl.services.hub.settings import HubSettings

    fleet = SimFleet.build(2, "2", profile="ev", clock=ManualClock(1_767_225_600.0), seed=13)
    await fleet.start()
    bus = PubSubBus(f"epoch-{uuid.uuid4().hex[:8]}", publish_timeout_s=5)
    agent_key, command_key = SigningKey.generate(), SigningKey.generate()
    store = SqliteStore(tmp_path / "hub.db")
    store.put_site(
        codec.Site(
            site_id=SITE,
            status=codec.Site.STATUS_ACTIVE,
            agent_keys=[codec.PublicKey(key_id=agent_key.key_id, public_key=agent_key.public_bytes)],
            tariff=codec.Tariff(
                tariff_id="t1", currency="gbp", price_per_kwh_minor=30, min_start_balance_minor=100
            ),
        )
    )
    ts = SqliteTimeSeries(tmp_path / "ts.db")
    hub = Hub(
        HubSettings(plug_state_min_interval_s=0, checkpoint_interval_s=3600),
        HubPorts(bus, store, ts, lambda site, now_ms: command_key),
        SystemClock(),
    )
    # A tap on the telemetry topic keeps every message as sent, to replay later.
    await bus.ensure_topic(TELEMETRY_TOPIC)
    await bus.ensure_subscription("tap", TELEMETRY_TOPIC)
    tapped: list[BusMessage] = []

    async def tap(msg: BusMessage) -> bool:
        tapped.append(msg)
        return True

    tap_handle = await bus.subscribe("tap", tap)
    hub_task = asyncio.create_task(hub.serve(health=False))
    ring = Keyring()
    ring.add_public(agent_key.public_bytes, SITE)

    def sent_by(epoch: int) -> list[BusMessage]:
        return [
            m
            for m in tapped
            if m.attributes.get("schema") == codec.SCHEMA_TELEMETRY
            and codec.unpack_telemetry(m.data, ring).epoch == epoch
        ]

    def accepted() -> float:
        return hub.metrics.value("batches_total")

    def duplicates() -> float:
        return hub.metrics.value("skipped_total", reason="duplicate")

    try:
        await wait_until(lambda: hub._subscription is not None, "the hub subscribed")
        old = agent_for(tmp_path / "old-pi", fleet, bus, agent_key)
        task = asyncio.create_task(old.serve())
        await wait_until(lambda: len(sent_by(old.epoch)) >= 4, "four batches from the old Pi")
        old.stop()
        await asyncio.wait_for(task, 60)
        old_seq = old.health().batch_seq
        await wait_until(lambda: accepted() >= old_seq, "the hub to take the old Pi's batches")
        assert duplicates() == 0

        new = agent_for(tmp_path / "new-pi", fleet, bus, agent_key)  # a fresh card, the same bundle
        task = asyncio.create_task(new.serve())
        await wait_until(lambda: len(sent_by(new.epoch)) >= 3, "three batches from the new Pi")
        new.stop()
        await asyncio.wait_for(task, 60)
        new_seq = new.health().batch_seq
        # It really restarted below the old Pi's numbers (how many it sent before the stop depends on
        # the machine's speed: the first is what counts) ...
        assert min(codec.unpack_telemetry(m.data, ring).batch_seq for m in sent_by(new.epoch)) == 1 < old_seq
        await wait_until(lambda: accepted() >= old_seq + new_seq, "the hub to take the new Pi's batches")
        assert accepted() == old_seq + new_seq and duplicates() == 0  # ... and every batch was taken

        # Replays of both Pis' batches (a redelivery, an attacker re-sending captured messages).
        replays = [*sent_by(old.epoch), *sent_by(new.epoch)]
        for m in replays:
            await bus.publish(TELEMETRY_TOPIC, m.data, dict(m.attributes))
        await wait_until(lambda: duplicates() >= len(replays), "every replay to be skipped")
        assert accepted() == old_seq + new_seq and duplicates() == len(replays)
    finally:
        hub.request_stop()
        await asyncio.wait_for(hub_task, 60)
        await tap_handle.stop()
        await bus.close()
        await fleet.stop()
        store.close()
        ts.close()


async def test_corrupt_state_files_are_moved_aside_and_the_agent_starts_and_publishes(tmp_path: Path) -> None:
    fleet = SimFleet.build(1, "2", profile="ev", clock=ManualClock(1_767_225_600.0), seed=5)
    await fleet.start()
    bus = MemoryBus()
    key = SigningKey.generate()
    ring = Keyring()
    ring.add_public(key.public_bytes, SITE)
    got: list[codec.Batch] = []

    async def handler(msg: BusMessage) -> bool:
        got.append(codec.unpack_telemetry(msg.data, ring))
        return True

    state = tmp_path / "pi"
    try:
        first = agent_for(state, fleet, bus, key)
        bus.set_offline(True)
        for _ in range(3):
            await first.run_once()  # batches 1, 2, 3 spooled
        await first.aclose()
        spooled = sorted((state / "spool").glob("*.batch"))
        assert len(spooled) == 3
        spooled[1].write_bytes(spooled[1].read_bytes()[:9])  # batch 2 truncated by a power cut
        (state / "commands.journal").write_bytes(b"\xff\xfe\x00garbage\n")
        (state / "epoch").write_bytes(b"\x00" * 7)
        bus.set_offline(False)
        await bus.ensure_topic(TELEMETRY_TOPIC)
        await bus.ensure_subscription("hub-0", TELEMETRY_TOPIC)
        await bus.subscribe("hub-0", handler)
        second = agent_for(state, fleet, bus, key)
        await second.run_once()  # replays 1 and 3, sets 2 aside, publishes 4 under a new epoch
        await second.aclose()
        await wait_until(lambda: len(got) == 3, "three batches")
    finally:
        await bus.close()
        await fleet.stop()
    assert [b.batch_seq for b in got] == [1, 3, 4]
    assert got[0].epoch == got[1].epoch == first.epoch and got[2].epoch == second.epoch != first.epoch
    for name in ("commands.journal", "epoch", f"spool/{spooled[1].name}"):
        assert (state / f"{name}.corrupt-1").exists(), name
