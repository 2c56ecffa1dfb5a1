"""Run mypy (strict) on the chargectl package.

The repository root *is* the package ``chargectl`` (setuptools maps it), so mypy is pointed at a
symlink named ``chargectl`` in a scratch directory that resolves to the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="chargectl-mypy-") as tmp:
        link = Path(tmp) / "chargectl"
        link.symlink_to(ROOT, target_is_directory=True)
        env = dict(os.environ, MYPYPATH=tmp)
        cmd = [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "-p",
            "chargectl",
        ]
        return subprocess.call(cmd, env=env, cwd=tmp)


if __name__ == "__main__":
    sys.exit(main())
