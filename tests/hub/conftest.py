"""The hostile world every hub test that plays a site, a user or a store uses (see ``hostile.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()
