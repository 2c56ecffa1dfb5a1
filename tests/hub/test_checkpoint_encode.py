"""The checkpoint's part documents leave each plug's parameters out (the hub's configuration gives them
on load): a restored charging plug keeps its session, meter and money to the milliwatt-hour, takes the
parameters configured now, and parts written before (with parameters) still load."""

from __future__ import annotations

import gc
import json
import zlib
from decimal import Decimal

import pytest

from chargectl.common.readings import Reading
from chargectl.services.hub import checkpoint as ckpt
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.machine import (
    MachineState,
    Readings,
    SendRelay,
    SessionFinished,
    StartRequest,
    Status,
    StopRequest,
    from_dict,
    new_state,
    step,
    to_dict,
)
from chargectl.services.hub.params import DEFAULTS

T0 = 1_700_000_000.0
MAC = "AABBCCDDEE31"
TARIFF = Tariff(
    tariff_id="t1", price_per_kwh_minor=Decimal(30), session_fee_minor=50, min_start_balance_minor=100
)


def _readings(t: float, power: float, mwh: int, relay: bool) -> Readings:
    return Readings((Reading(MAC, round(t * 1000), power, mwh, relay, uptime_s=int(t - T0) + 1000),))


def _charging() -> tuple[MachineState, float, int]:
    params = DEFAULTS["ev"]
    s, _ = step(new_state(MAC, params, T0), _readings(T0, 0.0, 5_000_000, False), T0)
    s, _ = step(s, StartRequest("s1", "u1", TARIFF, 10_000), T0 + 1)
    t, mwh = T0 + 5, 5_000_000
    for _ in range(12):  # relay on, 2 kW for a minute: confirmed and charging
        t += 5
        mwh += round(2000 * 5 / 3.6)
        s, _ = step(s, _readings(t, 2000.0, mwh, True), t)
    assert s.status is Status.CHARGING and s.session is not None
    return s, t, mwh


def test_a_part_has_no_parameters_and_a_restored_session_bills_the_same() -> None:
    state, t, mwh = _charging()
    blob = ckpt.encode_part(round(t * 1000), {MAC: ("site-a", state)})
    saved = json.loads(zlib.decompress(blob))["plugs"][MAC]["state"]
    assert state.session is not None
    assert "params" not in saved and saved["session"]["energy_mwh"] == state.session.energy_mwh
    # The operator re-classed the plug while the hub was down: the restored machine takes the new class.
    snap = ckpt.decode(blob, lambda mac: DEFAULTS["ebike"])
    _, restored = snap.plugs[MAC]
    assert restored.params == DEFAULTS["ebike"]
    before, after = to_dict(state), to_dict(restored)
    before.pop("params"), after.pop("params")
    assert before == after
    # Both bill one stop identically: same energy from the same meter, same debit.
    bills = []
    for s in (state, restored):
        s2, fx = step(s, StopRequest(user_id="u1"), t + 1)
        assert [e.on for e in fx if isinstance(e, SendRelay)] == [False]
        _, fx = step(s2, _readings(t + 5, 0.0, mwh + 40, False), t + 5)
        (done,) = [e.record for e in fx if isinstance(e, SessionFinished)]
        bills.append((done.energy_mwh, done.cost_minor))
    assert bills[0] == bills[1] and bills[0][0] == mwh + 40 - 5_000_000


def test_a_part_written_with_parameters_still_loads_with_the_configured_ones() -> None:
    state, t, _ = _charging()
    old = {"saved_at_ms": round(t * 1000), "plugs": {MAC: {"site": "site-a", "state": to_dict(state)}}}
    assert "params" in old["plugs"][MAC]["state"]  # type: ignore[index]
    blob = zlib.compress(json.dumps(old).encode())
    _, restored = ckpt.decode(blob, lambda mac: DEFAULTS["generic"]).plugs[MAC]
    assert restored.params == DEFAULTS["generic"]
    assert restored.session == state.session and restored.counter_mwh == state.counter_mwh
    assert from_dict(to_dict(state)).params == DEFAULTS["ev"]  # to_dict itself still carries them


def test_encoding_pauses_the_cycle_collector_and_always_gives_it_back() -> None:
    state, _, _ = _charging()
    seen: list[bool] = []
    real_to_dict = ckpt.m.to_dict

    def watching(s: MachineState) -> dict[str, object]:
        seen.append(gc.isenabled())
        return real_to_dict(s)

    assert gc.isenabled()
    ckpt.m.to_dict = watching  # type: ignore[assignment]
    try:
        ckpt.encode_part(1, {MAC: ("site-a", state)})
        assert seen == [False] and gc.isenabled()

        def broken(s: MachineState) -> dict[str, object]:
            raise ValueError("a state that cannot be encoded")

        ckpt.m.to_dict = broken  # type: ignore[assignment]
        with pytest.raises(ValueError, match="cannot be encoded"):
            ckpt.encode_part(1, {MAC: ("site-a", state)})
        assert gc.isenabled()  # a failed checkpoint does not leave the collector off
        gc.disable()
        try:
            ckpt.m.to_dict = real_to_dict
            ckpt.encode_part(1, {MAC: ("site-a", state)})
            assert not gc.isenabled()  # nor turns on a collector someone else turned off
        finally:
            gc.enable()
    finally:
        ckpt.m.to_dict = real_to_dict
