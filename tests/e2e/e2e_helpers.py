"""Helpers shared by the end-to-end tests: processes in their own groups, polling, a simulated plug."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

CHARGECTL = str(Path(sys.executable).parent / "chargectl")
PRICE_PER_KWH = 10_000  # minor units; high so a few seconds of charging cost whole pennies


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CHARGECTL, *args], stdout=subprocess.PIPE, stderr=open(log, "wb"), env=env, start_new_session=True
    )


def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_for(what: str, fn: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def sim_plug(tmp_path: Path) -> Iterator[dict[str, Any]]:
    proc = _spawn(
        ["sim", "--plugs", "1", "--gen", "2", "--profile", "idle", "--no-mdns", "--json", "--seed", "7"],
        dict(os.environ),
        tmp_path / "sim.log",
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        (plug,) = json.loads(line)["plugs"]
        yield plug
    finally:
        _kill(proc)


def expected_cost(energy_mwh: int) -> int:
    """What ``energy_mwh`` costs at PRICE_PER_KWH, rounded half up once (the tariff rule, done by hand)."""
    return int((Decimal(energy_mwh) * PRICE_PER_KWH / Decimal(1_000_000)).quantize(Decimal(1), ROUND_HALF_UP))


def write_run_config(
    tmp: Path, plugs: list[dict[str, Any]], run: str, extra: str = "", hub: str = ""
) -> Path:
    """A `chargectl run` config for a fast test: the simulated ``plugs`` polled every 0.25 s, a hub that
    ticks every 0.2 s and a generic plug class with short timers. ``run`` is the ``[run]`` table's
    body, ``extra`` more tables (before ``[agent]``), ``hub`` more ``[hub]`` keys."""
    addresses = ", ".join(f'{{ host = "{p["host"]}", port = {p["port"]} }}' for p in plugs)
    cfg = tmp / "chargectl.toml"
    cfg.write_text(f"""
backend = "local"
state_dir = "{tmp / "state"}"
config_dir = "{tmp / "config"}"

[run]
{run}
{extra}
[agent]
discovery = false
plugs = [{addresses}]
poll_interval_s = 0.25
flush_interval_s = 0.5
poll_jitter = 0.0

[hub]
{hub}tick_interval_s = 0.2
request_poll_s = 0.2
checkpoint_interval_s = 5
plug_state_min_interval_s = 0
default_plug_class = "generic"

[hub.plug_classes.generic]
start_confirm_s = 0.5
complete_after_s = 2.0
no_load_timeout_s = 60
stale_after_s = 5
offline_after_s = 10
relay_confirm_s = 5
relay_retry_s = 2
""")
    return cfg
