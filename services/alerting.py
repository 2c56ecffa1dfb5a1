"""Alerts that reach a person: webhook sinks on the :class:`~chargectl.common.alerts.AlertBook`.

``[alerts]`` lists webhooks, each Slack-compatible (``{"text": …}``, what Slack, Mattermost,
Rocket.Chat and Google Chat incoming webhooks take) or generic JSON (the alert's fields). Every alert
raised into the book goes through one :class:`NotifyPolicy` (pure, time is an argument):

- de-duplication: the same ``(kind, subject)`` — a plug, a site, a user — is sent again only after
  ``dedup_window_s`` or when its severity rises;
- rate limits: at most ``max_per_kind`` notifications of one kind and ``max_per_subject`` about one
  subject per ``rate_window_s``; what is held back is counted and the next notification of that kind
  says how many were suppressed.

Delivery runs on one background thread with a bounded queue (the book's listeners are called from the
hub's loop and from SDK threads and must not block), retrying each webhook ``retries`` times. Webhook
URLs are secrets (a Slack URL is its own credential): logs name a sink by its ``name``, never its URL.

The hub's plug machines raise their alerts through :func:`raise_machine_alert`;
:func:`instrument_hub` exports the book as ``alerts_open`` / ``alerts_raised_total`` metrics.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from chargectl.common.alerts import Alert, AlertBook, AlertKind, Severity
from chargectl.common.config import Config
from chargectl.common.errors import ConfigError

__all__ = [
    "AlertNotifier",
    "AlertSettings",
    "Decision",
    "NotifyPolicy",
    "WebhookSettings",
    "attach_alert_sinks",
    "instrument_hub",
    "notification_payload",
    "raise_machine_alert",
    "resolve_on_state",
]

log = logging.getLogger("chargectl.alerts")

_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True)
class WebhookSettings:
    """One webhook: ``format = "slack"`` posts ``{"text": …}``, ``"json"`` posts the alert's fields."""

    url: str = field(repr=False)  # a secret: never in a repr, a log or an error
    format: Literal["slack", "json"] = "json"
    name: str = ""  # how logs and metrics name it (the URL is a secret)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("alerts.webhooks: url must start with http:// or https://")


@dataclass(frozen=True)
class AlertSettings:
    """``[alerts]``: where alerts go and how often."""

    webhooks: list[WebhookSettings] = field(default_factory=list)
    min_severity: Literal["info", "warning", "critical"] = "warning"
    dedup_window_s: float = 3600.0
    rate_window_s: float = 600.0
    max_per_kind: int = 20
    max_per_subject: int = 5
    timeout_s: float = 5.0
    retries: int = 3
    retry_backoff_s: float = 1.0
    queue_max: int = 1000

    def __post_init__(self) -> None:
        positive = {
            "dedup_window_s": self.dedup_window_s,
            "rate_window_s": self.rate_window_s,
            "max_per_kind": self.max_per_kind,
            "max_per_subject": self.max_per_subject,
            "timeout_s": self.timeout_s,
            "queue_max": self.queue_max,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"alerts.{key} must be positive, got {value}")
        if self.retries < 0 or self.retry_backoff_s < 0:
            raise ConfigError("alerts.retries and alerts.retry_backoff_s must be >= 0")


# ---------------------------------------------------------------------------------------- the policy


@dataclass(frozen=True, slots=True)
class Decision:
    send: bool
    why: str  # "sent" | "below_severity" | "deduplicated" | "rate_limited"
    suppressed: int = 0  # notifications of this kind held back since the last one sent


class NotifyPolicy:
    """De-duplication and rate limits; pure (``now_ms`` is an argument). Not thread-safe by itself."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self._last_sent: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (ms, severity rank)
        self._by_kind: dict[str, deque[int]] = {}
        self._by_subject: dict[str, deque[int]] = {}
        self._suppressed: dict[str, int] = {}

    def decide(self, alert: Alert, now_ms: int) -> Decision:
        s = self.settings
        rank = _SEVERITY_RANK[Severity(alert.severity)]
        if rank < _SEVERITY_RANK[Severity(s.min_severity)]:
            return Decision(False, "below_severity")
        key = alert.key
        last = self._last_sent.get(key)
        if last is not None and now_ms - last[0] < s.dedup_window_s * 1000 and rank <= last[1]:
            return Decision(False, "deduplicated")
        window_ms = s.rate_window_s * 1000
        kind_times = self._window(self._by_kind, str(alert.kind), now_ms, window_ms)
        subject_times = self._window(self._by_subject, alert.subject, now_ms, window_ms)
        if len(kind_times) >= s.max_per_kind or len(subject_times) >= s.max_per_subject:
            self._suppressed[str(alert.kind)] = self._suppressed.get(str(alert.kind), 0) + 1
            return Decision(False, "rate_limited")
        kind_times.append(now_ms)
        subject_times.append(now_ms)
        self._last_sent[key] = (now_ms, rank)
        if len(self._last_sent) > 50_000:
            del self._last_sent[next(iter(self._last_sent))]
        return Decision(True, "sent", self._suppressed.pop(str(alert.kind), 0))

    @staticmethod
    def _window(table: dict[str, deque[int]], key: str, now_ms: int, window_ms: float) -> deque[int]:
        times = table.setdefault(key, deque())
        while times and now_ms - times[0] >= window_ms:
            times.popleft()
        if not times and len(table) > 50_000:
            table.pop(next(iter(table)))
            times = table.setdefault(key, deque())
        return times


def notification_payload(alert: Alert, fmt: str, suppressed: int = 0) -> dict[str, Any]:
    """The JSON body a webhook of format ``fmt`` receives for ``alert``."""
    if fmt == "slack":
        where = f" at site {alert.site_id}" if alert.site_id else ""
        text = f"[{str(alert.severity).upper()}] {alert.kind}: {alert.subject}{where}: {alert.message}"
        if alert.count > 1:
            text += f" (raised {alert.count} times)"
        if suppressed:
            text += f" (+{suppressed} more {alert.kind} alerts held back by the rate limit)"
        # Slack reads <…> as a link or a mention (<!channel>) and &…; as an entity: what a plug, a site
        # or a payment put in an alert is shown as text, never as a ping or a disguised link.
        return {"text": text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}
    body: dict[str, Any] = {"source": "chargectl", "alert": alert.to_dict()}
    if suppressed:
        body["suppressed"] = suppressed
    return body


# ---------------------------------------------------------------------------------------- delivery

Counter = Callable[..., None]  # Metrics.inc


class AlertNotifier:
    """A listener for :meth:`AlertBook.listen` that posts to the configured webhooks on its own thread."""

    def __init__(
        self,
        settings: AlertSettings,
        *,
        inc: Counter | None = None,
        clock_ms: Callable[[], int] | None = None,
        post: Callable[[str, Mapping[str, Any], float], int] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = NotifyPolicy(settings)
        self._inc = inc or (lambda *a, **k: None)
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._post = post or _httpx_post
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Alert, int] | None] = queue.Queue(settings.queue_max)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-notifier", daemon=True)
        self._thread.start()

    def __call__(self, alert: Alert) -> None:
        """The book's listener: decide now, deliver later; never raises, never blocks."""
        try:
            with self._lock:
                decision = self.policy.decide(alert, self._clock_ms())
            if not decision.send:
                if decision.why != "below_severity":
                    for hook in self.settings.webhooks:
                        self._inc("alert_notifications_total", sink=hook.format, outcome=decision.why)
                return
            self._queue.put_nowait((alert, decision.suppressed))
        except queue.Full:
            for hook in self.settings.webhooks:
                self._inc("alert_notifications_total", sink=hook.format, outcome="dropped")
            log.error("alert queue full: %s %s not delivered", alert.kind, alert.subject)
        except Exception:
            log.exception("alert sink failed on %s %s", alert.kind, alert.subject)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                alert, suppressed = item
                for i, hook in enumerate(self.settings.webhooks):
                    self._deliver(hook, i, alert, suppressed)
            finally:
                self._queue.task_done()

    def _deliver(self, hook: WebhookSettings, index: int, alert: Alert, suppressed: int) -> None:
        name = hook.name or f"webhook-{index + 1}"
        body = notification_payload(alert, hook.format, suppressed)
        attempts = 1 + self.settings.retries
        problem = ""
        for attempt in range(attempts):
            try:
                status = self._post(hook.url, body, self.settings.timeout_s)
            except Exception as exc:  # network errors of any client: reported by type, not URL
                problem = type(exc).__name__
            else:
                if 200 <= status < 300:
                    self._inc("alert_notifications_total", sink=hook.format, outcome="sent")
                    return
                problem = f"HTTP {status}"
                if 400 <= status < 500 and status != 429:
                    break  # the hook refuses this body: retrying will not help
            if attempt + 1 < attempts and self._stopping.wait(self.settings.retry_backoff_s * (2**attempt)):
                break
        self._inc("alert_notifications_total", sink=hook.format, outcome="failed")
        log.error("alert %s %s not delivered to %s: %s", alert.kind, alert.subject, name, problem)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued notification was attempted; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), then stop the thread."""
        self.flush(timeout_s)
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=timeout_s)


def _httpx_post(url: str, body: Mapping[str, Any], timeout_s: float) -> int:
    import httpx

    return httpx.post(url, json=dict(body), timeout=timeout_s).status_code


def attach_alert_sinks(
    config: Config, book: AlertBook, inc: Counter | None = None, clock_ms: Callable[[], int] | None = None
) -> AlertNotifier | None:
    """Listen on ``book`` with the ``[alerts]`` webhooks (None when there are none)."""
    settings = config.section("alerts", AlertSettings)
    if not settings.webhooks:
        return None
    notifier = AlertNotifier(settings, inc=inc, clock_ms=clock_ms)
    book.listen(notifier)
    atexit.register(notifier.close)  # what is queued still goes out when the process ends
    names = ", ".join(h.name or f"webhook-{i + 1}" for i, h in enumerate(settings.webhooks))
    log.info("alerts go to %s", names)
    return notifier


# ---------------------------------------------------------------------------------------- the hub's hooks

# The plug machines' alert kinds (``machine.Alert.kind``) → the book's kind and severity.
_MACHINE_KINDS: dict[str, tuple[AlertKind, Severity]] = {
    "unauthorized_draw": (AlertKind.UNAUTHORIZED_DRAW, Severity.CRITICAL),
    "fault": (AlertKind.PLUG_FAULTED, Severity.CRITICAL),
    "out_of_credit": (AlertKind.OUT_OF_CREDIT, Severity.WARNING),
    "offline": (AlertKind.PLUG_OFFLINE, Severity.WARNING),
    "stale": (AlertKind.PLUG_STALE, Severity.INFO),
    "counter_reset": (AlertKind.COUNTER_RESET, Severity.INFO),
    "relay_changed": (AlertKind.RELAY_CHANGED, Severity.WARNING),
    "command_failed": (AlertKind.COMMAND_FAILED, Severity.INFO),
    "session_provisional": (AlertKind.SESSION_PROVISIONAL, Severity.WARNING),
}


def raise_machine_alert(
    book: AlertBook, kind: str, mac: str, message: str, now_ms: int, site_id: str = ""
) -> Alert:
    """Raise a plug machine's alert into the book (an unknown kind as ``hub_error``, named in the text)."""
    mapped = _MACHINE_KINDS.get(kind)
    if mapped is None:
        return book.raise_alert(AlertKind.HUB_ERROR, mac, f"{kind}: {message}", now_ms, site_id=site_id)
    book_kind, severity = mapped
    return book.raise_alert(book_kind, mac, message, now_ms, severity=severity, site_id=site_id)


def resolve_on_state(book: AlertBook, mac: str, new_state: str) -> None:
    """Close a plug's offline/stale/fault alerts once it is back in a healthy state."""
    if new_state in ("OFFLINE", "UNAVAILABLE"):
        return
    book.resolve(AlertKind.PLUG_OFFLINE, mac)
    book.resolve(AlertKind.PLUG_STALE, mac)
    if new_state != "FAULTED":
        book.resolve(AlertKind.PLUG_FAULTED, mac)


def instrument_hub(
    metrics: Any, book: AlertBook, monotonic: Callable[[], float], last_checkpoint: Callable[[], float]
) -> None:
    """Export the book (open alerts, alerts raised) and the checkpoint's age on the hub's ``metrics``."""
    started = monotonic()

    def open_by_kind() -> dict[tuple[tuple[str, str], ...], float]:
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for alert in book.open_alerts():
            key = (("kind", str(alert.kind)),)
            counts[key] = counts.get(key, 0.0) + 1
        return counts

    def raised_by_kind() -> dict[tuple[tuple[str, str], ...], float]:
        return {(("kind", kind),): float(n) for kind, n in dict(book.raised_total).items()}

    metrics.gauge_probe("alerts_open", open_by_kind)
    metrics.gauge_probe("alerts_raised_total", raised_by_kind)
    metrics.gauge_probe(
        "checkpoint_age_seconds", lambda: {(): max(0.0, monotonic() - max(last_checkpoint(), started))}
    )
