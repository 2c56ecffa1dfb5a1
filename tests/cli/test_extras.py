"""Lean installs: the extras in pyproject, and a command whose extra is missing names it.

A missing extra is simulated in a fresh interpreter by a meta-path finder that refuses the modules
the extra would install, exactly as ``import`` fails on a Pi that has only ``chargectl[agent]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    sys.argv = ["chargectl", *{argv!r}]
    from chargectl.cli.app import main
    main()
    """
)

NOT_ON_A_PI = ["google.cloud.firestore", "google.cloud.secretmanager", "influxdb_client", "stripe"]
CORE_ONLY = ["google.cloud", "influxdb_client", "stripe", "zeroconf", "ifaddr"]


def run_without(
    blocked: list[str], *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    code = BLOCKER.format(blocked=blocked, argv=list(argv))
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_extras_are_declared_and_all_is_their_union() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = {e: {d.split(">")[0].split("<")[0].split("=")[0] for d in deps} for e, deps in extras.items()}
    core = {d.split(">")[0] for d in project["dependencies"]}
    assert {"zeroconf", "google-cloud-pubsub", "httpx", "protobuf", "zstandard", "cryptography"} <= names[
        "agent"
    ]
    assert not {"stripe", "influxdb-client", "google-cloud-firestore", "google-cloud-secret-manager"} & (
        names["agent"] | core
    )
    assert {"google-cloud-firestore", "influxdb-client", "google-cloud-secret-manager"} <= names["hub"]
    assert "stripe" in names["payments"]
    assert extras["all"] == ["chargectl[agent,hub,payments]"]
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[all,dev]'" in makefile


def test_installers_install_the_right_extra() -> None:
    lib = (ROOT / "scripts" / "deploy" / "lib.sh").read_text()
    assert 'requirement="$1[$2]"' in lib
    assert 'install_wheel "$WHEEL" agent' in (ROOT / "scripts" / "deploy" / "install-agent.sh").read_text()
    assert 'install_wheel "$WHEEL" all' in (ROOT / "scripts" / "deploy" / "install-hub.sh").read_text()


def test_help_works_on_a_core_only_install() -> None:
    proc = run_without(CORE_ONLY, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "provision" in proc.stdout


def test_payments_on_a_pi_names_the_payments_extra(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path}"\n')
    proc = run_without(
        NOT_ON_A_PI, "payments", "customer", "create", "--uid", "u1", "--email", "a@b.c", "--config", str(cfg)
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: this command needs the [payments] extra (missing module stripe): "
        "pip install 'chargectl[payments]' (or 'chargectl[all]')"
    ]
    assert not list(tmp_path.glob("*.db")), "nothing written before the refusal"


def test_hub_on_a_pi_names_the_hub_extra(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'backend = "gcp"\nproject = "p"\nstate_dir = "{tmp_path}"\n')
    # Pub/Sub (which a Pi has) is set up first; an emulator address needs no credentials.
    proc = run_without(NOT_ON_A_PI, "hub", "--config", str(cfg), env={"PUBSUB_EMULATOR_HOST": "127.0.0.1:9"})
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: this command needs the [hub] extra (missing module google.cloud.")
    assert "Traceback" not in proc.stderr


def test_agent_on_a_core_only_install_names_the_agent_extra(tmp_path: Path) -> None:
    from chargectl.common.keys import SigningKey, save_private_key, save_public_key

    save_private_key(tmp_path / "agent.key", SigningKey.generate())
    save_public_key(tmp_path / "command.pub", SigningKey.generate().public_bytes)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'backend = "gcp"\nproject = "p"\nstate_dir = "{tmp_path}"\n[agent]\nsite_id = "site-one"\n'
        'agent_key_file = "agent.key"\ncommand_public_key_files = ["command.pub"]\n'
    )
    proc = run_without(CORE_ONLY, "agent", "--config", str(cfg))
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: this command needs the [agent] extra (missing module ")
    assert line.endswith("pip install 'chargectl[agent]' (or 'chargectl[all]')")


def test_discover_on_a_core_only_install_names_the_agent_extra() -> None:
    proc = run_without(CORE_ONLY, "discover", "--timeout", "0.5")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        "error: this command needs the [agent] extra (missing module zeroconf): "
        "pip install 'chargectl[agent]' (or 'chargectl[all]')"
    )


def test_an_unrelated_missing_module_keeps_its_traceback() -> None:
    """Not an extra's module: a bug, so the traceback stays for the report."""
    from chargectl.cli.app import missing_extra

    assert (
        missing_extra(ModuleNotFoundError("No module named 'nonexistent_pkg'", name="nonexistent_pkg"))
        is None
    )
