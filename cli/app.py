"""The ``chargectl`` typer app and its single error boundary.

Command groups live in ``cli/commands/<group>.py``, each exposing ``register(app)``; the list below
names them. Modules import their heavy dependencies inside the command functions so that
``chargectl --help`` stays fast.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
import typer.main

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

CONFIG_HELP = "TOML config file (default: $CHARGECTL_CONFIG)."


class State:
    """What the global options decided; commands read it from ``ctx.obj``."""

    def __init__(self, config_path: Path | None, verbose: int) -> None:
        self.config_path = config_path
        self.verbose = verbose

    def config(self) -> Any:
        """The loaded root :class:`~chargectl.common.config.Config` (file + ``CHARGECTL_*`` env).

        Loading also applies its ``[logging]`` table, so a command that reads its config logs the way
        the config says (``--config`` may come after the command name, after the root set logging up).
        """
        from chargectl.common.config import load_config
        from chargectl.common.logging import LoggingSettings, setup_logging

        cfg = load_config(self.config_path, os.environ)
        setup_logging(
            self.verbose,
            LoggingSettings.from_mapping(cfg.sections.get("logging")),
            journal=bool(os.environ.get("JOURNAL_STREAM")),
        )
        return cfg


def _set_config(ctx: typer.Context, value: Path | None) -> None:
    """``CMD --config F``: the same as ``chargectl --config F CMD`` (the later one wins)."""
    if value is not None and not ctx.resilient_parsing:
        state = ctx.find_object(State)
        if state is not None:
            state.config_path = value


def _config_option() -> Any:
    """The ``--config/-c`` option typer builds for a command, to be copied onto every command."""
    probe = typer.Typer()

    @probe.command()
    def _probe(
        config: Annotated[
            Path | None,
            typer.Option(
                "--config",
                "-c",
                help=CONFIG_HELP,
                show_default=False,
                callback=_set_config,
                expose_value=False,
            ),
        ] = None,
    ) -> None:
        """Only here to build the option."""

    built = typer.main.get_command(probe)
    return built.params[0]


class RootGroup(typer.core.TyperGroup):
    """The root command; what it does to every command below it covers commands added later too:

    - ``--config/-c``: ``chargectl --config F CMD`` and ``chargectl CMD --config F`` (also
      ``chargectl GROUP --config F SUB`` and ``... SUB --config F``);
    - ``--user U`` where a command names a user (old positional and ``--uid`` forms: hidden aliases);
    - help as plain text: ``[section]`` names escaped from rich markup, plain metavars.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        template = _config_option()
        _tidy_help(self)
        stack = list(self.commands.values())
        while stack:
            command = stack.pop()
            if not any("--config" in getattr(p, "opts", ()) for p in command.params):
                command.params.append(copy.copy(template))
            _tidy_help(command)
            _user_option(command)
            stack.extend(getattr(command, "commands", {}).values())

    def get_params(self, ctx: Any) -> list[Any]:
        _tidy_help(self)  # typer adds the completion options after __init__
        params: list[Any] = super().get_params(ctx)
        return params


USER_HELP = "The user's id (their Google identity uid)."


def _user_option(command: Any) -> None:
    """``--user U`` for every command that names a user (one spelling everywhere, as ``session`` has).

    A command declared with a positional ``user``/``uid`` argument or a ``--uid`` option keeps that form
    as a hidden alias: ``--user U`` is rewritten into it before parsing, so the command code is unchanged.
    """
    if getattr(command, "_chargectl_user", False):
        return
    command._chargectl_user = True
    positional = next(
        (p for p in command.params if p.param_type_name == "argument" and p.name in ("user", "uid")), None
    )
    uid_option = next((p for p in command.params if "--uid" in getattr(p, "opts", ())), None)
    if positional is None and uid_option is None:
        return
    if uid_option is not None:
        uid_option.opts = ["--user"]  # shown; --uid is still read (rewritten below)
    else:
        assert positional is not None
        positional.hidden = True
        positional.get_usage_pieces = lambda ctx: []
        positional.metavar = "--user"  # "Missing argument '--user'" when neither form is given
        shown = copy.copy(_config_option())
        shown.name, shown.opts, shown.secondary_opts = "user_shown", ["--user", "-u"], []
        shown.help = (positional.help or USER_HELP) + " Required."
        shown.callback, shown.expose_value = None, False
        shown.display_type_rich = lambda ctx: "TEXT"
        command.params.insert(0, shown)
    original_parse = command.parse_args

    def parse_args(ctx: Any, args: list[str]) -> Any:
        out: list[str] = []
        user: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                out += args[i:]
                break
            name, eq, value = arg.partition("=")
            if name in ("--user", "-u", "--uid") and (positional is not None or name != "-u"):
                if not eq:
                    if i + 1 >= len(args):
                        out.append(arg)  # click reports the missing value
                        break
                    value = args[i + 1]
                    i += 1
                user.append(value)
            else:
                out.append(arg)
            i += 1
        if user:
            out = [user[-1], *out] if positional is not None else ["--user", user[-1], *out]
        return original_parse(ctx, out)

    command.parse_args = parse_args


# Plain metavars in help: what a value looks like, not the Python annotation (``<list[str]>``).
_PLAIN_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH", "datetime": "DATETIME"}


def _plain_metavar(param: Any) -> Callable[[Any], str | None]:
    """A ``display_type_rich`` for ``param``: nothing for a flag, ``TEXT``/``INTEGER``/... or the
    choices otherwise (a repeatable option shows its item type; its help says it repeats)."""
    flag = bool(getattr(param, "is_flag", False) or getattr(param, "count", False))
    original = param.display_type_rich

    def display(ctx: Any) -> str | None:
        if flag:
            return None
        shown: str | None = original(ctx)
        if not shown:
            return shown
        label = shown.strip("<>")
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        if "|" in label or label.endswith(" range"):
            return label.replace(" range", "").upper() if label.endswith(" range") else label
        return _PLAIN_TYPES.get(label, label.upper())

    return display


def _tidy_help(command: Any) -> None:
    """Help text is plain text: ``[hub] grace_s`` must not be eaten as rich markup; plain metavars."""
    from rich.markup import escape

    for attr in ("help", "short_help", "epilog"):
        text = getattr(command, attr, None)
        if isinstance(text, str) and "[" in text and not getattr(command, "_chargectl_escaped", False):
            setattr(command, attr, escape(text))
    command._chargectl_escaped = True
    if not getattr(command, "_chargectl_help_option", False):
        original_help_option = command.get_help_option

        def get_help_option(ctx: Any) -> Any:
            option = original_help_option(ctx)
            if option is not None:
                option.display_type_rich = lambda ctx: None  # a flag: no metavar
            return option

        command.get_help_option = get_help_option
        command._chargectl_help_option = True
    for param in command.params:
        if getattr(param, "_chargectl_tidy", False):
            continue
        text = getattr(param, "help", None)
        if isinstance(text, str) and "[" in text:
            param.help = escape(text)
        if hasattr(param, "display_type_rich"):
            param.display_type_rich = _plain_metavar(param)
        param._chargectl_tidy = True


app = typer.Typer(
    name="chargectl",
    cls=RootGroup,
    help="Operate a pay-per-use charging network built from Shelly smart plugs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chargectl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help=CONFIG_HELP, show_default=False),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (repeatable).")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    from chargectl.common import sdnotify
    from chargectl.common.logging import setup_logging

    setup_logging(verbose, journal=bool(os.environ.get("JOURNAL_STREAM")))
    sdnotify.configure(os.environ.get("NOTIFY_SOCKET"))
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


# Modules that only an extra installs, and that extra (pyproject.toml [project.optional-dependencies]).
EXTRA_FOR_MODULE: dict[str, str] = {
    "zeroconf": "agent",
    "ifaddr": "agent",
    "google.cloud.pubsub": "agent",
    "google.cloud.pubsub_v1": "agent",
    "google.cloud.firestore": "hub",
    "google.cloud.firestore_v1": "hub",
    "google.cloud.secretmanager": "hub",
    "google.cloud.secretmanager_v1": "hub",
    "influxdb_client": "hub",
    "stripe": "payments",
}


def missing_extra(exc: ImportError) -> str | None:
    """The one-line advice for a module an extra would have installed, or None if it is not one."""
    names = [exc.name or ""]
    # The import statement that failed (the innermost frame that is one): ``from google.cloud import
    # firestore`` reports only ``google.cloud`` as the missing name.
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        words = (frame.line or "").replace(",", " ").replace("(", " ").split()
        if words[:1] == ["from"] and len(words) >= 4 and words[2] == "import":
            names += [f"{words[1]}.{w}" for w in words[3:] if w != "as"] + [words[1]]
            break
        if words[:1] == ["import"]:
            names += [w for w in words[1:] if w != "as"]
            break
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            extra = EXTRA_FOR_MODULE.get(".".join(parts[:i]))
            if extra is not None:
                return (
                    f"this command needs the [{extra}] extra (missing module {name}): "
                    f"pip install 'chargectl[{extra}]' (or 'chargectl[all]')"
                )
    if exc.name == "google.cloud":
        return (
            f"this command needs Google Cloud client libraries (missing module {exc.name}): "
            "pip install 'chargectl[all]' (or the [agent], [hub] or [payments] extra it belongs to)"
        )
    return None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app; a ``ChargectlError`` becomes one line and its exit code.

    Usage errors are click's (exit 2); anything that is not a ``ChargectlError`` is a bug and keeps its
    traceback. A module that only an extra installs names the extra to install (exit 1).
    """
    try:
        app(args=argv, prog_name="chargectl", standalone_mode=True)
    except ImportError as exc:
        advice = missing_extra(exc)
        if advice is None:
            raise
        from rich.markup import escape

        error_line(escape(advice))
        sys.exit(1)
    except ChargectlError as exc:
        from rich.markup import escape

        error_line(escape(str(exc)))
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
