"""Names of the bus resources, shared by the provisioner, the agent and the hub.

One telemetry topic (every agent publishes; each hub shard has its own subscription and checks the
``shard`` attribute itself, because the Pub/Sub emulator ignores subscription filters), one dead-letter
topic, and one command topic per site with the site agent's subscription on it.
"""

from __future__ import annotations

import re

from chargectl.common.errors import ConfigError

__all__ = [
    "DEAD_LETTER_TOPIC",
    "MAX_SHARD",
    "SITE_ID_RE",
    "TELEMETRY_TOPIC",
    "command_subscription",
    "command_topic",
    "telemetry_subscription",
    "validate_shard",
    "validate_site_id",
]

TELEMETRY_TOPIC = "chargectl-telemetry"
DEAD_LETTER_TOPIC = "chargectl-telemetry-dead"
SITE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{1,48}[a-z0-9]\Z")  # \Z: "$" lets a trailing newline through
MAX_SHARD = 2**32 - 1  # Site.shard is a uint32 on the wire


def validate_shard(shard: int, what: str = "shard") -> int:
    """Return ``shard`` if a Site document can carry it (0..MAX_SHARD); ConfigError naming ``what``."""
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard <= MAX_SHARD:
        raise ConfigError(f"{what} must be between 0 and {MAX_SHARD}, got {shard!r}")
    return shard


def validate_site_id(site_id: str) -> str:
    """Return ``site_id`` if it is a valid site id (lower-case letters, digits, dashes; 3–50 chars)."""
    if not SITE_ID_RE.match(site_id):
        raise ConfigError(
            f"invalid site id {site_id!r}: use 3-50 lower-case letters, digits and dashes, starting with a letter"
        )
    return site_id


def command_topic(site_id: str) -> str:
    return f"chargectl-commands-{validate_site_id(site_id)}"


def command_subscription(site_id: str) -> str:
    return f"chargectl-commands-{validate_site_id(site_id)}-agent"


def telemetry_subscription(shard: int) -> str:
    return f"chargectl-telemetry-hub-{validate_shard(shard)}"
