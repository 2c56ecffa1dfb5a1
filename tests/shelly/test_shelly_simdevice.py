"""The simulator's device model without sockets: physics, payload quirks, digest rules (ManualClock)."""

from __future__ import annotations

import pytest

from chargectl.common.clock import ManualClock
from chargectl.shelly import parse
from chargectl.shelly.auth import Challenge, DigestState
from chargectl.shelly.simdevice import DigestServer, LoadProfile, RpcFailure, SimDevice, make_profile

MAC = "AABBCCDDEEFF"


def device(clock: ManualClock, gen: int = 1, **kw: object) -> SimDevice:
    return SimDevice(make_profile(gen, MAC, **kw), clock)


def test_energy_integrates_in_each_generations_unit(manual_clock: ManualClock) -> None:
    d1, d2 = device(manual_clock, 1), device(manual_clock, 2)
    for d in (d1, d2):
        d.set_load(profile="ev")
        d.switch(True)
    manual_clock.advance(3600)
    # 2300 W for one hour = 2300 Wh = 138000 Wmin
    assert d1.truth().counter == 138000
    assert d1.gen1_status()["meters"][0]["total"] == 138000
    assert d2.truth().counter == 2300.0
    assert d2.gen2_switch()["aenergy"]["total"] == 2300.0
    assert d1.truth().energy_mwh == d2.truth().energy_mwh == 2_300_000


def test_gen1_total_is_floored_watt_minutes(manual_clock: ManualClock) -> None:
    d = device(manual_clock, 1)
    d.set_load(watts=1.0)
    d.switch(True)
    manual_clock.advance(90)  # 1.5 Wmin
    assert d.gen1_meter()["total"] == 1


def test_taper_profile_integrates_exactly(manual_clock: ManualClock) -> None:
    d = device(manual_clock, 2)
    d.load = LoadProfile("t", bulk_w=1000, bulk_s=60, taper_s=120, trickle_w=100, trickle_s=60)
    d.switch(True)
    manual_clock.advance(30)
    assert d.power_w() == 1000
    manual_clock.advance(90)  # 60 s into the taper: halfway from 1000 to 100
    assert d.power_w() == pytest.approx(550)
    manual_clock.advance(880)
    # 1000*60 + (1000+100)/2*120 + 100*60 = 132000 Ws = 36.667 Wh; then the charger stops
    assert d.truth().lifetime_wh == pytest.approx(132000 / 3600)
    assert d.power_w() == 0.0
    assert d.relay_on


def test_flip_back_timer_fires_without_polling(manual_clock: ManualClock) -> None:
    d = device(manual_clock, 3)
    d.set_load(watts=1200)
    d.switch(True, timer_s=60)
    assert d.truth().timer_remaining_s == 60
    status = d.gen2_switch()
    assert status["timer_duration"] == 60 and "timer_started_at" in status
    manual_clock.advance(59)
    assert d.truth().relay_on
    manual_clock.advance(3541)
    t = d.truth()
    assert not t.relay_on and t.timer_remaining_s is None
    assert t.lifetime_wh == pytest.approx(20.0)  # 1200 W for exactly 60 s
    assert d.gen2_switch()["source"] == "timer"
    assert "timer_started_at" not in d.gen2_switch()


def test_gen1_timer_fields(manual_clock: ManualClock) -> None:
    d = device(manual_clock, 1)
    d.switch(True, timer_s=60)
    manual_clock.advance(20)
    relay = d.gen1_relay()
    assert (relay["has_timer"], relay["timer_duration"], relay["timer_remaining"]) == (True, 60, 40)
    assert parse.gen1_relay_state(relay).timer_remaining_s == 40


def test_over_power_trips_the_relay(manual_clock: ManualClock) -> None:
    d1, d2 = device(manual_clock, 1), device(manual_clock, 2)
    for d in (d1, d2):
        d.switch(True)
        d.set_load(watts=4000)  # above 2500 W (Gen1) and 3500 W (Gen2)
    assert not d1.truth().relay_on and d1.truth().tripped
    assert d1.gen1_relay()["overpower"] is True
    assert d1.gen1_meter()["overpower"] == 4000.0
    assert d2.gen2_switch()["errors"] == ["overpower"]
    d2.switch(True)  # still overloaded: trips again at once
    assert not d2.truth().relay_on
    d2.set_load(watts=100)
    d2.switch(True)
    assert d2.truth().relay_on and "errors" not in d2.gen2_switch()


def test_reboot_resets_gen1_counters_but_not_gen2(manual_clock: ManualClock) -> None:
    d1, d2 = device(manual_clock, 1), device(manual_clock, 2)
    for d in (d1, d2):
        d.set_load(watts=600)
        d.switch(True)
    manual_clock.advance(600)
    assert d1.truth().counter == 6000  # 600 W * 10 min
    d1.reboot()
    d2.reboot()
    assert (d1.truth().counter, d1.truth().uptime_s, d1.truth().relay_on) == (0, 0, False)
    assert d2.truth().counter == 100.0 and d2.truth().uptime_s == 0
    assert d1.truth().boots == 2


def test_minute_counters(manual_clock: ManualClock) -> None:
    d1, d2 = device(manual_clock, 1), device(manual_clock, 2)
    for d in (d1, d2):
        d.set_load(watts=600)
        d.switch(True)
    manual_clock.advance(120)  # the fixture's start is on a minute boundary
    assert d1.gen1_meter()["counters"] == [600.0, 600.0, 0.0]  # Wmin per minute
    sw = d2.gen2_switch()
    assert sw["aenergy"]["by_minute"] == [10000.0, 10000.0, 0.0]  # mWh per minute
    assert sw["aenergy"]["minute_ts"] == manual_clock.now()


def test_meter_timestamp_is_local_epoch(manual_clock: ManualClock) -> None:
    d = device(manual_clock, 1)
    assert d.gen1_meter()["timestamp"] == int(manual_clock.now()) + 3600


def test_missing_fields_mode(manual_clock: ManualClock) -> None:
    d1, d2 = device(manual_clock, 1), device(manual_clock, 3)
    d1.missing_fields = d2.missing_fields = True
    assert set(d1.gen1_relay()) == {"ison", "has_timer", "overpower"}
    assert "tmp" not in d1.gen1_status()
    sw = d2.gen2_switch()
    assert "current" not in sw and sw["temperature"]["tC"] is None


def test_rpc_errors_match_the_device(manual_clock: ManualClock) -> None:
    d = device(manual_clock, 2)
    with pytest.raises(RpcFailure) as e1:
        d.rpc("Switch.GetStatus", {})
    with pytest.raises(RpcFailure) as e2:
        d.rpc("Switch.GetStatus", {"id": 7})
    with pytest.raises(RpcFailure) as e3:
        d.rpc("Shelly.GetComponents", {})
    assert (e1.value.code, e2.value.code, e3.value.code) == (-103, -105, 404)
    assert e2.value.message == "Argument 'id', value 7 not found!"
    assert e3.value.message == "No handler for Shelly.GetComponents"
    assert d.rpc("Switch.Set", {"id": 0, "on": True}) == {"was_on": False}
    assert d.rpc("Switch.Toggle", {"id": 0}) == {"was_on": True}


def test_metering_only_plug_has_pm1_and_no_switch(manual_clock: ManualClock) -> None:
    d = device(manual_clock, 3, model="S3PL-30116EU", metering_only=True)
    status = d.rpc("Shelly.GetStatus", {})
    assert "pm1:0" in status and "switch:0" not in status
    with pytest.raises(RpcFailure):
        d.rpc("Switch.Set", {"id": 0, "on": True})


# --- digest, device side -----------------------------------------------------------------------------


def _server(clock: ManualClock, mode: str = "fw2") -> DigestServer:
    return DigestServer("shellyplugsg3-aabbccddeeff", "pw", clock, mode)


def _client(ch: Challenge, password: str = "pw") -> DigestState:
    state = DigestState(password)
    state.adopt(ch)
    return state


def test_fw2_nonce_count_must_start_at_one_and_increase(manual_clock: ManualClock) -> None:
    srv = _server(manual_clock)
    first = srv.verify_header("GET", "/rpc/Sys.GetStatus", None)
    assert not first.ok and first.challenge is not None and not first.challenge.stale
    assert first.challenge.nonce.endswith("=") or len(first.challenge.nonce) % 4 == 0  # base64
    client = _client(first.challenge)
    assert srv.verify_header("GET", "/a", client.header("GET", "/a")).ok
    assert srv.verify_header("GET", "/b", client.header("GET", "/b")).ok
    client.nc = 0  # a client that restarts its count on a nonce already used
    assert not srv.verify_header("GET", "/c", client.header("GET", "/c")).ok


def test_fw2_expired_nonce_gets_stale(manual_clock: ManualClock) -> None:
    srv = _server(manual_clock)
    ch = srv.verify_header("GET", "/x", None).challenge
    assert ch is not None
    client = _client(ch)
    assert srv.verify_header("GET", "/x", client.header("GET", "/x")).ok
    manual_clock.advance(3600)
    verdict = srv.verify_header("GET", "/x", client.header("GET", "/x"))
    assert not verdict.ok and verdict.challenge is not None and verdict.challenge.stale


def test_fw2_wrong_password_is_not_stale_and_throttles_after_repeats(manual_clock: ManualClock) -> None:
    srv = _server(manual_clock)
    ch = srv.verify_header("GET", "/x", None).challenge
    assert ch is not None
    verdict = srv.verify_header("GET", "/x", _client(ch, "wrong").header("GET", "/x"))
    assert not verdict.ok and verdict.challenge is not None and not verdict.challenge.stale
    for _ in range(DigestServer.FAIL_LIMIT):
        ch = verdict.challenge or ch
        verdict = srv.verify_header("GET", "/x", _client(ch, "wrong").header("GET", "/x"))
    assert verdict.throttled == "Too many failed authentication attempts"


def test_fw2_full_nonce_table_answers_429(manual_clock: ManualClock) -> None:
    srv = _server(manual_clock)
    for _ in range(DigestServer.SLOTS):
        assert srv.verify_header("GET", "/x", None).challenge is not None
    assert srv.verify_header("GET", "/x", None).throttled


def test_uri_must_match_the_request(manual_clock: ManualClock) -> None:
    srv = _server(manual_clock)
    ch = srv.verify_header("GET", "/x", None).challenge
    assert ch is not None
    assert not srv.verify_header("GET", "/y", _client(ch).header("GET", "/x")).ok


def test_json_form_accepted(manual_clock: ManualClock) -> None:
    srv = _server(manual_clock)
    ch = srv.verify_json(None).challenge
    assert ch is not None
    client = _client(ch)
    assert srv.verify_json(client.json_auth()).ok
    assert srv.verify_json(client.json_auth()).ok
    assert not srv.verify_json(dict(client.json_auth(), response="0" * 64)).ok


def test_legacy_mode_decimal_nonce_ignores_nc(manual_clock: ManualClock) -> None:
    srv = _server(manual_clock, "legacy")
    ch = srv.verify_header("GET", "/x", None).challenge
    assert ch is not None and ch.nonce.isdigit()
    client = _client(ch)
    client.nc = 4
    assert srv.verify_header("GET", "/x", client.header("GET", "/x")).ok
    client.nc = 0
    assert srv.verify_header("GET", "/x", client.header("GET", "/x")).ok
