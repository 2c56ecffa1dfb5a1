"""Recorded Shelly payloads (from real devices); not invented, quirks kept."""

from __future__ import annotations

import json
from typing import Any


def _j(text: str) -> Any:
    return json.loads(text)


# Gen1 Plug S, fw v1.14.0
GEN1_PLUG_S_SHELLY = _j(
    '{"type":"SHPLG-S","mac":"AABBCCDDEEFF","auth":false,"fw":"20230913-113421/v1.14.0-gcb84623",'
    '"discoverable":true,"name":"Test Name","num_outputs":1,"num_meters":1}'
)
GEN1_1PM_SHELLY = _j(
    '{"type":"SHSW-PM","mac":"E09806A9E103","auth":false,"fw":"20220809-124723/v1.12-g99f7e0b",'
    '"discoverable":false,"longid":1,"num_outputs":1,"num_meters":1}'
)
GEN1_PLUG_S_STATUS = _j(
    """{"wifi_sta":{"connected":true,"ssid":"x","ip":"192.168.1.91","rssi":-76},
 "cloud":{"enabled":false,"connected":false},"mqtt":{"connected":false},
 "time":"19:57","unixtime":1707332241,"serial":16,"has_update":false,"mac":"AABBCCDDEEFF",
 "cfg_changed_cnt":0,"actions_stats":{"skipped":0},
 "relays":[{"ison":false,"has_timer":false,"timer_started":0,"timer_duration":0,
            "timer_remaining":0,"overpower":false,"source":"http"}],
 "meters":[{"power":0.0,"overpower":0.0,"is_valid":true,"timestamp":1707335841,
            "counters":[0.0,0.0,0.0],"total":2632}],
 "temperature":24.14,"overtemperature":false,"tmp":{"tC":24.14,"tF":75.45,"is_valid":true},
 "update":{"status":"idle","has_update":false,"new_version":"a","old_version":"b","beta_version":"c"},
 "ram_total":52056,"ram_free":40428,"fs_size":233681,"fs_free":166915,"uptime":2589909}"""
)
GEN1_RELAY_ON = _j(
    '{"ison":true,"has_timer":false,"timer_started":0,"timer_duration":0,"timer_remaining":0,'
    '"overpower":false,"source":"http"}'
)

# Gen2 Plus Plug S fw 1.1.0
PLUS_PLUG_S_SHELLY = _j(
    '{"name":"Test Name","id":"shellyplusplugs-aabbccddeeff","mac":"AABBCCDDEEFF","slot":0,'
    '"model":"SNPL-00112EU","gen":2,"fw_id":"20231219-134003/1.1.0-g34b5d4f","ver":"1.1.0",'
    '"app":"PlusPlugS","auth_en":false,"auth_domain":null}'
)
PLUS_PLUG_S_SWITCH = _j(
    '{"id":0,"source":"init","output":true,"apower":2.7,"voltage":227.9,"current":0.121,'
    '"aenergy":{"total":7258.589,"by_minute":[34.786,45.552,45.552],"minute_ts":1707326925},'
    '"temperature":{"tC":32.1,"tF":89.7}}'
)

# Plug S Gen3 fw 2.0.0 and a Gen3 switch with freq/ret_aenergy
PLUG_S_GEN3_SHELLY = _j(
    '{"name":null,"id":"shellyplugsg3-d885ac16f888","mac":"D885AC16F888","slot":0,"model":"S3PL-00112EU",'
    '"gen":3,"fw_id":"20260710-101146/2.0.0-g87fbfa4","ver":"2.0.0","app":"PlugSG3","auth_en":false}'
)
GEN3_SWITCH = _j(
    '{"id":0,"source":"HTTP_in","output":false,"apower":0.0,"voltage":236.5,"freq":50.1,"current":0.000,'
    '"aenergy":{"total":1871.055,"by_minute":[0.000,0.000,0.000],"minute_ts":1742209020},'
    '"ret_aenergy":{"total":0.000,"by_minute":[0.000,0.000,0.000],"minute_ts":1742209020},'
    '"temperature":{"tC":18.8,"tF":65.9}}'
)
# Shelly 1 Mini Gen4: a switch without any metering keys ("shown if applicable")
MINI_GEN4_SWITCH = _j('{"id":0,"source":"WS_in","output":false,"temperature":{"tC":41.2,"tF":106.2}}')

# Errors
RPC_ERROR_FRAME = _j(
    '{"id":1,"src":"shellyplusplugs-aabbccddeeff","error":{"code":-103,"message":"Missing required \'id\'"}}'
)
RPC_ERROR_BARE = _j('{"code":404,"message":"No handler for Shelly.GetComponents"}')
JSON_CHALLENGE_MESSAGE = '{"auth_type": "digest", "nonce": 1725185413, "nc": 1, "realm": "shellyplus2pm-c4d8d5563e48", "algorithm": "SHA-256"}'


def gen2_status(switch: dict[str, Any], *, uptime: int = 1234, mac: str = "AABBCCDDEEFF") -> dict[str, Any]:
    """A ``Shelly.GetStatus`` result around a recorded ``switch:0`` (plus an unknown component)."""
    return {
        "ble": {},
        "cloud": {"connected": False},
        "switch:0": switch,
        "sys": {"mac": mac, "uptime": uptime, "unixtime": 1707326925},
        "plugs_ui": {},
        "number:200": {"value": 3},
    }
