"""One holder at a time per key (a user, a user's balance), for work that awaits store calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from typing import Generic, TypeVar

__all__ = ["Turns"]

K = TypeVar("K", bound=Hashable)


class Turns(Generic[K]):
    """``async with turns.turn(key)``: holders of one key take turns, other keys run at once. A key's
    lock is dropped once nobody holds or waits for it, so the map stays as small as the work in flight."""

    __slots__ = ("_turns",)

    def __init__(self) -> None:
        self._turns: dict[K, tuple[asyncio.Lock, list[int]]] = {}  # key -> (lock, [holders and waiters])

    @contextlib.asynccontextmanager
    async def turn(self, key: K) -> AsyncIterator[None]:
        lock, waiting = self._turns.setdefault(key, (asyncio.Lock(), [0]))
        waiting[0] += 1
        try:
            async with lock:
                yield
        finally:
            waiting[0] -= 1
            if waiting[0] == 0:
                del self._turns[key]

    def __len__(self) -> int:
        return len(self._turns)
