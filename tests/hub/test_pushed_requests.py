"""Pushed requests (the store's listener): handled concurrently, their store round trips off the event
loop. Each test plays the hostile case (a burst for one user, a store that fails at the wrong moment, a
request delivered twice) and asserts what happens to the money and to the relay."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from hostile import World

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.hub.sessions import Urgent

A = "site-a"
MAC = "AABBCCDDEEFF"
MAC2 = "AABBCCDDEE00"
START = codec.ChargeRequest.ACTION_START
STOP = codec.ChargeRequest.ACTION_STOP
ACCEPTED = codec.ChargeRequest.STATUS_ACCEPTED
PENDING = codec.ChargeRequest.STATUS_PENDING


async def until(cond: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def pending(w: World, rid: str, action: int, mac: str, user: str = "u1") -> codec.ChargeRequest:
    return w.pending(rid, action, mac, user)


async def push(w: World, *reqs: codec.ChargeRequest) -> None:
    """Deliver ``reqs`` at once as the listener does, wait until every start is stored and answered."""
    assert w.hub is not None
    await asyncio.gather(*(w.hub.requests.handle_async(r) for r in reqs))
    await w.hub.sessions.starts_done()
    await w.settle()
    w.obey()


def ons(w: World, mac: str) -> list[codec.Command]:
    return [c for c in w.all_commands() if c.plug_mac == mac and c.on]


class FlakyCreates:
    """Fault injection on the store seam: creating a session document fails while ``down``."""

    def __init__(self, w: World) -> None:
        self.down = True
        self.attempts = 0
        self._create = w.store.create_session
        w.store.create_session = self  # type: ignore[method-assign]

    def __call__(self, doc: codec.ChargeSession) -> bool:
        self.attempts += 1
        if self.down:
            raise StoreError("Firestore create of sessions failed: unavailable")
        return self._create(doc)


async def test_a_burst_for_one_user_shares_one_balance(world: World) -> None:
    # test_two_plugs_at_once_share_one_balance, with both starts delivered at once: the user's requests
    # take turns, so the money comes out exactly as when they are handled one after the other.
    world = world
    world.add_site(A, price_per_kwh_minor=3000)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    for mac in (MAC, MAC2):
        world.plugs[mac].power_w = 1800.0
    await push(world, pending(world, "r1", START, MAC), pending(world, "r2", START, MAC2))
    answers = [world.store.get_request(r) for r in ("r1", "r2")]
    assert all(a is not None and a.status == ACCEPTED for a in answers)
    assert world.plugs[MAC].relay and world.plugs[MAC2].relay
    await world.run(1200)
    assert not any(p.relay for p in world.plugs.values())  # out of credit judged across both
    await world.run(700)
    assert all(p.state.session is None for p in hub.plugs.values())
    # Hand-checked (as in the sequential test): 167.5 Wh each at 30.00/kWh = 502.5 each, 1,005 together;
    # the debits stop at the 10.00 balance.
    docs = world.store.list_sessions(user_id="u1")
    assert sorted(d.energy_mwh for d in docs) == [167_500, 167_500]
    assert sum(-e.amount.amount_minor for e in world.debits("u1")) == 1000 and world.balance("u1") == 0
    assert sorted(d.cost.amount_minor for d in docs) == [497, 503]


async def test_a_second_start_waits_for_the_first_and_sees_its_cost(world: World) -> None:
    # test_a_start_needs_the_balance_left_by_the_users_other_sessions, pushed: 960 of 1000 used, so the
    # second start (needs 100) is refused and its plug never switches on.
    world.add_site(A, price_per_kwh_minor=3000)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    world.plugs[MAC].power_w = 1800.0
    await push(world, pending(world, "r1", START, MAC))
    await world.run(640, macs=[MAC])  # 128 samples x 2.5 Wh = 0.32 kWh x 3000 = 960 used of 1000
    await world.run(30, macs=[MAC2])
    await push(world, pending(world, "r2", START, MAC2))
    second = world.store.get_request("r2")
    assert second is not None and second.reason == "insufficient_balance"
    assert world.plugs[MAC2].relay is False and hub.plugs[MAC2].state.session is None
    assert ons(world, MAC2) == []


async def test_the_relay_stays_off_until_the_session_document_is_stored(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 100_000)
    hub = await world.start_hub()
    await world.run(30)
    world.plugs[MAC].power_w = 1800.0
    flaky = FlakyCreates(world)
    task = asyncio.create_task(push(world, pending(world, "r1", START, MAC)))
    await until(lambda: flaky.attempts >= 2, "the session document to be retried")
    world.obey()
    # Decided (the plug is reserved for the session) but not stored: no "on", no answer, no money.
    sess = hub.plugs[MAC].state.session
    assert sess is not None and hub.plugs[MAC].state.status is m.Status.AUTHORIZED
    assert ons(world, MAC) == [] and world.plugs[MAC].relay is False
    assert world.store.get_session(sess.session_id) is None
    answer = world.store.get_request("r1")
    assert answer is not None and answer.status == PENDING
    flaky.down = False
    await asyncio.wait_for(task, 60)
    doc = world.store.get_session(sess.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_ACTIVE
    assert [c.session_id for c in ons(world, MAC)] == [sess.session_id] and world.plugs[MAC].relay
    answer = world.store.get_request("r1")
    assert answer is not None and answer.status == ACCEPTED and answer.session_id == sess.session_id
    assert world.balance("u1") == 100_000


async def test_a_session_stopped_before_it_was_stored_never_switches_on(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    world.plugs[MAC].power_w = 1800.0
    flaky = FlakyCreates(world)
    start = asyncio.create_task(push(world, pending(world, "r1", START, MAC)))
    await until(lambda: flaky.attempts >= 1, "the session document to be tried")
    sess = hub.plugs[MAC].state.session
    assert sess is not None
    await world.hub.requests.handle_async(pending(world, "s1", STOP, MAC))  # type: ignore[union-attr]
    await world.settle()
    world.obey()  # the agent switches it off (it was never on) and reports
    await world.run(10)
    assert hub.plugs[MAC].state.session is None
    flaky.down = False
    await asyncio.wait_for(start, 60)
    await world.run(10)
    # The finish wrote the COMPLETED document first; the late ACTIVE one never replaced it, and the held
    # "on" was dropped: the relay never switched on, nothing was drawn, nothing billed.
    doc = world.store.get_session(sess.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert doc.energy_mwh == 0 and doc.cost.amount_minor == 0
    assert ons(world, MAC) == [] and world.plugs[MAC].relay is False
    assert world.balance("u1") == 1000 and sum(-e.amount.amount_minor for e in world.debits("u1")) == 0
    answer = world.store.get_request("r1")
    assert answer is not None and answer.status == ACCEPTED and answer.session_id == sess.session_id


async def test_a_stop_before_the_start_is_stored_goes_into_its_document(world: World) -> None:
    # The agent is silent (the "off" is never confirmed), so the session stays FINISHING: the document
    # stored late must say it was stopped, or a hub restarted from an older checkpoint would resume it
    # and switch the relay on for a user who asked to stop.
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    await world.run(30)
    flaky = FlakyCreates(world)
    start = asyncio.create_task(push(world, pending(world, "r1", START, MAC)))
    await until(lambda: flaky.attempts >= 1, "the session document to be tried")
    sess = hub.plugs[MAC].state.session
    assert sess is not None
    await hub.requests.handle_async(pending(world, "s1", STOP, MAC))
    assert hub.plugs[MAC].state.status is m.Status.FINISHING
    flaky.down = False
    await asyncio.wait_for(start, 60)
    doc = world.store.get_session(sess.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_ACTIVE
    assert doc.stop_reason == str(m.StopReason.LOCAL)
    assert ons(world, MAC) == [] and world.plugs[MAC].relay is False
    assert world.balance("u1") == 1000 and world.debits("u1") == []


async def test_a_request_delivered_twice_at_once_starts_one_session(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 100_000)
    hub = await world.start_hub()
    await world.run(30)
    req = pending(world, "r1", START, MAC)
    await push(world, req, req)
    await push(world, req)  # redelivered once answered (a reconnect): already handled
    sess = hub.plugs[MAC].state.session
    assert sess is not None
    assert [c.session_id for c in ons(world, MAC)] == [sess.session_id]
    assert [s.session_id for s in world.store.list_sessions()] == [sess.session_id]
    answer = world.store.get_request("r1")
    assert answer is not None and answer.status == ACCEPTED and answer.session_id == sess.session_id


async def test_pushed_refusals_are_answered_as_before(world: World) -> None:
    # expired, unknown plug, no account: the same answers as the polled path, and nothing switches on
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    world.user("ghost", 1000, account=False)
    hub = await world.start_hub()
    await world.run(30)
    world.request("old", START, MAC, age_s=hub.settings.request_max_age_s + 1)
    old = world.store.get_request("old")
    assert old is not None
    await push(
        world, old, pending(world, "nowhere", START, "001122334455"), pending(world, "g", START, MAC, "ghost")
    )
    reasons = {rid: world.store.get_request(rid) for rid in ("old", "nowhere", "g")}
    assert {rid: (a.reason if a else None) for rid, a in reasons.items()} == {
        "old": "expired",
        "nowhere": "unknown_plug",
        "g": "no_account",
    }
    assert ons(world, MAC) == [] and hub.plugs[MAC].state.session is None
    assert world.balance("u1") == 1000 and world.balance("ghost") == 1000


async def test_a_start_stuck_at_the_store_holds_back_no_other_relay_and_no_answer_for_long(
    world: World,
) -> None:
    # A burst of two users' starts; one user's session document cannot be stored (the store refuses it,
    # again and again). A started request's answer waits while another start is still on its way to the
    # store (Sessions.urgent), but only for a bound: the stored one is switched on and answered all the
    # same, and the stuck one keeps its relay off, its request pending and its money untouched.
    world.add_site(A)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 1000)
    world.user("u2", 2000)
    hub = await world.start_hub()
    await world.run(30)
    create = world.store.create_session
    release = threading.Event()
    tries: list[str] = []

    def hanging(doc: codec.ChargeSession) -> bool:
        tries.append(doc.user_id)
        if doc.user_id == "u2":
            assert release.wait(120), "the test never released the store"
        return create(doc)

    world.store.create_session = hanging  # type: ignore[method-assign]
    burst = asyncio.gather(
        hub.requests.handle_async(pending(world, "r1", START, MAC, "u1")),
        hub.requests.handle_async(pending(world, "r2", START, MAC2, "u2")),
    )
    await until(
        lambda: (a := world.store.get_request("r1")) is not None and a.status == ACCEPTED, "r1's answer"
    )
    assert tries.count("u2") >= 1 and hub.sessions.urgent.count >= 1  # u2's start is still on its way
    await world.settle()
    world.obey()
    first, second = hub.plugs[MAC].state.session, hub.plugs[MAC2].state.session
    assert first is not None and second is not None
    assert world.plugs[MAC].relay and [c.session_id for c in ons(world, MAC)] == [first.session_id]
    assert world.plugs[MAC2].relay is False and ons(world, MAC2) == []
    assert world.store.get_session(second.session_id) is None
    r2 = world.store.get_request("r2")
    assert r2 is not None and r2.status == PENDING
    assert (world.balance("u1"), world.balance("u2")) == (1000, 2000) and world.debits("u2") == []
    release.set()
    await asyncio.wait_for(burst, 60)
    await hub.sessions.starts_done()
    await world.settle()
    world.obey()
    r2 = world.store.get_request("r2")
    assert r2 is not None and r2.status == ACCEPTED and r2.session_id == second.session_id
    assert world.plugs[MAC2].relay and [c.session_id for c in ons(world, MAC2)] == [second.session_id]
    assert (world.balance("u1"), world.balance("u2")) == (1000, 2000)


class HangingAccountRead:
    """Fault injection on the store seam: ``user``'s first account read blocks until released."""

    def __init__(self, w: World, user: str) -> None:
        self.user = user
        self.release = threading.Event()
        self.hung = threading.Event()
        self._get = w.store.get_user
        w.store.get_user = self  # type: ignore[method-assign]

    def __call__(self, uid: str) -> codec.UserAccount | None:
        if uid == self.user and not self.hung.is_set():
            self.hung.set()
            assert self.release.wait(120), "the test never released the store"
        return self._get(uid)


async def test_an_answer_waits_for_a_start_still_waiting_for_its_turn(world: World) -> None:
    # u2 asks to stop (nothing to stop) and to start at once; the stop's account read hangs at the store,
    # so u2's start waits for its turn: heard, not reading yet. u1's start is stored and switched on
    # meanwhile, and its answer (on no relay's way) waits until u2's start is stored as well, so it never
    # queues at the store ahead of a start. Both end switched on, one session each, no money moved.
    world.add_site(A)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 1000)
    world.user("u2", 2000)
    hub = await world.start_hub()
    await world.run(30)
    hub.sessions.urgent.max_wait_s = 120.0  # the bound is another test's: here the answer waits for u2
    hang = HangingAccountRead(world, "u2")
    reqs = (
        pending(world, "s2", STOP, MAC2, "u2"),
        pending(world, "r2", START, MAC2, "u2"),
        pending(world, "r1", START, MAC, "u1"),
    )
    burst = asyncio.gather(*(hub.requests.handle_async(r) for r in reqs))
    await until(lambda: hang.hung.is_set(), "u2's stop to reach the store")

    def u1_on() -> bool:
        world.obey()
        return world.plugs[MAC].relay

    await until(u1_on, "u1's relay on")
    await world.settle()
    first = hub.plugs[MAC].state.session
    assert first is not None and world.store.get_session(first.session_id) is not None
    r1 = world.store.get_request("r1")
    assert r1 is not None and r1.status == PENDING  # held: u2's start is still on its way
    assert hub.plugs[MAC2].state.session is None and world.plugs[MAC2].relay is False
    assert hub.sessions.urgent.count >= 1
    hang.release.set()
    await asyncio.wait_for(burst, 60)
    await hub.sessions.starts_done()
    await world.settle()
    world.obey()
    second = hub.plugs[MAC2].state.session
    assert second is not None
    for rid, sess in (("r1", first), ("r2", second)):
        answer = world.store.get_request(rid)
        assert answer is not None and answer.status == ACCEPTED and answer.session_id == sess.session_id
    assert [c.session_id for c in ons(world, MAC)] == [first.session_id] and world.plugs[MAC].relay
    assert [c.session_id for c in ons(world, MAC2)] == [second.session_id] and world.plugs[MAC2].relay
    assert (world.balance("u1"), world.balance("u2")) == (1000, 2000)
    assert world.debits("u1") == [] and world.debits("u2") == []
    assert hub.sessions.urgent.count == 0


async def test_stopping_writes_a_held_answer_at_once_and_a_restart_agrees(world: World) -> None:
    # u1's start is stored and switched on while u2's start hangs at its account read, so u1's answer is
    # held. The hub is told to stop: the held answer is written then, without waiting for its bound or
    # for u2 (nothing held is lost), u2's start still completes, and a hub started again on the same
    # store holds both sessions live, asks nothing again, and has moved no money.
    world.add_site(A)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 1000)
    world.user("u2", 2000)
    hub = await world.start_hub()
    await world.run(30)
    hub.sessions.urgent.max_wait_s = 600.0  # longer than any stop waits: only the stop releases it
    hang = HangingAccountRead(world, "u2")
    for req in (pending(world, "r2", START, MAC2, "u2"), pending(world, "r1", START, MAC, "u1")):
        hub._handle_pushed(req)  # as the store's listener hands them in: the stop waits for them
    await until(lambda: hang.hung.is_set(), "u2's start to reach the store")

    def u1_on() -> bool:
        world.obey()
        return world.plugs[MAC].relay

    await until(u1_on, "u1's relay on")
    first = hub.plugs[MAC].state.session
    assert first is not None
    r1 = world.store.get_request("r1")
    assert r1 is not None and r1.status == PENDING
    stopping = asyncio.create_task(hub.stop())
    await until(
        lambda: (a := world.store.get_request("r1")) is not None and a.status == ACCEPTED, "r1's answer"
    )
    assert not stopping.done() and world.plugs[MAC2].relay is False  # u2 is still on its way
    hang.release.set()
    await asyncio.wait_for(stopping, 120)
    world.obey()
    second = hub.plugs[MAC2].state.session
    assert second is not None
    r1, r2 = world.store.get_request("r1"), world.store.get_request("r2")
    assert r1 is not None and r1.session_id == first.session_id
    assert r2 is not None and r2.status == ACCEPTED and r2.session_id == second.session_id
    assert world.store.pending_requests() == []
    assert world.plugs[MAC].relay and world.plugs[MAC2].relay
    again = await world.start_hub()
    live = {mac: again.plugs[mac].state.session for mac in (MAC, MAC2)}
    assert {mac: s.session_id if s else None for mac, s in live.items()} == {
        MAC: first.session_id,
        MAC2: second.session_id,
    }
    assert (world.balance("u1"), world.balance("u2")) == (1000, 2000)
    assert world.debits("u1") == [] and world.debits("u2") == []
    await again.stop()


async def test_urgent_counts_each_start_once_and_frees_the_answers_when_none_is_left() -> None:
    urgent = Urgent(max_wait_s=600.0)
    first, second = urgent.enter(), urgent.enter()
    answer = asyncio.create_task(urgent.quiet())
    await asyncio.sleep(0)
    first()
    first()  # released twice (its task's end and its cancellation): counted off once
    await asyncio.sleep(0)
    assert urgent.count == 1 and not answer.done()
    second()
    await asyncio.wait_for(answer, 60)
    assert urgent.count == 0
    held = urgent.enter()
    urgent.close()  # stopping: nothing waits from now on
    await asyncio.wait_for(urgent.quiet(), 60)
    held()
    urgent.reopen()
    assert urgent.count == 0


async def test_answers_wait_until_the_bursts_on_commands_are_published(world: World) -> None:
    # Both starts are stored; u2's relay "on" is stuck at the bus (a slow publish). The answers (on no
    # relay's way) wait for it rather than compete with it, then both are written; the relays end on,
    # one session each, no money moved.
    world.add_site(A)
    world.add_plug(MAC, A)
    world.add_plug(MAC2, A)
    world.user("u1", 1000)
    world.user("u2", 2000)
    hub = await world.start_hub()
    await world.run(30)
    hub.sessions.urgent.max_wait_s = 120.0
    bus = hub.commands.bus
    stuck = asyncio.Event()
    waiting: list[bytes] = []

    class SlowBus:  # fault injection on the bus seam: u2's plug's "on" waits until released
        def __getattr__(self, name: str) -> object:
            return getattr(bus, name)

        async def publish(self, topic: str, data: bytes, attributes: dict[str, str] | None = None) -> str:
            if MAC2.encode() in data:
                waiting.append(data)
                await stuck.wait()
            return await bus.publish(topic, data, attributes)

    hub.commands.bus = SlowBus()  # type: ignore[assignment]
    burst = asyncio.gather(
        hub.requests.handle_async(pending(world, "r1", START, MAC, "u1")),
        hub.requests.handle_async(pending(world, "r2", START, MAC2, "u2")),
    )
    await until(lambda: bool(waiting), "u2's on to reach the bus")

    def u1_on() -> bool:
        world.obey()
        return world.plugs[MAC].relay

    await until(u1_on, "u1's relay on")
    first, second = hub.plugs[MAC].state.session, hub.plugs[MAC2].state.session
    assert first is not None and second is not None
    assert world.store.get_session(second.session_id) is not None  # stored: only its "on" is late
    await world.settle()
    for rid in ("r1", "r2"):
        answer = world.store.get_request(rid)
        assert answer is not None and answer.status == PENDING, rid
    assert world.plugs[MAC2].relay is False and hub.sessions.urgent.count >= 1
    stuck.set()
    await asyncio.wait_for(burst, 60)
    await hub.sessions.starts_done()
    await world.settle()
    world.obey()
    for rid, sess in (("r1", first), ("r2", second)):
        answer = world.store.get_request(rid)
        assert answer is not None and answer.status == ACCEPTED and answer.session_id == sess.session_id
    assert [c.session_id for c in ons(world, MAC2)] == [second.session_id] and world.plugs[MAC2].relay
    assert (world.balance("u1"), world.balance("u2")) == (1000, 2000)
    assert world.debits("u1") == [] and world.debits("u2") == []
    assert hub.sessions.urgent.count == 0
