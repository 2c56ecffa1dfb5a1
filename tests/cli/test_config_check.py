"""``config check`` validates every table as the services will, and names the nearest key for a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chargectl.cli.commands.config import SECTIONS

CHARGECTL = str(Path(sys.executable).parent / "chargectl")


def check(tmp_path: Path, text: str, *extra: str, command: str = "check") -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGECTL_")}
    return subprocess.run(
        [CHARGECTL, "config", command, "--config", str(cfg), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[hub]\ntick_interval_s = "fast"\n', "hub.tick_interval_s: expected a number, got 'fast'"),
        (
            "[hub]\ntick_intervl_s = 1\n",
            "unknown config key [hub] 'tick_intervl_s'; did you mean 'tick_interval_s'?",
        ),
        ("[hub]\nhealth_prot = 1\n", "unknown config key [hub] 'health_prot'; did you mean 'health_port'?"),
        ("[hubb]\nshard = 1\n", "unknown config table [hubb]; did you mean 'hub'?"),
        ('backnd = "gcp"\n', "unknown config key 'backnd'; did you mean 'backend'?"),
        (
            '[logging]\nformat = "xml"\n',
            "logging.format: must be one of 'auto', 'rich', 'text', 'json', got 'xml'",
        ),
        ('[payments]\nwebhook_port = "x"\n', "payments.webhook_port: expected an integer, got 'x'"),
        ("[agent]\npoll_interval_s = -1\n", "agent.poll_interval_s must be positive, got -1.0"),
        ('[hub.plug_classes.ev]\nstop_w = "low"\n', "hub.plug_classes.ev.stop_w"),
        ("[alerts]\nmax_per_kind = 0\n", "alerts.max_per_kind must be positive, got 0"),
        ("[console]\nrefresh_s = 10\n", "console: refresh_s must be between 0.2 and 2"),
        ('[app]\nallowed_origins = ["ftp://x"]\n', "app.allowed_origins"),
        # TOML has nan and inf: nan passes every "> 0" check, inf means never (no poll, no timeout).
        ("[hub]\nmax_clock_skew_s = nan\n", "hub.max_clock_skew_s: expected a finite number, got nan"),
        ("[agent]\npoll_interval_s = inf\n", "agent.poll_interval_s: expected a finite number, got inf"),
    ],
)
def test_a_bad_table_is_refused_by_key(tmp_path: Path, text: str, message: str) -> None:
    # `config show` checks through the same code (check_config): two of the cases run it as well.
    for command in ("check", "show") if "tick_intervl_s" in text or "[alerts]" in text else ("check",):
        proc = check(tmp_path, text, command=command)
        assert proc.returncode == 1, (command, proc.stdout)
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: {message}"), line


def test_a_config_using_every_table_passes(tmp_path: Path) -> None:
    text = """
backend = "local"
[agent]
poll_interval_s = 2.0
[hub]
tick_interval_s = 0.5
[hub.plug_classes.ebike]
stop_w = 20
[run]
site_id = "car-park"
[payments]
currency = "eur"
[provision]
grace_s = 60
[influx]
url = "http://127.0.0.1:8428"
[secrets]
transport = "rest"
[logging]
format = "json"
[alerts]
min_severity = "critical"
webhooks = [{ url = "http://127.0.0.1:9/hook", format = "slack", name = "ops" }]
[console]
refresh_s = 1.0
[app]
project_id = "demo-project"
allowed_origins = ["https://app.example.com"]
"""
    proc = check(tmp_path, text, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["checked"] == sorted(SECTIONS)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_number_from_the_environment_is_refused(tmp_path: Path, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGECTL_")}
    env["CHARGECTL_APP__READ_TIMEOUT_S"] = value
    proc = subprocess.run([CHARGECTL, "config", "check"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: app.read_timeout_s: expected a finite number"), line
