"""The per-plug state machine of the hub, pure: ``step(state, event, now) -> (state, effects)``.

Theory of operation
===================

A plug cannot see a car plug in or out, so a session starts from a user's request and ends on
completion, a stop request, credit exhaustion, a fault or a time limit.
The only signals are the plug's samples (power, energy counter, relay state, error flags) and time.

States (OCPP 1.6 analogue in brackets)::

    AVAILABLE       no session, relay off                      [Available]
    AUTHORIZED      session accepted, relay on, waiting for load [Preparing]
    CHARGING        power >= start_w, debounced                [Charging]
    SUSPENDED_EV    relay on, power < stop_w; completion timer [SuspendedEV]
    SUSPENDED_EVSE  we cut the relay: out of credit; grace timer [SuspendedEVSE]
    FINISHING       relay off commanded; waiting for the final counter reading, then billing [Finishing]
    FAULTED         device error flags, overpower or a relay that will not obey [Faulted]
    OFFLINE         no reading for offline_after_s; remembers the state to resume [Unavailable]
    UNAVAILABLE     disabled by the operator                   [Unavailable]

Events: ``Readings`` (a time-ordered chunk of samples), ``Tick`` (time passing), ``StartRequest``,
``StopRequest``, ``CommandResult`` (an agent's ack), ``OperatorEnable`` / ``OperatorDisable``,
``BalanceUpdate`` (a top-up arrived). Effects are instructions for the executor: ``SendRelay``,
``SessionStarted`` / ``SessionUpdated`` / ``SessionFinished``, ``StateChanged``, ``Alert``,
``RejectRequest``. Every allowed change of status is a row of :data:`TRANSITIONS`; ``_go`` refuses any
other, so the table is what the machine does.

Time-based rules are evaluated after every event, so a ``Tick`` is simply an event that brings
nothing else. ``now`` is the only clock; a sample's own timestamp (``ts_ms``) drives debouncing.

Invariants:

* Debounce by time, never by sample count. A run ("power >= start_w since ...") accumulates the
  time between consecutive samples; a gap longer than ``stale_after_s`` adds nothing, so missing
  data freezes the completion and no-load timers and stale data never completes a session.
* Every sample processed while a session is open adds its counter delta to the session, including
  the sample that closes it. A counter that goes backwards, or an uptime that drops (a reboot),
  is a reset: the new counter value is the energy since the reset. Energy is never negative and
  never lost.
* Exactly one ``SessionFinished`` per session; replayed start requests are ignored.
* A relay that disagrees with its command past ``relay_confirm_s`` → FAULTED. Relay on or power
  flowing with no session → relay off and an ``unauthorized_draw`` alert.
* While a session wants the relay on, "on" is re-sent every ``auto_off_s / 3`` with the plug's own
  flip-back timer armed for ``auto_off_s``, so only a dead hub or agent lets the timer fire.
* ``step`` never mutates its input state: it works on a copy.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import EllipsisType
from typing import Any, Protocol, cast

from chargectl.common.readings import DeviceFlag, Reading
from chargectl.services.hub.billing import Cost, Tariff, can_start, session_cost
from chargectl.services.hub.params import PlugParams

__all__ = [
    "FAULT_FLAGS",
    "TRANSITIONS",
    "Alert",
    "BalanceUpdate",
    "CommandResult",
    "Effect",
    "Event",
    "MachineState",
    "OperatorDisable",
    "OperatorEnable",
    "PlugFault",
    "Readings",
    "ReadingsRun",
    "RejectRequest",
    "RunColumns",
    "SendRelay",
    "Session",
    "SessionFinished",
    "SessionRecord",
    "SessionStarted",
    "SessionUpdated",
    "StartRequest",
    "StateChanged",
    "Status",
    "StopReason",
    "StopRequest",
    "Tick",
    "Transition",
    "from_dict",
    "new_state",
    "next_due_ms",
    "step",
    "step_run",
    "step_run_due",
    "to_dict",
]


class Status(StrEnum):
    AVAILABLE = "AVAILABLE"
    AUTHORIZED = "AUTHORIZED"
    CHARGING = "CHARGING"
    SUSPENDED_EV = "SUSPENDED_EV"
    SUSPENDED_EVSE = "SUSPENDED_EVSE"
    FINISHING = "FINISHING"
    FAULTED = "FAULTED"
    OFFLINE = "OFFLINE"
    UNAVAILABLE = "UNAVAILABLE"


class StopReason(StrEnum):
    """Why a session ended, in the OCPP vocabulary the ``ChargeSession`` document uses."""

    COMPLETE = "EVDisconnected"
    LOCAL = "Local"
    REMOTE = "Remote"
    OUT_OF_CREDIT = "DeAuthorized"
    FAULT = "EmergencyStop"
    POWER_LOSS = "PowerLoss"
    TIME_LIMIT = "TimeLimit"
    NO_LOAD = "Timeout"


# Device flags that mean "stop delivering energy" (undervoltage is a grid condition, not a plug fault).
FAULT_FLAGS = DeviceFlag.OVERPOWER | DeviceFlag.OVERTEMP | DeviceFlag.OVERVOLTAGE | DeviceFlag.OVERCURRENT
_FAULT_MASK = int(FAULT_FLAGS)  # the same as a plain int, for the per-reading test

_A, _AU, _CH = Status.AVAILABLE, Status.AUTHORIZED, Status.CHARGING
_SEV, _SEVSE, _FIN = Status.SUSPENDED_EV, Status.SUSPENDED_EVSE, Status.FINISHING
_FLT, _OFF, _UN = Status.FAULTED, Status.OFFLINE, Status.UNAVAILABLE

# Session states in which the relay is meant to be on.
RELAY_ON_STATES = frozenset({_AU, _CH, _SEV})
# Session states a stop request, a time limit or a disable can end.
LIVE_SESSION_STATES = frozenset({_AU, _CH, _SEV, _SEVSE})


# ---------------------------------------------------------------------------------------------
# The transition table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    """One row: from ``sources`` on ``trigger`` when ``condition`` → ``target``, doing ``actions``."""

    id: str
    sources: tuple[Status, ...]
    trigger: str
    condition: str
    target: Status | None  # None: the state remembered when the plug went OFFLINE
    actions: str


_ALL = tuple(Status)
_T = Transition
TRANSITIONS: tuple[Transition, ...] = (
    _T("start", (_A,), "StartRequest", "plug online, balance >= required start balance; or resuming a stored session", _AU,
       "SessionStarted; SendRelay(on, auto_off_s)"),
    _T("resume-finishing", (_A,), "StartRequest",
       "resuming a stored session whose finish had begun (stop_reason set)", _FIN,
       "SessionStarted; SendRelay(off): billed once the relay is confirmed off, never switched on"),
    _T("start-rejected", _ALL, "StartRequest", "busy, offline, faulted, disabled or balance too low", None,
       "RejectRequest(reason); state unchanged"),
    _T("unauthorized-draw", (_A, _UN), "Readings", "relay on or power >= start_w with no session", None,
       "SendRelay(off); Alert(unauthorized_draw); state unchanged"),
    _T("load-confirmed", (_AU,), "Readings", "relay confirmed on, power >= start_w for start_confirm_s", _CH,
       "session keeps start counter from the start request"),
    _T("no-load", (_AU,), "Readings", "no load for no_load_timeout_s of fresh data", _FIN,
       "stop reason Timeout; SendRelay(off); no session fee"),
    _T("load-stopped", (_CH,), "Readings", "power < stop_w", _SEV, "completion and idle timers start"),
    _T("load-resumed", (_SEV,), "Readings", "power >= start_w for start_confirm_s", _CH, "—"),
    _T("complete", (_SEV,), "Readings", "power < stop_w for complete_after_s of fresh data", _FIN,
       "stop reason EVDisconnected; SendRelay(off)"),
    _T("out-of-credit", (_AU, _CH, _SEV), "Readings", "projected cost >= balance", _SEVSE,
       "SendRelay(off); Alert(out_of_credit); grace timer starts"),
    _T("topped-up", (_SEVSE,), "BalanceUpdate", "new balance > projected cost", _AU, "SendRelay(on)"),
    _T("credit-grace-expired", (_SEVSE,), "Tick", "credit_grace_s in SUSPENDED_EVSE", _FIN,
       "stop reason DeAuthorized"),
    _T("stop", (_AU, _CH, _SEV, _SEVSE), "StopRequest", "the session's user (Local) or the operator (Remote)",
       _FIN, "SendRelay(off)"),
    _T("time-limit", (_AU, _CH, _SEV, _SEVSE), "Tick", "session older than max_session_s", _FIN,
       "stop reason TimeLimit; SendRelay(off)"),
    _T("disable-session", (_AU, _CH, _SEV, _SEVSE), "OperatorDisable", "—", _FIN,
       "stop reason Remote; UNAVAILABLE once billed"),
    _T("billed", (_FIN,), "Readings", "relay off confirmed and a reading at/after the off command", _A,
       "SessionFinished(record with cost)"),
    _T("billed-no-reading", (_FIN,), "Tick", "relay off acked, no reading for relay_confirm_s", _A,
       "SessionFinished with the last counter"),
    _T("billed-disabled", (_FIN,), "Readings", "as 'billed', operator disabled meanwhile", _UN,
       "SessionFinished"),
    _T("device-error", tuple(s for s in _ALL if s not in (_FLT, _OFF)), "Readings",
       "error flags overpower/overtemp/overvoltage/overcurrent", _FLT,
       "SendRelay(off); SessionFinished(EmergencyStop) if a session is open; Alert"),
    _T("overpower", tuple(s for s in _ALL if s not in (_FLT, _OFF)), "Readings",
       "power > max_power_w for max_power_confirm_s", _FLT, "as device-error"),
    _T("relay-mismatch", tuple(s for s in _ALL if s not in (_FLT, _OFF)), "Readings|Tick",
       "a reading >= relay_confirm_s after the command still disagrees", _FLT, "as device-error"),
    _T("hub-fault", tuple(s for s in _ALL if s not in (_FLT, _OFF)), "PlugFault",
       "handling this plug's event raised in the hub", _FLT, "as device-error"),
    _T("relay-reasserted", tuple(s for s in _ALL if s is not _OFF), "Readings",
       "a confirmed relay state changed on its own (button, reboot)", None, "re-send command; Alert"),
    _T("fault-cleared", (_FLT,), "OperatorEnable", "no error flags in the latest reading", _A, "—"),
    _T("stale", tuple(s for s in _ALL if s is not _OFF), "Tick", "no reading for stale_after_s", None,
       "stale flag set: completion/no-load timers frozen; Alert(stale)"),
    _T("offline", tuple(s for s in _ALL if s is not _OFF), "Tick", "no reading for offline_after_s", _OFF,
       "remember the state; session kept open (the dead-man timer bounds unbilled energy)"),
    _T("back-online", (_OFF,), "Readings", "a new reading", None,
       "resume the remembered state; re-send the relay command it implies"),
    _T("offline-abandon", (_OFF,), "Tick", "OFFLINE for offline_abandon_s with a session", _OFF,
       "session marked provisional; Alert"),
    _T("provisional-closed", (_OFF,), "Readings", "a new reading and the session is provisional", _FIN,
       "stop reason PowerLoss; SendRelay(off); billed from the counter as usual"),
    _T("disable", (_A,), "OperatorDisable", "—", _UN, "—"),
    _T("enable", (_UN,), "OperatorEnable", "—", _A, "—"),
)  # fmt: skip


def _allowed_pairs() -> frozenset[tuple[Status, Status]]:
    pairs: set[tuple[Status, Status]] = set()
    for row in TRANSITIONS:
        for src in row.sources:
            if row.target is None:
                if src is _OFF:  # resume: any remembered state
                    pairs.update((_OFF, t) for t in _ALL if t is not _OFF)
            else:
                pairs.add((src, row.target))
    # Resuming into an available plug that the operator disabled while it was offline.
    pairs.add((_OFF, _UN))
    return frozenset(pairs)


_ALLOWED = _allowed_pairs()


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readings:
    """A chunk of one plug's samples, oldest first (duplicates and late samples are dropped)."""

    readings: tuple[Reading, ...]


class RunColumns(Protocol):
    """One plug's samples as columns, oldest first (``codec.PlugRun``): index i of each is sample i."""

    @property
    def mac(self) -> str: ...
    @property
    def ts_ms(self) -> Sequence[int]: ...
    @property
    def power_w(self) -> Sequence[float]: ...
    @property
    def energy_mwh(self) -> Sequence[int]: ...
    @property
    def relay_on(self) -> Sequence[bool]: ...
    @property
    def voltage_v(self) -> Sequence[float | None]: ...
    @property
    def current_a(self) -> Sequence[float | None]: ...
    @property
    def temperature_c(self) -> Sequence[float | None]: ...
    @property
    def errors(self) -> Sequence[int]: ...
    @property
    def uptime_s(self) -> Sequence[int | None]: ...


@dataclass(frozen=True, slots=True)
class ReadingsRun:
    """The same as ``Readings`` of the run's samples, decided per chunk: while the samples cannot change the
    plug's state (AVAILABLE and idle, or CHARGING steadily: relay as commanded, power on one side of the
    thresholds, no flags, no overpower, a clean counter, credit left for the whole chunk) they only advance
    its counters, with no object per sample; from the first that might, the per-sample rules take over."""

    run: RunColumns


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; time-based rules are evaluated."""


@dataclass(frozen=True, slots=True)
class StartRequest:
    """A user's start request; with ``start_counter_mwh``/``started_at_ms`` it *resumes* a session the
    store knows but this state does not (the hub restarted from a checkpoint older than the session)."""

    session_id: str
    user_id: str
    tariff: Tariff
    balance_minor: int  # the user's available balance now
    request_id: str = ""
    start_counter_mwh: int | None = None
    started_at_ms: int | None = None
    stop_reason: str = ""  # resuming a session whose finish had begun: straight to FINISHING, relay off


@dataclass(frozen=True, slots=True)
class StopRequest:
    user_id: str = ""  # must match the session's user unless ``remote``
    session_id: str = ""  # empty: whatever session is open
    request_id: str = ""
    remote: bool = False  # an operator stop (reason Remote) rather than the user's (Local)


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: str
    ok: bool
    relay_on: bool | None = None  # observed after execution; None when unknown


@dataclass(frozen=True, slots=True)
class OperatorEnable:
    """Put a disabled plug back in service, or acknowledge a fault."""


@dataclass(frozen=True, slots=True)
class OperatorDisable:
    """Take the plug out of service (a live session is stopped and billed first)."""


@dataclass(frozen=True, slots=True)
class BalanceUpdate:
    user_id: str
    balance_minor: int


@dataclass(frozen=True, slots=True)
class PlugFault:
    """The hub failed while handling this plug's event: fault it (relay off, session closed)."""

    reason: str


Event = (
    Readings
    | ReadingsRun
    | Tick
    | StartRequest
    | StopRequest
    | CommandResult
    | OperatorEnable
    | OperatorDisable
    | BalanceUpdate
    | PlugFault
)


# ---------------------------------------------------------------------------------------------
# Effects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRelay:
    mac: str
    on: bool
    auto_off_s: int  # the plug's flip-back timer armed with "on"; 0 with "off"
    session_id: str
    command_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class SessionStarted:
    mac: str
    session_id: str
    user_id: str
    request_id: str
    tariff: Tariff
    started_at_ms: int
    start_counter_mwh: int
    balance_minor: int


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """A live session's progress. Its cost is priced when something reads ``cost_minor`` (the hub writes
    progress at most every ``progress_interval_s``), not on every step: ``tariff`` and ``include_fee``
    are what pricing needs, exactly as ``Session.cost`` prices it."""

    mac: str
    session_id: str
    user_id: str
    status: Status
    energy_mwh: int
    idle_ms: int
    provisional: bool
    tariff: Tariff
    include_fee: bool = True

    @property
    def cost_minor(self) -> int:
        """The projected cost so far (``Session.cost().total_minor`` at this update)."""
        return session_cost(
            self.tariff, self.energy_mwh, self.idle_ms, include_fee=self.include_fee
        ).total_minor


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Everything needed to bill and show a finished session."""

    session_id: str
    user_id: str
    mac: str
    request_id: str
    tariff: Tariff
    started_at_ms: int
    ended_at_ms: int
    start_counter_mwh: int
    stop_counter_mwh: int
    energy_mwh: int  # counter deltas with resets bridged
    counter_resets: int
    idle_ms: int
    cost: Cost
    stop_reason: StopReason
    provisional: bool
    review: str = ""  # non-empty: billed less than the meter said; the reason

    @property
    def cost_minor(self) -> int:
        return self.cost.total_minor

    @property
    def duration_s(self) -> float:
        return (self.ended_at_ms - self.started_at_ms) / 1000


@dataclass(frozen=True, slots=True)
class SessionFinished:
    record: SessionRecord


@dataclass(frozen=True, slots=True)
class StateChanged:
    mac: str
    old: Status
    new: Status
    reason: str


@dataclass(frozen=True, slots=True)
class Alert:
    mac: str
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class RejectRequest:
    mac: str
    request_id: str
    session_id: str
    user_id: str
    reason: str


Effect = SendRelay | SessionStarted | SessionUpdated | SessionFinished | StateChanged | Alert | RejectRequest


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


# A session's rarely set values, (counter resets, stop reason, provisional, review), in one slot: most
# live sessions have none of them, and those that do share one tuple per combination (without resets
# or a review there are a few dozen).
Notes = tuple[int, str, bool, str]
_NO_NOTES: Notes = (0, "", False, "")
_SHARED_NOTES: dict[Notes, Notes] = {_NO_NOTES: _NO_NOTES}


def _notes(counter_resets: int, stop_reason: str, provisional: bool, review: str) -> Notes:
    notes = (counter_resets, stop_reason, provisional, review)
    if counter_resets == 0 and not review:
        return _SHARED_NOTES.setdefault(notes, notes)
    return notes


@dataclass(slots=True, init=False)
class Session:
    """The open session of a plug (mutable inside ``step`` only, on a copy). Its counter resets, stop
    reason, provisional mark and review are read and written as attributes but kept in ``notes``."""

    session_id: str
    user_id: str
    request_id: str
    tariff: Tariff
    balance_minor: int
    started_at_ms: int
    start_counter_mwh: int
    energy_mwh: int
    idle_ms: int
    noload_ms: int
    notes: Notes  # (counter_resets, stop_reason, provisional, review)

    def __init__(
        self,
        session_id: str,
        user_id: str,
        request_id: str,
        tariff: Tariff,
        balance_minor: int,
        started_at_ms: int,
        start_counter_mwh: int,
        energy_mwh: int = 0,
        idle_ms: int = 0,
        noload_ms: int = 0,
        counter_resets: int = 0,
        stop_reason: str = "",
        provisional: bool = False,
        review: str = "",  # why this session needs an operator's look (energy held back); empty: clean
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.request_id = request_id
        self.tariff = tariff
        self.balance_minor = balance_minor
        self.started_at_ms = started_at_ms
        self.start_counter_mwh = start_counter_mwh
        self.energy_mwh = energy_mwh
        self.idle_ms = idle_ms
        self.noload_ms = noload_ms
        self.notes = _notes(counter_resets, stop_reason, provisional, review)

    @property
    def counter_resets(self) -> int:
        return self.notes[0]

    @counter_resets.setter
    def counter_resets(self, value: int) -> None:
        _, reason, provisional, review = self.notes
        self.notes = _notes(value, reason, provisional, review)

    @property
    def stop_reason(self) -> str:
        return self.notes[1]

    @stop_reason.setter
    def stop_reason(self, value: str) -> None:
        resets, _, provisional, review = self.notes
        self.notes = _notes(resets, value, provisional, review)

    @property
    def provisional(self) -> bool:
        return self.notes[2]

    @provisional.setter
    def provisional(self, value: bool) -> None:
        resets, reason, _, review = self.notes
        self.notes = _notes(resets, reason, value, review)

    @property
    def review(self) -> str:
        return self.notes[3]

    @review.setter
    def review(self, value: str) -> None:
        resets, reason, provisional, _ = self.notes
        self.notes = _notes(resets, reason, provisional, value)

    def copy(self) -> Session:
        """The same values in a new object (slot by slot: it runs on every event of a plug in a session)."""
        new: Session = object.__new__(Session)
        new.session_id = self.session_id
        new.user_id = self.user_id
        new.request_id = self.request_id
        new.tariff = self.tariff
        new.balance_minor = self.balance_minor
        new.started_at_ms = self.started_at_ms
        new.start_counter_mwh = self.start_counter_mwh
        new.energy_mwh = self.energy_mwh
        new.idle_ms = self.idle_ms
        new.noload_ms = self.noload_ms
        new.notes = self.notes  # a tuple: shared, never changed in place
        return new

    def cost(self) -> Cost:
        include_fee = self.stop_reason != StopReason.NO_LOAD
        return session_cost(self.tariff, self.energy_mwh, self.idle_ms, include_fee=include_fee)


class StateSlots:
    """The slots a plug's state keeps in its own object, in :class:`MachineState` and in the hub's plug
    entry alike: its MAC and its session. Every other value is :class:`MachineState`'s own slot; the
    hub's entry (services/hub/registry.py ``HubPlug``, a subclass of this, not of ``MachineState``)
    keeps those in columns instead (a row of numbers per plug, no slot nor int object of its own),
    its parameters with its site in one shared slot, and the rare ones (the last session's id) by row
    in a map."""

    __slots__ = ("mac", "session")

    mac: str
    params: PlugParams
    status: Status
    since_ms: int
    reason: str
    resume: Status | None
    disabled: bool
    stale: bool
    last_ts_ms: int | None
    power_w: float
    counter_mwh: int | None
    uptime_s: int | None
    relay_on: bool | None
    errors: int
    cmd_on: bool | None
    cmd_at_ms: int
    cmd_sent_ms: int
    cmd_first_seq: int
    cmd_confirmed: bool
    cmd_seq: int
    high_ms: int | None
    low_ms: int | None
    over_ms: int | None
    session: Session | None
    last_session_id: str

    def copy(self) -> MachineState:
        """A plain ``MachineState`` with the same values (the hub's entry has its own, reading its
        columns; its hub slots are not the machine's and are not copied). Slot by slot, spelled out:
        this runs on every event a machine handles (``test_memory_layout`` checks it is complete)."""
        new: MachineState = object.__new__(MachineState)
        new.mac = self.mac
        new.params = self.params
        new.status = self.status
        new.since_ms = self.since_ms
        new.reason = self.reason
        new.resume = self.resume
        new.disabled = self.disabled
        new.stale = self.stale
        new.last_ts_ms = self.last_ts_ms
        new.power_w = self.power_w
        new.counter_mwh = self.counter_mwh
        new.uptime_s = self.uptime_s
        new.relay_on = self.relay_on
        new.errors = self.errors
        new.cmd_on = self.cmd_on
        new.cmd_at_ms = self.cmd_at_ms
        new.cmd_sent_ms = self.cmd_sent_ms
        new.cmd_first_seq = self.cmd_first_seq
        new.cmd_confirmed = self.cmd_confirmed
        new.cmd_seq = self.cmd_seq
        new.high_ms = self.high_ms
        new.low_ms = self.low_ms
        new.over_ms = self.over_ms
        new.last_session_id = self.last_session_id
        sess = self.session
        new.session = None if sess is None else sess.copy()
        return new


@dataclass(slots=True)
class MachineState(StateSlots):
    """One plug's machine state (slots, ints). Its own slots are all but the MAC and the session, which
    are :class:`StateSlots`'. The hub keeps 100k plugs in entries of another layout (``HubPlug``)."""

    mac: str
    params: PlugParams
    status: Status
    since_ms: int  # when the current status was entered (hub time)
    reason: str = ""
    resume: Status | None = None  # the state to return to when an OFFLINE plug reports again
    disabled: bool = False
    stale: bool = False
    # The latest sample (device time).
    last_ts_ms: int | None = None
    power_w: float = 0.0
    counter_mwh: int | None = None
    uptime_s: int | None = None
    relay_on: bool | None = None
    errors: int = 0
    # The relay command in force: state, first issued, last (re)sent, first seq, confirmed. Only the
    # command in force is ever sent ("on" only while it is on), so while it is on the last send is also
    # the last "on" the keepalive of the plug's flip-back timer counts from (no slot of its own).
    cmd_on: bool | None = None
    cmd_at_ms: int = 0
    cmd_sent_ms: int = 0
    cmd_first_seq: int = 0
    cmd_confirmed: bool = False
    cmd_seq: int = 0
    # Time-debounce runs (ms of fresh data the condition has held; None = not holding).
    high_ms: int | None = None
    low_ms: int | None = None
    over_ms: int | None = None
    session: Session | None = None
    last_session_id: str = ""

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
        """A quiet sample's values, and the runs after it: fresh, no device flag, no over-power run.
        One call instead of ten assignments (the hub's entry writes its columns in one go)."""
        self.last_ts_ms = ts_ms
        self.power_w = power_w
        self.counter_mwh = counter_mwh
        self.uptime_s = uptime_s
        self.relay_on = relay_on
        self.errors = 0
        self.stale = False
        self.high_ms = high_ms
        self.low_ms = low_ms
        self.over_ms = None


# The state's fields in their order (a checkpoint's keys): the slots of StateSlots and MachineState's own.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MachineState))


def new_state(mac: str, params: PlugParams, now: float) -> MachineState:
    """A plug the hub has not heard from yet: OFFLINE until its first reading, then AVAILABLE."""
    return MachineState(mac=mac, params=params, status=_OFF, since_ms=_ms(now), reason="no_data", resume=_A)


# The last hub time converted and its milliseconds. The hub steps many plugs at one ``now`` (a site's
# batch, a tick), so the sessions started at one time hold this one int object for their start instead
# of an int each (the hub's entries keep their own times in columns). A pure cache: same input, same value.
_last_ms: tuple[float, int] = (math.nan, 0)


def _ms(now: float) -> int:
    global _last_ms
    last = _last_ms
    if last[0] == now:
        return last[1]
    ms = round(now * 1000)
    _last_ms = (now, ms)
    return ms


# ---------------------------------------------------------------------------------------------
# step
# ---------------------------------------------------------------------------------------------


def step(state: MachineState, event: Event, now: float) -> tuple[MachineState, tuple[Effect, ...]]:
    """Apply ``event`` at hub time ``now`` (seconds); return the new state and the effects to carry out."""
    s = state.copy()
    fx: list[Effect] = []
    now_ms = _ms(now)
    before = _session_view(s)
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"not a machine event: {event!r}")
    handler(s, event, now_ms, fx)
    _timers(s, now_ms, fx)
    _session_updated(s, before, fx)
    return s, tuple(fx)


def _session_updated(s: MachineState, before: tuple[object, ...] | None, fx: list[Effect]) -> None:
    """Say ``SessionUpdated`` if the open session's view changed since ``before``."""
    sess = s.session
    if sess is not None and _view(sess, s.status) != before:
        fx.append(
            SessionUpdated(
                mac=s.mac,
                session_id=sess.session_id,
                user_id=sess.user_id,
                status=s.status,
                energy_mwh=sess.energy_mwh,
                idle_ms=sess.idle_ms,
                provisional=sess.provisional,
                tariff=sess.tariff,
                include_fee=sess.stop_reason != StopReason.NO_LOAD,
            )
        )


def step_run(state: MachineState, run: RunColumns, now: float) -> tuple[MachineState, tuple[Effect, ...]]:
    """``step(state, ReadingsRun(run), now)``, the same new state and effects, without the copy when
    every sample of ``run`` is quiet: then ``state`` itself is advanced (and returned), so the caller
    must drop any other use of it, as the hub does when it replaces a plug's state with the result.
    Otherwise (a sample that may change the state) ``state`` is left as it was and ``step`` decides.
    A timer due now is run on a copy, as ``step`` would after the samples."""
    new, fx, _due = step_run_due(state, run, now)
    return new, fx


def step_run_due(
    state: MachineState, run: RunColumns, now: float
) -> tuple[MachineState, tuple[Effect, ...], int | EllipsisType | None]:
    """:func:`step_run`, and the new state's :func:`next_due_ms` when a quiet run had it worked out
    already (``...`` otherwise): the hub re-arms the plug's timer with it instead of working it out
    again (twice per chunk of readings otherwise)."""
    n = len(run.ts_ms)
    if not n or run.mac != state.mac:
        return (*step(state, ReadingsRun(run), now), ...)
    before = _session_view(state)
    if _quiet_prefix(state, run, whole=True) != n:
        return (*step(state, ReadingsRun(run), now), ...)
    now_ms = _ms(now)
    fx: list[Effect] = []
    s = state
    due = next_due_ms(s)
    if due is not None and due <= now_ms:
        s = state.copy()
        _timers(s, now_ms, fx)
        _session_updated(s, before, fx)
        return s, tuple(fx), ...  # a timer ran: its due time is another
    _session_updated(s, before, fx)  # says something, changes nothing
    return s, tuple(fx), due


def _session_view(s: MachineState) -> tuple[object, ...] | None:
    sess = s.session
    return None if sess is None else _view(sess, s.status)


def _view(sess: Session, status: Status) -> tuple[object, ...]:
    # notes[2] is ``provisional`` (read without its property: this runs twice for every event of a session)
    return (sess.session_id, status, sess.energy_mwh, sess.idle_ms, sess.notes[2], sess.balance_minor)


def _go(s: MachineState, new: Status, reason: str, now_ms: int, fx: list[Effect]) -> None:
    old = s.status
    if old is new:
        return
    if (old, new) not in _ALLOWED:
        raise AssertionError(f"transition {old} -> {new} is not in the table")
    s.status = new
    s.since_ms = now_ms
    s.reason = reason
    fx.append(StateChanged(s.mac, old, new, reason))


def _command(s: MachineState, on: bool, now_ms: int, fx: list[Effect], reason: str) -> None:
    """Issue a new relay command (a fresh confirmation window)."""
    s.cmd_on = on
    s.cmd_at_ms = now_ms
    s.cmd_confirmed = False
    s.cmd_first_seq = s.cmd_seq + 1
    _send(s, on, now_ms, fx, reason)


def _send(s: MachineState, on: bool, now_ms: int, fx: list[Effect], reason: str) -> None:
    s.cmd_seq += 1
    s.cmd_sent_ms = now_ms
    session_id = s.session.session_id if s.session is not None else ""
    # Unique across restarts from an older checkpoint too (the agent executes each id at most once).
    command_id = f"{s.mac}.{s.cmd_seq}.{now_ms}"
    auto_off = s.params.auto_off_s if on else 0
    fx.append(SendRelay(s.mac, on, auto_off, session_id, command_id, reason))


def _observed_on(s: MachineState, relay_on: bool, power_w: float) -> bool:
    """What a sample says about the relay for comparison with the command in force."""
    if s.cmd_on:
        return relay_on
    # Commanded off: power flowing counts as "on" even if the relay claims to be open.
    return relay_on or power_w >= s.params.start_w


def _counter_delta(s: MachineState, r: Reading) -> tuple[int, bool, str]:
    """Energy since the previous sample, whether the counter was reset, and why energy was held back.

    A counter that goes down is a reset (the new counter is all new energy) only when the device shows
    it restarted (its uptime went down); otherwise the step counts zero and is flagged. A step above
    what the plug can physically deliver in the time between the two samples (``rated_power_w`` x the
    gap x 1.2) is billed only up to that bound and flagged for review.
    """
    prev = s.counter_mwh
    if prev is None:
        return 0, False, ""
    rebooted = s.uptime_s is not None and r.uptime_s is not None and r.uptime_s < s.uptime_s
    if rebooted:
        delta, reset = max(r.energy_mwh, 0), True
    elif r.energy_mwh < prev:
        return 0, False, f"counter went down from {prev} to {r.energy_mwh} mWh without a restart"
    else:
        delta, reset = r.energy_mwh - prev, False
    # Time since the counter was last known: the previous sample, or a resumed session's start.
    since = s.last_ts_ms if s.last_ts_ms is not None else (s.session.started_at_ms if s.session else r.ts_ms)
    gap_ms = r.ts_ms - since
    bound = energy_bound_mwh(s.params, gap_ms)
    if delta > bound:
        return bound, reset, f"{delta} mWh in {gap_ms / 1000:.0f} s is above the plug's bound of {bound} mWh"
    return delta, reset, ""


def energy_bound_mwh(params: PlugParams, gap_ms: int) -> int:
    """The most energy a plug can deliver in ``gap_ms``: rated power x time x 1.2, in mWh (1 mWh = 3.6 Ws)."""
    return int(params.rated_power_w * max(gap_ms, 0) * 1.2 / 3600)


def _run(prev: int | None, holds: bool, counted_ms: int) -> int | None:
    if not holds:
        return None
    return 0 if prev is None else prev + counted_ms


def _on_readings(s: MachineState, ev: Readings, now_ms: int, fx: list[Effect]) -> None:
    for r in ev.readings:
        if r.mac != s.mac:
            raise ValueError(f"reading for {r.mac} fed to the machine of {s.mac}")
        if s.last_ts_ms is not None and r.ts_ms <= s.last_ts_ms:
            continue  # duplicate or out of order: already accounted for
        _sample(s, r, now_ms, fx)


def _sample(s: MachineState, r: Reading, now_ms: int, fx: list[Effect]) -> None:
    p = s.params
    stale_ms = p.stale_after_s * 1000
    gap = None if s.last_ts_ms is None else r.ts_ms - s.last_ts_ms
    # Only time between samples close enough together counts towards a run: gaps freeze timers.
    counted = gap if gap is not None and gap <= stale_ms else 0
    delta, reset, held = _counter_delta(s, r)
    sess = s.session
    if held:
        fx.append(Alert(s.mac, "bad_readings", held))
    if sess is not None and s.status is not _FLT:
        sess.energy_mwh += delta
        if held and not sess.review:
            sess.review = held
        if reset:
            sess.counter_resets += 1
            fx.append(Alert(s.mac, "counter_reset", f"energy counter reset to {r.energy_mwh} mWh; bridged"))
    was_low = s.low_ms is not None
    s.last_ts_ms = r.ts_ms
    s.power_w = r.power_w
    s.counter_mwh = r.energy_mwh
    s.uptime_s = r.uptime_s
    s.relay_on = r.relay_on
    s.errors = r.errors
    s.stale = False
    high = r.power_w >= p.start_w
    low = r.power_w < p.stop_w
    s.high_ms = _run(s.high_ms, high, counted)
    s.low_ms = _run(s.low_ms, low, counted)
    s.over_ms = _run(s.over_ms, r.power_w > p.max_power_w, counted)

    if s.status is _OFF:
        _resume(s, now_ms, fx)
    status = s.status
    if sess is not None and status is _SEV and low and was_low:
        sess.idle_ms += counted
    if sess is not None and status is _AU:
        sess.noload_ms += max(0, min(counted, r.ts_ms - s.since_ms))

    if status is not _FLT and r.errors & _FAULT_MASK:
        flags = DeviceFlag(r.errors) & FAULT_FLAGS
        if flags:
            names = ",".join(f.name.lower() for f in DeviceFlag if f and f in flags and f.name)
            _fault(s, now_ms, f"device_error:{names}", fx)
            return
    if status is not _FLT and s.over_ms is not None and s.over_ms >= p.max_power_confirm_s * 1000:
        _fault(s, now_ms, "overpower", fx)
        return
    if _check_relay(s, r, now_ms, fx):
        return

    status = s.status
    if status is _AU:
        if s.cmd_on and s.cmd_confirmed and s.high_ms is not None and s.high_ms >= p.start_confirm_s * 1000:
            _go(s, _CH, "load_detected", now_ms, fx)
        elif sess is not None and sess.noload_ms >= p.no_load_timeout_s * 1000:
            _finish(s, StopReason.NO_LOAD, "no_load_timeout", now_ms, fx)
    elif status is _CH:
        if low:
            _go(s, _SEV, "load_stopped", now_ms, fx)
    elif status is _SEV:
        if s.high_ms is not None and s.high_ms >= p.start_confirm_s * 1000:
            _go(s, _CH, "load_resumed", now_ms, fx)
        elif s.low_ms is not None and s.low_ms >= p.complete_after_s * 1000:
            _finish(s, StopReason.COMPLETE, "complete", now_ms, fx)
    elif (
        status is _FIN
        and s.cmd_on is False
        and r.ts_ms >= s.cmd_at_ms
        and not _observed_on(s, r.relay_on, r.power_w)
    ):
        s.cmd_confirmed = True
        _finalize(s, now_ms, fx)
        return
    _check_credit(s, now_ms, fx)


def _check_relay(s: MachineState, r: Reading, now_ms: int, fx: list[Effect]) -> bool:
    """Compare a sample with the relay command in force; True if the plug faulted."""
    p = s.params
    if s.cmd_on is None:
        # Never commanded (a plug the hub just met): anything on without a session is unauthorized.
        if s.session is None and (r.relay_on or r.power_w >= p.start_w):
            fx.append(Alert(s.mac, "unauthorized_draw", f"relay on / {r.power_w:.1f} W with no session"))
            _command(s, False, now_ms, fx, "unauthorized_draw")
        return False
    observed = _observed_on(s, r.relay_on, r.power_w)
    if observed == s.cmd_on:
        if not s.cmd_confirmed and r.ts_ms >= s.cmd_at_ms:
            s.cmd_confirmed = True
        return False
    if r.ts_ms < s.cmd_at_ms:
        # Sampled before the command in force was issued (a batch in flight when the relay switched):
        # it says nothing about whether the plug obeyed.
        return False
    if not s.cmd_confirmed:
        if r.ts_ms >= s.cmd_at_ms + p.relay_confirm_s * 1000 and s.status is not _FLT:
            want = "on" if s.cmd_on else "off"
            _fault(s, now_ms, f"relay_mismatch: commanded {want}, plug reports otherwise", fx)
            return True
        return False
    # A confirmed state changed on its own: the plug's button, a reboot restoring its state.
    if s.session is None and not s.cmd_on:
        fx.append(Alert(s.mac, "unauthorized_draw", f"relay on / {r.power_w:.1f} W with no session"))
        _command(s, False, now_ms, fx, "unauthorized_draw")
    else:
        want = "on" if s.cmd_on else "off"
        fx.append(Alert(s.mac, "relay_changed", f"relay no longer {want}; command re-sent"))
        _command(s, bool(s.cmd_on), now_ms, fx, "reassert")
    return False


def _out_of_credit(sess: Session, energy_mwh: int) -> bool:
    """Whether ``sess`` with ``energy_mwh`` delivered has a projected cost above zero and at least its
    balance (``Session.cost``, exact). Most calls are far from the balance: a float bound on the cost
    from above (every billing step rounded up a whole step, a relative margin far beyond float error)
    settles those without the Decimal pricing, which decides the rest."""
    t = sess.tariff
    balance = sess.balance_minor
    idle_s = sess.idle_ms / 1000 - t.idle_grace_s
    most = (
        (energy_mwh / 1000 + t.energy_step_wh) / 1000 * float(t.price_per_kwh_minor)
        + (max(idle_s, 0.0) + t.time_step_s) / 60 * float(t.idle_price_per_minute_minor)
        + t.session_fee_minor
    )
    if most * (1 + 1e-9) + 1e-9 < balance and energy_mwh >= 0 and sess.idle_ms >= 0:
        return False
    include_fee = sess.stop_reason != StopReason.NO_LOAD
    projected = session_cost(t, energy_mwh, sess.idle_ms, include_fee=include_fee).exact_minor
    return projected > 0 and projected >= balance


def _check_credit(s: MachineState, now_ms: int, fx: list[Effect]) -> None:
    sess = s.session
    if sess is None or s.status not in RELAY_ON_STATES:
        return
    if _out_of_credit(sess, sess.energy_mwh):
        _go(s, _SEVSE, "out_of_credit", now_ms, fx)
        fx.append(
            Alert(
                s.mac,
                "out_of_credit",
                f"session {sess.session_id}: cost reached balance {sess.balance_minor}",
            )
        )
        _command(s, False, now_ms, fx, "out_of_credit")


def _resume(s: MachineState, now_ms: int, fx: list[Effect]) -> None:
    target = s.resume or _A
    s.resume = None
    sess = s.session
    if sess is not None and sess.provisional and target is not _FIN:
        sess.stop_reason = StopReason.POWER_LOSS
        target = _FIN
    if target is _A and s.disabled:
        target = _UN
    _go(s, target, "back_online", now_ms, fx)
    if sess is not None and target in RELAY_ON_STATES:
        _command(s, True, now_ms, fx, "back_online")
    elif target is _FIN:
        _command(s, False, now_ms, fx, "back_online")


def _finish(s: MachineState, reason: StopReason, why: str, now_ms: int, fx: list[Effect]) -> None:
    """Stop the open session: relay off, then bill once the final counter reading is in."""
    sess = s.session
    assert sess is not None
    sess.stop_reason = reason
    _go(s, _FIN, why, now_ms, fx)
    if s.cmd_on is not False:
        _command(s, False, now_ms, fx, why)


def _record(s: MachineState, now_ms: int) -> SessionRecord:
    sess = s.session
    assert sess is not None
    return SessionRecord(
        session_id=sess.session_id,
        user_id=sess.user_id,
        mac=s.mac,
        request_id=sess.request_id,
        tariff=sess.tariff,
        started_at_ms=sess.started_at_ms,
        ended_at_ms=now_ms,
        start_counter_mwh=sess.start_counter_mwh,
        stop_counter_mwh=s.counter_mwh if s.counter_mwh is not None else sess.start_counter_mwh,
        energy_mwh=sess.energy_mwh,
        counter_resets=sess.counter_resets,
        idle_ms=sess.idle_ms,
        cost=sess.cost(),
        stop_reason=StopReason(sess.stop_reason),
        provisional=sess.provisional,
        review=sess.review,
    )


def _close_session(s: MachineState, now_ms: int, fx: list[Effect]) -> None:
    fx.append(SessionFinished(_record(s, now_ms)))
    assert s.session is not None
    s.last_session_id = s.session.session_id
    s.session = None


def _finalize(s: MachineState, now_ms: int, fx: list[Effect]) -> None:
    _close_session(s, now_ms, fx)
    _go(s, _UN if s.disabled else _A, "session_billed", now_ms, fx)


def _fault(s: MachineState, now_ms: int, why: str, fx: list[Effect]) -> None:
    if s.session is not None:
        s.session.stop_reason = StopReason.FAULT
        _close_session(s, now_ms, fx)
    _go(s, _FLT, why, now_ms, fx)
    fx.append(Alert(s.mac, "fault", why))
    if s.cmd_on is not False or not s.cmd_confirmed:
        _command(s, False, now_ms, fx, "fault")


def _reject(
    s: MachineState, fx: list[Effect], request_id: str, session_id: str, user_id: str, why: str
) -> None:
    fx.append(RejectRequest(s.mac, request_id, session_id, user_id, why))


def _fresh(s: MachineState, now_ms: int) -> bool:
    return s.last_ts_ms is not None and now_ms - s.last_ts_ms < s.params.stale_after_s * 1000


_BUSY_REASONS: dict[Status, str] = {
    _OFF: "plug_offline",
    _FLT: "plug_faulted",
    _UN: "plug_unavailable",
}


def _on_start(s: MachineState, ev: StartRequest, now_ms: int, fx: list[Effect]) -> None:
    if ev.session_id in (s.last_session_id, s.session.session_id if s.session else None):
        return  # a redelivered request for a session we already handled
    resuming = ev.start_counter_mwh is not None
    # A resumed session may attach to a plug not heard from since the restart (OFFLINE): it becomes
    # AUTHORIZED, relay "on" re-sent, when the plug reports again.
    offline_resume = resuming and s.status is _OFF and s.session is None and s.resume in (None, _A)
    if s.status is not _A and not offline_resume:
        why = _BUSY_REASONS.get(s.status, "plug_busy")
        _reject(s, fx, ev.request_id, ev.session_id, ev.user_id, why)
        return
    if not resuming and (not _fresh(s, now_ms) or s.counter_mwh is None):
        _reject(s, fx, ev.request_id, ev.session_id, ev.user_id, "plug_offline")
        return
    if not resuming and not can_start(ev.tariff, ev.balance_minor):
        _reject(s, fx, ev.request_id, ev.session_id, ev.user_id, "insufficient_balance")
        return
    started_at = now_ms
    energy = resets = 0
    if ev.start_counter_mwh is not None:
        # Resume: bill from the session's own start counter. A counter sampled before the session began
        # says nothing about it, so it becomes the baseline; a newer one already holds session energy.
        started_at = ev.started_at_ms if ev.started_at_ms is not None else now_ms
        start = ev.start_counter_mwh
        if s.counter_mwh is None or s.last_ts_ms is None or s.last_ts_ms < started_at:
            s.counter_mwh = start
        elif s.counter_mwh >= start:
            energy = s.counter_mwh - start
        else:
            energy, resets = s.counter_mwh, 1  # reset since the start: the new counter is all session energy
    else:
        # The relay is off in AVAILABLE, so the last counter is the counter at relay-on.
        start = s.counter_mwh  # type: ignore[assignment]
    s.session = Session(
        session_id=ev.session_id,
        user_id=ev.user_id,
        request_id=ev.request_id,
        tariff=ev.tariff,
        balance_minor=ev.balance_minor,
        started_at_ms=started_at,
        start_counter_mwh=start,
        energy_mwh=energy,
        counter_resets=resets,
    )
    finishing = resuming and bool(ev.stop_reason)
    if finishing:
        known = ev.stop_reason in StopReason._value2member_map_
        s.session.stop_reason = StopReason(ev.stop_reason) if known else StopReason.REMOTE
    if offline_resume:
        s.resume = _FIN if finishing else _AU
    elif finishing:
        _go(s, _FIN, "session_resumed_finishing", now_ms, fx)
    else:
        _go(s, _AU, "session_resumed" if resuming else "start_requested", now_ms, fx)
    fx.append(
        SessionStarted(
            mac=s.mac,
            session_id=ev.session_id,
            user_id=ev.user_id,
            request_id=ev.request_id,
            tariff=ev.tariff,
            started_at_ms=started_at,
            start_counter_mwh=start,
            balance_minor=ev.balance_minor,
        )
    )
    if not offline_resume:
        _command(s, not finishing, now_ms, fx, "session_finishing" if finishing else "session_start")


def _on_stop(s: MachineState, ev: StopRequest, now_ms: int, fx: list[Effect]) -> None:
    sess = s.session
    if sess is None:
        if ev.session_id and ev.session_id == s.last_session_id:
            return  # already finished: a redelivered stop
        _reject(s, fx, ev.request_id, ev.session_id, ev.user_id, "no_session")
        return
    if ev.session_id and ev.session_id != sess.session_id:
        _reject(s, fx, ev.request_id, ev.session_id, ev.user_id, "unknown_session")
        return
    if not ev.remote and ev.user_id != sess.user_id:
        _reject(s, fx, ev.request_id, ev.session_id, ev.user_id, "not_session_owner")
        return
    reason = StopReason.REMOTE if ev.remote else StopReason.LOCAL
    _stop_session(s, reason, "remote_stop" if ev.remote else "stop_requested", now_ms, fx)


def _stop_session(s: MachineState, reason: StopReason, why: str, now_ms: int, fx: list[Effect]) -> None:
    sess = s.session
    assert sess is not None
    if s.status in LIVE_SESSION_STATES:
        _finish(s, reason, why, now_ms, fx)
    elif s.status is _OFF and s.resume is not _FIN:
        # Close it when the plug reports again (the relay command cannot be confirmed now).
        sess.stop_reason = reason
        s.resume = _FIN
    # FINISHING already: nothing more to do.


def _on_command_result(s: MachineState, ev: CommandResult, now_ms: int, fx: list[Effect]) -> None:
    parts = ev.command_id.split(".")
    if len(parts) != 3 or parts[0] != s.mac or not parts[1].isdigit():
        return  # not one of ours
    if int(parts[1]) < s.cmd_first_seq or s.cmd_on is None:
        return  # an ack of an older command
    if not ev.ok:
        fx.append(Alert(s.mac, "command_failed", f"relay command {ev.command_id} failed; retrying"))
        return
    if ev.relay_on is not None and ev.relay_on == s.cmd_on:
        s.cmd_confirmed = True


def _on_enable(s: MachineState, ev: OperatorEnable, now_ms: int, fx: list[Effect]) -> None:
    s.disabled = False
    if s.status is _UN:
        _go(s, _A, "operator_enabled", now_ms, fx)
    elif s.status is _FLT:
        if DeviceFlag(s.errors) & FAULT_FLAGS:
            _reject(s, fx, "", "", "", "device_errors_present")
            return
        s.over_ms = None
        _go(s, _A, "fault_cleared", now_ms, fx)
    elif s.status is _OFF and s.resume is _UN:
        s.resume = _A


def _on_disable(s: MachineState, ev: OperatorDisable, now_ms: int, fx: list[Effect]) -> None:
    s.disabled = True
    if s.status is _A:
        _go(s, _UN, "operator_disabled", now_ms, fx)
    elif s.session is not None:
        _stop_session(s, StopReason.REMOTE, "operator_disabled", now_ms, fx)


def _on_balance(s: MachineState, ev: BalanceUpdate, now_ms: int, fx: list[Effect]) -> None:
    sess = s.session
    if sess is None or sess.user_id != ev.user_id:
        return
    sess.balance_minor = ev.balance_minor
    if s.status in RELAY_ON_STATES:
        _check_credit(s, now_ms, fx)  # a refund or a debit elsewhere can end the credit at once
    elif s.status is _SEVSE and sess.cost().exact_minor < ev.balance_minor:
        sess.noload_ms = 0
        s.high_ms = None
        _go(s, _AU, "topped_up", now_ms, fx)
        _command(s, True, now_ms, fx, "topped_up")


def _on_plug_fault(s: MachineState, ev: PlugFault, now_ms: int, fx: list[Effect]) -> None:
    if s.status is _FLT or s.status is _OFF:
        # Already faulted or unreachable: make sure the relay is commanded off all the same.
        if s.cmd_on is not False:
            _command(s, False, now_ms, fx, "fault")
        fx.append(Alert(s.mac, "fault", ev.reason))
        return
    _fault(s, now_ms, ev.reason, fx)


def _on_tick(s: MachineState, ev: Tick, now_ms: int, fx: list[Effect]) -> None:
    """Nothing but time: the rules in ``_timers`` run after every event."""


def _timers(s: MachineState, now_ms: int, fx: list[Effect]) -> None:
    p = s.params
    if s.status is not _OFF:
        seen = s.last_ts_ms if s.last_ts_ms is not None else s.since_ms
        age = now_ms - seen
        if age >= p.offline_after_s * 1000:
            s.resume = s.status
            _go(s, _OFF, "no_data", now_ms, fx)
            fx.append(Alert(s.mac, "offline", f"no reading for {age / 1000:.0f} s"))
        elif age >= p.stale_after_s * 1000 and not s.stale:
            s.stale = True
            fx.append(Alert(s.mac, "stale", f"no reading for {age / 1000:.0f} s; timers frozen"))
    sess = s.session
    if s.status is _OFF:
        if sess is not None and not sess.provisional and now_ms - s.since_ms >= p.offline_abandon_s * 1000:
            sess.provisional = True
            fx.append(
                Alert(
                    s.mac,
                    "session_provisional",
                    f"session {sess.session_id}: plug offline; closes on reconnect",
                )
            )
        return
    # Relay command not confirmed yet: a reading after the window that disagrees is a fault;
    # otherwise re-send every relay_retry_s.
    if s.cmd_on is not None and not s.cmd_confirmed:
        window_over = now_ms - s.cmd_at_ms >= p.relay_confirm_s * 1000
        seen_after = s.last_ts_ms is not None and s.last_ts_ms >= s.cmd_at_ms and s.relay_on is not None
        if (
            window_over
            and seen_after
            and s.status is not _FLT
            and _observed_on(s, bool(s.relay_on), s.power_w) != s.cmd_on
        ):
            want = "on" if s.cmd_on else "off"
            _fault(s, now_ms, f"relay_mismatch: commanded {want}, plug reports otherwise", fx)
            return
        if now_ms - s.cmd_sent_ms >= p.relay_retry_s * 1000:
            _send(s, s.cmd_on, now_ms, fx, "retry")
    if sess is None:
        return
    if s.status is _FIN:
        if s.cmd_on is False and s.cmd_confirmed and now_ms - s.cmd_at_ms >= p.relay_confirm_s * 1000:
            _finalize(s, now_ms, fx)
        return
    if s.status in LIVE_SESSION_STATES and now_ms - sess.started_at_ms >= p.max_session_s * 1000:
        _finish(s, StopReason.TIME_LIMIT, "time_limit", now_ms, fx)
        return
    if s.status is _SEVSE and now_ms - s.since_ms >= p.credit_grace_s * 1000:
        _finish(s, StopReason.OUT_OF_CREDIT, "credit_grace_expired", now_ms, fx)
        return
    if s.status in RELAY_ON_STATES and s.cmd_on and now_ms - s.cmd_sent_ms >= p.keepalive_s * 1000:
        _send(s, True, now_ms, fx, "keepalive")


def next_due_ms(s: MachineState) -> int | None:
    """The earliest hub time (ms) at which a ``Tick`` could change ``s``; None: no timer until another event.

    Mirrors the rules of ``_timers`` (every ``now - X >= D`` there is an ``X + D`` here) and errs early:
    a plug stepped before its time is merely re-armed, one stepped late would be a bug. The hub keeps
    plugs by this time so that ``Hub.tick`` steps only the machines whose timers are due."""
    p = s.params
    status = s.status
    sess = s.session
    if status is _OFF:
        if sess is not None and not sess.provisional:
            return math.floor(s.since_ms + p.offline_abandon_s * 1000)
        return None
    # Each value read once: on the hub's entry, several of them are columns behind a property. The
    # earliest of the times below, kept as it goes (no list per call: this runs twice per event).
    last_ts = s.last_ts_ms
    seen = last_ts if last_ts is not None else s.since_ms
    due: float = seen + p.offline_after_s * 1000
    if not s.stale:
        d: float = seen + p.stale_after_s * 1000
        if d < due:
            due = d
    cmd_on = s.cmd_on
    confirmed = s.cmd_confirmed
    if cmd_on is not None and not confirmed:
        d = s.cmd_at_ms + p.relay_confirm_s * 1000
        if d < due:
            due = d
        d = s.cmd_sent_ms + p.relay_retry_s * 1000
        if d < due:
            due = d
    if sess is not None:
        if status is _FIN:
            if cmd_on is False and confirmed:
                d = s.cmd_at_ms + p.relay_confirm_s * 1000
                if d < due:
                    due = d
        else:
            if status in LIVE_SESSION_STATES:
                d = sess.started_at_ms + p.max_session_s * 1000
                if d < due:
                    due = d
            if status is _SEVSE:
                d = s.since_ms + p.credit_grace_s * 1000
                if d < due:
                    due = d
            if status in RELAY_ON_STATES and cmd_on:
                d = s.cmd_sent_ms + p.keepalive_s * 1000
                if d < due:
                    due = d
    return math.floor(due)  # floor: never later than the rule, whatever the float rounding


def _on_run(s: MachineState, ev: ReadingsRun, now_ms: int, fx: list[Effect]) -> None:
    run = ev.run
    if run.mac != s.mac:
        raise ValueError(f"readings for {run.mac} fed to the machine of {s.mac}")
    done = _quiet_prefix(s, run)
    n = len(run.ts_ms)
    if done < n:
        mac = s.mac
        rest = tuple(
            Reading(
                mac,
                run.ts_ms[i],
                run.power_w[i],
                run.energy_mwh[i],
                run.relay_on[i],
                run.voltage_v[i],
                run.current_a[i],
                run.temperature_c[i],
                run.errors[i],
                run.uptime_s[i],
            )
            for i in range(done, n)
        )
        _on_readings(s, Readings(rest), now_ms, fx)


def _quiet_prefix(s: MachineState, run: RunColumns, whole: bool = False) -> int:
    """Apply the leading samples of ``run`` that cannot change ``s`` beyond its counters (exactly what
    ``_sample`` would do with them, which would emit nothing); returns how many were applied.
    ``whole``: all of them or none (``s`` is untouched unless every sample is quiet)."""
    status = s.status
    sess = s.session
    cmd_on = s.cmd_on
    if status is _A:
        if sess is not None or cmd_on is True:
            return 0
    elif status is _CH:
        if sess is None or cmd_on is not True:
            return 0
    else:
        return 0
    last_ts = s.last_ts_ms
    prev = s.counter_mwh
    if last_ts is None or prev is None:
        return 0
    ts_col, pw_col, e_col = run.ts_ms, run.power_w, run.energy_mwh
    relay_col, err_col, up_col = run.relay_on, run.errors, run.uptime_s
    n = len(ts_col)
    if n == 0:
        return 0
    if sess is not None:
        # Credit for the whole chunk: cost only grows with energy (idle time stands still in CHARGING), so
        # if the most the chunk can bring leaves credit, no sample of it runs out.
        most = max(e_col) - prev
        if most < 0 or _out_of_credit(sess, sess.energy_mwh + most):
            return 0
    p = s.params
    if _quiet_columns(s, run, last_ts, prev, status, cmd_on, sess, p):
        return n
    start_w, stop_w, max_w = p.start_w, p.stop_w, p.max_power_w
    rated = p.rated_power_w
    stale_ms = p.stale_after_s * 1000
    charging = status is _CH
    confirmed, cmd_at = s.cmd_confirmed, s.cmd_at_ms
    high, low = s.high_ms, s.low_ms
    up_prev = s.uptime_s
    added = 0
    i = 0
    while i < n:
        ts = ts_col[i]
        pw = pw_col[i]
        e = e_col[i]
        up = up_col[i]
        if ts <= last_ts or err_col[i] & _FAULT_MASK or pw > max_w or e < prev:
            break
        if up_prev is not None and up is not None and up < up_prev:
            break  # a reboot: the counter reset is bridged by the per-sample rules
        gap = ts - last_ts
        delta = e - prev
        if delta > int(rated * gap * 1.2 / 3600):  # energy_bound_mwh
            break
        on = relay_col[i]
        is_high = pw >= start_w
        if cmd_on is None:
            if on or is_high:
                break  # unauthorized draw
        else:
            observed = on if cmd_on else (on or is_high)
            if observed != cmd_on:
                break
            if not confirmed and ts >= cmd_at:
                confirmed = True
        is_low = pw < stop_w
        if charging and is_low:
            break  # load stopped
        counted = gap if gap <= stale_ms else 0
        high = (0 if high is None else high + counted) if is_high else None
        low = (0 if low is None else low + counted) if is_low else None
        added += delta
        last_ts, prev, up_prev = ts, e, up
        i += 1
    if whole and i < n:
        return 0
    if i:
        j = i - 1
        s.last_ts_ms = last_ts
        s.power_w = pw_col[j]
        s.counter_mwh = prev
        s.uptime_s = up_prev
        s.relay_on = relay_col[j]
        s.errors = err_col[j]
        s.stale = False
        s.high_ms, s.low_ms, s.over_ms = high, low, None
        s.cmd_confirmed = confirmed
        if sess is not None:
            sess.energy_mwh += added
    return i


def _quiet_columns(
    s: MachineState,
    run: RunColumns,
    last_ts: int,
    prev: int,
    status: Status,
    cmd_on: bool | None,
    sess: Session | None,
    p: PlugParams,
) -> bool:
    """The loop of ``_quiet_prefix`` decided a column at a time (in C) for a run it would apply whole
    (the caller checked the status, command and credit): True, and ``s`` advanced exactly as the loop
    would advance it, if every sample is quiet and each debounce run either holds on every sample or on
    none; False, and ``s`` untouched, otherwise (the loop decides, sample by sample)."""
    ts_col, pw_col, e_col = run.ts_ms, run.power_w, run.energy_mwh
    relay_col, up_col = run.relay_on, run.uptime_s
    gaps = list(map(operator.sub, ts_col, [last_ts, *ts_col[:-1]]))
    min_gap, max_gap = min(gaps), max(gaps)
    if min_gap <= 0 or max_gap > p.stale_after_s * 1000 or any(run.errors):
        return False  # out of order, a gap that freezes the timers, device flags: sample by sample
    total_pw = sum(pw_col)
    if total_pw != total_pw:
        return False  # NaN: min and max would not see it
    min_pw, max_pw = min(pw_col), max(pw_col)
    if max_pw > p.max_power_w:
        return False
    last_e = e_col[-1]
    if min(e_col) != prev or max(e_col) != prev:  # energy flowed: never down, within the plug's bound
        steps = list(map(operator.sub, e_col, [prev, *e_col[:-1]]))
        if min(steps) < 0 or max(steps) > int(p.rated_power_w * min_gap * 1.2 / 3600):
            return False
    if None in up_col:
        return False
    ups = cast("Sequence[int]", up_col)
    up_prev = s.uptime_s
    if (up_prev is not None and ups[0] < up_prev) or not all(map(operator.le, ups, ups[1:])):
        return False  # a reboot: bridged by the per-sample rules
    if cmd_on:
        if False in relay_col:
            return False
    elif True in relay_col or max_pw >= p.start_w:
        return False  # unauthorized draw, or a relay that disobeys "off"
    charging = status is _CH
    all_low, none_low = max_pw < p.stop_w, min_pw >= p.stop_w
    if charging and not none_low:
        return False  # load stopped
    all_high, none_high = min_pw >= p.start_w, max_pw < p.start_w
    if not (all_low or none_low) or not (all_high or none_high):
        return False  # a debounce run that starts or breaks inside the chunk
    total = ts_col[-1] - last_ts  # every gap counts (none is stale): they add up to this

    def held(run_ms: int | None, holds: bool) -> int | None:
        if not holds:
            return None
        return total - gaps[0] if run_ms is None else run_ms + total

    j = len(ts_col) - 1
    s.take_sample(
        ts_col[j],
        pw_col[j],
        last_e,
        up_col[j],
        relay_col[j],
        held(s.high_ms, all_high),
        held(s.low_ms, all_low),
    )
    if cmd_on is not None and ts_col[j] >= s.cmd_at_ms and not s.cmd_confirmed:
        s.cmd_confirmed = True
    if sess is not None:  # ``s.session``, read by the caller
        sess.energy_mwh += last_e - prev
    return True


_Handler = Any
_HANDLERS: dict[type, _Handler] = {
    Readings: _on_readings,
    ReadingsRun: _on_run,
    Tick: _on_tick,
    StartRequest: _on_start,
    StopRequest: _on_stop,
    CommandResult: _on_command_result,
    OperatorEnable: _on_enable,
    OperatorDisable: _on_disable,
    BalanceUpdate: _on_balance,
    PlugFault: _on_plug_fault,
}


# ---------------------------------------------------------------------------------------------
# Checkpointing
# ---------------------------------------------------------------------------------------------


def to_dict(state: MachineState) -> dict[str, Any]:
    """The state as plain JSON-able values (for the hub's checkpoint)."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(state, name)
        if name == "params":
            value = value.to_dict()
        elif name == "session":
            value = None if value is None else _session_to_dict(value)
        elif isinstance(value, Status):
            value = str(value)
        out[name] = value
    return out


# A session's values in their order (a checkpoint's keys).
SESSION_FIELDS: tuple[str, ...] = (
    "session_id",
    "user_id",
    "request_id",
    "tariff",
    "balance_minor",
    "started_at_ms",
    "start_counter_mwh",
    "energy_mwh",
    "idle_ms",
    "noload_ms",
    "counter_resets",
    "stop_reason",
    "provisional",
    "review",
)


def _session_to_dict(sess: Session) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SESSION_FIELDS:
        value = getattr(sess, name)
        if name == "tariff":
            value = value.to_dict()
        elif isinstance(value, StrEnum):
            value = str(value)
        out[name] = value
    return out


def from_dict(data: dict[str, Any], params: PlugParams | None = None) -> MachineState:
    """Rebuild a state from :func:`to_dict` output; ``params`` replaces the saved ones if given."""
    values = dict(data)
    values.pop("on_sent_ms", None)  # checkpoints before it was folded into cmd_sent_ms (the same while on)
    values["params"] = params if params is not None else PlugParams(**values["params"])
    values["status"] = Status(values["status"])
    values["reason"] = sys.intern(
        values.get("reason", "")
    )  # a few dozen distinct reasons, shared by all plugs
    if values.get("resume") is not None:
        values["resume"] = Status(values["resume"])
    raw = values.get("session")
    if raw is not None:
        sess = dict(raw)
        sess["tariff"] = Tariff.from_dict(sess["tariff"])
        values["session"] = Session(**sess)
    return MachineState(**values)
