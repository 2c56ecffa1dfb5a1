"""Shared test helpers: a signed telemetry message made from a bundle, as a site's agent would."""

from __future__ import annotations

import tomllib
from pathlib import Path

from chargectl.common.codec import Batch, pack_telemetry
from chargectl.common.keys import load_private_key
from chargectl.common.readings import Reading

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def telemetry_from_bundle(bundle: Path, seq: int = 1, ts_ms: int = T0_MS) -> bytes:
    """A telemetry message signed with the bundle's agent key, for the site its config names."""
    config = tomllib.loads((bundle / "agent.toml").read_text())
    key = load_private_key(bundle / config["agent"]["agent_key_file"])
    reading = Reading(mac="A8032AB12345", ts_ms=ts_ms, power_w=1234.5, energy_mwh=987_654, relay_on=True)
    batch = Batch(site_id=config["agent"]["site_id"], batch_seq=seq, readings=(reading,))
    data, attrs = pack_telemetry(batch, key)
    assert attrs["site_id"] == config["agent"]["site_id"]
    return data
