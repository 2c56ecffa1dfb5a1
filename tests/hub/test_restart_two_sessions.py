"""A hub killed during a plug's second session, restarted from a checkpoint that still holds the first.

The checkpoint was written while the first session was live; that session was then stopped, billed and
completed, and the same driver started a second one, which was charging when the hub was killed. While
the hub was down the driver asked to stop. The restart must not bill or announce the first session
again, must resume the second only as far as its stop, and must switch the relay off for good: the
driver who asked to stop pays for what the plug metered until then, once, and nobody after.
"""

from __future__ import annotations

import asyncio
from decimal import ROUND_HALF_UP, Decimal

from hostile import World
from test_stop_path_off_loop import (  # noqa: F401  (world: the fixture)
    MAC,
    PRICE,
    charge,
    one_plug_charging,
    serving_hub,
    until,
    world,
)

from chargectl.common import codec
from chargectl.services.hub import machine as m

STOP = codec.ChargeRequest.ACTION_STOP


def cost_by_hand(mwh: int) -> int:
    """mWh at PRICE minor units per kWh, rounded half up (the tariff's rule)."""
    return int((Decimal(mwh) * PRICE / 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def kill(w: World) -> None:
    """SIGKILL: the hub's tasks die with it; nothing is flushed, checkpointed or closed."""
    hub = w.hub
    assert hub is not None
    for task in list(hub.sessions._finishes):
        task.cancel()
    hub.requests.close()
    w.hub = None


async def test_a_stop_asked_while_the_hub_was_down_stops_the_resumed_session(world: World) -> None:  # noqa: F811
    w = world
    hub, metered1 = await one_plug_charging(w)  # session 1 charging for 10 minutes
    hub.checkpoint()  # the last checkpoint: session 1 live
    await w.stop_session("s1", MAC)
    await w.run(60)
    await until(lambda: not hub.sessions.pending, "session 1 billed")
    [first] = w.debits("u1")
    cost1 = cost_by_hand(w.plugs[MAC].counter - metered1)  # what the plug metered in session 1
    assert -first.amount.amount_minor == cost1

    metered2 = await charge(w, MAC, "r2")  # session 2, started after the checkpoint
    sess = hub.plugs[MAC].state.session
    assert sess is not None
    sid2 = sess.session_id
    kill(w)
    await asyncio.sleep(0)
    w.request("s2", STOP, MAC)  # the driver asks to stop while the hub is down

    hub2 = await serving_hub(w)
    relay_at_end = []
    for _ in range(12 * 30):  # 30 minutes of a car that would draw all along
        await w.run(5)
        await hub2.poll_requests()
        relay_at_end.append(w.plugs[MAC].relay)
        if hub2.plugs[MAC].state.session is None and not hub2.sessions.pending and not hub2._recover:
            break
    await w.run(60)
    await until(lambda: not hub2.sessions.pending, "session 2 billed")
    assert w.plugs[MAC].relay is False
    assert hub2.plugs[MAC].state.status is not m.Status.CHARGING

    answer = w.store.get_request("s2")
    assert answer is not None and answer.status == codec.ChargeRequest.STATUS_ACCEPTED
    assert answer.session_id == sid2  # the stop reached the session it was for
    docs = {s.session_id: s for s in w.store.list_sessions()}
    assert docs[sid2].status == codec.ChargeSession.STATUS_COMPLETED
    # Everything the plug metered since session 2 started was session 2's (the relay went off at the
    # restart and stayed off): billed once, by hand at 3 per Wh; session 1 not billed a second time.
    assert docs[sid2].energy_mwh == w.plugs[MAC].counter - metered2
    assert sorted(-d.amount.amount_minor for d in w.debits("u1")) == sorted(
        [cost1, cost_by_hand(w.plugs[MAC].counter - metered2)]
    )
    assert (
        hub2.metrics.value("sessions_finished_total", stop_reason="Remote") == 0
    )  # session 1 not re-announced
