"""CLI papercuts, checked on what matters: the money the ledger ends with and the ids people copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chargectl.common import codec
from chargectl.services.adapters.sqlite_store import SqliteStore

CHARGECTL = str(Path(sys.executable).parent / "chargectl")


def cli(tmp_path: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """Run chargectl piped (stdout is not a terminal), as a script or ``| grep`` would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGECTL_")}
    env |= {"CHARGECTL_STATE_DIR": str(tmp_path / "state"), "COLUMNS": str(columns)}
    return subprocess.run([CHARGECTL, *args], capture_output=True, text=True, env=env, timeout=60)


def balance(tmp_path: Path, user: str) -> int:
    proc = cli(tmp_path, "ledger", "balance", "--user", user, "--json")
    assert proc.returncode == 0, proc.stderr
    value: int = json.loads(proc.stdout)["balance_minor"]
    return value


# ----------------------------------------------------------------------------- --user and --debit


def test_user_is_spelled_the_same_everywhere_and_old_forms_still_work(tmp_path: Path) -> None:
    assert cli(tmp_path, "ledger", "credit", "--user", "u1", "5.00", "-r", "goodwill").returncode == 0
    assert cli(tmp_path, "ledger", "credit", "u1", "1.00", "-r", "old form").returncode == 0  # hidden alias
    assert cli(tmp_path, "ledger", "credit", "2.00", "--user=u1", "-r", "option last").returncode == 0
    assert balance(tmp_path, "u1") == 800
    old = cli(tmp_path, "ledger", "balance", "u1", "--json")
    assert json.loads(old.stdout)["balance_minor"] == 800
    # payments: --user, and the old positional / --uid forms, name the same user.
    for argv in (["--user", "ghost"], ["ghost"]):
        proc = cli(tmp_path, "payments", "customer", "show", *argv)
        assert (proc.returncode, proc.stderr.strip()) == (1, "error: no user 'ghost'")
    create_help = cli(tmp_path, "payments", "customer", "create", "--help", columns=200).stdout
    assert "--user" in create_help and "--uid" not in create_help


def test_help_shows_user_as_an_option_and_not_the_old_positional(tmp_path: Path) -> None:
    text = cli(tmp_path, "ledger", "credit", "--help", columns=200).stdout
    assert "--user" in text and "{user}" not in text and "--debit" in text


def test_a_missing_user_is_a_usage_error_naming_the_option(tmp_path: Path) -> None:
    proc = cli(tmp_path, "ledger", "balance")
    assert proc.returncode == 2 and "'--user'" in proc.stderr and "Traceback" not in proc.stderr


def test_debit_takes_money_off_without_double_dash(tmp_path: Path) -> None:
    assert cli(tmp_path, "ledger", "credit", "--user", "u2", "10.00", "-r", "top").returncode == 0
    debit = cli(tmp_path, "ledger", "credit", "--user", "u2", "2.50", "--debit", "-r", "overcharge", "--json")
    assert debit.returncode == 0, debit.stderr
    assert json.loads(debit.stdout)["amount_minor"] == -250
    assert balance(tmp_path, "u2") == 750
    # The old way still works...
    assert cli(tmp_path, "ledger", "credit", "--user", "u2", "-r", "fix", "--", "-0.50").returncode == 0
    assert balance(tmp_path, "u2") == 700


@pytest.mark.parametrize("amount", ["-1.00", "0", "0.001", "five"])
def test_a_bad_debit_posts_nothing(tmp_path: Path, amount: str) -> None:
    assert cli(tmp_path, "ledger", "credit", "--user", "u3", "10.00", "-r", "top").returncode == 0
    proc = cli(tmp_path, "ledger", "credit", "--user", "u3", "--debit", "-r", "x", "--", amount)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert balance(tmp_path, "u3") == 1000


# ----------------------------------------------------------------------------- piped tables


def test_piped_ledger_history_keeps_every_entry_id_whole(tmp_path: Path) -> None:
    long_id = "adj-" + "0123456789abcdef" * 4
    assert cli(tmp_path, "ledger", "credit", "--user", "u4", "1.00", "-r", "a long description " * 4,
               "--id", long_id).returncode == 0  # fmt: skip
    proc = cli(tmp_path, "ledger", "history", "--user", "u4", columns=80)
    assert proc.returncode == 0, proc.stderr
    assert long_id in proc.stdout


def test_piped_plugs_table_keeps_macs_sites_and_sessions_whole(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state" / "chargectl.db")
    macs = [f"A4CF12F{i:05X}" for i in range(3)]
    for i, mac in enumerate(macs):
        store.put_plug_state(
            codec.PlugState(
                plug_mac=mac,
                site_id="a-rather-long-site-identifier-for-the-car-park",
                status=codec.PlugStatus.PLUG_STATUS_CHARGING,
                session_id=f"sess-{i}-0123456789abcdef0123456789abcdef",
                power_w=1234.5,
            )
        )
    store.close()
    proc = cli(tmp_path, "plugs", columns=80)
    assert proc.returncode == 0, proc.stderr
    for i, mac in enumerate(macs):
        assert mac in proc.stdout
        assert f"sess-{i}-0123456789abcdef0123456789abcdef" in proc.stdout
    assert "a-rather-long-site-identifier-for-the-car-park" in proc.stdout


# ----------------------------------------------------------------------------- payments: amount first


@pytest.mark.parametrize("command", ["topup", "charge"])
@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("five", [], "error: amount 'five' is not a number (write it like 5.00)"),
        ("-5", ["--currency", "gbp"], "error: amount '-5' must be a positive number"),
        ("0", [], "error: amount '0' must be a positive number"),
        (
            "5.001",
            ["--currency", "gbp"],
            "error: amount '5.001' has too many decimals for GBP (at most 2 decimals)",
        ),
    ],
)
def test_payments_check_the_amount_before_looking_anything_up(
    tmp_path: Path, command: str, amount: str, currency: list[str], message: str
) -> None:
    """No Stripe key, no user, no store: the amount is what gets refused, and nothing is opened."""
    proc = cli(tmp_path, "payments", command, "--user", "nobody", *currency, "--", amount)
    assert (proc.returncode, proc.stderr.strip()) == (1, message)
    assert not (tmp_path / "state").exists()


# ----------------------------------------------------------------------------- one JSON enum style


def test_json_enums_are_bare_upper_case_names_everywhere(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state" / "chargectl.db")
    store.put_plug_state(
        codec.PlugState(
            plug_mac="A4CF12F00001", site_id="site-a", status=codec.PlugStatus.PLUG_STATUS_FAULTED
        )
    )
    store.put_session(
        codec.ChargeSession(
            session_id="s-1",
            user_id="u1",
            plug_mac="A4CF12F00001",
            site_id="site-a",
            status=codec.ChargeSession.STATUS_COMPLETED,
            energy_mwh=1_500_000,
        )
    )
    store.close()
    plugs = json.loads(cli(tmp_path, "plugs", "--json").stdout)
    assert [p["status"] for p in plugs] == ["FAULTED"]
    sessions = json.loads(cli(tmp_path, "session", "list", "--json").stdout)
    assert [(s["session_id"], s["status"], s["energy_mwh"]) for s in sessions] == [
        ("s-1", "COMPLETED", 1_500_000)
    ]
    made = cli(tmp_path, "provision", "site", "Enum Park", "--no-bundle", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(cli(tmp_path, "provision", "show", "enum-park", "--json").stdout)["status"] == "ACTIVE"
