"""The normalised plug reading every layer shares (Shelly client → agent → codec → hub)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntFlag

__all__ = ["MAC_RE", "DeviceFlag", "Reading", "normalize_mac"]

MAC_RE = re.compile(r"^[0-9A-F]{12}\Z")  # \Z, not $: "$" lets a trailing newline through


def normalize_mac(text: str) -> str:
    """``aa:bb:cc:dd:ee:ff`` / ``aabbccddeeff`` → ``AABBCCDDEEFF``; ValueError if it is not a MAC."""
    mac = re.sub(r"[:\-.]", "", text.strip()).upper()
    if not MAC_RE.match(mac):
        raise ValueError(f"not a MAC address: {text!r}")
    return mac


class DeviceFlag(IntFlag):
    """Protection states a plug reports (Gen1 booleans, Gen2+ ``errors`` list)."""

    NONE = 0
    OVERPOWER = 1
    OVERTEMP = 2
    OVERVOLTAGE = 4
    UNDERVOLTAGE = 8
    OVERCURRENT = 16
    OTHER = 1 << 15


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of one plug.

    Resolution on the wire: power 0.1 W, energy 1 mWh (the plug's own lifetime counter, which resets
    on a Gen1 reboot), voltage 0.1 V, current 1 mA, temperature 0.1 °C, time 1 ms.
    """

    mac: str
    ts_ms: int
    power_w: float
    energy_mwh: int
    relay_on: bool
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None
    errors: int = 0
    uptime_s: int | None = None
