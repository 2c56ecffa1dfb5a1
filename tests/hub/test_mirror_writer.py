"""The serving hub writes plug-state documents and its periodic checkpoints on its writer thread: a store
that hangs on those writes does not hold the tick (relay commands, sessions go on), a failed write is
written again, and stopping the hub drains what is queued."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

from test_service import MAC, Rig

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub.mirror import STATUS_DOC
from chargectl.services.hub.service import Hub
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


async def _until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_periodic_checkpoint_is_written_off_the_loop_and_a_failed_one_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    gate, entered = threading.Event(), threading.Event()
    failures = [1]
    real_save = rig.store.save_checkpoint

    def save_checkpoint(name: str, blob: bytes) -> None:  # fault injection at our store seam
        entered.set()
        assert gate.wait(60), "the test never released the store"
        if failures[0] > 0:
            failures[0] -= 1
            raise StoreError("injected: the store is down")
        real_save(name, blob)

    rig.store.save_checkpoint = save_checkpoint  # type: ignore[method-assign]
    hub = await rig.start_hub(checkpoint_interval_s=60)
    hub.start_writer()
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    hub.credit_arrived("u1")
    await rig.readings(30, 0)
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(120, 1800.0)  # a periodic checkpoint fell due and hangs in the store
    assert entered.wait(60)
    await rig.readings(600, 1800.0)  # ticks, readings and commands go on meanwhile; no second one starts
    assert rig.relay is True and str(hub.plugs[MAC].state.status) == "CHARGING"
    assert hub.metrics.value("checkpoints_total") == 0 and hub._checkpoint_in_flight
    gate.set()  # the hung write fails; its parts are owed and the next tick's checkpoint writes them
    await _until(lambda: not hub._checkpoint_in_flight, "the failed checkpoint to come back")
    assert hub.metrics.value("checkpoints_total") == 0
    while hub.metrics.value("checkpoints_total") < 1:
        await rig.readings(5, 1800.0)
        await _until(lambda: not hub._checkpoint_in_flight, "the checkpoint to be written")
    # A hub restarted from what is stored resumes the live session where it was at that checkpoint.
    energy = hub.plugs[MAC].state.session.energy_mwh  # type: ignore[union-attr]
    await hub.drain_writer()
    saved = Hub(hub.settings, hub.ports, rig.clock)
    saved._load_checkpoint()
    resumed = saved.plugs[MAC].state
    assert (
        resumed.session is not None and resumed.session.session_id == hub.plugs[MAC].state.session.session_id
    )  # type: ignore[union-attr]
    assert 0 < resumed.session.energy_mwh <= energy
    await hub.stop()
    rig.store.close()
