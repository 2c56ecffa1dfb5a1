"""The project stands alone: no file points at design documents that live outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces so this file does not match itself.
_DOCS = "|".join(
    ["shelly", "charging", "performance", "local-backends", "owner-notes", "ARCHITECTURE", "CONVENTIONS"]
)
OUTSIDE = re.compile(
    r"\.\./"
    + "shared"
    + r"|/work/"
    + "shared"
    + r"|\breference/[\w.-]+\.md\b"
    + rf"|(?<![\w/.-])({_DOCS})\.md\b"
)


def tracked_files() -> list[Path]:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60, check=False)
    if proc.returncode == 0 and proc.stdout:
        return [ROOT / name for name in proc.stdout.decode().split("\0") if name]
    skip = {".venv", ".git", "build", "dist", "__pycache__"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def offending(paths: list[Path]) -> list[str]:
    hits = []
    for path in paths:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                hits.append(f"{where}:{n}: {line.strip()}")
    return hits


def test_no_file_refers_to_documents_outside_the_repository() -> None:
    files = tracked_files()
    assert len(files) > 100
    assert offending(files) == []


def test_the_check_catches_each_form(tmp_path: Path) -> None:
    forms = [
        "Defaults follow ``reference/charging" + ".md`` §3.3.",
        "see ../" + "shared/notes.txt",
        "Quirks (shelly" + ".md §8)",
    ]
    paths = []
    for i, text in enumerate(forms):
        path = tmp_path / f"probe-{i}.py"
        path.write_text(text + "\n")
        paths.append(path)
    assert len(offending(paths)) == len(forms)
    # Our own documents inside the repository are fine.
    assert not OUTSIDE.search("see README.md and docs/charging-notes.md")
