"""Shared fixtures: real local backends started once per session, stopped by process group.

Each backend fixture skips (naming the missing piece) when the machine cannot run it, and runs
everywhere it can. ``pytest_sessionfinish`` fails the run if any process group a fixture started is
still alive afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import backends  # noqa: E402
from server_support import running  # noqa: E402
from stripe_support import stripe_http, stripe_server  # noqa: E402,F401  (fixtures: payments and app tests)

from chargectl.common.clock import ManualClock  # noqa: E402


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    """The Pub/Sub emulator; use unique topic names per test (or ``backends.reset_pubsub``)."""
    yield from running("pubsub", tmp_path_factory)


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    """The Firestore emulator; use a unique project id per test (or ``backends.clear_firestore``)."""
    yield from running("firestore", tmp_path_factory)


@pytest.fixture(scope="session")
def localstripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    yield from running("localstripe", tmp_path_factory)


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    yield from running("victoriametrics", tmp_path_factory)


@pytest.fixture(scope="session")
def influxdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    """InfluxDB 1.x with an empty database ``chargectl``."""
    yield from running("influxdb", tmp_path_factory)


@pytest.fixture(scope="session")
def drongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    yield from running("drongo", tmp_path_factory)


@pytest.fixture
def pubsub_env(pubsub_emulator: backends.Server, monkeypatch: pytest.MonkeyPatch) -> backends.Server:
    """The emulator, with ``PUBSUB_EMULATOR_HOST`` set for the Google client in this test."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    return pubsub_emulator


@pytest.fixture
def firestore_env(firestore_emulator: backends.Server, monkeypatch: pytest.MonkeyPatch) -> backends.Server:
    """The emulator, with ``FIRESTORE_EMULATOR_HOST`` set for the Google client in this test."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    return firestore_emulator


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock(start=1_767_225_600.0)  # 2026-01-01T00:00:00Z


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    alive = [pgid for pgid in backends.STARTED_GROUPS if backends.group_alive(pgid)]
    if alive:
        sys.stderr.write(f"\nERROR: test backends left running (process groups {alive})\n")
        session.exitstatus = 1
