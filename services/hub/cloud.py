"""Build the hub on the distributed backends: Pub/Sub in and out, Firestore, InfluxDB, Secret Manager."""

from __future__ import annotations

from chargectl.common.alerts import AlertBook
from chargectl.common.clock import Clock
from chargectl.common.config import Config
from chargectl.common.errors import ConfigError
from chargectl.services.adapters.secrets import secrets_from_config
from chargectl.services.adapters.store import Store
from chargectl.services.alerting import attach_alert_sinks
from chargectl.services.console.app import mount_console
from chargectl.services.console.settings import ConsoleSettings, require_token_off_loopback
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.sessions import TopupCheck
from chargectl.services.hub.settings import HubSettings
from chargectl.services.hub.stops import StopJournal, stop_journal_path
from chargectl.services.trust import CommandSigner
from chargectl.services.wiring import open_store, open_timeseries

__all__ = ["autotopup_port", "build_cloud_hub"]


def autotopup_port(
    config: Config, store: Store, clock: Clock, alerts: AlertBook, stripe_api_key: str
) -> TopupCheck | None:
    """The hub's auto top-up check after a debit (``AutoTopup.check_user`` on the hub's store, the
    ``[payments]`` settings), or None without a Stripe key: then the hub imports nothing of Stripe."""
    if not stripe_api_key:
        return None
    from chargectl.services.payments.autotopup import AutoTopup
    from chargectl.services.payments.settings import PaymentsSettings
    from chargectl.services.payments.stripe_ops import StripeOps

    payments = config.section("payments", PaymentsSettings)
    ops = StripeOps.connect(stripe_api_key, store, clock, payments)
    return AutoTopup(store, ops, clock, alerts).check_user


def build_cloud_hub(config: Config, clock: Clock | None = None, stripe_api_key: str = "") -> Hub:
    """The hub for ``backend = "gcp"`` (the emulators via ``PUBSUB_EMULATOR_HOST`` / ``FIRESTORE_EMULATOR_HOST``).

    With ``stripe_api_key`` (the CLI passes ``STRIPE_API_KEY``) the hub checks the user's auto top-up
    after each session debit."""
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
        stops=StopJournal(stop_journal_path(config.state_dir, settings.shard)),
    )
    hub = Hub(settings, ports, clock)
    hub.ports.topup = autotopup_port(config, ports.store, hub.clock, hub.alerts, stripe_api_key)
    mount_console(hub, console, settings.health_host)
    attach_alert_sinks(config, hub.alerts, hub.metrics.inc)
    return hub
