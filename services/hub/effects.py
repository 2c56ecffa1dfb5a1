"""Commands out: a machine's ``SendRelay`` becomes a command signed with the site's key and published on
the site's own command topic, without waiting (a lost command is re-sent by the machine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from chargectl.common import codec
from chargectl.common.clock import Clock
from chargectl.common.errors import ChargectlError, StoreError, TransportError
from chargectl.common.keys import SigningKey
from chargectl.common.topics import command_topic
from chargectl.services.adapters.bus import Bus
from chargectl.services.hub import machine as m
from chargectl.services.hub.health import Metrics

__all__ = ["CommandKeys", "CommandSender"]

log = logging.getLogger("chargectl.hub")

CommandKeys = Callable[[codec.Site, int], SigningKey]
"""The key to sign a site's commands with at a time in ms (``services.trust.CommandSigner.key_for``);
raises ``ChargectlError`` if there is none."""

MAX_IN_FLIGHT = 10_000  # command ids remembered for the round-trip latency


class CommandSender:
    def __init__(
        self, bus: Bus, keys: CommandKeys, metrics: Metrics, clock: Clock, lifetime_s: float
    ) -> None:
        self.bus = bus
        self.keys = keys
        self.metrics = metrics
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.sites: dict[str, codec.Site] = {}
        self._sent: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lease_seq = 0

    def send(self, site_id: str, fx: m.SendRelay) -> None:
        """Sign and publish one relay command to ``site_id`` (the plug's bound site)."""
        now = self.clock.now()
        cmd = codec.Command(
            command_id=fx.command_id,
            site_id=site_id,
            plug_mac=fx.mac,
            on=fx.on,
            issued_at_ms=round(now * 1000),
            expires_at_ms=round((now + self.lifetime_s) * 1000),
            session_id=fx.session_id,
            auto_off_s=fx.auto_off_s,
        )
        try:
            site = self.sites.get(site_id)
            if site is None:
                raise StoreError(f"site {site_id} is not provisioned")
            key = self.keys(site, cmd.issued_at_ms)
        except ChargectlError as exc:
            self.metrics.inc("commands_failed_total", reason="no_key")
            log.error("cannot sign a command for site %s: %s", site_id, exc)
            return
        data, attrs = codec.pack_command(cmd, key)
        self._sent[fx.command_id] = now
        if len(self._sent) > MAX_IN_FLIGHT:
            self._sent.pop(next(iter(self._sent)))
        self.metrics.inc("commands_sent_total")

        async def publish() -> None:
            try:
                await self.bus.publish(command_topic(site_id), data, attrs)
            except TransportError as exc:
                # The machine re-sends until the relay is confirmed, so a lost command is retried.
                self.metrics.inc("commands_failed_total", reason="publish")
                log.warning("command %s to %s not published: %s", fx.command_id, fx.mac, exc)

        self._spawn(publish())

    def send_lease(self, site_id: str, leased: Sequence[codec.LeasedPlug]) -> None:
        """Sign and publish one site lease: every listed plug's flip-back timer is re-armed."""
        now = self.clock.now()
        self._lease_seq += 1
        lease = codec.Command(
            command_id=f"{site_id}.lease.{self._lease_seq}.{round(now * 1000)}",
            site_id=site_id,
            plug_mac="",
            on=True,
            issued_at_ms=round(now * 1000),
            expires_at_ms=round((now + self.lifetime_s) * 1000),
            leased=tuple(leased),
        )
        try:
            site = self.sites.get(site_id)
            if site is None:
                raise StoreError(f"site {site_id} is not provisioned")
            key = self.keys(site, lease.issued_at_ms)
        except ChargectlError as exc:
            self.metrics.inc("commands_failed_total", reason="no_key")
            log.error("cannot sign a lease for site %s: %s", site_id, exc)
            return
        data, attrs = codec.pack_command(lease, key)
        self.metrics.inc("leases_sent_total")

        async def publish() -> None:
            try:
                await self.bus.publish(command_topic(site_id), data, attrs)
            except TransportError as exc:
                # The next lease (at most half a keep-alive interval later) renews the same plugs.
                self.metrics.inc("commands_failed_total", reason="publish")
                log.warning("lease %s not published: %s", lease.command_id, exc)

        self._spawn(publish())

    def answered(self, outcome: codec.CommandOutcome) -> None:
        """Record a command's round trip (the agent's result came back)."""
        sent = self._sent.pop(outcome.command_id, None)
        if sent is None:
            return
        latency = max(0.0, self.clock.now() - sent)
        self.metrics.observe("command_latency_seconds", latency)
        self.metrics.inc("command_results_total", reason=outcome.reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
