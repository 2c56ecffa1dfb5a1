"""A hub restarted with no checkpoint knows its plugs' bindings before it hears the plugs.

A start for a bound plug it has not heard yet is refused ``plug_offline`` (try again), not
``unknown_plug`` (a wrong QR code), and moves no money and no relay; once the plug reports, the same
driver's start is accepted. A plug nobody has bound is still ``unknown_plug``."""

from __future__ import annotations

from hostile import World
from test_stop_path_off_loop import MAC, MAC2, world  # noqa: F401  (world: the fixture)

from chargectl.common import codec

A = "site-a"
REJECTED = codec.ChargeRequest.STATUS_REJECTED
ACCEPTED = codec.ChargeRequest.STATUS_ACCEPTED


async def test_a_bound_plug_not_heard_yet_is_offline_not_unknown(world: World) -> None:  # noqa: F811
    w = world
    w.add_site(A)
    w.add_plug(MAC, A)
    w.user("u1", 100_000)
    w.store.bind_plug(MAC, A, w.now_ms())  # bound by the hub before the restart; no checkpoint kept
    await w.start_hub()

    refused = await w.start_session("r1", MAC)
    assert (refused.status, refused.reason) == (REJECTED, "plug_offline")
    unknown = await w.start_session("r2", MAC2)  # nobody has bound it
    assert (unknown.status, unknown.reason) == (REJECTED, "unknown_plug")
    assert w.store.list_sessions() == [] and w.debits("u1") == [] and w.all_commands() == []
    assert w.balance("u1") == 100_000

    await w.run(30)  # the plug reports
    answer = await w.start_session("r3", MAC)
    assert answer.status == ACCEPTED and w.plugs[MAC].relay is True
