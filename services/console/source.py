"""What the console reads, behind one small protocol, and its one implementation over a running hub.

The console never touches the hub's internals anywhere else: after the hub is restructured only
:class:`HubSource` needs adapting. Durable facts (sessions, plug names, other shards' plugs) come from
the store, charts from the time series, and only what is live (power, relay, state, the open
session's progress) from the hub's plug map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from chargectl.common import codec
from chargectl.common.alerts import Alert
from chargectl.gen.v1 import common_pb2
from chargectl.services.adapters.timeseries import PowerPoint
from chargectl.services.hub.billing import Cost, Tariff

if TYPE_CHECKING:
    from chargectl.services.hub.service import Hub

__all__ = ["ConsoleSource", "HubSource", "LiveSession", "PlugRow"]


@dataclass(frozen=True, slots=True)
class LiveSession:
    """An open session's progress as the hub sees it now."""

    session_id: str
    user_id: str
    started_at_ms: int
    energy_mwh: int
    idle_ms: int
    cost: Cost
    currency: str
    provisional: bool = False


@dataclass(frozen=True, slots=True)
class PlugRow:
    mac: str
    site_id: str
    name: str
    plug_class: str
    state: str  # the machine's status name (AVAILABLE, CHARGING, …)
    reason: str
    relay_on: bool | None  # None: not known yet
    power_w: float
    last_seen_ms: int  # the newest reading's time; 0: never
    session: LiveSession | None = None
    live: bool = True  # False: only the store's mirror (a plug another hub shard runs)


class ConsoleSource(Protocol):
    def now_ms(self) -> int: ...

    def plugs(self) -> list[PlugRow]:
        """Every plug, by site then MAC."""
        ...

    def site_names(self) -> dict[str, str]: ...

    def sessions(
        self,
        active_only: bool = False,
        limit: int = 100,
        user_id: str | None = None,
        plug_mac: str | None = None,
    ) -> list[codec.ChargeSession]:
        """Newest first."""
        ...

    def session(self, session_id: str) -> codec.ChargeSession | None: ...

    def live_session(self, session_id: str) -> tuple[str, LiveSession] | None:
        """(plug MAC, progress) of an open session the hub runs, else None."""
        ...

    def tariff_for(self, site_id: str) -> Tariff: ...

    def alerts(self) -> list[Alert]: ...

    def plug_power(self, mac: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]: ...

    def site_power(self, site_id: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]: ...


_DOC_STATUS = {int(v): str(k).removeprefix("PLUG_STATUS_") for k, v in codec.PlugStatus.items()}
_DOC_CLASS = {int(v): str(k).removeprefix("PLUG_CLASS_").lower() for k, v in common_pb2.PlugClass.items()}


class HubSource:
    """A :class:`ConsoleSource` over a :class:`~chargectl.services.hub.service.Hub` in this process."""

    def __init__(self, hub: Hub, mirror_ttl_s: float = 30.0) -> None:
        self.hub = hub
        self.mirror_ttl_s = mirror_ttl_s  # plug documents change rarely: read them at most this often
        self._mirror: dict[str, codec.PlugState] = {}
        self._mirror_at: float | None = None

    def _mirrored(self) -> dict[str, codec.PlugState]:
        mono = self.hub.clock.monotonic()
        if self._mirror_at is None or mono - self._mirror_at >= self.mirror_ttl_s:
            self._mirror = {p.plug_mac: p for p in self.hub.store.list_plug_states()}
            self._mirror_at = mono
        return self._mirror

    def now_ms(self) -> int:
        return round(self.hub.clock.now() * 1000)

    def _live(self, mac: str) -> LiveSession | None:
        plug = self.hub.plugs.get(mac)
        sess = plug.state.session if plug is not None else None
        if sess is None:
            return None
        return LiveSession(
            sess.session_id,
            sess.user_id,
            sess.started_at_ms,
            sess.energy_mwh,
            sess.idle_ms,
            sess.cost(),
            sess.tariff.currency,
            sess.provisional,
        )

    def plugs(self) -> list[PlugRow]:
        mirrored = dict(self._mirrored())
        rows: list[PlugRow] = []
        for mac, plug in self.hub.plugs.items():
            doc = mirrored.pop(mac, None)
            s = plug.state
            rows.append(
                PlugRow(
                    mac=mac,
                    site_id=plug.site_id,
                    name=doc.name if doc is not None else "",
                    plug_class=self.hub.settings.plug_class(mac),
                    state=str(s.status),
                    reason=s.reason,
                    relay_on=s.relay_on,
                    power_w=s.power_w,
                    last_seen_ms=s.last_ts_ms or 0,
                    session=self._live(mac),
                )
            )
        for mac, doc in mirrored.items():
            rows.append(
                PlugRow(
                    mac=mac,
                    site_id=doc.site_id,
                    name=doc.name,
                    plug_class=_DOC_CLASS.get(doc.plug_class, "unspecified"),
                    state=_DOC_STATUS.get(doc.status, "UNSPECIFIED"),
                    reason=doc.reason,
                    relay_on=doc.relay_on,
                    power_w=doc.power_w,
                    last_seen_ms=doc.last_reading_ms,
                    live=False,
                )
            )
        rows.sort(key=lambda r: (r.site_id, r.mac))
        return rows

    def site_names(self) -> dict[str, str]:
        return {s.site_id: s.name for s in self.hub.store.list_sites()}

    def sessions(
        self,
        active_only: bool = False,
        limit: int = 100,
        user_id: str | None = None,
        plug_mac: str | None = None,
    ) -> list[codec.ChargeSession]:
        return self.hub.store.list_sessions(
            user_id=user_id, plug_mac=plug_mac, active_only=active_only, limit=limit
        )

    def session(self, session_id: str) -> codec.ChargeSession | None:
        return self.hub.store.get_session(session_id)

    def live_session(self, session_id: str) -> tuple[str, LiveSession] | None:
        for mac, plug in self.hub.plugs.items():
            sess = plug.state.session
            if sess is not None and sess.session_id == session_id:
                live = self._live(mac)
                return (mac, live) if live is not None else None
        return None

    def tariff_for(self, site_id: str) -> Tariff:
        return self.hub.tariff_for(site_id)

    def alerts(self) -> list[Alert]:
        return self.hub.alerts.open_alerts()

    def plug_power(self, mac: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]:
        return self.hub.ports.timeseries.plug_power(mac, since_ms, until_ms, step_ms)

    def site_power(self, site_id: str, since_ms: int, until_ms: int, step_ms: int) -> list[PowerPoint]:
        return self.hub.ports.timeseries.site_power(site_id, since_ms, until_ms, step_ms)
