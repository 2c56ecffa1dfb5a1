"""The plug-state documents the hub mirrors to the store: on status changes only, never per reading.

Which plugs a flush looks at: only those marked since their last write (:meth:`Mirror.mark`, called
where the hub applies a machine's status change, binds a plug or moves it to another site), never every
plug. When a marked plug is written:

- A status a user or an operator must see at once is written on the next flush: FAULTED, UNAVAILABLE
  (an operator took the plug out of service) and SUSPENDED_EVSE (out of credit: the user tops up);
  so is a plug's first document (a new plug shows up at once).
- The transitional states fold into the one that follows: AUTHORIZED into CHARGING (the user's
  answer is in the request document already), FINISHING into AVAILABLE. Each lasts until the plug's
  next telemetry (the agent flushes every 30 s), so it is written only if it has held for
  ``plug_state_transitional_s`` (60 s: a car that does not draw, a relay that does not answer).
- A change the app does not need: a session's plug moving among CHARGING, SUSPENDED_EV and FINISHING
  (occupied before and after, same session), e.g. a car that tapers off and stops drawing. It is
  written only if the plug still differs from its document ``plug_state_detail_s`` (900 s) after it
  first did: longer than any plug class's ``complete_after_s``, so a car that is full finishes (and
  its plug is written free) without its SUSPENDED_EV ever being written, and a car that flaps between
  drawing and resting costs at most one write per ``plug_state_detail_s``.
- Any other change is written once it has held for ``plug_state_settle_s``. A plug that is back where
  its document says before then writes nothing. A plug that keeps changing is still written once it
  has been waiting ``max(plug_state_min_interval_s, 3 × plug_state_settle_s,
  plug_state_transitional_s)`` (:meth:`Mirror.shown_within_ms`: the bound in which the app sees a plug
  free, occupied or out of service). ``plug_state_settle_s = 0`` writes every change (transitional
  and detail ones too) on the next flush.
- Whatever the reason, a plug's document is written at most once per ``plug_state_min_interval_s``
  (later changes are coalesced into the next write).

Where a document is written: inline by :meth:`Mirror.flush` (tests, synchronous callers), or, once the
serving hub gives the mirror a :class:`Writer`, on that one background thread. The flush still decides
and builds each document on the event loop, from the machine state at that moment; the writer holds at
most one document per plug (a newer one replaces an older one still queued) and a bounded number of
plugs (a full queue leaves the plug pending for the next flush). A failed write is logged, counted and
handed back (``on_failed``) so the plug is marked again and written by a later flush: nothing is lost.

The one mapping from the machine's :class:`~chargectl.services.hub.machine.Status` and the plug classes
to the contract enums lives here, derived from the proto enum names.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chargectl.common import codec
from chargectl.gen.v1 import common_pb2
from chargectl.services.adapters.store import Store
from chargectl.services.hub import machine as m
from chargectl.services.hub.health import Metrics

if TYPE_CHECKING:
    from chargectl.services.hub.registry import HubPlug

__all__ = ["IMMEDIATE", "PLUG_CLASS_DOC", "STATUS_DOC", "Job", "Mirror", "Writer", "plug_state_doc"]

log = logging.getLogger("chargectl.hub.mirror")
WRITER_MAX_QUEUED = 20_000  # plugs with a document waiting for the writer thread

STATUS_DOC: dict[m.Status, int] = {s: codec.PlugStatus.Value(f"PLUG_STATUS_{s.name}") for s in m.Status}
PLUG_CLASS_DOC: dict[str, int] = {
    name.removeprefix("PLUG_CLASS_").lower(): value
    for name, value in common_pb2.PlugClass.items()
    if name != "PLUG_CLASS_UNSPECIFIED"
}
# Written on the next flush, never folded: a fault, a plug out of service, a session out of credit.
IMMEDIATE = frozenset({m.Status.FAULTED, m.Status.UNAVAILABLE, m.Status.SUSPENDED_EVSE})
TRANSITIONAL = frozenset({m.Status.AUTHORIZED, m.Status.FINISHING})  # folded into the next status
_WITH_SESSION = frozenset(
    {
        m.Status.AUTHORIZED,
        m.Status.CHARGING,
        m.Status.SUSPENDED_EV,
        m.Status.SUSPENDED_EVSE,
        m.Status.FINISHING,
    }
)
# A session's plug moving among these (same session) changes nothing the app needs: free, occupied or out
# of service, and whose session. SUSPENDED_EVSE is not among them: out of credit is shown at once, and
# so is its end (the user topped up and watches the plug resume).
DETAIL = frozenset({m.Status.CHARGING, m.Status.SUSPENDED_EV, m.Status.FINISHING})
SETTLE_BOUND_FACTOR = 3  # a plug that keeps changing waits at most this many settle times


def plug_state_doc(plug: HubPlug, plug_class: str, now_ms: int) -> codec.PlugState:
    s = plug.state
    return codec.PlugState(
        plug_mac=s.mac,
        site_id=plug.site_id,
        plug_class=PLUG_CLASS_DOC.get(plug_class, 0),  # type: ignore[arg-type]
        status=STATUS_DOC[s.status],  # type: ignore[arg-type]
        reason=s.reason,
        relay_on=bool(s.relay_on),
        power_w=s.power_w,
        energy_counter_mwh=s.counter_mwh or 0,
        session_id=s.session.session_id if s.session else "",
        updated_at_ms=now_ms,
        last_reading_ms=s.last_ts_ms or 0,
    )


Shown = tuple[m.Status, str, str]  # what a plug-state document says that matters: status, site, session


def _shown(plug: HubPlug) -> Shown:
    s = plug.state
    return (s.status, plug.site_id, s.session.session_id if s.session else "")


class Mirror:
    """The marked plugs wait in buckets by the time they may be written (a heap of those times), so a
    flush costs O(plugs due). A plug's mark is the entry's own (:class:`HubPlug`: its due time in a
    column, its first and last mark times and what its document says by row in a map): a bucket holds
    the plug, and an entry the plug has since left (marked again for an earlier time, or written) is
    recognised as stale by its ``mirror_due_ms``."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        plug_class: Callable[[str], str],
        min_gap_s: float,
        settle_s: float = 0.0,
        transitional_s: float = 0.0,
        detail_s: float = 0.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.plug_class = plug_class
        self.min_gap_ms = round(min_gap_s * 1000)
        self.settle_ms = round(settle_s * 1000)
        self.transitional_ms = max(self.settle_ms, round(transitional_s * 1000)) if settle_s else 0
        self.bound_ms = max(self.min_gap_ms, SETTLE_BOUND_FACTOR * self.settle_ms, self.transitional_ms)
        self.detail_ms = max(self.bound_ms, round(detail_s * 1000)) if settle_s and detail_s else 0
        self.pending = 0  # plugs marked and not yet written (or folded)
        self.writer: Writer | None = None  # set by the serving hub: documents are written off the loop
        self._buckets: dict[int, tuple[int, list[HubPlug]]] = {}  # due -> (the same int, its plugs)
        self._times: list[int] = []  # heap of the due times that have a bucket

    def mark(self, plug: HubPlug, now_ms: int, was: m.Status | None = None) -> None:
        """``plug`` changed (its status from ``was``, or its site or binding when ``was`` is None)."""
        if plug.mirror_due_ms is None:
            # Not pending: its document says the old status, and the session that status had (none
            # when it was AVAILABLE; the same one when it had a session and still has). Otherwise
            # unknown, and whatever it shows is written.
            written: Shown | None = None
            sess = plug.state.session
            if was is not None and plug.mirrored_ms:
                if was is m.Status.AVAILABLE:
                    written = (was, plug.site_id, "")
                elif was in _WITH_SESSION and sess is not None:
                    written = (was, plug.site_id, sess.session_id)
            # A plug never written needs no times: its first document is written at once.
            plug.mark = (now_ms, now_ms, written) if plug.mirrored_ms else None
            self.pending += 1
        else:
            mark = plug.mark
            if mark is not None:  # the site or binding changed (was None): write whatever it shows
                plug.mark = (mark[0], now_ms, mark[2] if was is not None else None)
            if self._ready(plug) >= plug.mirror_due_ms:
                return  # its bucket comes first; the flush then finds it not ready and re-queues it
        self._queue(plug, self._ready(plug))

    def shown_within_ms(self) -> int:
        """The bound after a plug's change of class (free, occupied, out of service) or of session within
        which its document shows it, once the plug keeps it (and ``plug_state_min_interval_s`` after
        its previous write); a fault, a plug taken out of service and out of credit: the next flush."""
        return max(self.bound_ms, self.min_gap_ms)

    def _detail_only(self, plug: HubPlug, written: tuple[m.Status, str, str] | None) -> bool:
        """Does marked ``plug`` differ from its document (``written``) only in what the app does not need?"""
        if not self.detail_ms or written is None or written[0] not in DETAIL:
            return False
        s = plug.state
        return (
            s.status in DETAIL
            and s.session is not None
            and written[2] == s.session.session_id
            and written[1] == plug.site_id
        )

    def _queue(self, plug: HubPlug, due: int) -> None:
        entry = self._buckets.get(due)
        if entry is None:
            entry = self._buckets[due] = (due, [])
            heapq.heappush(self._times, due)
        entry[1].append(plug)
        plug.mirror_due_ms = entry[0]

    def _ready(self, plug: HubPlug) -> int:
        """When marked ``plug`` may be written (or folded)."""
        gap_ready = plug.mirrored_ms + self.min_gap_ms
        status = plug.state.status
        mark = plug.mark
        if status in IMMEDIATE or not self.settle_ms or mark is None:
            return gap_ready  # at once: nothing to fold into (or a plug's first document)
        if self._detail_only(plug, mark[2]):
            return max(gap_ready, mark[0] + self.detail_ms)
        wait = self.transitional_ms if status in TRANSITIONAL else self.settle_ms
        return max(gap_ready, min(mark[1] + wait, mark[0] + self.bound_ms))

    def _done(self, plug: HubPlug) -> None:
        plug.mirror_due_ms = None
        plug.mark = None
        self.pending -= 1

    def flush(self, now_ms: int) -> int:
        """Write the marked plugs that are due (see the module docstring); returns how many were written."""
        written = 0
        times = self._times
        while times and times[0] <= now_ms:
            due = heapq.heappop(times)
            bucket = self._buckets.pop(due)[1]
            for i, plug in enumerate(bucket):
                try:
                    outcome = self._flush_one(plug, due, now_ms)
                except BaseException:
                    self._requeue(due, bucket[i:])  # the store failed: still pending, tried next flush
                    raise
                if outcome is None:
                    self._requeue(due, bucket[i:])  # the writer is full: still pending, next flush
                    return written
                written += outcome
        return written

    def _requeue(self, due: int, plugs: list[HubPlug]) -> None:
        for plug in plugs:
            if plug.mirror_due_ms == due:
                self._queue(plug, due)

    def _flush_one(self, plug: HubPlug, due: int, now_ms: int) -> int | None:
        """Look at one plug of a due bucket: 1 written, 0 not (stale, not ready, folded), None writer full."""
        if plug.mirror_due_ms != due:
            return 0  # written, or queued again for another time
        ready = self._ready(plug)
        if ready > now_ms:  # changed since it was queued: not yet
            self._queue(plug, ready)
            return 0
        status = plug.state.status
        mark = plug.mark
        if status not in IMMEDIATE and self.settle_ms and mark is not None and mark[2] is not None:
            wait = self.transitional_ms if status in TRANSITIONAL else self.settle_ms
            if now_ms - mark[1] >= wait and mark[2] == _shown(plug):
                self._done(plug)  # back to what its document says: nothing to write
                self.metrics.inc("plug_state_folded_total")
                return 0
        mac = plug.state.mac
        doc = plug_state_doc(plug, self.plug_class(mac), now_ms)
        writer = self.writer
        if writer is None:
            self.store.put_plug_state(doc)
            self.metrics.inc("plug_state_writes_total")
        elif not writer.submit(doc):
            self.metrics.inc("plug_state_queue_full_total", help_text="Plug states left pending: writer full")
            return None
        self._done(plug)
        plug.mirrored_ms = now_ms
        return 1

    def retry(self, plug: HubPlug, now_ms: int) -> None:
        """The writer could not store ``plug``'s document: mark it again (written by a later flush)."""
        self.mark(plug, now_ms)


@dataclass(slots=True)
class Job:
    """Other store writes the hub hands to the writer thread (the checkpoint's, encoded on the loop):
    ``run`` on the writer thread, then ``done`` there with the exception it raised (None: written)."""

    run: Callable[[], None]
    done: Callable[[BaseException | None], None]


class Writer:
    """The one thread that writes plug-state documents handed over by :meth:`Mirror.flush` (module doc),
    and the hub's other :class:`Job` writes, in the order handed over (a plug's newer document replaces
    its older one in the queue).

    ``on_failed(mac)`` is called on the writer thread after a failed write: the hub marks the plug again
    from its event loop. :meth:`drain` writes what is queued, within a deadline, and stops the thread."""

    def __init__(
        self,
        write: Callable[[codec.PlugState], None],
        metrics: Metrics,
        on_failed: Callable[[str], None],
        max_queued: int = WRITER_MAX_QUEUED,
    ) -> None:
        self._write = write
        self.metrics = metrics
        self.on_failed = on_failed
        self.max_queued = max_queued
        self._queued: dict[str, codec.PlugState | Job] = {}  # MAC -> its newest document (or key -> job)
        self._cond = threading.Condition()
        self._busy = False  # a document is being written
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="chargectl-plug-state", daemon=True)
        self._thread.start()

    def queued(self) -> int:
        with self._cond:
            return len(self._queued) + self._busy

    def submit(self, doc: codec.PlugState) -> bool:
        """Queue ``doc`` (replacing an older document of its plug); False when the queue is full."""
        mac = doc.plug_mac
        with self._cond:
            if mac in self._queued:
                del self._queued[mac]  # the newer document takes its place, at the end
                self.metrics.inc(
                    "plug_state_coalesced_total", help_text="Queued plug states replaced by newer"
                )
            elif len(self._queued) >= self.max_queued:
                return False
            self._queued[mac] = doc
            self._cond.notify_all()
        return True

    def submit_job(self, key: str, job: Job) -> bool:
        """Queue ``job`` under ``key`` (never a MAC); False when a job of that key is still queued."""
        with self._cond:
            if key in self._queued:
                return False
            self._queued[key] = job
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queued and not self._closing:
                    self._cond.wait()
                if not self._queued:
                    return  # closing, and nothing left
                mac = next(iter(self._queued))
                doc = self._queued.pop(mac)
                self._busy = True
            if isinstance(doc, Job):
                self._run_job(doc)
                continue
            try:
                self._write(doc)
            except Exception as exc:
                log.warning(
                    "writing the plug-state document of %s failed (%s); written again later", mac, exc
                )
                self.metrics.inc(
                    "plug_state_write_errors_total", help_text="Plug state writes failed (retried)"
                )
                try:
                    self.on_failed(mac)
                except Exception:
                    log.exception("cannot mark plug %s for another write", mac)
            else:
                self.metrics.inc("plug_state_writes_total")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _run_job(self, job: Job) -> None:
        error: BaseException | None = None
        try:
            job.run()
        except Exception as exc:
            error = exc
        finally:
            try:
                job.done(error)
            except Exception:
                log.exception("a store write's completion raised")
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def drain(self, timeout_s: float) -> int:
        """Write what is queued (at most ``timeout_s``), then stop the thread; returns documents not written."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._queued or self._busy) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            thread, self._thread = self._thread, None
            left_over = len(self._queued) + self._busy
            dropped = list(self._queued.values())
            self._queued.clear()  # past the deadline: the stopping hub's checkpoint still has the states
        for item in dropped:
            if isinstance(item, Job):
                item.done(TimeoutError("not written before the stop deadline"))
        if thread is not None and not left_over:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if left_over:
            log.warning("%d store write(s) not done before the stop deadline", left_over)
            self.metrics.inc(
                "plug_state_dropped_total", left_over, help_text="Store writes not done by the stop deadline"
            )
        return left_over
