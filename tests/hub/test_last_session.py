"""How long a plug keeps the id of the session it last ended, and what that id protects.

A restart resumes the sessions the store still has ACTIVE onto their plugs. A session whose finish is
not yet written is such a session even though its plug ended it: the plug's ``last_session_id`` makes
the machine refuse to start it again (no relay on, no second bill). Once the finish is written the store
has it COMPLETED and nothing can resume it, so the hub forgets the id (100k plugs that have charged
would otherwise each keep a session id string).
"""

from __future__ import annotations

from hostile import World
from test_hostile_inputs import MAC, charging

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.hub.registry import SAMPLES

A = "site-a"


async def test_an_ended_sessions_id_is_kept_until_its_finish_is_written_and_guards_it_till_then(
    world: World,
) -> None:
    world.add_site(A)
    world.add_plug(MAC, A)
    world.user("u1", 1000)
    hub = await world.start_hub()
    sid = await charging(world)
    real_finish = world.store.finish_session
    refusing = {"on": True}

    def down(session: codec.ChargeSession, debit: codec.LedgerEntry | None) -> bool:
        if refusing["on"]:
            raise StoreError("injected: store unavailable")
        return real_finish(session, debit)

    world.store.finish_session = down  # type: ignore[method-assign]
    await world.stop_session("stop", MAC)
    await world.run(30)
    plug = hub.plugs[MAC]
    assert plug.state.session is None and sid in hub.sessions.pending  # ended, not written yet
    assert plug.last_session_id == sid
    # Meanwhile the store still has it ACTIVE: resumed onto the plug (what a restart does), it is refused,
    # the relay stays off and nothing more is billed.
    tariff = hub.tariff_for(A)
    commands = len(world.all_commands())
    effects = hub._apply(
        plug, m.StartRequest(sid, "u1", tariff, 1000, "r1", start_counter_mwh=0, started_at_ms=1)
    )
    assert effects == () and plug.state.session is None
    assert world.all_commands()[commands:] == [] and world.plugs[MAC].relay is False
    # The store is back: the finish is written once, and the plug forgets the id.
    refusing["on"] = False
    await world.run(30)
    assert sid not in hub.sessions.pending and [e.entry_id for e in world.debits("u1")] == [sid]
    doc = world.store.get_session(sid)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED
    assert plug.last_session_id == "" and plug.row not in SAMPLES.last_session
    assert world.balance("u1") == 1000 - doc.cost.amount_minor
    # A later session on the plug starts as before.
    answer = await world.start_session("r2", MAC)
    assert answer.status == codec.ChargeRequest.STATUS_ACCEPTED and plug.state.session is not None
