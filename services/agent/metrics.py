"""The agent's ``/metrics`` and ``/healthz``: its health snapshot as Prometheus families (the same names
whether the agent runs alone, served on ``[agent] health_port``, or inside ``chargectl run``, where they
join the hub's registry)."""

from __future__ import annotations

from collections.abc import Callable

from chargectl.common.errors import ConfigError
from chargectl.services.agent.health import AgentHealth
from chargectl.services.hub.health import HealthServer, Metrics

__all__ = ["agent_problems", "instrument_agent", "start_agent_health"]

# family -> how to read it from a health snapshot
_FAMILIES: dict[str, Callable[[AgentHealth], float]] = {
    "agent_plugs_known": lambda h: h.plugs_known,
    "agent_plugs_online": lambda h: h.plugs_online,
    "agent_link_up": lambda h: 1.0 if h.link_up else 0.0,
    "agent_commands_subscribed": lambda h: 1.0 if h.commands_subscribed else 0.0,
    "agent_batch_seq": lambda h: h.batch_seq,
    "agent_spooled_batches": lambda h: h.spooled_batches,
    "agent_spooled_bytes": lambda h: h.spooled_bytes,
    "agent_buffered_readings": lambda h: h.buffered_readings,
    "agent_published_batches_total": lambda h: h.published_batches,
    "agent_dropped_batches_total": lambda h: h.dropped_batches,
    "agent_dropped_readings_total": lambda h: h.dropped_readings,
    "agent_last_publish_timestamp_seconds": lambda h: h.last_publish_ms / 1000,
}


def instrument_agent(metrics: Metrics, site_id: str, health: Callable[[], AgentHealth]) -> None:
    """Export ``health()`` (the agent's snapshot) on ``metrics``, labelled with the site."""
    key = (("site", site_id),)
    metrics.gauge_probe("agent_up", lambda: {key: 1.0})

    def probe(read: Callable[[AgentHealth], float]) -> Callable[[], dict[tuple[tuple[str, str], ...], float]]:
        return lambda: {key: float(read(health()))}

    for name, read in _FAMILIES.items():
        metrics.gauge_probe(name, probe(read))


def agent_problems(h: AgentHealth) -> list[str]:
    """Why the agent is not healthy (empty: healthy)."""
    problems = []
    if not h.link_up:
        problems.append("no link to the bus: batches are spooled")
    if not h.commands_subscribed:
        problems.append("not subscribed to relay commands")
    if h.plugs_known and not h.plugs_online:
        problems.append(f"none of {h.plugs_known} plugs answers")
    return problems


async def start_agent_health(
    site_id: str, health: Callable[[], AgentHealth], host: str, port: int
) -> HealthServer:
    """Serve the agent's /healthz and /metrics on ``host:port`` (returns the started server)."""
    metrics = Metrics()
    instrument_agent(metrics, site_id, health)
    server = HealthServer(metrics, lambda: agent_problems(health()), host, port)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot serve the agent's /healthz on {host}:{port} ([agent] health_port): {exc.strerror or exc}"
        ) from None
    return server
