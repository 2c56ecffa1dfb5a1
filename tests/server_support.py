"""One way for a fixture to run a real local backend: skip (naming the missing piece) where this machine
cannot run it, start it in its own process group, stop it after. Imported by its own module name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import backends
import pytest


def running(name: str, tmp_path_factory: pytest.TempPathFactory, **options: Any) -> Iterator[backends.Server]:
    """``yield from running("firestore", tmp_path_factory, rules=...)``: ``backends.STARTERS[name]`` with
    ``options``, in a fresh working folder."""
    reason = backends.missing(name)
    if reason:
        pytest.skip(reason)
    server = backends.STARTERS[name](tmp_path_factory.mktemp(name), **options)
    try:
        yield server
    finally:
        server.stop()
