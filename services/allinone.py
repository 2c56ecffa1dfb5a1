"""``chargectl run``: agent and hub in one process on the embedded backends — a complete single-site
system with no cloud account.

The site is provisioned on first start by the ``provision`` port the caller passes
(``chargectl.provisioner.local.provision_local_site``: key files under the config dir, the ``Site``
document in the SQLite store), the agent and the hub talk over the in-process bus with the same signed envelopes as in
the cloud, and everything durable (store, time series, agent spool and sequence) lives under the
state dir, so a restart resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chargectl.common import codec
from chargectl.common.clock import Clock, SystemClock
from chargectl.common.config import Config, build
from chargectl.common.errors import ConfigError
from chargectl.common.keys import SigningKey
from chargectl.common.runner import run_until_signalled
from chargectl.common.topics import validate_site_id
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.secrets import Secrets
from chargectl.services.agent.agent import Agent
from chargectl.services.agent.metrics import instrument_agent
from chargectl.services.agent.settings import AgentSettings
from chargectl.services.agent.shelly_plugs import shelly_connector, shelly_discovery
from chargectl.services.alerting import AlertNotifier, attach_alert_sinks
from chargectl.services.console.app import mount_console
from chargectl.services.console.settings import ConsoleSettings, require_token_off_loopback
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings
from chargectl.services.hub.stops import StopJournal, stop_journal_path
from chargectl.services.trust import CommandSigner, command_keyring
from chargectl.services.wiring import open_store, open_timeseries

__all__ = ["AllInOne", "LocalSite", "Provision", "RunSettings"]

log = logging.getLogger("chargectl.run")


@dataclass(frozen=True)
class RunSettings:
    """``[run]``: the single site this process runs."""

    site_id: str = "local-site"
    site_name: str = "Local site"
    tariff: str = ""  # provision-style "key=value,…" for the site's tariff; empty: [hub.tariff]
    health: bool = True

    def __post_init__(self) -> None:
        validate_site_id(self.site_id)


@dataclass(frozen=True)
class LocalSite:
    """The provisioned site: its document, the secrets holding the hub's command keys, the agent's key."""

    site: codec.Site
    secrets: Secrets
    agent_key: SigningKey


Provision = Callable[[Config, RunSettings, HubSettings, int], LocalSite]
"""Create the site on first start (a no-op afterwards) and return its keys: config, [run], [hub], now (ms)."""


class AllInOne:
    """The agent and the hub sharing a :class:`MemoryBus`, over the embedded store."""

    def __init__(
        self,
        config: Config,
        provision: Provision,
        *,
        clock: Clock | None = None,
        shelly_password: str | None = None,
        agent_settings: AgentSettings | None = None,
        hub_settings: HubSettings | None = None,
    ) -> None:
        if config.backend != "local":
            raise ConfigError(
                'chargectl run uses the embedded backends: set backend = "local" (or use '
                "chargectl hub and chargectl agent for the cloud)"
            )
        self.config = config
        self._provision = provision
        self.clock = clock or SystemClock()
        self.settings = config.section("run", RunSettings)
        self.hub_settings = hub_settings or HubSettings.from_mapping(config.sections.get("hub"))
        if agent_settings is None:
            # Key files are not used here: the keys come from the provisioned site.
            raw = {
                k: v
                for k, v in dict(config.sections.get("agent", {})).items()
                if k not in ("agent_key_file", "command_public_key_files")
            }
            raw["site_id"] = self.settings.site_id
            agent_settings = build(AgentSettings, raw, prefix="agent")
        if agent_settings.state_dir is None:
            agent_settings = dataclasses.replace(agent_settings, state_dir=config.state_dir / "agent")
        self.agent_settings = agent_settings
        self.console_settings = config.section("console", ConsoleSettings)
        if self.settings.health:  # the console rides on the health server: refuse an open one early
            require_token_off_loopback(self.hub_settings.health_host, self.console_settings)
        self.shelly_password = shelly_password
        self.bus = MemoryBus()
        self.store = open_store(config)
        self.timeseries = open_timeseries(config)
        self.hub: Hub | None = None
        self.agent: Agent | None = None
        self.notifier: AlertNotifier | None = None
        self._stop = asyncio.Event()

    def provision(self) -> LocalSite:
        """Create the site (keys, document) if this is the first start; a no-op afterwards."""
        return self._provision(self.config, self.settings, self.hub_settings, int(self.clock.now() * 1000))

    async def start(self) -> None:
        local = self.provision()
        now_ms = int(self.clock.now() * 1000)
        signer = CommandSigner(local.secrets)
        stops = StopJournal(stop_journal_path(self.config.state_dir, self.hub_settings.shard))
        self.hub = Hub(
            self.hub_settings,
            HubPorts(self.bus, self.store, self.timeseries, signer.key_for, stops=stops),
            self.clock,
        )
        if self.settings.health:
            mount_console(self.hub, self.console_settings, self.hub_settings.health_host)
        self.notifier = attach_alert_sinks(self.config, self.hub.alerts, self.hub.metrics.inc)
        s = self.agent_settings
        self.agent = Agent(
            s,
            self.bus,
            local.agent_key,
            command_keyring(local.site, now_ms),
            shelly_connector(
                password=self.shelly_password,
                user=s.shelly_user,
                timeout_s=s.request_timeout_s,
                clock=self.clock,
                max_response_bytes=s.max_response_bytes,
            ),
            discovery=shelly_discovery(s.interfaces, s.allowed_networks, s.max_response_bytes)
            if s.discovery
            else None,
            clock=self.clock,
        )
        instrument_agent(self.hub.metrics, s.site_id, self.agent.health)  # same names as a lone agent

    async def serve(self, ready: Callable[[], Awaitable[None] | None] | None = None) -> None:
        """Run the hub and the agent until :meth:`request_stop`."""
        await self.start()
        assert self.hub is not None and self.agent is not None
        hub_task = asyncio.create_task(self.hub.serve(health=self.settings.health), name="hub")
        agent_task = asyncio.create_task(self.agent.serve(), name="agent")
        if ready is not None:
            result = ready()
            if asyncio.iscoroutine(result):
                await result
        stop_task = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {hub_task, agent_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stop_task and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.agent.stop()
            self.hub.request_stop()
            for task in (agent_task, hub_task):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=15)
            stop_task.cancel()
            await self.bus.close()
            if self.notifier is not None:
                self.notifier.close()
            self.timeseries.close()
            self.store.close()

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Blocking entry for the CLI: serve until SIGINT/SIGTERM."""
        run_until_signalled(self.serve, self.request_stop)
