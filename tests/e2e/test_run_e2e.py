"""`chargectl run` end to end with a simulated plug, everything over real HTTP and real processes:
start request → relay on → charging → completion → relay off → ledger debited by the right amount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import backends
import httpx
import pytest
from e2e_helpers import CHARGECTL, PRICE_PER_KWH, _kill, _spawn, expected_cost, wait_for, write_run_config


def _config(tmp: Path, plug: dict[str, Any], health_port: int | None = None) -> Path:
    # The tests watch the plug's status through its document: written on every change, not once it
    # has held for the 5 s that spare the store in service (the settling has its own hub tests).
    # With a health port, the run also serves the console's live view of the hub there.
    health = f"health_port = {health_port}\n" if health_port is not None else ""
    return write_run_config(
        tmp,
        [plug],
        'site_id = "test-site"\n'
        f'tariff = "price_per_kwh_minor={PRICE_PER_KWH},min_start_balance_minor=100,currency=gbp"\n'
        f"health = {'true' if health_port is not None else 'false'}\n",
        hub="plug_state_settle_s = 0\n" + health,
    )


def energy_mwh(control: httpx.Client) -> int:
    """What the plug's own meter has counted (the simulator's truth)."""
    return int(control.get("/state").json()["energy_mwh"])


def cli(cfg: Path, *args: str) -> Any:
    out = subprocess.run(
        [CHARGECTL, "--config", str(cfg), *args], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "--json" in args else out.stdout


def plug_ready_and_user_funded(cfg: Path) -> None:
    """Wait until the hub reports the plug AVAILABLE, then credit u1 with 50.00 GBP."""
    wait_for(
        "the plug to be AVAILABLE",
        lambda: [p for p in cli(cfg, "plugs", "--json") if p["status"] == "AVAILABLE"],
    )
    cli(cfg, "ledger", "credit", "u1", "50.00", "--reason", "test top-up", "--json")


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_run_charges_and_bills_a_session(tmp_path: Path, sim: dict[str, Any]) -> None:
    cfg = _config(tmp_path, sim)
    control = httpx.Client(base_url=f"http://{sim['host']}:{sim['port']}/__sim", timeout=5)
    mac = sim["mac"]
    run = _spawn(["--config", str(cfg), "run"], dict(os.environ), tmp_path / "run.log")
    try:
        plug_ready_and_user_funded(cfg)
        control.get("/load", params={"w": "2000"})  # a car is plugged in (draws once the relay closes)
        before = control.get("/state").json()
        assert before["relay_on"] is False

        answer = cli(cfg, "session", "start", "--user", "u1", "--plug", mac, "--json")
        assert answer["status"] == "ACCEPTED", answer
        wait_for("the relay to close", lambda: control.get("/state").json()["relay_on"])
        wait_for(
            "CHARGING",
            lambda: [p for p in cli(cfg, "plugs", "--json") if p["status"] == "CHARGING"],
        )
        assert control.get("/state").json()["timer_remaining_s"] is not None  # the dead-man timer is armed
        wait_for("1 Wh charged", lambda: energy_mwh(control) - before["energy_mwh"] >= 1000)
        control.get("/load", params={"w": "0"})  # the car is full
        done = wait_for(
            "the session to complete",
            lambda: [s for s in cli(cfg, "session", "list", "--json") if s["status"] == "COMPLETED"],
        )
        after = control.get("/state").json()
        assert after["relay_on"] is False
        (session,) = done
        truth_energy = after["energy_mwh"] - before["energy_mwh"]
        assert truth_energy > 0
        assert session["energy_mwh"] == truth_energy  # every mWh the plug counted, no more
        assert session["stop_reason"] == "EVDisconnected"
        expected = expected_cost(truth_energy)
        assert session["cost"]["amount_minor"] == expected
        history = cli(cfg, "ledger", "history", "u1", "--json")
        debits = [h for h in history if h["kind"] == "session_debit"]
        assert [d["amount_minor"] for d in debits] == [-expected]
        balance = cli(cfg, "ledger", "balance", "u1", "--json")
        assert balance["balance_minor"] == 5000 - expected
    finally:
        _kill(run, signal.SIGINT)
        control.close()
    assert run.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_sigkill_mid_session_bills_once_and_loses_no_energy(tmp_path: Path, sim: dict[str, Any]) -> None:
    health_port = backends.free_port()
    cfg = _config(tmp_path, sim, health_port)
    control = httpx.Client(base_url=f"http://{sim['host']}:{sim['port']}/__sim", timeout=5)
    mac = sim["mac"]
    run = _spawn(["--config", str(cfg), "run"], dict(os.environ), tmp_path / "run1.log")
    try:
        plug_ready_and_user_funded(cfg)
        control.get("/load", params={"w": "1500"})
        before = control.get("/state").json()
        assert cli(cfg, "session", "start", "--user", "u1", "--plug", mac, "--json")["status"] == "ACCEPTED"
        wait_for(
            "CHARGING",
            lambda: [p for p in cli(cfg, "plugs", "--json") if p["status"] == "CHARGING"],
        )
        wait_for("0.5 Wh charged", lambda: energy_mwh(control) - before["energy_mwh"] >= 500)
    finally:
        _kill(run, signal.SIGKILL)  # no clean shutdown, no final checkpoint
    assert control.get("/state").json()["relay_on"] is True  # the plug charges on while the hub is dead
    at_kill = energy_mwh(control)
    wait_for("0.5 Wh charged with the hub dead", lambda: energy_mwh(control) - at_kill >= 500)
    restarted_ms = int(time.time() * 1000)
    run = _spawn(["--config", str(cfg), "run"], dict(os.environ), tmp_path / "run2.log")
    try:
        # The restarted hub resumes the session (from its checkpoint or from the store) and has the plug
        # CHARGING on a reading taken since the restart, before the car stops.
        def charging_again() -> bool:
            try:
                plugs = httpx.get(f"http://127.0.0.1:{health_port}/api/plugs", timeout=5).json()["plugs"]
            except (httpx.HTTPError, ValueError):
                return False
            return any(
                p["mac"] == mac and p["state"] == "CHARGING" and (p["last_seen_ms"] or 0) >= restarted_ms
                for p in plugs
            )

        wait_for("the restarted hub to see the plug charging", charging_again)
        control.get("/load", params={"w": "0"})
        done = wait_for(
            "the session to complete",
            lambda: [s for s in cli(cfg, "session", "list", "--json") if s["status"] == "COMPLETED"],
        )
        after = control.get("/state").json()
        assert after["relay_on"] is False
        (session,) = done
        truth_energy = after["energy_mwh"] - before["energy_mwh"]
        assert session["energy_mwh"] == truth_energy  # including what was drawn while the hub was down
        assert session["stop_reason"] == "EVDisconnected"
        expected = expected_cost(truth_energy)
        debits = [h for h in cli(cfg, "ledger", "history", "u1", "--json") if h["kind"] == "session_debit"]
        assert [d["amount_minor"] for d in debits] == [-expected]
        assert len(cli(cfg, "session", "list", "--json")) == 1
    finally:
        _kill(run, signal.SIGINT)
        control.close()
