"""Foundation round trips against the real local servers: Pub/Sub emulator, VictoriaMetrics."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid

import backends
import pytest

from chargectl.common import codec
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading

pytestmark = pytest.mark.integration


def test_signed_telemetry_batch_through_the_pubsub_emulator(pubsub_env: backends.Server) -> None:
    from google.cloud import pubsub_v1

    project = "chargectl-test"
    topic_id = f"t-{uuid.uuid4().hex[:8]}"
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, topic_id)
    sub = subscriber.subscription_path(project, f"{topic_id}-sub")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)

    key = SigningKey.generate()
    ring = Keyring()
    ring.add_public(key.public_bytes, "site-a")
    batch = codec.Batch(
        "site-a",
        42,
        tuple(
            Reading(
                mac,
                1_767_225_600_000 + i * 5000,
                2301.5 - i,
                1_000_000 + i * 3200,
                True,
                239.9,
                9.6,
                41.2,
                0,
                300 + 5 * i,
            )
            for mac in ("AABBCCDDEEFF", "001122334455")
            for i in range(6)
        ),
    )
    data, attrs = codec.pack_telemetry(batch, key)
    publisher.publish(topic, data, **attrs).result(timeout=30)

    resp = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=30)
    assert len(resp.received_messages) == 1
    msg = resp.received_messages[0].message
    assert dict(msg.attributes) == attrs
    assert codec.unpack_telemetry(msg.data, ring) == batch
    subscriber.acknowledge(request={"subscription": sub, "ack_ids": [resp.received_messages[0].ack_id]})
    publisher.transport.close()
    subscriber.close()


def _export(server: backends.Server, match: str) -> list[dict[str, object]]:
    urllib.request.urlopen(server.url + "/internal/force_flush", timeout=10).close()
    query = urllib.parse.urlencode({"match[]": match})
    deadline = time.monotonic() + 30
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.url}/api/v1/export?{query}", timeout=10) as r:
            rows = [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
        if rows:
            return rows
        time.sleep(0.3)
    return rows


def test_line_protocol_to_victoriametrics_reads_back(victoria_metrics: backends.Server) -> None:
    from influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    measurement = f"plug_{uuid.uuid4().hex[:8]}"
    ts = 1_767_225_600_000
    lines = [
        f"{measurement},site_id=site-a,plug=AABBCCDDEEFF power_w={p},energy_wh={e} {ts + i * 5000}"
        for i, (p, e) in enumerate([(2300.5, 10.0), (2290.0, 13.2), (15.5, 13.3)])
    ]
    with InfluxDBClient(url=victoria_metrics.url, token="unused", org="chargectl") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="chargectl", record="\n".join(lines), write_precision="ms"
        )
    rows = _export(victoria_metrics, f'{{__name__=~"{measurement}_.*"}}')
    series = {str(r["metric"]["__name__"]): r for r in rows}  # type: ignore[index]
    power = series[f"{measurement}_power_w"]
    assert power["values"] == [2300.5, 2290.0, 15.5]
    assert power["timestamps"] == [ts, ts + 5000, ts + 10000]
    assert power["metric"]["site_id"] == "site-a"  # type: ignore[index]
    assert series[f"{measurement}_energy_wh"]["values"] == [10.0, 13.2, 13.3]
