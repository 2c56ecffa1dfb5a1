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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from chargectl.services.adapters.store import Store
from chargectl.services.hub import machine as m

__all__ = ["SAMPLES", "Admission", "HubPlug", "PlugRefusal", "PlugRegistry", "Samples"]


_NONE = -(1 << 63)  # a column's "no value yet" (the bounds let no reading carry a negative value)
_NONE32 = (1 << 32) - 1  # the same in the four-byte unsigned columns


class Samples:
    """Per plug entry, the values that would otherwise be an int or float object each (24-32 B per value
    per plug): its latest sample's time, counter, uptime and power, and its debounce runs (ms the high,
    low and over-power conditions have held), in columns of 8 bytes; and what would be a slot each (8 B)
    for a few values: its flags (disabled, stale, relay, command on, command confirmed; -1 for None)
    and its status and status to resume (an index into ``Status``, -1 for None), in columns of one byte;
    its command sequence numbers and its timer-wheel second (``_NONE32`` for None) in columns of four
    (unsigned: a sequence number counts one plug's commands, and a second of hub time fits until 2106). One row
    per entry; rows are handed out to the entries and given back when an entry goes."""

    __slots__ = (
        "_free",
        "armed_s",
        "cmd_confirmed",
        "cmd_first_seq",
        "cmd_on",
        "cmd_seq",
        "counter_mwh",
        "disabled",
        "high_ms",
        "low_ms",
        "over_ms",
        "power_w",
        "relay_on",
        "resume",
        "stale",
        "status",
        "ts_ms",
        "uptime_s",
    )

    def __init__(self) -> None:
        self.ts_ms = array("q")
        self.counter_mwh = array("q")
        self.uptime_s = array("q")
        self.power_w = array("d")
        self.high_ms = array("q")
        self.low_ms = array("q")
        self.over_ms = array("q")
        self.disabled = array("b")
        self.stale = array("b")
        self.relay_on = array("b")
        self.cmd_on = array("b")
        self.cmd_confirmed = array("b")
        self.resume = array("b")
        self.status = array("b")
        self.cmd_first_seq = array("I")
        self.cmd_seq = array("I")
        self.armed_s = array("I")
        self._free: list[int] = []

    def _columns(self) -> tuple[array[int], ...]:
        """The signed integer columns (whose "no value yet" is ``_NONE`` or -1)."""
        return (
            self.ts_ms,
            self.counter_mwh,
            self.uptime_s,
            self.high_ms,
            self.low_ms,
            self.over_ms,
            self.disabled,
            self.stale,
            self.relay_on,
            self.cmd_on,
            self.cmd_confirmed,
            self.resume,
            self.status,
        )

    def take(self) -> int:
        if self._free:
            row = self._free.pop()
            self.power_w[row] = 0.0
            for col in self._columns():
                col[row] = _NONE if col.typecode == "q" else -1
            self.cmd_first_seq[row] = self.cmd_seq[row] = 0
            self.armed_s[row] = _NONE32
            return row
        for col in self._columns():
            col.append(_NONE if col.typecode == "q" else -1)
        self.power_w.append(0.0)
        self.cmd_first_seq.append(0)
        self.cmd_seq.append(0)
        self.armed_s.append(_NONE32)
        return len(self.ts_ms) - 1

    def give_back(self, row: int) -> None:
        free = self._free
        free.append(row)
        if len(free) == len(self.ts_ms):  # every entry gone (a hub torn down): the columns go too
            free.clear()
            del self.power_w[:]
            for col in (self.cmd_first_seq, self.cmd_seq, self.armed_s, *self._columns()):
                del col[:]

    def __len__(self) -> int:
        return len(self.ts_ms) - len(self._free)


# The rows of every plug entry in the process (one set of columns: no reference to them per entry).
SAMPLES = Samples()
_TS, _COUNTER, _UPTIME, _POWER = SAMPLES.ts_ms, SAMPLES.counter_mwh, SAMPLES.uptime_s, SAMPLES.power_w
_HIGH, _LOW, _OVER = SAMPLES.high_ms, SAMPLES.low_ms, SAMPLES.over_ms
_DISABLED, _STALE, _RELAY, _CMD_ON = SAMPLES.disabled, SAMPLES.stale, SAMPLES.relay_on, SAMPLES.cmd_on
_CONFIRMED, _RESUME, _STATUS = SAMPLES.cmd_confirmed, SAMPLES.resume, SAMPLES.status
_FIRST_SEQ, _SEQ, _ARMED = SAMPLES.cmd_first_seq, SAMPLES.cmd_seq, SAMPLES.armed_s
_STATUSES: tuple[m.Status, ...] = tuple(m.Status)
_STATUS_INDEX: dict[m.Status | None, int] = {None: -1} | {s: i for i, s in enumerate(_STATUSES)}
_TRI: dict[bool | None, int] = {None: -1, False: 0, True: 1}

if TYPE_CHECKING:
    _Entry = m.MachineState  # what the machine's functions see: a state
else:
    _Entry = m.StateSlots  # what it is: the state's slots, without MachineState's own (in columns here)


class HubPlug(_Entry):
    """One plug in the hub's memory: its machine state itself (one object per plug, not a wrapper and
    a state: 100k of them) and the hub's own slots for it, starting with the site it is bound to.

    ``plug.state`` is the plug itself; ``plug.state = new`` takes a step's new state in place (the
    machine's functions still return a new ``MachineState`` and never see the hub's slots). It is a
    :class:`~chargectl.services.hub.machine.StateSlots`, not a ``MachineState``: the latest sample's time,
    counter, uptime and power and the debounce runs live in a row of :data:`SAMPLES`, read and written
    through properties of the same names, and take no slot of the entry."""

    __slots__ = ("mark", "mirror_due_ms", "mirrored_ms", "row", "site_id")

    site_id: str
    mirrored_ms: int  # when its plug-state document was last written (0: never)
    # Its plug-state document's mark (services/hub/mirror.py), held here rather than in an object of its
    # own: when the mirror looks at it next (None: not marked), and for a plug whose document was written
    # before, when it was marked first and last since then and what its document says (None: unknown).
    mirror_due_ms: int | None
    mark: tuple[int, int, tuple[m.Status, str, str] | None] | None
    row: int  # its row in ``SAMPLES``

    def __init__(self, state: m.MachineState, site_id: str) -> None:
        self.row = SAMPLES.take()
        self.site_id = site_id
        self.mirrored_ms = 0
        self.mirror_due_ms = None
        self.mark = None
        self.assign(state)

    def __del__(self, _give_back: Callable[[int], None] = SAMPLES.give_back) -> None:
        _give_back(self.row)  # bound at definition: still there if the module is torn down first

    @classmethod
    def of(cls, state: m.MachineState, site_id: str) -> HubPlug:
        """The hub's entry for a plug whose machine is in ``state``, bound to ``site_id``."""
        return cls(state, site_id)

    def assign(self, other: m.MachineState) -> None:
        """Take ``other``'s machine values in place (the entry taking a step's new state): slot by slot
        and column by column, spelled out (``test_memory_layout`` checks it is complete)."""
        if other is self:
            return
        self.mac = other.mac
        self.params = other.params
        self.since_ms = other.since_ms
        self.reason = other.reason
        self.errors = other.errors
        self.cmd_at_ms = other.cmd_at_ms
        self.cmd_sent_ms = other.cmd_sent_ms
        self.session = other.session
        self.last_session_id = other.last_session_id
        row = self.row
        v = other.last_ts_ms
        _TS[row] = _NONE if v is None else v
        v = other.counter_mwh
        _COUNTER[row] = _NONE if v is None else v
        v = other.uptime_s
        _UPTIME[row] = _NONE if v is None else v
        _POWER[row] = other.power_w
        v = other.high_ms
        _HIGH[row] = _NONE if v is None else v
        v = other.low_ms
        _LOW[row] = _NONE if v is None else v
        v = other.over_ms
        _OVER[row] = _NONE if v is None else v
        _DISABLED[row] = other.disabled
        _STALE[row] = other.stale
        _RELAY[row] = _TRI[other.relay_on]
        _CMD_ON[row] = _TRI[other.cmd_on]
        _CONFIRMED[row] = other.cmd_confirmed
        _RESUME[row] = _STATUS_INDEX[other.resume]
        _STATUS[row] = _STATUS_INDEX[other.status]
        _FIRST_SEQ[row] = other.cmd_first_seq
        _SEQ[row] = other.cmd_seq

    def take_sample(
        self,
        ts_ms: int,
        power_w: float,
        counter_mwh: int,
        uptime_s: int | None,
        relay_on: bool | None,
        high_ms: int | None,
        low_ms: int | None,
    ) -> None:
        """``MachineState.take_sample``, straight into the entry's columns."""
        row = self.row
        _TS[row] = ts_ms
        _POWER[row] = power_w
        _COUNTER[row] = counter_mwh
        _UPTIME[row] = _NONE if uptime_s is None else uptime_s
        _RELAY[row] = _TRI[relay_on]
        self.errors = 0
        _STALE[row] = 0
        _HIGH[row] = _NONE if high_ms is None else high_ms
        _LOW[row] = _NONE if low_ms is None else low_ms
        _OVER[row] = _NONE

    def copy(self) -> m.MachineState:
        """A plain ``MachineState`` with the entry's machine values (not its hub slots): slot by slot and
        column by column, spelled out (every event a machine handles starts with one)."""
        new: m.MachineState = object.__new__(m.MachineState)
        new.mac = self.mac
        new.params = self.params
        new.since_ms = self.since_ms
        new.reason = self.reason
        new.errors = self.errors
        new.cmd_at_ms = self.cmd_at_ms
        new.cmd_sent_ms = self.cmd_sent_ms
        new.last_session_id = self.last_session_id
        sess = self.session
        new.session = None if sess is None else sess.copy()
        row = self.row
        v = _TS[row]
        new.last_ts_ms = None if v == _NONE else v
        v = _COUNTER[row]
        new.counter_mwh = None if v == _NONE else v
        v = _UPTIME[row]
        new.uptime_s = None if v == _NONE else v
        new.power_w = _POWER[row]
        v = _HIGH[row]
        new.high_ms = None if v == _NONE else v
        v = _LOW[row]
        new.low_ms = None if v == _NONE else v
        v = _OVER[row]
        new.over_ms = None if v == _NONE else v
        new.disabled = _DISABLED[row] == 1
        new.stale = _STALE[row] == 1
        v = _RELAY[row]
        new.relay_on = None if v < 0 else v == 1
        v = _CMD_ON[row]
        new.cmd_on = None if v < 0 else v == 1
        new.cmd_confirmed = _CONFIRMED[row] == 1
        v = _RESUME[row]
        new.resume = None if v < 0 else _STATUSES[v]
        new.status = _STATUSES[_STATUS[row]]
        new.cmd_first_seq = _FIRST_SEQ[row]
        new.cmd_seq = _SEQ[row]
        return new

    @property  # the machine's slot, kept in a column for the hub's entries
    def last_ts_ms(self) -> int | None:
        v = _TS[self.row]
        return None if v == _NONE else v

    @last_ts_ms.setter
    def last_ts_ms(self, value: int | None) -> None:
        _TS[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def counter_mwh(self) -> int | None:
        v = _COUNTER[self.row]
        return None if v == _NONE else v

    @counter_mwh.setter
    def counter_mwh(self, value: int | None) -> None:
        _COUNTER[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def uptime_s(self) -> int | None:
        v = _UPTIME[self.row]
        return None if v == _NONE else v

    @uptime_s.setter
    def uptime_s(self, value: int | None) -> None:
        _UPTIME[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def power_w(self) -> float:
        return _POWER[self.row]

    @power_w.setter
    def power_w(self, value: float) -> None:
        _POWER[self.row] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def high_ms(self) -> int | None:
        v = _HIGH[self.row]
        return None if v == _NONE else v

    @high_ms.setter
    def high_ms(self, value: int | None) -> None:
        _HIGH[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def low_ms(self) -> int | None:
        v = _LOW[self.row]
        return None if v == _NONE else v

    @low_ms.setter
    def low_ms(self, value: int | None) -> None:
        _LOW[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def over_ms(self) -> int | None:
        v = _OVER[self.row]
        return None if v == _NONE else v

    @over_ms.setter
    def over_ms(self, value: int | None) -> None:
        _OVER[self.row] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def disabled(self) -> bool:
        return _DISABLED[self.row] == 1

    @disabled.setter
    def disabled(self, value: bool) -> None:
        _DISABLED[self.row] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def stale(self) -> bool:
        return _STALE[self.row] == 1

    @stale.setter
    def stale(self, value: bool) -> None:
        _STALE[self.row] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def relay_on(self) -> bool | None:
        v = _RELAY[self.row]
        return None if v < 0 else v == 1

    @relay_on.setter
    def relay_on(self, value: bool | None) -> None:
        _RELAY[self.row] = _TRI[value]

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_on(self) -> bool | None:
        v = _CMD_ON[self.row]
        return None if v < 0 else v == 1

    @cmd_on.setter
    def cmd_on(self, value: bool | None) -> None:
        _CMD_ON[self.row] = _TRI[value]

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_confirmed(self) -> bool:
        return _CONFIRMED[self.row] == 1

    @cmd_confirmed.setter
    def cmd_confirmed(self, value: bool) -> None:
        _CONFIRMED[self.row] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def resume(self) -> m.Status | None:
        v = _RESUME[self.row]
        return None if v < 0 else _STATUSES[v]

    @resume.setter
    def resume(self, value: m.Status | None) -> None:
        _RESUME[self.row] = _STATUS_INDEX[value]

    @property  # the machine's slot, kept in a column for the hub's entries
    def status(self) -> m.Status:
        return _STATUSES[_STATUS[self.row]]

    @status.setter
    def status(self, value: m.Status) -> None:
        _STATUS[self.row] = _STATUS_INDEX[value]

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_first_seq(self) -> int:
        return _FIRST_SEQ[self.row]

    @cmd_first_seq.setter
    def cmd_first_seq(self, value: int) -> None:
        _FIRST_SEQ[self.row] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_seq(self) -> int:
        return _SEQ[self.row]

    @cmd_seq.setter
    def cmd_seq(self, value: int) -> None:
        _SEQ[self.row] = value

    @property  # the timer-wheel second this plug is armed for (services/hub/timers.py; None: not armed)
    def armed_s(self) -> int | None:
        v = _ARMED[self.row]
        return None if v == _NONE32 else v

    @armed_s.setter
    def armed_s(self, value: int | None) -> None:
        _ARMED[self.row] = _NONE32 if value is None else value

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
