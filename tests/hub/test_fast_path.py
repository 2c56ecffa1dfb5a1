"""The per-chunk fast path (``ReadingsRun``) against the per-sample path (``Readings``): random traffic —
charging curves, gaps, counter resets and reboots, relay flips, device flags, overpower, requests, acks,
top-ups, time passing — fed to two machines, one chunk at a time, must leave identical states, effects,
sessions and bills."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from test_machine import MAC, T0, P

from chargectl.common.codec import PlugRun
from chargectl.common.readings import Reading
from chargectl.services.adapters.timeseries import reading_lines, run_lines
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.machine import (
    BalanceUpdate,
    CommandResult,
    Effect,
    Event,
    MachineState,
    Readings,
    ReadingsRun,
    SendRelay,
    Session,
    SessionFinished,
    SessionUpdated,
    StartRequest,
    Status,
    StopRequest,
    Tick,
    _out_of_credit,
    new_state,
    step,
    step_run,
    to_dict,
)

PARAMS = dataclasses.replace(P, max_power_w=2800.0, rated_power_w=3680.0, max_power_confirm_s=10.0)
TARIFF = Tariff(price_per_kwh_minor=Decimal(30), session_fee_minor=10, min_start_balance_minor=20)

_sample = st.tuples(
    st.one_of(
        st.sampled_from([0.0, 3.0, 14.9, 15.0, 34.9, 35.0, 1800.0, 2800.0, 2800.1, 4000.0]),
        st.floats(min_value=0.0, max_value=3000.0),
    ),
    st.one_of(st.just(5), st.integers(min_value=-3, max_value=200)),  # seconds since the previous one
    st.sampled_from(["ok", "ok", "ok", "ok", "reset", "reboot", "jump", "down", "flag", "flip", "dup"]),
)
_op = st.one_of(
    st.tuples(st.just("chunk"), st.lists(_sample, min_size=1, max_size=12)),
    st.tuples(st.just("chunk"), st.lists(_sample, min_size=1, max_size=12)),
    # Steady chunks (what most traffic is): the fast path's own ground.
    st.tuples(
        st.just("steady"), st.sampled_from([0.0, 20.0, 1800.0]), st.integers(min_value=1, max_value=12)
    ),
    st.tuples(st.just("steady"), st.sampled_from([0.0, 1800.0]), st.integers(min_value=1, max_value=12)),
    st.tuples(st.just("start"), st.integers(min_value=0, max_value=3000)),
    st.tuples(st.just("start"), st.just(100_000)),
    st.tuples(st.just("stop"), st.booleans()),
    st.tuples(st.just("ack"), st.booleans()),
    st.tuples(st.just("tick"), st.integers(min_value=0, max_value=700)),
    st.tuples(st.just("balance"), st.integers(min_value=0, max_value=3000)),
)


def _run(rows: list[Reading]) -> PlugRun:
    return PlugRun(
        MAC,
        [r.ts_ms for r in rows],
        [r.power_w for r in rows],
        [r.energy_mwh for r in rows],
        [r.relay_on for r in rows],
        [r.voltage_v for r in rows],
        [r.current_a for r in rows],
        [r.temperature_c for r in rows],
        [r.errors for r in rows],
        [r.uptime_s for r in rows],
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=1, max_size=40))
def test_fast_path_equals_per_sample_path(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    t = T0
    slow = new_state(MAC, PARAMS, t)
    fast = new_state(MAC, PARAMS, t)
    relay = False
    counter, uptime = 1_000_000, 5_000
    ts_ms = round(t * 1000)
    log: list[Effect] = []
    sessions = 0
    quiet = 0
    # A first reading so that requests can start sessions.
    first = Readings((Reading(MAC, ts_ms, 0.0, counter, relay, 230.0, 0.0, 20.0, 0, uptime),))
    slow, _ = step(slow, first, t)
    fast, _ = step(fast, first, t)
    for op in ops:
        kind = op[0]
        event_slow: Event
        event_fast: Event
        if kind in ("chunk", "steady"):
            rows: list[Reading] = []
            samples = op[1] if kind == "chunk" else [(op[1], 5, "ok")] * op[2]
            for power, dt, what in samples:
                ts_ms += dt * 1000
                if what == "dup" and rows:
                    rows.append(rows[-1])
                    continue
                drawn = power if relay else (power if what == "flip" else 0.0)
                on = (not relay) if what == "flip" else relay
                uptime += max(dt, 0)
                if what == "reboot":
                    uptime, counter = 1, round(drawn * max(dt, 0) / 3.6) % 1000
                elif what == "reset":
                    counter = 0
                elif what == "jump":
                    counter += 10**7
                elif what == "down":
                    counter = max(0, counter - 500)
                else:
                    counter += round(drawn * max(dt, 0) / 3.6)
                flags = 1 if what == "flag" else 0
                rows.append(
                    Reading(MAC, ts_ms, drawn, counter, on, 230.0, drawn / 230.0, 30.0, flags, uptime)
                )
            t = max(t, ts_ms / 1000)
            event_slow, event_fast = Readings(tuple(rows)), ReadingsRun(_run(rows))
        elif kind == "start":
            sessions += 1
            event_slow = event_fast = StartRequest(f"s{sessions}", "u1", TARIFF, op[1])
        elif kind == "stop":
            event_slow = event_fast = StopRequest(user_id="u1", remote=op[1])
        elif kind == "ack":
            cmds = [e for e in log if isinstance(e, SendRelay)]
            if not cmds:
                continue
            event_slow = event_fast = CommandResult(cmds[-1].command_id, ok=op[1], relay_on=relay)
        elif kind == "tick":
            t += op[1]
            ts_ms = max(ts_ms, round(t * 1000))
            event_slow = event_fast = Tick()
        else:
            event_slow = event_fast = BalanceUpdate("u1", op[1])
        if isinstance(event_fast, ReadingsRun) and fast.status in (Status.AVAILABLE, Status.CHARGING):
            quiet += fast.status is Status.CHARGING
        slow, fx_slow = step(slow, event_slow, t)
        if isinstance(event_fast, ReadingsRun):
            given = fast.copy()
            snapshot = to_dict(given)
            inplace, fx_inplace = step_run(given, event_fast.run, t)
            if not fx_inplace or inplace is not given:
                note_event(f"step_run in place: {inplace is given}")
            if any(not isinstance(e, SessionUpdated) for e in fx_inplace) and inplace is given:
                raise AssertionError("step_run advanced the state in place through a transition")
            fast, fx_fast = step(fast, event_fast, t)
            assert fx_inplace == fx_fast  # step_run (in place when quiet) is step: effects and state
            if to_dict(given) != snapshot:  # all or nothing: advanced in place only through the whole run
                assert given.last_ts_ms == event_fast.run.ts_ms[-1]
            assert to_dict(inplace) == to_dict(fast)
        else:
            fast, fx_fast = step(fast, event_fast, t)
        assert fx_fast == fx_slow
        assert to_dict(fast) == to_dict(slow)
        if isinstance(event_fast, ReadingsRun) and isinstance(event_slow, Readings):
            # The same time-series lines: from the run's columns, and from a Reading per sample.
            lines = reading_lines("site-1", event_slow.readings, str(slow.status))
            assert run_lines("site-1", _run(list(event_slow.readings)), str(fast.status)) == lines
        log.extend(fx_slow)
        for e in fx_slow:
            if isinstance(e, SendRelay):
                relay = e.on  # the agent obeys
    note_event(f"chunks fed while CHARGING: {min(quiet, 3)}+")
    bills = [
        (e.record.session_id, e.record.energy_mwh, e.record.cost_minor)
        for e in log
        if isinstance(e, SessionFinished)
    ]
    assert len({b[0] for b in bills}) == len(bills)


def _charging(k: int, ts: int) -> Reading:
    """Sample ``k`` of a steady 1.8 kW charge: 2,500 mWh every 5 s from a counter at 1,000 mWh."""
    return Reading(MAC, ts + 5000 * k, 1800.0, 1000 + 2500 * k, True, uptime_s=10 + 5 * k)


def _charging_at_1800_w() -> MachineState:
    """A plug in a session for ``u1``, its relay confirmed on, CHARGING after samples 1-7 (35 s)."""
    t = T0
    s = new_state(MAC, PARAMS, t)
    ts = round(t * 1000)
    s, _ = step(s, Readings((Reading(MAC, ts, 0.0, 1000, False, uptime_s=10),)), t)
    s, fx = step(s, StartRequest("s1", "u1", TARIFF, 100_000), t)
    cmd = next(e for e in fx if isinstance(e, SendRelay))
    s, _ = step(s, CommandResult(cmd.command_id, True, True), t)
    s, _ = step(s, Readings(tuple(_charging(k, ts) for k in range(1, 8))), t + 35)
    assert s.status is Status.CHARGING
    return s


def test_a_steady_charging_chunk_takes_the_fast_path_and_bills_every_mwh() -> None:
    t, ts = T0, round(T0 * 1000)
    s = _charging_at_1800_w()
    # 40 more samples as one run: every one is quiet, every mWh lands in the session.
    more = [_charging(k, ts) for k in range(8, 48)]
    s2, fx = step(s, ReadingsRun(_run(more)), t + 240)
    assert s2.status is Status.CHARGING and s2.session is not None
    assert s2.session.energy_mwh == 2500 * 47
    assert s2.counter_mwh == 1000 + 2500 * 47 and s2.last_ts_ms == ts + 5000 * 47
    assert not [e for e in fx if isinstance(e, SendRelay) and e.reason != "keepalive"]


def test_step_run_bills_a_quiet_charging_run_in_place_exactly_as_step() -> None:
    t, ts = T0, round(T0 * 1000)
    s = _charging_at_1800_w()
    more = _run([_charging(k, ts) for k in range(8, 14)])
    by_step, fx_step = step(s, ReadingsRun(more), t + 70)
    given = s.copy()
    by_run, fx_run = step_run(given, more, t + 70)
    assert by_run is given  # quiet, no timer due: advanced in place, no copy
    assert to_dict(by_run) == to_dict(by_step) and fx_run == fx_step
    (update,) = fx_run
    assert isinstance(update, SessionUpdated) and update.energy_mwh == 2500 * 13
    # 32.5 Wh at 30p/kWh = 0.975p, plus the 10p fee: 10.975 rounds half up to 11, priced when read.
    assert update.cost_minor == 11
    # Out of credit at the first sample: the run is not quiet, the state is untouched, step decides.
    poor = s.copy()
    assert poor.session is not None
    poor.session.balance_minor = 10  # 10.525p used already
    snapshot = to_dict(poor)
    by_step, fx_step = step(poor, ReadingsRun(more), t + 70)
    by_run, fx_run = step_run(poor, more, t + 70)
    assert by_run is not poor and to_dict(poor) == snapshot
    assert to_dict(by_run) == to_dict(by_step) and fx_run == fx_step
    assert by_run.status is Status.SUSPENDED_EVSE


_charging_sample = st.tuples(
    st.sampled_from([10.0, 15.0, 20.0, 34.9, 35.0, 1800.0, 2200.0, 2800.0, 2800.1]),
    st.sampled_from([1, 5, 5, 5, 5, 30, 90, 91]),  # seconds since the previous sample (90 s: stale edge)
    st.one_of(
        st.just("physics"),
        st.sampled_from(["physics", "none", "bound", "over", "down", "flag", "open"]),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(_charging_sample, min_size=1, max_size=8), min_size=1, max_size=6),
    st.integers(min_value=11, max_value=200),
)
def test_charging_runs_decided_by_columns_equal_the_per_sample_path(
    chunks: list[list[tuple[float, int, str]]], balance: int
) -> None:
    """A CHARGING session (the quiet path's money case) fed steady, edgy and hostile chunks: energy at,
    within and beyond the plug's bound, a counter going down, device flags, an opened relay, power around
    every threshold, gaps at the stale edge, credit running out. ``step`` with the run, ``step_run`` and
    the per-sample path must agree on states, effects and what the session bills."""
    t = T0
    s = new_state(MAC, PARAMS, t)
    ts = round(t * 1000)
    counter, uptime = 1000, 10
    s, _ = step(s, Readings((Reading(MAC, ts, 0.0, counter, False, uptime_s=uptime),)), t)
    s, fx = step(s, StartRequest("s1", "u1", TARIFF, 100_000), t)
    cmd = next(e for e in fx if isinstance(e, SendRelay))
    s, _ = step(s, CommandResult(cmd.command_id, True, True), t)
    warm = []
    for _ in range(6):
        ts, counter, uptime = ts + 5000, counter + 2500, uptime + 5
        warm.append(Reading(MAC, ts, 1800.0, counter, True, 230.0, 7.8, 30.0, 0, uptime))
    t = ts / 1000
    s, _ = step(s, Readings(tuple(warm)), t)
    assert s.status is Status.CHARGING and s.session is not None
    s.session.balance_minor = balance  # 10.525p used: credit runs out somewhere for small balances
    slow, fast = s, s.copy()
    for chunk in chunks:
        rows = []
        for power, dt, what in chunk:
            ts += dt * 1000
            uptime += dt
            bound = int(PARAMS.rated_power_w * dt * 1000 * 1.2 / 3600)
            counter += {
                "physics": round(power * dt / 3.6),
                "none": 0,
                "bound": bound,
                "over": bound + 1,
                "down": -1,
                "flag": round(power * dt / 3.6),
                "open": 0,
            }[what]
            flags = 1 if what == "flag" else 0
            rows.append(
                Reading(MAC, ts, power, counter, what != "open", 230.0, power / 230, 30.0, flags, uptime)
            )
        t = ts / 1000
        run = _run(rows)
        in_place, fx_in_place = step_run(fast.copy(), run, t)
        fast, fx_fast = step(fast, ReadingsRun(run), t)
        slow, fx_slow = step(slow, Readings(tuple(rows)), t)
        assert fx_fast == fx_slow and fx_in_place == fx_slow
        assert to_dict(fast) == to_dict(slow) == to_dict(in_place)
        note_event(f"after a chunk: {slow.status}")


@settings(max_examples=2000, deadline=None)
@given(
    st.decimals(min_value=0, max_value=10_000, places=4, allow_nan=False, allow_infinity=False),
    st.decimals(min_value=0, max_value=500, places=3, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=500),
    st.sampled_from([0, 0, 1, 7, 1000]),
    st.sampled_from([0, 0, 1, 60, 900]),
    st.sampled_from([0, 30, 600]),
    st.one_of(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**15)),
    st.integers(min_value=0, max_value=10**8),
    st.sampled_from(["", "NoLoad", "Local"]),
    st.integers(min_value=-2, max_value=2),
)
def test_the_credit_check_decides_exactly_as_the_decimal_price(
    price: Decimal,
    idle_price: Decimal,
    fee: int,
    energy_step: int,
    time_step: int,
    grace: int,
    energy: int,
    idle_ms: int,
    stop_reason: str,
    nudge: int,
) -> None:
    """The float shortcut of the credit check never says "credit left" where the exact Decimal cost has
    reached the balance: balances at, just below and just above the exact cost, whole and rounded."""
    tariff = Tariff(
        price_per_kwh_minor=price,
        idle_price_per_minute_minor=idle_price,
        session_fee_minor=fee,
        energy_step_wh=energy_step,
        time_step_s=time_step,
        idle_grace_s=grace,
    )
    sess = Session("s1", "u1", "", tariff, 0, 0, 0, energy, idle_ms, stop_reason=stop_reason)
    exact = sess.cost().exact_minor
    for balance in {int(exact) + nudge, int(exact) + 1 + nudge, round(exact) + nudge, 0, 1}:
        sess.balance_minor = balance
        assert _out_of_credit(sess, energy) == (exact > 0 and exact >= balance)
