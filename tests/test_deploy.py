"""Deployment: the workflows' shape (keyless auth, CI matrix), the deploy scripts' dry-run plans, the lints.

The scripts run from a copy of ``scripts/deploy`` in an empty tree, as on a fresh clone: no ``dist/``,
no ``build/``, no ``scripts/systemd/``. Each plan line is a shell command, so tests split it with
``shlex`` and check whole arguments rather than substrings.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "scripts" / "deploy"
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = ROOT / ".venv" / "bin"
WHEEL = "dist/chargectl-0.1.0-py3-none-any.whl"


def load_workflow(name: str) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((WORKFLOWS / name).read_text())
    return data


def steps_using(workflow: dict[str, Any], action: str) -> list[tuple[str, dict[str, Any]]]:
    """(job id, step) for every step whose ``uses`` is ``action@<ref>``."""
    found = []
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            if str(step.get("uses", "")).split("@")[0] == action:
                found.append((job_id, step))
    return found


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A tree holding only the deploy scripts, like a fresh clone before any build."""
    tree = tmp_path / "clone"
    shutil.copytree(DEPLOY, tree / "scripts" / "deploy")
    return tree


def run_script(
    tree: Path, name: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(tree / "scripts" / "deploy" / name), *args],
        capture_output=True,
        text=True,
        cwd=cwd or tree,
        timeout=60,
    )


def plan(tree: Path, name: str, *args: str, cwd: Path | None = None) -> list[list[str]]:
    """The dry-run plan as argv lists (trailing ``# comments`` dropped); asserts exit 0, nothing changed."""
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    proc = run_script(tree, name, *args, "--dry-run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before, "a dry run changed files"
    return [shlex.split(line, comments=True) for line in proc.stdout.splitlines() if line.strip()]


def find(commands: list[list[str]], *prefix: str) -> list[str]:
    """The single planned command starting with ``prefix``."""
    matches = [c for c in commands if c[: len(prefix)] == list(prefix)]
    assert len(matches) == 1, f"expected one {' '.join(prefix)!r} in {commands}"
    return matches[0]


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ----------------------------------------------------------------------------- workflows


def test_deploy_workflow_authenticates_with_workload_identity_only() -> None:
    workflow = load_workflow("deploy.yml")
    auth_steps = steps_using(workflow, "google-github-actions/auth")
    assert {job for job, _ in auth_steps} == {"hub", "webhook"}
    for job_id, step in auth_steps:
        inputs = step["with"]
        assert set(inputs) == {"workload_identity_provider", "service_account"}
        assert inputs["workload_identity_provider"] == "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}"
        assert inputs["service_account"] == "${{ vars.GCP_DEPLOY_SERVICE_ACCOUNT }}"
        assert workflow["jobs"][job_id]["permissions"] == {"contents": "read", "id-token": "write"}
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["jobs"]["release"]["permissions"] == {"contents": "write"}
    # Only the jobs that authenticate may mint an OIDC token.
    for job_id, job in workflow["jobs"].items():
        if job_id not in {"hub", "webhook"}:
            assert "id-token" not in job.get("permissions", {}), job_id


def test_deploy_workflow_runs_on_tags_and_by_hand_and_calls_the_scripts() -> None:
    workflow = load_workflow("deploy.yml")
    assert workflow["on"]["push"] == {"tags": ["v*"]}
    assert "workflow_dispatch" in workflow["on"]
    runs = {
        job_id: " ".join(s.get("run", "") for s in job["steps"]) for job_id, job in workflow["jobs"].items()
    }
    assert "scripts/deploy/build-wheel.sh" in runs["build"]
    assert "scripts/deploy/deploy-hub.sh --wheel dist/chargectl-*.whl" in runs["hub"]
    assert "scripts/deploy/deploy-webhook.sh --wheel dist/chargectl-*.whl" in runs["webhook"]
    assert 'scripts/deploy/publish-release.sh "$TAG" dist/chargectl-*.whl' in runs["release"]
    assert workflow["jobs"]["release"]["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert workflow["jobs"]["hub"]["needs"] == "build"
    assert workflow["jobs"]["webhook"]["needs"] == "build"
    assert workflow["jobs"]["release"]["needs"] == ["build", "hub", "webhook"]


def test_workflows_and_scripts_hold_no_credentials() -> None:
    files = [*WORKFLOWS.glob("*.yml"), *DEPLOY.iterdir()]
    assert len(files) >= 9
    forbidden = re.compile(
        r"credentials_json|secrets\.|-----BEGIN|private_key|sk_(live|test)_|rk_live_|whsec_|AIza[0-9A-Za-z_-]{10}"
    )
    for path in files:
        hits = forbidden.findall(path.read_text())
        assert not hits, f"{path.name}: {hits}"


def test_ci_runs_make_test_on_supported_pythons_with_the_emulators() -> None:
    workflow = load_workflow("ci.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    job = workflow["jobs"]["test"]
    assert job["strategy"]["matrix"]["python"] == ["3.11", "3.12"]
    assert [s["run"] for s in job["steps"] if "run" in s][-1] == "make test"
    (_, gcloud), *_ = steps_using(workflow, "google-github-actions/setup-gcloud")
    components = set(gcloud["with"]["install_components"].split(","))
    assert {"pubsub-emulator", "cloud-firestore-emulator"} <= components
    assert steps_using(workflow, "actions/setup-java")
    assert any("victoria-metrics" in s.get("run", "") for s in job["steps"])
    # backends.py looks for the emulator jars under CHARGECTL_GCLOUD_SDK.
    assert any("CHARGECTL_GCLOUD_SDK=" in s.get("run", "") for s in job["steps"])


# ----------------------------------------------------------------------------- lints in make test


def test_make_test_runs_the_ops_lints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\blint-ops\b", makefile, re.M)
    target = makefile.split("\nlint-ops:", 1)[1].split("\n\n", 1)[0]
    assert "check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml" in target
    assert "shellcheck" in target


def test_workflow_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text((WORKFLOWS / "ci.yml").read_text())
    bad = tmp_path / "bad.yml"
    # A job without runs-on is not a valid workflow.
    bad.write_text("on: push\njobs:\n  test:\n    steps:\n      - run: make test\n")
    check = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]
    assert subprocess.run([*check, str(good)], capture_output=True, timeout=60).returncode == 0
    proc = subprocess.run([*check, str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "runs-on" in proc.stdout + proc.stderr


def test_shellcheck_flags_a_broken_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")  # unquoted: SC2086
    proc = subprocess.run([str(BIN / "shellcheck"), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "SC2086" in proc.stdout


# ----------------------------------------------------------------------------- deploy-hub / install-hub


def test_deploy_hub_plan_copies_the_wheel_and_restarts_the_unit(clone: Path) -> None:
    commands = plan(
        clone, "deploy-hub.sh", "--wheel", WHEEL, "--project", "acme-prod", "--zone", "europe-west2-b"
    )
    stage = str(clone / "build" / "hub-deploy" / "chargectl-deploy")
    assert find(commands, "cp", WHEEL) == [
        "cp",
        WHEEL,
        str(clone / "scripts/deploy/lib.sh"),
        str(clone / "scripts/deploy/install-hub.sh"),
        stage + "/",
    ]
    assert find(commands, "cp", str(clone / "scripts/systemd/chargectl-hub.service")) == [
        "cp",
        str(clone / "scripts/systemd/chargectl-hub.service"),
        stage + "/chargectl-hub.service",
    ]
    scp = find(commands, "gcloud", "compute", "scp")
    ssh = find(commands, "gcloud", "compute", "ssh")
    for argv in (scp, ssh):
        assert option(argv, "--project") == "acme-prod"
        assert option(argv, "--zone") == "europe-west2-b"
        assert "--tunnel-through-iap" in argv
    assert scp[-2:] == [stage, "chargectl-hub:"]
    assert ssh[3] == "chargectl-hub"
    remote = shlex.split(option(ssh, "--command"))
    assert remote == [
        "sudo",
        "bash",
        "chargectl-deploy/install-hub.sh",
        "--wheel",
        "chargectl-deploy/chargectl-0.1.0-py3-none-any.whl",
        "--unit-file",
        "chargectl-deploy/chargectl-hub.service",
        "&&",
        "rm",
        "-rf",
        "chargectl-deploy",
    ]
    # The staged install-hub.sh, run with the remote arguments, restarts the hub and waits for health.
    remote_plan = plan(clone, "install-hub.sh", *remote[3:7])
    assert find(remote_plan, "systemctl", "restart") == ["systemctl", "restart", "chargectl-hub.service"]


def test_deploy_hub_quotes_odd_values_so_the_plan_is_pasteable(clone: Path) -> None:
    commands = plan(
        clone, "deploy-hub.sh", "--wheel", WHEEL, "--project", "p", "--zone", "z", "--instance", "hub 'one'"
    )
    assert find(commands, "gcloud", "compute", "ssh")[3] == "hub 'one'"


def test_install_hub_plan(clone: Path) -> None:
    commands = plan(clone, "install-hub.sh", "--wheel", "/tmp/w/chargectl-0.2.0-py3-none-any.whl")
    wheel = "/tmp/w/chargectl-0.2.0-py3-none-any.whl"
    # The VM gets every extra; the package itself is then reinstalled without touching the others.
    assert ["/opt/chargectl/bin/pip", "install", "--quiet", "--upgrade", wheel + "[all]"] in commands
    assert [
        "/opt/chargectl/bin/pip",
        "install",
        "--quiet",
        "--no-deps",
        "--force-reinstall",
        wheel,
    ] in commands
    # The unit runs as the chargectl user: created first, owner of the state directory.
    assert commands[0] == [
        "id", "-u", "chargectl", ">/dev/null", "2>&1", "||", "useradd", "--system", "--user-group",
        "--home-dir", "/var/lib/chargectl", "--no-create-home", "--shell", "/usr/sbin/nologin", "chargectl",
    ]  # fmt: skip
    assert [
        "install",
        "-d",
        "-o",
        "chargectl",
        "-g",
        "chargectl",
        "-m",
        "0700",
        "/var/lib/chargectl",
    ] in commands
    # No --unit-file: the installed unit is kept and restarted.
    assert not any(c[:2] == ["systemctl", "daemon-reload"] for c in commands)
    assert commands[-2] == ["systemctl", "restart", "chargectl-hub.service"]
    assert commands[-1] == [
        "curl",
        "--fail",
        "--silent",
        "--show-error",
        "--max-time",
        "5",
        "http://127.0.0.1:8787/healthz",
    ]


def test_install_hub_with_unit_file_installs_it_under_its_canonical_name(clone: Path) -> None:
    commands = plan(
        clone,
        "install-hub.sh",
        "--wheel",
        WHEEL,
        "--unit-file",
        "staged/hub.unit",
        "--health-url",
        "http://127.0.0.1:9999/healthz",
    )
    i = commands.index(
        [
            "install",
            "-o",
            "root",
            "-g",
            "root",
            "-m",
            "0644",
            "staged/hub.unit",
            "/etc/systemd/system/chargectl-hub.service",
        ]
    )
    assert commands[i + 1 : i + 4] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "chargectl-hub.service"],
        ["systemctl", "restart", "chargectl-hub.service"],
    ]
    assert commands[-1][-1] == "http://127.0.0.1:9999/healthz"


@pytest.mark.parametrize(
    ("config", "url"),
    [
        ('backend = "gcp"\n[hub]\nhealth_port = 9100\n', "http://127.0.0.1:9100/healthz"),
        ('backend = "gcp"\n', "http://127.0.0.1:8787/healthz"),
    ],
)
def test_install_hub_waits_on_the_configured_health_port(
    clone: Path, tmp_path: Path, config: str, url: str
) -> None:
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text(config)
    commands = plan(clone, "install-hub.sh", "--wheel", WHEEL, "--config", str(hub_toml))
    assert commands[-1][0] == "curl"
    assert commands[-1][-1] == url


@pytest.mark.parametrize(
    "config", ["[hub\n", '[hub]\nhealth_port = "8787"\n', "[hub]\nhealth_port = 70000\n"]
)
def test_install_hub_refuses_a_config_it_cannot_read(clone: Path, tmp_path: Path, config: str) -> None:
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text(config)
    proc = run_script(clone, "install-hub.sh", "--wheel", WHEEL, "--config", str(hub_toml), "--dry-run")
    assert proc.returncode == 1
    assert proc.stderr == f"install-hub.sh: error: cannot read [hub] health_port from {hub_toml}\n"


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("deploy-hub.sh", ["--project", "p", "--zone", "z"], "--wheel is required"),
        ("deploy-hub.sh", ["--wheel", WHEEL, "--zone", "z"], "--project is required"),
        (
            "deploy-hub.sh",
            ["--wheel", "dist/chargectl.tar.gz", "--project", "p", "--zone", "z"],
            "not a wheel",
        ),
        ("deploy-hub.sh", ["--wheel", WHEEL, "--project", "p", "--zone"], "--zone needs a value"),
        ("deploy-webhook.sh", ["--wheel", WHEEL, "--project", "p"], "--region is required"),
        (
            "deploy-webhook.sh",
            ["--wheel", WHEEL, "--project", "p", "--region", "r", "--bogus"],
            "unknown argument",
        ),
        ("install-hub.sh", ["--wheel", WHEEL, "--timeout-s", "soon"], "--timeout-s must be a whole number"),
        ("publish-release.sh", ["v0.2.0", WHEEL], "does not match the wheel's version 0.1.0"),
        ("install-agent.sh", ["missing-bundle"], "bundle not found: missing-bundle"),
    ],
)
def test_bad_arguments_give_one_line_errors(clone: Path, script: str, args: list[str], message: str) -> None:
    proc = run_script(clone, script, *args, "--dry-run")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"{script}: error: ")
    assert message in proc.stderr


def test_real_runs_refuse_a_missing_wheel(clone: Path) -> None:
    proc = run_script(clone, "deploy-webhook.sh", "--wheel", WHEEL, "--project", "p", "--region", "r")
    assert proc.returncode == 1
    assert f"wheel not found: {WHEEL}" in proc.stderr
    assert not (clone / "build").exists()


# ----------------------------------------------------------------------------- webhook on Cloud Run


def test_deploy_webhook_plan(clone: Path) -> None:
    commands = plan(
        clone,
        "deploy-webhook.sh",
        "--wheel",
        WHEEL,
        "--project",
        "acme-prod",
        "--region",
        "europe-west2",
        "--allowed-origin",
        "https://app.acme.example",
        "--allowed-origin",
        "http://localhost:5173",
        "--app-url",
        "https://app.acme.example",
    )
    stage = str(clone / "build" / "webhook-source")
    assert ["cp", WHEEL, stage + "/"] in commands
    assert ["cp", str(clone / "scripts/deploy/webhook.Dockerfile"), stage + "/Dockerfile"] in commands
    deploy = find(commands, "gcloud", "run", "deploy")
    assert deploy[3] == "chargectl-payments-webhook"
    assert option(deploy, "--source") == stage
    assert option(deploy, "--project") == "acme-prod"
    assert option(deploy, "--region") == "europe-west2"
    assert option(deploy, "--service-account") == "chargectl-webhook@acme-prod.iam.gserviceaccount.com"
    assert option(deploy, "--set-env-vars") == (
        "^;^CHARGECTL_BACKEND=gcp;CHARGECTL_PROJECT=acme-prod;CHARGECTL_APP__PROJECT_ID=acme-prod"
        ';CHARGECTL_APP__ALLOWED_ORIGINS=["https://app.acme.example","http://localhost:5173"]'
        ";CHARGECTL_APP__FORWARDED_HOPS=1"
        ";CHARGECTL_PAYMENTS__APP_URL=https://app.acme.example"
    )
    # The auto top-up sweep runs between requests: one instance, CPU always allocated.
    assert option(deploy, "--min-instances") == "1"
    assert "--no-cpu-throttling" in deploy
    assert option(deploy, "--set-secrets") == (
        "STRIPE_API_KEY=chargectl-stripe-api-key:latest,STRIPE_WEBHOOK_SECRET=chargectl-stripe-webhook-secret:latest"
    )
    # Staging happens before the deploy that uploads it.
    assert commands.index(deploy) == len(commands) - 1


def test_webhook_image_runs_the_app_server_on_cloud_runs_port() -> None:
    dockerfile = (DEPLOY / "webhook.Dockerfile").read_text()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    assert 'chargectl app serve --host 0.0.0.0 --port \\"${PORT:-8080}\\"' in cmd
    assert "COPY *.whl /tmp/" in dockerfile
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)


# ----------------------------------------------------------------------------- agent on a Pi


def make_bundle(directory: Path, *, wheel: bool = True) -> Path:
    directory.mkdir(parents=True)
    (directory / "carpark-1.toml").write_text('backend = "gcp"\n[agent]\nsite_id = "carpark-1"\n')
    (directory / "agent.key").write_text("not a real key\n")
    (directory / "command.pub").write_text("not a real key either\n")
    (directory / "chargectl-agent.service").write_text("[Service]\n")
    if wheel:
        (directory / "chargectl-0.3.0-py3-none-any.whl").write_bytes(b"")
    return directory


def test_install_agent_from_a_bundle_directory(clone: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "carpark-1")
    commands = plan(clone, "install-agent.sh", str(bundle))
    wheel = str(bundle / "chargectl-0.3.0-py3-none-any.whl")
    # A Pi gets the [agent] extra only (no Stripe, Firestore, InfluxDB).
    assert ["/opt/chargectl/bin/pip", "install", "--quiet", "--upgrade", wheel + "[agent]"] in commands
    # The agent runs as the chargectl user: root owns its keys and config, its group may read them.
    private = ["-o", "root", "-g", "chargectl", "-m", "0640"]
    public = ["-o", "root", "-g", "chargectl", "-m", "0644"]
    assert ["install", "-D", *private, str(bundle / "agent.key"), "/etc/chargectl/agent.key"] in commands
    assert ["install", "-D", *public, str(bundle / "command.pub"), "/etc/chargectl/command.pub"] in commands
    assert ["install", *private, str(bundle / "carpark-1.toml"), "/etc/chargectl/agent.toml"] in commands
    user = commands.index(
        [
            "id", "-u", "chargectl", ">/dev/null", "2>&1", "||", "useradd", "--system", "--user-group",
            "--home-dir", "/var/lib/chargectl", "--no-create-home", "--shell", "/usr/sbin/nologin", "chargectl",
        ]
    )  # fmt: skip
    assert commands[user + 1] == [
        "install",
        "-d",
        "-o",
        "root",
        "-g",
        "chargectl",
        "-m",
        "0750",
        "/etc/chargectl",
    ]
    assert commands[user + 2 : user + 4] == [
        ["install", "-d", "-o", "chargectl", "-g", "chargectl", "-m", "0700", "/var/lib/chargectl"],
        ["chown", "-R", "chargectl:chargectl", "/var/lib/chargectl"],
    ]
    unit = ["install", "-o", "root", "-g", "root", "-m", "0644"]
    assert [
        *unit,
        str(bundle / "chargectl-agent.service"),
        "/etc/systemd/system/chargectl-agent.service",
    ] in commands
    assert commands[-2] == ["systemctl", "restart", "chargectl-agent.service"]
    assert commands[-1] == ["systemctl", "is-active", "--quiet", "chargectl-agent.service"]
    # Config and keys are in place before the unit restarts.
    restart = commands.index(["systemctl", "restart", "chargectl-agent.service"])
    assert all(i < restart for i, c in enumerate(commands) if c[-1].startswith("/etc/chargectl/"))


@pytest.mark.parametrize("top_dir", ["carpark-1", ""], ids=["one-directory", "flat"])
def test_install_agent_from_a_tarball_with_a_wheel_url(clone: Path, tmp_path: Path, top_dir: str) -> None:
    """``provision site`` writes flat tarballs; a hand-made one may wrap the files in a directory."""
    bundle = make_bundle(tmp_path / "src" / "carpark-1", wheel=False)
    tarball = tmp_path / "carpark-1.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for f in sorted(bundle.iterdir()):
            tar.add(f, arcname=f"{top_dir}/{f.name}" if top_dir else f.name)
    url = "https://example.invalid/chargectl-0.4.0-py3-none-any.whl"
    commands = plan(clone, "install-agent.sh", str(tarball), "--wheel", url)
    assert [
        "/opt/chargectl/bin/pip",
        "install",
        "--quiet",
        "--upgrade",
        f"chargectl[agent] @ {url}",
    ] in commands
    assert [
        "/opt/chargectl/bin/pip",
        "install",
        "--quiet",
        "--no-deps",
        "--force-reinstall",
        url,
    ] in commands
    config = next(c for c in commands if c[-1] == "/etc/chargectl/agent.toml")
    assert config[-2].endswith(f"/{top_dir}/carpark-1.toml" if top_dir else "/carpark-1.toml")
    assert next(c for c in commands if c[-1] == "/etc/chargectl/agent.key")[:8] == [
        "install",
        "-D",
        "-o",
        "root",
        "-g",
        "chargectl",
        "-m",
        "0640",
    ]
    assert find(commands, "systemctl", "restart") == ["systemctl", "restart", "chargectl-agent.service"]


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda b: (b / "carpark-1.toml").unlink(), "exactly one .toml config, found 0"),
        (lambda b: (b / "other.toml").write_text(""), "exactly one .toml config, found 2"),
        (lambda b: (b / "chargectl-agent.service").unlink(), "bundle has no chargectl-agent.service"),
        (
            lambda b: (b / "chargectl-0.3.0-py3-none-any.whl").unlink(),
            "no --wheel given and the bundle holds 0",
        ),
    ],
)
def test_install_agent_rejects_an_incomplete_bundle(
    clone: Path, tmp_path: Path, break_it: Any, message: str
) -> None:
    bundle = make_bundle(tmp_path / "carpark-1")
    break_it(bundle)
    proc = run_script(clone, "install-agent.sh", str(bundle), "--dry-run")
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1
    assert message in proc.stderr


# ----------------------------------------------------------------------------- wheel and release


def test_build_wheel_plan(clone: Path) -> None:
    commands = plan(clone, "build-wheel.sh")
    dist = str(clone / "dist")
    assert commands == [
        ["mkdir", "-p", dist],
        ["find", dist, "-maxdepth", "1", "-name", "chargectl-*.whl", "-delete"],
        ["python3", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist, str(clone)],
    ]


def test_publish_release_plan(clone: Path) -> None:
    commands = plan(clone, "publish-release.sh", "v0.1.0", WHEEL)
    installer = str(clone / "build/release/chargectl-agent-installer-0.1.0.tar.gz")
    assert [
        "tar",
        "-czf",
        installer,
        "-C",
        str(clone / "scripts/deploy"),
        "install-agent.sh",
        "lib.sh",
    ] in commands
    create = next(c for c in commands if c[:3] == ["gh", "release", "view"])
    assert create[create.index("||") + 1 :] == [
        "gh", "release", "create", "v0.1.0", "--verify-tag", "--title", "chargectl 0.1.0", "--generate-notes",
    ]  # fmt: skip
    assert commands[-1] == ["gh", "release", "upload", "v0.1.0", WHEEL, installer, "--clobber"]


def test_the_installer_tarball_runs_install_agent_on_its_own(clone: Path, tmp_path: Path) -> None:
    """The release's installer (two files, unpacked anywhere on the Pi) is self-sufficient."""
    pi = tmp_path / "pi"
    pi.mkdir()
    for name in ("install-agent.sh", "lib.sh"):
        shutil.copy(DEPLOY / name, pi / name)
    bundle = make_bundle(tmp_path / "carpark-1")
    proc = subprocess.run(
        ["bash", str(pi / "install-agent.sh"), str(bundle), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "systemctl restart chargectl-agent.service" in proc.stdout


def test_readme_sets_every_variable_the_deploy_workflow_reads() -> None:
    used = set(re.findall(r"\$\{\{ vars\.(\w+) \}\}", (WORKFLOWS / "deploy.yml").read_text()))
    assert used == {
        "GCP_WORKLOAD_IDENTITY_PROVIDER",
        "GCP_DEPLOY_SERVICE_ACCOUNT",
        "GCP_PROJECT",
        "GCP_REGION",
        "HUB_INSTANCE",
        "HUB_ZONE",
        "APP_ORIGIN",
        "APP_URL",
    }
    readme = (ROOT / "README.md").read_text()
    assert set(re.findall(r"gh variable set (\w+)", readme)) == used


@pytest.mark.parametrize(
    ("probe", "code", "out", "err"),
    [
        ("true", 0, "chargectl-hub.service is healthy\n", ""),
        ("false", 1, "", "bash: error: chargectl-hub.service is not healthy after 0s\n"),
    ],
)
def test_wait_for_reports_success_or_fails_with_the_unit_named(
    probe: str, code: int, out: str, err: str
) -> None:
    """The real (not dry-run) wait loop; journalctl is stubbed out so only the verdict is checked."""
    script = (
        f'. "{DEPLOY / "lib.sh"}"; journalctl() {{ :; }}; wait_for chargectl-hub.service 0 healthy {probe}'
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, out, err)
