"""The hub's machine and billing modules stay pure: no SDKs, no network libraries, no clock reads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("google", "httpx", "zeroconf", "stripe", "influxdb_client", "grpc")
PURE_MODULES = (
    "chargectl.services.hub.machine",
    "chargectl.services.hub.billing",
    "chargectl.services.hub.params",
    "chargectl.services.hub.intake",
)
HUB = Path(__file__).resolve().parents[2] / "services" / "hub"


def test_pure_modules_load_no_sdk_in_a_fresh_interpreter() -> None:
    code = (
        "import json, sys\n"
        + "".join(f"import {name}\n" for name in PURE_MODULES)
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = json.loads(out.stdout)
    assert set(PURE_MODULES) <= set(loaded)  # the check itself looked at the right modules
    offenders = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert offenders == []


@pytest.mark.parametrize("name", ["machine.py", "billing.py", "params.py"])
def test_no_clock_or_randomness_in_pure_modules(name: str) -> None:
    tree = ast.parse((HUB / name).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"time", "datetime", "random", "os", "uuid", "asyncio", *FORBIDDEN})


def test_nothing_under_services_imports_the_provisioner() -> None:
    """The hub and the other services get trust helpers and provisioning through ports, not imports."""
    services = HUB.parent
    offenders = []
    for path in sorted(services.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(services)}: {n}" for n in names if "provisioner" in n.split(".")
            ]
    assert offenders == []
