"""Dry runs write nothing: not the store, not its WAL files, not a key; and they say what they would do."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

CHARGECTL = str(Path(sys.executable).parent / "chargectl")


def _env(tmp_path: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGECTL_")}
    env |= {
        "CHARGECTL_CONFIG_DIR": str(tmp_path / "config"),
        "CHARGECTL_STATE_DIR": str(tmp_path / "state"),
        "CHARGECTL_PROJECT": "proj-dry",
        "COLUMNS": "200",
    }
    return env


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHARGECTL, *args], capture_output=True, text=True, env=_env(tmp_path), timeout=120)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def test_provision_site_dry_run_on_a_fresh_machine_creates_no_state(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "provision", "site", "Harbour Gate", "--out", str(tmp_path / "b"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "to create" in proc.stdout and "nothing changed" in proc.stdout
    assert _snapshot(tmp_path) == {}, "a dry run wrote files"


def test_dry_runs_against_an_existing_store_change_no_byte(tmp_path: Path) -> None:
    made = _cli(tmp_path, "provision", "site", "Harbour Gate", "--out", str(tmp_path / "b"), "--json")
    assert made.returncode == 0, made.stderr
    before = _snapshot(tmp_path)
    assert "state/chargectl.db" in before

    revoke = _cli(tmp_path, "provision", "revoke", "harbour-gate", "--dry-run")
    assert revoke.returncode == 0, revoke.stderr
    assert "to revoke" in revoke.stdout and "to create" not in revoke.stdout
    rotate = _cli(tmp_path, "provision", "rotate-keys", "harbour-gate", "--dry-run", "--json",
                  "--out", str(tmp_path / "b2"))  # fmt: skip
    assert rotate.returncode == 0, rotate.stderr
    assert json.loads(rotate.stdout)["dry_run"] is True
    again = _cli(
        tmp_path, "provision", "site", "Harbour Gate", "--out", str(tmp_path / "b"), "--dry-run", "--json"
    )
    assert {s["status"] for s in json.loads(again.stdout)["plan"]["steps"]} == {"exists"}, "the copy was read"
    assert _snapshot(tmp_path) == before, "a dry run changed the store or the keys"

    # The site is still active: the dry revoke did not revoke it.
    shown = _cli(tmp_path, "provision", "show", "harbour-gate", "--json")
    assert json.loads(shown.stdout)["status"] == "ACTIVE"
