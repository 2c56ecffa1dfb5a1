"""``chargectl ledger``: operator credits are idempotent by id; balance is the sum; history runs."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from chargectl.cli.app import app

runner = CliRunner()


def test_credit_balance_history(tmp_path: Path) -> None:
    env = {"CHARGECTL_STATE_DIR": str(tmp_path)}
    r = runner.invoke(
        app, ["ledger", "credit", "u1", "5.00", "--reason", "goodwill", "--id", "adj-1", "--json"], env=env
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {
        "entry_id": "adj-1",
        "posted": True,
        "amount_minor": 500,
        "balance_minor": 500,
    }
    again = runner.invoke(
        app, ["ledger", "credit", "u1", "5.00", "--reason", "goodwill", "--id", "adj-1", "--json"], env=env
    )
    assert json.loads(again.output)["posted"] is False and json.loads(again.output)["balance_minor"] == 500
    r = runner.invoke(app, ["ledger", "credit", "u1", "--reason", "fix", "--json", "--", "-1.25"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["balance_minor"] == 375
    r = runner.invoke(app, ["ledger", "balance", "u1", "--json"], env=env)
    assert json.loads(r.output) == {"user_id": "u1", "currency": "gbp", "balance_minor": 375}
    r = runner.invoke(app, ["ledger", "history", "u1", "--json"], env=env)
    rows = json.loads(r.output)
    assert (rows[0]["entry_id"], rows[0]["amount_minor"], rows[0]["kind"]) == ("adj-1", 500, "adjustment")
    assert sum(x["amount_minor"] for x in rows) == 375
    table = runner.invoke(app, ["ledger", "history", "u1"], env={**env, "COLUMNS": "200"})
    assert "goodwill" in table.output and "3.75 GBP" in table.output


def test_bad_amount_is_refused(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "chargectl")
    r = subprocess.run(
        [exe, "ledger", "credit", "u1", "five", "--reason", "x"],
        capture_output=True,
        text=True,
        env={**os.environ, "CHARGECTL_STATE_DIR": str(tmp_path)},
        check=False,
    )
    assert r.returncode == 1 and "is not a number" in r.stderr and "Traceback" not in r.stderr


def test_a_user_id_that_no_account_can_have_is_refused_and_nothing_is_posted(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from chargectl.services.adapters.sqlite_store import SqliteStore

    exe = str(Path(sys.executable).parent / "chargectl")
    env = {**os.environ, "CHARGECTL_STATE_DIR": str(tmp_path), "COLUMNS": "400"}
    # A typo with a space, a path, an escape sequence pasted from a terminal, a reserved name.
    for user in ("u 1", "a/b", "u\x1b[2J", "..", "__name__", "u" * 129):
        r = subprocess.run(
            [exe, "ledger", "credit", "--user", user, "5.00", "--reason", "goodwill"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert r.returncode == 1, (user, r.stdout, r.stderr)
        assert "invalid user id" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "\x1b" not in r.stderr
    store = SqliteStore(tmp_path / "chargectl.db")
    try:
        assert store.ledger_entries() == [] and store.list_users() == []
    finally:
        store.close()
