"""Build the hub on the distributed backends: Pub/Sub in and out, Firestore, InfluxDB, Secret Manager."""

from __future__ import annotations

from chargectl.common.clock import Clock
from chargectl.common.config import Config
from chargectl.common.errors import ConfigError
from chargectl.services.adapters.secrets import secrets_from_config
from chargectl.services.alerting import attach_alert_sinks
from chargectl.services.console.app import mount_console
from chargectl.services.console.settings import ConsoleSettings, require_token_off_loopback
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
    console = config.section("console", ConsoleSettings)
    require_token_off_loopback(settings.health_host, console)  # before any backend is opened
    signer = CommandSigner(secrets_from_config(config))
    ports = HubPorts(
        bus=PubSubBus(config.project),
        store=open_store(config),
        timeseries=open_timeseries(config),
        command_keys=signer.key_for,
    )
    hub = Hub(settings, ports, clock)
    mount_console(hub, console, settings.health_host)
    attach_alert_sinks(config, hub.alerts, hub.metrics.inc)
    return hub
