"""The hub's trust decisions come from Site documents: keyring windows, revocation, command signer."""

from __future__ import annotations

from pathlib import Path

import pytest
from provision_helpers import T0_MS

from chargectl.common.codec import Batch, PublicKey, Site, pack_telemetry, unpack_telemetry
from chargectl.common.errors import CodecError, ConfigError, ProvisioningError
from chargectl.common.keys import SigningKey
from chargectl.common.readings import Reading
from chargectl.provisioner.trust import (
    CommandSigner,
    command_keyring,
    command_signing_key,
    telemetry_keyring,
)
from chargectl.services.adapters.secrets import KeyFileSecrets, command_key_secret


def _pk(key: SigningKey, not_before_ms: int = 0, not_after_ms: int = 0) -> PublicKey:
    return PublicKey(
        key_id=key.key_id, public_key=key.public_bytes, not_before_ms=not_before_ms, not_after_ms=not_after_ms
    )


def _message(site_id: str, key: SigningKey) -> bytes:
    reading = Reading(mac="A8032AB12345", ts_ms=T0_MS, power_w=10.0, energy_mwh=1, relay_on=True)
    return pack_telemetry(Batch(site_id=site_id, batch_seq=1, readings=(reading,)), key)[0]


def test_keyring_accepts_active_sites_within_windows_and_nothing_from_revoked() -> None:
    a_old, a_new, b = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    grace_end = T0_MS + 60_000
    site_a = Site(site_id="site-a", status=Site.STATUS_ACTIVE)
    site_a.agent_keys.extend([_pk(a_old, T0_MS - 1000, grace_end), _pk(a_new, T0_MS)])
    site_b = Site(site_id="site-b", status=Site.STATUS_REVOKED)
    site_b.agent_keys.append(_pk(b, T0_MS - 1000))

    ring = telemetry_keyring([site_a, site_b], T0_MS)
    assert unpack_telemetry(_message("site-a", a_old), ring, T0_MS).site_id == "site-a"
    assert unpack_telemetry(_message("site-a", a_new), ring, T0_MS).site_id == "site-a"
    with pytest.raises(CodecError, match="unknown signing key"):
        unpack_telemetry(_message("site-b", b), ring, T0_MS)
    # a key of site A cannot vouch for site B's batches
    with pytest.raises(CodecError, match="signed by a key of site 'site-a'"):
        unpack_telemetry(_message("site-b", a_new), ring, T0_MS)

    # the old key's window is enforced at verification time and it is left out once expired
    with pytest.raises(CodecError, match="expired"):
        unpack_telemetry(_message("site-a", a_old), ring, grace_end + 1)
    later = telemetry_keyring([site_a, site_b], grace_end + 1)
    assert a_old.key_id not in later and a_new.key_id in later and len(later) == 1


def test_keyring_recomputes_key_ids_from_the_keys() -> None:
    real, other = SigningKey.generate(), SigningKey.generate()
    site = Site(site_id="site-a", status=Site.STATUS_ACTIVE)
    # a document claiming another key's id binds nothing to that id
    site.agent_keys.append(PublicKey(key_id=other.key_id, public_key=real.public_bytes))
    ring = telemetry_keyring([site], T0_MS)
    assert real.key_id in ring and other.key_id not in ring


def test_command_signer_is_the_oldest_valid_key_then_the_new_one(tmp_path: Path) -> None:
    secrets = KeyFileSecrets(tmp_path)
    name = command_key_secret("site-a")
    old, new = SigningKey.generate(), SigningKey.generate()
    secrets.add_version(name, old.to_pem())
    secrets.add_version(name, new.to_pem())
    grace_end = T0_MS + 60_000
    site = Site(site_id="site-a", status=Site.STATUS_ACTIVE)
    site.command_keys.extend([_pk(old, T0_MS - 5000, grace_end), _pk(new, T0_MS)])

    assert command_signing_key(secrets, site, T0_MS).key_id == old.key_id
    assert command_signing_key(secrets, site, grace_end + 1).key_id == new.key_id
    during, after = command_keyring(site, T0_MS), command_keyring(site, grace_end + 1)
    assert old.key_id in during and new.key_id in during and len(during) == 2
    assert new.key_id in after and len(after) == 1

    secrets.disable_all(name)
    with pytest.raises(ProvisioningError, match="no enabled secret version"):
        command_signing_key(secrets, site, T0_MS)
    site.status = Site.STATUS_REVOKED
    with pytest.raises(ProvisioningError, match="revoked"):
        command_signing_key(secrets, site, T0_MS)


class CountingSecrets(KeyFileSecrets):
    """Counts reads of private key material."""

    accesses = 0

    def access(self, name: str, version: str) -> bytes:
        self.accesses += 1
        return super().access(name, version)


def test_command_signer_reads_secrets_only_when_the_key_changes(tmp_path: Path) -> None:
    secrets = CountingSecrets(tmp_path)
    name = command_key_secret("site-a")
    old, new = SigningKey.generate(), SigningKey.generate()
    secrets.add_version(name, old.to_pem())
    secrets.add_version(name, new.to_pem())
    grace_end = T0_MS + 60_000
    site = Site(site_id="site-a", status=Site.STATUS_ACTIVE)
    site.command_keys.extend([_pk(old, T0_MS - 5000, grace_end), _pk(new, T0_MS)])
    signer = CommandSigner(secrets)

    assert [signer.key_for(site, T0_MS + i).key_id for i in range(5)] == [old.key_id] * 5
    reads = secrets.accesses
    assert reads == 2  # one listing-worth of versions, once
    assert signer.key_for(site, grace_end + 1).key_id == new.key_id
    assert signer.key_for(site, grace_end + 2).key_id == new.key_id
    assert secrets.accesses == reads + 2
    site.status = Site.STATUS_REVOKED
    with pytest.raises(ProvisioningError, match="revoked"):
        signer.key_for(site, grace_end + 3)


def test_key_files_keep_the_newest_enabled_version_current(tmp_path: Path) -> None:
    secrets = KeyFileSecrets(tmp_path)
    name = command_key_secret("site-a")
    assert [secrets.add_version(name, b"v1"), secrets.add_version(name, b"v2")] == ["1", "2"]
    current = secrets.path_for(name)
    assert current == tmp_path / "sites" / "site-a" / "command.key" and current.read_bytes() == b"v2"
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in current.parent.iterdir())
    assert current.parent.stat().st_mode & 0o777 == 0o700
    assert secrets.disable(name, "2") is True
    assert current.read_bytes() == b"v1"
    assert secrets.disable_all(name) == 1 and not current.exists()
    with pytest.raises(ConfigError, match="is not chargectl-<site>-agent-key"):
        secrets.versions("some-other-secret")
