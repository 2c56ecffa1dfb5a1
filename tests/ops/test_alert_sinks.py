"""Alerts reach a person: the policy (pure), webhook delivery over real HTTP, and the hub's plug alerts
going from the machine to a webhook while the relay is switched off and nobody is billed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hub_rig import HubRig
from webhook_receiver import webhook_receiver

from chargectl.common.alerts import Alert, AlertBook, AlertKind, Severity
from chargectl.common.config import Config, build
from chargectl.common.errors import ConfigError
from chargectl.services.alerting import (
    AlertNotifier,
    AlertSettings,
    NotifyPolicy,
    attach_alert_sinks,
    notification_payload,
)
from chargectl.services.hub.health import Metrics
from chargectl.services.payments.ledger import Ledger

MAC_A = "AABBCCDDEE01"
MAC_B = "AABBCCDDEE02"


def _alert(kind: AlertKind, subject: str, severity: Severity = Severity.WARNING) -> Alert:
    return Alert(kind, subject, f"{kind} on {subject}", severity)


def test_policy_dedups_per_kind_and_plug_and_rate_limits() -> None:
    policy = NotifyPolicy(
        AlertSettings(dedup_window_s=60, rate_window_s=100, max_per_kind=2, max_per_subject=10)
    )
    draw_a = _alert(AlertKind.UNAUTHORIZED_DRAW, MAC_A)
    assert policy.decide(draw_a, 0).send
    # A plug flapping every second: one notification per dedup window, not one per reading.
    assert [policy.decide(draw_a, t * 1000).why for t in range(1, 6)] == ["deduplicated"] * 5
    # The same kind on another plug is news…
    assert policy.decide(_alert(AlertKind.UNAUTHORIZED_DRAW, MAC_B), 6_000).send
    # …but a third plug within the window exceeds the kind's rate limit and is counted.
    assert policy.decide(_alert(AlertKind.UNAUTHORIZED_DRAW, "C"), 7_000).why == "rate_limited"
    assert policy.decide(_alert(AlertKind.UNAUTHORIZED_DRAW, "D"), 8_000).why == "rate_limited"
    # Other kinds are not held back by it.
    assert policy.decide(_alert(AlertKind.PLUG_FAULTED, MAC_A), 8_000).send
    # Once the window has passed, the next one goes out and says how many were held back.
    later = policy.decide(_alert(AlertKind.UNAUTHORIZED_DRAW, "E"), 101_000)
    assert later.send and later.suppressed == 2
    # The kind's window still holds the one sent at 6 s until 106 s.
    assert policy.decide(_alert(AlertKind.UNAUTHORIZED_DRAW, "F"), 102_000).why == "rate_limited"
    # After the dedup window (and the rate window) the same plug is reported again.
    assert policy.decide(draw_a, 200_000).send


def test_policy_severity_rise_breaks_through_dedup() -> None:
    policy = NotifyPolicy(AlertSettings(dedup_window_s=3600))
    assert policy.decide(_alert(AlertKind.PLUG_OFFLINE, MAC_A), 0).send
    assert policy.decide(_alert(AlertKind.PLUG_OFFLINE, MAC_A, Severity.CRITICAL), 1000).send
    assert policy.decide(_alert(AlertKind.PLUG_OFFLINE, MAC_A, Severity.CRITICAL), 2000).why == "deduplicated"
    assert policy.decide(_alert(AlertKind.PLUG_OFFLINE, MAC_A), 3000).why == "deduplicated"


def test_policy_limits_one_noisy_plug_across_kinds() -> None:
    policy = NotifyPolicy(AlertSettings(rate_window_s=600, max_per_kind=100, max_per_subject=2))
    kinds = [AlertKind.PLUG_OFFLINE, AlertKind.PLUG_FAULTED, AlertKind.RELAY_CHANGED]
    assert [policy.decide(_alert(k, MAC_A), i).why for i, k in enumerate(kinds)] == [
        "sent",
        "sent",
        "rate_limited",
    ]


def test_policy_ignores_below_min_severity() -> None:
    policy = NotifyPolicy(AlertSettings(min_severity="critical"))
    assert policy.decide(_alert(AlertKind.PLUG_OFFLINE, MAC_A), 0).why == "below_severity"
    assert policy.decide(_alert(AlertKind.PLUG_FAULTED, MAC_A, Severity.CRITICAL), 0).send


def test_alert_settings_refuse_bad_values_without_echoing_the_url() -> None:
    with pytest.raises(ConfigError, match="max_per_kind"):
        build(AlertSettings, {"max_per_kind": 0}, prefix="alerts")
    with pytest.raises(ConfigError) as err:
        build(AlertSettings, {"webhooks": [{"url": "ftp://secret-token@x"}]}, prefix="alerts")
    assert "secret-token" not in str(err.value)
    with pytest.raises(ConfigError, match="format"):
        build(AlertSettings, {"webhooks": [{"url": "http://x", "format": "teams"}]}, prefix="alerts")


def test_payload_formats() -> None:
    alert = Alert(AlertKind.PLUG_FAULTED, MAC_A, "relay stuck", Severity.CRITICAL, "site-a", 1, 2, 3)
    slack = notification_payload(alert, "slack", suppressed=4)
    assert slack == {
        "text": f"[CRITICAL] plug_faulted: {MAC_A} at site site-a: relay stuck (raised 3 times)"
        " (+4 more plug_faulted alerts held back by the rate limit)"
    }
    generic = notification_payload(alert, "json")
    assert generic == {"source": "chargectl", "alert": alert.to_dict()}
    # Text a hostile plug, site or payer got into an alert never pings the channel or hides a link.
    hostile = Alert(
        AlertKind.UNMATCHED_PAYMENT,
        "<!channel>",
        "pay at <https://evil.example|your bank> & co",
        Severity.WARNING,
    )
    assert notification_payload(hostile, "slack")["text"] == (
        "[WARNING] unmatched_payment: &lt;!channel&gt;: pay at &lt;https://evil.example|your bank&gt; &amp; co"
    )


def test_webhooks_receive_alerts_over_http_deduplicated() -> None:
    metrics = Metrics(process_metrics=False)
    with webhook_receiver() as hook:
        settings = build(
            AlertSettings,
            {
                "webhooks": [
                    {"url": hook.url + "/slack", "format": "slack", "name": "ops-slack"},
                    {"url": hook.url + "/json", "format": "json"},
                ],
                "dedup_window_s": 3600,
            },
            prefix="alerts",
        )
        book = AlertBook()
        notifier = AlertNotifier(settings, inc=metrics.inc, clock_ms=lambda: 1000)
        book.listen(notifier)
        try:
            for _ in range(5):  # the same plug drawing on every reading
                book.raise_alert(AlertKind.UNAUTHORIZED_DRAW, MAC_A, "relay on / 900 W", 1000)
            book.raise_alert(AlertKind.OUT_OF_CREDIT, MAC_B, "balance reached", 1000, site_id="s1")
            assert notifier.flush(30)
            hook.wait_for(lambda bodies: len(bodies) == 4)
        finally:
            notifier.close()
    by_path = sorted(zip(hook.paths, [str(b) for b in hook.bodies], strict=True))
    assert [p for p, _ in by_path] == ["/json", "/json", "/slack", "/slack"]
    kinds = sorted(b["alert"]["kind"] for b in hook.bodies if "alert" in b)
    assert kinds == ["out_of_credit", "unauthorized_draw"]
    assert any(MAC_A in b.get("text", "") for b in hook.bodies)
    assert metrics.value("alert_notifications_total", sink="slack", outcome="sent") == 2
    assert metrics.value("alert_notifications_total", sink="slack", outcome="deduplicated") == 4
    assert book.open_alerts()[1].count == 5  # the book still counts every raise


def test_failing_webhook_is_retried_then_counted_and_its_url_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(process_metrics=False)
    caplog.set_level(logging.INFO, logger="chargectl.alerts")
    with webhook_receiver() as hook:
        hook.statuses = [500, 503]  # two failures, then accepted
        secret_url = hook.url + "/services/T000/B000/sekrit-token"
        settings = AlertSettings(webhooks=[build_hook(secret_url, "slack")], retries=3, retry_backoff_s=0.01)
        notifier = AlertNotifier(settings, inc=metrics.inc)
        try:
            notifier(_alert(AlertKind.PLUG_FAULTED, MAC_A, Severity.CRITICAL))
            assert notifier.flush(30)
            hook.wait_for(lambda bodies: len(bodies) == 1)
            assert metrics.value("alert_notifications_total", sink="slack", outcome="sent") == 1
            # A hook that refuses outright (404) is not hammered: one try, counted as failed.
            hook.statuses = [404]
            notifier(_alert(AlertKind.PLUG_FAULTED, MAC_B, Severity.CRITICAL))
            assert notifier.flush(30)
        finally:
            notifier.close()
    assert metrics.value("alert_notifications_total", sink="slack", outcome="failed") == 1
    assert len(hook.bodies) == 1
    assert "sekrit-token" not in caplog.text and "webhook-1" in caplog.text


def test_unreachable_webhook_does_not_block_the_caller() -> None:
    settings = AlertSettings(
        webhooks=[build_hook("http://127.0.0.1:9/nothing-listens", "json")],
        retries=1,
        retry_backoff_s=0.01,
        timeout_s=1,
        queue_max=2,
    )
    metrics = Metrics(process_metrics=False)
    notifier = AlertNotifier(settings, inc=metrics.inc)
    try:
        # Far more alerts than the queue holds, from the caller's thread: none raises or waits.
        for i in range(50):
            notifier(_alert(AlertKind.PLUG_FAULTED, f"plug-{i}", Severity.CRITICAL))
    finally:
        notifier.close(timeout_s=30)
    sent = metrics.value("alert_notifications_total", sink="json", outcome="sent")
    failed = metrics.value("alert_notifications_total", sink="json", outcome="failed")
    limited = metrics.value("alert_notifications_total", sink="json", outcome="rate_limited")
    dropped = metrics.value("alert_notifications_total", sink="json", outcome="dropped")
    assert sent == 0 and failed >= 1
    assert failed + limited + dropped == 50  # every alert accounted for


def build_hook(url: str, fmt: str) -> object:
    from chargectl.services.alerting import WebhookSettings

    return WebhookSettings(url, fmt)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the hub: machine alerts → webhook


async def test_hub_unauthorized_draw_reaches_the_webhook_relay_off_nobody_billed(tmp_path: Path) -> None:
    rig = await HubRig.create(tmp_path)
    hub, clock = rig.hub, rig.clock
    Ledger(rig.store).post("evt_topup", "u1", "topup", 1000, "gbp", now_ms=1)
    with webhook_receiver() as hook:
        config = Config(
            state_dir=tmp_path, sections={"alerts": {"webhooks": [{"url": hook.url, "format": "json"}]}}
        )
        notifier = attach_alert_sinks(config, hub.alerts, hub.metrics.inc, lambda: int(clock.now() * 1000))
        assert notifier is not None
        try:
            await hub.start()
            # Someone pressed the plug's button: relay on, 2 kW, no session.
            assert await rig.send_readings(MAC_A, 2000.0, relay_on=True, count=3)
            await rig.wait_commands(1)
            assert notifier.flush(30)
            hook.wait_for(lambda b: any(x["alert"]["kind"] == "unauthorized_draw" for x in b))
        finally:
            await rig.close()
            notifier.close()
    body = next(b for b in hook.bodies if b["alert"]["kind"] == "unauthorized_draw")
    assert body["alert"]["subject"] == MAC_A and body["alert"]["site_id"] == rig.site
    assert body["alert"]["severity"] == "critical"
    # The relay was ordered off, nobody was billed, no session was opened.
    assert rig.commands[0].plug_mac == MAC_A and rig.commands[0].on is False
    assert Ledger(rig.store).balance("u1") == 1000
    assert rig.store.list_sessions() == []
    assert hub.metrics.value("alerts_open", kind="unauthorized_draw") == 1
    assert hub.metrics.value("alerts_raised_total", kind="unauthorized_draw") >= 1
    rig.store.close()


def test_no_webhooks_means_no_sink(tmp_path: Path) -> None:
    assert attach_alert_sinks(Config(state_dir=tmp_path), AlertBook()) is None
