"""``chargectl config``: show the effective configuration (file + environment); check every table."""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from chargectl.common.config import Config

__all__ = ["SECTIONS", "check_config", "register"]

# Every table chargectl reads, and the settings class that validates it (module, class). A command that
# adds a table adds it here, so `config check` (and `config show`) refuse what its service would.
SECTIONS: dict[str, tuple[str, str]] = {
    "agent": ("chargectl.services.agent.settings", "AgentSettings"),
    "hub": ("chargectl.services.hub.settings", "HubSettings"),
    "run": ("chargectl.services.allinone", "RunSettings"),
    "payments": ("chargectl.services.payments.settings", "PaymentsSettings"),
    "provision": ("chargectl.provisioner.wiring", "ProvisionSettings"),
    "influx": ("chargectl.services.adapters.influx_sink", "InfluxSettings"),
    "secrets": ("chargectl.services.adapters.secrets", "SecretsSettings"),
    "logging": ("chargectl.common.logging", "LoggingSettings"),
    "alerts": ("chargectl.services.alerting", "AlertSettings"),
    "console": ("chargectl.services.console.settings", "ConsoleSettings"),
    "app": ("chargectl.services.app.settings", "AppSettings"),
}


def check_config(cfg: Config) -> list[str]:
    """Build every table present in ``cfg`` with its settings class; the tables checked, in order.

    Raises the first :class:`ConfigError` (naming the table and key, with the nearest known name for
    a misspelt one).
    """
    from chargectl.common.config import build, suggest
    from chargectl.common.errors import ConfigError

    checked = []
    for name in sorted(cfg.sections):
        if name not in SECTIONS:
            raise ConfigError(f"unknown config table [{name}]; {suggest(name, SECTIONS, 'known tables')}")
        module, cls_name = SECTIONS[name]
        cls: Any = getattr(importlib.import_module(module), cls_name)
        raw = cfg.sections[name]
        if name == "agent" and "site_id" not in raw and cfg.backend == "local":
            # `chargectl run` gives its agent the [run] site id.
            raw = {**raw, "site_id": str(cfg.sections.get("run", {}).get("site_id", "local-site"))}
        build(cls, raw, prefix=name)
        checked.append(name)
    return checked


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect and check configuration.", no_args_is_help=True)

    @group.command("show")
    def show(
        ctx: typer.Context,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Print the effective root configuration and which tables are present (after checking them)."""
        cfg = ctx.obj.config()
        check_config(cfg)
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

    @group.command("check")
    def check(
        ctx: typer.Context,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Validate every table of the config (file + environment) as the services will; exit 1 with
        the first problem (a misspelt key or table gets the nearest known name)."""
        cfg = ctx.obj.config()
        checked = check_config(cfg)
        source = str(cfg.source) if cfg.source else None
        if as_json:
            typer.echo(json.dumps({"ok": True, "source": source, "checked": checked}))
        else:
            tables = ", ".join(f"[{n}]" for n in checked) or "no tables"
            typer.echo(f"config ok: {source or 'defaults and environment'} ({tables})")

    app.add_typer(group, name="config")
