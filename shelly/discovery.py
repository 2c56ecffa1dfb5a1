"""mDNS discovery of Shelly plugs: browse, resolve explicitly, confirm with ``GET /shelly``, dedupe by MAC.

Gen1 advertises only ``_http._tcp``; Gen2+ advertise ``_http._tcp`` and ``_shelly._tcp`` (TXT
``gen=N``). Instance names are never identities (6-hex Gen1 names, duplicates across the two types);
the MAC from ``/shelly`` is. Some devices answer PTR only, so every name is resolved with
``AsyncServiceInfo.async_request`` (SRV/A follow-up queries). IPv6 is ignored (Shelly has none).

Trust: anyone on the LAN can announce anything over mDNS. An :class:`AddressPolicy` decides which
addresses may be probed at all (the site's own networks; never loopback, link-local or public ones
unless configured), and a device whose ``/shelly`` MAC contradicts the MAC in its mDNS name is refused.
The operator's ``chargectl discover`` and ``relay MAC`` use the same rule (:meth:`AddressPolicy.for_cli`):
the networks of the interfaces named, else the connected private subnets; ``--any-address`` lifts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from chargectl.common.errors import ChargectlError
from chargectl.common.netif import resolve_interfaces
from chargectl.shelly.client import fetch_info
from chargectl.shelly.parse import DeviceInfo

__all__ = [
    "SERVICE_TYPES",
    "AddressPolicy",
    "DiscoveredPlug",
    "PlugEvent",
    "PlugWatcher",
    "Survey",
    "connected_networks",
    "discover_once",
    "name_matches_mac",
    "survey",
]

log = logging.getLogger("chargectl.shelly.discovery")

SERVICE_TYPES = ("_http._tcp.local.", "_shelly._tcp.local.")

_NAME_MAC12 = re.compile(r"-([0-9A-Fa-f]{12})$")
_NAME_MAC6 = re.compile(r"-([0-9A-Fa-f]{6})$")


def name_matches_mac(name: str, mac: str) -> bool:
    """Whether an mDNS instance name agrees with ``mac``: Gen2+ names end in the whole MAC, Gen1
    names in its last 6 hex digits; a name carrying neither cannot contradict it."""
    instance = name.split(".", 1)[0]
    m = _NAME_MAC12.search(instance)
    if m:
        return m.group(1).upper() == mac.upper()
    m = _NAME_MAC6.search(instance)
    if m:
        return m.group(1).upper() == mac.upper()[-6:]
    return True


def connected_networks(route_table: str, addresses: Iterable[str] = ()) -> list[ipaddress.IPv4Network]:
    """Directly connected IPv4 subnets from a Linux ``/proc/net/route`` text (gateway 0, not default).

    With ``addresses`` (the interface addresses discovery listens on), only the subnets holding one of
    them. Pure: the caller reads the file.
    """
    wanted = [ipaddress.IPv4Address(a) for a in addresses if _is_ipv4(a)]
    nets: list[ipaddress.IPv4Network] = []
    for line in route_table.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dest, gateway, mask = (int(cols[i], 16) for i in (1, 2, 7))
        except ValueError:
            continue
        if gateway != 0 or mask == 0:
            continue
        # /proc/net/route prints little-endian hex of the network-order address.
        net = ipaddress.IPv4Network(
            (int.from_bytes(dest.to_bytes(4, "little"), "big"), bin(mask).count("1")), strict=False
        )
        if (not wanted or any(a in net for a in wanted)) and net not in nets:
            nets.append(net)
    return nets


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


class AddressPolicy:
    """Which addresses discovery may probe.

    Configured ``allowed`` networks are taken as they are (loopback for a simulator, say). Without
    them, only the directly connected private subnets (``connected``) are allowed, and never a
    loopback, link-local, multicast or public address.
    """

    def __init__(
        self,
        allowed: Sequence[str] = (),
        connected: Sequence[ipaddress.IPv4Network] = (),
    ) -> None:
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed]
        self.connected = list(connected)

    @classmethod
    def for_site(
        cls,
        allowed: Sequence[str],
        interfaces: Sequence[str] = (),
        route_file: Path = Path("/proc/net/route"),
    ) -> AddressPolicy:
        """The policy for an agent: ``allowed`` if configured, else this host's connected subnets."""
        if allowed:
            return cls(allowed)
        try:
            table = route_file.read_text()
        except OSError:
            table = ""
        return cls((), connected_networks(table, interfaces))

    @classmethod
    def for_cli(
        cls,
        networks: Sequence[str] = (),
        interface_addresses: Sequence[str] = (),
        route_file: Path = Path("/proc/net/route"),
    ) -> AddressPolicy:
        """The policy for the operator's commands: ``networks`` if given; else the networks of the
        interfaces discovery listens on (``--interface``: the loopback's for a simulator on this
        machine); else, like an agent, the directly connected private subnets."""
        if networks:
            return cls(networks)
        if interface_addresses:
            from chargectl.common.netif import interface_networks

            return cls(interface_networks(interface_addresses))
        return cls.for_site((), (), route_file)

    def permits(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if self.allowed:
            return any(ip in net for net in self.allowed)
        if ip.version != 4 or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            return False
        if not ip.is_private:
            return False
        return any(ip in net for net in self.connected)

    def describe(self) -> str:
        nets = self.allowed or self.connected
        return ", ".join(str(n) for n in nets) or "no network"


@dataclass(frozen=True, slots=True)
class DiscoveredPlug:
    """A plug found on the network and confirmed by ``GET /shelly``."""

    mac: str
    gen: int
    model: str
    firmware: str
    host: str
    port: int
    auth: bool
    switchable: bool
    name: str | None

    @classmethod
    def from_info(cls, info: DeviceInfo, host: str, port: int) -> DiscoveredPlug:
        return cls(
            mac=info.mac,
            gen=info.gen,
            model=info.model,
            firmware=info.firmware,
            host=host,
            port=port,
            auth=info.auth,
            switchable=info.switchable,
            name=info.name,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "gen": self.gen,
            "model": self.model,
            "firmware": self.firmware,
            "host": self.host,
            "port": self.port,
            "auth": self.auth,
            "switchable": self.switchable,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class PlugEvent:
    """``added`` (new MAC), ``moved`` (known MAC at a new address) or ``gone`` (no longer advertised)."""

    kind: Literal["added", "moved", "gone"]
    plug: DiscoveredPlug


class PlugWatcher:
    """Continuous discovery. Events go to ``on_event`` (if given) and to ``events()`` iterators.

    A plug is reported ``gone`` only after every one of its service names has been withdrawn for
    ``gone_after_s`` (a DHCP move re-announces within that window and is reported as ``moved``).
    """

    def __init__(
        self,
        *,
        interfaces: Sequence[str] | None = None,
        on_event: Callable[[PlugEvent], Any] | None = None,
        probe_timeout_s: float = 3.0,
        resolve_timeout_s: float = 3.0,
        gone_after_s: float = 10.0,
        policy: AddressPolicy | None = None,
        max_response_bytes: int = 64 * 1024,
    ) -> None:
        # Names (wlan0) or addresses; an unknown one is a ConfigError here, not an OSError in zeroconf.
        self.interfaces = resolve_interfaces(interfaces) if interfaces is not None else None
        self.policy = policy  # None: probe any address (the operator's survey tool)
        self.max_response_bytes = max_response_bytes
        self.refused: dict[str, str] = {}  # "host:port name" -> why (logged once each)
        self.on_event = on_event
        self.probe_timeout_s = probe_timeout_s
        self.resolve_timeout_s = resolve_timeout_s
        self.gone_after_s = gone_after_s
        self.plugs: dict[str, DiscoveredPlug] = {}
        self._names: dict[str, str] = {}  # service name → MAC
        self._queues: list[asyncio.Queue[PlugEvent]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._gone_timers: dict[str, asyncio.TimerHandle] = {}
        self._zc: Any = None
        self._browser: Any = None
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._loop = asyncio.get_running_loop()
        self._http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), trust_env=False)
        kwargs: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        if self.interfaces is not None:
            kwargs["interfaces"] = self.interfaces
        self._zc = AsyncZeroconf(**kwargs)
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, list(SERVICE_TYPES), handlers=[self._on_change]
        )

    async def stop(self) -> None:
        for handle in self._gone_timers.values():
            handle.cancel()
        self._gone_timers.clear()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._zc is not None:
            await self._zc.async_close()
            self._zc = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> PlugWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def events(self) -> AsyncIterator[PlugEvent]:
        """Iterate over events from now on (each iterator gets every event)."""
        queue: asyncio.Queue[PlugEvent] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            self._removed(name)
            return
        task = asyncio.ensure_future(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, event: PlugEvent) -> None:
        log.debug("plug %s %s at %s:%d", event.plug.mac, event.kind, event.plug.host, event.plug.port)
        for queue in self._queues:
            queue.put_nowait(event)
        if self.on_event is not None:
            try:
                result = self.on_event(event)
            except Exception:  # a broken callback must not stop discovery
                log.exception("plug event callback failed for %s", event)
                return
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, int(self.resolve_timeout_s * 1000)):
            log.debug("could not resolve %s", name)
            return
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or info.port is None:
            return
        for host in addresses:
            if self.policy is not None and not self.policy.permits(host):
                self._refuse(
                    name, host, info.port, f"{host} is outside the networks probed ({self.policy.describe()})"
                )
                continue
            try:
                assert self._http is not None
                device = await fetch_info(
                    host,
                    info.port,
                    timeout_s=self.probe_timeout_s,
                    http=self._http,
                    max_response_bytes=self.max_response_bytes,
                )
            except ChargectlError as exc:
                log.debug("%s at %s:%s is not a Shelly: %s", name, host, info.port, exc)
                continue
            if not name_matches_mac(name, device.mac):
                self._refuse(name, host, info.port, f"its /shelly says MAC {device.mac}, its name does not")
                continue
            self._confirmed(name, DiscoveredPlug.from_info(device, host, info.port))
            return

    def _refuse(self, name: str, host: str, port: int, why: str) -> None:
        key = f"{host}:{port} {name}"
        if key not in self.refused:
            log.warning("not adopting %s at %s:%d: %s", name.split(".", 1)[0], host, port, why)
        self.refused[key] = why

    def _confirmed(self, name: str, plug: DiscoveredPlug) -> None:
        self._names[name] = plug.mac
        timer = self._gone_timers.pop(plug.mac, None)
        if timer is not None:
            timer.cancel()
        known = self.plugs.get(plug.mac)
        self.plugs[plug.mac] = plug
        if known is None:
            self._emit(PlugEvent("added", plug))
        elif (known.host, known.port) != (plug.host, plug.port):
            self._emit(PlugEvent("moved", plug))

    def _removed(self, name: str) -> None:
        mac = self._names.pop(name, None)
        if mac is None or mac in self._names.values() or self._loop is None:
            return
        self._gone_timers[mac] = self._loop.call_later(self.gone_after_s, self._gone, mac)

    def _gone(self, mac: str) -> None:
        self._gone_timers.pop(mac, None)
        plug = self.plugs.pop(mac, None)
        if plug is not None and mac not in self._names.values():
            self._emit(PlugEvent("gone", plug))


@dataclass(frozen=True, slots=True)
class Survey:
    """What one listening window found: the confirmed plugs (one per MAC, sorted by MAC) and the
    announcements not adopted (``"host:port name"`` → why: outside the networks probed, or a name that
    contradicts the device's MAC)."""

    plugs: list[DiscoveredPlug]
    refused: dict[str, str]


async def survey(
    timeout_s: float = 5.0,
    interfaces: Sequence[str] | None = None,
    policy: AddressPolicy | None = None,
) -> Survey:
    """Listen for ``timeout_s`` seconds; probe only what ``policy`` permits (``None``: any address)."""
    watcher = PlugWatcher(interfaces=interfaces, resolve_timeout_s=min(3.0, timeout_s), policy=policy)
    await watcher.start()
    try:
        await asyncio.sleep(timeout_s)
        # give resolutions that started near the end a moment to finish
        pending = list(watcher._tasks)
        if pending:
            await asyncio.wait(pending, timeout=min(2.0, timeout_s))
        return Survey(sorted(watcher.plugs.values(), key=lambda p: p.mac), dict(watcher.refused))
    finally:
        await watcher.stop()


async def discover_once(
    timeout_s: float = 5.0,
    interfaces: Sequence[str] | None = None,
    policy: AddressPolicy | None = None,
) -> list[DiscoveredPlug]:
    """Listen for ``timeout_s`` seconds and return every confirmed plug, one per MAC, sorted by MAC."""
    return (await survey(timeout_s, interfaces, policy)).plugs
