"""A signed-in user may write as many charge requests as the store lets them. Hostile cases: one user's
flood must not hold back another driver's start (their answers used to take every request thread), must
not cost a store read per request, and must never keep its own user charging (a stop of their own
session always goes through). Each test asserts the money and the relay."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from hostile import World

from chargectl.common import codec
from chargectl.services.hub.requests import FLOOD_BACKLOG

A = "site-a"
MAC = "AABBCCDDEEFF"
MAC2 = "AABBCCDDEE00"
START = codec.ChargeRequest.ACTION_START
STOP = codec.ChargeRequest.ACTION_STOP
ACCEPTED = codec.ChargeRequest.STATUS_ACCEPTED
REJECTED = codec.ChargeRequest.STATUS_REJECTED
PENDING = codec.ChargeRequest.STATUS_PENDING


def _reasons(w: World, rids: list[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for rid in rids:
        doc = w.store.get_request(rid)
        assert doc is not None
        out["pending" if doc.status == PENDING else doc.reason] += 1
    return out


def _count_user_reads(w: World) -> Counter[str]:
    reads: Counter[str] = Counter()
    get_user = w.store.get_user

    def counting(uid: str) -> Any:
        reads[uid] += 1
        return get_user(uid)

    w.store.get_user = counting  # type: ignore[method-assign]
    return reads


async def test_a_flood_never_queues_ahead_of_another_drivers_start(tmp_path: Path) -> None:
    w = World(tmp_path, requests_per_user_per_minute=10)
    try:
        w.add_site(A)
        w.add_plug(MAC2, A)
        w.user("flooder", 5000)
        w.user("driver", 5000)
        hub = await w.start_hub()
        await w.run(30)
        w.plugs[MAC2].power_w = 1800.0
        # Fault injection: the store takes its time over every answer to the flooder (a slow or busy
        # Firestore). Before the limit, their 300 answers took all the request threads, and the
        # driver's reads waited behind them.
        flood = [f"f{i}" for i in range(10 + FLOOD_BACKLOG + 34)]
        gate = threading.Event()
        answer = w.store.answer_request

        def slow_answers(rid: str, *args: Any) -> Any:
            if rid in flood_ids:
                gate.wait(120)
            return answer(rid, *args)

        flood_ids = set(flood)
        w.store.answer_request = slow_answers  # type: ignore[method-assign]
        reqs = [w.pending(rid, START, f"00000000{i:04X}", "flooder") for i, rid in enumerate(flood)]
        flooding = [asyncio.create_task(hub.requests.handle_async(r)) for r in reqs]
        await asyncio.sleep(0)  # every flood request is in before the driver's
        driver = w.pending("d1", START, MAC2, "driver")
        await asyncio.wait_for(hub.requests.handle_async(driver), 60)
        await asyncio.wait_for(hub.sessions.starts_done(), 60)
        await w.settle()
        w.obey()
        # The driver's start went through while the flood's answers were still stuck.
        doc = w.store.get_request("d1")
        assert doc is not None and doc.status == ACCEPTED
        assert w.plugs[MAC2].relay is True
        sess = hub.plugs[MAC2].state.session
        assert sess is not None and sess.user_id == "driver"
        assert w.store.get_session(sess.session_id) is not None
        assert not gate.is_set() and _reasons(w, flood) == Counter(pending=len(flood))
        gate.set()
        await asyncio.wait_for(asyncio.gather(*flooding), 60)
        # Ten within the limit were judged (no such plug); the rest are refused as a flood, up to the
        # backlog of answers one thread writes; beyond it they are left pending (they expire), and
        # counted, rather than held in memory.
        assert _reasons(w, flood) == Counter(unknown_plug=10, rate_limited=FLOOD_BACKLOG, pending=34)
        assert hub.metrics.value("requests_rejected_total", reason="rate_limited") == FLOOD_BACKLOG
        assert hub.metrics.value("requests_ignored_total", reason="rate_limited") == 34
        # Nobody's money moved: the flooder has no session, the driver is not billed yet.
        assert w.store.list_sessions(user_id="flooder") == []
        assert w.balance("flooder") == 5000 and w.balance("driver") == 5000
    finally:
        w.close()


async def test_a_flood_costs_no_reads_and_never_keeps_its_user_charging(tmp_path: Path) -> None:
    w = World(tmp_path, requests_per_user_per_minute=5)
    try:
        w.add_site(A, price_per_kwh_minor=3000)
        w.add_plug(MAC, A)
        w.add_plug(MAC2, A)
        w.user("u1", 5000)
        hub = await w.start_hub()
        await w.run(30)
        w.plugs[MAC].power_w = 1800.0
        await w.start_session("r0", MAC, "u1")
        assert w.plugs[MAC].relay is True
        await w.run(100, macs=[MAC])  # charging; the limit is full again (five a minute)
        reads = _count_user_reads(w)
        # Fifty more starts at once, for the plug they are charging on and for another one.
        flood = [f"f{i}" for i in range(50)]
        reqs = [w.pending(rid, START, (MAC, MAC2)[i % 2], "u1") for i, rid in enumerate(flood)]
        await asyncio.wait_for(asyncio.gather(*(hub.requests.handle_async(r) for r in reqs)), 60)
        await hub.sessions.starts_done()
        await w.settle()
        w.obey()
        reasons = _reasons(w, flood)
        assert reasons["rate_limited"] == 45 and reads["u1"] == 5  # five judged, five account reads
        # A second session on the other plug is fine (one of the five); nothing else started.
        live = [p.state.session for p in hub.plugs.values() if p.state.session is not None]
        assert len(live) <= 2 and all(s.user_id == "u1" for s in live)
        # Out of tokens, a stop of a session that is not theirs is refused as a flood, but the stop
        # of their own session goes through at once: the relay goes off and the session is billed.
        w.request("s-other", STOP, "00000000FFFF", "u1")
        w.request("s1", STOP, MAC, "u1")
        for rid in ("s-other", "s1"):
            req = w.store.get_request(rid)
            assert req is not None
            await asyncio.wait_for(hub.requests.handle_async(req), 60)
        await w.settle()
        w.obey()
        assert _reasons(w, ["s-other"]) == Counter(rate_limited=1)
        stopped = w.store.get_request("s1")
        assert stopped is not None and stopped.status == ACCEPTED
        await w.run(30)
        assert w.plugs[MAC].relay is False and hub.plugs[MAC].state.session is None
        (doc,) = [d for d in w.store.list_sessions(user_id="u1") if d.plug_mac == MAC]
        assert doc.status == codec.ChargeSession.STATUS_COMPLETED
        # Billed by the plug's meter: 2.5 Wh a 5 s sample at 1,800 W, at 30.00 a kWh, rounded half up.
        # About 100 s of charging: 18 to 22 samples, 45 to 55 Wh, 135 to 165 (the first sample may
        # fall either side of the relay's switch-on, the last either side of the stop).
        assert 45_000 <= doc.energy_mwh <= 55_000 and doc.energy_mwh % 2500 == 0
        assert doc.cost.amount_minor == (doc.energy_mwh * 3000 + 500_000) // 1_000_000
        assert sum(-e.amount.amount_minor for e in w.debits("u1")) == doc.cost.amount_minor
        assert w.balance("u1") == 5000 - doc.cost.amount_minor
        # A minute later the limit has refilled: a start is judged again (and reads the account).
        await w.run(60)
        w.request("later", START, MAC, "u1")
        later = w.store.get_request("later")
        assert later is not None
        before = reads["u1"]
        await asyncio.wait_for(hub.requests.handle_async(later), 60)
        await hub.sessions.starts_done()
        assert _reasons(w, ["later"])["rate_limited"] == 0 and reads["u1"] == before + 1
    finally:
        w.close()
