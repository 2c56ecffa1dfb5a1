"""Provisioning on the embedded backends (SQLite store, 0600 key files): plan/apply, rerun, resume,
bundle, rotation with grace, revocation."""

from __future__ import annotations

import stat
import tarfile
import tomllib
from pathlib import Path

import pytest
from provision_helpers import T0_MS, telemetry_from_bundle

from chargectl.common.codec import Site, unpack_telemetry
from chargectl.common.errors import CodecError, ConfigError, ProvisioningError
from chargectl.common.keys import load_private_key, load_public_key
from chargectl.provisioner.bundle import BundleTarget
from chargectl.provisioner.plan import Step, apply
from chargectl.provisioner.site import Provisioner, SiteSpec, parse_tariff, site_id_from_name
from chargectl.provisioner.trust import command_signing_key, telemetry_keyring
from chargectl.services.adapters.secrets import KeyFileSecrets
from chargectl.services.adapters.sqlite_store import SqliteStore


class Crash(Exception):
    """Stands for the process dying between two steps."""


@pytest.fixture
def prov(tmp_path: Path) -> Provisioner:
    store = SqliteStore(tmp_path / "state" / "chargectl.db")
    yield Provisioner(store, KeyFileSecrets(tmp_path / "config"), None, "proj-x", "local")  # type: ignore[misc]
    store.close()


def _spec(shard: int | None = None) -> SiteSpec:
    return SiteSpec(
        site_id="riverside",
        name="Riverside",
        tariff=parse_tariff("price_per_kwh_minor=35", "riverside"),
        shard=shard,
    )


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("chargectl.db")
    }


def test_site_ids_and_tariffs_from_operator_input() -> None:
    assert site_id_from_name("  Riverside Car-Park #2 ") == "riverside-car-park-2"
    with pytest.raises(ConfigError, match="--site-id"):
        site_id_from_name("42")
    t = parse_tariff("price_per_kwh_minor=35, session_fee_minor=50,currency=EUR", "s-1")
    assert (t.tariff_id, t.currency, t.price_per_kwh_minor, t.session_fee_minor) == (
        "s-1-default",
        "eur",
        35,
        50,
    )
    with pytest.raises(ConfigError, match="unknown or malformed item 'price=3'"):
        parse_tariff("price=3", "s-1")
    with pytest.raises(ConfigError, match="whole number"):
        parse_tariff("price_per_kwh_minor=0.35", "s-1")


def test_ids_with_a_trailing_newline_are_not_valid() -> None:
    """A regex's "$" matches before a final newline: "site-a\n" and "AABBCCDDEEFF\n" passed as ids (and
    then named topics, secrets, plug-map keys and line-protocol tags with a newline in them)."""
    from chargectl.common.readings import MAC_RE
    from chargectl.common.topics import validate_site_id

    assert validate_site_id("site-a") == "site-a"
    for bad in ("site-a\n", "site-a\r", "\nsite-a"):
        with pytest.raises(ConfigError, match="invalid site id"):
            validate_site_id(bad)
    assert MAC_RE.match("AABBCCDDEEFF") and not MAC_RE.match("AABBCCDDEEFF\n")


def test_provision_creates_keys_document_and_bundle_and_rerun_changes_nothing(
    prov: Provisioner, tmp_path: Path
) -> None:
    bundle = BundleTarget(tmp_path / "bundle")
    plan = prov.plan_site(_spec(shard=3), T0_MS, bundle)
    assert [(s.kind, s.done) for s in plan.steps] == [
        ("secret", False),
        ("secret", False),
        ("site", False),
        ("bundle", False),
    ]
    apply(plan)

    site_dir = tmp_path / "config" / "sites" / "riverside"
    for name in ("agent.key", "command.key", "agent.key.v1", "command.key.v1"):
        assert stat.S_IMODE((site_dir / name).stat().st_mode) == 0o600
    agent = load_private_key(site_dir / "agent.key")
    command = load_private_key(site_dir / "command.key")

    site = prov.site("riverside")
    assert (site.name, site.shard, site.status) == ("Riverside", 3, Site.STATUS_ACTIVE)
    assert site.tariff.price_per_kwh_minor == 35
    assert [(k.key_id, bytes(k.public_key), k.not_before_ms, k.not_after_ms) for k in site.agent_keys] == [
        (agent.key_id, agent.public_bytes, T0_MS, 0)
    ]
    assert [k.key_id for k in site.command_keys] == [command.key_id]

    # the bundle: exactly the agent's files, its key 0600, the hub's *public* key only
    files = {p.name: p for p in bundle.path.iterdir()}
    assert set(files) == {"agent.toml", "agent.key", "command.pub", "chargectl-agent.service"}
    assert stat.S_IMODE(files["agent.key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.path.stat().st_mode) == 0o700
    assert load_private_key(files["agent.key"]).key_id == agent.key_id
    assert load_public_key(files["command.pub"]) == command.public_bytes
    everything = b"".join(p.read_bytes() for p in files.values())
    assert command.to_pem() not in everything
    config = tomllib.loads(files["agent.toml"].read_text())
    assert config == {
        "backend": "local",
        "project": "proj-x",
        "state_dir": "/var/lib/chargectl",
        "agent": {
            "site_id": "riverside",
            "shard": 3,
            "agent_key_file": "agent.key",
            "command_public_key_files": ["command.pub"],
            "poll_interval_s": 5.0,
            "flush_interval_s": 30.0,
            "discovery": True,
        },
    }
    unit = files["chargectl-agent.service"].read_text()
    assert "ExecStart=/opt/chargectl/bin/chargectl agent --config /etc/chargectl/agent.toml" in unit
    assert "Restart=on-failure" in unit

    # a hub trusting the store's sites accepts what the bundle signs
    ring = telemetry_keyring(prov.store.list_sites(), T0_MS)
    batch = unpack_telemetry(telemetry_from_bundle(bundle.path), ring, T0_MS)
    assert (batch.site_id, batch.readings[0].energy_mwh) == ("riverside", 987_654)

    before = _snapshot(tmp_path)
    doc_before = prov.site("riverside").SerializeToString()
    again = prov.plan_site(_spec(), T0_MS + 5000, bundle)
    assert again.pending == ()
    assert apply(again) == []
    assert _snapshot(tmp_path) == before
    assert prov.site("riverside").SerializeToString() == doc_before


@pytest.mark.parametrize("crash_after", [1, 2, 3])
def test_a_run_interrupted_after_any_step_completes_on_rerun(
    prov: Provisioner, tmp_path: Path, crash_after: int
) -> None:
    bundle = BundleTarget(tmp_path / "bundle.tar.gz", tarball=True)
    seen: list[Step] = []

    def die(step: Step) -> None:
        seen.append(step)
        if len(seen) == crash_after:
            raise Crash

    with pytest.raises(Crash):
        apply(prov.plan_site(_spec(), T0_MS, bundle), on_step=die)
    resumed = prov.plan_site(_spec(), T0_MS, bundle)
    assert [s.done for s in resumed.steps] == [True] * crash_after + [False] * (4 - crash_after)
    apply(resumed)
    assert prov.plan_site(_spec(), T0_MS, bundle).pending == ()

    # the finished site is coherent: one key version each, and the document holds exactly those keys
    secrets = KeyFileSecrets(tmp_path / "config")
    assert [v.version for v in secrets.versions("chargectl-riverside-agent-key")] == ["1"]
    site = prov.site("riverside")
    assert command_signing_key(secrets, site, T0_MS).key_id == site.command_keys[0].key_id
    with tarfile.open(bundle.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"agent.toml", "agent.key", "command.pub", "chargectl-agent.service"}
        assert members["agent.key"].mode == 0o600
        extracted = tmp_path / "extracted"
        tar.extractall(extracted, filter="data")
    assert stat.S_IMODE(bundle.path.stat().st_mode) == 0o600
    ring = telemetry_keyring(prov.store.list_sites(), T0_MS)
    assert unpack_telemetry(telemetry_from_bundle(extracted), ring, T0_MS).site_id == "riverside"


def test_rotation_keeps_the_old_bundle_working_for_the_grace_period_only(
    prov: Provisioner, tmp_path: Path
) -> None:
    old_bundle, new_bundle = tmp_path / "old", tmp_path / "new"
    apply(prov.plan_site(_spec(), T0_MS, BundleTarget(old_bundle)))
    old_command = prov.site("riverside").command_keys[0].key_id
    rotated_at, grace_ms = T0_MS + 3_600_000, 600_000
    apply(prov.plan_rotate("riverside", rotated_at, grace_ms, BundleTarget(new_bundle)))

    site = prov.site("riverside")
    assert [k.not_after_ms for k in site.agent_keys] == [rotated_at + grace_ms, 0]
    assert [k.not_before_ms for k in site.command_keys] == [T0_MS, rotated_at]
    old_msg = telemetry_from_bundle(old_bundle, seq=7)
    new_msg = telemetry_from_bundle(new_bundle, seq=8)

    during = rotated_at + grace_ms - 1
    ring = telemetry_keyring(prov.store.list_sites(), during)
    assert unpack_telemetry(old_msg, ring, during).batch_seq == 7
    assert unpack_telemetry(new_msg, ring, during).batch_seq == 8
    secrets = KeyFileSecrets(tmp_path / "config")
    # commands stay verifiable by the old bundle (it only knows the old public key) until the grace ends
    assert command_signing_key(secrets, site, during).key_id == old_command
    new_config = tomllib.loads((new_bundle / "agent.toml").read_text())
    assert len(new_config["agent"]["command_public_key_files"]) == 2
    trusted = {load_public_key(new_bundle / f) for f in new_config["agent"]["command_public_key_files"]}
    assert {bytes(k.public_key) for k in site.command_keys} == trusted

    after = rotated_at + grace_ms + 1
    ring = telemetry_keyring(prov.store.list_sites(), after)
    with pytest.raises(CodecError, match="unknown signing key"):
        unpack_telemetry(old_msg, ring, after)
    assert unpack_telemetry(new_msg, ring, after).batch_seq == 8
    assert command_signing_key(secrets, site, after).key_id == site.command_keys[1].key_id


def test_revoke_makes_hubs_reject_the_site_and_disables_its_keys(prov: Provisioner, tmp_path: Path) -> None:
    apply(prov.plan_site(_spec(), T0_MS, BundleTarget(tmp_path / "b")))
    msg = telemetry_from_bundle(tmp_path / "b")
    plan = prov.plan_revoke("riverside", T0_MS + 10)
    assert [(s.kind, s.done) for s in plan.pending] == [("site", False), ("secret", False), ("secret", False)]
    apply(plan)
    assert prov.plan_revoke("riverside", T0_MS + 20).pending == ()

    assert prov.site("riverside").status == Site.STATUS_REVOKED
    with pytest.raises(CodecError, match="unknown signing key"):
        unpack_telemetry(msg, telemetry_keyring(prov.store.list_sites(), T0_MS + 30), T0_MS + 30)
    site_dir = tmp_path / "config" / "sites" / "riverside"
    assert not (site_dir / "agent.key").exists() and not (site_dir / "command.key").exists()
    with pytest.raises(ProvisioningError, match="revoked"):
        prov.plan_site(_spec(), T0_MS + 40)
    with pytest.raises(ProvisioningError, match="revoked"):
        prov.plan_rotate("riverside", T0_MS + 40, 1000)


def test_conflicting_shard_is_refused(prov: Provisioner) -> None:
    apply(prov.plan_site(_spec(shard=1), T0_MS))
    with pytest.raises(ProvisioningError, match="already exists on shard 1, not 2"):
        prov.plan_site(_spec(shard=2), T0_MS)
    assert prov.site("riverside").shard == 1
    assert prov.plan_site(_spec(shard=None), T0_MS).pending == ()


def test_an_interrupted_rotation_reuses_its_new_keys_on_rerun(prov: Provisioner, tmp_path: Path) -> None:
    apply(prov.plan_site(_spec(), T0_MS))
    rotated_at = T0_MS + 1000
    seen: list[Step] = []

    def die(step: Step) -> None:
        seen.append(step)
        if len(seen) == 2:  # both new key versions stored, the document not updated yet
            raise Crash

    with pytest.raises(Crash):
        apply(prov.plan_rotate("riverside", rotated_at, 60_000), on_step=die)
    assert len(prov.site("riverside").agent_keys) == 1
    resumed = prov.plan_rotate("riverside", rotated_at, 60_000, BundleTarget(tmp_path / "b"))
    assert [(s.kind, s.done) for s in resumed.steps] == [
        ("secret", True),
        ("secret", True),
        ("site", False),
        ("secret", True),  # nothing expired to retire
        ("bundle", False),
    ]
    apply(resumed)
    secrets = KeyFileSecrets(tmp_path / "config")
    assert [v.version for v in secrets.versions("chargectl-riverside-agent-key")] == ["1", "2"]
    site = prov.site("riverside")
    newest = load_private_key(tmp_path / "config" / "sites" / "riverside" / "agent.key")
    assert [k.key_id for k in site.agent_keys][-1] == newest.key_id
    assert [k.not_after_ms for k in site.agent_keys] == [rotated_at + 60_000, 0]
    ring = telemetry_keyring(prov.store.list_sites(), rotated_at + 60_001)
    assert (
        unpack_telemetry(telemetry_from_bundle(tmp_path / "b"), ring, rotated_at + 60_001).site_id
        == "riverside"
    )


def test_a_second_rotation_drops_keys_that_already_expired(prov: Provisioner, tmp_path: Path) -> None:
    apply(prov.plan_site(_spec(), T0_MS))
    apply(prov.plan_rotate("riverside", T0_MS + 1000, 10_000))
    # the second rotation comes after the first grace ended: key 1 is gone, key 2 gets a new grace
    apply(prov.plan_rotate("riverside", T0_MS + 50_000, 5_000))
    site = prov.site("riverside")
    assert [(k.not_before_ms, k.not_after_ms) for k in site.agent_keys] == [
        (T0_MS + 1000, T0_MS + 55_000),
        (T0_MS + 50_000, 0),
    ]
    # the expired key's private versions are disabled; the two live ones stay readable
    secrets = KeyFileSecrets(tmp_path / "config")
    for name in ("chargectl-riverside-agent-key", "chargectl-riverside-command-key"):
        assert [(v.version, v.enabled) for v in secrets.versions(name)] == [
            ("1", False),
            ("2", True),
            ("3", True),
        ]
    assert prov.plan_rotate("riverside", T0_MS + 50_000, 5_000).steps[3].done
    # a key whose grace is shorter than the new one keeps its earlier expiry
    apply(prov.plan_rotate("riverside", T0_MS + 51_000, 600_000))
    assert [k.not_after_ms for k in prov.site("riverside").command_keys] == [
        T0_MS + 55_000,
        T0_MS + 651_000,
        0,
    ]
