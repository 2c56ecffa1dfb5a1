"""Build an :class:`Agent` from the root configuration (what ``chargectl agent`` runs)."""

from __future__ import annotations

from chargectl.common.clock import Clock, SystemClock
from chargectl.common.config import Config
from chargectl.common.errors import ConfigError
from chargectl.common.keys import Keyring, load_private_key, load_public_key
from chargectl.services.adapters.bus import Bus
from chargectl.services.agent.agent import Agent
from chargectl.services.agent.settings import AgentSettings, agent_settings
from chargectl.services.agent.shelly_plugs import shelly_connector, shelly_discovery

__all__ = ["build_agent", "command_keyring"]


def command_keyring(settings: AgentSettings) -> Keyring:
    """The site's command public keys (several during a rotation), trusted for this site only."""
    keyring = Keyring()
    for path in settings.command_public_key_files:
        keyring.add_public(load_public_key(path), settings.site_id)
    return keyring


def build_agent(
    config: Config, *, shelly_password: str | None = None, clock: Clock | None = None, bus: Bus | None = None
) -> Agent:
    """The agent for ``config``'s ``[agent]`` table, on Pub/Sub unless a ``bus`` is given."""
    settings = agent_settings(config)
    clock = clock or SystemClock()
    agent_key = load_private_key(settings.agent_key_file)
    keyring = command_keyring(settings)
    if bus is None:
        if config.backend != "gcp":
            raise ConfigError(
                'the standalone agent publishes to Pub/Sub: set backend = "gcp" (the local backend runs '
                "the agent inside the all-in-one process)"
            )
        from chargectl.services.adapters.pubsub_bus import PubSubBus

        bus = PubSubBus(config.project, publish_timeout_s=settings.publish_timeout_s)
    connector = shelly_connector(
        password=shelly_password,
        user=settings.shelly_user,
        timeout_s=settings.request_timeout_s,
        clock=clock,
        max_response_bytes=settings.max_response_bytes,
    )
    discovery = (
        shelly_discovery(settings.interfaces, settings.allowed_networks, settings.max_response_bytes)
        if settings.discovery
        else None
    )
    return Agent(settings, bus, agent_key, keyring, connector, discovery=discovery, clock=clock)
