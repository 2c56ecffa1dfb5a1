"""``chargectl run``: agent and hub in one process on the embedded backends."""

from __future__ import annotations

import os
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        ctx: typer.Context,
        password: Annotated[
            str | None,
            typer.Option(
                "--password",
                help="Shelly password (default: $CHARGECTL_SHELLY_PASSWORD).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Run a complete single-site system (agent + hub, SQLite, no cloud account) until Ctrl-C.

        The site ([run] site_id, default local-site) is provisioned on first start. Plugs come from
        mDNS discovery and/or the [agent] plugs list; the hub's health endpoint is on [hub] health_port.
        """
        from chargectl.common.logging import setup_logging
        from chargectl.provisioner.local import provision_local_site
        from chargectl.services.allinone import AllInOne

        setup_logging(ctx.obj.verbose)
        system = AllInOne(
            ctx.obj.config(),
            provision_local_site,
            shelly_password=password or os.environ.get("CHARGECTL_SHELLY_PASSWORD"),
        )
        system.run()
