"""The Shelly layer: device client (Gen1 REST, Gen2+ RPC, auth), parsing, mDNS discovery, simulator.

The simulator (``chargectl.shelly.sim``) is imported on demand, not from here.
"""

from chargectl.shelly.client import ShellyClient, fetch_info
from chargectl.shelly.discovery import DiscoveredPlug, PlugEvent, PlugWatcher, discover_once
from chargectl.shelly.parse import DeviceInfo, RelayState

__all__ = [
    "DeviceInfo",
    "DiscoveredPlug",
    "PlugEvent",
    "PlugWatcher",
    "RelayState",
    "ShellyClient",
    "discover_once",
    "fetch_info",
]
