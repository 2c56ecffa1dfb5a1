"""Disk trouble: a state directory that refuses writes (ENOSPC, EIO) never stops the site or loses a reading
while the bus is up; the heartbeat names it; the agent recovers by itself when space returns.

The disk is a fault-injected writer on our own seam (``common.files.write_atomic``), which every write
of the spool, the batch sequence and the heartbeat goes through.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_agent_supervision import MACS, Site, wait_until

from chargectl.common import files
from chargectl.services.agent import check_heartbeat
from chargectl.services.agent.agent import Agent


class Disk:
    """While ``error`` is set, every atomic write under ``root`` fails with it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.error: int | None = None
        self.refused = 0
        self._real = files.write_atomic

    def write_atomic(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        if self.error is not None and self.root in path.parents:
            self.refused += 1
            raise OSError(
                self.error,
                {errno.ENOSPC: "No space left on device", errno.EIO: "Input/output error"}[self.error],
            )
        self._real(path, data, mode)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    d = Disk(tmp_path / "state")
    monkeypatch.setattr(files, "write_atomic", d.write_atomic)
    yield d


@pytest.fixture
async def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    await s.listen()
    return s


def contiguous(site: Site, mac: str) -> list[int]:
    """The plug's counter as received: the fake plug adds 10 per read, so a gap is a lost reading."""
    energies = [r.energy_mwh for r in site.readings(mac)]
    assert energies == list(range(1_000_010, 1_000_010 + 10 * len(energies), 10)), energies
    return energies


async def running(agent: Agent, body: Callable[[], object]) -> None:
    task = asyncio.create_task(agent.serve())
    try:
        await body()  # type: ignore[misc]
    finally:
        agent.stop()
        await asyncio.wait_for(task, 60)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
async def test_a_refusing_disk_loses_nothing_while_the_bus_is_up_and_heals_by_itself(
    site: Site, disk: Disk, error: int, tmp_path: Path
) -> None:
    agent = site.agent()
    beat = tmp_path / "state" / "agent.heartbeat.json"

    async def body() -> None:
        await wait_until(lambda: len(site.batches()) >= 2, "two batches")
        disk.error = error
        before = len(site.batches())
        await wait_until(lambda: len(site.batches()) >= before + 4, "four batches with the disk refusing")
        health = agent.health()
        assert "No space left" in health.disk_error or "Input/output" in health.disk_error
        assert disk.refused > 0 and health.spooled_batches == 0
        # The heartbeat still says so (rewritten in place), and `agent check` fails naming it.
        await wait_until(
            lambda: "DISK" in check_heartbeat(beat, int(time.time() * 1000), 60).message, "heartbeat"
        )
        status = check_heartbeat(beat, int(time.time() * 1000), 60)
        assert status.fresh and not status.ok and "spool" in status.problems[0]
        disk.error = None
        await wait_until(lambda: agent.health().disk_error == "", "the agent to notice the disk is back")
        after = len(site.batches())
        await wait_until(lambda: len(site.batches()) >= after + 2, "two more batches")
        await wait_until(lambda: check_heartbeat(beat, int(time.time() * 1000), 60).ok, "a clean heartbeat")

    await running(agent, body)
    for mac in MACS:
        assert len(contiguous(site, mac)) >= 6
    # Batches under the volatile epoch never reuse a (epoch, batch_seq) pair.
    keys = [(b.epoch, b.batch_seq) for b in site.batches()]
    assert len(keys) == len(set(keys)) and len({e for e, _ in keys}) == 2


async def test_disk_and_bus_down_together_hold_batches_in_memory_until_the_bus_returns(
    site: Site, disk: Disk
) -> None:
    agent = site.agent()

    async def body() -> None:
        await wait_until(lambda: len(site.batches()) >= 1, "a batch")
        disk.error = errno.ENOSPC
        site.bus.set_offline(True)
        await wait_until(lambda: agent.health().memory_batches >= 3, "three batches held in memory")
        assert agent.health().spooled_batches == 0 and not agent.health().link_up
        site.bus.set_offline(False)
        await wait_until(lambda: agent.health().memory_batches == 0, "the memory buffer to drain to the bus")
        disk.error = None
        n = len(site.batches())
        await wait_until(lambda: len(site.batches()) >= n + 2, "two more batches")

    await running(agent, body)
    for mac in MACS:
        contiguous(site, mac)
    assert agent.health().dropped_readings == 0


async def test_the_memory_buffer_is_bounded_and_counts_what_it_drops(site: Site, disk: Disk) -> None:
    agent = site.agent(memory_buffer_max_bytes=2000)

    async def body() -> None:
        disk.error = errno.ENOSPC
        site.bus.set_offline(True)
        await wait_until(lambda: agent.health().dropped_batches >= 3, "three batches dropped from memory")
        assert sum(len(b.data) for b in agent._memory) <= 2000 or len(agent._memory) == 1

    await running(agent, body)
    health = agent.health()
    assert health.dropped_readings >= 3 and health.dropped_batches >= 3
