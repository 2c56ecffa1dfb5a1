"""A synthetic, deterministic site fleet (idle and charging plugs) and the agent's flushes of it.

Also the two wire helpers every section shares: a batch packed as the agent publishes it, and
Pub/Sub's billed size of one message.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from chargectl.common import codec
from chargectl.common.keys import SigningKey
from chargectl.common.readings import Reading

from .core import (
    FLUSH_INTERVAL_S,
    MAX_BATCH_READINGS,
    OUIS,
    POLL_INTERVAL_S,
    PUBSUB_MESSAGE_ID_BYTES,
    PUBSUB_TIMESTAMP_BYTES,
    START_S,
)


@dataclass(slots=True)
class _SimPlug:
    mac: str
    charging: bool
    target_w: float
    energy_mwh: int
    temp_c: float
    uptime_s: int
    offset_ms: int


class Fleet:
    """One site's plugs polled every 5 s over a ~2 s sweep.

    Charging plugs draw 2.0–2.3 kW (EV on a granny charger) or 90–400 W (e-bike, scooter) with
    small noise; idle plugs report relay off and 0 W. Voltage follows a site random walk with a load
    drop; energy is the plug's lifetime counter (mWh); temperature follows load.
    """

    def __init__(
        self,
        site_id: str,
        n_plugs: int,
        rng: random.Random,
        charging_share: float,
        taken: set[str] | None = None,
    ) -> None:
        self.site_id = site_id
        taken = set() if taken is None else taken
        self.rng = rng
        self.volt = 231.0
        self.plugs: list[_SimPlug] = []
        for i in range(n_plugs):
            charging = rng.random() < charging_share
            target = rng.uniform(2000, 2300) if rng.random() < 0.6 else rng.uniform(90, 400)
            mac = f"{rng.choice(OUIS)}{rng.getrandbits(24):06X}"
            while mac in taken:  # MACs are identities: unique across the whole fleet
                mac = f"{rng.choice(OUIS)}{rng.getrandbits(24):06X}"
            taken.add(mac)
            self.plugs.append(
                _SimPlug(
                    mac=mac,
                    charging=charging,
                    target_w=target,
                    energy_mwh=rng.randint(10_000_000, 2_000_000_000),
                    temp_c=rng.uniform(25, 30),
                    uptime_s=rng.randint(3600, 90 * 86400),
                    offset_ms=(2000 * i) // max(n_plugs, 1),
                )
            )

    def poll(self, k: int, active: bool = True) -> list[Reading]:
        """The readings of poll ``k``; with ``active=False`` charging plugs are still idle (warm-up)."""
        rng = self.rng
        gauss = rng.gauss
        self.volt = min(240.0, max(222.0, self.volt + gauss(0, 0.3)))
        base_ms = round(START_S * 1000) + int(k * POLL_INTERVAL_S * 1000)
        out = []
        for p in self.plugs:
            on = p.charging and active
            power = round(max(0.0, p.target_w * (1 + gauss(0, 0.004))), 1) if on else 0.0
            volt = round(self.volt - (1.5 if on and power > 1000 else 0.0) + gauss(0, 0.2), 1)
            p.energy_mwh += round(power * POLL_INTERVAL_S / 3.6)
            p.temp_c += ((38.0 if on else 26.0) - p.temp_c) * 0.02 + gauss(0, 0.05)
            p.uptime_s += int(POLL_INTERVAL_S)
            out.append(
                Reading(
                    mac=p.mac,
                    ts_ms=base_ms + p.offset_ms + rng.randint(0, 40),
                    power_w=power,
                    energy_mwh=p.energy_mwh,
                    relay_on=on,
                    voltage_v=volt,
                    current_a=round(power / volt, 3),
                    temperature_c=round(p.temp_c, 1),
                    errors=0,
                    uptime_s=p.uptime_s,
                )
            )
        return out


def flushes(
    fleet: Fleet,
    polls: range,
    first_seq: int,
    active: Callable[[int], bool] = lambda k: True,
    flush_interval_s: float = FLUSH_INTERVAL_S,
    max_readings: int = MAX_BATCH_READINGS,
) -> Iterator[codec.Batch]:
    """The agent's batches for ``polls``: flushed every ``flush_interval_s`` or at ``max_readings``."""
    buf: list[Reading] = []
    seq = first_seq
    started = polls.start * POLL_INTERVAL_S

    def batch(rows: list[Reading], at_s: float) -> codec.Batch:
        nonlocal seq
        b = codec.Batch(
            fleet.site_id,
            seq,
            tuple(rows),
            created_at_ms=round((START_S + at_s) * 1000),
            agent_version="bench",
        )
        seq += 1
        return b

    for k in polls:
        now = (k + 1) * POLL_INTERVAL_S
        for r in fleet.poll(k, active(k)):
            buf.append(r)
            if len(buf) >= max_readings:
                yield batch(buf[:max_readings], now)
                buf = buf[max_readings:]
                started = now
        if buf and now - started >= flush_interval_s - 1e-9:
            yield batch(buf, now)
            buf = []
            started = now
    if buf:
        yield batch(buf, polls.stop * POLL_INTERVAL_S)


def billed_message_bytes(data: bytes, attributes: dict[str, str]) -> int:
    """Pub/Sub's billed size of one message: body + attributes + timestamp + message id."""
    attrs = sum(len(k) + len(v) for k, v in attributes.items())
    return len(data) + attrs + PUBSUB_TIMESTAMP_BYTES + PUBSUB_MESSAGE_ID_BYTES


def telemetry_attributes(batch: codec.Batch, key: SigningKey) -> tuple[bytes, dict[str, str]]:
    data, attrs = codec.pack_telemetry(batch, key)
    return data, {**attrs, "shard": "0"}


def reading_order(r: Reading) -> tuple[str, int]:
    return (r.mac, r.ts_ms)
