"""Site leases through the real agent, the Pub/Sub emulator and the simulator over HTTP: one signed
lease re-arms every listed plug's own flip-back timer; when leases stop, each plug still switches off
``auto_off_s`` after its last renewal (the dead-man bound is the plug's own); a lease issued before an
"off" the plug has since executed never switches it back on; a lease that renewed every plug reports
nothing, a plug it could not renew is reported."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import backends
import pytest
from test_agent_integration import SITE, Collector, make_agent, serving, settings, wait_until

from chargectl.common.clock import ManualClock
from chargectl.common.codec import Command, LeasedPlug, pack_command
from chargectl.common.keys import SigningKey
from chargectl.common.topics import command_topic
from chargectl.services.adapters.pubsub_bus import PubSubBus
from chargectl.shelly.sim import SimFleet

pytestmark = pytest.mark.integration

UNKNOWN = "A8032AFFFFFF"


async def test_a_lease_rearms_every_plug_and_plugs_switch_off_when_leases_stop(
    pubsub_env: backends.Server, tmp_path: Path
) -> None:
    clock = ManualClock(1_767_225_600.0)
    fleet = SimFleet.build(3, "2", profile="ev", clock=clock, seed=5)
    await fleet.start()
    bus = PubSubBus(f"lease-{uuid.uuid4().hex[:8]}", publish_timeout_s=5)
    agent_key, hub_key = SigningKey.generate(), SigningKey.generate()
    collector = Collector(bus, agent_key)
    await collector.start("hub-0")
    agent = make_agent(settings(tmp_path, fleet), bus, agent_key, hub_key)
    a, b, c = fleet.plugs
    try:
        async with serving(agent):
            await wait_until(
                lambda: agent.health().commands_subscribed and agent.health().plugs_online == 3, "agent ready"
            )

            async def publish(cmd: Command) -> None:
                data, _ = pack_command(cmd, hub_key)
                await bus.publish(command_topic(SITE), data, {"site_id": SITE})

            def now_ms() -> int:
                return int(time.time() * 1000)

            # Sessions on a and b: "on" with a 120 s flip-back timer each (two outcomes).
            for n, plug in enumerate((a, b), 1):
                t = now_ms()
                await publish(Command(f"on-{n}", SITE, plug.mac, True, t, t + 60_000, f"sess-{n}", 120))
                await wait_until(lambda n=n: len(collector.outcomes()) >= n, f"outcome of on-{n}")
            fleet.advance(100)  # 20 s left on each timer
            assert a.truth().timer_remaining_s == pytest.approx(20.0)

            # One lease renews both (and names a plug this site does not have).
            t = now_ms()
            lease = Command(
                "lease-1",
                SITE,
                "",
                True,
                t,
                t + 60_000,
                leased=(
                    LeasedPlug(a.mac, "sess-1", 120),
                    LeasedPlug(b.mac, "sess-2", 120),
                    LeasedPlug(UNKNOWN, "sess-x", 120),
                ),
            )
            await publish(lease)
            await wait_until(
                lambda: a.truth().timer_remaining_s == 120.0 and b.truth().timer_remaining_s == 120.0,
                "both timers re-armed by the lease",
            )
            await wait_until(lambda: len(collector.outcomes()) >= 3, "the lease's one report")
            reported = collector.outcomes()[2]
            assert (reported.command_id, reported.plug_mac, reported.ok, reported.reason) == (
                "lease-1",
                UNKNOWN,
                False,
                "unknown_plug",
            )  # only the plug it could not renew is reported; a and b renewed silently
            assert not c.truth().relay_on  # a plug the lease does not name is never switched on

            # The hub switches a off; a lease issued before that "off" arrives late: a stays off.
            t_lease = now_ms()
            t_off = t_lease + 1
            await publish(Command("off-a", SITE, a.mac, False, t_off, t_off + 60_000, "sess-1"))
            await wait_until(lambda: len(collector.outcomes()) >= 4, "outcome of off-a")
            assert not a.truth().relay_on
            late = Command(
                "lease-2",
                SITE,
                "",
                True,
                t_lease,
                t_lease + 60_000,
                leased=(LeasedPlug(a.mac, "sess-1", 120), LeasedPlug(b.mac, "sess-2", 120)),
            )
            fleet.advance(50)
            await publish(late)
            await wait_until(lambda: b.truth().timer_remaining_s == 120.0, "b renewed by the late lease")
            assert not a.truth().relay_on

            # Leases stop (the hub or the link died): b switches itself off 120 s after its last renewal.
            fleet.advance(119)
            assert b.truth().relay_on
            fleet.advance(2)
            assert not b.truth().relay_on and not a.truth().relay_on and not c.truth().relay_on
    finally:
        await collector.stop()
        await bus.close()
        await fleet.stop()
