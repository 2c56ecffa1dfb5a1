"""Incremental checkpoints: a periodic checkpoint writes a rotation of parts, a delta with the plugs
changed since their part was written, and the head; a restart from parts of different ages bills every
mWh exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_service import MAC, Rig

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import checkpoint as ckpt
from chargectl.services.payments.ledger import Ledger

HEAD = "hub-0"
PART = ckpt.part_name(HEAD, ckpt.part_of(MAC))
DELTA = ckpt.delta_name(HEAD)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.store.close()


def _record_writes(rig: Rig) -> list[str]:
    names: list[str] = []
    save = rig.store.save_checkpoint

    def recording(name: str, data: bytes) -> None:
        names.append(name)
        save(name, data)

    rig.store.save_checkpoint = recording  # type: ignore[method-assign]
    return names


async def _start(rig: Rig) -> None:
    assert rig.hub is not None
    Ledger(rig.store).post("evt_topup", "u1", "topup", 5000, "gbp", now_ms=1)
    rig.hub.credit_arrived("u1")
    rig.request("r1", codec.ChargeRequest.ACTION_START)
    await rig.hub.poll_requests()
    await rig.settle()
    rig.obey()


async def test_periodic_checkpoint_writes_a_rotation_and_the_changed_plugs_only(rig: Rig) -> None:
    hub = await rig.start_hub()
    writes = _record_writes(rig)
    await rig.readings(30, 0)
    hub.checkpoint()
    assert len(writes) == ckpt.PARTS + 2 and writes[-2:] == [DELTA, HEAD]  # full: every part, delta, head
    assert hub.checkpoint_parts.changed == set()
    writes.clear()
    await _start(rig)  # AVAILABLE -> AUTHORIZED: the plug goes into the delta until its part rotates in
    assert hub.checkpoint_parts.changed == {MAC}
    hub.checkpoint(full=False)
    assert len(writes) == ckpt.ROTATE_PARTS + 2 and writes[-2:] == [DELTA, HEAD]  # not all 64 parts
    if PART not in writes:
        assert hub.checkpoint_parts.changed == {MAC}  # still owed: carried by the delta
    await rig.readings(60, 1800.0)
    writes.clear()
    hub.checkpoint(full=False)
    assert len(writes) == ckpt.ROTATE_PARTS + 2
    # Within PARTS / ROTATE_PARTS periodic checkpoints every part has been rewritten at least once.
    seen: set[str] = set(writes)
    for _ in range(ckpt.PARTS // ckpt.ROTATE_PARTS):
        writes.clear()
        hub.checkpoint(full=False)
        seen.update(writes)
    assert seen == {HEAD, DELTA} | {ckpt.part_name(HEAD, k) for k in range(ckpt.PARTS)}
    assert hub.checkpoint_parts.changed == set()  # its part rotated in: the delta no longer carries it
    await hub.stop()


async def test_restart_from_an_old_part_and_a_new_head_bills_every_mwh_once(rig: Rig) -> None:
    hub = await rig.start_hub()
    await rig.readings(30, 0)
    await _start(rig)
    await rig.readings(300, 1800.0)  # CHARGING
    hub.checkpoint(full=False)  # the plug with the open session is in the delta (it changed status)
    await rig.readings(600, 1800.0)  # counters move; the delta and the part keep older counters
    for _ in range(3):
        hub.checkpoint(full=False)  # heads newer than the plug's part
    await rig.readings(300, 1800.0)  # then a crash: no stop, no final checkpoint
    crash_counter = rig.counter
    rig.hub = None
    hub2 = await rig.start_hub()
    state = hub2.plugs[MAC].state
    assert state.session is not None and state.session.start_counter_mwh == 1_000_000
    await rig.readings(30, 1800.0)  # 6 samples x 2500 mWh
    rig.request("r2", codec.ChargeRequest.ACTION_STOP)
    await hub2.poll_requests()
    await rig.settle()
    rig.obey()
    await rig.readings(30, 0)
    (s,) = rig.store.list_sessions()
    assert s.status == codec.ChargeSession.STATUS_COMPLETED
    # every mWh the counter moved while the session was open, across the crash: none lost, none twice
    assert s.energy_mwh == crash_counter + 6 * 2500 - 1_000_000
    debits = [p for p in Ledger(rig.store).history("u1") if p.kind == "session_debit"]
    assert [d.amount_minor for d in debits] == [-s.cost.amount_minor]
    await hub2.stop()


async def test_a_version_1_checkpoint_still_loads(rig: Rig) -> None:
    hub = await rig.start_hub()
    await rig.readings(30, 0)
    await _start(rig)
    await rig.readings(60, 1800.0)
    blob = ckpt.encode(
        round(rig.clock.now() * 1000),
        {mac: (p.site_id, p.state) for mac, p in hub.plugs.items()},
        hub.ingest.to_dict(),
        hub.sessions.pending,
    )
    session_id = hub.plugs[MAC].state.session.session_id  # type: ignore[union-attr]
    rig.hub = None
    rig.store.save_checkpoint(HEAD, blob)
    hub2 = await rig.start_hub()
    restored = hub2.plugs[MAC].state.session
    assert restored is not None and restored.session_id == session_id
    await hub2.stop()


async def test_an_unreadable_part_is_refused_like_an_unreadable_checkpoint(rig: Rig) -> None:
    # A corrupt part must not start a hub that silently forgets the plugs (and open sessions) in it.
    hub = await rig.start_hub()
    await rig.readings(30, 0)
    await _start(rig)
    hub.checkpoint()
    rig.hub = None
    rig.store.save_checkpoint(PART, b"not zlib")
    with pytest.raises(StoreError, match="unreadable"):
        await rig.start_hub()


async def test_the_delta_overrides_an_older_part_on_restart(rig: Rig) -> None:
    hub = await rig.start_hub()
    await rig.readings(30, 0)
    hub.checkpoint()  # the part: AVAILABLE, no session
    await _start(rig)
    await rig.readings(60, 1800.0)
    session_id = hub.plugs[MAC].state.session.session_id  # type: ignore[union-attr]
    # Rotate parts that are not this plug's: only the delta carries its session.
    part = ckpt.part_of(MAC)
    hub.checkpoint_parts._next = (part + 1) % ckpt.PARTS
    writes = _record_writes(rig)
    hub.checkpoint(full=False)
    assert PART not in writes and DELTA in writes
    rig.hub = None
    hub2 = await rig.start_hub()
    restored = hub2.plugs[MAC].state
    assert restored.session is not None and restored.session.session_id == session_id
    assert str(restored.status) == "CHARGING"
    await hub2.stop()
