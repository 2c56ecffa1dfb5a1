"""The hub's local stop journal (services/hub/stops.py).

The hostile case: the store is down when the car stops, so the stop reason cannot be written to the
session document; the hub is killed before the store comes back. The restarted hub loads a checkpoint
from before the stop, and the store still says ACTIVE with no stop reason. Without the journal it
resumed the session and switched the relay on, so whoever plugged in next charged on the leaving
driver's money. With it, the session is closed, billed once for what the plug metered, and the relay
stays off for the next car.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from hostile import World
from test_stop_path_off_loop import MAC, drawn_cost, one_plug_charging, serving_hub, until, world  # noqa: F401

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.hub.stops import StopJournal

DOWN = ("get_session", "put_session", "finish_session", "save_checkpoint")


class StoreDown:
    """Fault injection at our own seam: the session, checkpoint and plug-state calls fail."""

    def __init__(self, w: World) -> None:
        self.store = w.store
        self.saved = {name: getattr(self.store, name) for name in DOWN}

    def __enter__(self) -> None:
        def down(*_a: object, **_k: object) -> None:
            raise StoreError("injected: the store is down")

        for name in DOWN:
            setattr(self.store, name, down)

    def __exit__(self, *_exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(self.store, name, fn)


async def test_a_stop_the_store_never_heard_of_is_not_resumed_after_a_kill(world: World) -> None:  # noqa: F811
    w = world
    hub, metered = await one_plug_charging(w)
    hub.checkpoint()  # the last checkpoint: CHARGING, relay on
    await w.run(60)
    sess = hub.plugs[MAC].state.session
    assert sess is not None
    sid = sess.session_id
    with StoreDown(w):
        w.plugs[MAC].power_w = 0.0  # the car is full and leaves
        while hub.plugs[MAC].state.status is not m.Status.FINISHING:
            await w.run(5)
        await w.run(30)
        assert w.plugs[MAC].relay is False  # the agent executed the "off"
        cost = drawn_cost(w, MAC, metered)
        assert sid in hub.sessions.pending  # finished, but neither its note nor its finish was written
        # Killed: its tasks die with it (the note never reached the store), nothing is closed or flushed.
        for task in list(hub.sessions._finishes):
            task.cancel()
        await asyncio.sleep(0)
        hub.requests.close()
        w.hub = None
    doc = w.store.get_session(sid)
    assert doc is not None and doc.status == codec.ChargeSession.STATUS_ACTIVE and not doc.stop_reason

    hub2 = await serving_hub(w)  # the store is back; the checkpoint predates the stop
    w.plugs[MAC].power_w = 1800.0  # the next car plugs in
    relay_on = []
    for _ in range(12 * 30):  # 30 minutes
        await w.run(5)
        relay_on.append(w.plugs[MAC].relay)
        if hub2.plugs[MAC].state.session is None and not hub2.sessions.pending:
            break
    await until(lambda: not hub2.sessions.pending, "the finish written")
    assert not any(relay_on)  # the next car never charged on the leaving driver's money
    (session,) = w.store.list_sessions()
    assert session.session_id == sid and session.status == codec.ChargeSession.STATUS_COMPLETED
    debits = [e.amount_minor for e in w.ledger.history("u1") if e.kind == "session_debit"]
    assert debits == [-cost]  # once, for what the plug metered before the stop
    assert StopJournal(w.stops_path).stops == {}  # the finish written, the journal forgets it
    await hub2.stop()


def test_the_journal_survives_a_torn_line_and_forgets_finished_sessions(tmp_path: Path) -> None:
    path = tmp_path / "stops.log"
    j = StopJournal(path)
    assert j.record("s1", "EVDisconnected") and j.record("s2", "Local")
    j.done("s1")
    with path.open("ab") as f:
        f.write(b"s3-torn-mid-wri")  # a kill mid-append: no tab, no newline
    again = StopJournal(path)
    assert again.stops == {"s2": "Local"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again.keep_only(set())
    assert StopJournal(path).stops == {}


def test_many_stops_compact_the_file(tmp_path: Path) -> None:
    path = tmp_path / "stops.log"
    j = StopJournal(path)
    for i in range(400):
        j.record(f"s{i}", "EVDisconnected")
        if i != 399:
            j.done(f"s{i}")
    j.close()
    assert StopJournal(path).stops == {"s399": "EVDisconnected"}
    assert len(path.read_text().splitlines()) < 300  # rewritten with the live entries, not 799 lines


def test_a_full_disk_loses_the_journal_entry_but_never_raises(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    j = StopJournal(tmp_path / "stops.log")

    def full(_fd: int, _data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert j.record("s1", "Local") is False
    assert j.errors == 1 and j.reason("s1") == ""


async def test_a_journal_the_disk_refuses_never_holds_up_a_stop_or_its_bill(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hub's disk is full: every journal append fails. The stop still switches the relay off, the
    session is billed once for what the plug metered, and the failures are counted."""
    w = world
    hub, metered = await one_plug_charging(w)

    def full(_self: StopJournal, _line: str) -> bool:
        _self.errors += 1
        return False

    monkeypatch.setattr(StopJournal, "_append", full)
    await w.stop_session("s1", MAC)
    await w.run(60)
    await until(lambda: not hub.sessions.pending, "the finish written")
    assert w.plugs[MAC].relay is False
    assert [-d.amount.amount_minor for d in w.debits("u1")] == [drawn_cost(w, MAC, metered)]
    assert hub.metrics.value("stop_journal_errors") >= 1
    await hub.stop()
