"""The client address the app API's per-address limit is keyed by (the token bucket itself is
:class:`chargectl.common.ratelimit.RateLimiter`)."""

from __future__ import annotations

import ipaddress

__all__ = ["client_address"]


def client_address(peer: str | None, forwarded_for: str, hops: int) -> str:
    """The client's address: the peer's with ``hops == 0``; else the ``hops``-th address from the right of
    X-Forwarded-For (each trusted proxy appends the address it was connected from, so everything left of
    that was written by the client and is not trusted). A header too short or not an address: the peer.
    IPv6 clients are keyed by their /64 (one host can have a whole /64 of addresses)."""
    address = peer or ""
    if hops > 0:
        parts = [p.strip() for p in forwarded_for.split(",") if p.strip()]
        if len(parts) >= hops:
            address = parts[-hops]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return peer or ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
