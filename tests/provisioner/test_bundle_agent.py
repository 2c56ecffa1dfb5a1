"""A provisioned bundle runs a real ``chargectl agent`` process against a simulated plug: its telemetry
is accepted by a hub's keyring built from the Site documents, commands the hub signs are executed;
after ``rotate-keys`` the old bundle still works during the grace period only; after ``revoke`` the
hub rejects it. Pub/Sub, Firestore and drongo are the real local servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import backends
import pytest
from provision_helpers import Cloud

from chargectl.common.codec import (
    SCHEMA_TELEMETRY,
    Batch,
    Command,
    CommandOutcome,
    open_envelope,
    pack_command,
    unpack_telemetry,
)
from chargectl.common.errors import CodecError
from chargectl.common.topics import TELEMETRY_TOPIC, command_topic
from chargectl.provisioner.bundle import BundleTarget
from chargectl.provisioner.plan import apply
from chargectl.provisioner.site import SiteSpec, parse_tariff
from chargectl.provisioner.trust import command_signing_key, telemetry_keyring
from chargectl.shelly.sim import SimFleet

pytestmark = pytest.mark.integration

CHARGECTL = str(Path(sys.executable).parent / "chargectl")
SITE = "depot"
TAP = "hub-tap"
WAIT_S = 60.0  # an upper bound for a message to arrive, not an expectation


def _now_ms() -> int:
    return int(time.time() * 1000)


class Hub:
    """The hub's side as the test needs it: pull the telemetry topic, verify, publish commands."""

    def __init__(self, cloud: Cloud) -> None:
        from google.cloud import pubsub_v1

        self.cloud = cloud
        self.subscriber = pubsub_v1.SubscriberClient()
        self.publisher = pubsub_v1.PublisherClient()
        self.sub_path = self.subscriber.subscription_path(cloud.project, TAP)
        self.pending: list[tuple[dict[str, str], bytes]] = []

    def pull(self, schema: str) -> bytes:
        """The next message with ``schema`` on the telemetry topic (others are kept for later)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for i, (attrs, data) in enumerate(self.pending):
                if attrs.get("schema") == schema:
                    del self.pending[i]
                    return data
            resp = self.subscriber.pull(
                request={"subscription": self.sub_path, "max_messages": 50}, timeout=10
            )
            if resp.received_messages:
                self.subscriber.acknowledge(
                    request={
                        "subscription": self.sub_path,
                        "ack_ids": [m.ack_id for m in resp.received_messages],
                    }
                )
            self.pending += [
                (dict(m.message.attributes), bytes(m.message.data)) for m in resp.received_messages
            ]
        raise AssertionError(f"no {schema} message within {WAIT_S} s")

    def telemetry(self, now_ms: int) -> Batch:
        return unpack_telemetry(
            self.pull(SCHEMA_TELEMETRY), telemetry_keyring(self.cloud.store.list_sites(), now_ms), now_ms
        )

    def command(self, mac: str, command_id: str, on: bool) -> CommandOutcome:
        now = _now_ms()
        site = self.cloud.prov.site(SITE)
        cmd = Command(command_id, SITE, mac, on, now, now + 60_000, auto_off_s=120 if on else 0)
        data, attrs = pack_command(cmd, command_signing_key(self.cloud.secrets, site, now))
        topic = self.publisher.topic_path(self.cloud.project, command_topic(SITE))
        self.publisher.publish(topic, data, **attrs).result(timeout=30)
        while True:  # results ride in the telemetry batches (a batch per flush, or sooner with a result)
            for outcome in self.telemetry(now).results:
                if outcome.command_id == command_id:
                    return outcome

    def close(self) -> None:
        self.subscriber.close()
        self.publisher.transport.close()


@contextlib.contextmanager
def agent_process(bundle: Path, plug_port: int, state: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``chargectl agent`` on the bundle's config; only the Pi-specific parts come from the environment:
    where its state lives, the plug's address (no mDNS here) and short intervals for a test."""
    env = {
        **os.environ,
        "CHARGECTL_STATE_DIR": str(state),
        "CHARGECTL_AGENT__DISCOVERY": "false",
        "CHARGECTL_AGENT__PLUGS": f'[{{host = "127.0.0.1", port = {plug_port}}}]',
        "CHARGECTL_AGENT__POLL_INTERVAL_S": "0.5",
        "CHARGECTL_AGENT__FLUSH_INTERVAL_S": "1",
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [CHARGECTL, "-v", "agent", "--config", str(bundle / "agent.toml")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    backends.STARTED_GROUPS.append(proc.pid)
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue


async def test_bundle_runs_a_real_agent_through_rotation_and_revocation(
    pubsub_env: backends.Server,
    firestore_env: backends.Server,
    drongo_server: backends.Server,
    tmp_path: Path,
) -> None:
    cloud = Cloud(f"prov-agent-{os.getpid()}", drongo_server)
    spec = SiteSpec(site_id=SITE, name="Depot", tariff=parse_tariff("", SITE), shard=0)
    apply(cloud.prov.plan_site(spec, _now_ms(), BundleTarget(tmp_path / "bundle")))
    cloud.bus.create_subscription(TAP, TELEMETRY_TOPIC)
    hub = Hub(cloud)
    fleet = SimFleet.build(1, gen="2", profile="idle")
    await fleet.start()
    plug = fleet.plugs[0]
    try:
        with agent_process(
            tmp_path / "bundle", plug.port, tmp_path / "state", tmp_path / "agent.log"
        ) as proc:
            try:
                batch = await asyncio.to_thread(hub.telemetry, _now_ms())
                assert batch.site_id == SITE and {r.mac for r in batch.readings} == {plug.mac}

                outcome = await asyncio.to_thread(hub.command, plug.mac, "cmd-1", True)
                assert (outcome.ok, outcome.reason, outcome.relay_on) == (True, "executed", True)
                assert plug.truth().relay_on

                rotated_at, grace_ms = _now_ms(), 3_600_000
                apply(cloud.prov.plan_rotate(SITE, rotated_at, grace_ms, BundleTarget(tmp_path / "new")))
                # the old agent (old bundle, old key) keeps publishing; within the grace period the hub accepts it ...
                old = await asyncio.to_thread(hub.pull, SCHEMA_TELEMETRY)
                during = rotated_at + grace_ms - 1
                ring = telemetry_keyring(cloud.store.list_sites(), during)
                assert unpack_telemetry(old, ring, during).site_id == SITE
                # ... and the hub still signs commands with the key the old bundle trusts
                outcome = await asyncio.to_thread(hub.command, plug.mac, "cmd-2", False)
                assert (outcome.ok, outcome.reason) == (True, "executed") and not plug.truth().relay_on
                # after the grace period the same message is rejected
                after = rotated_at + grace_ms + 1
                with pytest.raises(CodecError):
                    unpack_telemetry(old, telemetry_keyring(cloud.store.list_sites(), after), after)

                # the new bundle (two command keys) runs an agent whose telemetry outlives the grace period
                new_key = cloud.prov.agent_key(SITE).key_id
                with agent_process(tmp_path / "new", plug.port, tmp_path / "state2", tmp_path / "agent.log"):
                    ring = telemetry_keyring(cloud.store.list_sites(), after)
                    for _ in range(50):
                        data = await asyncio.to_thread(hub.pull, SCHEMA_TELEMETRY)
                        try:
                            signer = open_envelope(data, ring, SCHEMA_TELEMETRY, after).key_id
                        except CodecError:
                            continue  # the old agent's, rejected after the grace period
                        if signer == new_key:
                            break
                    else:
                        raise AssertionError("no telemetry signed with the new agent key")
                    assert unpack_telemetry(data, ring, after).site_id == SITE

                apply(cloud.prov.plan_revoke(SITE, _now_ms()))
                late = await asyncio.to_thread(hub.pull, SCHEMA_TELEMETRY)
                now = _now_ms()
                with pytest.raises(CodecError, match="unknown signing key"):
                    unpack_telemetry(late, telemetry_keyring(cloud.store.list_sites(), now), now)
                assert proc.poll() is None, "the agent should survive its subscription being deleted"
            except BaseException:
                sys.stderr.write((tmp_path / "agent.log").read_text(errors="replace")[-6000:])
                raise
    finally:
        await fleet.stop()
        hub.close()
        cloud.close()
