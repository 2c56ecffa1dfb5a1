"""``chargectl config``: show the effective configuration (file + environment)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect configuration.", no_args_is_help=True)

    @group.command("show")
    def show(
        ctx: typer.Context,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Print the effective root configuration and which tables are present."""
        cfg = ctx.obj.config()
        data = {
            "source": str(cfg.source) if cfg.source else None,
            "backend": cfg.backend,
            "project": cfg.project,
            "state_dir": str(cfg.state_dir),
            "config_dir": str(cfg.config_dir),
            "sections": sorted(cfg.sections),
        }
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for key, value in data.items():
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
        Console().print(table)

    app.add_typer(group, name="config")
