"""The agent's health snapshot and heartbeat file (what ``chargectl agent check`` reads)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from chargectl.common.errors import StoreError
from chargectl.services.agent.durable import write_atomic

__all__ = ["AgentHealth", "HeartbeatStatus", "check_heartbeat", "write_heartbeat"]


@dataclass(frozen=True)
class AgentHealth:
    """What an operator (or systemd, or a test) wants to know about a running agent."""

    site_id: str
    at_ms: int
    plugs_known: int
    plugs_online: int
    link_up: bool
    commands_subscribed: bool
    batch_seq: int
    spooled_batches: int
    spooled_bytes: int
    dropped_batches: int
    dropped_readings: int
    buffered_readings: int
    published_batches: int
    last_publish_ms: int
    # Fields below have defaults so a heartbeat written by an older agent still reads.
    bad_responses: int = 0  # plug answers that were not a valid reading (garbage, huge, wrong MAC)
    task_restarts: int = 0  # plug tasks restarted after an unexpected error
    disk_error: str = ""  # why the spool/journal cannot be written right now ("" when it can)
    memory_batches: int = 0  # batches held in memory because the disk refused them
    refused_devices: int = 0  # devices refused as impostors or MAC mismatches
    epoch: int = 0  # this agent instance's id (made with its state directory)


@dataclass(frozen=True)
class HeartbeatStatus:
    fresh: bool
    message: str
    health: AgentHealth | None = None
    problems: tuple[str, ...] = ()  # what a fresh heartbeat reports as wrong (the disk, …)

    @property
    def ok(self) -> bool:
        return self.fresh and not self.problems


HEARTBEAT_BYTES = 4096  # padded to this, so it can be rewritten in place when the disk is full


def write_heartbeat(path: Path, health: AgentHealth) -> None:
    """Write the heartbeat atomically; if the disk refuses (full), overwrite the old one in place.

    The file is padded to ``HEARTBEAT_BYTES`` so an in-place rewrite needs no new disk blocks: a full
    disk is then still reported in the heartbeat instead of silencing it.
    """
    text = json.dumps(dataclasses.asdict(health), sort_keys=True)
    data = (text + " " * max(0, HEARTBEAT_BYTES - len(text) - 1) + "\n").encode()
    try:
        write_atomic(path, data)
    except StoreError:
        try:
            with open(path, "r+b") as fh:
                if os.fstat(fh.fileno()).st_size < len(data):
                    raise
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            raise StoreError(f"cannot write heartbeat {path}") from None


def check_heartbeat(path: Path, now_ms: int, max_age_s: float) -> HeartbeatStatus:
    """Whether the heartbeat at ``path`` was written within ``max_age_s`` of ``now_ms``."""
    try:
        data = json.loads(path.read_text())
        health = AgentHealth(**data)
    except FileNotFoundError:
        return HeartbeatStatus(False, f"no heartbeat at {path}: the agent has not run")
    except (OSError, ValueError, TypeError) as exc:
        return HeartbeatStatus(False, f"heartbeat {path} is unreadable: {exc}")
    age_s = (now_ms - health.at_ms) / 1000
    if age_s < -max_age_s:
        # Written "later" than now: the clock stepped back since. A live agent writes a new one within
        # its interval; one that does not is as dead as a stale one (a step must not hide it for hours).
        return HeartbeatStatus(
            False,
            f"heartbeat is {-age_s:.0f}s in the future (limit {max_age_s:.0f}s): the clock stepped back"
            " and the agent has not written one since",
            health,
        )
    if age_s > max_age_s:
        return HeartbeatStatus(False, f"heartbeat is {age_s:.0f}s old (limit {max_age_s:.0f}s)", health)
    state = "link up" if health.link_up else "link DOWN"
    problems: list[str] = []
    if health.disk_error:
        problems.append(f"DISK: {health.disk_error} ({health.memory_batches} batches held in memory)")
    message = (
        f"agent for {health.site_id} alive ({age_s:.0f}s ago): {health.plugs_online}/{health.plugs_known} "
        f"plugs online, {state}, {health.spooled_batches} batches spooled"
    )
    if problems:
        message += "; " + "; ".join(problems)
    return HeartbeatStatus(True, message, health, tuple(problems))
