"""The site agent: polls a site's plugs, publishes signed telemetry batches, executes relay commands."""

from chargectl.services.agent.agent import Agent
from chargectl.services.agent.factory import build_agent, command_keyring
from chargectl.services.agent.health import AgentHealth, check_heartbeat
from chargectl.services.agent.plugs import Connector, Discovery, Plug, PlugSighting
from chargectl.services.agent.settings import AgentSettings, PlugAddress, agent_settings

__all__ = [
    "Agent",
    "AgentHealth",
    "AgentSettings",
    "Connector",
    "Discovery",
    "Plug",
    "PlugAddress",
    "PlugSighting",
    "agent_settings",
    "build_agent",
    "check_heartbeat",
    "command_keyring",
]
