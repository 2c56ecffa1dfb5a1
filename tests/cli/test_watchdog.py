"""The hub feeds systemd's watchdog from its tick loop only: a hung tick stops the pings (and systemd
restarts the hub) even while the request loop keeps running."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from chargectl.common import sdnotify
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings


class CountingHub(Hub):
    def __init__(self, *args: object, hang_tick: bool, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.hang_tick = hang_tick
        self.polls = 0
        self.ticks = 0

    async def tick(self) -> None:
        self.ticks += 1
        if self.hang_tick:
            await asyncio.Event().wait()  # never set: the loop is stuck
        await super().tick()

    async def poll_requests(self) -> None:
        self.polls += 1
        await super().poll_requests()


def _datagrams(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.extend(sock.recv(4096).decode().splitlines())
        except BlockingIOError:
            return out


async def _serve_until(hub: CountingHub, polls: int) -> None:
    task = asyncio.create_task(hub.serve(health=False))
    deadline = asyncio.get_running_loop().time() + 60
    while hub.polls < polls:
        assert asyncio.get_running_loop().time() < deadline, "the request loop did not run"
        await asyncio.sleep(0.02)
    hub.request_stop()
    await asyncio.wait_for(task, 60)


def _hub(tmp_path: Path, hang_tick: bool) -> CountingHub:
    settings = HubSettings(tick_interval_s=0.01, request_poll_s=0.01, request_watch=False)
    ports = HubPorts(
        MemoryBus(), SqliteStore(tmp_path / "hub.db"), SqliteTimeSeries(tmp_path / "ts.db"), lambda s, n: None
    )  # type: ignore[arg-type,return-value]
    return CountingHub(settings, ports, hang_tick=hang_tick)


async def test_a_hung_tick_loop_starves_the_watchdog(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.setblocking(False)
    sdnotify.configure(str(tmp_path / "notify.sock"))
    sdnotify.WATCHDOG_MIN_INTERVAL_S, saved = 0.0, sdnotify.WATCHDOG_MIN_INTERVAL_S
    try:
        healthy = _hub(tmp_path / "a", hang_tick=False)
        await _serve_until(healthy, polls=20)
        got = _datagrams(listener)
        assert got[0] == "READY=1" and "WATCHDOG=1" in got

        hung = _hub(tmp_path / "b", hang_tick=True)
        await _serve_until(hung, polls=20)
        got = _datagrams(listener)
        assert hung.ticks == 1 and hung.polls >= 20
        assert got == ["READY=1"], "a hub whose tick hangs must not tell systemd it is alive"
    finally:
        sdnotify.WATCHDOG_MIN_INTERVAL_S = saved
        sdnotify.configure(None)
        listener.close()
