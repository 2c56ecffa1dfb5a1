"""A signed-in user acting on someone else's plug, through the hub's public surface: the charge request
documents the firestore rules let any user create (their own name, any plug). Each test asserts the
money (ledger, sessions) and the relay (commands published, the plug's relay)."""

from __future__ import annotations

import pytest
from hostile import World

from chargectl.common import codec
from chargectl.services.hub import machine as m

A = "site-a"
MAC = "AABBCCDDEEFF"
START = codec.ChargeRequest.ACTION_START
STOP = codec.ChargeRequest.ACTION_STOP
ACCEPTED = codec.ChargeRequest.STATUS_ACCEPTED
REJECTED = codec.ChargeRequest.STATUS_REJECTED


async def test_another_user_can_neither_stop_nor_take_over_a_live_session(world: World) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("alice", 1000)
    world.user("mallory", 1000)
    hub = await world.start_hub()
    await world.run(30, macs=[MAC])
    world.plugs[MAC].power_w = 1800.0
    started = await world.start_session("r-alice", MAC, "alice")
    assert started.status == ACCEPTED, started.reason
    await world.run(60, macs=[MAC])
    assert hub.plugs[MAC].state.status is m.Status.CHARGING
    commands_before = len(world.all_commands())

    # Mallory stops Alice's session: refused, nothing switched, Alice still charging.
    await world.stop_session("r-mallory-stop", MAC, "mallory")
    stop = world.store.get_request("r-mallory-stop")
    assert stop is not None and (stop.status, stop.reason) == (REJECTED, "not_session_owner")
    # Mallory starts on Alice's busy plug: refused, no session of hers, no command.
    take = await world.start_session("r-mallory-start", MAC, "mallory")
    assert (take.status, take.reason) == (REJECTED, "plug_busy")
    assert take.session_id != started.session_id  # nothing of Alice's is written into Mallory's request
    assert len(world.all_commands()) == commands_before
    assert world.plugs[MAC].relay is True
    await world.run(30, macs=[MAC])
    session = hub.plugs[MAC].state.session
    assert hub.plugs[MAC].state.status is m.Status.CHARGING
    assert session is not None and session.user_id == "alice" and session.session_id == started.session_id

    # Alice's own stop ends it; she pays for exactly what her car drew, Mallory pays nothing.
    await world.stop_session("r-alice-stop", MAC, "alice")
    await world.run(60, macs=[MAC])
    doc = world.store.get_session(started.session_id)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert doc.user_id == "alice"
    # 90 s at 1.8 kW = 45,000 mWh; at 30p/kWh 1.35p, billed 1p (the total is rounded half up).
    assert doc.energy_mwh == 45_000 and doc.cost.amount_minor == 1
    assert world.balance("alice") == 999
    assert world.balance("mallory") == 1000 and world.debits("mallory") == []
    assert world.store.list_sessions(user_id="mallory") == []
    assert world.plugs[MAC].relay is False


@pytest.mark.parametrize(
    "plug",
    [
        "AABBCCDDEEFF\x00",  # a control character after a real MAC
        "ＡＡＢＢＣＣＤＤＥＥＦＦ",  # fullwidth look-alikes
        "AABBCCDDEEFF ",
        "../AABBCCDDEEFF",
        "sess-0123456789abcdef",  # an id from another collection
        "alice",
        "",
    ],
    ids=["nul", "fullwidth", "trailing space", "path", "session id", "user id", "empty"],
)
async def test_a_request_naming_no_real_plug_moves_no_money_and_no_relay(world: World, plug: str) -> None:
    """The rules let a signed-in user write any string (1-64 characters) as the plug: none of these names
    the real plug, whatever a lenient parser might make of it."""
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("mallory", 1000)
    hub = await world.start_hub()
    await world.run(30, macs=[MAC])
    for rid, action in (("r-start", START), ("r-stop", STOP)):
        world.request(rid, action, plug, user="mallory")
        await hub.poll_requests()
        await world.settle()
        answer = world.store.get_request(rid)
        assert answer is not None and answer.status == REJECTED, (plug, answer)
    assert world.all_commands() == [] and world.plugs[MAC].relay is False
    assert world.balance("mallory") == 1000 and world.store.list_sessions(user_id="mallory") == []
    assert hub.plugs[MAC].state.status is m.Status.AVAILABLE
