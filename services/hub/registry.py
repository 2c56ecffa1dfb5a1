"""Which site owns which plug: the binding the hub trusts before any reading reaches a machine.

A plug is bound to one site: the site that first reports it, or the one an operator assigns
(``chargectl plugs assign``). Readings and command results naming a plug bound to another site are
refused (``foreign_plug``) and never move the plug. A site introduces at most
``max_new_plugs_per_batch`` new plugs per batch and owns at most ``max_plugs_per_site``
(``plug_limit``). Bindings live in the store (so the CLI can move a plug) and are cached here; the
cache is re-read with the site list.
"""

from __future__ import annotations

import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from chargectl.services.adapters.store import Store
from chargectl.services.hub import machine as m

__all__ = ["Admission", "HubPlug", "PlugRefusal", "PlugRegistry", "Samples"]


_NONE = -(1 << 63)  # a column's "no value yet" (the bounds let no reading carry a negative value)


class Samples:
    """The values of each plug's latest sample (time, counter, uptime, power) in columns, one row per
    plug: 8 bytes each instead of an int or float object of 24-32 bytes per value per plug. Rows are
    handed out to the hub's plug entries and given back when an entry goes."""

    __slots__ = ("_free", "counter_mwh", "power_w", "ts_ms", "uptime_s")

    def __init__(self) -> None:
        self.ts_ms = array("q")
        self.counter_mwh = array("q")
        self.uptime_s = array("q")
        self.power_w = array("d")
        self._free: list[int] = []

    def take(self) -> int:
        if self._free:
            return self._free.pop()
        self.ts_ms.append(_NONE)
        self.counter_mwh.append(_NONE)
        self.uptime_s.append(_NONE)
        self.power_w.append(0.0)
        return len(self.ts_ms) - 1

    def give_back(self, row: int) -> None:
        self._free.append(row)

    def __len__(self) -> int:
        return len(self.ts_ms) - len(self._free)


STANDALONE = Samples()  # the rows of plug entries made outside a hub's registry (tests, tools)


class HubPlug(m.MachineState):
    """One plug in the hub's memory: its machine state itself (one object per plug, not a wrapper and
    a state: 100k of them) and the hub's own slots for it, starting with the site it is bound to.

    ``plug.state`` is the plug itself; ``plug.state = new`` takes a step's new state in place (the
    machine's functions still return a new ``MachineState`` and never see the hub's slots). The latest
    sample's time, counter, uptime and power live in a row of the registry's :class:`Samples`, read and
    written through properties of the same names."""

    __slots__ = ("armed_s", "mark", "mirror_due_ms", "mirrored_ms", "row", "samples", "site_id")

    site_id: str
    mirrored_ms: int  # when its plug-state document was last written (0: never)
    armed_s: int | None  # the timer-wheel second this plug is armed for (services/hub/timers.py)
    # Its plug-state document's mark (services/hub/mirror.py), held here rather than in an object of its
    # own: when the mirror looks at it next (None: not marked), and for a plug whose document was written
    # before, when it was marked first and last since then and what its document says (None: unknown).
    mirror_due_ms: int | None
    mark: tuple[int, int, tuple[m.Status, str, str] | None] | None
    samples: Samples
    row: int  # its row in ``samples``

    def __init__(self, state: m.MachineState, site_id: str, samples: Samples = STANDALONE) -> None:
        self.samples = samples
        self.row = samples.take()
        self.site_id = site_id
        self.mirrored_ms = 0
        self.armed_s = None
        self.mirror_due_ms = None
        self.mark = None
        self.assign(state)

    def __del__(self) -> None:
        self.samples.give_back(self.row)

    @classmethod
    def of(cls, state: m.MachineState, site_id: str, samples: Samples = STANDALONE) -> HubPlug:
        """The hub's entry for a plug whose machine is in ``state``, bound to ``site_id``."""
        return cls(state, site_id, samples)

    @property  # the machine's slot, kept in a column for the hub's entries
    def last_ts_ms(self) -> int | None:
        v = self.samples.ts_ms[self.row]
        return None if v == _NONE else v

    @last_ts_ms.setter
    def last_ts_ms(self, value: int | None) -> None:
        self.samples.ts_ms[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def counter_mwh(self) -> int | None:
        v = self.samples.counter_mwh[self.row]
        return None if v == _NONE else v

    @counter_mwh.setter
    def counter_mwh(self, value: int | None) -> None:
        self.samples.counter_mwh[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def uptime_s(self) -> int | None:
        v = self.samples.uptime_s[self.row]
        return None if v == _NONE else v

    @uptime_s.setter
    def uptime_s(self, value: int | None) -> None:
        self.samples.uptime_s[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def power_w(self) -> float:
        return self.samples.power_w[self.row]

    @power_w.setter
    def power_w(self, value: float) -> None:
        self.samples.power_w[self.row] = value

    @property
    def state(self) -> m.MachineState:
        return self

    @state.setter
    def state(self, new: m.MachineState) -> None:
        self.assign(new)

    @property
    def dirty(self) -> bool:
        """Its plug-state document needs writing (it is marked)."""
        return self.mirror_due_ms is not None


class PlugRefusal(StrEnum):
    FOREIGN_PLUG = "foreign_plug"  # bound to another site
    PLUG_LIMIT = "plug_limit"  # too many new plugs in one batch, or the site owns too many


@dataclass
class Admission:
    """The outcome of one batch's plugs: the admitted MACs and the refused ones with their reason."""

    admitted: set[str] = field(default_factory=set)
    refused: dict[str, PlugRefusal] = field(default_factory=dict)
    bound: list[str] = field(default_factory=list)  # plugs this batch introduced


class PlugRegistry:
    """The plug bindings (MAC -> site), most of them held by the hub's plug entries themselves.

    A plug with an entry in the hub's map (``plugs``) is bound to its entry's ``site_id``, so 100k
    bindings cost no map of their own (38 B a plug at 100k plugs). Only what an entry cannot say is kept
    apart: ``_away``, the bindings of plugs with no entry or whose entry names another site (an operator
    assigned it elsewhere and the hub has not moved the entry yet), and ``_unbound``, the entries whose
    plug is bound to no site (released, or restored from a checkpoint before the store was asked)."""

    def __init__(
        self,
        store: Store,
        max_new_per_batch: int,
        max_per_site: int,
        plugs: Mapping[str, HubPlug] | None = None,
    ) -> None:
        self.store = store
        self.max_new_per_batch = max_new_per_batch
        self.max_per_site = max_per_site
        self.plugs: Mapping[str, HubPlug] = {} if plugs is None else plugs  # the hub's plug map
        self.samples = Samples()  # the latest-sample columns of the hub's plug entries
        self._away: dict[str, str] = {}
        self._unbound: set[str] = set()
        self._per_site: Counter[str] = Counter()

    @property
    def bindings(self) -> dict[str, str]:
        """Every binding, MAC -> site (built on demand: for tools and tests, not the reading path)."""
        out = {mac: plug.site_id for mac, plug in self.plugs.items() if mac not in self._unbound}
        out.update(self._away)
        return out

    def refresh(self) -> dict[str, str]:
        """Re-read the bindings from the store; returns the plugs whose site changed (MAC -> new site).

        A binding an entry holds keys on nothing new; the others key on the MAC strings read before (or
        the entry's), not the store's fresh copies: the hub keeps one string per MAC."""
        same: dict[str, str] = {mac: mac for mac in self._away}
        plugs = self.plugs
        fresh = {mac: sys.intern(site) for mac, site in self.store.plug_bindings().items()}
        moved: dict[str, str] = {}
        away: dict[str, str] = {}
        for mac, site in fresh.items():
            before = self.owner(mac)
            if before is not None and before != site:
                moved[mac] = site
            plug = plugs.get(mac)
            if plug is None:
                away[same.get(mac, mac)] = site
            elif plug.site_id != site:
                away[plug.mac] = site
        self._away = away
        self._unbound = {mac for mac in plugs if mac not in fresh}
        self._per_site = Counter(fresh.values())
        return moved

    def owner(self, mac: str) -> str | None:
        owner = self._away.get(mac)
        if owner is not None:
            return owner
        plug = self.plugs.get(mac)
        if plug is None or (self._unbound and mac in self._unbound):
            return None
        return plug.site_id

    def entered(self, plug: HubPlug) -> None:
        """The hub made an entry for ``plug.mac``: its binding is held by the entry from now on when they
        agree; a plug bound to no site yet stays unbound (the hub binds it, :meth:`bind`)."""
        mac = plug.mac
        owner = self._away.get(mac)
        if owner is None:
            self._unbound.add(mac)
        elif owner == plug.site_id:
            del self._away[mac]

    def settle(self, plug: HubPlug) -> None:
        """The hub set ``plug.site_id`` to its binding: the entry holds it, nothing apart."""
        if self._away.get(plug.mac) == plug.site_id:
            del self._away[plug.mac]

    def bind(self, mac: str, site_id: str, now_ms: int) -> str:
        """Bind a plug the store may not know yet (create-if-absent); returns its owner."""
        owner = self.owner(mac)
        if owner is not None:
            return owner
        # Interned: 100k bindings share a few hundred site-id strings instead of one copy per plug.
        owner = sys.intern(self.store.bind_plug(mac, site_id, now_ms))
        self._per_site[owner] += 1
        plug = self.plugs.get(mac)
        self._unbound.discard(mac)
        if plug is None or plug.site_id != owner:
            self._away[mac] = owner
        return owner

    def admit(self, site_id: str, macs: Iterable[str], now_ms: int) -> Admission:
        out = Admission()
        away, plugs, unbound = self._away, self.plugs, self._unbound
        for mac in macs:
            owner = away.get(mac)  # self.owner(mac), inline: once per plug of every batch
            if owner is None:
                plug = plugs.get(mac)
                if plug is not None and not (unbound and mac in unbound):
                    owner = plug.site_id
            if owner is None:
                if len(out.bound) >= self.max_new_per_batch or self._per_site[site_id] >= self.max_per_site:
                    out.refused[mac] = PlugRefusal.PLUG_LIMIT
                    continue
                owner = self.bind(mac, site_id, now_ms)
                if owner == site_id:
                    out.bound.append(mac)
            if owner == site_id:
                out.admitted.add(mac)
            else:
                out.refused[mac] = PlugRefusal.FOREIGN_PLUG
        return out
