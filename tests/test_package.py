"""Packaging: every subpackage is listed for the wheel, and every generated module imports cleanly."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_in_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"chargectl"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in {"tests", "scripts", "contracts", ".venv", "build"}:
            continue
        if rel.parts:
            found.add("chargectl." + ".".join(rel.parts))
    assert found == listed


def test_generated_modules_import_in_a_fresh_interpreter() -> None:
    modules = sorted(p.stem for p in (ROOT / "gen" / "v1").glob("*_pb2.py"))
    assert modules == ["commands_pb2", "common_pb2", "frontend_pb2", "telemetry_pb2"]
    code = "import importlib\n" + "".join(
        f"importlib.import_module('chargectl.gen.v1.{m}')\n" for m in modules
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stale_generated_code_is_detected(tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    gen = tmp_path / "gen"
    shutil.copytree(ROOT / "contracts", contracts)
    shutil.copytree(ROOT / "gen" / "v1", gen, ignore=shutil.ignore_patterns("__pycache__"))
    script = [
        sys.executable,
        str(ROOT / "scripts" / "generate_proto.py"),
        "--check",
        "--contracts",
        str(contracts),
        "--gen",
        str(gen),
    ]
    assert subprocess.run(script, capture_output=True, check=False).returncode == 0
    proto = contracts / "chargectl" / "gen" / "v1" / "common.proto"
    proto.write_text(
        proto.read_text().replace("string currency = 2;", "string currency = 2;\n  string note = 3;")
    )
    stale = subprocess.run(script, capture_output=True, text=True, check=False)
    assert stale.returncode == 1 and "stale" in stale.stderr
