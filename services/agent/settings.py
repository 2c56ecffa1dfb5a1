"""The agent's ``[agent]`` config table (the provisioner writes exactly these keys into a site's bundle)."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chargectl.common.config import Config
from chargectl.common.errors import ConfigError
from chargectl.common.topics import validate_shard, validate_site_id

__all__ = ["AgentSettings", "PlugAddress", "agent_settings"]


@dataclass(frozen=True)
class PlugAddress:
    """A plug configured by address (in addition to, or instead of, mDNS discovery)."""

    host: str
    port: int = 80

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("plug host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"plug port {self.port} is out of range")


@dataclass(frozen=True)
class AgentSettings:
    """Everything the agent needs to know about its site; durations in seconds, sizes in bytes."""

    site_id: str = ""
    shard: int = 0
    agent_key_file: Path = Path("agent.key")
    command_public_key_files: list[Path] = field(default_factory=lambda: [Path("command.pub")])
    poll_interval_s: float = 5.0
    flush_interval_s: float = 30.0
    max_batch_readings: int = 5000
    discovery: bool = True
    interfaces: list[str] = field(default_factory=list)
    plugs: list[PlugAddress] = field(default_factory=list)
    spool_max_bytes: int = 100 * 1024 * 1024
    command_lifetime_s: float = 600.0
    # Keys below have defaults and need not appear in a site bundle.
    state_dir: Path | None = None  # default: the root ``state_dir``
    encoding: Literal["zstd", "zlib", "identity"] = "zstd"
    request_timeout_s: float = 3.0
    poll_jitter: float = 0.1  # each poll interval is stretched or shrunk by up to this fraction
    max_backoff_s: float = 60.0
    offline_after_failures: int = 2
    publish_timeout_s: float = 20.0
    heartbeat_interval_s: float = 5.0
    heartbeat_max_age_s: float = 60.0
    shelly_user: str = "admin"
    ensure_resources: bool = True  # create the command topic/subscription if missing (emulator, dev)
    health_host: str = "127.0.0.1"
    health_port: int = 0  # /healthz and /metrics on this port; 0: not served
    max_response_bytes: int = 64 * 1024  # a plug answer past this is abandoned as garbage
    max_clock_skew_s: float = 120.0  # a command issued further than this in our future is refused
    memory_buffer_max_bytes: int = 8 * 1024 * 1024  # batches held in memory while the disk refuses them
    # A command result is flushed (with the readings so far) at most this long after it arrived,
    # instead of waiting for the flush interval; the results of a burst of commands share one batch.
    result_flush_ms: int = 500
    # Networks discovery may probe (CIDR). Empty: the directly connected IPv4 subnets of the
    # interfaces in use; loopback, link-local and public addresses only if listed here.
    allowed_networks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.site_id:
            raise ConfigError("agent.site_id is required")
        validate_site_id(self.site_id)
        positive = {
            "poll_interval_s": self.poll_interval_s,
            "flush_interval_s": self.flush_interval_s,
            "max_batch_readings": self.max_batch_readings,
            "spool_max_bytes": self.spool_max_bytes,
            "command_lifetime_s": self.command_lifetime_s,
            "request_timeout_s": self.request_timeout_s,
            "max_backoff_s": self.max_backoff_s,
            "offline_after_failures": self.offline_after_failures,
            "publish_timeout_s": self.publish_timeout_s,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "heartbeat_max_age_s": self.heartbeat_max_age_s,
            "max_response_bytes": self.max_response_bytes,
            "max_clock_skew_s": self.max_clock_skew_s,
            "memory_buffer_max_bytes": self.memory_buffer_max_bytes,
            "result_flush_ms": self.result_flush_ms,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"agent.{key} must be positive, got {value}")
        if not 0 <= self.health_port < 65536:
            raise ConfigError(f"agent.health_port must be in 0..65535, got {self.health_port}")
        validate_shard(self.shard, "agent.shard")
        if not 0 <= self.poll_jitter < 1:
            raise ConfigError(f"agent.poll_jitter must be in [0, 1), got {self.poll_jitter}")
        if not self.command_public_key_files:
            raise ConfigError("agent.command_public_key_files must name at least one key")
        for net in self.allowed_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(
                    f"agent.allowed_networks: {net!r} is not a network (e.g. 192.168.1.0/24)"
                ) from None

    @property
    def state_path(self) -> Path:
        if self.state_dir is None:
            raise ConfigError("agent state_dir is not resolved")
        return self.state_dir


def agent_settings(config: Config) -> AgentSettings:
    """The ``[agent]`` table with relative key paths resolved against the config file's directory."""
    settings = config.section("agent", AgentSettings)
    base = config.source.parent if config.source is not None else Path.cwd()

    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else (base / path)

    return dataclasses.replace(
        settings,
        agent_key_file=resolve(settings.agent_key_file),
        command_public_key_files=[resolve(p) for p in settings.command_public_key_files],
        state_dir=resolve(settings.state_dir) if settings.state_dir is not None else config.state_dir,
    )
