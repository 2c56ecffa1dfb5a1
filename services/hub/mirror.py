"""The plug-state documents the hub mirrors to the store: on transitions only, at most once per plug per
``plug_state_min_interval_s`` (later changes are coalesced), never per reading.

The one mapping from the machine's :class:`~chargectl.services.hub.machine.Status` and the plug classes
to the contract enums lives here, derived from the proto enum names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from chargectl.common import codec
from chargectl.gen.v1 import common_pb2
from chargectl.services.adapters.store import Store
from chargectl.services.hub import machine as m
from chargectl.services.hub.health import Metrics

if TYPE_CHECKING:
    from chargectl.services.hub.registry import HubPlug

__all__ = ["PLUG_CLASS_DOC", "STATUS_DOC", "Mirror", "plug_state_doc"]

STATUS_DOC: dict[m.Status, int] = {s: codec.PlugStatus.Value(f"PLUG_STATUS_{s.name}") for s in m.Status}
PLUG_CLASS_DOC: dict[str, int] = {
    name.removeprefix("PLUG_CLASS_").lower(): value
    for name, value in common_pb2.PlugClass.items()
    if name != "PLUG_CLASS_UNSPECIFIED"
}


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


class Mirror:
    def __init__(
        self, store: Store, metrics: Metrics, plug_class: Callable[[str], str], min_gap_s: float
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.plug_class = plug_class
        self.min_gap_ms = min_gap_s * 1000

    def flush(self, plugs: Iterable[HubPlug], now_ms: int) -> None:
        """Write every changed plug whose last write is old enough."""
        for plug in plugs:
            if plug.dirty and now_ms - plug.mirrored_ms >= self.min_gap_ms:
                self.store.put_plug_state(plug_state_doc(plug, self.plug_class(plug.state.mac), now_ms))
                plug.dirty = False
                plug.mirrored_ms = now_ms
                self.metrics.inc("plug_state_writes_total")
