"""Site leases: one signed message renews every live plug of a site, instead of an "on" keep-alive
per plug every ``auto_off_s / 3``.

The machine still decides when a plug's keep-alive is due. When one is, and the plug was not renewed
in the last half keep-alive interval, the site is due: at the end of the tick one lease goes out naming
every plug of the site with a live session and its relay commanded on whose keep-alive has come due
at least once (each with its own ``auto_off_s``; a plug joins with its first keep-alive, well before
the "on" that started it runs out), and all of them count as renewed. Other plugs' keep-alives falling within half an
interval of that are covered by it. A plug is therefore renewed at least every 1.5 keep-alive
intervals (``auto_off_s / 2``), and the agent re-arms each plug's own flip-back timer on every lease:
if the hub or the link dies, each plug still switches off ``auto_off_s`` after its last renewal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from chargectl.common import codec
from chargectl.services.hub import machine as m
from chargectl.services.hub.effects import CommandSender
from chargectl.services.hub.health import Metrics

if TYPE_CHECKING:
    from chargectl.services.hub.registry import HubPlug

__all__ = ["Leases", "leased"]


def leased(plug: HubPlug) -> bool:
    """Does the plug need its flip-back timer renewed (a live session, relay commanded on)?"""
    s = plug.state
    return s.session is not None and bool(s.cmd_on) and s.status in m.RELAY_ON_STATES


class Leases:
    def __init__(self, commands: CommandSender, metrics: Metrics) -> None:
        self.commands = commands
        self.metrics = metrics
        self.renewed_ms: dict[str, int] = {}  # plug MAC -> when a lease last named it
        self.due: set[str] = set()  # sites owing a lease at the end of this tick
        # Per site, the plugs whose keep-alive came due since their session started: what a lease
        # names (a plug joins with its first keep-alive, before its first "on" can run out), so a
        # flush costs the site's live plugs, not a sweep of every plug.
        self.members: dict[str, set[str]] = {}

    def keepalive(self, plug: HubPlug, fx: m.SendRelay, now_ms: int) -> None:
        """The machine's keep-alive for ``plug`` is due: covered by a recent lease, or due one."""
        self.members.setdefault(plug.site_id, set()).add(fx.mac)
        half_ms = fx.auto_off_s * 1000 / 6  # half the keep-alive interval (auto_off_s / 3)
        last = self.renewed_ms.get(fx.mac)
        if last is not None and now_ms - last < half_ms:
            self.metrics.inc("keepalives_covered_total")
            return
        self.due.add(plug.site_id)

    def flush(self, plugs: Mapping[str, HubPlug], now_ms: int) -> None:
        """Send one lease per due site, naming every member plug that still needs renewing."""
        if not self.due:
            return
        due, self.due = self.due, set()
        for site_id in sorted(due):
            members = self.members.get(site_id, set())
            entries: list[codec.LeasedPlug] = []
            for mac in sorted(members):
                plug = plugs.get(mac)
                if plug is None or plug.site_id != site_id or not leased(plug):
                    members.discard(mac)  # finished, moved or gone: never named again
                    self.renewed_ms.pop(mac, None)
                    continue
                sess = plug.state.session
                assert sess is not None
                entries.append(codec.LeasedPlug(mac, sess.session_id, plug.state.params.auto_off_s))
            if not members:
                self.members.pop(site_id, None)
            if not entries:
                continue
            self.commands.send_lease(site_id, entries)
            for entry in entries:
                self.renewed_ms[entry.plug_mac] = now_ms
