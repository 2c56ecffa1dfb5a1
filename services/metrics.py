"""The catalogue of every metric chargectl exports on ``/metrics`` (hub, ``run`` and agent alike).

Each family has its kind, its HELP text, its label names and the label values known in advance. The
:class:`~chargectl.services.hub.health.Metrics` registry declares all of them at start, so a labelled
counter reads 0 before its first event (a rate or an alert rule over it works from the first scrape)
and every family has HELP. Names here are without the ``chargectl_`` prefix; counters end in
``_total`` as exported. The Prometheus alert rules and the Grafana dashboard shipped under
``scripts/`` may name only families listed here (a test checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from chargectl.common.alerts import AlertKind
from chargectl.services.hub.ingest import IngestRefusal
from chargectl.services.hub.intake import ReadingRefusal
from chargectl.services.hub.machine import Status, StopReason
from chargectl.services.hub.registry import PlugRefusal

__all__ = ["CATALOGUE", "LATENCY_BUCKETS_S", "PREFIX", "MetricSpec", "exported_names", "spec_for"]

PREFIX = "chargectl_"

Kind = Literal["counter", "gauge", "histogram"]

# Command round trips (hub → agent → plug → hub) and request answers take from tens of milliseconds on
# one machine to tens of seconds over a slow site uplink.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)


@dataclass(frozen=True)
class MetricSpec:
    """One family. ``name`` is as exported minus the prefix (``_total`` included for counters)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    known: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S

    def __post_init__(self) -> None:
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name} must end in _total")
        if self.kind != "counter" and self.name.endswith("_total"):
            raise ValueError(f"{self.kind} {self.name} must not end in _total")
        unknown = set(self.known) - set(self.labels)
        if unknown:
            raise ValueError(f"{self.name}: known values for undeclared labels {sorted(unknown)}")


_SKIP_REASONS = (str(IngestRefusal.DUPLICATE), str(IngestRefusal.OTHER_SHARD))
_DEAD_LETTER_REASONS = tuple(str(r) for r in IngestRefusal if str(r) not in _SKIP_REASONS) + tuple(
    str(r) for r in PlugRefusal
)
_REFUSED_READING_REASONS = tuple(str(r) for r in ReadingRefusal) + tuple(str(r) for r in PlugRefusal)
_STATES = tuple(str(s) for s in Status)
_STOP_REASONS = tuple(str(r) for r in StopReason)
_ALERT_KINDS = tuple(str(k) for k in AlertKind)
# The plug machines' own alert kinds (``machine.Alert.kind``).
_MACHINE_ALERTS = (
    "unauthorized_draw",
    "fault",
    "out_of_credit",
    "offline",
    "stale",
    "counter_reset",
    "relay_changed",
    "command_failed",
    "session_provisional",
)
_SINKS = ("slack", "json")  # the webhook formats

CATALOGUE: tuple[MetricSpec, ...] = (
    # ---- hub: telemetry in
    MetricSpec("readings_total", "counter", "Readings fed to the plug machines"),
    MetricSpec("batches_total", "counter", "Telemetry batches accepted"),
    MetricSpec(
        "skipped_total",
        "counter",
        "Telemetry messages acked without effect, by reason",
        ("reason",),
        {"reason": _SKIP_REASONS},
    ),
    MetricSpec(
        "dead_lettered_total",
        "counter",
        "Telemetry messages sent to the dead-letter topic, by reason",
        ("reason",),
        {"reason": _DEAD_LETTER_REASONS},
    ),
    MetricSpec(
        "readings_refused_total",
        "counter",
        "Readings refused by the intake bounds or trust checks, by reason",
        ("reason",),
        {"reason": _REFUSED_READING_REASONS},
    ),
    # ---- hub: commands out
    MetricSpec("commands_sent_total", "counter", "Relay commands signed and handed to the bus"),
    MetricSpec(
        "commands_failed_total",
        "counter",
        "Relay commands not sent, by reason",
        ("reason",),
        {"reason": ("no_key", "publish")},
    ),
    MetricSpec(
        "command_results_total",
        "counter",
        "Command outcomes reported by agents, by reason",
        ("reason",),
    ),
    MetricSpec(
        "command_latency_seconds",
        "histogram",
        "Relay command round trip: signed by the hub until the agent's outcome arrives",
    ),
    # ---- hub: machines, sessions, requests
    MetricSpec(
        "transitions_total",
        "counter",
        "Plug state transitions, by new state",
        ("to",),
        {"to": _STATES},
    ),
    MetricSpec(
        "alerts_total",
        "counter",
        "Alerts raised by the plug machines, by kind",
        ("kind",),
        {"kind": _MACHINE_ALERTS},
    ),
    MetricSpec(
        "sessions_finished_total",
        "counter",
        "Sessions finished and billed, by stop reason",
        ("stop_reason",),
        {"stop_reason": _STOP_REASONS},
    ),
    MetricSpec(
        "requests_answered_total",
        "counter",
        "Start/stop requests answered, by outcome",
        ("outcome",),
        {"outcome": ("accepted", "rejected", "expired")},
    ),
    MetricSpec(
        "requests_rejected_total",
        "counter",
        "Start/stop requests rejected, by reason (expired, no_account, unknown_plug, …)",
        ("reason",),
    ),
    MetricSpec("leases_sent_total", "counter", "Site leases sent (one renews every live plug of a site)"),
    MetricSpec(
        "keepalives_covered_total",
        "counter",
        "Per-plug keep-alives not sent because a site lease renewed the plug less than half an interval ago",
    ),
    MetricSpec(
        "session_progress_writes_total",
        "counter",
        "Live session documents rewritten with their energy and running cost (every progress_interval_s)",
    ),
    MetricSpec(
        "topup_checks_total",
        "counter",
        "Auto top-up checks run after a session debit, by outcome (done, error)",
        ("outcome",),
        {"outcome": ("done", "error")},
    ),
    MetricSpec(
        "requests_ignored_total",
        "counter",
        "Start/stop requests left unanswered, by reason (other_shard: another hub's; rate_limited: a flood beyond its answer backlog)",
        ("reason",),
        {"reason": ("other_shard",)},
    ),
    MetricSpec(
        "sessions_needs_review_total",
        "counter",
        "Sessions billed only up to the physical bound and flagged needs_review",
    ),
    MetricSpec("finish_retries_total", "counter", "Session finishes retried after a store error"),
    MetricSpec(
        "plug_errors_total", "counter", "Exceptions while handling one plug's event (the plug is FAULTED)"
    ),
    MetricSpec(
        "loop_errors_total",
        "counter",
        "Failed passes of the hub's loops: expected (a backend error) or bug (an exception escaped)",
        ("loop", "kind"),
        {"loop": ("tick", "poll_requests", "watch_requests"), "kind": ("expected", "bug")},
    ),
    MetricSpec(
        "request_latency_seconds",
        "histogram",
        "Start/stop request: written by the user until the hub's answer",
    ),
    MetricSpec("plug_state_writes_total", "counter", "Plug state documents written to the store"),
    MetricSpec("checkpoints_total", "counter", "Hub checkpoints written"),
    MetricSpec(
        "checkpoint_age_seconds",
        "gauge",
        "Seconds since the hub last wrote its checkpoint (since start if it has not yet)",
    ),
    MetricSpec("plugs", "gauge", "Plugs by state", ("state",), {"state": _STATES}),
    MetricSpec("open_sessions", "gauge", "Sessions open now"),
    MetricSpec(
        "timeseries_dropped_points_total",
        "counter",
        "Time-series points dropped because the write buffer overflowed",
    ),
    MetricSpec("timeseries_pending_points", "gauge", "Time-series points waiting to be written"),
    # ---- alerts that reach a person
    MetricSpec(
        "alerts_open",
        "gauge",
        "Open alerts in the hub's alert book, by kind",
        ("kind",),
        {"kind": _ALERT_KINDS},
    ),
    MetricSpec(
        "alerts_raised_total",
        "counter",
        "Alerts raised into the alert book (new or repeated), by kind",
        ("kind",),
        {"kind": _ALERT_KINDS},
    ),
    MetricSpec(
        "alert_notifications_total",
        "counter",
        "Alert notifications by sink and outcome (sent, failed, deduplicated, rate_limited, dropped)",
        ("sink", "outcome"),
        {"sink": _SINKS, "outcome": ("sent", "failed", "deduplicated", "rate_limited", "dropped")},
    ),
    MetricSpec(
        "metrics_label_errors_total",
        "counter",
        "Metric updates refused because their labels did not match the family",
        ("family",),
    ),
    # ---- agent (served on [agent] health_port)
    MetricSpec("agent_up", "gauge", "1 while the agent serves", ("site",)),
    MetricSpec("agent_plugs_known", "gauge", "Plugs the agent knows", ("site",)),
    MetricSpec("agent_plugs_online", "gauge", "Plugs answering their polls", ("site",)),
    MetricSpec("agent_link_up", "gauge", "1 while the agent reaches the bus", ("site",)),
    MetricSpec(
        "agent_commands_subscribed", "gauge", "1 while the agent's command subscription runs", ("site",)
    ),
    MetricSpec("agent_batch_seq", "gauge", "Sequence number of the agent's latest batch", ("site",)),
    MetricSpec("agent_spooled_batches", "gauge", "Batches in the agent's on-disk spool", ("site",)),
    MetricSpec("agent_spooled_bytes", "gauge", "Bytes in the agent's on-disk spool", ("site",)),
    MetricSpec("agent_buffered_readings", "gauge", "Readings buffered for the next batch", ("site",)),
    MetricSpec(
        "agent_published_batches_total", "counter", "Batches published by this agent process", ("site",)
    ),
    MetricSpec(
        "agent_dropped_batches_total",
        "counter",
        "Batches dropped because the spool was full",
        ("site",),
    ),
    MetricSpec(
        "agent_dropped_readings_total",
        "counter",
        "Readings dropped because the spool was full",
        ("site",),
    ),
    MetricSpec(
        "agent_last_publish_timestamp_seconds",
        "gauge",
        "Unix time of the agent's last successful publish (0: none yet)",
        ("site",),
    ),
)

_BY_NAME: dict[str, MetricSpec] = {s.name: s for s in CATALOGUE}
# The facade's callers may name a counter without ``_total`` (``gauge_probe("timeseries_dropped_points")``).
_ALIASES: dict[str, str] = {s.name.removesuffix("_total"): s.name for s in CATALOGUE if s.kind == "counter"}


def spec_for(name: str) -> MetricSpec | None:
    """The catalogue entry for ``name`` (with or without a counter's ``_total``)."""
    return _BY_NAME.get(name) or _BY_NAME.get(_ALIASES.get(name, ""))


def exported_names() -> set[str]:
    """Every sample name the catalogue exports, prefixed (``_bucket``/``_sum``/``_count`` for histograms),
    plus the process metrics prometheus_client adds."""
    names: set[str] = set()
    for s in CATALOGUE:
        full = PREFIX + s.name
        if s.kind == "histogram":
            names.update({full + "_bucket", full + "_sum", full + "_count"})
        else:
            names.add(full)
    names.update(
        {
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "python_info",
            "python_gc_collections_total",
            "python_gc_objects_collected_total",
            "python_gc_objects_uncollectable_total",
        }
    )
    return names
