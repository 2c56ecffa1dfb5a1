"""``chargectl agent``: run the site agent; ``chargectl agent check``: is it alive (heartbeat)?"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from chargectl.common.config import Config

__all__ = ["register"]

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
        agent.run()

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
        """Exit 0 if the agent's heartbeat is fresh, 1 if it is stale or missing."""
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
                "message": status.message,
                "health": dataclasses.asdict(status.health) if status.health else None,
            }
            typer.echo(json.dumps(data, indent=2))
        else:
            typer.echo(status.message)
        raise typer.Exit(0 if status.fresh else 1)

    app.add_typer(group, name="agent")
