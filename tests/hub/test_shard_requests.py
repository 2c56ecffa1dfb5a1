"""Requests are routed by shard: a hub leaves a request for another shard's plug unanswered (that
shard's hub answers it), even when it reads the request first and even when the plug was bound after
its last read of the bindings. A plug no site has bound is refused by whichever hub reads it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_service import MAC, Rig

from chargectl.common import codec
from chargectl.common.readings import Reading
from chargectl.services.adapters.bus import BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.payments.ledger import Ledger


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.store.close()


async def _shard_one(rig: Rig) -> Hub:
    hub = Hub(
        HubSettings(shard=1, plug_state_min_interval_s=0, checkpoint_interval_s=3600),
        HubPorts(MemoryBus(), rig.store, SqliteTimeSeries(rig.tmp / "ts1.db"), lambda s, t: rig.command_key),
        rig.clock,
    )
    await hub.start()
    return hub


async def test_the_other_shards_hub_reading_first_leaves_the_request_to_the_owner(rig: Rig) -> None:
    other = await _shard_one(rig)  # started before the plug was ever bound: its bindings know nothing
    owner = await rig.start_hub()  # shard 0, the site's shard
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    owner.credit_arrived("u1")
    await rig.readings(30, 0)  # the plug reports to its own shard: bound to site-a now
    assert rig.store.plug_bindings() == {MAC: "site-a"}

    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await other.poll_requests()  # the wrong hub reads the request first
    req = rig.store.get_request("r1")
    assert req is not None and req.status == codec.ChargeRequest.STATUS_PENDING
    assert other.metrics.value("requests_ignored_total", reason="other_shard") == 1
    assert MAC not in other.plugs and not rig.commands

    await owner.poll_requests()
    await rig.settle()
    req = rig.store.get_request("r1")
    assert req is not None and req.status == codec.ChargeRequest.STATUS_ACCEPTED
    assert rig.commands and rig.commands[0].on  # the owner's relay command went to the plug's site
    rig.obey()
    await other.poll_requests()  # answered: the wrong hub has nothing more to say about it
    assert rig.store.get_request("r1").status == codec.ChargeRequest.STATUS_ACCEPTED  # type: ignore[union-attr]

    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await other.poll_requests()
    await owner.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(30, 0)
    assert owner.plugs[MAC].state.session is None
    session = rig.store.get_session(req.session_id)
    assert session is not None and session.status == codec.ChargeSession.STATUS_COMPLETED
    # Billed once, by the owner; the other hub never touched the balance.
    assert Ledger(rig.store).balance("u1", "gbp") == 1000 - session.cost.amount_minor
    assert other.metrics.value("requests_rejected_total", reason="unknown_plug") == 0


async def test_a_plug_no_site_has_bound_is_refused_by_any_hub(rig: Rig) -> None:
    other = await _shard_one(rig)
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await other.poll_requests()
    req = rig.store.get_request("r1")
    assert req is not None and req.status == codec.ChargeRequest.STATUS_REJECTED
    assert req.reason == "unknown_plug"


async def test_a_hub_still_holding_a_moved_sites_plug_leaves_its_requests_alone(rig: Rig) -> None:
    """The site moved to shard 1 while shard 0's hub still has its plug in memory: shard 0 must not
    start a session on it (two hubs would both command the relay); shard 1 answers."""
    old = await rig.start_hub()
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    await rig.readings(30, 0)
    assert MAC in old.plugs
    site = rig.store.get_site("site-a")
    assert site is not None
    site.shard = 1
    rig.store.put_site(site)
    old.refresh_trust(force=True)
    new = await _shard_one(rig)
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await old.poll_requests()
    await rig.settle()
    req = rig.store.get_request("r1")
    assert req is not None and req.status == codec.ChargeRequest.STATUS_PENDING
    assert old.plugs[MAC].state.session is None and not rig.commands
    assert old.metrics.value("requests_ignored_total", reason="other_shard") == 1
    # The new shard's hub learns the plug from its next readings, then answers the request.
    rows = []
    for _ in range(6):
        rig.clock.advance(5)
        rows.append(Reading(MAC, round(rig.clock.now() * 1000), 0.0, rig.counter, False, 230.0))
    rig.seq += 1
    data, attrs = codec.pack_telemetry(codec.Batch("site-a", rig.seq, tuple(rows)), rig.agent_key)
    assert await new.handle_message(BusMessage(data, {**attrs, "shard": "1"}, f"m{rig.seq}"))
    await new.tick()
    assert MAC in new.plugs
    new.credit_arrived("u1")
    await new.poll_requests()
    await rig.settle()
    req = rig.store.get_request("r1")
    assert req is not None and req.status == codec.ChargeRequest.STATUS_ACCEPTED, req.reason
    assert new.plugs[MAC].state.session is not None and old.plugs[MAC].state.session is None
