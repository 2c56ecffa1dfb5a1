"""``chargectl plugs``: the live state of every plug, as the hub mirrors it to the store."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("plugs")
    def plugs(
        ctx: typer.Context,
        site: Annotated[str | None, typer.Option("--site", help="Only this site's plugs.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Show every plug's state, power, energy counter and open session."""
        from chargectl.common import codec
        from chargectl.services.wiring import open_store

        store = open_store(ctx.obj.config())
        try:
            states = store.list_plug_states(site)
        finally:
            store.close()
        if as_json:
            from chargectl.cli.output import document

            typer.echo(json.dumps([document(s) for s in states], indent=2))
            return
        from rich.table import Table

        from chargectl.cli.output import id_column, print_table

        table = Table(title="Plugs")
        id_column(table, "plug")
        id_column(table, "site")
        for col in ("state", "relay", "power W", "counter kWh"):
            table.add_column(col)
        id_column(table, "session")
        table.add_column("updated")
        for s in states:
            table.add_row(
                s.plug_mac,
                s.site_id,
                codec.PlugStatus.Name(s.status).removeprefix("PLUG_STATUS_"),
                "on" if s.relay_on else "off",
                f"{s.power_w:.1f}",
                f"{s.energy_counter_mwh / 1e6:.3f}",
                s.session_id,
                time.strftime("%H:%M:%S", time.localtime(s.updated_at_ms / 1000)),
            )
        print_table(table)
