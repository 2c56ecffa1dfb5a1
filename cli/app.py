"""The ``chargectl`` typer app and its single error boundary.

Command groups live in ``cli/commands/<group>.py``, each exposing ``register(app)``; the list below
names them. Modules import their heavy dependencies inside the command functions so that
``chargectl --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chargectl import __version__
from chargectl.common.errors import ChargectlError

__all__ = ["COMMAND_MODULES", "State", "app", "main"]

# One entry per command group module under chargectl.cli.commands (each has ``register(app)``).
COMMAND_MODULES: list[str] = [
    "config",
    "provision",
    "session",
    "plugs",
    "ledger",
    "payments",
    "app",
    "discover",
    "relay",
    "sim",
    "agent",
    "run",
    "demo",
    "hub",
]

app = typer.Typer(
    name="chargectl",
    help="Operate a pay-per-use charging network built from Shelly smart plugs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class State:
    """What the global options decided; commands read it from ``ctx.obj``."""

    def __init__(self, config_path: Path | None, verbose: int) -> None:
        self.config_path = config_path
        self.verbose = verbose

    def config(self) -> Any:
        """The loaded root :class:`~chargectl.common.config.Config` (file + ``CHARGECTL_*`` env)."""
        from chargectl.common.config import load_config

        return load_config(self.config_path, os.environ)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chargectl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML config file (default: $CHARGECTL_CONFIG).", show_default=False
        ),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (repeatable).")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    from chargectl.common.logging import setup_logging

    setup_logging(verbose)
    ctx.obj = State(config, verbose)


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"chargectl.cli.commands.{name}")
        module.register(app)


_register()


def error_line(message: str) -> None:
    """Print one red error line to stderr."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {message}", markup=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app; a ``ChargectlError`` becomes one line and its exit code.

    Usage errors are click's (exit 2); anything that is not a ``ChargectlError`` is a bug and keeps its
    traceback.
    """
    try:
        app(args=argv, prog_name="chargectl", standalone_mode=True)
    except ChargectlError as exc:
        from rich.markup import escape

        error_line(escape(str(exc)))
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
