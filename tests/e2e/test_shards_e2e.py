"""Two hubs on two shards, side by side on the Pub/Sub and Firestore emulators: each serves its own
sites' telemetry and requests. A site's ``Site.shard`` decides; a request for a plug of the other
shard's site is left to that shard's hub, never refused as ``unknown_plug`` by the wrong one.

The hubs and agents run in this process (each with its own bus client); the plugs are the simulator's,
over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import backends
import pytest
from e2e_helpers import _kill, _spawn

from chargectl.common import codec
from chargectl.common.clock import SystemClock
from chargectl.common.keys import Keyring, SigningKey
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.hub import machine as m
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.payments.ledger import Ledger
from chargectl.services.requests import submit_request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def _until(cond: Callable[[], bool], what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _agent(tmp: Path, site: str, shard: int, port: int, bus: Any, key: SigningKey, cmd: SigningKey) -> Any:
    from chargectl.services.agent import Agent, AgentSettings, PlugAddress
    from chargectl.services.agent.shelly_plugs import shelly_connector

    settings = AgentSettings(
        site_id=site,
        shard=shard,
        plugs=[PlugAddress("127.0.0.1", port)],
        discovery=False,
        state_dir=tmp,
        poll_interval_s=1.0,
        flush_interval_s=1.0,
    )
    ring = Keyring()
    ring.add_public(cmd.public_bytes, site)
    clock = SystemClock()
    connector = shelly_connector(
        password=None, user="admin", timeout_s=settings.request_timeout_s, clock=clock
    )
    return Agent(settings, bus, key, ring, connector, clock=clock)


def test_two_hubs_on_two_shards_each_serve_their_own_sites(
    pubsub_env: backends.Server, firestore_env: backends.Server, tmp_path: Path
) -> None:
    proc = _spawn(
        ["sim", "--plugs", "2", "--gen", "2", "--profile", "ev", "--no-mdns", "--json", "--seed", "11"],
        dict(os.environ),
        tmp_path / "sim.log",
    )
    try:
        assert proc.stdout is not None
        plugs = json.loads(proc.stdout.readline())["plugs"]
        asyncio.run(_two_shards(tmp_path, plugs))
    finally:
        _kill(proc)


async def _two_shards(tmp: Path, plugs: list[dict[str, Any]]) -> None:
    from chargectl.services.adapters.firestore_store import FirestoreStore
    from chargectl.services.adapters.pubsub_bus import PubSubBus

    project = f"shards-{uuid.uuid4().hex[:8]}"
    store = FirestoreStore(project)
    cmd_key = SigningKey.generate()
    sites = [f"site-{shard}-{uuid.uuid4().hex[:6]}" for shard in (0, 1)]
    agent_keys = [SigningKey.generate(), SigningKey.generate()]
    for shard, (site, key) in enumerate(zip(sites, agent_keys, strict=True)):
        store.put_site(
            codec.Site(
                site_id=site,
                shard=shard,
                status=codec.Site.STATUS_ACTIVE,
                agent_keys=[codec.PublicKey(key_id=key.key_id, public_key=key.public_bytes)],
                tariff=codec.Tariff(tariff_id="t", currency="gbp", price_per_kwh_minor=30),
            )
        )
    ledger = Ledger(store)
    for user in ("u0", "u1"):
        store.put_user(codec.UserAccount(user_id=user, currency="gbp"))
        ledger.post(f"topup-{user}", user, "topup", 10_000, "gbp", round(time.time() * 1000))

    buses = [PubSubBus(project, publish_timeout_s=10) for _ in range(4)]
    hubs = [
        Hub(
            HubSettings(shard=shard),
            HubPorts(
                buses[shard],
                FirestoreStore(project),
                SqliteTimeSeries(tmp / f"ts{shard}.db"),
                lambda site, at: cmd_key,
            ),
            SystemClock(),
        )
        for shard in (0, 1)
    ]
    tasks = [asyncio.create_task(h.serve(health=False)) for h in hubs]
    await _until(lambda: all(h.problems() == [] and h._started for h in hubs), "both hubs to start")
    agents = [
        _agent(
            tmp / f"agent{shard}",
            sites[shard],
            shard,
            plugs[shard]["port"],
            buses[2 + shard],
            agent_keys[shard],
            cmd_key,
        )
        for shard in (0, 1)
    ]
    tasks += [asyncio.create_task(a.serve()) for a in agents]
    macs = [plugs[0]["mac"], plugs[1]["mac"]]
    try:
        # Telemetry: each hub holds its own shard's plug, and only that one.
        await _until(
            lambda: set(hubs[0].plugs) == {macs[0]} and set(hubs[1].plugs) == {macs[1]},
            "each hub to see its own shard's plug",
        )
        assert all(h.plugs[mac].state.status is m.Status.AVAILABLE for h, mac in zip(hubs, macs, strict=True))
        # Requests: one per plug, both in the one store both hubs listen to.
        now = round(time.time() * 1000)
        submit_request(store, "u0", macs[0], codec.ChargeRequest.ACTION_START, now, "start-0")
        submit_request(store, "u1", macs[1], codec.ChargeRequest.ACTION_START, now, "start-1")

        def answered() -> bool:
            return all(
                (r := store.get_request(rid)) is not None and r.status != codec.ChargeRequest.STATUS_PENDING
                for rid in ("start-0", "start-1")
            )

        await _until(answered, "both requests to be answered")
        for rid, hub, mac in (("start-0", hubs[0], macs[0]), ("start-1", hubs[1], macs[1])):
            req = store.get_request(rid)
            assert req is not None
            assert req.status == codec.ChargeRequest.STATUS_ACCEPTED, (rid, req.reason)
            live = hub.plugs[mac].state.session
            assert live is not None and live.session_id == req.session_id
        # The relay each request asked for is on, switched by the agent of the plug's own site.
        for agent, mac in zip(agents, macs, strict=True):
            await _until(
                lambda agent=agent, mac=mac: any(
                    o.ok and o.relay_on and o.plug_mac == mac for o in agent.outcomes
                ),
                f"plug {mac} to switch on",
            )
        # Neither hub refused the other's request, and each counted the one it left alone.
        for hub in hubs:
            assert hub.metrics.value("requests_rejected_total", reason="unknown_plug") == 0
            assert hub.metrics.value("requests_ignored_total", reason="other_shard") >= 1
        # Stop both: each hub bills its own session; the two balances move separately.
        now = round(time.time() * 1000)
        submit_request(store, "u0", macs[0], codec.ChargeRequest.ACTION_STOP, now, "stop-0")
        submit_request(store, "u1", macs[1], codec.ChargeRequest.ACTION_STOP, now, "stop-1")
        await _until(  # over, and the finish written (a serving hub writes it off its event loop)
            lambda: all(
                h.plugs[mac].state.session is None and not h.sessions.pending
                for h, mac in zip(hubs, macs, strict=True)
            ),
            "both sessions to be billed",
        )
        for rid, user in (("start-0", "u0"), ("start-1", "u1")):
            req = store.get_request(rid)
            assert req is not None
            session = store.get_session(req.session_id)
            assert session is not None and session.status == codec.ChargeSession.STATUS_COMPLETED
            assert session.user_id == user
            assert ledger.balance(user, "gbp") == 10_000 - session.cost.amount_minor
    finally:
        for agent in agents:
            agent.stop()
        for hub in hubs:
            hub.request_stop()
        for task in tasks:
            await asyncio.wait_for(task, 60)
        for bus in buses:
            await bus.close()
        store.close()
