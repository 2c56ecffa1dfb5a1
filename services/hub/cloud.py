"""Build the hub on the distributed backends: Pub/Sub in and out, Firestore, InfluxDB, Secret Manager."""

from __future__ import annotations

from chargectl.common.clock import Clock
from chargectl.common.config import Config
from chargectl.common.errors import ConfigError
from chargectl.services.adapters.secrets import secrets_from_config
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.trust import CommandSigner
from chargectl.services.wiring import open_store, open_timeseries

__all__ = ["build_cloud_hub"]


def build_cloud_hub(config: Config, clock: Clock | None = None) -> Hub:
    """The hub for ``backend = "gcp"`` (the emulators via ``PUBSUB_EMULATOR_HOST`` / ``FIRESTORE_EMULATOR_HOST``)."""
    if config.backend != "gcp":
        raise ConfigError(
            'chargectl hub runs on the distributed backends: set backend = "gcp" '
            "(for one machine with no cloud account, use chargectl run)"
        )
    from chargectl.services.adapters.pubsub_bus import PubSubBus

    settings = HubSettings.from_mapping(config.sections.get("hub"))
    signer = CommandSigner(secrets_from_config(config))
    ports = HubPorts(
        bus=PubSubBus(config.project),
        store=open_store(config),
        timeseries=open_timeseries(config),
        command_keys=signer.key_for,
    )
    return Hub(settings, ports, clock)
