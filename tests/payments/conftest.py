"""Payments fixtures: localstripe with the test extension (Checkout, portal, missing events), stores, keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import backends
import httpx
import pytest

from chargectl.common.clock import SystemClock
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.settings import PaymentsSettings

API_KEY = "sk_test_chargectl_payments_0123456789"
WEBHOOK_SECRET = "whsec_chargectl_test_secret_abcdef"
EXTENSION = Path(__file__).resolve().parent / "localstripe_ext.py"


@pytest.fixture(scope="session")
def stripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    """localstripe with ``localstripe_ext`` loaded; one per session (its state is shared: use unique uids)."""
    reason = backends.missing("localstripe")
    if reason:
        pytest.skip(reason)
    server = backends.start_localstripe(tmp_path_factory.mktemp("localstripe-ext"), extensions=EXTENSION)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stripe_http(stripe_server: backends.Server) -> Iterator[httpx.Client]:
    """Raw HTTP to the server, authenticated (for the test drivers and localstripe's config routes)."""
    with httpx.Client(base_url=stripe_server.url, auth=(API_KEY, ""), timeout=10) as client:
        yield client


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


def register_webhook(http: httpx.Client, url: str, secret: str = WEBHOOK_SECRET) -> None:
    """Point localstripe's event delivery at ``url`` (one id for all tests: the newest wins)."""
    http.post("/_config/webhooks/chargectl-tests", data={"url": url, "secret": secret}).raise_for_status()
