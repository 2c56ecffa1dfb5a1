"""``chargectl hub``: the hub alone on the distributed backends; ``hub check`` asks its health endpoint."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help=(
            'The hub on Pub/Sub, Firestore and InfluxDB (backend = "gcp"). A bare "chargectl hub" runs it '
            'until SIGINT/SIGTERM (health on [hub] health_host:health_port); "hub check" asks that endpoint.'
        ),
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @group.callback()
    def run(ctx: typer.Context) -> None:
        """Run the hub until SIGINT/SIGTERM: telemetry in, commands out, sessions, billing, health on
        [hub] health_host:health_port (/healthz, /metrics)."""
        if ctx.invoked_subcommand is not None:
            return
        from chargectl.common.logging import setup_logging
        from chargectl.services.hub.cloud import build_cloud_hub

        setup_logging(ctx.obj.verbose)
        # With a Stripe key the hub runs the auto top-up check after each debit (else the app's sweep).
        build_cloud_hub(ctx.obj.config(), stripe_api_key=os.environ.get("STRIPE_API_KEY", "")).run()

    @group.command("check")
    def check(
        ctx: typer.Context,
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.1, help="Seconds to wait for an answer.")
        ] = 5.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Exit 0 if the running hub reports healthy on its /healthz, 1 otherwise (with the problems)."""
        from chargectl.services.health_probe import health_url, probe_health
        from chargectl.services.hub.settings import HubSettings

        settings = HubSettings.from_mapping(ctx.obj.config().sections.get("hub"))
        health = probe_health(health_url(settings.health_host, settings.health_port), timeout)
        ok = health.ok
        if as_json:
            typer.echo(json.dumps(health.to_dict()))
        else:
            typer.echo("hub healthy" if ok else "hub unhealthy: " + "; ".join(health.problems))
        raise typer.Exit(0 if ok else 1)

    app.add_typer(group, name="hub")
