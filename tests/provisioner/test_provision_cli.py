"""``chargectl provision …`` through the CLI: dry runs change nothing, no private key is ever output,
bad input is one error line, and the gcp backend set works against the local servers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import backends
import pytest
from typer.testing import CliRunner

from chargectl.cli.app import app

CHARGECTL = str(Path(sys.executable).parent / "chargectl")


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "CHARGECTL_CONFIG_DIR": str(tmp_path / "config"),
        "CHARGECTL_STATE_DIR": str(tmp_path / "state"),
        "CHARGECTL_PROJECT": "proj-cli",
    }


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _private_pems(config_dir: Path) -> list[str]:
    """The base64 body of every private key file the provisioner wrote."""
    bodies = []
    for path in config_dir.rglob("*.key*"):
        lines = path.read_text().splitlines()
        bodies.append("".join(line for line in lines if not line.startswith("-----")))
    assert bodies
    return bodies


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    bundle = tmp_path / "bundle"
    args = ["provision", "site", "Harbour Gate", "--shard", "2", "--out", str(bundle), "--dry-run", "--json"]
    result = runner.invoke(app, args, env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["dry_run"] is True and data["plan"]["site_id"] == "harbour-gate"
    assert [(s["kind"], s["status"]) for s in data["plan"]["steps"]] == [
        ("secret", "pending"),
        ("secret", "pending"),
        ("site", "pending"),
        ("bundle", "pending"),
    ]
    assert _files(tmp_path / "config") == [] and not bundle.exists()
    assert not (tmp_path / "state" / "chargectl.db").exists() or _sites(runner, tmp_path) == []

    table = runner.invoke(
        app, ["provision", "site", "Harbour Gate", "--out", str(bundle), "--dry-run"], env=_env(tmp_path)
    )
    assert table.exit_code == 0 and "dry run: nothing changed" in table.output
    assert _files(tmp_path / "config") == [] and not bundle.exists()


def _sites(runner: CliRunner, tmp_path: Path) -> list[dict[str, object]]:
    result = runner.invoke(app, ["provision", "list", "--json"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output))


def test_site_list_show_rotate_revoke_never_output_a_private_key(tmp_path: Path) -> None:
    env = {**os.environ, **_env(tmp_path)}
    outputs: list[str] = []

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [CHARGECTL, "-vv", *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        outputs.append(proc.stdout + proc.stderr)
        assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
        return proc

    made = run("provision", "site", "Harbour Gate", "--tariff", "price_per_kwh_minor=40", "--json")
    assert [s["status"] for s in json.loads(made.stdout)["applied"]] == ["done"] * 4
    bundle = tmp_path / "chargectl-harbour-gate-bundle"
    assert stat.S_IMODE((bundle / "agent.key").stat().st_mode) == 0o600
    assert "nothing to change" in run("provision", "site", "Harbour Gate").stdout
    shown = json.loads(run("provision", "show", "harbour-gate", "--json").stdout)
    assert (shown["status"], shown["tariff"]["price_per_kwh_minor"], len(shown["agent_keys"])) == (
        "ACTIVE",
        40,
        1,
    )
    run("provision", "show", "harbour-gate")
    run("provision", "list")
    rotated = run("provision", "rotate-keys", "harbour-gate", "--grace-s", "60", "--tarball", "--json")
    assert Path(json.loads(rotated.stdout)["bundle"]).name == "chargectl-harbour-gate-bundle.tar.gz"
    listed = json.loads(run("provision", "list", "--json").stdout)
    assert [(s["site_id"], len(s["agent_keys"]), len(s["command_keys"])) for s in listed] == [
        ("harbour-gate", 2, 2)
    ]
    run("provision", "bundle", "harbour-gate", "--out", str(tmp_path / "again"))
    pems = _private_pems(tmp_path / "config")  # read before revoke renames nothing away: all versions
    run("provision", "revoke", "harbour-gate", "--yes")
    assert json.loads(run("provision", "show", "harbour-gate", "--json").stdout)["status"] == "REVOKED"

    text = "\n".join(outputs)
    assert "PRIVATE KEY" not in text
    for body in pems:
        assert body not in text and body[:40] not in text


def test_bad_input_is_one_error_line(tmp_path: Path) -> None:
    # wide enough that rich does not wrap the one line at 80 columns
    env = {**os.environ, **_env(tmp_path), "COLUMNS": "400"}
    cases = [
        (["provision", "show", "nowhere"], "site 'nowhere' not found"),
        (["provision", "site", "!!"], "pass --site-id"),
        (["provision", "site", "Ok Site", "--site-id", "Bad_Id"], "invalid site id 'Bad_Id'"),
        (
            ["provision", "site", "Ok Site", "--tariff", "price=1"],
            "tariff: unknown or malformed item 'price=1'",
        ),
        (["provision", "rotate-keys", "nowhere"], "site 'nowhere' not found"),
        # A shard the Site document cannot carry (uint32): refused before any key or secret is made.
        (["provision", "site", "Big Shard", "--shard", str(2**32)], "shard must be between 0 and 4294967295"),
        (["provision", "site", "Neg Shard", "--shard", "-1"], "shard must be between 0 and 4294967295"),
    ]
    for args, message in cases:
        proc = subprocess.run([CHARGECTL, *args], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    listed = subprocess.run(
        [CHARGECTL, "provision", "list", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout


def test_revoke_asks_before_acting(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["provision", "site", "Quay", "--no-bundle"], env=_env(tmp_path)).exit_code == 0
    declined = runner.invoke(app, ["provision", "revoke", "quay"], input="n\n", env=_env(tmp_path))
    assert declined.exit_code != 0
    assert [s["status"] for s in _sites(runner, tmp_path)] == ["ACTIVE"]
    dry = runner.invoke(app, ["provision", "revoke", "quay", "--dry-run"], env=_env(tmp_path))
    assert dry.exit_code == 0 and [s["status"] for s in _sites(runner, tmp_path)] == ["ACTIVE"]
    accepted = runner.invoke(app, ["provision", "revoke", "quay"], input="y\n", env=_env(tmp_path))
    assert accepted.exit_code == 0, accepted.output
    assert [s["status"] for s in _sites(runner, tmp_path)] == ["REVOKED"]


def test_help_names_every_command() -> None:
    result = CliRunner().invoke(app, ["provision", "--help"])
    assert result.exit_code == 0
    for name in ("site", "list", "show", "rotate-keys", "revoke", "bundle"):
        assert name in result.output


@pytest.mark.integration
def test_gcp_backend_set_through_the_cli(
    pubsub_env: backends.Server,
    firestore_env: backends.Server,
    drongo_server: backends.Server,
    tmp_path: Path,
) -> None:
    project = f"prov-cli-{os.getpid()}"
    config = tmp_path / "chargectl.toml"
    config.write_text(
        f'backend = "gcp"\nproject = "{project}"\nconfig_dir = "{tmp_path / "config"}"\n'
        f'[secrets]\nendpoint = "{drongo_server.url}"\ntransport = "rest"\n'
    )
    env = dict(os.environ)  # carries the emulator hosts the fixtures set
    outputs: list[str] = []

    def run(*args: str) -> str:
        proc = subprocess.run(
            [CHARGECTL, "-vv", "--config", str(config), "provision", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    made = json.loads(run("site", "Dock", "--out", str(tmp_path / "b"), "--json"))
    assert [s["kind"] for s in made["applied"]] == [
        "topic",
        "topic",
        "topic",
        "subscription",
        "secret",
        "secret",
        "site",
        "bundle",
    ]
    assert _files(tmp_path / "config") == []  # cloud keys live in Secret Manager, not in key files
    assert json.loads(run("site", "Dock", "--out", str(tmp_path / "b"), "--json"))["applied"] == []
    shown = json.loads(run("show", "dock", "--json"))
    assert shown["command_subscription"] == "chargectl-commands-dock-agent"
    toml = (tmp_path / "b" / "agent.toml").read_text()
    assert 'backend = "gcp"' in toml and f'project = "{project}"' in toml
    run("rotate-keys", "dock", "--out", str(tmp_path / "b2"))
    from chargectl.services.adapters.secrets import SecretManagerSecrets, SecretsSettings

    secrets = SecretManagerSecrets(project, SecretsSettings(endpoint=drongo_server.url))
    pems = [
        secrets.access(name, version).decode()
        for name in ("chargectl-dock-agent-key", "chargectl-dock-command-key")
        for version in ("1", "2")
    ]
    run("revoke", "dock", "--yes")
    assert json.loads(run("show", "dock", "--json"))["status"] == "REVOKED"
    assert [v.enabled for v in secrets.versions("chargectl-dock-command-key")] == [False, False]

    text = "\n".join(outputs)
    assert "PRIVATE KEY" not in text
    for pem in pems:
        body = "".join(line for line in pem.splitlines() if "-----" not in line)
        assert len(body) > 40 and body not in text and body[:40] not in text


def test_a_bundle_path_that_must_not_be_written_changes_nothing(tmp_path: Path) -> None:
    """Checked before any key, secret or Site document is made: a rerun is not needed, and a directory
    of the operator's (``--out /tmp``) is neither made 0700 nor given the agent's private key."""
    env = {**os.environ, **_env(tmp_path), "COLUMNS": "400"}
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("mine")
    shared.chmod(0o1777)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["--out", str(shared)], "the directory holds other files (notes.txt)"),
        (["--out", str(a_file / "sub")], "is not a writable directory"),
        (["--out", str(a_file)], "it exists and is not a bundle directory"),
        (["--out", str(shared), "--tarball"], "it is a directory"),
    ]
    for extra, message in cases:
        proc = subprocess.run(
            [CHARGECTL, "provision", "site", "Quay", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, (extra, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stdout == ""  # no step was taken
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert sorted(p.name for p in shared.iterdir()) == ["notes.txt"]
    assert a_file.read_text() == "x"
    assert _files(tmp_path / "config") == []
    listed = subprocess.run(
        [CHARGECTL, "provision", "list", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert json.loads(listed.stdout) == []
    # A new directory, and then the same one again (an earlier bundle), are fine.
    fresh = tmp_path / "bundles" / "quay"
    for _ in range(2):
        ok = subprocess.run(
            [CHARGECTL, "provision", "site", "Quay", "--out", str(fresh)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
    assert "agent.key" in {p.name for p in fresh.iterdir()}
