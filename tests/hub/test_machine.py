"""The pure plug state machine, driven by event objects only.

``Plug`` is a tiny simulated plug + agent: it keeps the physical relay (which follows the machine's
``SendRelay`` effects unless told not to), the energy counter and the device uptime, and feeds the
machine one reading at a time. Every scenario of the transition table has a test keyed by the row
id; a test checks that no row is left without one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from chargectl.common.readings import DeviceFlag, Reading
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.machine import (
    FIELDS,
    TRANSITIONS,
    Alert,
    BalanceUpdate,
    CommandResult,
    Effect,
    Event,
    MachineState,
    OperatorDisable,
    OperatorEnable,
    PlugFault,
    Readings,
    RejectRequest,
    SendRelay,
    SessionFinished,
    SessionRecord,
    SessionStarted,
    SessionUpdated,
    StartRequest,
    StateChanged,
    Status,
    StopReason,
    StopRequest,
    Tick,
    from_dict,
    new_state,
    step,
    to_dict,
)
from chargectl.services.hub.params import DEFAULTS, PlugParams

MAC = "AABBCCDDEEFF"
T0 = 1_700_000_000.0
# Generic defaults (stop 15 W, start 35 W, complete 600 s, relay confirm 60 s, stale 90 s, offline
# 300 s, auto-off 300 s) with a 20 s start confirmation so tests need few samples.
P = dataclasses.replace(DEFAULTS["generic"], start_confirm_s=20.0)
# 30 minor units per kWh, 50 fee, 100 needed to start.
TARIFF = Tariff(
    tariff_id="t1", price_per_kwh_minor=Decimal(30), session_fee_minor=50, min_start_balance_minor=100
)

S = Status


class Plug:
    """A simulated plug feeding one machine; time moves only through ``read``/``tick``."""

    def __init__(self, params: PlugParams = P, *, online: bool = True) -> None:
        self.t = T0
        self.state = new_state(MAC, params, T0)
        self.counter = 5_000_000
        self.uptime = 10_000
        self.relay = False
        self.follow = True  # the simulated agent carries out relay commands
        self.log: list[Effect] = []
        self.started_at = T0
        if online:
            self.read(0)

    @property
    def status(self) -> Status:
        return self.state.status

    def send(self, event: Event) -> list[Effect]:
        before = to_dict(self.state)
        new, fx = step(self.state, event, self.t)
        assert to_dict(self.state) == before, "step mutated its input state"
        self.state = new
        self.log.extend(fx)
        if self.follow:
            for e in fx:
                if isinstance(e, SendRelay):
                    self.relay = e.on
        return list(fx)

    def read(
        self,
        power: float = 0.0,
        dt: float = 10.0,
        *,
        relay: bool | None = None,
        mwh: int | None = None,
        errors: int = 0,
        reset_to: int | None = None,
        reboot: bool = False,
        uptime: bool = True,
    ) -> list[Effect]:
        """Advance ``dt`` and report one sample; energy defaults to ``power × dt``."""
        self.t += dt
        relay_on = self.relay if relay is None else relay
        if mwh is None:
            mwh = round(power * dt / 3.6)  # W × s / 3600 × 1000 = mWh
        if reset_to is not None:
            self.counter = reset_to
        else:
            self.counter += mwh
        self.uptime = 3 if reboot else self.uptime + int(dt)
        reading = Reading(
            MAC,
            round(self.t * 1000),
            power,
            self.counter,
            relay_on,
            errors=errors,
            uptime_s=self.uptime if uptime else None,
        )
        return self.send(Readings((reading,)))

    def tick(self, dt: float = 0.0) -> list[Effect]:
        self.t += dt
        return self.send(Tick())

    def start(
        self, balance: int = 10_000, sid: str = "s1", user: str = "u1", tariff: Tariff = TARIFF
    ) -> list[Effect]:
        self.started_at = self.t
        return self.send(StartRequest(sid, user, tariff, balance, request_id=f"r-{sid}"))

    def stop(self, user: str = "u1", *, remote: bool = False, sid: str = "") -> list[Effect]:
        return self.send(StopRequest(user_id=user, session_id=sid, remote=remote))

    def charging(self, **start: object) -> None:
        fx = self.start(**start)  # type: ignore[arg-type]
        assert self.status is S.AUTHORIZED, fx
        self.read(2000)
        self.read(2000)
        self.read(2000)  # 20 s of load at 10 s spacing
        assert self.status is S.CHARGING

    def suspended_ev(self) -> None:
        self.charging()
        self.read(5)
        assert self.status is S.SUSPENDED_EV

    def last_command(self) -> SendRelay:
        return [e for e in self.log if isinstance(e, SendRelay)][-1]


E = TypeVar("E")


def of(fx: list[Effect], cls: type[E]) -> list[E]:
    return [e for e in fx if isinstance(e, cls)]


def changes(fx: list[Effect]) -> list[tuple[Status, Status]]:
    return [(e.old, e.new) for e in of(fx, StateChanged)]


def finished(fx: list[Effect]) -> SessionRecord:
    (done,) = of(fx, SessionFinished)
    return done.record


# ---------------------------------------------------------------------------------------------
# One scenario per row of the transition table
# ---------------------------------------------------------------------------------------------


def scenario_start() -> None:
    p = Plug()
    counter = p.counter
    fx = p.start(balance=150)
    assert changes(fx) == [(S.AVAILABLE, S.AUTHORIZED)]
    (started,) = of(fx, SessionStarted)
    assert (started.session_id, started.user_id, started.request_id) == ("s1", "u1", "r-s1")
    assert started.start_counter_mwh == counter
    assert started.balance_minor == 150
    (cmd,) = of(fx, SendRelay)
    assert (cmd.on, cmd.auto_off_s, cmd.session_id) == (True, 300, "s1")


def scenario_start_rejected() -> None:
    def reason(p: Plug, **kw: object) -> str:
        before = p.status
        fx = p.start(**kw)  # type: ignore[arg-type]
        assert p.status is before
        assert changes(fx) == []
        (rej,) = of(fx, RejectRequest)
        return rej.reason

    assert reason(Plug(), balance=99) == "insufficient_balance"  # TARIFF needs 100
    busy = Plug()
    busy.start()
    assert reason(busy, sid="s2", user="u2") == "plug_busy"
    assert reason(Plug(online=False)) == "plug_offline"  # never reported
    stale = Plug()
    stale.tick(90)
    assert reason(stale) == "plug_offline"  # reported, but not recently
    faulted = Plug()
    faulted.read(0, errors=DeviceFlag.OVERTEMP)
    assert reason(faulted) == "plug_faulted"
    disabled = Plug()
    disabled.send(OperatorDisable())
    assert reason(disabled) == "plug_unavailable"


def scenario_unauthorized_draw() -> None:
    p = Plug()
    fx = p.read(800, relay=True)  # someone pressed the plug's button
    assert changes(fx) == []
    assert [a.kind for a in of(fx, Alert)] == ["unauthorized_draw"]
    (cmd,) = of(fx, SendRelay)
    assert cmd.on is False
    assert p.status is S.AVAILABLE
    # Power flowing while the relay claims to be open counts too; on a disabled plug as well.
    q = Plug()
    q.send(OperatorDisable())
    q.read(0)
    fx = q.read(100, relay=False)
    assert [a.kind for a in of(fx, Alert)] == ["unauthorized_draw"]
    assert of(fx, SendRelay)[0].on is False
    assert q.status is S.UNAVAILABLE


def scenario_load_confirmed() -> None:
    p = Plug()
    p.start()
    assert changes(p.read(2000)) == []
    assert changes(p.read(2000)) == []  # 10 s of load
    assert changes(p.read(2000)) == [(S.AUTHORIZED, S.CHARGING)]  # 20 s


def scenario_no_load() -> None:
    p = Plug()
    p.start()
    for _ in range(29):
        p.read(0)
    assert p.status is S.AUTHORIZED  # 290 s
    fx = p.read(0)  # 300 s with the relay on and no load
    assert changes(fx) == [(S.AUTHORIZED, S.FINISHING)]
    assert of(fx, SendRelay)[0].on is False
    record = finished(p.read(0))
    assert record.stop_reason is StopReason.NO_LOAD
    assert record.energy_mwh == 0
    assert record.cost_minor == 0  # no session fee when the car never drew


def scenario_load_stopped() -> None:
    p = Plug()
    p.charging()
    fx = p.read(14.9)  # below stop_w
    assert changes(fx) == [(S.CHARGING, S.SUSPENDED_EV)]
    assert of(fx, SendRelay) == []  # relay stays on


def scenario_load_resumed() -> None:
    p = Plug()
    p.suspended_ev()
    p.read(2000)
    p.read(2000)
    assert p.status is S.SUSPENDED_EV
    assert changes(p.read(2000)) == [(S.SUSPENDED_EV, S.CHARGING)]


def scenario_complete() -> None:
    p = Plug()
    p.suspended_ev()
    for _ in range(59):
        p.read(5)
    assert p.status is S.SUSPENDED_EV  # 590 s below stop_w
    fx = p.read(5)  # 600 s
    assert changes(fx) == [(S.SUSPENDED_EV, S.FINISHING)]
    assert of(fx, SendRelay)[0].on is False
    record = finished(p.read(0))
    assert record.stop_reason is StopReason.COMPLETE
    assert p.status is S.AVAILABLE


def _out_of_credit_plug() -> Plug:
    # 3000 minor per kWh: 10 Wh costs 30. Fee 50 + 2 × 30 = 110 ≥ balance 100 on the second reading.
    tariff = Tariff(price_per_kwh_minor=Decimal(3000), session_fee_minor=50, min_start_balance_minor=100)
    p = Plug()
    p.start(balance=100, tariff=tariff)
    p.read(2000, mwh=0)
    p.read(2000, mwh=0)
    p.read(2000, mwh=0)
    assert p.status is S.CHARGING
    assert changes(p.read(2000, mwh=10_000)) == []  # projected 80 < 100
    return p


def scenario_out_of_credit() -> None:
    p = _out_of_credit_plug()
    fx = p.read(2000, mwh=10_000)  # projected 110 ≥ 100
    assert changes(fx) == [(S.CHARGING, S.SUSPENDED_EVSE)]
    assert of(fx, SendRelay)[0].on is False
    assert [a.kind for a in of(fx, Alert)] == ["out_of_credit"]
    (upd,) = of(fx, SessionUpdated)
    assert (upd.status, upd.cost_minor) == (S.SUSPENDED_EVSE, 110)


def scenario_topped_up() -> None:
    p = _out_of_credit_plug()
    p.read(2000, mwh=10_000)
    assert changes(p.send(BalanceUpdate("u1", 110))) == []  # still not above the projected 110
    assert changes(p.send(BalanceUpdate("someone-else", 5000))) == []
    fx = p.send(BalanceUpdate("u1", 5000))
    assert changes(fx) == [(S.SUSPENDED_EVSE, S.AUTHORIZED)]
    assert of(fx, SendRelay)[0].on is True


def scenario_credit_grace_expired() -> None:
    p = _out_of_credit_plug()
    p.read(2000, mwh=10_000)
    for _ in range(9):
        p.read(0, dt=60)  # relay off: the plug still reports
    assert p.status is S.SUSPENDED_EVSE  # 540 s of grace
    p.read(0, dt=59)
    assert p.status is S.SUSPENDED_EVSE  # 599 s
    fx = p.tick(1)
    assert changes(fx) == [(S.SUSPENDED_EVSE, S.FINISHING)]
    record = finished(p.read(0))
    assert record.stop_reason is StopReason.OUT_OF_CREDIT
    assert record.energy_mwh == 20_000
    assert record.cost_minor == 110  # the user owes what was delivered, even past the balance


def scenario_stop() -> None:
    setups: dict[Status, Callable[[Plug], None]] = {
        S.AUTHORIZED: lambda p: p.start(),
        S.CHARGING: lambda p: p.charging(),
        S.SUSPENDED_EV: lambda p: p.suspended_ev(),
    }
    for status, setup in setups.items():
        for remote in (False, True):
            p = Plug()
            setup(p)
            assert p.status is status
            fx = p.stop(user="" if remote else "u1", remote=remote)
            assert changes(fx) == [(status, S.FINISHING)]
            assert of(fx, SendRelay)[0].on is False
            record = finished(p.read(0))
            assert record.stop_reason is (StopReason.REMOTE if remote else StopReason.LOCAL)
    p = _out_of_credit_plug()
    p.read(2000, mwh=10_000)
    fx = p.stop()
    assert changes(fx) == [(S.SUSPENDED_EVSE, S.FINISHING)]
    assert of(fx, SendRelay) == []  # already off
    assert finished(p.read(0)).stop_reason is StopReason.LOCAL
    # Someone else's stop is refused.
    q = Plug()
    q.charging()
    assert of(q.stop(user="intruder"), RejectRequest)[0].reason == "not_session_owner"
    assert of(q.stop(sid="other"), RejectRequest)[0].reason == "unknown_session"
    assert q.status is S.CHARGING
    assert of(Plug().stop(), RejectRequest)[0].reason == "no_session"


def scenario_time_limit() -> None:
    p = Plug(dataclasses.replace(P, max_session_s=200.0))
    p.charging()  # 30 s in
    for _ in range(16):
        p.read(2000)
    assert p.status is S.CHARGING  # 190 s
    fx = p.read(2000)  # 200 s
    assert changes(fx) == [(S.CHARGING, S.FINISHING)]
    assert finished(p.read(0)).stop_reason is StopReason.TIME_LIMIT


def scenario_disable_session() -> None:
    p = Plug()
    p.charging()
    fx = p.send(OperatorDisable())
    assert changes(fx) == [(S.CHARGING, S.FINISHING)]
    assert of(fx, SendRelay)[0].on is False


def scenario_billed() -> None:
    p = Plug()
    start_counter = p.counter
    p.charging()  # 3 × 2000 W × 10 s = 3 × 5556 mWh
    p.read(2000)  # + 5556
    p.stop()
    fx = p.read(0, mwh=0)
    assert changes(fx) == [(S.FINISHING, S.AVAILABLE)]
    record = finished(fx)
    assert record.start_counter_mwh == start_counter
    assert record.stop_counter_mwh == start_counter + 4 * 5556
    assert record.energy_mwh == 4 * 5556
    assert record.duration_s == 50.0
    # 22.224 Wh × 30 / 1000 = 0.66672, + 50 fee = 50.66672 → 51
    assert record.cost_minor == 51
    assert record.tariff == TARIFF
    assert (record.session_id, record.user_id, record.request_id, record.mac) == ("s1", "u1", "r-s1", MAC)
    assert p.state.session is None


def scenario_billed_no_reading() -> None:
    p = Plug()
    p.charging()
    p.stop()
    cmd = p.last_command()
    p.tick(1)
    p.send(CommandResult(cmd.command_id, ok=True, relay_on=False))
    assert p.status is S.FINISHING
    assert of(p.tick(58), SessionFinished) == []  # 59 s after the off command
    fx = p.tick(1)
    assert changes(fx) == [(S.FINISHING, S.AVAILABLE)]
    assert finished(fx).stop_reason is StopReason.LOCAL


def scenario_billed_disabled() -> None:
    p = Plug()
    p.charging()
    p.send(OperatorDisable())
    fx = p.read(0)
    assert changes(fx) == [(S.FINISHING, S.UNAVAILABLE)]
    assert finished(fx).stop_reason is StopReason.REMOTE


def scenario_device_error() -> None:
    p = Plug()
    p.charging()
    fx = p.read(2000, errors=DeviceFlag.OVERTEMP)
    assert changes(fx) == [(S.CHARGING, S.FAULTED)]
    record = finished(fx)
    assert record.stop_reason is StopReason.FAULT
    assert record.energy_mwh == 4 * 5556  # including the faulting sample
    assert of(fx, SendRelay)[0].on is False
    assert "fault" in [a.kind for a in of(fx, Alert)]
    # Undervoltage is a grid condition, not a plug fault.
    q = Plug()
    q.charging()
    assert changes(q.read(2000, errors=DeviceFlag.UNDERVOLTAGE)) == []
    # From AVAILABLE too.
    assert changes(Plug().read(0, errors=DeviceFlag.OVERVOLTAGE)) == [(S.AVAILABLE, S.FAULTED)]


def scenario_overpower() -> None:
    p = Plug()
    p.charging()
    assert changes(p.read(2300)) == []  # over 2250 W, run starts
    fx = p.read(2300)  # 10 s over
    assert changes(fx) == [(S.CHARGING, S.FAULTED)]
    assert finished(fx).stop_reason is StopReason.FAULT


def scenario_relay_mismatch() -> None:
    # Readings keep saying "off" after "on" was commanded.
    p = Plug()
    p.follow = False
    p.start()
    for _ in range(5):
        p.read(0)
    assert p.status is S.AUTHORIZED  # 50 s
    fx = p.read(0)  # 60 s after the command
    assert changes(fx) == [(S.AUTHORIZED, S.FAULTED)]
    assert finished(fx).stop_reason is StopReason.FAULT
    # The same found by a tick: the last reading after the command disagrees and the window is over.
    q = Plug()
    q.follow = False
    q.start()
    q.read(0, dt=30)
    assert changes(q.tick(29)) == []
    assert changes(q.tick(1)) == [(S.AUTHORIZED, S.FAULTED)]
    # Commanded off, but power keeps flowing (a welded relay).
    r = Plug()
    r.charging()
    r.follow = False
    r.stop()
    for _ in range(5):
        r.read(2000, relay=False)
    fx = r.read(2000, relay=False)
    assert changes(fx) == [(S.FINISHING, S.FAULTED)]
    assert finished(fx).stop_reason is StopReason.FAULT


def scenario_relay_reasserted() -> None:
    p = Plug()
    p.charging()
    fx = p.read(2000, relay=False)  # the plug reports off (button, flip-back timer) while charging
    kinds = [a.kind for a in of(fx, Alert)]
    assert kinds == ["relay_changed"]
    (cmd,) = of(fx, SendRelay)
    assert (cmd.on, cmd.reason) == (True, "reassert")
    assert p.status is S.CHARGING


def scenario_fault_cleared() -> None:
    p = Plug()
    p.read(0, errors=DeviceFlag.OVERTEMP)
    assert p.status is S.FAULTED
    fx = p.send(OperatorEnable())
    assert of(fx, RejectRequest)[0].reason == "device_errors_present"
    assert p.status is S.FAULTED
    p.read(0)
    assert changes(p.send(OperatorEnable())) == [(S.FAULTED, S.AVAILABLE)]


def scenario_stale() -> None:
    p = Plug()
    p.charging()
    assert of(p.tick(89), Alert) == []
    fx = p.tick(1)
    assert [a.kind for a in of(fx, Alert)] == ["stale"]
    assert changes(fx) == []
    assert p.state.stale
    assert of(p.tick(10), Alert) == []  # once per episode


def scenario_offline() -> None:
    p = Plug()
    p.charging()
    assert changes(p.tick(299)) == []
    fx = p.tick(1)
    assert changes(fx) == [(S.CHARGING, S.OFFLINE)]
    assert p.state.resume is S.CHARGING
    assert p.state.session is not None  # kept open


def scenario_back_online() -> None:
    p = Plug()
    p.charging()
    p.tick(300)
    p.relay = False  # the flip-back timer fired meanwhile
    fx = p.read(0, dt=100)
    assert (S.OFFLINE, S.CHARGING) in changes(fx)
    assert [c.on for c in of(fx, SendRelay)] == [True]
    # A plug never heard from becomes AVAILABLE on its first reading.
    q = Plug(online=False)
    assert q.status is S.OFFLINE
    assert changes(q.read(0)) == [(S.OFFLINE, S.AVAILABLE)]


def scenario_offline_abandon() -> None:
    p = Plug()
    p.charging()
    p.tick(300)
    assert of(p.tick(3599), Alert) == []
    fx = p.tick(1)
    assert [a.kind for a in of(fx, Alert)] == ["session_provisional"]
    (upd,) = of(fx, SessionUpdated)
    assert upd.provisional
    assert changes(fx) == []


def scenario_provisional_closed() -> None:
    p = Plug()
    p.charging()
    p.tick(300)
    p.tick(3600)
    energy_before = p.state.session.energy_mwh  # type: ignore[union-attr]
    fx = p.read(0, dt=10, mwh=777)  # the counter moved while we could not see it
    assert changes(fx) == [(S.OFFLINE, S.FINISHING)]
    assert of(fx, SendRelay)[0].on is False
    record = finished(p.read(0, mwh=0))
    assert record.stop_reason is StopReason.POWER_LOSS
    assert record.provisional
    assert record.energy_mwh == energy_before + 777  # nothing lost across the gap


def scenario_resume_finishing() -> None:
    p = Plug()
    fx = p.send(
        StartRequest(
            "s1",
            "u1",
            TARIFF,
            1000,
            start_counter_mwh=p.counter - 700,
            started_at_ms=round((p.t - 60) * 1000),
            stop_reason="Local",
        )
    )
    assert changes(fx) == [(S.AVAILABLE, S.FINISHING)]
    assert [c.on for c in of(fx, SendRelay)] == [False]  # never switched on by a restart
    record = finished(p.read(0, mwh=0))
    assert record.stop_reason is StopReason.LOCAL and record.energy_mwh == 700


def scenario_hub_fault() -> None:
    p = Plug()
    p.charging()
    fx = p.send(PlugFault("hub error: ValueError"))
    assert changes(fx) == [(S.CHARGING, S.FAULTED)]
    assert [c.on for c in of(fx, SendRelay)] == [False]
    assert finished(fx).stop_reason is StopReason.FAULT
    assert p.relay is False


def scenario_disable() -> None:
    p = Plug()
    assert changes(p.send(OperatorDisable())) == [(S.AVAILABLE, S.UNAVAILABLE)]


def scenario_enable() -> None:
    p = Plug()
    p.send(OperatorDisable())
    assert changes(p.send(OperatorEnable())) == [(S.UNAVAILABLE, S.AVAILABLE)]


SCENARIOS: dict[str, Callable[[], None]] = {
    name.removeprefix("scenario_").replace("_", "-"): fn
    for name, fn in dict(globals()).items()
    if name.startswith("scenario_")
}


def test_every_table_row_has_a_scenario() -> None:
    assert set(SCENARIOS) == {row.id for row in TRANSITIONS}


@pytest.mark.parametrize("row", TRANSITIONS, ids=[row.id for row in TRANSITIONS])
def test_transition(row: object) -> None:
    SCENARIOS[row.id]()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Threshold boundaries: just below / at / above
# ---------------------------------------------------------------------------------------------

OFFSETS = [(-1.0, False), (0.0, True), (1.0, True)]


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_start_confirm_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.start()
    p.read(2000)
    p.read(2000, dt=20 + offset)
    assert (p.status is S.CHARGING) is fires


@pytest.mark.parametrize(("power", "fires"), [(34.9, False), (35.0, True), (35.1, True)])
def test_start_w_boundary(power: float, fires: bool) -> None:
    p = Plug()
    p.start()
    p.read(power)
    p.read(power, dt=20)
    assert (p.status is S.CHARGING) is fires


@pytest.mark.parametrize(("power", "fires"), [(14.9, True), (15.0, False), (15.1, False)])
def test_stop_w_boundary(power: float, fires: bool) -> None:
    p = Plug()
    p.charging()
    p.read(power)
    assert (p.status is S.SUSPENDED_EV) is fires


def test_hysteresis_band_neither_starts_nor_completes() -> None:
    p = Plug()
    p.suspended_ev()
    for _ in range(100):
        p.read(25)  # between stop_w and start_w for 1000 s
    assert p.status is S.SUSPENDED_EV
    assert p.state.session is not None and p.state.session.idle_ms == 0


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_complete_after_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.suspended_ev()
    for _ in range(9):
        p.read(5, dt=60)
    p.read(5, dt=60 + offset)
    assert (p.status is S.FINISHING) is fires


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_no_load_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.start()
    for _ in range(5):
        p.read(0, dt=50)
    p.read(0, dt=50 + offset)
    assert (p.status is S.FINISHING) is fires


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_relay_confirm_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.follow = False
    p.start()
    p.read(0, dt=60 + offset)
    assert (p.status is S.FAULTED) is fires


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_stale_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.charging()
    fx = p.tick(90 + offset)
    assert ("stale" in [a.kind for a in of(fx, Alert)]) is fires


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_offline_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.charging()
    p.tick(300 + offset)
    assert (p.status is S.OFFLINE) is fires


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_max_session_boundary(offset: float, fires: bool) -> None:
    p = Plug(dataclasses.replace(P, max_session_s=200.0))
    p.charging()
    p.read(2000, dt=200 - 30 + offset)  # charging() took 30 s
    assert (p.status is S.FINISHING) is fires


@pytest.mark.parametrize(("power", "fires"), [(2249.9, False), (2250.0, False), (2250.1, True)])
def test_max_power_boundary(power: float, fires: bool) -> None:
    p = Plug()
    p.charging()
    p.read(power)
    p.read(power)
    assert (p.status is S.FAULTED) is fires


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_max_power_confirm_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.charging()
    p.read(3000)
    p.read(3000, dt=10 + offset)
    assert (p.status is S.FAULTED) is fires


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_keepalive_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.start()  # "on" sent at T0 + 10
    fx = p.read(2000, dt=100 + offset)
    keepalives = [c for c in of(fx, SendRelay) if c.reason == "keepalive"]
    assert bool(keepalives) is fires
    if fires:
        assert keepalives[0].on and keepalives[0].auto_off_s == 300


def test_keepalive_keeps_the_flip_back_timer_from_firing() -> None:
    p = Plug()
    p.charging()
    sent: list[float] = [p.t - 30]  # the start command
    for _ in range(200):  # 2000 s
        for c in of(p.read(2000), SendRelay):
            assert c.on
            sent.append(p.t)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps and max(gaps) <= 300 / 3 + 10  # renewed well inside the auto-off window


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_credit_grace_boundary(offset: float, fires: bool) -> None:
    p = _out_of_credit_plug()
    p.read(2000, mwh=10_000)
    for _ in range(9):
        p.read(0, dt=60)
    p.read(0, dt=60 + offset)
    assert (p.status is S.FINISHING) is fires


@pytest.mark.parametrize(("balance", "cut"), [(109, True), (110, True), (111, False)])
def test_credit_boundary(balance: int, cut: bool) -> None:
    tariff = Tariff(price_per_kwh_minor=Decimal(3000), session_fee_minor=50, min_start_balance_minor=100)
    p = Plug()
    p.start(balance=balance, tariff=tariff)
    p.read(2000, mwh=10_000)
    p.read(2000, mwh=10_000)  # projected 50 + 60 = 110
    assert (p.status is S.SUSPENDED_EVSE) is cut


def test_a_lower_balance_while_charging_cuts_at_once() -> None:
    p = Plug()
    p.charging()  # projected 50 fee + 16.7 Wh × 30 / 1000 ≈ 50.5
    assert changes(p.send(BalanceUpdate("u1", 51))) == []
    fx = p.send(BalanceUpdate("u1", 50))
    assert changes(fx) == [(S.CHARGING, S.SUSPENDED_EVSE)]
    assert of(fx, SendRelay)[0].on is False


@pytest.mark.parametrize(("balance", "accepted"), [(99, False), (100, True), (101, True)])
def test_min_start_balance_boundary(balance: int, accepted: bool) -> None:
    p = Plug()
    p.start(balance=balance)
    assert (p.status is S.AUTHORIZED) is accepted


@pytest.mark.parametrize(("offset", "fires"), OFFSETS)
def test_offline_abandon_boundary(offset: float, fires: bool) -> None:
    p = Plug()
    p.charging()
    p.tick(300)
    p.tick(3600 + offset)
    assert p.state.session is not None and p.state.session.provisional is fires


# ---------------------------------------------------------------------------------------------
# Energy: counter resets, stale data, duplicates
# ---------------------------------------------------------------------------------------------


def test_counter_reset_mid_session_is_bridged() -> None:
    p = Plug()
    p.charging()  # 3 × 5556
    p.read(2000, mwh=4000)  # + 4000
    fx = p.read(2000, reset_to=1200, reboot=True)  # reboot: counter restarts, 1200 since the reset
    assert "counter_reset" in [a.kind for a in of(fx, Alert)]
    p.read(2000, mwh=3000)  # + 3000
    # Counter going backwards with no sign of a restart is not a reset: that step counts zero.
    fx = p.read(2000, reset_to=500, uptime=False)
    assert "bad_readings" in [a.kind for a in of(fx, Alert)]
    p.read(2000, mwh=250, uptime=False)
    p.read(2000, mwh=100)  # counter now 850, uptime reported again
    # A reboot whose new counter happens to exceed the old one still counts from zero.
    p.read(2000, reset_to=10_850, reboot=True)
    p.stop()
    record = finished(p.read(0, mwh=0))
    assert record.energy_mwh == 3 * 5556 + 4000 + 1200 + 3000 + 0 + 250 + 100 + 10_850
    assert record.counter_resets == 2
    assert "without a restart" in record.review
    assert record.stop_counter_mwh == p.counter


def test_stale_gap_freezes_the_completion_timer() -> None:
    p = Plug()
    p.suspended_ev()
    for _ in range(50):
        p.read(5)  # 500 s low
    fx = p.tick(95)
    assert "stale" in [a.kind for a in of(fx, Alert)]
    p.read(5, dt=105)  # 200 s gap: longer than stale_after_s, contributes nothing
    assert p.status is S.SUSPENDED_EV
    for _ in range(9):
        p.read(5)
    assert p.status is S.SUSPENDED_EV  # 590 s of fresh low data
    p.read(5)
    assert p.status is S.FINISHING  # 600 s


def test_missing_data_never_completes_a_session() -> None:
    p = Plug()
    p.suspended_ev()
    for _ in range(50):
        p.read(5)
    for _ in range(30):
        fx = p.tick(10)
        assert of(fx, SessionFinished) == []
        assert (S.SUSPENDED_EV, S.FINISHING) not in changes(fx)
    assert p.status is S.OFFLINE
    assert p.state.session is not None


def test_duplicate_and_late_readings_are_counted_once() -> None:
    p = Plug()
    p.charging()
    r1 = Reading(MAC, round((p.t + 10) * 1000), 2000, p.counter + 1000, True)
    r0 = Reading(MAC, round((p.t + 5) * 1000), 2000, p.counter + 500, True)
    p.t += 10
    p.counter += 1000
    p.send(Readings((r1, r1, r0)))
    p.send(Readings((r1,)))
    p.stop()
    assert finished(p.read(0, mwh=0)).energy_mwh == 3 * 5556 + 1000


def test_a_chunk_of_several_readings() -> None:
    p = Plug()
    p.start()
    base = p.t
    chunk = tuple(
        Reading(MAC, round((base + 10 * i) * 1000), 2000, p.counter + 5000 * i, True) for i in range(1, 6)
    )
    fx = p.send(Readings(chunk))
    assert changes(fx) == [(S.AUTHORIZED, S.CHARGING)]
    assert len(of(fx, SessionUpdated)) == 1  # one update per chunk
    assert p.state.session is not None and p.state.session.energy_mwh == 25_000


def test_reading_for_another_plug_is_refused() -> None:
    p = Plug()
    with pytest.raises(ValueError, match="112233445566"):
        p.send(Readings((Reading("112233445566", round(p.t * 1000) + 1, 0, 0, False),)))


def test_replayed_start_and_stop_are_ignored() -> None:
    p = Plug()
    p.start()
    assert p.start() == []  # same session id: redelivered
    p.stop()
    p.read(0)
    assert p.status is S.AVAILABLE
    assert p.start() == []  # the finished session's request again
    assert p.stop(sid="s1") == []
    assert len(of(p.log, SessionFinished)) == 1


def test_idle_time_is_billed_per_tariff() -> None:
    tariff = Tariff(price_per_kwh_minor=Decimal(0), idle_price_per_minute_minor=Decimal(10), idle_grace_s=60)
    p = Plug()
    p.charging(tariff=tariff)
    p.read(5)  # SUSPENDED_EV: idle starts
    for _ in range(18):
        p.read(5)  # 180 s idle
    p.stop()
    record = finished(p.read(0))
    assert record.idle_ms == 180_000
    # (180 − 60) s = 2 min × 10 = 20
    assert record.cost_minor == 20


def test_command_results_confirm_and_old_acks_are_ignored() -> None:
    p = Plug()
    p.follow = False
    p.start()
    first = p.last_command()
    p.tick(15)  # retry: a new command id for the same command
    retry = p.last_command()
    assert retry.command_id != first.command_id and retry.reason == "retry"
    p.send(CommandResult(first.command_id, ok=True, relay_on=True))
    assert p.state.cmd_confirmed
    p.send(CommandResult("garbage", ok=True, relay_on=True))
    fx = p.send(CommandResult(retry.command_id, ok=False))
    assert [a.kind for a in of(fx, Alert)] == ["command_failed"]


# ---------------------------------------------------------------------------------------------
# Checkpointing and size
# ---------------------------------------------------------------------------------------------


def _roundtrip(state: MachineState) -> MachineState:
    return from_dict(json.loads(json.dumps(to_dict(state))))


def test_checkpoint_round_trip_continues_identically() -> None:
    a = Plug()
    a.charging()
    a.read(5)
    a.read(5)
    b = Plug()
    b.state = _roundtrip(a.state)
    b.t, b.counter, b.uptime, b.relay = a.t, a.counter, a.uptime, a.relay
    assert b.state == a.state
    for plug in (a, b):
        plug.log.clear()
        for _ in range(70):
            plug.read(5)
        plug.read(0)
    assert a.log == b.log
    assert len(of(a.log, SessionFinished)) == 1


def test_idle_plug_state_is_small() -> None:
    p = Plug()
    p.read(0)
    state = p.state
    size = sys.getsizeof(state)
    for name in FIELDS:
        value = getattr(state, name)
        # Shared, not per plug: the class's params, singletons, enum members, cached small ints,
        # and the reason strings (module constants).
        shared = (
            name in ("params", "reason")
            or value is None
            or isinstance(value, bool | Status)
            or (isinstance(value, int) and -5 <= value <= 256)
        )
        if not shared:
            size += sys.getsizeof(value)
    assert size < 1024
    assert sys.getsizeof(state) < 400  # slots: no per-instance __dict__


# ---------------------------------------------------------------------------------------------
# Property: energy billed == counter deltas (resets bridged); one SessionFinished per session
# ---------------------------------------------------------------------------------------------

_reading_op = st.tuples(
    st.just("read"),
    st.floats(min_value=0, max_value=3000, allow_nan=False),  # power
    # dt seconds: mostly a normal sample period, sometimes a gap past stale/offline
    st.one_of(st.integers(min_value=1, max_value=30), st.integers(min_value=1, max_value=400)),
    st.integers(min_value=0, max_value=20_000),  # true energy since the last sample, mWh
    st.booleans(),  # the plug rebooted before this sample
)
_noise = st.one_of(
    _reading_op,
    _reading_op,
    _reading_op,
    _reading_op,
    st.tuples(st.just("tick"), st.one_of(st.integers(0, 60), st.integers(0, 4000))),
    st.tuples(st.just("start"), st.integers(min_value=0, max_value=2000)),
    st.tuples(st.just("stop"), st.booleans()),
    st.tuples(st.just("ack"), st.booleans()),
    st.tuples(st.just("flip")),
    st.tuples(st.just("enable")),
    st.tuples(st.just("disable")),
    st.tuples(st.just("balance"), st.integers(min_value=0, max_value=5000)),
)
_settle = ("read", 0.0, 10, 0, False)
# Blocks that usually make a session (a fresh sample, a start, anything at all, a stop, samples
# after it), so most examples bill several sessions; the noise inside is unconstrained.
_block = st.tuples(
    st.integers(min_value=20, max_value=3000),
    st.lists(_noise, max_size=30),
    st.booleans(),
    st.integers(min_value=0, max_value=20_000),
).map(lambda b: [_settle, ("start", b[0]), *b[1], ("stop", b[2]), ("read", 0.0, 10, b[3], False), _settle])
_ops = st.lists(_block, min_size=1, max_size=4).map(lambda blocks: [op for b in blocks for op in b])
_OPS_FOR_TIMERS = _ops  # test_timers.py drives the same traffic through the timer wheel's rule


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_energy_billed_equals_counter_deltas_and_each_session_bills_once(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    # A rating high enough that every generated step (up to 20 Wh in 1 s) is physically possible.
    params = dataclasses.replace(P, max_power_w=2800.0, rated_power_w=80_000.0)
    tariff = Tariff(price_per_kwh_minor=Decimal(30), session_fee_minor=10, min_start_balance_minor=20)
    p = Plug(params, online=False)
    twin = Plug(params, online=False)  # the same events through a checkpoint round trip each step
    expected: dict[str, int] = {}
    started: list[str] = []
    rebooted_last = False
    for op in ops:
        kind = op[0]
        session_before = p.state.session.session_id if p.state.session else None
        if kind == "read":
            _, power, dt, inc, reboot = op
            reboot = reboot and not rebooted_last  # two reboots in one sample period are undetectable
            rebooted_last = reboot
            power = power if p.relay else 0.0
            p.t += dt
            p.uptime = 0 if reboot else p.uptime + dt
            p.counter = inc if reboot else p.counter + inc
            event: Event = Readings(
                (Reading(MAC, round(p.t * 1000), power, p.counter, p.relay, uptime_s=p.uptime),)
            )
            if session_before is not None:
                expected[session_before] = expected.get(session_before, 0) + inc
        elif kind == "tick":
            p.t += op[1]
            event = Tick()
        elif kind == "start":
            sid = f"s{len(started) + 1}"
            event = StartRequest(sid, "u1", tariff, op[1])
        elif kind == "stop":
            event = StopRequest(user_id="u1", remote=op[1])
        elif kind == "ack":
            cmds = of(p.log, SendRelay)
            if not cmds:
                continue
            event = CommandResult(cmds[-1].command_id, ok=op[1], relay_on=p.relay)
        elif kind == "flip":
            p.relay = not p.relay
            continue
        elif kind == "enable":
            event = OperatorEnable()
        elif kind == "disable":
            event = OperatorDisable()
        else:
            event = BalanceUpdate("u1", op[1])
        twin.state = _roundtrip(twin.state)
        twin.t = p.t
        fx = p.send(event)
        twin_fx = twin.send(event)
        assert twin_fx == fx
        started += [e.session_id for e in of(fx, SessionStarted)]

    finished_ids = [e.record.session_id for e in of(p.log, SessionFinished)]
    note_event(f"sessions finished: {min(len(finished_ids), 3)}")
    note_event(f"stop reasons: {sorted({e.record.stop_reason.name for e in of(p.log, SessionFinished)})}")
    note_event(
        f"counter resets bridged: {min(sum(e.record.counter_resets for e in of(p.log, SessionFinished)), 1)}+"
    )
    assert len(finished_ids) == len(set(finished_ids))  # never billed twice
    open_id = p.state.session.session_id if p.state.session else None
    assert sorted(finished_ids + ([open_id] if open_id else [])) == sorted(started)
    for done in of(p.log, SessionFinished):
        record = done.record
        assert record.energy_mwh == expected.get(record.session_id, 0)
        assert record.cost_minor >= 0
    if p.state.session is not None:
        assert p.state.session.energy_mwh == expected.get(p.state.session.session_id, 0)
