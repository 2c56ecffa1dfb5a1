"""Firestore bills per write: a steady charging session costs a handful of writes per transition and none
per reading. Counted on the real Firestore store (emulator) behind a counting proxy."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from test_service import SITE, Rig

from chargectl.common import codec
from chargectl.services.adapters.firestore_store import FirestoreStore
from chargectl.services.payments.ledger import Ledger

WRITES = {
    "put_user",
    "append_ledger",
    "add_request",
    "answer_request",
    "put_session",
    "put_plug_state",
    "put_site",
    "mark_event",
    "bind_plug",
    "finish_session",
}


class CountingStore:
    """Forwards to the real store and counts document writes by method (checkpoints counted apart)."""

    def __init__(self, inner: FirestoreStore) -> None:
        self.inner = inner
        self.writes: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in WRITES or name == "save_checkpoint":

            def counted(*args: Any, **kw: Any) -> Any:
                self.writes[name] = self.writes.get(name, 0) + 1
                return attr(*args, **kw)

            return counted
        return attr


@pytest.mark.integration
async def test_an_hour_of_steady_charging_costs_a_handful_of_writes(
    tmp_path: Path, firestore_env: object
) -> None:
    rig = Rig(tmp_path)
    store = CountingStore(FirestoreStore(project=f"w-{uuid.uuid4().hex[:8]}"))
    store.inner.put_site(rig.store.get_site(SITE))  # type: ignore[arg-type]
    store.inner.put_user(codec.UserAccount(user_id="u1", currency="gbp"))  # the hub acts for accounts only
    rig.store = store  # type: ignore[assignment]
    hub = await rig.start_hub()  # plug_state_min_interval_s=0; plug_state_settle_s at its default (5 s)
    Ledger(store.inner).post("evt_topup", "u1", "topup", 10_000, "gbp", now_ms=1)
    await rig.readings(60, 0)
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await hub.poll_requests()
    await rig.settle()
    rig.obey()
    store.writes.clear()
    before = hub.metrics.value("readings_total")
    await rig.readings(3600, 1800.0)  # one hour of steady charging: 720 readings
    readings = hub.metrics.value("readings_total") - before
    assert readings == 720
    doc_writes = sum(n for name, n in store.writes.items() if name in WRITES)
    transitions = hub.metrics.value("transitions_total", to="CHARGING")
    assert transitions == 1  # AUTHORIZED -> CHARGING, once
    # two transitions in this hour (AVAILABLE -> AUTHORIZED -> CHARGING) but one document: AUTHORIZED
    # folds into CHARGING, which is written once it has held 5 s; nothing per reading; the only other
    # write is the hub's own (per-hub, not per-plug) checkpoint
    assert store.writes.get("put_plug_state", 0) == 1
    assert doc_writes == 1
    assert set(store.writes) <= {"put_plug_state", "save_checkpoint"}
    await hub.stop()
    store.inner.close()
