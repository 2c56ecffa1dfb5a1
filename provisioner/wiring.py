"""Build a :class:`Provisioner` from the root config: embedded (SQLite, key files, in-process bus) or
cloud (Firestore, Secret Manager, Pub/Sub; the emulators via their ``*_EMULATOR_HOST`` variables and
``[secrets] endpoint`` for a local Secret Manager)."""

from __future__ import annotations

from dataclasses import dataclass

from chargectl.common.config import Config
from chargectl.common.errors import ConfigError
from chargectl.provisioner.site import Provisioner
from chargectl.services.adapters.secrets import secrets_from_config
from chargectl.services.wiring import open_store

__all__ = ["ProvisionSettings", "open_provisioner"]


@dataclass(frozen=True)
class ProvisionSettings:
    """``[provision]``: rotation grace period, default currency and tariff (``key=value,…``)."""

    grace_s: float = 86_400.0
    currency: str = "gbp"
    tariff: str = ""

    def __post_init__(self) -> None:
        if self.grace_s < 0:
            raise ConfigError(f"provision.grace_s must be >= 0, got {self.grace_s}")


def open_provisioner(config: Config) -> Provisioner:
    """The provisioner over the backends ``config`` selects."""
    bus = None
    if config.backend == "gcp":
        from chargectl.services.adapters.pubsub_admin import PubSubAdmin

        bus = PubSubAdmin(config.project)
    return Provisioner(open_store(config), secrets_from_config(config), bus, config.project, config.backend)
