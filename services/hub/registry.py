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
from typing import TYPE_CHECKING, Any

from chargectl.services.adapters.store import Store
from chargectl.services.hub import machine as m
from chargectl.services.hub.params import PlugParams

__all__ = ["SAMPLES", "Admission", "HubPlug", "PlugRefusal", "PlugRegistry", "Samples"]


_NONE = -(1 << 63)  # a column's "no value yet" (the bounds let no reading carry a negative value)
_NONE32 = (1 << 32) - 1  # the same in the four-byte unsigned columns

# A plug-state document's mark (services/hub/mirror.py): when it was marked first and last since its
# last write, and what that document says (None: unknown).
Mark = tuple[int, int, tuple[m.Status, str, str] | None]


class Samples:
    """Per plug entry, the values that would otherwise be an int or float object each (24-32 B per value
    per plug): its latest sample's time, counter, uptime and power, its debounce runs (ms the high, low
    and over-power conditions have held), when its status was entered, its relay command's first and
    last send, when its plug-state document was written and is next due, in columns of 8 bytes; and
    what would be a slot each (8 B) for a few values: its flags (disabled, stale, relay, command on,
    command confirmed; -1 for None) and its status and status to resume (an index into ``Status``, -1
    for None), in columns of one byte; its status reason (an index into a table of the distinct
    reasons) in a column of two; its device flags, its command sequence numbers and its timer-wheel
    second (``_NONE32`` for None) in columns of four (unsigned: the flags are the wire's uint32, a
    sequence number counts one plug's commands, and a second of hub time fits until 2106). One row per
    entry; rows are handed out to the entries and given back when an entry goes.

    Two values most plugs do not have are kept by row in maps, not in a column or slot each: the id of
    the session a plug last ended (``last_session``) and its plug-state document's mark (``marks``)."""

    __slots__ = (
        "_free",
        "armed_s",
        "cmd_at_ms",
        "cmd_confirmed",
        "cmd_first_seq",
        "cmd_on",
        "cmd_sent_ms",
        "cmd_seq",
        "counter_mwh",
        "disabled",
        "errors",
        "high_ms",
        "last_session",
        "low_ms",
        "macs",
        "marks",
        "mirror_due_ms",
        "mirrored_ms",
        "over_ms",
        "power_w",
        "profile",
        "reason",
        "relay_on",
        "resume",
        "sessions",
        "since_ms",
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
        self.mirror_due_ms = array("q")
        self.disabled = array("b")
        self.stale = array("b")
        self.relay_on = array("b")
        self.cmd_on = array("b")
        self.cmd_confirmed = array("b")
        self.resume = array("b")
        self.status = array("b")
        self.since_ms = array("q")
        self.cmd_at_ms = array("q")
        self.cmd_sent_ms = array("q")
        self.mirrored_ms = array("q")
        self.reason = array("H")
        self.profile = array("I")
        self.errors = array("I")
        self.cmd_first_seq = array("I")
        self.cmd_seq = array("I")
        self.armed_s = array("I")
        self.macs: list[str | None] = []  # the entry's MAC and session: a reference each, no slot
        self.sessions: list[m.Session | None] = []
        self.last_session: dict[int, str] = {}  # row -> the id of the session its plug last ended
        self.marks: dict[int, Mark] = {}  # row -> its plug-state document's mark (services/hub/mirror.py)
        self._free: list[int] = []

    def _columns(self) -> tuple[array[int], ...]:
        """The signed integer columns whose "no value yet" is ``_NONE`` or -1."""
        return (
            self.ts_ms,
            self.counter_mwh,
            self.uptime_s,
            self.high_ms,
            self.low_ms,
            self.over_ms,
            self.mirror_due_ms,
            self.disabled,
            self.stale,
            self.relay_on,
            self.cmd_on,
            self.cmd_confirmed,
            self.resume,
            self.status,
        )

    def _zeroed(self) -> tuple[array[int], ...]:
        """The integer columns whose value starts at 0 (the reason's 0 is the empty reason)."""
        return (
            self.since_ms,
            self.cmd_at_ms,
            self.cmd_sent_ms,
            self.mirrored_ms,
            self.reason,
            self.profile,
            self.errors,
            self.cmd_first_seq,
            self.cmd_seq,
        )

    def take(self) -> int:
        if self._free:
            row = self._free.pop()
            self.power_w[row] = 0.0
            for col in self._columns():
                col[row] = _NONE if col.typecode == "q" else -1
            for col in self._zeroed():
                col[row] = 0
            self.armed_s[row] = _NONE32
            return row
        self.macs.append(None)
        self.sessions.append(None)
        for col in self._columns():
            col.append(_NONE if col.typecode == "q" else -1)
        for col in self._zeroed():
            col.append(0)
        self.power_w.append(0.0)
        self.armed_s.append(_NONE32)
        return len(self.ts_ms) - 1

    def give_back(self, row: int) -> None:
        self.macs[row] = self.sessions[row] = None  # its session and MAC go with the entry
        self.last_session.pop(row, None)
        self.marks.pop(row, None)
        free = self._free
        free.append(row)
        if len(free) == len(self.ts_ms):  # every entry gone (a hub torn down): the columns go too
            free.clear()
            del self.macs[:], self.sessions[:]
            del self.power_w[:]
            for col in (self.armed_s, *self._zeroed(), *self._columns()):
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
_SINCE, _CMD_AT, _CMD_SENT = SAMPLES.since_ms, SAMPLES.cmd_at_ms, SAMPLES.cmd_sent_ms
_MIRRORED, _MIRROR_DUE, _REASON, _ERRORS = (
    SAMPLES.mirrored_ms,
    SAMPLES.mirror_due_ms,
    SAMPLES.reason,
    SAMPLES.errors,
)
_LAST_SESSION, _MARKS = SAMPLES.last_session, SAMPLES.marks
_MACS, _SESSIONS, _PROFILE = SAMPLES.macs, SAMPLES.sessions, SAMPLES.profile
_STATUSES: tuple[m.Status, ...] = tuple(m.Status)
_STATUS_INDEX: dict[m.Status | None, int] = {None: -1} | {s: i for i, s in enumerate(_STATUSES)}
_TRI: dict[bool | None, int] = {None: -1, False: 0, True: 1}

# The distinct status reasons (a few dozen: the machine's own words, device flags, an operator's fault),
# each stored once; an entry's reason is its index here, two bytes.
_REASONS: list[str] = [""]
_REASON_INDEX: dict[str, int] = {"": 0}
_MAX_REASONS = 1 << 16


def _reason_index(reason: str) -> int:
    i = _REASON_INDEX.get(reason)
    if i is None:
        i = len(_REASONS)
        if i >= _MAX_REASONS:
            raise ValueError(f"more than {_MAX_REASONS:,} distinct status reasons; refusing {reason!r}")
        _REASONS.append(sys.intern(reason))
        _REASON_INDEX[reason] = i
    return i


# What most of a site's plugs share: the site and the machine parameters, one tuple per distinct pair,
# numbered; an entry holds its pair's number (four bytes: a fleet of one-plug sites has a pair per site).
Profile = tuple[str, PlugParams]
_PROFILES: list[Profile] = []
_PROFILE_PARAMS: list[PlugParams] = []  # each pair's parameters alone (read on every event)
_PROFILE_INDEX: dict[Profile, int] = {}


def _profile(site_id: str, params: PlugParams) -> int:
    key = (site_id, params)
    i = _PROFILE_INDEX.get(key)
    if i is None:
        i = _PROFILE_INDEX[key] = len(_PROFILES)
        _PROFILES.append(key)
        _PROFILE_PARAMS.append(params)
    return i


_int_new: Callable[..., Any] = int.__new__  # an entry is made as the int of its row


if TYPE_CHECKING:

    class _Entry(m.MachineState, int):  # type: ignore[misc]  # a state to the machine, an index here
        pass

else:
    _Entry = int  # what it is: the number of its row in the columns, every value in them


class HubPlug(_Entry):
    """One plug in the hub's memory: its machine state itself (one object per plug, not a wrapper and
    a state: 100k of them) and the hub's own values for it, starting with the site it is bound to.

    ``plug.state`` is the plug itself; ``plug.state = new`` takes a step's new state in place (the
    machine's functions still return a new ``MachineState`` and never see the hub's values). It is not a
    ``MachineState`` but the int of its row in :data:`SAMPLES` (32 B with no slot, and no int object
    of its own for the row): every value lives in that row (the MAC and the session in lists, the
    site and parameters as the number of their shared pair, the rest in columns or, if rare, in maps by
    row), read and written through properties of the same names. As an int it is always true, and
    equal only to itself among the live entries (no two have one row)."""

    __slots__ = ()

    def __new__(cls, state: m.MachineState, site_id: str) -> HubPlug:
        row = SAMPLES.take()
        self: HubPlug = _int_new(cls, row)
        _PROFILE[row] = _profile(site_id, state.params)
        self.assign(state)
        return self

    def __del__(self, _give_back: Callable[[int], None] = SAMPLES.give_back) -> None:
        _give_back(int(self))  # bound at definition: still there if the module is torn down first

    def __bool__(self) -> bool:
        return True  # an entry, not a number (the entry of row 0 too)

    def __repr__(self) -> str:
        return f"HubPlug({self.mac!r}, row={int(self)})"

    __str__ = __repr__

    @property
    def row(self) -> int:
        """Its row in ``SAMPLES``."""
        return int(self)

    @classmethod
    def of(cls, state: m.MachineState, site_id: str) -> HubPlug:
        """The hub's entry for a plug whose machine is in ``state``, bound to ``site_id``."""
        return cls(state, site_id)

    def assign(self, other: m.MachineState) -> None:
        """Take ``other``'s machine values in place (the entry taking a step's new state): slot by slot
        and column by column, spelled out (``test_memory_layout`` checks it is complete)."""
        if other is self:
            return
        row = self
        _MACS[row] = other.mac
        params = other.params
        profile = _PROFILES[_PROFILE[row]]
        if params is not profile[1]:
            _PROFILE[row] = _profile(profile[0], params)
        _SESSIONS[row] = other.session
        last = other.last_session_id
        if last:
            _LAST_SESSION[int(row)] = last  # keyed by a plain int: a key holding the entry would keep it
        elif _LAST_SESSION:
            _LAST_SESSION.pop(row, None)
        _SINCE[row] = other.since_ms
        _REASON[row] = _reason_index(other.reason)
        _ERRORS[row] = other.errors
        _CMD_AT[row] = other.cmd_at_ms
        _CMD_SENT[row] = other.cmd_sent_ms
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
        row = self
        _TS[row] = ts_ms
        _POWER[row] = power_w
        _COUNTER[row] = counter_mwh
        _UPTIME[row] = _NONE if uptime_s is None else uptime_s
        _RELAY[row] = _TRI[relay_on]
        _ERRORS[row] = 0
        _STALE[row] = 0
        _HIGH[row] = _NONE if high_ms is None else high_ms
        _LOW[row] = _NONE if low_ms is None else low_ms
        _OVER[row] = _NONE

    def copy(self) -> m.MachineState:
        """A plain ``MachineState`` with the entry's machine values (not its hub slots): slot by slot and
        column by column, spelled out (every event a machine handles starts with one)."""
        new: m.MachineState = object.__new__(m.MachineState)
        row = self
        new.mac = _MACS[row]  # type: ignore[assignment]
        new.params = _PROFILE_PARAMS[_PROFILE[row]]
        sess = _SESSIONS[row]
        new.session = None if sess is None else sess.copy()
        new.last_session_id = _LAST_SESSION.get(row, "") if _LAST_SESSION else ""
        new.since_ms = _SINCE[row]
        new.reason = _REASONS[_REASON[row]]
        new.errors = _ERRORS[row]
        new.cmd_at_ms = _CMD_AT[row]
        new.cmd_sent_ms = _CMD_SENT[row]
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

    @property  # the machine's slot, in a list for the hub's entries
    def mac(self) -> str:
        return _MACS[self]  # type: ignore[return-value]

    @mac.setter
    def mac(self, value: str) -> None:
        _MACS[self] = value

    @property  # the machine's slot, in a list for the hub's entries
    def session(self) -> m.Session | None:
        return _SESSIONS[self]

    @session.setter
    def session(self, value: m.Session | None) -> None:
        _SESSIONS[self] = value

    @property  # the hub's value for its plug: the site it is bound to (in its shared pair)
    def site_id(self) -> str:
        return _PROFILES[_PROFILE[self]][0]

    @site_id.setter
    def site_id(self, value: str) -> None:
        _PROFILE[self] = _profile(value, _PROFILES[_PROFILE[self]][1])

    @property  # the machine's slot, shared with the entries of the same site and parameters
    def params(self) -> PlugParams:
        return _PROFILE_PARAMS[_PROFILE[self]]

    @params.setter
    def params(self, value: PlugParams) -> None:
        _PROFILE[self] = _profile(_PROFILES[_PROFILE[self]][0], value)

    @property  # the machine's slot, kept in a column for the hub's entries
    def since_ms(self) -> int:
        return _SINCE[self]

    @since_ms.setter
    def since_ms(self, value: int) -> None:
        _SINCE[self] = value

    @property  # the machine's slot: an index into the table of reasons, in a column
    def reason(self) -> str:
        return _REASONS[_REASON[self]]

    @reason.setter
    def reason(self, value: str) -> None:
        _REASON[self] = _reason_index(value)

    @property  # the machine's slot, kept in a column for the hub's entries
    def errors(self) -> int:
        return _ERRORS[self]

    @errors.setter
    def errors(self, value: int) -> None:
        _ERRORS[self] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_at_ms(self) -> int:
        return _CMD_AT[self]

    @cmd_at_ms.setter
    def cmd_at_ms(self, value: int) -> None:
        _CMD_AT[self] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_sent_ms(self) -> int:
        return _CMD_SENT[self]

    @cmd_sent_ms.setter
    def cmd_sent_ms(self, value: int) -> None:
        _CMD_SENT[self] = value

    @property  # the machine's slot, kept by row in a map for the entries that have one ("": none)
    def last_session_id(self) -> str:
        return _LAST_SESSION.get(self, "")

    @last_session_id.setter
    def last_session_id(self, value: str) -> None:
        if value:
            _LAST_SESSION[int(self)] = value
        else:
            _LAST_SESSION.pop(self, None)

    @property  # when its plug-state document was last written (0: never)
    def mirrored_ms(self) -> int:
        return _MIRRORED[self]

    @mirrored_ms.setter
    def mirrored_ms(self, value: int) -> None:
        _MIRRORED[self] = value

    @property  # when the mirror looks at its document next (None: not marked; services/hub/mirror.py)
    def mirror_due_ms(self) -> int | None:
        v = _MIRROR_DUE[self]
        return None if v == _NONE else v

    @mirror_due_ms.setter
    def mirror_due_ms(self, value: int | None) -> None:
        _MIRROR_DUE[self] = _NONE if value is None else value

    @property  # for a marked plug whose document was written before: its mark (``Mark``), else None
    def mark(self) -> Mark | None:
        return _MARKS.get(self)

    @mark.setter
    def mark(self, value: Mark | None) -> None:
        if value is None:
            _MARKS.pop(self, None)
        else:
            _MARKS[int(self)] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def last_ts_ms(self) -> int | None:
        v = _TS[self]
        return None if v == _NONE else v

    @last_ts_ms.setter
    def last_ts_ms(self, value: int | None) -> None:
        _TS[self] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def counter_mwh(self) -> int | None:
        v = _COUNTER[self]
        return None if v == _NONE else v

    @counter_mwh.setter
    def counter_mwh(self, value: int | None) -> None:
        _COUNTER[self] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def uptime_s(self) -> int | None:
        v = _UPTIME[self]
        return None if v == _NONE else v

    @uptime_s.setter
    def uptime_s(self, value: int | None) -> None:
        _UPTIME[self] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def power_w(self) -> float:
        return _POWER[self]

    @power_w.setter
    def power_w(self, value: float) -> None:
        _POWER[self] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def high_ms(self) -> int | None:
        v = _HIGH[self]
        return None if v == _NONE else v

    @high_ms.setter
    def high_ms(self, value: int | None) -> None:
        _HIGH[self] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def low_ms(self) -> int | None:
        v = _LOW[self]
        return None if v == _NONE else v

    @low_ms.setter
    def low_ms(self, value: int | None) -> None:
        _LOW[self] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def over_ms(self) -> int | None:
        v = _OVER[self]
        return None if v == _NONE else v

    @over_ms.setter
    def over_ms(self, value: int | None) -> None:
        _OVER[self] = _NONE if value is None else value

    @property  # the machine's slot, kept in a column for the hub's entries
    def disabled(self) -> bool:
        return _DISABLED[self] == 1

    @disabled.setter
    def disabled(self, value: bool) -> None:
        _DISABLED[self] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def stale(self) -> bool:
        return _STALE[self] == 1

    @stale.setter
    def stale(self, value: bool) -> None:
        _STALE[self] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def relay_on(self) -> bool | None:
        v = _RELAY[self]
        return None if v < 0 else v == 1

    @relay_on.setter
    def relay_on(self, value: bool | None) -> None:
        _RELAY[self] = _TRI[value]

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_on(self) -> bool | None:
        v = _CMD_ON[self]
        return None if v < 0 else v == 1

    @cmd_on.setter
    def cmd_on(self, value: bool | None) -> None:
        _CMD_ON[self] = _TRI[value]

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_confirmed(self) -> bool:
        return _CONFIRMED[self] == 1

    @cmd_confirmed.setter
    def cmd_confirmed(self, value: bool) -> None:
        _CONFIRMED[self] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def resume(self) -> m.Status | None:
        v = _RESUME[self]
        return None if v < 0 else _STATUSES[v]

    @resume.setter
    def resume(self, value: m.Status | None) -> None:
        _RESUME[self] = _STATUS_INDEX[value]

    @property  # the machine's slot, kept in a column for the hub's entries
    def status(self) -> m.Status:
        return _STATUSES[_STATUS[self]]

    @status.setter
    def status(self, value: m.Status) -> None:
        _STATUS[self] = _STATUS_INDEX[value]

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_first_seq(self) -> int:
        return _FIRST_SEQ[self]

    @cmd_first_seq.setter
    def cmd_first_seq(self, value: int) -> None:
        _FIRST_SEQ[self] = value

    @property  # the machine's slot, kept in a column for the hub's entries
    def cmd_seq(self) -> int:
        return _SEQ[self]

    @cmd_seq.setter
    def cmd_seq(self, value: int) -> None:
        _SEQ[self] = value

    @property  # the timer-wheel second this plug is armed for (services/hub/timers.py; None: not armed)
    def armed_s(self) -> int | None:
        v = _ARMED[self]
        return None if v == _NONE32 else v

    @armed_s.setter
    def armed_s(self, value: int | None) -> None:
        _ARMED[self] = _NONE32 if value is None else value

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


if not TYPE_CHECKING:
    # The properties above that only index a list or column, again with the list's or column's own
    # methods as getter and setter: the same values, without a Python call per access (the machine reads
    # some of them several times per chunk of readings).
    for _name, _col in (
        ("mac", _MACS),
        ("session", _SESSIONS),
        ("since_ms", _SINCE),
        ("errors", _ERRORS),
        ("cmd_at_ms", _CMD_AT),
        ("cmd_sent_ms", _CMD_SENT),
        ("mirrored_ms", _MIRRORED),
        ("power_w", _POWER),
        ("cmd_first_seq", _FIRST_SEQ),
        ("cmd_seq", _SEQ),
    ):
        setattr(
            HubPlug, _name, property(_col.__getitem__, _col.__setitem__, doc=getattr(HubPlug, _name).__doc__)
        )
    del _name, _col


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
        profiles, profile = _PROFILES, _PROFILE
        for mac in macs:
            owner = away.get(mac)  # self.owner(mac), inline: once per plug of every batch
            if owner is None:
                plug = plugs.get(mac)
                if plug is not None and not (unbound and mac in unbound):
                    owner = profiles[profile[plug]][0]  # plug.site_id, inline
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
