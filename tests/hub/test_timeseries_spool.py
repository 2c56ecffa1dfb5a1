"""The hub's time series survives a stop or a crash while InfluxDB is down: points not yet written wait
in a bounded on-disk queue under the state dir and are written by the next run."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile import World

from chargectl.services.adapters.influx_sink import InfluxSettings, InfluxSink

A, MAC = "site-a", "AABBCCDDEEFF"


class Backend:
    """An InfluxDB stand-in that is down until told otherwise and records what it was sent."""

    def __init__(self, up: bool = False) -> None:
        self.up = up
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def write(self, lines: list[str]) -> None:
        with self.lock:
            if not self.up:
                raise ConnectionError("connection refused")
            self.lines.extend(lines)


def _settings(**kw: object) -> InfluxSettings:
    base: dict[str, object] = {
        "batch_lines": 50,
        "max_pending_lines": 500,
        "flush_interval_s": 0.01,
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
    }
    base.update(kw)
    return InfluxSettings(**base)  # type: ignore[arg-type]


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def spooled(spool: Path) -> int:
    f = spool / InfluxSink.SPOOL_FILE
    return len(f.read_text().splitlines()) if f.exists() else 0


async def test_a_billed_session_reaches_influx_after_a_crash_while_it_was_down(tmp_path: Path) -> None:
    w = World(tmp_path)
    spool = tmp_path / "state" / "influx-spool"
    down = Backend(up=False)
    sink = InfluxSink(_settings(), writer=down.write, spool_dir=spool)
    try:
        w.add_site(A)
        w.add_plug(MAC, A)
        w.user("u1", 1000)
        hub = await w.start_hub()
        hub.ports.timeseries = sink
        await w.run(30)
        w.plugs[MAC].power_w = 1800.0
        answer = await w.start_session("r1", MAC)
        await w.run(60)
        await w.stop_session("stop", MAC)
        await w.run(60)
        session = w.store.get_session(answer.session_id)
        assert session is not None and session.cost.amount_minor == 1  # 30 Wh at 30p/kWh, rounded
        pending = sink.stats().pending
        assert pending > 0 and down.lines == []
        wait_for("every point on disk", lambda: spooled(spool) == sink.stats().pending)
        # the hub process dies here: what is on disk is all that is left of the queue
        crashed = tmp_path / "after-crash"
        shutil.copytree(spool, crashed)
    finally:
        sink.close(timeout_s=0.2)
        w.close()
    up = Backend(up=True)
    sink2 = InfluxSink(_settings(), writer=up.write, spool_dir=crashed)
    try:
        assert sink2.flush(timeout_s=30)
        finished = [ln for ln in up.lines if ln.startswith("session,") and "kind=finished" in ln]
        assert len(finished) == 1 and f'session_id="{answer.session_id}"' in finished[0]
        assert "cost_minor=1i" in finished[0]
        assert len(up.lines) == pending
        wait_for("the written spool to be removed", lambda: spooled(crashed) == 0)
    finally:
        sink2.close()


def test_closing_while_down_keeps_points_on_disk_for_the_next_start(tmp_path: Path) -> None:
    spool = tmp_path / "influx-spool"
    sink = InfluxSink(_settings(), writer=Backend(up=False).write, spool_dir=spool)
    lines = [f"m v={i}i {i}" for i in range(120)]
    sink.add_lines(lines)
    sink.close(timeout_s=0.2)
    assert sink.stats().dropped == 0 and spooled(spool) >= 120
    up = Backend(up=True)
    sink2 = InfluxSink(_settings(), writer=up.write, spool_dir=spool)
    try:
        assert sink2.flush(timeout_s=30)
        assert sorted(set(up.lines)) == sorted(lines)  # nothing lost (a repeat would be harmless)
    finally:
        sink2.close()
    assert spooled(spool) == 0


def test_the_spool_is_bounded_and_drops_the_oldest_with_a_count(tmp_path: Path) -> None:
    spool = tmp_path / "influx-spool"
    spool.mkdir()
    (spool / InfluxSink.SPOOL_FILE).write_text("".join(f"m v={i}i {i}\n" for i in range(800)))
    up = Backend(up=False)
    sink = InfluxSink(_settings(max_pending_lines=500), writer=up.write, spool_dir=spool)
    try:
        assert sink.stats().dropped == 300 and sink.stats().pending == 500
        up.up = True
        assert sink.flush(timeout_s=30)
        assert up.lines[0] == "m v=300i 300" and up.lines[-1] == "m v=799i 799"
    finally:
        sink.close()


@pytest.mark.parametrize("n", [0, 1])
def test_no_spool_file_when_nothing_is_pending(tmp_path: Path, n: int) -> None:
    spool = tmp_path / "influx-spool"
    up = Backend(up=True)
    sink = InfluxSink(_settings(), writer=up.write, spool_dir=spool)
    sink.add_lines([f"m v={i}i {i}" for i in range(n)])
    assert sink.flush(timeout_s=30)
    sink.close()
    assert not (spool / InfluxSink.SPOOL_FILE).exists() and len(up.lines) == n
