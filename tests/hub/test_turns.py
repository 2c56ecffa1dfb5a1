"""Turns: one holder at a time per key (a user's requests, a user balance's finishes), keys independent,
and no lock kept for a key nobody holds or waits for."""

from __future__ import annotations

import asyncio

from chargectl.services.hub.turns import Turns


async def test_one_holder_per_key_other_keys_at_once_and_nothing_kept() -> None:
    turns: Turns[str] = Turns()
    inside: dict[str, int] = {"u1": 0, "u2": 0}
    most: dict[str, int] = {"u1": 0, "u2": 0}
    both = asyncio.Event()

    async def hold(key: str) -> None:
        async with turns.turn(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            if inside["u1"] and inside["u2"]:
                both.set()
            await asyncio.sleep(0.01)
            inside[key] -= 1

    await asyncio.gather(*(hold(k) for k in ["u1", "u2"] * 5))
    assert most == {"u1": 1, "u2": 1}  # one holder of a key at a time
    assert both.is_set()  # while the other key's holders ran
    assert len(turns) == 0


async def test_a_holder_that_fails_or_is_cancelled_releases_its_turn() -> None:
    turns: Turns[str] = Turns()

    async def fail() -> None:
        async with turns.turn("u1"):
            raise ValueError("the store refused")

    task = asyncio.ensure_future(fail())
    await asyncio.gather(task, return_exceptions=True)
    blocker = asyncio.Event()

    async def wait_forever() -> None:
        async with turns.turn("u1"):
            await blocker.wait()

    stuck = asyncio.ensure_future(wait_forever())
    await asyncio.sleep(0)
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)
    assert len(turns) == 0
    async with turns.turn("u1"):  # the key is free again
        assert len(turns) == 1
