"""`chargectl demo` runs the whole system with simulated plugs and drivers, and bills what it charges."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHARGECTL = str(Path(sys.executable).parent / "chargectl")


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_demo_sessions_complete_and_are_billed_exactly() -> None:
    out = subprocess.run(
        [CHARGECTL, "demo", "--plugs", "3", "--speed", "900", "--duration", "22", "--json", "--seed", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["requests"] >= 1
    assert summary["completed"] >= 1 and summary["energy_kwh"] > 0
    # every completed session was debited once, by exactly its cost
    assert summary["debits"] == summary["completed"]
    assert summary["debited_minor"] == summary["billed_minor"] > 0
    # balances are the ledger: top-ups minus debits
    assert sum(summary["balances_minor"].values()) == summary["ledger_total_minor"]
    assert "Traceback" not in out.stderr


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_demo_stops_cleanly_on_ctrl_c() -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [CHARGECTL, "demo", "--plugs", "2", "--speed", "600", "--json", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(8)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["debited_minor"] == summary["billed_minor"]
    assert "Traceback" not in err
