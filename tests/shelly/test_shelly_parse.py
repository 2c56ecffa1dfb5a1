"""Parser tests on recorded payloads; each names the device quirk it covers."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from shelly_payloads import (
    GEN1_1PM_SHELLY,
    GEN1_PLUG_S_SHELLY,
    GEN1_PLUG_S_STATUS,
    GEN1_RELAY_ON,
    GEN3_SWITCH,
    MINI_GEN4_SWITCH,
    PLUG_S_GEN3_SHELLY,
    PLUS_PLUG_S_SHELLY,
    PLUS_PLUG_S_SWITCH,
    RPC_ERROR_BARE,
    RPC_ERROR_FRAME,
    gen2_status,
)

from chargectl.common.errors import InvalidResponse, RpcCallError
from chargectl.common.readings import DeviceFlag
from chargectl.shelly import parse

TS = 1_767_225_600_000


# --- generation detection from GET /shelly -------------------------------------------


def test_gen1_has_no_gen_key() -> None:
    info = parse.parse_device_info(GEN1_PLUG_S_SHELLY)
    assert (info.gen, info.model, info.mac, info.auth, info.name) == (
        1,
        "SHPLG-S",
        "AABBCCDDEEFF",
        False,
        "Test Name",
    )
    assert info.firmware == "20230913-113421/v1.14.0-gcb84623"
    assert info.switchable


def test_gen1_1pm_old_keys() -> None:
    info = parse.parse_device_info(GEN1_1PM_SHELLY)
    assert (info.gen, info.model, info.mac) == (1, "SHSW-PM", "E09806A9E103")


def test_plus_plug_s_is_rpc_gen2() -> None:
    info = parse.parse_device_info(PLUS_PLUG_S_SHELLY)
    assert (info.gen, info.model, info.firmware, info.device_id) == (
        2,
        "SNPL-00112EU",
        "1.1.0",
        "shellyplusplugs-aabbccddeeff",
    )


@pytest.mark.parametrize("gen", [3, 4])
def test_gen3_and_gen4_are_rpc_too(gen: int) -> None:
    payload = dict(PLUG_S_GEN3_SHELLY, gen=gen)
    info = parse.parse_device_info(payload)
    assert info.gen == gen
    assert info.name is None  # null name on Gen3
    assert info.mac == "D885AC16F888"


def test_plug_pm_gen3_is_metering_only() -> None:
    info = parse.parse_device_info(dict(PLUG_S_GEN3_SHELLY, model="S3PL-30116EU"))
    assert not info.switchable


def test_mac_is_normalised_to_upper_case() -> None:
    info = parse.parse_device_info(dict(PLUS_PLUG_S_SHELLY, mac="aabbccddeeff"))
    assert info.mac == "AABBCCDDEEFF"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"mac": "AABBCC"}, "mac"),
        ({"mac": None}, "mac"),
        ({"gen": 1}, "gen"),
        ({"gen": "2"}, "gen"),
        ({"model": ""}, "provisioned"),
    ],
)
def test_bad_device_info_is_invalid_response(change: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidResponse, match=needle):
        parse.parse_device_info(dict(PLUS_PLUG_S_SHELLY, **change))


def test_non_json_body_is_invalid_response() -> None:
    with pytest.raises(InvalidResponse, match="not JSON"):
        parse.parse_json(b"401 Unauthorized", "/status")


# --- Gen1 /status -------------------------------------------------------------------------------------


def test_gen1_total_is_watt_minutes() -> None:
    r = parse.gen1_reading(GEN1_PLUG_S_STATUS, mac="AABBCCDDEEFF", ts_ms=TS)
    # 2632 Wmin = 43.8667 Wh = 43867 mWh
    assert r.energy_mwh == 43867
    assert r.power_w == 0.0
    assert r.relay_on is False
    assert r.temperature_c == 24.14
    assert r.voltage_v is None  # Plug S has no voltage
    assert r.errors == 0


def test_gen1_uptime_is_reported_for_reset_detection() -> None:
    r = parse.gen1_reading(GEN1_PLUG_S_STATUS, mac="AABBCCDDEEFF", ts_ms=TS)
    assert r.uptime_s == 2589909


def test_gen1_meter_timestamp_is_not_used_as_time() -> None:  # local-offset epoch
    r = parse.gen1_reading(GEN1_PLUG_S_STATUS, mac="AABBCCDDEEFF", ts_ms=TS)
    assert r.ts_ms == TS
    assert r.ts_ms != 1707335841 * 1000


def test_gen1_overpower_bool_in_relays_float_in_meters() -> None:
    status = copy.deepcopy(GEN1_PLUG_S_STATUS)
    status["meters"][0]["overpower"] = 2600.0  # a float W value: not itself a trip flag
    assert parse.gen1_reading(status, mac="AABBCCDDEEFF", ts_ms=TS).errors == 0
    status["relays"][0]["overpower"] = True
    assert parse.gen1_reading(status, mac="AABBCCDDEEFF", ts_ms=TS).errors == DeviceFlag.OVERPOWER
    status["overtemperature"] = True
    assert (
        parse.gen1_reading(status, mac="AABBCCDDEEFF", ts_ms=TS).errors
        == DeviceFlag.OVERPOWER | DeviceFlag.OVERTEMP
    )


def test_gen1_very_old_firmware_shape() -> None:
    status = copy.deepcopy(GEN1_PLUG_S_STATUS)
    status["relays"] = [{"ison": True, "has_timer": False, "overpower": False}]
    for key in ("temperature", "tmp", "overtemperature"):
        del status[key]
    del status["meters"][0]["overpower"]
    r = parse.gen1_reading(status, mac="AABBCCDDEEFF", ts_ms=TS)
    assert r.relay_on is True
    assert r.temperature_c is None
    assert r.energy_mwh == 43867


def test_gen1_status_of_another_device_is_rejected() -> None:
    with pytest.raises(InvalidResponse, match="not the expected"):
        parse.gen1_reading(GEN1_PLUG_S_STATUS, mac="112233445566", ts_ms=TS)


def test_gen1_relay_object() -> None:
    assert parse.gen1_relay_state(GEN1_RELAY_ON) == parse.RelayState(
        on=True, timer_remaining_s=None, source="http"
    )
    armed = dict(GEN1_RELAY_ON, has_timer=True, timer_duration=60, timer_remaining=42)
    assert parse.gen1_relay_state(armed).timer_remaining_s == 42


def test_gen1_relay_without_ison_is_invalid() -> None:
    with pytest.raises(InvalidResponse, match="ison"):
        parse.gen1_relay_state({"has_timer": False})


# --- Gen2+ Shelly.GetStatus -------------------------------------------------------------------------


def test_gen2_aenergy_total_is_watt_hours() -> None:  # not watt-minutes, not /60000
    r = parse.gen2_reading(gen2_status(PLUS_PLUG_S_SWITCH), mac="AABBCCDDEEFF", ts_ms=TS)
    assert r.energy_mwh == 7258589
    assert (r.power_w, r.voltage_v, r.current_a, r.temperature_c) == (2.7, 227.9, 0.121, 32.1)
    assert r.relay_on is True
    assert r.uptime_s == 1234
    assert r.errors == 0  # `errors` is absent when empty


def test_gen3_switch_with_freq_and_returned_energy() -> None:
    r = parse.gen2_reading(gen2_status(GEN3_SWITCH), mac="AABBCCDDEEFF", ts_ms=TS)
    assert r.energy_mwh == 1871055  # aenergy, not ret_aenergy
    assert (r.power_w, r.voltage_v, r.current_a, r.relay_on) == (0.0, 236.5, 0.0, False)


def test_gen2_switch_without_metering_keys() -> None:
    r = parse.gen2_reading(gen2_status(MINI_GEN4_SWITCH), mac="AABBCCDDEEFF", ts_ms=TS)
    assert (r.power_w, r.energy_mwh, r.voltage_v, r.current_a) == (0.0, 0, None, None)
    assert r.temperature_c == 41.2


def test_gen2_null_temperature() -> None:
    switch = dict(PLUS_PLUG_S_SWITCH, temperature={"tC": None, "tF": None})
    assert parse.gen2_reading(gen2_status(switch), mac="AABBCCDDEEFF", ts_ms=TS).temperature_c is None


def test_gen2_errors_list_becomes_flags() -> None:
    switch = dict(PLUS_PLUG_S_SWITCH, output=False, errors=["overpower", "overvoltage"])
    r = parse.gen2_reading(gen2_status(switch), mac="AABBCCDDEEFF", ts_ms=TS)
    assert r.errors == 1 | 4
    assert parse.errors_to_flags(["something_new"]) == DeviceFlag.OTHER


def test_gen2_unknown_components_are_ignored() -> None:
    assert parse.gen2_components(gen2_status(PLUS_PLUG_S_SWITCH)) == ([0], [])


def test_gen2_sys_mac_of_another_device_is_rejected() -> None:
    with pytest.raises(InvalidResponse, match="not the expected"):
        parse.gen2_reading(gen2_status(PLUS_PLUG_S_SWITCH, mac="112233445566"), mac="AABBCCDDEEFF", ts_ms=TS)


def test_gen2_without_switch_or_meter_is_invalid() -> None:
    with pytest.raises(InvalidResponse, match=r"switch:0"):
        parse.gen2_reading({"sys": {"uptime": 1}}, mac="AABBCCDDEEFF", ts_ms=TS)


def test_pm1_meter_is_always_live() -> None:  # Plug PM Gen3, pm1:0 (shape per the PM1 doc)
    status = {
        "pm1:0": {
            "id": 0,
            "voltage": 231.0,
            "current": 0.5,
            "apower": 115.5,
            "freq": 50.0,
            "aenergy": {"total": 12.5},
        },
        "sys": {"uptime": 60},
    }
    r = parse.gen2_reading(status, mac="AABBCCDDEEFF", ts_ms=TS)
    assert (r.relay_on, r.power_w, r.energy_mwh) == (True, 115.5, 12500)
    assert parse.gen2_components(status) == ([], [0])


def test_gen2_switch_state_timer_keys_only_while_armed() -> None:
    assert parse.gen2_switch_state(PLUS_PLUG_S_SWITCH).timer_remaining_s is None
    armed = dict(PLUS_PLUG_S_SWITCH, timer_started_at=1707326925.5, timer_duration=60.0)
    assert parse.gen2_switch_state(armed).timer_remaining_s == 60.0


def test_metering_values_of_wrong_type_are_invalid() -> None:
    with pytest.raises(InvalidResponse, match="apower"):
        parse.gen2_reading(gen2_status(dict(PLUS_PLUG_S_SWITCH, apower="2.7")), mac="AABBCCDDEEFF", ts_ms=TS)


# --- RPC errors in both shapes ------------------------------------------------------------


def test_rpc_error_frame_and_bare_shapes() -> None:
    framed = parse.rpc_error(RPC_ERROR_FRAME)
    bare = parse.rpc_error(RPC_ERROR_BARE)
    assert isinstance(framed, RpcCallError) and (framed.code, framed.rpc_message) == (
        -103,
        "Missing required 'id'",
    )
    assert isinstance(bare, RpcCallError) and bare.code == 404
    assert parse.rpc_error(PLUS_PLUG_S_SWITCH) is None
    assert parse.rpc_error([1, 2]) is None


# --- hostile plugs: every bad number is an InvalidResponse, never a ValueError/OverflowError -----


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_constants_are_refused(constant: str) -> None:
    body = f'{{"switch:0": {{"id": 0, "output": true, "apower": {constant}}}}}'.encode()
    with pytest.raises(InvalidResponse, match=f"non-finite number {constant}"):
        parse.parse_json(body, "Shelly.GetStatus")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("apower", 1e300),
        ("apower", float("inf")),  # what json.loads makes of 1e400
        ("apower", float("nan")),
        ("apower", 10**400),  # an integer no float can hold
        ("voltage", -5.0),
        ("current", 1e6),
    ],
)
def test_gen2_out_of_range_numbers_are_refused(key: str, value: Any) -> None:
    switch = copy.deepcopy(PLUS_PLUG_S_SWITCH)
    switch[key] = value
    with pytest.raises(InvalidResponse, match=f"'{key}' is out of range"):
        parse.gen2_reading(gen2_status(switch), mac="AABBCCDDEEFF", ts_ms=TS)


def test_energy_counter_past_the_wire_format_is_refused() -> None:
    switch = copy.deepcopy(PLUS_PLUG_S_SWITCH)
    switch["aenergy"]["total"] = 1e300  # round(1e300 * 1000) would overflow the uint64 on the wire
    with pytest.raises(InvalidResponse, match="'total' is out of range"):
        parse.gen2_reading(gen2_status(switch), mac="AABBCCDDEEFF", ts_ms=TS)
    status = copy.deepcopy(GEN1_PLUG_S_STATUS)
    status["meters"][0]["total"] = -1
    with pytest.raises(InvalidResponse, match="'total' is out of range"):
        parse.gen1_reading(status, mac="AABBCCDDEEFF", ts_ms=TS)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(apower="230"),  # a string
        lambda s: s.update(output="yes"),
        lambda s: s.pop("output"),
        lambda s: s.pop("apower"),  # half the metering: not "0 W"
        lambda s: s.update(aenergy=[1, 2]),
        lambda s: s.update(errors=[{"overpower": 1}]),
        lambda s: s.update(temperature={"tC": 1e9}),
    ],
    ids=["power-string", "output-string", "no-output", "no-apower", "aenergy-list", "errors-objects", "hot"],
)
def test_gen2_wrong_types_and_missing_fields_are_refused(mutate: Any) -> None:
    switch = copy.deepcopy(PLUS_PLUG_S_SWITCH)
    mutate(switch)
    with pytest.raises(InvalidResponse):
        parse.gen2_reading(gen2_status(switch), mac="AABBCCDDEEFF", ts_ms=TS)


def test_gen1_huge_uptime_and_bad_temperature_are_refused() -> None:
    status = copy.deepcopy(GEN1_PLUG_S_STATUS)
    status["uptime"] = 2**40
    with pytest.raises(InvalidResponse, match="'uptime' is out of range"):
        parse.gen1_reading(status, mac="AABBCCDDEEFF", ts_ms=TS)
    status = copy.deepcopy(GEN1_PLUG_S_STATUS)
    status["temperature"] = float("nan")
    with pytest.raises(InvalidResponse, match="'temperature' is out of range"):
        parse.gen1_reading(status, mac="AABBCCDDEEFF", ts_ms=TS)


def test_deeply_nested_garbage_is_not_json() -> None:
    with pytest.raises(InvalidResponse, match="not JSON"):
        parse.parse_json(b"[" * 100_000, "Shelly.GetStatus")
