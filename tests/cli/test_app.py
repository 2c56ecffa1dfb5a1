"""The CLI shell: help, version, the single error boundary, and a light import graph for --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from chargectl import __version__
from chargectl.cli.app import app

runner = CliRunner()
CHARGECTL = str(Path(sys.executable).parent / "chargectl")


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "config" in result.output and "--config" in result.output and "--verbose" in result.output


def test_version() -> None:
    result = subprocess.run([CHARGECTL, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == f"chargectl {__version__}"


def test_config_error_is_one_red_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('backend = "cloud"\n')
    result = subprocess.run(
        [CHARGECTL, "--config", str(bad), "config", "show"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: backend: must be one of 'local', 'gcp', got 'cloud'"
    ]
    assert "Traceback" not in result.stderr


def test_usage_error_exits_2() -> None:
    result = subprocess.run(
        [CHARGECTL, "config", "show", "--bogus"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_config_show_json_reflects_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('project = "p1"\n[agent]\nsite_id = "site-a"\n')
    result = runner.invoke(
        app, ["--config", str(path), "config", "show", "--json"], env={"CHARGECTL_BACKEND": "gcp"}
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["backend"] == "gcp" and data["project"] == "p1" and data["sections"] == ["agent"]


HEAVY = [
    "google",
    "grpc",
    "stripe",
    "zeroconf",
    "httpx",
    "influxdb_client",
    "zstandard",
    "cryptography",
    "aiohttp",
]


def test_help_imports_no_heavy_sdk() -> None:
    """`chargectl --help` stays fast (<0.5 s) because no SDK is imported to build it; timing is in scripts/."""
    code = (
        "import sys\n"
        "from chargectl.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in result.stdout, result.stdout[-500:]
