"""Group commit: blocking calls made at once from several threads go to the store as one round trip.

A caller hands in one item and blocks until its own result. With nothing in flight, the caller sends its
item at once (no waiting to fill a group). Items that arrive while a group is in flight queue up, and the
next caller in the queue sends all of them together as soon as that group is answered, so a burst of N
calls costs about two round trips instead of N waiting on each other at the store. Each item gets its own
result or its own exception; the callers' threads do the work (no thread of its own, nothing to stop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result


class _Slot(Generic[I, R]):
    __slots__ = ("done", "error", "item", "lead", "result")

    def __init__(self, item: I) -> None:
        self.item = item
        self.done = threading.Event()  # answered, or asked to lead the next group
        self.lead = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[I, R]):
    """``run(items)`` returns one result or exception per item, in order (it must not raise: a group that
    failed as a whole returns the exception for each item, or falls back to one call per item)."""

    def __init__(self, run: Callable[[Sequence[I]], Sequence[R | BaseException]], max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._run = run
        self._max = max_items
        self._lock = threading.Lock()
        self._queue: list[_Slot[I, R]] = []
        self._busy = False  # a group is in flight
        self.groups = 0  # groups sent (for tests and metrics)

    def call(self, item: I) -> R:
        slot: _Slot[I, R] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.done.wait()
            lead = slot.lead
        if lead:
            self._send()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _send(self) -> None:
        """Send the queue's first ``max_items`` (this caller's among them), answer them, then hand the
        lead to the first caller still queued (or free the group)."""
        with self._lock:
            group, self._queue = self._queue[: self._max], self._queue[self._max :]
            self.groups += 1
        try:
            results: Sequence[R | BaseException] = self._run([s.item for s in group])
            if len(results) != len(group):
                raise RuntimeError(f"a group of {len(group)} got {len(results)} results")
        except BaseException as exc:  # a bug in run: every caller of the group sees it, none hangs
            results = [exc] * len(group)
        finally:
            with self._lock:
                nxt = self._queue[0] if self._queue else None
                if nxt is None:
                    self._busy = False
                else:
                    nxt.lead = True
        for slot, res in zip(group, results, strict=True):
            if isinstance(res, BaseException):
                slot.error = res
            else:
                slot.result = res
            slot.done.set()
        if nxt is not None:
            nxt.done.set()
