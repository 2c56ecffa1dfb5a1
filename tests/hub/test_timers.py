"""Timers by due time: ``Hub.tick`` steps only the machines whose timers are due.

The property: a machine ticked only when ``next_due_ms`` says so (the timer wheel's rule) ends in
the same state, with the same effects, sessions and bills, as one ticked on every sweep; and a
``Tick`` before the due time never changes a thing.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from test_machine import _OPS_FOR_TIMERS, MAC, P, Plug

from chargectl.common.readings import Reading
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.machine import (
    BalanceUpdate,
    CommandResult,
    Event,
    OperatorDisable,
    OperatorEnable,
    Readings,
    SendRelay,
    SessionFinished,
    StartRequest,
    Status,
    StopRequest,
    Tick,
    new_state,
    next_due_ms,
    step,
    to_dict,
)
from chargectl.services.hub.registry import HubPlug
from chargectl.services.hub.timers import TimerWheel

T0 = 1_700_000_000.0


def _event(p: Plug, op: tuple, tariff: Tariff) -> Event | None:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "read":
        _, power, dt, inc, reboot = op
        power = power if p.relay else 0.0
        p.t += dt
        p.uptime = 0 if reboot else p.uptime + dt
        p.counter = inc if reboot else p.counter + inc
        return Readings((Reading(MAC, round(p.t * 1000), power, p.counter, p.relay, uptime_s=p.uptime),))
    if kind == "tick":
        p.t += op[1]
        return Tick()
    if kind == "start":
        return StartRequest(f"s{round(p.t)}", "u1", tariff, op[1])
    if kind == "stop":
        return StopRequest(user_id="u1", remote=op[1])
    if kind == "ack":
        cmds = [e for e in p.log if isinstance(e, SendRelay)]
        return CommandResult(cmds[-1].command_id, ok=op[1], relay_on=p.relay) if cmds else None
    if kind == "flip":
        p.relay = not p.relay
        return None
    if kind == "enable":
        return OperatorEnable()
    if kind == "disable":
        return OperatorDisable()
    return BalanceUpdate("u1", op[1])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS_FOR_TIMERS)
def test_ticking_only_when_due_is_ticking_every_sweep(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    params = dataclasses.replace(P, max_power_w=2800.0, rated_power_w=80_000.0)
    tariff = Tariff(price_per_kwh_minor=Decimal(30), session_fee_minor=10, min_start_balance_minor=20)
    sweep = Plug(params, online=False)  # ticked on every "tick" (the old full sweep)
    lazy = Plug(params, online=False)  # ticked only when its wheel bucket's second has begun
    lazy.follow = sweep.follow = True
    for op in ops:
        event = _event(sweep, op, tariff)
        lazy.t, lazy.counter, lazy.uptime = sweep.t, sweep.counter, sweep.uptime
        if op[0] == "flip":
            lazy.relay = sweep.relay
        if event is None:
            continue
        fx = sweep.send(event)
        if isinstance(event, Tick):
            due = next_due_ms(lazy.state)
            now_ms = round(lazy.t * 1000)
            if due is None or due // 1000 > now_ms // 1000:
                # The wheel leaves this plug alone: the sweep's tick must have changed nothing.
                assert fx == []
                assert to_dict(sweep.state) == to_dict(lazy.state)
                continue
        lazy_fx = lazy.send(event)
        assert lazy_fx == fx
        assert to_dict(lazy.state) == to_dict(sweep.state)
    bills = [
        (e.record.session_id, e.record.energy_mwh, e.record.cost_minor)
        for e in sweep.log
        if isinstance(e, SessionFinished)
    ]
    assert bills == [
        (e.record.session_id, e.record.energy_mwh, e.record.cost_minor)
        for e in lazy.log
        if isinstance(e, SessionFinished)
    ]


def test_a_tick_one_ms_before_the_due_time_changes_nothing_and_at_it_fires() -> None:
    # A live session's keepalive, a silent plug's stale/offline: each fires at its due time, not before.
    p = Plug()
    p.send(StartRequest("s1", "u1", Tariff(price_per_kwh_minor=Decimal(30)), 10_000))
    p.read(100.0)
    assert p.status is Status.AUTHORIZED
    for _ in range(4):
        due = next_due_ms(p.state)
        assert due is not None
        early, fx = step(p.state, Tick(), (due - 1) / 1000)
        assert fx == () and to_dict(early) == to_dict(p.state)
        p.t = due / 1000
        fx_list = p.send(Tick())
        assert fx_list, "nothing fired at the due time"
    assert any(isinstance(e, SendRelay) and e.reason == "keepalive" for e in p.log)


def test_wheel_returns_each_due_plug_once_and_skips_stale_entries() -> None:
    wheel = TimerWheel()
    plugs: dict[str, HubPlug] = {}
    for i in range(3):
        mac = f"AABBCCDDEE{i:02d}"
        state, _ = step(new_state(mac, P, T0), Readings((Reading(mac, round(T0 * 1000), 0.0, 1, False),)), T0)
        plugs[mac] = HubPlug.of(state, "site-a")
        wheel.arm(plugs[mac], round(T0 * 1000))
    stale_due = next_due_ms(plugs["AABBCCDDEE00"].state)
    assert stale_due == round(T0 * 1000) + P.stale_after_s * 1000
    assert wheel.due(plugs, stale_due - 1000 - 1) == []  # the second before: nothing
    # One plug re-armed earlier (a command in flight): it leaves a stale entry behind.
    first = plugs["AABBCCDDEE01"]
    first.state, _ = step(first.state, StartRequest("s", "u", Tariff(), 10_000), T0 + 1)
    wheel.arm(first, round((T0 + 1) * 1000))
    early = wheel.due(plugs, round((T0 + 1 + P.relay_retry_s) * 1000))
    assert [p.state.mac for p in early] == ["AABBCCDDEE01"]
    due = wheel.due(plugs, stale_due)
    assert sorted(p.state.mac for p in due) == ["AABBCCDDEE00", "AABBCCDDEE02"]  # the stale entry is skipped
    assert wheel.due(plugs, stale_due + 10_000_000) == []
