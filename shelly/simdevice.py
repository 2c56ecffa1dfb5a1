"""The simulated Shelly device itself: profile, clock-driven physics, and the Gen1/Gen2+ API payloads.

No sockets here (``sim.py`` serves this over HTTP and mDNS). State is advanced lazily to the clock's
``now`` on every access, so a ManualClock in tests and a real clock in the CLI drive it alike.

Physics: while the relay is on, the attached load draws power by its profile (bulk → linear taper →
trickle → done) as a function of *charging time*; energy is integrated exactly (the curve is piecewise
linear), split by wall-clock minute for ``counters``/``by_minute``. Gen1 keeps watt-minutes since boot
(reset on reboot); Gen2+ keeps a lifetime Wh counter. Flip-back timers fire at their deadline even if
nobody is polling; power above the limit trips the relay (Gen1 ``overpower`` / Gen2 ``errors``).
Payload shapes follow payloads recorded from real devices (see tests/shelly/shelly_payloads.py).
"""

from __future__ import annotations

import base64
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chargectl.common.clock import Clock
from chargectl.shelly.auth import JSON_HA2, Challenge, digest_response, ha1, parse_auth_header, sha256_hex

__all__ = [
    "LOAD_PROFILES",
    "MODELS",
    "DigestServer",
    "LoadProfile",
    "PlugProfile",
    "PlugTruth",
    "RpcFailure",
    "SimDevice",
    "make_profile",
]


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """A charger's draw over charging time: ``bulk_w`` for ``bulk_s``, linear taper, trickle, then 0."""

    name: str
    bulk_w: float
    bulk_s: float
    taper_s: float
    trickle_w: float
    trickle_s: float

    def breakpoints(self) -> list[float]:
        b = self.bulk_s
        return [b, b + self.taper_s, b + self.taper_s + self.trickle_s]

    def power(self, t: float, *, left: bool = False) -> float:
        """Power (W) after ``t`` seconds of charging; ``left`` gives the limit from below at a step."""
        b1, b2, b3 = self.breakpoints()
        if t < b1 or (left and t == b1):
            return self.bulk_w
        if t < b2 or (left and t == b2):
            return self.bulk_w + (self.trickle_w - self.bulk_w) * (t - b1) / self.taper_s
        if t < b3 or (left and t == b3):
            return self.trickle_w
        return 0.0


LOAD_PROFILES: dict[str, LoadProfile] = {
    # EV on a granny charger: 10 A at 230 V for hours, taper while the battery balances, trickle, stop.
    "ev": LoadProfile("ev", 2300.0, 4 * 3600.0, 1800.0, 60.0, 1200.0),
    # e-bike charger: ~150 W constant current, constant-voltage taper, a few watts, stop.
    "ebike": LoadProfile("ebike", 150.0, 2 * 3600.0, 1800.0, 8.0, 900.0),
    "idle": LoadProfile("idle", 0.0, 0.0, 1.0, 0.0, 0.0),
}

# Identities recorded from real devices; Gen4 values follow the Gen3 pattern [inf].
MODELS: dict[int, dict[str, Any]] = {
    1: {"model": "SHPLG-S", "fw": "20230913-113421/v1.14.0-gcb84623", "ver": "v1.14.0", "app": "plug-s"},
    2: {"model": "SNPL-00112EU", "fw": "20231219-134003/1.1.0-g34b5d4f", "ver": "1.1.0", "app": "PlusPlugS"},
    3: {"model": "S3PL-00112EU", "fw": "20260710-101146/2.0.0-g87fbfa4", "ver": "2.0.0", "app": "PlugSG3"},
    4: {"model": "S4PL-00116US", "fw": "20260710-101146/2.0.0-g87fbfa4", "ver": "2.0.0", "app": "PlugUSG4"},
}
_ID_PREFIX = {"PlusPlugS": "shellyplusplugs", "PlugSG3": "shellyplugsg3", "PlugUSG4": "shellyplugusg4"}


@dataclass(frozen=True, slots=True)
class PlugProfile:
    """Identity and configuration of one simulated plug."""

    mac: str
    gen: int
    model: str
    firmware: str
    ver: str
    app: str
    name: str | None = None
    password: str | None = None
    user: str = "admin"  # Gen1 only; Gen2+ is always admin
    power_limit_w: float = 2500.0
    tz_utc_offset_s: int = 3600
    auth_mode: str = "fw2"  # Gen2+: "fw2" (base64 nonce, nc tracked, stale, 429) or "legacy"
    metering_only: bool = False  # Plug PM Gen3: pm1:0, no relay
    initial_on: bool = False

    @property
    def device_id(self) -> str:
        """Gen2+ device id (also the digest realm); Gen1 hostname."""
        if self.gen == 1:
            return f"shellyplug-s-{self.mac[-6:]}"
        prefix = _ID_PREFIX.get(self.app, "shelly" + self.app.lower())
        return f"{prefix}-{self.mac.lower()}"


def make_profile(gen: int, mac: str, *, password: str | None = None, **overrides: Any) -> PlugProfile:
    """A profile with the recorded model/firmware of a plug of generation ``gen``."""
    if gen not in MODELS:
        raise ValueError(f"gen must be 1, 2, 3 or 4, not {gen}")
    m = MODELS[gen]
    base = PlugProfile(
        mac=mac.upper(),
        gen=gen,
        model=m["model"],
        firmware=m["fw"],
        ver=m["ver"],
        app=m["app"],
        password=password,
        power_limit_w=2500.0 if gen == 1 else 3500.0,
    )
    return replace(base, **overrides)


@dataclass(frozen=True, slots=True)
class PlugTruth:
    """What the simulated plug really is doing (for tests to compare readings against)."""

    relay_on: bool
    power_w: float
    counter: float  # the device's own counter: Gen1 watt-minutes (int), Gen2+ Wh (3 dp)
    energy_mwh: int  # that counter in mWh, as a correct client reports it
    lifetime_wh: float
    timer_remaining_s: float | None
    uptime_s: int
    tripped: bool
    boots: int


class RpcFailure(Exception):
    """An RPC error the device answers with (code, message, HTTP status)."""

    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass
class _Nonce:
    created: float
    last_nc: int = 0


@dataclass
class AuthVerdict:
    """Outcome of checking a request's credentials."""

    ok: bool
    challenge: Challenge | None = None
    throttled: str | None = None  # 429 message


class DigestServer:
    """The device side of Gen2+ digest auth, both forms, with the firmware 2.0 nonce rules.

    fw2: base64 nonces valid ``nonce_ttl_s`` (1 h), nc must start at 1 and grow by one per nonce,
    expired/unknown nonce with a correct response → ``stale=true``; 32 nonce slots, a full table
    throttles new challenges (429) for 2 s; too many failures in 10 min → 429 "Too many failed
    authentication attempts". legacy: decimal nonce ≈ unix time, nc ignored, no throttling.
    """

    SLOTS = 32
    FAIL_WINDOW_S = 600.0
    FAIL_LIMIT = 10
    THROTTLE_S = 2.0

    def __init__(self, realm: str, password: str, clock: Clock, mode: str = "fw2") -> None:
        self.realm = realm
        self.ha1 = ha1(realm, password)
        self.clock = clock
        self.mode = mode
        self.nonce_ttl_s = 3600.0
        self.nonces: dict[str, _Nonce] = {}
        self.failures: list[float] = []
        self.throttle_until = 0.0
        self._counter = 0

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self.nonces.items() if now - v.created >= self.nonce_ttl_s]:
            del self.nonces[key]
        self.failures = [t for t in self.failures if now - t < self.FAIL_WINDOW_S]

    def _fresh(self, now: float, stale: bool = False) -> AuthVerdict:
        if self.mode == "fw2":
            if len(self.failures) >= self.FAIL_LIMIT:
                return AuthVerdict(False, throttled="Too many failed authentication attempts")
            if now < self.throttle_until:
                return AuthVerdict(False, throttled="Too many requests")
            if len(self.nonces) >= self.SLOTS:
                self.throttle_until = now + self.THROTTLE_S
                return AuthVerdict(False, throttled="Too many requests")
            self._counter += 1
            nonce = base64.b64encode(os.urandom(10) + self._counter.to_bytes(4, "big")).decode()
        else:
            nonce = str(int(now) + self._counter)
            self._counter += 1
        self.nonces[nonce] = _Nonce(created=now)
        return AuthVerdict(False, challenge=Challenge(realm=self.realm, nonce=nonce, stale=stale))

    def _check(self, nonce: str, nc: int, expected: str, response: str, now: float) -> AuthVerdict:
        if response != expected:
            self.failures.append(now)
            return self._fresh(now)
        slot = self.nonces.get(nonce)
        if slot is None:
            if self.mode == "legacy" and nonce.isdigit():
                return AuthVerdict(True)
            return self._fresh(now, stale=True)
        if self.mode == "fw2":
            if nc != slot.last_nc + 1:
                self.failures.append(now)
                return self._fresh(now)
            slot.last_nc = nc
        return AuthVerdict(True)

    def verify_header(self, method: str, uri: str, header: str | None) -> AuthVerdict:
        """Check an ``Authorization: Digest …`` header (HA2 = METHOD:uri, nc 8 hex)."""
        now = self.clock.now()
        self._prune(now)
        if not header:
            return self._fresh(now)
        if len(self.failures) >= self.FAIL_LIMIT and self.mode == "fw2":
            return AuthVerdict(False, throttled="Too many failed authentication attempts")
        try:
            scheme, p = parse_auth_header(header)
            if scheme != "digest" or p.get("username") != "admin" or p.get("realm") != self.realm:
                raise ValueError
            if p.get("uri") != uri:
                raise ValueError
            nc = int(p["nc"], 16)
            expected = digest_response(
                self.ha1,
                p["nonce"],
                p["nc"],
                p["cnonce"],
                sha256_hex(f"{method}:{uri}"),
                p.get("qop", "auth"),
            )
            return self._check(p["nonce"], nc, expected, p["response"], now)
        except (KeyError, ValueError):
            self.failures.append(now)
            return self._fresh(now)

    def verify_json(self, auth: Mapping[str, Any] | None) -> AuthVerdict:
        """Check a JSON-RPC ``auth`` object (fixed dummy HA2, decimal nc)."""
        now = self.clock.now()
        self._prune(now)
        if not auth:
            return self._fresh(now)
        if len(self.failures) >= self.FAIL_LIMIT and self.mode == "fw2":
            return AuthVerdict(False, throttled="Too many failed authentication attempts")
        try:
            nonce = str(auth["nonce"])
            nc = int(auth.get("nc", 1))
            if auth.get("realm") != self.realm or auth.get("username", "admin") != "admin":
                raise ValueError
            expected = digest_response(self.ha1, nonce, str(nc), str(auth["cnonce"]), JSON_HA2)
            return self._check(nonce, nc, expected, str(auth["response"]), now)
        except (KeyError, ValueError, TypeError):
            self.failures.append(now)
            return self._fresh(now)


def _challenge_header(ch: Challenge) -> str:
    stale = ", stale=true" if ch.stale else ""
    return f'Digest qop="auth", realm="{ch.realm}", nonce="{ch.nonce}", algorithm=SHA-256{stale}'


def challenge_header(ch: Challenge) -> str:
    """The ``WWW-Authenticate`` value a Gen2+ device sends (observed parameter order)."""
    return _challenge_header(ch)


def challenge_message(ch: Challenge) -> str:
    """The 401 RPC error ``message``: a JSON *string* carrying the challenge."""
    import json

    nonce: Any = int(ch.nonce) if ch.nonce.isdigit() else ch.nonce
    data: dict[str, Any] = {"auth_type": "digest", "nonce": nonce, "nc": 1, "realm": ch.realm}
    data["algorithm"] = "SHA-256"
    if ch.stale:
        data["stale"] = True
    return json.dumps(data)


@dataclass
class _Timer:
    started: float
    duration: float

    @property
    def deadline(self) -> float:
        return self.started + self.duration


@dataclass
class SimDevice:
    """One plug's state and behaviour; every public method first advances physics to ``clock.now()``."""

    profile: PlugProfile
    clock: Clock
    load: LoadProfile = field(default_factory=lambda: LOAD_PROFILES["idle"])
    fixed_load_w: float | None = None
    relay_on: bool = False
    source: str = "init"
    charge_time_s: float = 0.0
    lifetime_wh: float = 0.0  # Gen2+ aenergy.total
    since_boot_wh: float = 0.0  # Gen1 total (as Wh; shown as watt-minutes)
    boot_time: float = 0.0
    boots: int = 1
    tripped_w: float | None = None
    missing_fields: bool = False
    timer: _Timer | None = None
    minutes: dict[int, float] = field(default_factory=dict)  # wall-clock minute index → Wh
    last: float = 0.0
    digest: DigestServer | None = None

    def __post_init__(self) -> None:
        now = self.clock.now()
        self.last = now
        self.boot_time = now
        self.relay_on = self.profile.initial_on or self.profile.metering_only
        if self.profile.password and self.profile.gen >= 2:
            self.digest = DigestServer(
                self.profile.device_id, self.profile.password, self.clock, self.profile.auth_mode
            )

    # ---- physics -------------------------------------------------------------------------------

    def _power_at(self, charge_t: float, *, left: bool = False) -> float:
        if not self.relay_on:
            return 0.0
        if self.fixed_load_w is not None:
            return self.fixed_load_w
        return self.load.power(charge_t, left=left)

    def _over_limit(self) -> bool:
        return (
            self.relay_on
            and not self.profile.metering_only
            and self._power_at(self.charge_time_s) > self.profile.power_limit_w
        )

    def advance(self) -> None:
        """Integrate energy and fire timers/trips from the last update up to ``clock.now()``."""
        now = self.clock.now()
        while self.last < now:
            # over-power protection acts on the power being drawn right now
            p0 = self._power_at(self.charge_time_s)
            if self._over_limit():
                self._trip(p0)
                continue
            end = now
            if self.timer is not None:
                end = min(end, self.timer.deadline)
            end = min(end, (math.floor(self.last / 60) + 1) * 60.0)
            if self.relay_on and self.fixed_load_w is None:
                for bp in self.load.breakpoints():
                    if bp > self.charge_time_s:
                        end = min(end, self.last + (bp - self.charge_time_s))
                        break
            dt = end - self.last
            if dt > 0:
                p1 = self._power_at(self.charge_time_s + dt, left=True)  # segments end at steps
                wh = (p0 + p1) / 2 * dt / 3600.0
                self.lifetime_wh += wh
                self.since_boot_wh += wh
                minute = math.floor(self.last / 60)
                self.minutes[minute] = self.minutes.get(minute, 0.0) + wh
                if self.relay_on:
                    self.charge_time_s += dt
            self.last = end
            if self.timer is not None and self.timer.deadline <= self.last:
                self.timer = None
                self.relay_on = not self.relay_on
                self.source = "timer"
        if self._over_limit():  # protection acts at once, also when no time has passed
            self._trip(self._power_at(self.charge_time_s))
        for key in [k for k in self.minutes if k < math.floor(now / 60) - 4]:
            del self.minutes[key]

    def _trip(self, power: float) -> None:
        self.relay_on = False
        self.tripped_w = power
        self.timer = None

    def power_w(self) -> float:
        self.advance()
        return self._power_at(self.charge_time_s)

    def uptime_s(self) -> int:
        return int(self.clock.now() - self.boot_time)

    def gen1_total_wmin(self) -> int:
        return math.floor(self.since_boot_wh * 60 + 1e-9)

    def truth(self) -> PlugTruth:
        """The plug's real state now."""
        self.advance()
        if self.profile.gen == 1:
            counter: float = self.gen1_total_wmin()
            mwh = round(counter * 1000 / 60)
        else:
            counter = round(self.lifetime_wh, 3)
            mwh = round(counter * 1000)
        remaining = None
        if self.timer is not None:
            remaining = self.timer.deadline - self.clock.now()
        return PlugTruth(
            relay_on=self.relay_on,
            power_w=self._power_at(self.charge_time_s),
            counter=counter,
            energy_mwh=mwh,
            lifetime_wh=self.lifetime_wh,
            timer_remaining_s=remaining,
            uptime_s=self.uptime_s(),
            tripped=self.tripped_w is not None,
            boots=self.boots,
        )

    # ---- control -------------------------------------------------------------------------------

    def set_load(self, watts: float | None = None, profile: str | None = None) -> None:
        """Attach a fixed load of ``watts`` or a named profile (restarting its charging time)."""
        self.advance()
        if profile is not None:
            if profile not in LOAD_PROFILES:
                raise ValueError(f"unknown load profile {profile!r} (ev, ebike, idle)")
            self.load = LOAD_PROFILES[profile]
            self.fixed_load_w = None
            self.charge_time_s = 0.0
        if watts is not None:
            self.fixed_load_w = float(watts)
        self.advance()

    def switch(self, on: bool, timer_s: float | None = None, source: str = "http") -> bool:
        """Switch the relay (arming a flip-back timer if asked); returns the previous state."""
        self.advance()
        was_on = self.relay_on
        self.relay_on = on
        self.source = source
        if on:
            self.tripped_w = None  # the protection error clears on the next successful "on"
        self.timer = _Timer(self.clock.now(), float(timer_s)) if timer_s else None
        self.advance()
        return was_on

    def reboot(self) -> None:
        """Power-cycle: uptime 0, Gen1 counters zeroed, relay to its initial state, timers gone."""
        self.advance()
        now = self.clock.now()
        self.boot_time = now
        self.boots += 1
        self.timer = None
        self.tripped_w = None
        self.relay_on = self.profile.initial_on or self.profile.metering_only
        self.source = "init"
        if self.profile.gen == 1:
            self.since_boot_wh = 0.0
            self.minutes.clear()

    def reset_counters(self) -> float:
        """Gen2 ``Switch.ResetCounters``: zero the lifetime counter, return the value before."""
        self.advance()
        before = round(self.lifetime_wh, 3)
        self.lifetime_wh = 0.0
        self.minutes.clear()
        return before

    # ---- payloads ------------------------------------------------------------------------------

    def _last_minutes(self, scale: float) -> tuple[list[float], int]:
        now = self.clock.now()
        m = math.floor(now / 60)
        values = [round(self.minutes.get(m - 1 - i, 0.0) * scale, 3) for i in range(3)]
        return values, m * 60

    def shelly_info(self) -> dict[str, Any]:
        """``GET /shelly`` exactly as the real device family answers it."""
        p = self.profile
        if p.gen == 1:
            info: dict[str, Any] = {
                "type": p.model,
                "mac": p.mac,
                "auth": p.password is not None,
                "fw": p.firmware,
                "discoverable": True,
                "num_outputs": 1,
                "num_meters": 1,
            }
            if p.name is not None:
                info["name"] = p.name
            return info
        return {
            "name": p.name,
            "id": p.device_id,
            "mac": p.mac,
            "slot": 0,
            "model": p.model,
            "gen": p.gen,
            "fw_id": p.firmware,
            "ver": p.ver,
            "app": p.app,
            "auth_en": p.password is not None,
            "auth_domain": p.device_id if p.password is not None else None,
        }

    def _temperature(self, power: float) -> float:
        return round(24.0 + power / 150.0, 1)

    def gen1_relay(self) -> dict[str, Any]:
        self.advance()
        now = self.clock.now()
        relay: dict[str, Any] = {
            "ison": self.relay_on,
            "has_timer": self.timer is not None,
            "timer_started": int(self.timer.started) if self.timer else 0,
            "timer_duration": int(self.timer.duration) if self.timer else 0,
            "timer_remaining": math.ceil(self.timer.deadline - now) if self.timer else 0,
            "overpower": self.tripped_w is not None,
            "source": self.source,
        }
        if self.missing_fields:  # very old firmware: {ison, has_timer, overpower} only
            relay = {k: relay[k] for k in ("ison", "has_timer", "overpower")}
        return relay

    def gen1_meter(self) -> dict[str, Any]:
        self.advance()
        counters, _ = self._last_minutes(60.0)
        now = int(self.clock.now())
        meter: dict[str, Any] = {
            "power": round(self._power_at(self.charge_time_s), 2),
            "overpower": round(self.tripped_w or 0.0, 2),  # float W here, bool in relays[]
            "is_valid": True,
            "timestamp": now + self.profile.tz_utc_offset_s,  # local time as epoch (quirk)
            "counters": counters,
            "total": self.gen1_total_wmin(),
        }
        if self.missing_fields:
            meter = {k: meter[k] for k in ("power", "is_valid", "total")}
        return meter

    def gen1_status(self) -> dict[str, Any]:
        self.advance()
        now = self.clock.now()
        local = time.gmtime(now + self.profile.tz_utc_offset_s)
        power = self._power_at(self.charge_time_s)
        temp = self._temperature(power)
        status: dict[str, Any] = {
            "wifi_sta": {"connected": True, "ssid": "chargectl-sim", "ip": "127.0.0.1", "rssi": -60},
            "cloud": {"enabled": False, "connected": False},
            "mqtt": {"connected": False},
            "time": f"{local.tm_hour:02d}:{local.tm_min:02d}",
            "unixtime": int(now),
            "serial": 1,
            "has_update": False,
            "mac": self.profile.mac,
            "cfg_changed_cnt": 0,
            "actions_stats": {"skipped": 0},
            "relays": [self.gen1_relay()],
            "meters": [self.gen1_meter()],
            "temperature": temp,
            "overtemperature": False,
            "tmp": {"tC": temp, "tF": round(temp * 9 / 5 + 32, 2), "is_valid": True},
            "update": {"status": "idle", "has_update": False},
            "ram_total": 52056,
            "ram_free": 40428,
            "fs_size": 233681,
            "fs_free": 166915,
            "uptime": self.uptime_s(),
        }
        if self.missing_fields:
            for key in ("temperature", "overtemperature", "tmp", "actions_stats", "cfg_changed_cnt"):
                del status[key]
        return status

    def gen1_settings(self) -> dict[str, Any]:
        self.advance()
        p = self.profile
        return {
            "device": {
                "type": p.model,
                "mac": p.mac,
                "hostname": p.device_id,
                "num_outputs": 1,
                "num_meters": 1,
            },
            "name": p.name,
            "fw": p.firmware,
            "login": {"enabled": p.password is not None, "unprotected": False, "username": p.user},
            "max_power": int(p.power_limit_w),
            "relays": [
                {
                    "name": None,
                    "appliance_type": "General",
                    "ison": self.relay_on,
                    "has_timer": self.timer is not None,
                    "default_state": "on" if p.initial_on else "off",
                    "auto_on": 0.0,
                    "auto_off": 0.0,
                    "max_power": int(p.power_limit_w),
                }
            ],
            "tz_utc_offset": p.tz_utc_offset_s,
            "unixtime": int(self.clock.now()),
        }

    def gen2_switch(self, channel: int = 0) -> dict[str, Any]:
        """``Switch.GetStatus`` (or ``PM1.GetStatus`` on a metering-only plug)."""
        self.advance()
        p = self.profile
        power = self._power_at(self.charge_time_s)
        voltage = 230.0
        by_minute, minute_ts = self._last_minutes(1000.0)
        out: dict[str, Any] = {"id": channel}
        if not p.metering_only:
            out["source"] = self.source
            out["output"] = self.relay_on
            if self.timer is not None:
                out["timer_started_at"] = round(self.timer.started, 2)
                out["timer_duration"] = self.timer.duration
        out["apower"] = round(power, 1)
        out["voltage"] = voltage
        if p.gen >= 3:
            out["freq"] = 50.0
        out["current"] = round(power / voltage, 3)
        out["aenergy"] = {"total": round(self.lifetime_wh, 3), "by_minute": by_minute, "minute_ts": minute_ts}
        if p.gen >= 3:
            out["ret_aenergy"] = {"total": 0.0, "by_minute": [0.0, 0.0, 0.0], "minute_ts": minute_ts}
        if not p.metering_only:
            temp = self._temperature(power)
            out["temperature"] = {"tC": temp, "tF": round(temp * 9 / 5 + 32, 1)}
        if self.tripped_w is not None:
            out["errors"] = ["overpower"]
        if self.missing_fields:
            out.pop("current", None)
            out.pop("freq", None)
            out.pop("ret_aenergy", None)
            if "temperature" in out:
                out["temperature"] = {"tC": None, "tF": None}
        return out

    def gen2_sys(self) -> dict[str, Any]:
        now = self.clock.now()
        local = time.gmtime(now + self.profile.tz_utc_offset_s)
        return {
            "mac": self.profile.mac,
            "restart_required": False,
            "time": f"{local.tm_hour:02d}:{local.tm_min:02d}",
            "unixtime": int(now),
            "last_sync_ts": int(self.boot_time),
            "uptime": self.uptime_s(),
            "ram_size": 260000,
            "ram_free": 150000,
            "fs_size": 458752,
            "fs_free": 135168,
            "cfg_rev": 10,
            "kvs_rev": 0,
            "schedule_rev": 0,
            "webhook_rev": 0,
            "available_updates": {},
            "reset_reason": 3 if self.boots > 1 else 1,
            "utc_offset": self.profile.tz_utc_offset_s,
        }

    def _channel(self, params: Mapping[str, Any]) -> int:
        if "id" not in params:
            raise RpcFailure(-103, "Argument 'id' is missing")
        cid = params["id"]
        if cid != 0 or isinstance(cid, bool):
            raise RpcFailure(-105, f"Argument 'id', value {cid} not found!")
        return 0

    def rpc(self, method: str, params: Mapping[str, Any], source: str = "HTTP_in") -> Any:
        """Run one Gen2+ RPC method; raises ``RpcFailure`` as the device would answer."""
        self.advance()
        p = self.profile
        comp = "pm1:0" if p.metering_only else "switch:0"
        if method == "Shelly.GetDeviceInfo":
            return self.shelly_info()
        if method == "Shelly.GetStatus":
            return {
                "ble": {},
                "cloud": {"connected": False},
                "mqtt": {"connected": False},
                comp: self.gen2_switch(),
                "sys": self.gen2_sys(),
                "wifi": {"sta_ip": "127.0.0.1", "status": "got ip", "ssid": "chargectl-sim", "rssi": -60},
                "ws": {"connected": False},
            }
        if method == "Sys.GetStatus":
            return self.gen2_sys()
        if method == "Shelly.Reboot":
            self.reboot()
            return None
        if method in ("Shelly.GetConfig", "Sys.GetConfig"):
            sys_cfg = {"device": {"name": p.name, "mac": p.mac, "fw_id": p.firmware}}
            if method == "Sys.GetConfig":
                return sys_cfg
            return {"sys": sys_cfg, comp: {"id": 0, "name": None, "power_limit": p.power_limit_w}}
        if method == "Shelly.ListMethods":
            return {"methods": sorted(self._methods())}
        if method not in self._methods():
            raise RpcFailure(404, f"No handler for {method}", status=404)
        if method == "PM1.GetStatus":
            self._channel(params)
            return self.gen2_switch()
        channel = self._channel(params)
        if method == "Switch.GetStatus":
            return self.gen2_switch(channel)
        if method == "Switch.GetConfig":
            return {
                "id": channel,
                "name": None,
                "initial_state": "on" if p.initial_on else "off",
                "auto_on": False,
                "auto_on_delay": 60.0,
                "auto_off": False,
                "auto_off_delay": 60.0,
                "power_limit": p.power_limit_w,
                "voltage_limit": 280,
                "current_limit": 16.0,
            }
        if method == "Switch.Set":
            on = params.get("on")
            if not isinstance(on, bool):
                raise RpcFailure(-103, "Argument 'on' is missing or not a boolean")
            after = params.get("toggle_after")
            if after is not None and (
                isinstance(after, bool) or not isinstance(after, int | float) or after <= 0
            ):
                raise RpcFailure(-103, "Argument 'toggle_after' must be a positive number")
            return {"was_on": self.switch(on, after, source=source)}
        if method == "Switch.Toggle":
            return {"was_on": self.switch(not self.relay_on, None, source=source)}
        if method == "Switch.ResetCounters":
            return {"aenergy": {"total": self.reset_counters()}}
        raise RpcFailure(404, f"No handler for {method}", status=404)

    def _methods(self) -> set[str]:
        base = {
            "Shelly.GetDeviceInfo",
            "Shelly.GetStatus",
            "Shelly.GetConfig",
            "Shelly.ListMethods",
            "Shelly.Reboot",
            "Sys.GetStatus",
            "Sys.GetConfig",
        }
        if self.profile.metering_only:
            return base | {"PM1.GetStatus"}
        return base | {
            "Switch.GetStatus",
            "Switch.GetConfig",
            "Switch.Set",
            "Switch.Toggle",
            "Switch.ResetCounters",
        }
