"""Payments fixtures: stores, settings against localstripe (its server: tests/stripe_support.py), ids."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import backends
import pytest

from chargectl.common.clock import SystemClock
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.settings import PaymentsSettings


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "payments.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def settings(stripe_server: backends.Server) -> PaymentsSettings:
    return PaymentsSettings(api_base=stripe_server.url, app_url="https://app.example.test")


@pytest.fixture
def uid() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def system_clock() -> SystemClock:
    return SystemClock()
