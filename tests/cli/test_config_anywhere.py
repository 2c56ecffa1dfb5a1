"""``chargectl --config F CMD`` and ``chargectl CMD --config F``: one mechanism for every command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from chargectl.cli.app import app

CHARGECTL = str(Path(sys.executable).parent / "chargectl")


def _walk(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        out.extend(_walk(sub, (*path, name)))
    return out


def test_every_command_and_group_takes_config() -> None:
    root = typer.main.get_command(app)
    commands = _walk(root)
    assert len(commands) > 20
    for path, command in commands:
        opts = [o for p in command.params for o in getattr(p, "opts", ())]
        assert "--config" in opts, " ".join(path)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHARGECTL, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def hub_toml(tmp_path: Path) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text('backend = "gcp"\nproject = "p-late"\n[hub]\nhealth_port = 1\n')
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{cfg}", "config", "show", "--json"],
        ["config", "--config", "{cfg}", "show", "--json"],
        ["config", "show", "--config", "{cfg}", "--json"],
        ["config", "show", "--json", "-c", "{cfg}"],
    ],
)
def test_config_is_read_wherever_the_option_stands(hub_toml: Path, argv: list[str]) -> None:
    proc = _run(*(a.replace("{cfg}", str(hub_toml)) for a in argv))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["source"], data["project"], data["backend"]) == (str(hub_toml), "p-late", "gcp")


def test_the_later_config_wins(hub_toml: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('project = "p-early"\n')
    proc = _run("--config", str(other), "config", "show", "--config", str(hub_toml), "--json")
    assert json.loads(proc.stdout)["project"] == "p-late"


def test_hub_check_after_the_subcommand_asks_the_configured_port(hub_toml: Path) -> None:
    """Port 1 (nothing listens there): proves the file after ``check`` was the one read."""
    proc = _run("hub", "check", "--config", str(hub_toml), "--json", "--timeout", "2")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["url"] == "http://127.0.0.1:1/healthz"


@pytest.mark.parametrize("command", [["hub"], ["run"], ["agent"], ["hub", "check"], ["plugs"]])
def test_a_bad_config_after_a_long_running_command_is_one_error_line(
    tmp_path: Path, command: list[str]
) -> None:
    """The shipped hub unit's form (``chargectl hub --config F``) reads F: a bad F is refused by key."""
    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "cloud"\n')
    proc = _run(*command, "--config", str(bad))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: backend: must be one of 'local', 'gcp', got 'cloud'"]


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    proc = _run("hub", "--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: config file not found: {tmp_path / 'nope.toml'}"
