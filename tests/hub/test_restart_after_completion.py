"""A hub killed between a stop decision (relay commanded off) and that session's finish, with the
store down when the finish falls due, restarts from a checkpoint older than the stop (or from none).

Every stop, the car's (complete, no-load) as much as a person's, writes its ``stop_reason`` marker into
the session document when the relay is commanded off, so a restart closes the session from what is
stored, bills it once and never switches that relay on again. (Leaving the marker out for the car's
stops would save a billed write per session, but a restart would then resume the session and switch
the relay on for up to the completion wait, for whoever plugs into the socket meanwhile, billed to the
driver who left.)"""

from __future__ import annotations

import pytest
from test_service import MAC, Rig, _start_session, rig  # noqa: F401  (rig: the fixture)

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.payments.ledger import Ledger

SAMPLE_MWH = 2500  # 5 s at 1.8 kW


class StoreDown:
    """Fault injection at our own seam: session writes, finish transactions and checkpoints fail."""

    def __init__(self, r: Rig) -> None:
        self.store = r.store
        self.saved = (self.store.finish_session, self.store.put_session, self.store.save_checkpoint)

    def __enter__(self) -> None:
        def down(*_a: object, **_k: object) -> None:
            raise StoreError("injected: the store is down")

        self.store.finish_session = down  # type: ignore[method-assign]
        self.store.put_session = down  # type: ignore[method-assign]
        self.store.save_checkpoint = down  # type: ignore[method-assign]

    def __exit__(self, *_exc: object) -> None:
        s = self.store
        s.finish_session, s.put_session, s.save_checkpoint = self.saved  # type: ignore[method-assign]


async def _charge_then_stop(r: Rig, checkpointed: bool, user_stop: bool) -> str:
    """Charge 260 samples (the last checkpoint after 200 of them, or before the session), then stop:
    the car stops drawing, or the user asks; returns once the agent executed the "off"."""
    hub = r.hub
    assert hub is not None
    await r.readings(30, 0)
    if not checkpointed:
        hub.checkpoint()  # the last checkpoint predates the session
    await _start_session(r, hub)
    await r.readings(1000, 1800.0)  # 200 samples
    if checkpointed:
        hub.checkpoint()  # the last checkpoint: CHARGING, relay on
    await r.readings(300, 1800.0)  # 60 more samples after it
    if user_stop:
        r.request("r2", codec.ChargeRequest.ACTION_STOP)
        await hub.poll_requests()
    while hub.plugs[MAC].state.status is not m.Status.FINISHING:
        await r.readings(5, 0.0)  # the car is full: no draw, one batch per sample
    for _ in range(3):
        await hub.tick()
        await r.settle()
        r.obey()
    assert r.relay is False  # the agent executed the "off"; no batch has carried the final reading
    sess = hub.plugs[MAC].state.session
    assert sess is not None
    return sess.session_id


async def _killed_and_restarted(r: Rig, session_id: str, store_down: bool) -> list[float]:
    """Optionally the final reading with the store down (its finish not written), then a kill (no stop,
    no checkpoint) and a new process; plays an empty socket for up to 30 minutes. Returns the hub times
    at which the relay was on after the restart."""
    if store_down:
        with StoreDown(r):
            await r.readings(60, 0.0)
        doc = r.store.get_session(session_id)
        assert doc is not None and doc.status == codec.ChargeSession.STATUS_ACTIVE
    r.hub = None
    hub2 = await r.start_hub()
    await r.settle()
    r.obey()
    on_at: list[float] = []
    for _ in range(12 * 30):
        await r.readings(5, 0.0)
        if r.relay:
            on_at.append(r.clock.now())
        if hub2.plugs[MAC].state.session is None and not hub2.sessions.pending:
            break
    await r.readings(60, 0.0)
    assert r.relay is False and hub2.plugs[MAC].state.status is m.Status.AVAILABLE
    await hub2.stop()
    return on_at


def _billed_once(r: Rig, session_id: str) -> codec.ChargeSession:
    """Billed once, for every mWh the plug counted in the session (260 charging samples), no more."""
    (s,) = r.store.list_sessions()
    assert s.session_id == session_id and s.status == codec.ChargeSession.STATUS_COMPLETED
    assert s.energy_mwh == 260 * SAMPLE_MWH
    assert s.cost.amount_minor == 20  # 0.65 kWh at 30p = 19.5p, rounded to 20 (by hand)
    debits = [p for p in Ledger(r.store).history("u1") if p.kind == "session_debit"]
    assert [d.amount_minor for d in debits] == [-20]
    assert Ledger(r.store).balance("u1") == 1000 - 20
    return s


@pytest.mark.parametrize("store_down", [False, True], ids=["killed", "store-down-then-killed"])
@pytest.mark.parametrize("checkpointed", [True, False], ids=["older-checkpoint", "no-checkpoint"])
@pytest.mark.parametrize("user_stop", [False, True], ids=["car-full", "user-stop"])
async def test_restart_between_a_stop_and_its_finish_bills_once_and_never_switches_the_relay_on(
    rig: Rig,  # noqa: F811
    store_down: bool,
    checkpointed: bool,
    user_stop: bool,
) -> None:
    await rig.start_hub()
    session_id = await _charge_then_stop(rig, checkpointed, user_stop)
    doc = rig.store.get_session(session_id)
    marker = (
        {str(m.StopReason.LOCAL)} if user_stop else {str(m.StopReason.COMPLETE), str(m.StopReason.NO_LOAD)}
    )
    assert doc is not None and doc.stop_reason in marker  # written when the relay was commanded off
    on_at = await _killed_and_restarted(rig, session_id, store_down)
    assert on_at == []  # the restarted hub closed the session: the relay stayed off
    _billed_once(rig, session_id)
