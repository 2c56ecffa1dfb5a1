"""Alerts: conditions a person must hear about (a foreign plug, unauthorized draw, a fault, …).

Every component raises alerts into one :class:`AlertBook`: it keeps the open ones (one per kind and
subject, with when it was first and last raised and how often), so the operator console can list them
with their age, and passes each new or re-raised alert to its listeners — the sinks that reach a
person (webhooks, log). Sinks do their own de-duplication and rate limiting. Pure: time is an
argument, nothing here does I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

__all__ = ["Alert", "AlertBook", "AlertKind", "AlertListener", "Severity"]


class AlertKind(StrEnum):
    FOREIGN_PLUG = "foreign_plug"  # a site reported a plug bound to another site
    PLUG_LIMIT = "plug_limit"  # a site introduced or owns more plugs than allowed
    UNAUTHORIZED_DRAW = "unauthorized_draw"  # power drawn with no session
    PLUG_FAULTED = "plug_faulted"
    PLUG_OFFLINE = "plug_offline"
    SITE_SILENT = "site_silent"
    OUT_OF_CREDIT = "out_of_credit"
    NEEDS_REVIEW = "needs_review"  # a session whose energy was beyond the physical bound
    HUB_ERROR = "hub_error"  # an exception escaped a loop or a plug's handler
    BAD_READINGS = "bad_readings"  # readings refused by the intake bounds
    UNMATCHED_PAYMENT = "unmatched_payment"  # Stripe money with no account or in another currency
    PAYMENT_FAILED = "payment_failed"  # an auto top-up declined or needing authentication
    AGENT_DISK = "agent_disk"  # the agent cannot write its spool or journal
    IMPOSTOR = "impostor"  # a device answering with another plug's MAC
    PLUG_STALE = "plug_stale"  # no reading for a while: the session timers are frozen
    COUNTER_RESET = "counter_reset"  # a plug's energy counter went back (reboot); bridged
    RELAY_CHANGED = "relay_changed"  # the relay left the commanded position; command re-sent
    COMMAND_FAILED = "command_failed"  # a relay command failed at the plug; retrying
    SESSION_PROVISIONAL = "session_provisional"  # a session's plug went offline mid-session


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert. ``subject`` is what it is about (a plug MAC, a site id, a user id, a payment id)."""

    kind: AlertKind
    subject: str
    message: str
    severity: Severity = Severity.WARNING
    site_id: str = ""
    first_at_ms: int = 0
    last_at_ms: int = 0
    count: int = 1

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.kind), self.subject)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": str(self.kind),
            "subject": self.subject,
            "message": self.message,
            "severity": str(self.severity),
            "site_id": self.site_id,
            "first_at_ms": self.first_at_ms,
            "last_at_ms": self.last_at_ms,
            "count": self.count,
        }


AlertListener = Callable[[Alert], None]


class AlertBook:
    """The open alerts, one per ``(kind, subject)``, bounded to ``max_open`` (oldest dropped first).

    Thread-safe: the Firestore listener and the webhook server raise from their own threads.
    """

    def __init__(self, max_open: int = 10_000) -> None:
        self.max_open = max_open
        self._open: dict[tuple[str, str], Alert] = {}
        self._listeners: list[AlertListener] = []
        self._lock = threading.Lock()
        self.raised_total: dict[str, int] = {}

    def listen(self, listener: AlertListener) -> None:
        """Call ``listener(alert)`` for every alert raised from now on (a sink; it must not raise)."""
        self._listeners.append(listener)

    def raise_alert(
        self,
        kind: AlertKind,
        subject: str,
        message: str,
        now_ms: int,
        *,
        severity: Severity = Severity.WARNING,
        site_id: str = "",
    ) -> Alert:
        """Open (or refresh) the alert for ``(kind, subject)`` and tell the listeners."""
        with self._lock:
            key = (str(kind), subject)
            old = self._open.pop(key, None)
            if old is None:
                alert = Alert(kind, subject, message, severity, site_id, now_ms, now_ms, 1)
            else:
                alert = replace(
                    old, message=message, severity=severity, last_at_ms=now_ms, count=old.count + 1
                )
            self._open[key] = alert  # most recently raised last
            while len(self._open) > self.max_open:
                del self._open[next(iter(self._open))]
            self.raised_total[str(kind)] = self.raised_total.get(str(kind), 0) + 1
            listeners = list(self._listeners)
        for listener in listeners:
            listener(alert)
        return alert

    def resolve(self, kind: AlertKind, subject: str) -> bool:
        """Close the alert for ``(kind, subject)``; True if one was open."""
        with self._lock:
            return self._open.pop((str(kind), subject), None) is not None

    def open_alerts(self) -> list[Alert]:
        """The open alerts, most recently raised first."""
        with self._lock:
            return list(reversed(self._open.values()))
