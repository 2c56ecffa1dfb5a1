"""Commands out: a machine's ``SendRelay`` becomes a command signed with the site's key and published on
the site's own command topic, without waiting (a lost command is re-sent by the machine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
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
        # session id -> may its relay "on" go out (the hub shares Sessions.unstored); an "on" held there is
        # published only if it is still its plug's newest command once released
        self.holds: Mapping[str, asyncio.Future[bool]] = {}
        self._newest: dict[str, str] = {}  # plug with a held "on" -> id of its newest command
        self._held: dict[str, int] = {}  # plug -> its held commands not yet released
        # A start's "on" counts as on its way (the hub shares Sessions.urgent) from its decision until it
        # is published or dropped: the answers of started requests are written after the burst's "on"s.
        self.on_its_way: Callable[[], Callable[[], None]] = lambda: lambda: None

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
        packed = self._sign(site_id, cmd, "a command")
        if packed is None:
            return
        self._sent[fx.command_id] = now
        if len(self._sent) > MAX_IN_FLIGHT:
            self._sent.pop(next(iter(self._sent)))
        self.metrics.inc("commands_sent_total")
        hold = self.holds.get(fx.session_id) if fx.on and fx.session_id else None
        done: Callable[[], None] = lambda: None  # noqa: E731
        if hold is not None:
            self._held[fx.mac] = self._held.get(fx.mac, 0) + 1
            done = self.on_its_way()
        if fx.mac in self._held:
            self._newest[fx.mac] = fx.command_id

        async def publish() -> None:
            try:
                if hold is not None and not await self._released(fx, hold):
                    log.info(
                        "command %s to %s not sent: session not stored, or superseded", fx.command_id, fx.mac
                    )
                    return
                # The machine re-sends until the relay is confirmed, so a lost command is retried.
                await self._publish(site_id, packed, f"command {fx.command_id} to {fx.mac}")
            finally:
                done()

        task = self._spawn(publish())
        task.add_done_callback(lambda _t: done())  # cancelled before it ran (a stopping hub): still off

    async def _released(self, fx: m.SendRelay, hold: asyncio.Future[bool]) -> bool:
        """Wait for a held "on": True if its session is stored and it is still its plug's newest command."""
        try:
            stored = await asyncio.shield(hold)
        finally:
            newest = self._newest.get(fx.mac)
            left = self._held[fx.mac] = self._held[fx.mac] - 1
            if left <= 0:
                del self._held[fx.mac]
                self._newest.pop(fx.mac, None)
        return stored and newest == fx.command_id

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
        packed = self._sign(site_id, lease, "a lease")
        if packed is None:
            return
        self.metrics.inc("leases_sent_total")
        # A lost lease is renewed by the next one (at most half a keep-alive interval later).
        self._spawn(self._publish(site_id, packed, f"lease {lease.command_id}"))

    def _sign(self, site_id: str, cmd: codec.Command, what: str) -> tuple[bytes, dict[str, str]] | None:
        """``cmd`` signed with ``site_id``'s command key at its issue time; None (counted, logged) if the
        site or its key is missing."""
        try:
            site = self.sites.get(site_id)
            if site is None:
                raise StoreError(f"site {site_id} is not provisioned")
            key = self.keys(site, cmd.issued_at_ms)
        except ChargectlError as exc:
            self.metrics.inc("commands_failed_total", reason="no_key")
            log.error("cannot sign %s for site %s: %s", what, site_id, exc)
            return None
        return codec.pack_command(cmd, key)

    async def _publish(self, site_id: str, packed: tuple[bytes, dict[str, str]], what: str) -> None:
        """Publish on the site's command topic; a transport failure is counted and logged, not raised."""
        try:
            await self.bus.publish(command_topic(site_id), *packed)
        except TransportError as exc:
            self.metrics.inc("commands_failed_total", reason="publish")
            log.warning("%s not published: %s", what, exc)

    def answered(self, outcome: codec.CommandOutcome) -> None:
        """Record a command's round trip (the agent's result came back)."""
        sent = self._sent.pop(outcome.command_id, None)
        if sent is None:
            return
        latency = max(0.0, self.clock.now() - sent)
        self.metrics.observe("command_latency_seconds", latency)
        self.metrics.inc("command_results_total", reason=outcome.reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
