"""The serving hub writes plug-state documents on its writer thread: a store that hangs on those writes
does not hold the tick (relay commands, sessions go on), and stopping the hub drains what is queued."""

from __future__ import annotations

import threading
from pathlib import Path

from test_service import MAC, Rig

from chargectl.common import codec
from chargectl.services.hub.mirror import STATUS_DOC
from chargectl.services.payments.ledger import Ledger


async def test_a_hung_plug_state_store_holds_no_tick_and_stop_drains_the_last_state(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    gate = threading.Event()
    hung = threading.Event()
    real_put = rig.store.put_plug_state

    def put_plug_state(state: codec.PlugState) -> None:  # fault injection at our store seam
        hung.set()
        assert gate.wait(60), "the test never released the store"
        real_put(state)

    rig.store.put_plug_state = put_plug_state  # type: ignore[method-assign]
    hub = await rig.start_hub(plug_state_settle_s=0)
    hub.start_writer()
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    hub.credit_arrived("u1")
    await rig.readings(30, 0)  # the plug reports: its first document goes to the writer, which hangs
    assert hung.wait(60)
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    # Ticks, a session and its relay commands go on while the store hangs on the plug-state write.
    await rig.readings(2000, 1800.0)  # 1 kWh = 30p
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(60, 0.0)
    assert rig.relay is False
    assert Ledger(rig.store).balance("u1") == 1000 - 30
    assert rig.store.get_plug_state(MAC) is None  # nothing written yet: the store is still hung
    gate.set()
    await hub.stop()  # drains the writer
    state = rig.store.get_plug_state(MAC)
    assert state is not None and state.status == STATUS_DOC[hub.plugs[MAC].state.status]
    assert state.session_id == "" and state.relay_on is False
    rig.store.close()
