"""Network interfaces by name or address, for mDNS: ``--interface wlan0`` or ``--interface 192.168.1.5``.

zeroconf binds to IPv4 addresses; people know their interfaces by name. A name becomes the interface's
IPv4 addresses; an address must belong to one of this machine's interfaces. Anything else is a
:class:`ConfigError` naming what exists, never an ``OSError`` from deep inside a socket call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from chargectl.common.errors import ConfigError

__all__ = ["interface_networks", "local_interfaces", "resolve_interfaces"]


def local_interfaces() -> dict[str, list[str]]:
    """Interface name → its IPv4 addresses (ifaddr, which comes with zeroconf)."""
    try:
        import ifaddr
    except ImportError as exc:  # the [agent] extra brings it
        raise ConfigError(
            "listing interfaces needs the [agent] extra: pip install 'chargectl[agent]'"
        ) from exc
    out: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        name = str(adapter.nice_name or adapter.name)
        out[name] = [str(ip.ip) for ip in adapter.ips if isinstance(ip.ip, str)]
    return out


def _describe(interfaces: dict[str, list[str]]) -> str:
    return ", ".join(f"{name} ({', '.join(ips) or 'no IPv4'})" for name, ips in sorted(interfaces.items()))


def resolve_interfaces(items: Iterable[str], interfaces: dict[str, list[str]] | None = None) -> list[str]:
    """``items`` (names or IPv4 addresses) → the IPv4 addresses to bind mDNS to, in order, deduplicated."""
    known = local_interfaces() if interfaces is None else interfaces
    out: list[str] = []
    for item in items:
        text = item.strip()
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            address = None
        if address is not None:
            if address.version != 4:
                raise ConfigError(
                    f"interface {text}: mDNS discovery binds IPv4 addresses; give an IPv4 or a name"
                )
            if not any(text in ips for ips in known.values()):
                raise ConfigError(f"no interface here has the address {text}; interfaces: {_describe(known)}")
            addresses: Sequence[str] = [text]
        elif text in known:
            addresses = known[text]
            if not addresses:
                raise ConfigError(f"interface {text} has no IPv4 address; interfaces: {_describe(known)}")
        else:
            raise ConfigError(f"no interface named {text!r}; interfaces: {_describe(known)}")
        out.extend(a for a in addresses if a not in out)
    return out


def interface_networks(addresses: Iterable[str]) -> list[str]:
    """The IPv4 networks (``address/prefix``) of this machine's interfaces holding ``addresses``: what
    discovery listening on those addresses may probe (``127.0.0.0/8`` for the loopback)."""
    try:
        import ifaddr
    except ImportError as exc:  # the [agent] extra brings it
        raise ConfigError(
            "listing interfaces needs the [agent] extra: pip install 'chargectl[agent]'"
        ) from exc
    wanted = set(addresses)
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip in wanted:
                net = str(ipaddress.ip_network(f"{ip.ip}/{ip.network_prefix}", strict=False))
                if net not in out:
                    out.append(net)
    return out
