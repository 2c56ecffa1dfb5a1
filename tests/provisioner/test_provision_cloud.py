"""Provisioning on the cloud backends: the Pub/Sub emulator, drongo (Secret Manager over REST) and the
Firestore emulator. Exactly the resources the issue lists; reruns change nothing; interrupted runs complete."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import backends
import pytest
from provision_helpers import T0_MS, Cloud, telemetry_from_bundle

from chargectl.common.codec import Site, unpack_telemetry
from chargectl.common.errors import CodecError, NotFoundError
from chargectl.common.keys import SigningKey
from chargectl.provisioner.bundle import BundleTarget
from chargectl.provisioner.plan import Step, apply
from chargectl.provisioner.site import SiteSpec, parse_tariff
from chargectl.provisioner.trust import command_signing_key, telemetry_keyring

pytestmark = pytest.mark.integration
_ids = itertools.count()


class Crash(Exception):
    pass


@pytest.fixture
def cloud_factory(
    pubsub_env: backends.Server, firestore_env: backends.Server, drongo_server: backends.Server
) -> Iterator[object]:
    made: list[Cloud] = []

    def make() -> Cloud:
        c = Cloud(f"prov-{os.getpid()}-{next(_ids)}", drongo_server)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


SPEC = SiteSpec(
    site_id="harbour", name="Harbour", tariff=parse_tariff("price_per_kwh_minor=40", "harbour"), shard=1
)
TOPICS = ["chargectl-commands-harbour", "chargectl-telemetry", "chargectl-telemetry-dead"]
SUBS = ["chargectl-commands-harbour-agent"]
SECRETS = ["chargectl-harbour-agent-key", "chargectl-harbour-command-key"]


def test_secret_manager_adapter_versions_access_and_disable(
    cloud_factory: object, drongo_server: backends.Server
) -> None:
    c = cloud_factory()  # type: ignore[operator]
    name = "chargectl-harbour-agent-key"
    assert c.secrets.versions(name) == []
    assert [c.secrets.add_version(name, b"one"), c.secrets.add_version(name, b"two")] == ["1", "2"]
    assert (c.secrets.access(name, "1"), c.secrets.access(name, "2")) == (b"one", b"two")
    assert c.secrets.disable(name, "1") is True and c.secrets.disable(name, "1") is False
    assert [v.enabled for v in c.secrets.versions(name)] == [False, True]
    with pytest.raises(NotFoundError):
        c.secrets.access(name, "1")
    assert c.secrets.access(name, "2") == b"two"
    assert c.secrets.disable_all(name) == 1
    assert [v.enabled for v in c.secrets.versions(name)] == [False, False]
    with pytest.raises(NotFoundError):
        c.secrets.access(name, "2")
    with pytest.raises(NotFoundError):
        c.secrets.access("chargectl-nowhere-agent-key", "1")


def test_provision_creates_exactly_the_resources_and_rerun_changes_nothing(
    cloud_factory: object, tmp_path: Path
) -> None:
    c = cloud_factory()  # type: ignore[operator]
    c.bus.create_topic("chargectl-telemetry")  # an existing shared topic is reused, not an error
    bundle = BundleTarget(tmp_path / "bundle")
    plan = c.prov.plan_site(SPEC, T0_MS, bundle)
    assert [(s.kind, s.target, s.done) for s in plan.steps] == [
        ("topic", "chargectl-telemetry", True),
        ("topic", "chargectl-telemetry-dead", False),
        ("topic", "chargectl-commands-harbour", False),
        ("subscription", "chargectl-commands-harbour-agent", False),
        ("secret", "chargectl-harbour-agent-key", False),
        ("secret", "chargectl-harbour-command-key", False),
        ("site", "harbour", False),
        ("bundle", str(bundle.path), False),
    ]
    assert len(apply(plan)) == 7

    assert c.bus.list_topics() == TOPICS
    assert c.bus.list_subscriptions() == SUBS
    sub = c.bus.get_subscription(SUBS[0])
    assert sub is not None and sub.topic == "chargectl-commands-harbour"
    assert c.secret_names() == SECRETS
    site = c.prov.site("harbour")
    assert (site.command_topic, site.command_subscription, site.shard) == (TOPICS[0], SUBS[0], 1)
    agent = SigningKey.from_pem(c.secrets.access(SECRETS[0], "1"))
    assert [k.key_id for k in site.agent_keys] == [agent.key_id]
    assert [s.site_id for s in c.store.list_sites()] == ["harbour"]

    ring = telemetry_keyring(c.store.list_sites(), T0_MS)
    assert unpack_telemetry(telemetry_from_bundle(bundle.path), ring, T0_MS).site_id == "harbour"

    doc = site.SerializeToString()
    again = c.prov.plan_site(SPEC, T0_MS + 1000, bundle)
    assert again.pending == ()
    apply(again)
    assert c.bus.list_topics() == TOPICS and c.bus.list_subscriptions() == SUBS
    assert [v.version for v in c.secrets.versions(SECRETS[0])] == ["1"]
    assert [v.version for v in c.secrets.versions(SECRETS[1])] == ["1"]
    assert c.prov.site("harbour").SerializeToString() == doc


def test_interrupted_after_each_step_completes_on_rerun(cloud_factory: object, tmp_path: Path) -> None:
    for crash_after in range(1, 8):
        c = cloud_factory()  # type: ignore[operator]
        bundle = BundleTarget(tmp_path / f"bundle-{crash_after}")
        seen: list[Step] = []

        def die(step: Step, seen: list[Step] = seen, n: int = crash_after) -> None:
            seen.append(step)
            if len(seen) == n:
                raise Crash

        with pytest.raises(Crash):
            apply(c.prov.plan_site(SPEC, T0_MS, bundle), on_step=die)
        resumed = c.prov.plan_site(SPEC, T0_MS, bundle)
        assert [s.done for s in resumed.steps] == [True] * crash_after + [False] * (8 - crash_after)
        apply(resumed)
        assert c.prov.plan_site(SPEC, T0_MS, bundle).pending == ()
        assert c.bus.list_topics() == TOPICS and c.bus.list_subscriptions() == SUBS
        assert c.secret_names() == SECRETS
        assert [v.version for v in c.secrets.versions(SECRETS[1])] == ["1"]
        site = c.prov.site("harbour")
        assert command_signing_key(c.secrets, site, T0_MS).key_id == site.command_keys[0].key_id
        ring = telemetry_keyring(c.store.list_sites(), T0_MS)
        assert unpack_telemetry(telemetry_from_bundle(bundle.path), ring, T0_MS).site_id == "harbour"


def test_rotate_then_revoke_on_cloud_backends(cloud_factory: object, tmp_path: Path) -> None:
    c = cloud_factory()  # type: ignore[operator]
    apply(c.prov.plan_site(SPEC, T0_MS, BundleTarget(tmp_path / "old")))
    rotated_at, grace = T0_MS + 60_000, 30_000
    apply(c.prov.plan_rotate("harbour", rotated_at, grace, BundleTarget(tmp_path / "new")))
    assert [v.version for v in c.secrets.versions(SECRETS[0])] == ["1", "2"]
    old_msg, new_msg = telemetry_from_bundle(tmp_path / "old"), telemetry_from_bundle(tmp_path / "new")
    during, after = rotated_at + grace, rotated_at + grace + 1
    ring = telemetry_keyring(c.store.list_sites(), during)
    assert unpack_telemetry(old_msg, ring, during).site_id == "harbour"
    ring = telemetry_keyring(c.store.list_sites(), after)
    with pytest.raises(CodecError):
        unpack_telemetry(old_msg, ring, after)
    assert unpack_telemetry(new_msg, ring, after).site_id == "harbour"

    apply(c.prov.plan_revoke("harbour", after))
    assert c.bus.list_subscriptions() == []
    assert c.bus.list_topics() == TOPICS
    for name in SECRETS:
        assert [v.enabled for v in c.secrets.versions(name)] == [False, False]
    assert c.prov.site("harbour").status == Site.STATUS_REVOKED
    with pytest.raises(CodecError, match="unknown signing key"):
        unpack_telemetry(new_msg, telemetry_keyring(c.store.list_sites(), after), after)
    assert c.prov.plan_revoke("harbour", after + 1).pending == ()
