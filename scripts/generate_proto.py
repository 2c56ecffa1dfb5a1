"""Regenerate gen/ from contracts/ with grpcio-tools (no system protoc).

The .proto files live under contracts/chargectl/gen/v1/, so protoc writes modules whose imports of
each other read ``from chargectl.gen.v1 import ...`` and resolve inside the installed package.
Usage: python scripts/generate_proto.py [--check]   (--check: exit 1 if gen/ is stale)
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INIT = '"""Generated protobuf modules for chargectl.v1 (do not edit)."""\n'


def generate(out: Path, contracts: Path) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(contracts)) for p in contracts.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{contracts}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        produced = Path(tmp) / "chargectl" / "gen" / "v1"
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(produced.iterdir()):
            shutil.copyfile(f, out / f.name)
    (out / "__init__.py").write_text(INIT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if gen/ differs from a fresh generation")
    ap.add_argument(
        "--contracts", type=Path, default=ROOT / "contracts", help="folder holding the .proto tree"
    )
    ap.add_argument("--gen", type=Path, default=ROOT / "gen" / "v1", help="folder of the generated modules")
    args = ap.parse_args()
    GEN: Path = args.gen
    if not args.check:
        if GEN.exists():
            shutil.rmtree(GEN)
        generate(GEN, args.contracts)
        print(f"generated {GEN}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "v1"
        generate(fresh, args.contracts)
        names = {p.name for p in fresh.iterdir()} | {p.name for p in GEN.glob("*") if p.is_file()}
        stale = sorted(
            n
            for n in names
            if n != "__pycache__"
            and not (
                (fresh / n).exists() and (GEN / n).exists() and filecmp.cmp(fresh / n, GEN / n, shallow=False)
            )
        )
    if stale:
        print(f"gen/ is stale ({', '.join(stale)}): run `make generate-proto` and commit", file=sys.stderr)
        return 1
    print("gen/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
