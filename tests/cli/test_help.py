"""Help is plain text: ``[section]`` names survive rich, metavars are plain, ``hub --help`` says how to run it."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from chargectl.cli.app import app

runner = CliRunner()


def _commands() -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        out.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return out


COMMANDS = _commands()
SECTION = re.compile(r"\\?\[([a-z_.]+)\]")


def _help(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def _declared_sections(path: tuple[str, ...]) -> set[str]:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    return {m for text in texts for m in SECTION.findall(text)} - {"required", "default"}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "root")
def test_help_keeps_section_names_and_shows_plain_metavars(path: tuple[str, ...]) -> None:
    text = _help(path)
    for section in _declared_sections(path):
        assert f"[{section}]" in text, f"[{section}] lost from {' '.join(path)} --help"
    assert not re.search(r"<(bool|str|int|float|path|list\[[^>]*\])>", text), text


def test_sections_the_issue_named_are_visible() -> None:
    assert "[hub] health_host" in _help(("hub",))
    assert "[provision] grace_s" in _help(("provision", "rotate-keys"))
    assert "[run] site_id" in _help(("run",)) and "[agent] plugs" in _help(("run",))
    assert "[payments] webhook_port" in _help(("payments", "webhook"))


def test_hub_help_says_a_bare_hub_runs_it() -> None:
    assert 'A bare "chargectl hub" runs it' in " ".join(_help(("hub",)).split())


def test_flags_show_no_type() -> None:
    line = next(line for line in _help(("config", "show")).splitlines() if "--json" in line)
    assert "bool" not in line.lower() and "Print JSON." in line
