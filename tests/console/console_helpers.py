"""Console test helpers: a `chargectl run` config with its health server on a free port, starting it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backends
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
from e2e_helpers import CHARGECTL, PRICE_PER_KWH, _kill, _spawn, wait_for, write_run_config

__all__ = [
    "CHARGECTL",
    "CHROMIUM_ARGS",
    "PRICE_PER_KWH",
    "RunningSystem",
    "_kill",
    "_spawn",
    "start_run",
    "wait_for",
    "write_config",
]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class RunningSystem:
    url: str
    cfg: Path
    log: Path
    plugs: list[dict[str, Any]]

    def control(self, mac: str) -> httpx.Client:
        plug = next(p for p in self.plugs if p["mac"] == mac)
        return httpx.Client(base_url=f"http://{plug['host']}:{plug['port']}/__sim", timeout=5)


def write_config(
    tmp: Path, plugs: list[dict[str, Any]], port: int, host: str = "127.0.0.1", token: str = ""
) -> Path:
    return write_run_config(
        tmp,
        plugs,
        'site_id = "console-site"\nsite_name = "Console test car park"\n'
        f'tariff = "price_per_kwh_minor={PRICE_PER_KWH},session_fee_minor=25,min_start_balance_minor=100,'
        'currency=gbp"\n',
        extra=f'\n[console]\ntoken = "{token}"\nchart_step_s = 1\nchart_window_s = 120\nrefresh_s = 1.0\n',
        hub=f'health_host = "{host}"\nhealth_port = {port}\n',
    )


def start_run(
    tmp: Path, plugs: list[dict[str, Any]], host: str = "127.0.0.1", token: str = ""
) -> tuple[Any, RunningSystem]:
    port = backends.free_port()
    cfg = write_config(tmp, plugs, port, host, token)
    log = tmp / "run.log"
    proc = _spawn(["--config", str(cfg), "run"], dict(os.environ), log)
    system = RunningSystem(f"http://127.0.0.1:{port}", cfg, log, plugs)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError("chargectl run exited: " + log.read_text()[-2000:])
        try:
            return httpx.get(system.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the hub's health server", healthy)
    return proc, system
