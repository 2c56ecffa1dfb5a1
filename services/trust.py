"""Which keys to trust, from the ``Site`` documents: the hub's telemetry keyring and command signer.

The provisioner writes the keys (``chargectl provision``); the hub and the all-in-one process read them
through these helpers, so nothing under ``services/`` depends on the provisioner.

During a rotation's grace period a site has two keys of each kind. The hub accepts telemetry signed
by either, and signs commands with the *oldest* command key still valid, which both the old bundle
(that only knows the old public key) and the new one (that knows both) accept; once the old key
expires it signs with the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from chargectl.common.codec import PublicKey, Site
from chargectl.common.errors import ChargectlError, ProvisioningError
from chargectl.common.keys import Keyring, SigningKey, TrustedKey, key_id_for
from chargectl.services.adapters.secrets import Secrets, command_key_secret, enabled_versions

__all__ = [
    "CommandSigner",
    "TelemetryKeys",
    "command_keyring",
    "command_signing_key",
    "key_valid_at",
    "telemetry_keyring",
    "valid_keys",
]


def key_valid_at(key: PublicKey, now_ms: int) -> bool:
    """True if ``now_ms`` lies inside the key's window (0 bounds are open)."""
    if key.not_before_ms and now_ms < key.not_before_ms:
        return False
    return not (key.not_after_ms and now_ms > key.not_after_ms)


def valid_keys(keys: Sequence[PublicKey], now_ms: int) -> list[PublicKey]:
    """The keys valid at ``now_ms``, oldest first (as they are stored)."""
    return [k for k in keys if key_valid_at(k, now_ms)]


def _trusted(site: Site, key: PublicKey) -> TrustedKey:
    public = bytes(key.public_key)
    # The id is recomputed from the key itself, so a document cannot bind a key to another key's id.
    return TrustedKey(key_id_for(public), public, site.site_id, key.not_before_ms, key.not_after_ms)


def telemetry_keyring(sites: Iterable[Site], now_ms: int) -> Keyring:
    """Every ACTIVE site's agent keys not yet expired at ``now_ms`` (with their windows); nothing
    from REVOKED sites. Verify with ``now_ms`` so a key's window keeps being enforced."""
    ring = Keyring()
    for site in sites:
        if site.status != Site.STATUS_ACTIVE:
            continue
        for key in site.agent_keys:
            if key.not_after_ms and now_ms > key.not_after_ms:
                continue
            ring.add(_trusted(site, key))
    return ring


TelemetryKeys = Callable[[Iterable[Site], int], Keyring]
"""The hub's port for telemetry keys: the keyring to verify agents' batches with, from the sites at a time."""


def command_keyring(site: Site, now_ms: int) -> Keyring:
    """The site's command public keys valid at ``now_ms`` (what its current bundle trusts)."""
    ring = Keyring()
    if site.status == Site.STATUS_ACTIVE:
        for key in valid_keys(site.command_keys, now_ms):
            ring.add(_trusted(site, key))
    return ring


def command_signing_key(secrets: Secrets, site: Site, now_ms: int) -> SigningKey:
    """The hub's private key to sign ``site``'s commands with at ``now_ms`` (see the module doc)."""
    if site.status != Site.STATUS_ACTIVE:
        raise ProvisioningError(f"site {site.site_id} is revoked; no commands can be signed for it")
    candidates = valid_keys(site.command_keys, now_ms)
    if not candidates:
        raise ProvisioningError(f"site {site.site_id} has no command key valid now; run rotate-keys")
    name = command_key_secret(site.site_id)
    private: dict[str, SigningKey] = {}
    for version in enabled_versions(secrets, name):
        try:
            key = SigningKey.from_pem(secrets.access(name, version))
        except ChargectlError:
            continue  # disabled or unreadable between listing and access: not usable
        private[key.key_id] = key
    for candidate in candidates:
        found = private.get(key_id_for(bytes(candidate.public_key)))
        if found is not None:
            return found
    raise ProvisioningError(
        f"no enabled secret version of {name} matches a valid command key of site {site.site_id}"
    )


class CommandSigner:
    """:func:`command_signing_key` with the private keys cached by key id, so the hub reads the
    secrets only when the key it must sign with changes (a new site, a rotation's grace ending)."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets
        self._keys: dict[str, SigningKey] = {}

    def key_for(self, site: Site, now_ms: int) -> SigningKey:
        """The key to sign ``site``'s commands with at ``now_ms``; a revoked site is refused first."""
        if site.status != Site.STATUS_ACTIVE:
            raise ProvisioningError(f"site {site.site_id} is revoked; no commands can be signed for it")
        candidates = valid_keys(site.command_keys, now_ms)
        if candidates:
            cached = self._keys.get(key_id_for(bytes(candidates[0].public_key)))
            if cached is not None:
                return cached
        key = command_signing_key(self.secrets, site, now_ms)
        self._keys[key.key_id] = key
        return key
