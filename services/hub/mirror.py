"""The plug-state documents the hub mirrors to the store: on status changes only, never per reading.

Which plugs a flush looks at: only those marked since their last write (:meth:`Mirror.mark`, called
where the hub applies a machine's status change, binds a plug or moves it to another site), never every
plug. When a marked plug is written:

- A status a user or an operator must see at once is written on the next flush: FAULTED, UNAVAILABLE
  (an operator took the plug out of service) and SUSPENDED_EVSE (out of credit: the user tops up).
- The transitional states fold into the one that follows: AUTHORIZED into CHARGING (the user's
  answer is in the request document already), FINISHING into AVAILABLE. Each lasts until the plug's
  next telemetry (the agent flushes every 30 s), so it is written only if it has held for
  ``plug_state_transitional_s`` (60 s: a car that does not draw, a relay that does not answer).
- Any other change is written once it has held for ``plug_state_settle_s``. A plug that is back where
  its document says before then writes nothing. A plug that keeps changing is still written once it
  has been waiting ``max(plug_state_min_interval_s, 3 × plug_state_settle_s,
  plug_state_transitional_s)``. ``plug_state_settle_s = 0`` writes every change (transitional ones
  too) on the next flush.
- Whatever the reason, a plug's document is written at most once per ``plug_state_min_interval_s``
  (later changes are coalesced into the next write).

The one mapping from the machine's :class:`~chargectl.services.hub.machine.Status` and the plug classes
to the contract enums lives here, derived from the proto enum names.
"""

from __future__ import annotations

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

__all__ = ["IMMEDIATE", "PLUG_CLASS_DOC", "STATUS_DOC", "Mirror", "plug_state_doc"]

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


@dataclass(slots=True)
class _Pending:
    plug: HubPlug
    first_ms: int  # marked first since its last write
    changed_ms: int  # marked last
    written: Shown | None  # what its document says (None: unknown, e.g. a new plug or a new site)


class Mirror:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        plug_class: Callable[[str], str],
        min_gap_s: float,
        settle_s: float = 0.0,
        transitional_s: float = 0.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.plug_class = plug_class
        self.min_gap_ms = min_gap_s * 1000
        self.settle_ms = settle_s * 1000
        self.transitional_ms = max(self.settle_ms, transitional_s * 1000) if settle_s else 0.0
        self.bound_ms = max(self.min_gap_ms, SETTLE_BOUND_FACTOR * self.settle_ms, self.transitional_ms)
        self.pending: dict[str, _Pending] = {}  # MAC -> a plug whose document may need writing

    def mark(self, plug: HubPlug, now_ms: int, was: m.Status | None = None) -> None:
        """``plug`` changed (its status from ``was``, or its site or binding when ``was`` is None)."""
        plug.dirty = True
        entry = self.pending.get(plug.state.mac)
        if entry is None:
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
            self.pending[plug.state.mac] = _Pending(plug, now_ms, now_ms, written)
        else:
            entry.plug = plug
            entry.changed_ms = now_ms
            if was is None:
                entry.written = None  # the site or binding changed: write whatever it shows

    def flush(self, now_ms: int) -> int:
        """Write the marked plugs that are due (see the module docstring); returns how many were written."""
        written = 0
        for mac, entry in list(self.pending.items()):
            plug = entry.plug
            if now_ms - plug.mirrored_ms < self.min_gap_ms:
                continue
            status = plug.state.status
            if status not in IMMEDIATE and self.settle_ms:
                wait = self.transitional_ms if status in TRANSITIONAL else self.settle_ms
                held = now_ms - entry.changed_ms >= wait
                if not held and now_ms - entry.first_ms < self.bound_ms:
                    continue
                if held and entry.written is not None and entry.written == _shown(plug):
                    del self.pending[mac]  # back to what its document says: nothing to write
                    plug.dirty = False
                    self.metrics.inc("plug_state_folded_total")
                    continue
            self.store.put_plug_state(plug_state_doc(plug, self.plug_class(plug.state.mac), now_ms))
            del self.pending[mac]
            plug.dirty = False
            plug.mirrored_ms = now_ms
            self.metrics.inc("plug_state_writes_total")
            written += 1
        return written
