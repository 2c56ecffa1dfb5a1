"""End-to-end fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import sim_plug


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """One simulated Gen2 plug in a `chargectl sim` process (killed by process group afterwards)."""
    yield from sim_plug(tmp_path)
