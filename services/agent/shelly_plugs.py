"""The agent's plug seams filled by the Shelly layer: a connector and continuous mDNS discovery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from chargectl.common.clock import Clock
from chargectl.services.agent.plugs import Connector, Discovery, Plug, PlugSighting

__all__ = ["shelly_connector", "shelly_discovery"]


def shelly_connector(
    *,
    password: str | None,
    user: str,
    timeout_s: float,
    clock: Clock,
    max_response_bytes: int = 64 * 1024,
) -> Connector:
    """Connect with ``ShellyClient.connect`` (identifies the plug by ``GET /shelly``)."""

    async def connect(host: str, port: int, mac: str | None = None) -> Plug:
        from chargectl.shelly import ShellyClient

        return await ShellyClient.connect(
            host,
            port,
            mac=mac,
            password=password,
            user=user,
            timeout_s=timeout_s,
            clock=clock,
            max_response_bytes=max_response_bytes,
        )

    return connect


def shelly_discovery(
    interfaces: Sequence[str], allowed_networks: Sequence[str] = (), max_response_bytes: int = 64 * 1024
) -> Discovery:
    """Continuous discovery through ``PlugWatcher`` (all interfaces when ``interfaces`` is empty),
    probing only the site's own networks: ``allowed_networks`` if given, else the directly connected
    private subnets of the interfaces in use."""

    async def watch() -> AsyncIterator[PlugSighting]:
        from chargectl.shelly import PlugWatcher
        from chargectl.shelly.discovery import AddressPolicy

        policy = AddressPolicy.for_site(allowed_networks, interfaces)
        watcher = PlugWatcher(
            interfaces=list(interfaces) or None, policy=policy, max_response_bytes=max_response_bytes
        )
        await watcher.start()
        try:
            async for event in watcher.events():
                yield PlugSighting(event.kind, event.plug.mac, event.plug.host, event.plug.port)
        finally:
            await watcher.stop()

    return watch
