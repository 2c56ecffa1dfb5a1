"""The serving hub's garbage-collector tuning, as long-lived Python servers do it.

A hub holds every plug's machine in memory: at 100k plugs, millions of tracked objects that live as long
as the process. CPython's cyclic collector walks all of them in each full (oldest-generation) pass: in
the benchmark's running window at 100k plugs the collector took 3.6 s of the hub's 21 s of CPU. Almost
none of what it walks is garbage: the hub's own state is freed by reference counting.

So, while the hub serves, :class:`GcTuning`:

- after start-up (checkpoint and plug map loaded) runs one full collection and then ``gc.freeze()``:
  what survived moves to the permanent generation, which the automatic passes skip;
- every ``interval_s`` (from :meth:`maybe_refresh`, called by the tick) collects again and freezes
  what survived. A collection after a freeze walks only what is not frozen (what the hub allocated
  since), so most of these are light: one collection over the new objects, then ``gc.freeze()``
  (a few ms at 100k plugs). Every ``full_every``-th (default 6: once an hour at the default 600 s) is
  the full pass: ``gc.unfreeze()``, one collection over everything, ``gc.freeze()`` (0.2-0.7 s of the
  hub's loop at 100k plugs, during which a request waits). Cycles that became garbage after they were
  frozen are reclaimed there, so nothing frozen leaks for longer than ``full_every × interval_s``; a
  cycle never frozen goes at the next refresh at the latest. Each pass's CPU time is
  ``last_refresh_s`` (logged at debug), the last full one's ``last_full_s``;
- raises the youngest generation's threshold from Python's 700 to ``gen0_threshold`` (10,000 by
  default): a hub allocates a few objects per plug chunk, and at 700 the young passes (and the older
  passes they trigger every tenth and hundredth time) ran thousands of times a minute at 100k plugs,
  each promoting live chunk objects towards the full passes. The collector stays enabled: the young
  generations are still collected automatically, so short-lived cycles (exceptions with
  tracebacks, asyncio futures) go as before, a little later.

:meth:`restore` undoes the freeze and the threshold when the last hub tuning the process stops.
``interval_s`` 0 is Python's own behaviour (nothing is frozen, thresholds untouched).
"""

from __future__ import annotations

import gc
import time

__all__ = ["GcTuning"]

_holders = 0  # hubs of this process whose tuning is applied (the freeze is process-wide)
_saved_threshold: tuple[int, ...] = ()  # the thresholds before the first hub tuned them
FULL_EVERY = 6  # refreshes per full (unfreezing) pass: the bound on a frozen cycle's life, in intervals


class GcTuning:
    """``[hub] gc_freeze_interval_s`` applied to this process (see the module docstring)."""

    def __init__(self, interval_s: float, gen0_threshold: int = 10_000, full_every: int = FULL_EVERY) -> None:
        if interval_s < 0:
            raise ValueError("gc_freeze_interval_s must be >= 0")
        if gen0_threshold < 1:
            raise ValueError("gc_gen0_threshold must be >= 1")
        if full_every < 1:
            raise ValueError("full_every must be >= 1")
        self.interval_s = interval_s
        self.gen0_threshold = gen0_threshold
        self.full_every = full_every
        self.applied = False
        self.refreshes = 0
        self.full_refreshes = 0
        self.last_refresh_s = 0.0  # CPU time of the last collect-and-freeze
        self.last_full_s = 0.0  # ... of the last full one (unfreeze first)
        self._last_mono = 0.0
        self._last_light_s = 0.0

    @property
    def reclaim_bound_s(self) -> float:
        """A cycle that became garbage after it was frozen is reclaimed within this long."""
        return self.full_every * self.interval_s

    @property
    def mean_refresh_s(self) -> float:
        """CPU per refresh, one full pass and the light ones up to the next averaged (the last full pass
        alone until a light one has run)."""
        if not self.full_refreshes or self.refreshes == self.full_refreshes:
            return self.last_full_s
        return (self.last_full_s + (self.full_every - 1) * self._last_light_s) / self.full_every

    def apply(self, mono: float) -> None:
        """Collect once and freeze the survivors (call after the plug map and checkpoint are loaded)."""
        global _holders, _saved_threshold
        if self.interval_s == 0 or self.applied:
            return
        self.applied = True
        if _holders == 0:
            _saved_threshold = gc.get_threshold()
        _holders += 1
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(self.gen0_threshold, older, oldest)
        self._refresh(mono)

    def maybe_refresh(self, mono: float) -> bool:
        """Collect and freeze again (light, or full every ``full_every``-th time) if ``interval_s`` passed
        since the last time."""
        if not self.applied or mono - self._last_mono < self.interval_s:
            return False
        self._refresh(mono)
        return True

    def _refresh(self, mono: float) -> None:
        """The first refresh and every ``full_every``-th after it is full, the others light."""
        full = self.refreshes % self.full_every == 0
        t0 = time.process_time()
        if full:
            gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.last_refresh_s = time.process_time() - t0
        if full:
            self.last_full_s = self.last_refresh_s
            self.full_refreshes += 1
        else:
            self._last_light_s = self.last_refresh_s
        self.refreshes += 1
        self._last_mono = mono

    def restore(self) -> None:
        """Back to Python's behaviour once no hub of the process keeps the tuning."""
        global _holders
        if not self.applied:
            return
        self.applied = False
        _holders -= 1
        if _holders == 0:
            gc.unfreeze()
            gc.set_threshold(*_saved_threshold)
