"""``chargectl discover``: find Shelly plugs on the LAN by mDNS, confirmed by ``GET /shelly``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("discover")
    def discover(
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.5, help="Seconds to listen for advertisements.")
        ] = 5.0,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print a JSON list instead of a table.")
        ] = False,
        interface: Annotated[
            list[str] | None,
            typer.Option(
                "--interface",
                help="Interface name (e.g. wlan0) or its IPv4 address (repeatable; default all).",
            ),
        ] = None,
    ) -> None:
        """List Shelly plugs: MAC, name, model, generation, firmware, address, auth, switchable."""
        import asyncio

        from rich.console import Console

        from chargectl.shelly.discovery import discover_once

        if as_json:
            plugs = asyncio.run(discover_once(timeout, interface or None))
            keys = ("mac", "gen", "model", "firmware", "host", "port", "auth", "switchable", "name")
            typer.echo(json.dumps([{k: p.as_dict()[k] for k in keys} for p in plugs], indent=2))
            return
        console = Console()
        with console.status(f"listening for Shelly plugs for {timeout:g} s…"):
            plugs = asyncio.run(discover_once(timeout, interface or None))
        if not plugs:
            console.print("no Shelly plugs found")
            return
        from rich.table import Table

        from chargectl.cli.output import id_column, print_table

        table = Table(title=f"{len(plugs)} Shelly plug(s)")
        id_column(table, "MAC")
        for column in ("name", "model", "gen", "firmware"):
            table.add_column(column)
        id_column(table, "address")
        for column in ("auth", "switchable"):
            table.add_column(column)
        for p in plugs:
            table.add_row(
                p.mac,
                p.name or "",
                p.model,
                str(p.gen),
                p.firmware,
                f"{p.host}:{p.port}",
                "yes" if p.auth else "no",
                "yes" if p.switchable else "[yellow]metering only[/]",
            )
        print_table(table)
