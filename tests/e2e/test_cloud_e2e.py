"""The distributed deployment end to end, every piece a real process or server:
simulator → `chargectl agent` → Pub/Sub emulator → `chargectl hub` → Firestore emulator (+ VictoriaMetrics,
drongo for Secret Manager). A ChargeRequest document written as the app would write it becomes a billed
session; bad messages are dead-lettered while the hub keeps serving; a SIGKILLed hub resumes and bills once
(the same deployment's second session, so one hub and agent start serves both)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import backends
import httpx
import pytest
from e2e_helpers import PRICE_PER_KWH, _kill, _spawn, expected_cost, wait_for

from chargectl.common import codec
from chargectl.common.keys import SigningKey
from chargectl.common.topics import DEAD_LETTER_TOPIC, TELEMETRY_TOPIC
from chargectl.services.adapters.firestore_store import FirestoreStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class Deployment:
    def __init__(
        self,
        tmp: Path,
        plug: dict[str, Any],
        pubsub: backends.Server,
        firestore: backends.Server,
        drongo: backends.Server,
        vm: backends.Server,
    ) -> None:
        self.tmp = tmp
        self.plug = plug
        self.project = f"e2e-{uuid.uuid4().hex[:8]}"
        self.site = f"e2e-{uuid.uuid4().hex[:6]}"
        self.vm = vm
        self.health_port = backends.free_port()
        self.env = {
            **os.environ,
            "PUBSUB_EMULATOR_HOST": pubsub.host,
            "FIRESTORE_EMULATOR_HOST": firestore.host,
        }
        self.cfg = tmp / "hub.toml"
        self.cfg.write_text(f"""
backend = "gcp"
project = "{self.project}"
state_dir = "{tmp / "hub-state"}"
config_dir = "{tmp / "config"}"

[secrets]
endpoint = "{drongo.url}"
transport = "rest"

[influx]
url = "{vm.url}"
batch_lines = 200
flush_interval_s = 0.2
retry_initial_s = 0.1

[hub]
tick_interval_s = 0.2
request_poll_s = 0.2
request_watch_poll_s = 5
checkpoint_interval_s = 5
plug_state_min_interval_s = 0
plug_state_settle_s = 0
health_port = {self.health_port}
default_plug_class = "generic"

[hub.plug_classes.generic]
start_confirm_s = 0.5
complete_after_s = 2.0
no_load_timeout_s = 60
stale_after_s = 5
offline_after_s = 10
relay_confirm_s = 5
relay_retry_s = 2
""")
        self.hub: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> Any:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "chargectl"), "--config", str(self.cfg), *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if "--json" in args else out.stdout

    def provision(self) -> Path:
        bundle = self.tmp / "bundle"
        self.cli(
            "provision",
            "site",
            "E2E car park",
            "--site-id",
            self.site,
            "--out",
            str(bundle),
            "--json",
            "--tariff",
            f"price_per_kwh_minor={PRICE_PER_KWH},min_start_balance_minor=100",
        )
        return bundle

    def start_hub(self, log: str = "hub.log") -> None:
        """Start the hub and wait until it serves /healthz, i.e. its telemetry subscription exists:
        a batch an agent publishes before that is not delivered to it (and a replay of it is new)."""
        self.hub = _spawn(["--config", str(self.cfg), "hub"], self.env, self.tmp / log)
        hub = self.hub

        def ready() -> bool:
            assert hub.poll() is None, f"the hub exited with {hub.returncode}"
            try:
                return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the hub's /healthz", ready, 120)

    def start_agent(self, bundle: Path) -> None:
        env = {
            **self.env,
            "CHARGECTL_STATE_DIR": str(self.tmp / "agent-state"),
            "CHARGECTL_AGENT__DISCOVERY": "false",
            "CHARGECTL_AGENT__PLUGS": f'[{{host = "{self.plug["host"]}", port = {self.plug["port"]}}}]',
            "CHARGECTL_AGENT__POLL_INTERVAL_S": "0.25",
            "CHARGECTL_AGENT__FLUSH_INTERVAL_S": "0.5",
            "CHARGECTL_AGENT__POLL_JITTER": "0.0",
        }
        self.agent = _spawn(["agent", "--config", str(bundle / "agent.toml")], env, self.tmp / "agent.log")

    def stop(self) -> None:
        for proc in (self.agent, self.hub):
            if proc is not None:
                _kill(proc)

    def plug_status(self) -> str:
        states = [p for p in self.cli("plugs", "--json") if p["plug_mac"] == self.plug["mac"]]
        return states[0]["status"] if states else ""

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5).text


@pytest.fixture
def deployment(
    tmp_path: Path,
    sim: dict[str, Any],
    pubsub_emulator: backends.Server,
    firestore_emulator: backends.Server,
    drongo_server: backends.Server,
    victoria_metrics: backends.Server,
) -> Any:
    d = Deployment(tmp_path, sim, pubsub_emulator, firestore_emulator, drongo_server, victoria_metrics)
    yield d
    d.stop()


def _store(d: Deployment) -> FirestoreStore:
    os.environ["FIRESTORE_EMULATOR_HOST"] = d.env["FIRESTORE_EMULATOR_HOST"]
    return FirestoreStore(d.project)


def _request(store: FirestoreStore, d: Deployment, rid: str, action: int) -> None:
    store.add_request(
        codec.ChargeRequest(
            request_id=rid,
            user_id="u1",
            plug_mac=d.plug["mac"],
            action=action,  # type: ignore[arg-type]
            status=codec.ChargeRequest.STATUS_PENDING,
            created_at_ms=int(time.time() * 1000),
        )
    )


def energy_mwh(control: httpx.Client) -> int:
    """What the plug's own meter has counted (the simulator's truth)."""
    return int(control.get("/state").json()["energy_mwh"])


def _vm_series(vm: backends.Server, name: str, mac: str) -> list[float]:
    httpx.get(vm.url + "/internal/force_flush", timeout=10)
    q = urllib.parse.urlencode({"match[]": f'{{__name__="{name}",mac="{mac}"}}'})
    rows = [
        json.loads(x) for x in httpx.get(f"{vm.url}/api/v1/export?{q}", timeout=10).text.splitlines() if x
    ]
    return [v for r in rows for v in r["values"]]


def test_request_document_to_billed_session_then_a_sigkilled_hub_resumes_and_bills_once(
    deployment: Deployment,
) -> None:
    """One deployment, two sessions of u1 on the plug. First: a ChargeRequest document becomes a
    completed ChargeSession with the plug's exact energy and cost, one debit, and VictoriaMetrics
    points matching the simulator. Then the hub is SIGKILLed mid-session; while it is down a stop
    request is written and the plug keeps charging; the restarted hub answers the request and bills
    the session once, for every mWh including those drawn while it was dead."""
    d = deployment
    bundle = d.provision()
    d.start_hub("hub1.log")
    d.start_agent(bundle)
    control = httpx.Client(base_url=f"http://{d.plug['host']}:{d.plug['port']}/__sim", timeout=5)
    store = _store(d)
    try:
        wait_for("the plug to be AVAILABLE", lambda: d.plug_status() == "AVAILABLE", 90)
        d.cli("ledger", "credit", "u1", "50.00", "--reason", "e2e", "--json")
        control.get("/load", params={"w": "2000"})
        before = control.get("/state").json()
        _request(store, d, "req-1", codec.ChargeRequest.ACTION_START)
        req = wait_for(
            "the request's answer", lambda: (r := store.get_request("req-1")) and r.status != 1 and r
        )
        assert req.status == codec.ChargeRequest.STATUS_ACCEPTED, req
        wait_for("the relay to close", lambda: control.get("/state").json()["relay_on"])
        wait_for("CHARGING", lambda: d.plug_status() == "CHARGING")
        wait_for("1 Wh charged", lambda: energy_mwh(control) - before["energy_mwh"] >= 1000)
        control.get("/load", params={"w": "0"})
        session = wait_for(
            "a completed ChargeSession document",
            lambda: (s := store.get_session(req.session_id)) and s.status == 2 and s,
            90,
        )
        after = control.get("/state").json()
        assert after["relay_on"] is False
        truth = after["energy_mwh"] - before["energy_mwh"]
        assert truth > 0 and session.energy_mwh == truth
        cost = expected_cost(truth)
        assert session.cost.amount_minor == cost and session.stop_reason == "EVDisconnected"
        debit = store.get_ledger_entry(req.session_id)
        assert debit is not None and debit.amount.amount_minor == -cost
        # the time series holds the plug's power and energy as the simulator produced them
        power = wait_for("power points", lambda: _vm_series(d.vm, "plug_power_w", d.plug["mac"]))
        assert max(power) == pytest.approx(2000.0, abs=1.0)
        energy = wait_for(
            "final energy point",
            lambda: [
                e
                for e in _vm_series(d.vm, "plug_energy_wh", d.plug["mac"])
                if abs(e - after["energy_mwh"] / 1000) < 1e-6
            ],
        )
        assert energy

        # The second session: the hub is SIGKILLed while it charges.
        wait_for("the plug to be AVAILABLE again", lambda: d.plug_status() == "AVAILABLE", 90)
        control.get("/load", params={"w": "1500"})
        before = control.get("/state").json()
        _request(store, d, "req-k", codec.ChargeRequest.ACTION_START)
        wait_for("CHARGING", lambda: d.plug_status() == "CHARGING")
        wait_for("0.5 Wh charged", lambda: energy_mwh(control) - before["energy_mwh"] >= 500)
        assert d.hub is not None
        _kill(d.hub, signal.SIGKILL)
        # while the hub is down: a stop request is written, and the plug keeps charging
        at_kill = energy_mwh(control)
        _request(store, d, "req-stop", codec.ChargeRequest.ACTION_STOP)
        wait_for("0.5 Wh charged with the hub dead", lambda: energy_mwh(control) - at_kill >= 500)
        d.start_hub("hub2.log")
        stop = wait_for(
            "the stop request's answer",
            lambda: (r := store.get_request("req-stop")) and r.status != 1 and r,
            90,
        )
        assert stop.status == codec.ChargeRequest.STATUS_ACCEPTED
        killed = wait_for(
            "the session to complete",
            lambda: (
                (r := store.get_request("req-k"))
                and (s := store.get_session(r.session_id))
                and s.status == 2
                and s
            ),
            90,
        )
        after = control.get("/state").json()
        assert after["relay_on"] is False
        assert killed.energy_mwh == after["energy_mwh"] - before["energy_mwh"]
        assert killed.stop_reason == "Local"
        debits = [e for e in store.ledger_entries("u1") if e.kind == codec.LedgerEntry.KIND_SESSION_DEBIT]
        assert sorted((e.entry_id, e.amount.amount_minor) for e in debits) == sorted(
            [(req.session_id, -cost), (killed.session_id, -killed.cost.amount_minor)]
        )
    finally:
        control.close()
        store.close()


def test_bad_messages_are_dead_lettered_and_duplicates_change_nothing(deployment: Deployment) -> None:
    from google.cloud import pubsub_v1

    d = deployment
    bundle = d.provision()
    os.environ["PUBSUB_EMULATOR_HOST"] = d.env["PUBSUB_EMULATOR_HOST"]
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    dead_sub = subscriber.subscription_path(d.project, "test-dead")
    subscriber.create_subscription(name=dead_sub, topic=publisher.topic_path(d.project, DEAD_LETTER_TOPIC))
    d.start_hub()
    d.start_agent(bundle)
    try:
        wait_for("the plug to be AVAILABLE", lambda: d.plug_status() == "AVAILABLE", 90)
        topic = publisher.topic_path(d.project, TELEMETRY_TOPIC)
        publisher.publish(
            topic, b"\x00garbage", schema=codec.SCHEMA_TELEMETRY, shard="0", site_id=d.site
        ).result(30)
        forged, attrs = codec.pack_telemetry(codec.Batch(d.site, 999_999, ()), SigningKey.generate())
        publisher.publish(topic, forged, **attrs, shard="0").result(30)
        other, attrs = codec.pack_telemetry(codec.Batch("other-site", 1, ()), SigningKey.generate())
        publisher.publish(topic, other, **attrs, shard="7").result(30)

        def dead() -> list[str]:
            resp = subscriber.pull(request={"subscription": dead_sub, "max_messages": 10}, timeout=10)
            if resp.received_messages:
                subscriber.acknowledge(
                    request={"subscription": dead_sub, "ack_ids": [m.ack_id for m in resp.received_messages]}
                )
            dead_reasons.extend(m.message.attributes["reason"] for m in resp.received_messages)
            return dead_reasons if len(dead_reasons) >= 2 else []

        dead_reasons: list[str] = []
        assert sorted(wait_for("two dead letters", dead)) == ["malformed", "unverified"]
        metrics = wait_for(
            "the skip to be counted",
            lambda: 'skipped_total{reason="other_shard"} 1' in d.metrics() and d.metrics(),
        )
        assert 'dead_lettered_total{reason="malformed"} 1' in metrics
        assert d.cli("hub", "check", "--json")["ok"] is True  # still serving
        # a replay of a batch the hub already processed (an agent's spool replay, a redelivery): the agent's
        # first batch was seq 1 under its instance epoch; the same site key, epoch and seq again must
        # change nothing
        from chargectl.common.keys import load_private_key
        from chargectl.common.readings import Reading

        key = load_private_key(bundle / "agent.key")
        epoch = int((d.tmp / "agent-state" / "epoch").read_text(), 16)
        replay = codec.Batch(
            d.site, 1, (Reading("A8032AB12345", int(time.time() * 1000), 5.0, 1, True),), epoch=epoch
        )
        data, attrs = codec.pack_telemetry(replay, key)
        publisher.publish(topic, data, **attrs, shard="0").result(30)
        # (the labelled counter exists at 0 from the first scrape: wait for it to move)
        wait_for(
            "the duplicate to be counted",
            lambda: re.search(r'skipped_total\{reason="duplicate"\} [1-9]', d.metrics()) is not None,
        )
        assert "A8032AB12345" not in [p["plug_mac"] for p in d.cli("plugs", "--json")]
    finally:
        publisher.transport.close()
        subscriber.close()
