"""The trust helpers live in :mod:`chargectl.services.trust` (the hub needs them without the provisioner);
the provisioner keeps importing them from here."""

from __future__ import annotations

from chargectl.services.trust import (
    CommandSigner,
    command_keyring,
    command_signing_key,
    key_valid_at,
    telemetry_keyring,
    valid_keys,
)

__all__ = [
    "CommandSigner",
    "command_keyring",
    "command_signing_key",
    "key_valid_at",
    "telemetry_keyring",
    "valid_keys",
]
