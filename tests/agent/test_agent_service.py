"""The Agent on the in-memory bus with in-process plugs: batches, spool and replay, restarts, logging."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_fakes import FakeSite

from chargectl.common.clock import ManualClock
from chargectl.common.codec import (
    Batch,
    Command,
    CommandOutcome,
    pack_command,
    unpack_telemetry,
)
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.topics import TELEMETRY_TOPIC
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.agent import Agent, AgentSettings, PlugAddress, check_heartbeat

SITE = "carpark-1"
MACS = ["A8032AB10001", "A8032AB10002", "A8032AB10003"]


class Harness:
    def __init__(self, tmp_path: Path, clock: ManualClock) -> None:
        self.tmp = tmp_path
        self.clock = clock
        self.bus = MemoryBus()
        self.site = FakeSite(clock)
        self.agent_key = SigningKey.generate()
        self.hub_key = SigningKey.generate()
        self.plugs = [self.site.add(mac, f"10.0.0.{i + 1}", power_w=100.0 * i) for i, mac in enumerate(MACS)]
        self.received: list[BusMessage] = []

    def settings(self, **kw: object) -> AgentSettings:
        base: dict[str, object] = {
            "site_id": SITE,
            "shard": 3,
            "plugs": [PlugAddress(f"10.0.0.{i + 1}") for i in range(len(MACS))],
            "discovery": False,
            "state_dir": self.tmp / "state",
            "flush_interval_s": 30.0,
        }
        base.update(kw)
        return AgentSettings(**base)  # type: ignore[arg-type]

    def agent(self, **kw: object) -> Agent:
        keyring = Keyring()
        keyring.add_public(self.hub_key.public_bytes, SITE)
        return Agent(
            self.settings(**kw), self.bus, self.agent_key, keyring, self.site.connect, clock=self.clock
        )

    async def listen(self) -> None:
        await self.bus.ensure_topic(TELEMETRY_TOPIC)
        await self.bus.ensure_subscription("hub-0", TELEMETRY_TOPIC)

        async def handler(msg: BusMessage) -> bool:
            self.received.append(msg)
            return True

        await self.bus.subscribe("hub-0", handler)

    def keyring(self) -> Keyring:
        ring = Keyring()
        ring.add_public(self.agent_key.public_bytes, SITE)
        return ring

    def batches(self) -> list[Batch]:
        return [
            unpack_telemetry(m.data, self.keyring())
            for m in self.received
            if m.attributes["schema"] == "chargectl.v1.TelemetryBatch"
        ]


@pytest.fixture
async def h(tmp_path: Path, manual_clock: ManualClock) -> Harness:
    harness = Harness(tmp_path, manual_clock)
    await harness.listen()
    return harness


async def settle() -> None:
    import asyncio

    for _ in range(20):
        await asyncio.sleep(0)


async def test_run_once_publishes_one_signed_batch_with_every_plug(h: Harness) -> None:
    agent = h.agent()
    health = await agent.run_once()
    await settle()
    assert len(h.received) == 1
    msg = h.received[0]
    assert msg.attributes == {
        "site_id": SITE,
        "shard": "3",
        "schema": "chargectl.v1.TelemetryBatch",
        "encoding": "zstd",
        "batch_seq": "1",
    }
    batch = h.batches()[0]
    assert batch.site_id == SITE and batch.batch_seq == 1
    by_mac = {r.mac: r for r in batch.readings}
    assert sorted(by_mac) == MACS
    assert by_mac[MACS[2]].power_w == 200.0 and by_mac[MACS[2]].energy_mwh == 1_000_010
    assert by_mac[MACS[0]].ts_ms == 1_767_225_600_000
    assert {c.mac for c in batch.inventory if c.kind == "added"} == set(MACS)
    assert health.plugs_online == 3 and health.published_batches == 1 and health.batch_seq == 1
    await agent.aclose()


async def test_outage_spools_then_replays_in_order_across_a_restart(h: Harness) -> None:
    agent = h.agent()
    await agent.run_once()  # seq 1 published
    h.bus.set_offline(True)
    for _ in range(3):
        h.clock.advance(5)
        health = await agent.run_once()  # seq 2, 3, 4 spooled
    assert health.spooled_batches == 3 and not health.link_up
    await agent.aclose()
    # A new process on the same state directory: the spool and the sequence survive.
    h.clock.advance(5)
    agent = h.agent()
    assert agent.health().spooled_batches == 3
    health = await agent.run_once()  # seq 5 joins the spool (still offline)
    assert health.spooled_batches == 4 and health.batch_seq == 5
    h.bus.set_offline(False)
    h.clock.advance(5)
    health = await agent.run_once()  # replays 2..5, then publishes 6
    await settle()
    assert health.spooled_batches == 0 and health.link_up
    seqs = [int(m.attributes["batch_seq"]) for m in h.received]
    assert seqs == [1, 2, 3, 4, 5, 6]
    readings = [r for b in h.batches() for r in b.readings if r.mac == MACS[0]]
    times = [r.ts_ms for r in readings]
    assert times == sorted(times) and len(set(times)) == len(times) == 6
    assert [r.energy_mwh for r in readings] == [1_000_000 + 10 * i for i in range(1, 7)]
    await agent.aclose()


async def test_plug_offline_and_recovery_are_logged_once(
    h: Harness, agent_log: pytest.LogCaptureFixture
) -> None:
    agent = h.agent()
    await agent.run_once()
    h.plugs[1].failing = True
    for _ in range(6):
        h.clock.advance(5)
        await agent.run_once()
    h.plugs[1].failing = False
    for _ in range(3):
        h.clock.advance(5)
        await agent.run_once()
    messages = [r.getMessage() for r in agent_log.records if MACS[1] in r.getMessage()]
    assert sum("is offline" in m for m in messages) == 1
    assert sum("back online" in m for m in messages) == 1
    assert [r.levelname for r in agent_log.records if "is offline" in r.getMessage()] == ["WARNING"]
    await agent.aclose()


async def test_link_down_and_restored_are_logged_once(
    h: Harness, agent_log: pytest.LogCaptureFixture
) -> None:
    agent = h.agent()
    h.bus.set_offline(True)
    for _ in range(4):
        h.clock.advance(5)
        await agent.run_once()
    h.bus.set_offline(False)
    for _ in range(2):
        h.clock.advance(5)
        await agent.run_once()
    text = [r.getMessage() for r in agent_log.records]
    assert sum("telemetry link down" in m for m in text) == 1
    assert sum("telemetry link restored" in m for m in text) == 1
    await agent.aclose()


async def test_full_spool_drops_oldest_and_counts(h: Harness) -> None:
    agent = h.agent(spool_max_bytes=1500)
    h.bus.set_offline(True)
    for _ in range(8):
        h.clock.advance(5)
        health = await agent.run_once()
    assert health.dropped_batches > 0
    assert health.spooled_batches + health.dropped_batches == 8
    assert health.dropped_readings == 3 * health.dropped_batches
    h.bus.set_offline(False)
    h.clock.advance(5)
    after = await agent.run_once()  # batch 9 is written ahead into the full spool, then all replay
    await settle()
    seqs = [int(m.attributes["batch_seq"]) for m in h.received]
    assert after.dropped_batches == health.dropped_batches + 1 and after.spooled_batches == 0
    assert seqs == list(range(after.dropped_batches + 1, 10))  # the newest survive, in order
    await agent.aclose()


async def test_commands_execute_and_every_outcome_is_published(h: Harness) -> None:
    agent = h.agent()
    await agent.run_once()
    now = int(h.clock.now() * 1000)
    cmd = Command("c1", SITE, MACS[0], True, now, now + 60_000, "s1", 120)
    data, attrs = pack_command(cmd, h.hub_key)
    assert await agent.handle_command(BusMessage(data, attrs, "m1"))
    assert await agent.handle_command(BusMessage(data, attrs, "m2"))  # redelivery
    await settle()
    published = len(h.received)  # the results wait for the next flush: no message of their own
    assert all(m.attributes["schema"] == "chargectl.v1.TelemetryBatch" for m in h.received)
    await agent.flush()
    await settle()
    assert len(h.received) == published + 1
    outcomes: list[CommandOutcome] = list(h.batches()[-1].results)
    assert [(o.reason, o.ok, o.relay_on, o.site_id) for o in outcomes] == [
        ("executed", True, True, SITE),
        ("duplicate", False, None, SITE),
    ]
    assert h.plugs[0].relay_on and h.plugs[0].auto_off_s == 120
    assert h.plugs[0].calls.count("set_relay(True, 120)") == 1
    assert all(m.attributes["shard"] == "3" for m in h.received)
    await agent.aclose()


async def test_heartbeat_is_fresh_then_stale(h: Harness) -> None:
    agent = h.agent()
    await agent.run_once()
    now_ms = int(h.clock.now() * 1000)
    status = check_heartbeat(agent.heartbeat_path, now_ms + 10_000, max_age_s=60)
    assert status.fresh and "3/3 plugs online" in status.message
    stale = check_heartbeat(agent.heartbeat_path, now_ms + 61_000, max_age_s=60)
    assert not stale.fresh and "61s old" in stale.message
    missing = check_heartbeat(h.tmp / "nope.json", now_ms, 60)
    assert not missing.fresh and "has not run" in missing.message
    # The clock stepped back two hours after the last heartbeat: an agent that wrote none since is not
    # alive for two hours because of it; a little behind (within the limit) is still fine.
    stepped = check_heartbeat(agent.heartbeat_path, now_ms - 7_200_000, max_age_s=60)
    assert not stepped.fresh and "7200s in the future" in stepped.message
    assert check_heartbeat(agent.heartbeat_path, now_ms - 30_000, max_age_s=60).fresh
    await agent.aclose()


async def test_a_moved_plug_keeps_its_identity(h: Harness) -> None:
    from chargectl.services.agent.plugs import PlugSighting

    agent = h.agent(plugs=[PlugAddress("10.0.0.1")])
    await agent.run_once()
    plug = h.site.by_address.pop(("10.0.0.1", 80))
    h.site.by_address[("10.0.0.99", 8080)] = plug
    await agent._sighted(PlugSighting("moved", MACS[0], "10.0.0.99", 8080))
    assert agent.plugs[MACS[0]] == ("10.0.0.99", 8080, True)
    h.clock.advance(5)
    await agent.run_once()
    await settle()
    batches = h.batches()
    assert [r.mac for b in batches for r in b.readings] == [MACS[0], MACS[0]]
    moved = [c for b in batches for c in b.inventory if c.kind == "moved"]
    assert [(c.mac, c.host, c.port) for c in moved] == [(MACS[0], "10.0.0.99", 8080)]
    await agent.aclose()


async def test_live_view_table_shows_every_plug_and_the_link(h: Harness) -> None:
    from rich.console import Console

    from chargectl.cli.commands.agent import status_table

    agent = h.agent()
    await agent.run_once()
    h.plugs[2].failing = True
    for _ in range(2):
        h.clock.advance(5)
        await agent.run_once()
    console = Console(record=True, width=200)
    console.print(status_table(agent))
    text = console.export_text()
    assert "site carpark-1: 2/3 plugs online" in text and "link up" in text
    rows = {line.split()[1]: line for line in text.splitlines() if "A8032AB1000" in line}
    assert "offline" in rows[MACS[2]] and "did not answer" in rows[MACS[2]]
    assert "online" in rows[MACS[0]] and "10.0.0.1:80" in rows[MACS[0]]
    await agent.aclose()


async def test_a_result_is_flushed_within_result_flush_ms_not_the_flush_interval(h: Harness) -> None:
    """A served agent with an hour's flush interval: the command's result still reaches the bus, in a
    batch of its own (the readings wait for their interval), once it has waited result_flush_ms."""
    import asyncio

    from chargectl.common.clock import SystemClock

    keyring = Keyring()
    keyring.add_public(h.hub_key.public_bytes, SITE)
    settings = h.settings(flush_interval_s=3600.0, poll_interval_s=3600.0, result_flush_ms=50)
    agent = Agent(settings, h.bus, h.agent_key, keyring, h.site.connect, clock=SystemClock())
    task = asyncio.create_task(agent.serve())
    try:
        for _ in range(2000):
            if len(agent.plugs) == len(MACS):
                break
            await asyncio.sleep(0.01)
        now = int(SystemClock().now() * 1000)
        cmd = Command("c9", SITE, MACS[1], True, now, now + 60_000, "s9", 120)
        data, attrs = pack_command(cmd, h.hub_key)
        assert await agent.handle_command(BusMessage(data, attrs, "m9"))
        for _ in range(3000):  # up to 30 s on a loaded machine; the flush interval is an hour
            if any(b.results for b in h.batches()):
                break
            await asyncio.sleep(0.01)
        carrying = [b for b in h.batches() if b.results]
        assert len(carrying) == 1 and [(o.command_id, o.ok) for o in carrying[0].results] == [("c9", True)]
        assert carrying[0].readings == ()
        assert h.plugs[1].relay_on
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)
