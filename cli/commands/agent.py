"""``chargectl agent``: run the site agent; ``chargectl agent check``: is it alive (heartbeat)?"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chargectl.common.config import Config

if TYPE_CHECKING:
    from rich.table import Table

    from chargectl.services.agent import Agent

__all__ = ["live_view", "register", "status_table"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (overrides the global --config).", show_default=False
    ),
]


def _config(ctx: typer.Context, path: Path | None) -> Config:
    if path is not None:
        ctx.obj.config_path = path
    cfg: Config = ctx.obj.config()
    return cfg


def status_table(agent: Agent) -> Table:
    """The live view: one row per plug and a caption with the link and spool state."""
    from rich.table import Table

    health = agent.health()
    link = "up" if health.link_up else "DOWN"
    table = Table(
        title=f"site {health.site_id}: {health.plugs_online}/{health.plugs_known} plugs online",
        caption=(
            f"link {link} · batch_seq {health.batch_seq} · published {health.published_batches} · "
            f"spooled {health.spooled_batches} ({health.spooled_bytes} B) · dropped {health.dropped_batches} · "
            f"buffered {health.buffered_readings}"
        ),
    )
    for column in ("plug", "address", "state", "polls", "failures", "last error"):
        table.add_column(column)
    for mac in sorted(agent.plugs):
        st = agent.plug_status(mac)
        table.add_row(
            mac,
            f"{st.host}:{st.port}",
            "online" if st.online else "offline",
            str(st.polls),
            str(st.failures),
            st.last_error[:60],
        )
    return table


async def live_view(agent: Agent) -> None:
    import asyncio

    from rich.console import Console
    from rich.live import Live

    with Live(status_table(agent), console=Console(stderr=True), refresh_per_second=2) as live:
        while True:
            await asyncio.sleep(1.0)
            live.update(status_table(agent))


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The site agent: polls the site's plugs, publishes telemetry, executes relay commands.",
        invoke_without_command=True,
    )

    @group.callback()
    def run(ctx: typer.Context, config: ConfigOption = None) -> None:
        """Run the agent until SIGINT/SIGTERM (systemd: see scripts/systemd/chargectl-agent.service).

        The Shelly password, if the plugs have one, comes from CHARGECTL_SHELLY_PASSWORD.
        """
        if ctx.invoked_subcommand is not None:
            if config is not None:
                ctx.obj.config_path = config
            return
        from chargectl.services.agent import build_agent

        cfg = _config(ctx, config)
        agent = build_agent(cfg, shelly_password=os.environ.get("CHARGECTL_SHELLY_PASSWORD") or None)
        # A live table only for a person at a terminal; under systemd (no TTY) just the log lines.
        agent.run(live_view if sys.stderr.isatty() else None)

    @group.command("check")
    def check(
        ctx: typer.Context,
        config: ConfigOption = None,
        max_age_s: Annotated[
            float | None,
            typer.Option(
                "--max-age", help="Seconds a heartbeat stays fresh (default: agent.heartbeat_max_age_s)."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the heartbeat as JSON.")] = False,
    ) -> None:
        """Exit 0 if the agent's heartbeat is fresh and reports no problem, 1 if it is stale, missing or
        reports one (a disk that refuses the spool or the journal, named in the message)."""
        import dataclasses
        import time

        from chargectl.services.agent import agent_settings, check_heartbeat

        cfg = _config(ctx, config)
        settings = agent_settings(cfg)
        limit = max_age_s if max_age_s is not None else settings.heartbeat_max_age_s
        status = check_heartbeat(settings.state_path / "agent.heartbeat.json", int(time.time() * 1000), limit)
        if as_json:
            data = {
                "fresh": status.fresh,
                "ok": status.ok,
                "problems": list(status.problems),
                "message": status.message,
                "health": dataclasses.asdict(status.health) if status.health else None,
            }
            typer.echo(json.dumps(data, indent=2))
        else:
            typer.echo(status.message)
        raise typer.Exit(0 if status.ok else 1)

    app.add_typer(group, name="agent")
