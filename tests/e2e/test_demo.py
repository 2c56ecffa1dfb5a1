"""`chargectl demo` runs the whole system with simulated plugs and drivers, bills what it charges, and
stops cleanly on Ctrl-C with its summary."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import CHARGECTL, wait_for


def _charged_and_completed(console: str) -> list[dict[str, Any]]:
    """The sessions the console lists as completed with energy charged (not, say, a no-load timeout)."""
    try:
        sessions = httpx.get(f"{console}api/sessions", timeout=5).json()["sessions"]
    except httpx.HTTPError:
        return []
    return [s for s in sessions if s["status"] == "completed" and s["energy_mwh"] > 0]


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_demo_bills_its_sessions_exactly_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """One demo run: once its console shows a completed session that charged, Ctrl-C. It exits 0 without a
    traceback, and its summary shows every completed session debited once by exactly its cost and
    balances equal to the ledger. (Ending by itself after --duration: tests/agent/test_agent_stop.py.)"""
    err = tmp_path / "demo.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [
                CHARGECTL,
                "demo",
                "--plugs",
                "3",
                "--speed",
                "900",
                "--json",
                "--seed",
                "5",
                "--console-port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            start_new_session=True,
        )
    try:
        console = wait_for(
            "the console's address",
            lambda: (m := re.search(r"operator console: (\S+)", err.read_text())) and m.group(1),
        )
        wait_for("a completed session that charged", lambda: _charged_and_completed(console))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.read_text()
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["requests"] >= 1
    assert summary["completed"] >= 1 and summary["energy_kwh"] > 0
    # every completed session was debited once, by exactly its cost
    assert summary["debits"] == summary["completed"]
    assert summary["debited_minor"] == summary["billed_minor"] > 0
    # balances are the ledger: top-ups minus debits
    assert sum(summary["balances_minor"].values()) == summary["ledger_total_minor"]
    assert "Traceback" not in stderr
