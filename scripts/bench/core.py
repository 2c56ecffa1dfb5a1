"""Settings the figures depend on (agent defaults, prices), the run plan and the report types."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from chargectl.services.agent.settings import AgentSettings

# The agent's defaults ([agent] poll_interval_s, flush_interval_s, max_batch_readings).
_AGENT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AgentSettings)}


POLL_INTERVAL_S = float(_AGENT_DEFAULTS["poll_interval_s"])


FLUSH_INTERVAL_S = float(_AGENT_DEFAULTS["flush_interval_s"])


MAX_BATCH_READINGS = int(_AGENT_DEFAULTS["max_batch_readings"])


SITE_PLUGS = 200  # plugs per site in the hub and cost sections


CHARGING_SHARE = 0.35  # share of plugs in a charging session in the open-loop fleet


START_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z


# Prices as researched for the project; re-check the live pricing pages before quoting them.
PUBSUB_USD_PER_TIB = 40.0  # publish and delivery each; https://cloud.google.com/pubsub/pricing


PUBSUB_FREE_BYTES = 10 * 2**30  # first 10 GiB per month


PUBSUB_MIN_REQUEST_BYTES = 1000  # "A minimum of 1000 bytes per publish, push or pull request"


PUBSUB_TIMESTAMP_BYTES = 20  # billed per message


PUBSUB_MESSAGE_ID_BYTES = 16  # assumption: the size of a message_id string


# Per document write/delete, US multi-region (nam5) and regional; https://cloud.google.com/firestore/pricing
FIRESTORE_WRITE_USD = {"us-multi": 0.18 / 100_000, "regional": 0.09 / 100_000}


FIRESTORE_DELETE_USD = {"us-multi": 0.02 / 100_000, "regional": 0.01 / 100_000}


FIRESTORE_FREE_PER_DAY = 20_000  # writes, and deletes, per day


FIRESTORE_CHUNK_BYTES = 900_000  # the Firestore store's checkpoint chunk size


MONTH_H = 30 * 24


READINGS_PER_PLUG_MONTH = int(MONTH_H * 3600 / POLL_INTERVAL_S)  # 518,400


# Espressif/Shelly OUIs for realistic (incompressible) MAC suffixes.
OUIS = ("E8DB84", "C45BBE", "3C6105", "A0A3B3")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; ``full()`` is the published run, ``quick()`` a subset under a minute."""

    wire_sites: tuple[int, ...] = (20, 200, 1000)
    wire_polls: int = 120  # 10 minutes of polling per site
    wire_decode_repeats: int = 5  # medians of the decode timings
    hub_plugs: tuple[int, ...] = (1_000, 10_000, 100_000)
    hub_cycles: int = 2  # timed flush cycles (after one warm-up cycle)
    hub_repeats: int = 3  # medians over repeats (sizes up to repeat_max_plugs)
    repeat_max_plugs: int = 10_000
    memory_plugs: tuple[int, ...] = (10_000, 100_000)
    agent_plugs: int = 200
    agent_polls: int = 3  # polls per plug for the bare-HTTP baseline
    agent_seconds: float = 20.0  # measured window of the running agent
    agent_poll_interval_s: float = POLL_INTERVAL_S
    latency_plugs: int = 20
    latency_rounds: int = 10
    latency_backends: tuple[str, ...] = ("embedded", "emulators")
    cost_plugs: int = 200
    cost_hours: float = 6.0
    cost_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    seed: int = 7

    @classmethod
    def full(cls) -> Plan:
        return cls()

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            wire_polls=24,
            wire_decode_repeats=3,
            hub_plugs=(1_000, 10_000),
            hub_cycles=1,
            hub_repeats=1,
            memory_plugs=(10_000,),
            agent_polls=2,
            agent_plugs=20,
            agent_seconds=2.0,
            agent_poll_interval_s=1.0,
            latency_plugs=10,
            latency_rounds=1,
            cost_plugs=60,
            cost_hours=2.0,
        )

    @classmethod
    def tiny(cls) -> Plan:
        """For the test: the same code on sizes that take a few seconds."""
        return cls(
            wire_sites=(5, 20),
            wire_polls=12,
            wire_decode_repeats=1,
            hub_plugs=(40, 200),
            hub_cycles=1,
            hub_repeats=1,
            memory_plugs=(200, 400),
            agent_plugs=4,
            agent_polls=1,
            agent_seconds=1.0,
            agent_poll_interval_s=0.5,
            latency_plugs=2,
            latency_rounds=1,
            latency_backends=("embedded",),
            cost_plugs=12,
            cost_hours=1.0,
        )


@dataclass
class Figure:
    """One line of the table: ``value`` against ``baseline``; ``gain`` > 1 means chargectl is better."""

    section: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    higher_is_better: bool = False

    @property
    def gain(self) -> float | None:
        if self.baseline is None or self.value == 0 or self.baseline == 0:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "gain": self.gain,
        }


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *figures: Figure) -> None:
        self.figures.extend(figures)
