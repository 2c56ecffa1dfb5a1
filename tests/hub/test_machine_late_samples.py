"""A sample taken before a relay command was issued (delivered late in a batch) does not contradict it."""

from __future__ import annotations

from decimal import Decimal

from chargectl.common.readings import Reading
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.params import DEFAULTS

MAC = "AABBCCDDEEFF"
T0 = 1_767_225_600.0


def _r(t: float, relay: bool, power: float, counter: int) -> m.Readings:
    return m.Readings((Reading(MAC, round(t * 1000), power, counter, relay),))


def test_late_sample_from_before_the_off_command_is_not_a_relay_change() -> None:
    s = m.new_state(MAC, DEFAULTS["generic"], T0)
    s, _ = m.step(s, _r(T0, False, 0.0, 1000), T0)
    tariff = Tariff(price_per_kwh_minor=Decimal(30), min_start_balance_minor=0)
    s, fx = m.step(s, m.StartRequest("s1", "u1", tariff, 1000, "r1"), T0 + 1)
    on = next(f for f in fx if isinstance(f, m.SendRelay))
    s, _ = m.step(s, m.CommandResult(on.command_id, True, True), T0 + 2)
    s, _ = m.step(s, _r(T0 + 5, True, 500.0, 1000), T0 + 5)
    s, fx = m.step(s, m.StopRequest("u1", "s1", "r2"), T0 + 10)
    off = next(f for f in fx if isinstance(f, m.SendRelay))
    assert off.on is False
    s, _ = m.step(s, m.CommandResult(off.command_id, True, False), T0 + 11)
    # a batch sampled at T0+9 (relay still on) arrives now, after the confirmed "off"
    s, fx = m.step(s, _r(T0 + 9, True, 500.0, 1500), T0 + 12)
    assert not [f for f in fx if isinstance(f, m.Alert)]
    assert not [f for f in fx if isinstance(f, m.SendRelay)]
    # a sample taken after the command that shows the relay on again is a real change
    s, fx = m.step(s, _r(T0 + 13, False, 0.0, 1500), T0 + 13)
    s, fx = m.step(s, _r(T0 + 20, True, 0.0, 1500), T0 + 20)
    assert any(isinstance(f, m.Alert) for f in fx) or any(isinstance(f, m.SendRelay) and not f.on for f in fx)
