"""When each plug's next timer is due, so that ``Hub.tick`` steps only those machines (O(due), not O(plugs)).

A timer wheel of one-second buckets: each plug sits in the bucket of the second its earliest timer
(``machine.next_due_ms``) falls in, and is re-armed after every event its machine handles. A plug
re-armed earlier moves to the earlier bucket; the entry it leaves behind is recognised as stale (the
plug remembers its bucket) and skipped. A plug stepped a little early is simply re-armed: stepping a
``Tick`` when nothing is due changes nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from types import EllipsisType
from typing import TYPE_CHECKING

from chargectl.services.hub import machine as m

if TYPE_CHECKING:
    from chargectl.services.hub.registry import HubPlug

__all__ = ["TimerWheel"]


class TimerWheel:
    def __init__(self) -> None:
        # second -> (the same second, the MACs armed for it): plugs share the key's int object.
        self._buckets: dict[int, tuple[int, list[str]]] = {}
        self._seconds: list[int] = []  # heap of the seconds that have a bucket

    def __len__(self) -> int:
        return sum(len(b) for _, b in self._buckets.values())

    def arm(self, plug: HubPlug, now_ms: int, due: int | EllipsisType | None = ...) -> None:
        """Put ``plug`` in the bucket of its next due time (not before ``now_ms + 1``): ``due`` when the
        caller has it (``machine.step_run_due``), else worked out here."""
        if due is ...:
            due = m.next_due_ms(plug)  # the entry is its own state (``plug.state is plug``)
        if due is None:
            return  # an earlier entry, if any, fires and re-arms; a Tick then changes nothing
        second = max(due, now_ms + 1) // 1000
        armed = plug.armed_s
        if armed is not None and armed <= second:
            return  # already in an earlier (or the same) bucket: it fires first and re-arms
        entry = self._buckets.get(second)
        if entry is None:
            entry = self._buckets[second] = (second, [])
            heapq.heappush(self._seconds, second)
        second, bucket = entry
        bucket.append(plug.mac)
        plug.armed_s = second

    def due(self, plugs: Mapping[str, HubPlug], now_ms: int) -> list[HubPlug]:
        """Take out every plug whose bucket's second has begun by ``now_ms`` (the caller steps and re-arms)."""
        now_s = now_ms // 1000
        out: list[HubPlug] = []
        seconds = self._seconds
        while seconds and seconds[0] <= now_s:
            second = heapq.heappop(seconds)
            for mac in self._buckets.pop(second)[1]:
                plug = plugs.get(mac)
                if plug is None or plug.armed_s != second:
                    continue  # gone, or re-armed to an earlier bucket that has already fired
                plug.armed_s = None
                out.append(plug)
        return out
