"""Keep-alives as site leases: with many live sessions on a site the hub sends one lease per site
instead of an "on" per plug; every live plug is renewed at least every ``auto_off_s / 2`` (so the
plug's own flip-back timer never fires while the hub runs); a finished session's plug is never named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_service import SITE, Rig

from chargectl.common import codec
from chargectl.common.readings import Reading
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.payments.ledger import Ledger

MACS = [f"A8032AB1{n:04X}" for n in range(8)]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.store.close()


async def test_one_lease_per_site_renews_every_live_plug_in_time(rig: Rig) -> None:
    hub = await rig.start_hub()
    relay = dict.fromkeys(MACS, False)
    counter = dict.fromkeys(MACS, 1_000_000)
    renewed: dict[str, list[float]] = {mac: [] for mac in MACS}
    per_plug_on: list[codec.Command] = []
    leases: list[codec.Command] = []

    async def run(seconds: float) -> None:
        rows: list[Reading] = []
        for _ in range(int(seconds / 5)):
            rig.clock.advance(5)
            now_ms = round(rig.clock.now() * 1000)
            for mac in MACS:
                power = 1800.0 if relay[mac] else 0.0
                counter[mac] += round(power * 5 / 3.6)
                rows.append(Reading(mac, now_ms, power, counter[mac], relay[mac], 230.0))
            if len(rows) >= 6 * len(MACS):
                rig.seq += 1
                data, attrs = codec.pack_telemetry(codec.Batch(SITE, rig.seq, tuple(rows)), rig.agent_key)
                assert await hub.handle_message(BusMessage(data, {**attrs, "shard": "0"}, f"m{rig.seq}"))
                rows = []
            await hub.tick()
            await rig.settle()
            while rig.commands:  # the agent: obey, report per-plug commands (a lease reports nothing)
                cmd = rig.commands.pop(0)
                if cmd.leased:
                    leases.append(cmd)
                    for entry in cmd.leased:
                        renewed[entry.plug_mac].append(rig.clock.now())
                    continue
                relay[cmd.plug_mac] = cmd.on
                if cmd.on:
                    per_plug_on.append(cmd)
                    renewed[cmd.plug_mac].append(rig.clock.now())
                hub.process_outcome(
                    codec.CommandOutcome(
                        cmd.command_id,
                        SITE,
                        cmd.plug_mac,
                        True,
                        "executed",
                        round(rig.clock.now() * 1000),
                        cmd.on,
                    )
                )

    for n in range(len(MACS)):
        uid = f"u-{n}"
        rig.store.put_user(codec.UserAccount(user_id=uid, currency="gbp"))
        Ledger(rig.store).post(f"topup-{n}", uid, "topup", 1_000_000, "gbp", now_ms=1)
    await run(30)
    for n, mac in enumerate(MACS):  # sessions start a few seconds apart: their keep-alives interleave
        rig.store.add_request(
            codec.ChargeRequest(
                request_id=f"r{n}",
                user_id=f"u-{n}",
                plug_mac=mac,
                action=codec.ChargeRequest.ACTION_START,
                status=codec.ChargeRequest.STATUS_PENDING,
                created_at_ms=round(rig.clock.now() * 1000),
            )
        )
        await hub.poll_requests()
        await run(10)
    starts = len(per_plug_on)
    assert starts == len(MACS)
    await run(3600)
    # No per-plug keep-alive: every renewal in that hour came by lease.
    assert len(per_plug_on) == starts
    # 8 live plugs x 36 keep-alives an hour (every 100 s) would be 288 messages; leases go at most
    # every half interval (50 s) per site, 72 + 1 in the hour, plus one per plug while it joins
    # (its first keep-alive, before the site's lease names it).
    assert 0 < len(leases) <= 73 + len(MACS)
    for lease in leases:
        assert all(e.auto_off_s == 300 and e.session_id.startswith("sess-") for e in lease.leased)
    # Once every plug's first keep-alive has come due (100 s after its "on"), every lease names all.
    assert all({e.plug_mac for e in lease.leased} == set(MACS) for lease in leases[len(MACS) :])
    for mac in MACS:  # never longer than auto_off_s / 2 (150 s) plus a tick between two renewals
        gaps = [b - a for a, b in zip(renewed[mac], renewed[mac][1:], strict=False)]
        assert gaps and max(gaps) <= 151, (mac, max(gaps))

    # Stop one session: its plug is left out of every later lease.
    rig.store.add_request(
        codec.ChargeRequest(
            request_id="stop-0",
            user_id="u-0",
            plug_mac=MACS[0],
            action=codec.ChargeRequest.ACTION_STOP,
            status=codec.ChargeRequest.STATUS_PENDING,
            created_at_ms=round(rig.clock.now() * 1000),
        )
    )
    await hub.poll_requests()
    before = len(leases)
    await run(900)
    assert not relay[MACS[0]] and hub.plugs[MACS[0]].state.session is None
    assert len(leases) > before
    assert all(MACS[0] not in {e.plug_mac for e in lease.leased} for lease in leases[before + 1 :])
