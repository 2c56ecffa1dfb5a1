"""Shelly JSON → domain values. Pure: no I/O, no clock; every garbage input raises ``InvalidResponse``.

Quirks handled here (seen on real devices): Gen1 ``total`` is watt-minutes and resets on reboot;
Gen2+ ``aenergy.total`` is Wh; Gen1 ``overpower`` is a bool in ``relays[]`` but a float in
``meters[]``; Gen1 ``meters[].timestamp`` is local-offset epoch (never used, readings are stamped by
our clock); ``gen`` may be 2, 3 or 4; Gen2 optional keys (``errors``, ``current``, ``temperature``,
even all metering) may be absent and ``tC`` may be null; Plug PM Gen3 has ``pm1:0`` and no relay.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from chargectl.common.errors import InvalidResponse, RpcCallError
from chargectl.common.readings import MAC_RE, DeviceFlag, Reading

__all__ = [
    "METERING_ONLY_MODELS",
    "DeviceInfo",
    "Gen1Relay",
    "Gen2Switch",
    "RelayState",
    "errors_to_flags",
    "gen1_reading",
    "gen1_relay_state",
    "gen2_components",
    "gen2_reading",
    "gen2_switch_state",
    "parse_device_info",
    "parse_json",
    "rpc_error",
    "wh_to_mwh",
    "wmin_to_mwh",
]

# Models that meter but cannot switch (Plug PM Gen3 exposes ``pm1:0`` only).
METERING_ONLY_MODELS = frozenset({"S3PL-30116EU"})

_FLAG_NAMES = {
    "overpower": DeviceFlag.OVERPOWER,
    "overtemp": DeviceFlag.OVERTEMP,
    "overvoltage": DeviceFlag.OVERVOLTAGE,
    "undervoltage": DeviceFlag.UNDERVOLTAGE,
    "overcurrent": DeviceFlag.OVERCURRENT,
}


class Gen1Relay(TypedDict, total=False):
    """``/status.relays[n]`` and ``/relay/n`` (old firmware sends only ison/has_timer/overpower)."""

    ison: bool
    has_timer: bool
    timer_started: int
    timer_duration: int
    timer_remaining: int
    overpower: bool
    source: str


class Gen2Switch(TypedDict, total=False):
    """``Switch.GetStatus`` / ``status["switch:N"]``; every metering key is optional."""

    id: int
    source: str
    output: bool
    apower: float
    voltage: float
    current: float
    aenergy: dict[str, Any]
    temperature: dict[str, float | None]
    errors: list[str]
    timer_started_at: float
    timer_duration: float


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What ``GET /shelly`` says about a device (no auth needed, every generation)."""

    mac: str
    gen: int
    model: str
    firmware: str
    auth: bool
    name: str | None = None
    device_id: str | None = None
    switchable: bool = True


@dataclass(frozen=True, slots=True)
class RelayState:
    """A relay's output and its armed flip-back timer, if any."""

    on: bool
    timer_remaining_s: float | None = None
    source: str | None = None


# The range each number a plug reports must fall in (far beyond any real plug; inside the wire format).
# A number outside it, or not finite, makes the whole answer an ``InvalidResponse``.
BOUNDS: dict[str, tuple[float, float]] = {
    "power": (-100_000.0, 100_000.0),  # W; generation shows as negative power on some meters
    "apower": (-100_000.0, 100_000.0),
    "voltage": (0.0, 1_000.0),  # V
    "current": (-1_000.0, 1_000.0),  # A
    "temperature": (-100.0, 300.0),  # °C
    "tC": (-100.0, 300.0),
    "total": (0.0, 1e12),  # Gen1 Wmin / Gen2 Wh lifetime counter
    "uptime": (0.0, 2.0**32 - 1),  # s
    "timer_remaining": (0.0, 1e9),  # s
    "timer_duration": (0.0, 1e9),
    "timer_started_at": (0.0, 1e11),  # unix s
}


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def parse_json(body: bytes, what: str) -> Any:
    """Decode a device body as JSON, or raise ``InvalidResponse`` naming ``what``.

    ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's parser accepts) are refused here.
    """
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except _NonFinite as exc:
        raise InvalidResponse(f"{what}: non-finite number {exc} in the answer") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        snippet = body[:40].decode("utf-8", "replace")
        raise InvalidResponse(f"{what}: not JSON ({snippet!r})") from None


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidResponse(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _num(obj: Mapping[str, Any], key: str, what: str, *, required: bool = False) -> float | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidResponse(f"{what}: missing {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidResponse(f"{what}: {key!r} is not a number ({str(value)[:40]!r})")
    try:
        number = float(value)
    except OverflowError:  # an integer too big for a float
        raise InvalidResponse(f"{what}: {key!r} is out of range") from None
    lo, hi = BOUNDS.get(key, (-1e15, 1e15))
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidResponse(f"{what}: {key!r} is out of range ({number!r}, expected {lo:g}..{hi:g})")
    return number


def _bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise InvalidResponse(f"{what}: {key!r} is missing or not a boolean ({value!r})")
    return value


def _mac(value: Any, what: str) -> str:
    if not isinstance(value, str) or not MAC_RE.match(value.upper()):
        raise InvalidResponse(f"{what}: bad or missing 'mac' ({value!r})")
    return value.upper()


def wmin_to_mwh(wmin: float) -> int:
    """Gen1 watt-minutes → integer milliwatt-hours (1 Wmin = 1000/60 mWh)."""
    return round(wmin * 1000 / 60)


def wh_to_mwh(wh: float) -> int:
    """Gen2+ watt-hours (3 dp) → integer milliwatt-hours."""
    return round(wh * 1000)


def parse_device_info(value: Any) -> DeviceInfo:
    """``GET /shelly``: a ``gen`` key means the Gen2+ RPC API (any gen ≥ 2), no ``gen`` means Gen1."""
    what = "/shelly"
    obj = _obj(value, what)
    mac = _mac(obj.get("mac"), what)
    if "gen" in obj:
        gen = obj["gen"]
        if isinstance(gen, bool) or not isinstance(gen, int) or not 2 <= gen <= 99:
            raise InvalidResponse(f"{what}: bad 'gen' ({gen!r})")
        model = obj.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidResponse(f"{what}: missing 'model' (device not fully provisioned?)")
        firmware = obj.get("ver") or obj.get("fw_id") or ""
        name = obj.get("name")
        dev_id = obj.get("id")
        return DeviceInfo(
            mac=mac,
            gen=gen,
            model=model,
            firmware=str(firmware),
            auth=bool(obj.get("auth_en", False)),
            name=name if isinstance(name, str) else None,
            device_id=dev_id if isinstance(dev_id, str) else None,
            switchable=model not in METERING_ONLY_MODELS,
        )
    model = obj.get("type")
    if not isinstance(model, str) or not model:
        raise InvalidResponse(f"{what}: neither 'gen' nor 'type' present")
    outputs = obj.get("num_outputs")
    name = obj.get("name")
    return DeviceInfo(
        mac=mac,
        gen=1,
        model=model,
        firmware=str(obj.get("fw", "")),
        auth=bool(obj.get("auth", False)),
        name=name if isinstance(name, str) else None,
        device_id=None,
        switchable=(outputs is None or (isinstance(outputs, int) and outputs > 0))
        and model not in METERING_ONLY_MODELS,
    )


def errors_to_flags(errors: Any) -> int:
    """Gen2 ``errors`` list (present only when non-empty) → ``DeviceFlag`` bits; unknown → OTHER."""
    if errors is None:
        return 0
    if not isinstance(errors, list):
        raise InvalidResponse(f"'errors' is not a list ({errors!r})")
    flags = DeviceFlag.NONE
    for name in errors:
        if not isinstance(name, str):
            raise InvalidResponse(f"'errors' holds a {type(name).__name__}, not a name")
        flags |= _FLAG_NAMES.get(name, DeviceFlag.OTHER)
    return int(flags)


def gen1_relay_state(value: Any, what: str = "/relay/0") -> RelayState:
    """A Gen1 relay object (``/relay/0`` or ``/status.relays[0]``)."""
    obj = _obj(value, what)
    on = _bool(obj, "ison", what)
    remaining = None
    if obj.get("has_timer"):
        remaining = _num(obj, "timer_remaining", what)
    source = obj.get("source")
    return RelayState(on=on, timer_remaining_s=remaining, source=source if isinstance(source, str) else None)


def gen1_reading(value: Any, *, mac: str, ts_ms: int, channel: int = 0) -> Reading:
    """Gen1 ``/status`` → Reading. ``total`` watt-minutes → mWh; ``meters[].timestamp`` is ignored."""
    what = "/status"
    obj = _obj(value, what)
    status_mac = obj.get("mac")
    if status_mac is not None and _mac(status_mac, what) != mac:
        raise InvalidResponse(f"{what}: mac {status_mac} is not the expected {mac}")
    relays = obj.get("relays")
    meters = obj.get("meters")
    if not isinstance(relays, list) or len(relays) <= channel:
        raise InvalidResponse(f"{what}: no relays[{channel}]")
    relay = _obj(relays[channel], f"{what} relays[{channel}]")
    on = _bool(relay, "ison", f"{what} relays[{channel}]")
    flags = DeviceFlag.NONE
    if relay.get("overpower") is True:  # bool here; meters[].overpower is a float W value
        flags |= DeviceFlag.OVERPOWER
    if obj.get("overtemperature") is True:
        flags |= DeviceFlag.OVERTEMP
    power = 0.0
    energy_mwh = 0
    if isinstance(meters, list) and len(meters) > channel:
        meter = _obj(meters[channel], f"{what} meters[{channel}]")
        power = _num(meter, "power", f"{what} meters[{channel}]", required=True) or 0.0
        total = _num(meter, "total", f"{what} meters[{channel}]")
        energy_mwh = wmin_to_mwh(total) if total is not None else 0
    temperature = _num(obj, "temperature", what)
    tmp = obj.get("tmp")
    if temperature is None and isinstance(tmp, Mapping) and tmp.get("is_valid", True):
        temperature = _num(tmp, "tC", f"{what} tmp")
    voltage = _num(obj, "voltage", what)
    uptime = _num(obj, "uptime", what)
    return Reading(
        mac=mac,
        ts_ms=ts_ms,
        power_w=power,
        energy_mwh=energy_mwh,
        relay_on=on,
        voltage_v=voltage,
        current_a=(power / voltage) if voltage else None,
        temperature_c=temperature,
        errors=int(flags),
        uptime_s=int(uptime) if uptime is not None else None,
    )


def gen2_switch_state(value: Any, what: str = "Switch.GetStatus") -> RelayState:
    """A Gen2+ ``switch:N`` object; ``timer_*`` keys exist only while a flip-back timer is armed."""
    obj = _obj(value, what)
    on = _bool(obj, "output", what)
    remaining = None
    started = _num(obj, "timer_started_at", what)
    duration = _num(obj, "timer_duration", what)
    if started is not None and duration is not None:
        remaining = duration  # the device does not report "remaining"; callers compare with their clock
    source = obj.get("source")
    return RelayState(on=on, timer_remaining_s=remaining, source=source if isinstance(source, str) else None)


def gen2_components(value: Any) -> tuple[list[int], list[int]]:
    """``Shelly.GetStatus`` → (switch ids, pm1 ids); unknown component keys are ignored."""
    obj = _obj(value, "Shelly.GetStatus")
    switches: list[int] = []
    meters: list[int] = []
    for key in obj:
        prefix, _, index = str(key).partition(":")
        if index.isdigit():
            if prefix == "switch":
                switches.append(int(index))
            elif prefix == "pm1":
                meters.append(int(index))
    return sorted(switches), sorted(meters)


def _gen2_channel(
    obj: Mapping[str, Any], *, mac: str, ts_ms: int, on: bool, what: str, uptime: int | None
) -> Reading:
    power = _num(obj, "apower", what)
    aenergy = obj.get("aenergy")
    if (power is None) != (aenergy is None):
        # Metering is all there or all absent; half of it is a broken answer, not "0 W".
        raise InvalidResponse(f"{what}: {'apower' if power is None else 'aenergy'} is missing")
    energy_mwh = 0
    if isinstance(aenergy, Mapping):
        total = _num(aenergy, "total", f"{what} aenergy", required=True)
        energy_mwh = wh_to_mwh(total or 0.0)
    elif aenergy is not None:
        raise InvalidResponse(f"{what}: 'aenergy' is not an object")
    temperature = None
    temp = obj.get("temperature")
    if isinstance(temp, Mapping):
        temperature = _num(temp, "tC", f"{what} temperature")  # null when out of range
    return Reading(
        mac=mac,
        ts_ms=ts_ms,
        power_w=power if power is not None else 0.0,
        energy_mwh=energy_mwh,
        relay_on=on,
        voltage_v=_num(obj, "voltage", what),
        current_a=_num(obj, "current", what),
        temperature_c=temperature,
        errors=errors_to_flags(obj.get("errors")),
        uptime_s=uptime,
    )


def gen2_reading(value: Any, *, mac: str, ts_ms: int, channel: int = 0) -> Reading:
    """Gen2+ ``Shelly.GetStatus`` → Reading from ``switch:N`` (or ``pm1:N`` on metering-only plugs).

    A ``pm1`` meter has no relay; its outlet is always live, so ``relay_on`` is reported True.
    """
    obj = _obj(value, "Shelly.GetStatus")
    uptime: int | None = None
    sys_ = obj.get("sys")
    if isinstance(sys_, Mapping):
        sys_mac = sys_.get("mac")
        if sys_mac is not None and _mac(sys_mac, "sys") != mac:
            raise InvalidResponse(f"Shelly.GetStatus: sys.mac {sys_mac} is not the expected {mac}")
        up = _num(sys_, "uptime", "sys")
        uptime = int(up) if up is not None else None
    key = f"switch:{channel}"
    if key in obj:
        what = f"Shelly.GetStatus {key}"
        switch = _obj(obj[key], what)
        return _gen2_channel(
            switch, mac=mac, ts_ms=ts_ms, on=_bool(switch, "output", what), what=what, uptime=uptime
        )
    key = f"pm1:{channel}"
    if key in obj:
        what = f"Shelly.GetStatus {key}"
        return _gen2_channel(_obj(obj[key], what), mac=mac, ts_ms=ts_ms, on=True, what=what, uptime=uptime)
    raise InvalidResponse(f"Shelly.GetStatus: neither switch:{channel} nor pm1:{channel} present")


def rpc_error(value: Any) -> RpcCallError | None:
    """An RPC error in either shape (``{"error":{code,message}}`` or bare ``{code,message}``), else None."""
    if not isinstance(value, Mapping):
        return None
    err = value.get("error") if isinstance(value.get("error"), Mapping) else value
    if not isinstance(err, Mapping):
        return None
    code = err.get("code")
    message = err.get("message")
    if isinstance(code, int) and not isinstance(code, bool) and isinstance(message, str):
        return RpcCallError(code, message)
    return None
