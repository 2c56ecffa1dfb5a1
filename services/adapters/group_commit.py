"""Group commit: blocking calls made at once from several threads go to the store as one round trip.

A caller hands in one item and blocks until its own result. While fewer than ``lanes`` groups are in
flight, a caller sends its item at once (no waiting to fill a group). Items that arrive while every lane
is busy queue up, and the first lane to be answered sends the queued items together (its next caller in
the queue leads them), so a burst of N calls costs about two round trips instead of N waiting on each
other at the store; and one call that hangs holds up no other (the other lanes go on). Each item gets
its own result or its own exception; the callers' threads do the work (no thread of its own, nothing to
stop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result


class _Slot(Generic[I, R]):
    __slots__ = ("done", "error", "group", "item", "result")

    def __init__(self, item: I) -> None:
        self.item = item
        self.done = threading.Event()  # answered, or handed a group to send
        self.group: list[_Slot[I, R]] | None = None  # the group this caller is to send
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[I, R]):
    """``run(items)`` returns one result or exception per item, in order (a group that failed as a whole
    returns an exception for each item, or falls back to one call per item; if it raises, every caller
    of the group gets that exception)."""

    def __init__(
        self, run: Callable[[Sequence[I]], Sequence[R | BaseException]], max_items: int, lanes: int = 4
    ) -> None:
        if max_items < 1 or lanes < 1:
            raise ValueError("max_items and lanes must be at least 1")
        self._run = run
        self._max = max_items
        self._lanes = lanes
        self._lock = threading.Lock()
        self._queue: list[_Slot[I, R]] = []  # waiting for a lane (only while every lane is busy)
        self._in_flight = 0  # groups being sent
        self.groups = 0  # groups sent (for tests and metrics)

    def call(self, item: I) -> R:
        slot: _Slot[I, R] = _Slot(item)
        with self._lock:
            if self._in_flight < self._lanes:
                self._in_flight += 1
                slot.group = [slot]
            else:
                self._queue.append(slot)
        if slot.group is None:
            slot.done.wait()
        if slot.group is not None:
            group, slot.group = slot.group, None
            self._send(group)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _send(self, group: list[_Slot[I, R]]) -> None:
        """Send ``group``, then hand this lane the queue's next group (or free it), then answer."""
        with self._lock:
            self.groups += 1
        try:
            results: Sequence[R | BaseException] = self._run([s.item for s in group])
            if len(results) != len(group):
                raise RuntimeError(f"a group of {len(group)} got {len(results)} results")
        except BaseException as exc:  # a bug in run: every caller of the group sees it, none hangs
            results = [exc] * len(group)
        finally:
            with self._lock:
                nxt, self._queue = self._queue[: self._max], self._queue[self._max :]
                if not nxt:
                    self._in_flight -= 1
        for slot, res in zip(group, results, strict=True):
            if isinstance(res, BaseException):
                slot.error = res
            else:
                slot.result = res
            slot.done.set()
        if nxt:
            nxt[0].group = nxt
            nxt[0].done.set()
